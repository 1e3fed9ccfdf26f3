"""DenseCLIP checkpoints that visitors name by Hugging Face Hub repo id: off unless the operator allows them.

The operator lists the repos (`user/repo`) or owners (`user/`) visitors may name, and a size cap. The
size is read from the Hub's file metadata before anything is downloaded, and the download is pinned to
the revision that was measured. Nothing here holds a model lock: a download only delays the visitor who
asked for it.

    access = HubAccess.parse("my-lab/, friend/denseclip-vitb16", max_mb=1500)
    path = fetch_checkpoint("my-lab/denseclip-rn50", access)   # UserError says why not
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import (
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    try_to_load_from_cache,
)
from huggingface_hub.utils import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

from .errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.safetensors"  # what denseclip.save_checkpoint writes into a folder / repo
DEFAULT_MAX_MB = 2000
METADATA_TIMEOUT = 5.0  # seconds: a visitor should not wait long to learn the Hub does not answer
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/$")


@dataclass(frozen=True)
class HubAccess:
    """Which Hub repos visitors may name (exact `user/repo` ids or `user/` owner prefixes; none: off)."""

    allow: tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_MB * 1_000_000

    @classmethod
    def parse(cls, allow: str | None, max_mb: float | None = None) -> HubAccess:
        """From a comma/space separated list; a malformed entry raises ValueError (an operator mistake)."""
        entries = tuple(e for e in re.split(r"[,\s]+", allow or "") if e)
        bad = [e for e in entries if not (REPO_ID.match(e) or OWNER.match(e)) or ".." in e]
        if bad:
            raise ValueError(f"not a Hub repo id ('user/repo') or owner ('user/'): {', '.join(bad)}")
        if max_mb is not None and max_mb <= 0:
            raise ValueError(f"the size cap must be positive, got {max_mb} MB")
        return cls(entries, int((max_mb or DEFAULT_MAX_MB) * 1_000_000))

    @classmethod
    def from_env(cls) -> HubAccess:
        """DENSECLIP_HUB_ALLOW (list) and DENSECLIP_HUB_MAX_MB."""
        cap = os.environ.get("DENSECLIP_HUB_MAX_MB")
        return cls.parse(os.environ.get("DENSECLIP_HUB_ALLOW"), float(cap) if cap else None)

    @property
    def enabled(self) -> bool:
        return bool(self.allow)

    def allows(self, repo_id: str) -> bool:
        if not REPO_ID.match(repo_id) or ".." in repo_id:
            return False
        owner = repo_id.split("/")[0] + "/"
        return any(e == repo_id or e == owner for e in self.allow)


def _too_big(size: int | None, access: HubAccess, repo_id: str) -> UserError | None:
    if size is None:
        return UserError(f"The Hub does not say how large {repo_id}'s checkpoint is, so this server will "
                         "not download it.")
    if size > access.max_bytes:
        return UserError(f"The checkpoint of {repo_id} is {size / 1e9:.1f} GB; this server downloads "
                         f"checkpoints up to {access.max_bytes / 1e9:.1f} GB.")
    return None


def fetch_checkpoint(repo_id: str, access: HubAccess) -> Path:
    """The repo's model.safetensors: from the local cache, or downloaded after the size check.

    Raises UserError (a message for the visitor) when the repo is not allowed, missing, too large or
    the Hub cannot be reached; the reason for the operator goes to the log.
    """
    if not access.allows(repo_id):
        raise UserError(f"{repo_id} is not one of the Hub repos this server loads.")
    cached = try_to_load_from_cache(repo_id, CHECKPOINT_FILE)
    if isinstance(cached, str):
        error = _too_big(os.path.getsize(cached), access, repo_id)
        if error:
            raise error
        return Path(cached)
    if constants.HF_HUB_OFFLINE:
        log.warning("Hub checkpoint %s requested but not cached, and HF_HUB_OFFLINE is set", repo_id)
        raise UserError(f"The checkpoint {repo_id} is not on this server, and the server cannot download "
                        "it right now. Choose a model from the list.")
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, CHECKPOINT_FILE), timeout=METADATA_TIMEOUT)
    except (RepositoryNotFoundError, GatedRepoError):
        raise UserError(f"There is no public Hub repo {repo_id}.") from None
    except EntryNotFoundError:
        raise UserError(f"The Hub repo {repo_id} has no {CHECKPOINT_FILE}: it is not a DenseCLIP "
                        "checkpoint saved with denseclip.save_checkpoint.") from None
    except Exception as e:  # network trouble
        log.warning("Hub metadata of %s failed: %s: %s", repo_id, type(e).__name__, e)
        raise UserError("The Hugging Face Hub did not answer. Try again later, or choose a model from "
                        "the list.") from None
    error = _too_big(meta.size, access, repo_id)
    if error:
        raise error
    log.info("downloading %s/%s (%.0f MB, revision %s)", repo_id, CHECKPOINT_FILE, meta.size / 1e6,
             meta.commit_hash)
    try:  # the revision measured above, so the file cannot grow in between
        return Path(hf_hub_download(repo_id, CHECKPOINT_FILE, revision=meta.commit_hash))
    except Exception as e:
        log.warning("download of %s failed: %s: %s", repo_id, type(e).__name__, e)
        raise UserError(f"Downloading {repo_id} failed. Try again later.") from None

