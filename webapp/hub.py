"""DenseCLIP checkpoints that visitors name by Hugging Face Hub repo id: off unless the operator allows them.

The operator lists the repos (`user/repo`) or owners (`user/`) visitors may name, and a size cap. The
download itself is the library's (`denseclip.hub.hub_file`: the size read from the Hub before anything
is downloaded, the download pinned to the revision measured, a quick failure offline); this module
decides who may ask, and says what went wrong in the visitor's terms (the operator's reason is logged).

    access = HubAccess.parse("my-lab/, friend/denseclip-vitb16", max_mb=1500)
    path = fetch_checkpoint("my-lab/denseclip-rn50", access)   # UserError says why not
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.safetensors"  # what denseclip.save_checkpoint writes into a folder / repo
DEFAULT_MAX_MB = 2000
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/$")


@dataclass(frozen=True)
class HubAccess:
    """Which Hub repos visitors may name (exact `user/repo` ids or `user/` owner prefixes; none: off)."""

    allow: tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_MB * 1_000_000

    @classmethod
    def parse(cls, allow, max_mb: float | None = None) -> HubAccess:
        """From a list, or a comma/space separated text; a malformed entry raises ValueError (an operator
        mistake)."""
        text = allow if isinstance(allow, str) or allow is None else " ".join(allow)
        entries = tuple(e for e in re.split(r"[,\s]+", text or "") if e)
        bad = [e for e in entries if not (REPO_ID.match(e) or OWNER.match(e)) or ".." in e]
        if bad:
            raise ValueError(f"not a Hub repo id ('user/repo') or owner ('user/'): {', '.join(bad)}")
        if max_mb is not None and max_mb <= 0:
            raise ValueError(f"the size cap must be positive, got {max_mb} MB")
        return cls(entries, int((max_mb or DEFAULT_MAX_MB) * 1_000_000))

    @property
    def enabled(self) -> bool:
        return bool(self.allow)

    def allows(self, repo_id: str) -> bool:
        if not REPO_ID.match(repo_id) or ".." in repo_id:
            return False
        owner = repo_id.split("/")[0] + "/"
        return any(e == repo_id or e == owner for e in self.allow)


def fetch_checkpoint(repo_id: str, access: HubAccess) -> Path:
    """The repo's model.safetensors: from the local cache, or downloaded after the size check.

    Raises UserError (a message for the visitor) when the repo is not allowed, missing, too large or
    the Hub cannot be reached; the reason for the operator goes to the log.
    """
    from denseclip.hub import TooLargeError, WeightsUnavailableError, hub_file

    if not access.allows(repo_id):
        raise UserError(f"{repo_id} is not one of the Hub repos this server loads.")
    try:
        return hub_file(repo_id, CHECKPOINT_FILE, what=f"the checkpoint of {repo_id}",
                        max_bytes=access.max_bytes)
    except TooLargeError as e:
        log.info("refused a Hub checkpoint: %s", e)
        raise UserError(f"The checkpoint of {repo_id} is larger than this server loads (at most "
                        f"{access.max_bytes / 1e9:.1f} GB), or the Hub does not say its size.") from None
    except FileNotFoundError as e:
        log.info("Hub checkpoint not found: %s", e)
        raise UserError(f"There is no public Hub repo {repo_id} with a {CHECKPOINT_FILE} (a checkpoint "
                        "saved with denseclip.save_checkpoint).") from None
    except WeightsUnavailableError as e:
        log.warning("Hub checkpoint %s unavailable: %s", repo_id, e)
        raise UserError(f"The checkpoint {repo_id} is not on this server, and the server cannot download "
                        "it right now. Try again later, or choose a model from the list.") from None
