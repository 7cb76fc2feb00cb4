"""Fetching published files (weights, activation ranges) from the Hugging Face Hub or plain URLs.

Every miss becomes one `WeightsError` line that says which file, from where, and where to put it by
hand, because the usual reason for a miss is a machine without internet.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from neuroprint._errors import WeightsError

logger = logging.getLogger(__name__)

VDNA_HUB_REPO = "bramtoula/visual-dna-models"

# Long enough for a slow mirror to answer, short enough that a firewalled machine fails instead of hanging.
_URL_TIMEOUT_S = 60.0

_TRUE = {"1", "on", "yes", "true", "y"}


def is_offline() -> bool:
    """True when the user asked for no network (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``).

    The environment is read at call time: huggingface_hub freezes its own flag at import, which would
    ignore a variable set later in the same process (a notebook cell, a test's monkeypatch).
    """
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        return False
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def mirror_path(repo: str, filename: str) -> Path:
    """Plain-path location checked before the Hub: ``$NEUROPRINT_CACHE/hub/<repo>/<filename>``.

    The Hub's own cache needs its snapshot/refs layout, which nobody can recreate by hand; this folder
    lets an offline user drop a copied file at an obvious place.
    """
    root = Path(os.environ.get("NEUROPRINT_CACHE", "~/.cache/neuroprint")).expanduser()
    return root / "hub" / repo / filename


def url_cache_path(url: str) -> Path:
    """Where torch hub (and therefore vdna, torchvision and pytorch-fid) keeps a downloaded URL."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def fetch_hub_file(repo: str, filename: str, *, instead: str) -> Path:
    """Local path of ``filename`` from Hub repo ``repo``, downloading it into the Hub cache on first use.

    ``instead`` completes the error line with what the caller can do without the file.
    """
    local = mirror_path(repo, filename)
    if local.is_file():
        return local
    offline = is_offline()
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id=repo, filename=filename, local_files_only=offline))
    except Exception as err:  # the Hub client raises HTTP, OS and its own errors; all mean "not here"
        reason = "offline mode (HF_HUB_OFFLINE) and not in the cache" if offline else _one_line(err)
        raise WeightsError(
            f"cannot fetch {filename} from Hugging Face repo {repo} ({reason}); "
            f"put the file at {local}, {instead}"
        ) from err


def fetch_url_file(url: str, *, instead: str) -> Path:
    """Local path of ``url`` in the torch hub checkpoint cache, downloading it on first use."""
    dest = url_cache_path(url)
    if dest.is_file():
        return dest
    if is_offline():
        raise WeightsError(
            f"cannot download {url} (offline mode, HF_HUB_OFFLINE) and it is not in the torch hub cache; "
            f"put the file at {dest}, {instead}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading %s to %s", url, dest)
    # A partial file under the final name would be taken for a good one by the next run.
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_URL_TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, dest)
    except Exception as err:
        Path(tmp).unlink(missing_ok=True)
        raise WeightsError(
            f"cannot download {url} ({_one_line(err)}); put the file at {dest}, {instead}"
        ) from err
    return dest
