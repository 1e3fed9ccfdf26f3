"""Files from the Hugging Face Hub, with huggingface_hub's own offline mode and timeout.

    path = hub_file("timm/resnet50_clip.openai", "open_clip_model.safetensors")   # cache, or download

Offline (`HF_HUB_OFFLINE=1`) or when the Hub does not answer one metadata request within
`HF_HUB_ETAG_TIMEOUT` seconds (huggingface_hub's setting, 10 by default), a file that is not in the
local cache raises `WeightsUnavailableError`, instead of huggingface_hub's retries with backoff (half a
minute without DNS, minutes against a Hub that accepts connections but never answers). After such a
failure the Hub is not asked again for a minute: later requests fail at once.
"""

from __future__ import annotations

import time
from pathlib import Path

RETRY_AFTER = 60.0  # seconds without asking the Hub again after it did not answer
_silent_until = 0.0


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be found locally nor downloaded; the message says what to do."""


class TooLargeError(ValueError):
    """A Hub file is larger than the caller's cap (read from the Hub's metadata before downloading)."""


def hub_file(repo_id: str, filename: str, revision: str | None = None, what: str | None = None,
             max_bytes: int | None = None) -> Path:
    """`filename` of Hub repo `repo_id`: from the local cache, else downloaded (fails fast offline).

    max_bytes: refuse (TooLargeError) a file above this size, cached or not; before a download the size
    comes from the one metadata request, and the download is pinned to the revision measured."""
    import huggingface_hub as hf
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    global _silent_until
    what = what or f"{filename} of the Hub repo {repo_id!r}"
    cached = hf.try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str):
        _check_size(Path(cached).stat().st_size, max_bytes, what)
        return Path(cached)
    if hf.is_offline_mode():
        raise WeightsUnavailableError(f"{what} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
                                      "is set")
    if time.monotonic() < _silent_until:
        raise WeightsUnavailableError(f"{what} is not in the local Hugging Face cache and the Hub did not "
                                      "answer a moment ago")
    try:  # one request, no retries: is the Hub there, and does it have the file?
        url = hf.hf_hub_url(repo_id, filename, revision=revision)
        meta = hf.get_hf_file_metadata(url, timeout=hf.constants.HF_HUB_ETAG_TIMEOUT)
        if max_bytes is not None:
            _check_size(meta.size, max_bytes, what)
            revision = meta.commit_hash or revision  # the revision measured: the file cannot grow meanwhile
        return Path(hf.hf_hub_download(repo_id, filename, revision=revision))
    except TooLargeError:
        raise
    except LocalEntryNotFoundError as e:  # the download itself could not reach the Hub
        raise WeightsUnavailableError(f"{what} could not be downloaded ({str(e)[:200]})") from e
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as e:
        raise FileNotFoundError(f"{what} does not exist on the Hub ({type(e).__name__})") from e
    except Exception as e:  # no network, a stalled Hub, an interrupted download
        _silent_until = time.monotonic() + RETRY_AFTER
        raise WeightsUnavailableError(f"{what} could not be downloaded: the Hugging Face Hub did not answer "
                                      f"({type(e).__name__}: {str(e)[:200]})") from e


def _check_size(size: int | None, max_bytes: int | None, what: str) -> None:
    if max_bytes is not None and (size is None or size > max_bytes):
        told = "does not say its size" if size is None else f"is {size / 1e6:,.0f} MB"
        raise TooLargeError(f"{what} {told}; the limit is {max_bytes / 1e6:,.0f} MB")


def first_hub_file(repo_id: str, filenames: list[str], revision: str | None = None,
                   what: str | None = None) -> Path:
    """The first of `filenames` that Hub repo `repo_id` has (hub_file each); the next one is tried only
    when the Hub answered that this one does not exist. FileNotFoundError (the last answer) if none
    exists; WeightsUnavailableError as soon as the Hub cannot be asked."""
    error: FileNotFoundError | None = None
    for name in filenames:
        try:
            return hub_file(repo_id, name, revision=revision, what=what)
        except FileNotFoundError as e:
            error = e
    raise FileNotFoundError(f"none of {filenames} exists in {repo_id} ({error})") from error
