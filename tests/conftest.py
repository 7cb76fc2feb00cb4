"""Shared fixtures: image collections the tests make themselves, including every kind of bad file."""

from __future__ import annotations

import io
import os

# Triton kernels run on CPU tensors through Triton's interpreter when there is no GPU; the switch is read
# when a kernel is defined, so it is set before anything imports neuroprint.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A tiny timm network (160x160 input, 5 taps): real code path, seconds per test on CPU.
TINY = "timm:test_resnet"


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_good(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = _rgb(40 + 7 * i, 50 + 3 * i, seed + i)
        p = folder / f"good_{i:02d}.{'png' if i % 2 else 'JPG'}"  # upper-case extensions count too
        Image.fromarray(arr).save(p, format="PNG" if i % 2 else "JPEG")
        paths.append(p)
    return paths


def _write_odd_modes(folder: Path) -> list[Path]:
    """Images that must be converted, not rejected: gray, RGBA, palette, CMYK, 16-bit."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_rgb(45, 33, 99))
    out = {
        "gray.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "palette.png": rgb.convert("P"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "sixteen.png": Image.fromarray(np.arange(45 * 33, dtype=np.uint16).reshape(45, 33) * 40),
    }
    paths = []
    for name, img in out.items():
        p = folder / name
        img.save(p)
        paths.append(p)
    return paths


def _write_bad(folder: Path) -> dict[str, Path]:
    """Files that cannot be read: each must be skipped and recorded, never stop a job."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(_rgb(64, 64, 5)).save(buf, format="JPEG")
    bad = {
        "truncated": folder / "truncated.jpg",
        "zero": folder / "zero.png",
        "text": folder / "not_an_image.png",
        "corrupt": folder / "corrupt.jpg",
    }
    bad["truncated"].write_bytes(buf.getvalue()[:300])
    bad["zero"].write_bytes(b"")
    bad["text"].write_text("this is not an image\n")
    data = bytearray(buf.getvalue())
    data[2:400] = bytes(398)  # header destroyed
    bad["corrupt"].write_bytes(bytes(data))
    return bad


@pytest.fixture(scope="session")
def image_sets(tmp_path_factory):
    """{"good": folder of 6 readable images, "mixed": good + odd modes + bad files, "bad": {...}}."""
    root = tmp_path_factory.mktemp("images")
    good = _write_good(root / "good", 6)
    mixed_dir = root / "mixed"
    _write_good(mixed_dir / "good", 4, seed=100)
    odd = _write_odd_modes(mixed_dir / "odd")
    bad = _write_bad(mixed_dir / "bad")
    # A list that names a file that is not there (and a folder named like an image): unreadable paths.
    (mixed_dir / "bad" / "folder.png").mkdir()
    listing = root / "list.txt"
    listing.write_text(
        "\n".join(["good/good_00.JPG", "missing/nowhere.png", "mixed/bad/folder.png", "good/good_01.png"])
        + "\n"
    )
    (root / "empty").mkdir()
    (root / "empty" / "notes.txt").write_text("no images here")
    return {
        "root": root,
        "list": listing,
        "good": root / "good",
        "good_paths": good,
        "mixed": mixed_dir,
        "odd": odd,
        "bad": bad,
    }


def kill_after_first_shard(args: list, env: dict, manifest: Path, timeout: float = 120) -> dict:
    """Start the command ``args``, SIGKILL it once ``manifest`` (with its shard log) lists a finished shard;
    the manifest then."""
    import signal
    import subprocess
    import time

    from neuroprint.jobs import read_manifest

    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            if read_manifest(manifest.parent)["finished"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return read_manifest(manifest.parent)


@pytest.fixture(scope="session")
def tiny_ranges(image_sets, tmp_path_factory):
    """Activation ranges of TINY (random weights) over ``image_sets["good"]``, saved as a VDNA file."""
    from neuroprint import profile

    path = tmp_path_factory.mktemp("tiny_ranges") / "ranges"
    kw = dict(extractor=TINY, weights="random", batch_size=3, num_workers=1, progress=False, device="cpu")
    profile(image_sets["good"], "activation-ranges", **kw)["activation-ranges"].save(path)
    return path
