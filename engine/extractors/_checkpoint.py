"""Reading checkpoint files into plain state dicts, and loading them strictly into a network.

No Python pickle is ever executed: ``.safetensors`` goes through safetensors, TorchScript archives
(OpenAI's CLIP files) through TorchScript's own loader, which only builds TorchScript types, and
everything else through ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from neuroprint._errors import WeightsError

logger = logging.getLogger(__name__)

# Training checkpoints nest the weights; the first key present wins. "model_state_dict" is what vdna's
# published rand_resnet50 uses; "teacher" is the network DINO-style checkpoints evaluate with.
_NESTING_KEYS = ("state_dict", "model_state_dict", "model", "teacher")
_PREFIXES = ("module.", "backbone.")


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        # The same marker torch.load uses: eager checkpoints never hold a constants table.
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, un-nested and with ``module.``/``backbone.`` prefixes stripped."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            obj = safetensors.torch.load_file(str(path), device="cpu")
        elif _is_torchscript_archive(path):
            with warnings.catch_warnings():
                # torch marks TorchScript deprecated; OpenAI's CLIP files exist only in this format.
                warnings.simplefilter("ignore", FutureWarning)
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt files surface as many different exception types
        raise WeightsError(f"cannot read weights file {path} ({_one_line(err)})") from err
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: object, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a loaded checkpoint object and normalise its key prefixes."""
    if isinstance(obj, Mapping):
        for key in _NESTING_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{source} holds a {type(obj).__name__}, not a state dict")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue  # bookkeeping entries (epochs, args) are not weights
        key = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    stripped = True
        out[key] = value
    if not out:
        raise WeightsError(f"{source} holds no tensors")
    return out


def file_fingerprint(path: str | Path) -> str:
    """``file:<basename>:sha256=<16 hex>``: names the exact bytes, not the path they were read from."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return f"file:{Path(path).name}:sha256={digest.hexdigest()[:16]}"


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def load_strict(net: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` whose failure is one readable `WeightsError` line."""
    try:
        result = net.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when strict=False
        details = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise WeightsError(
            f"weights from {source} do not fit the network: {'; '.join(details[:3]) or _one_line(err)}"
        ) from err
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {_few(result.missing_keys)}")
        if result.unexpected_keys:
            parts.append(f"unexpected {_few(result.unexpected_keys)}")
        raise WeightsError(f"weights from {source} do not fit the network: {'; '.join(parts)}")
