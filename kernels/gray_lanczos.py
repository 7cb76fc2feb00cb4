"""The perceptual hashes' small grayscale images in one pass over a decoded image (a CPU kernel).

Formula, for a uint8 image [H, W, 3] (RGB) or [H, W] (gray) and each output size (w, h)::

    out[(w, h)] = Image.fromarray(img).convert("L").resize((w, h), Image.LANCZOS)     uint8 [h, w]

bit for bit (imagehash's pHash reads the 32 x 32 one, its dHash the 9 x 8 one). `reference_gray_lanczos`
is exactly that line, Pillow itself: the oracle. The kernel (`_gray_lanczos.c`, a C extension built with
the package, GIL released) follows Pillow's own integer recipe (its ITU-R 601 L, its LANCZOS weights in
double rounded to 22-bit fixed point, a horizontal and a vertical pass with int32 sums), but reads the
image once for all outputs: each row becomes its L row, which every output's horizontal pass reads while
it is in the cache. Pillow makes one pass for the conversion and one per resize.

The order of the two passes changed in Pillow 13 (the vertical pass first when the height is cut by more
than twice what the width is), and the order moves a value by one here and there. On first use the
kernel is run both ways on probe images and compared with the installed Pillow: it keeps the order that
gives Pillow's bits on every probe. Where neither does (a Pillow that changed its recipe again), it logs
that and runs the reference, so a hash never differs from imagehash's on the same Pillow.

This runs in the decode threads on every full-size image of a hashes job or a nightly check. Where the
extension was not built (an install without a C compiler) `gray_lanczos` logs that once and runs the
reference, which gives the same bits, more slowly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import numpy as np

__all__ = ["compiled", "gray_lanczos", "pillow_order", "reference_gray_lanczos"]

logger = logging.getLogger(__name__)

try:
    from . import _gray_lanczos as _ext
except ImportError:  # an install without a C compiler: say so once, then the reference
    _ext = None
_warned = False
_order_rule: bool | None = None  # the installed Pillow's order of the passes (None: neither matches)
_order_found = False  # whether the probes ran
_order_lock = threading.Lock()  # decode threads start together: the probes run once
_PROBES = (((23, 5), (9, 8)), ((9, 8), (9, 8)), ((153, 81), (32, 32)), ((100, 60), (9, 8)), ((40, 37), (32, 32)),
           ((480, 64), (9, 8)), ((6, 50), (32, 32)))  # fmt: skip
MAX_SIZE = 4096  # the extension's limit on an output side (hash thumbnails are 32 x 32 at most)


def compiled() -> bool:
    """Whether the C extension was built (the suite checks it is, so CI never times the fallback)."""
    return _ext is not None


def _check(img, sizes) -> list[tuple[int, int]]:
    if not (
        isinstance(img, np.ndarray)
        and img.dtype == np.uint8
        and (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3))
    ):
        raise ValueError(
            f"expected a uint8 HxWx3 or HxW image, got {getattr(img, 'dtype', type(img))} {getattr(img, 'shape', '')}"
        )
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise ValueError(f"the image must have at least one pixel, got {tuple(img.shape)}")
    out = []
    for size in sizes:
        w, h = (int(v) for v in size)
        if not (1 <= w <= MAX_SIZE and 1 <= h <= MAX_SIZE):
            raise ValueError(f"output sizes are (width, height) in 1..{MAX_SIZE}, got {tuple(size)}")
        out.append((w, h))
    if not 1 <= len(out) <= 8:
        raise ValueError(f"give 1 to 8 output sizes, got {len(out)}")
    return out


def reference_gray_lanczos(img: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """The formula above with Pillow: ``convert("L")`` (for RGB) and one LANCZOS ``resize`` per size."""
    from PIL import Image

    sizes = _check(img, sizes)
    gray = Image.fromarray(np.ascontiguousarray(img))
    gray = gray.convert("L") if img.ndim == 3 else gray
    return [np.asarray(gray.resize(size, Image.LANCZOS)) for size in sizes]


def _run(img: np.ndarray, sizes: list[tuple[int, int]], order_rule: bool) -> list[np.ndarray]:
    outs = tuple(np.empty((h, w), np.uint8) for w, h in sizes)
    _ext.gray_lanczos(np.ascontiguousarray(img), outs, order_rule)
    return list(outs)


def pillow_order() -> bool | None:
    """Which order of the passes the installed Pillow follows (True: Pillow 13's rule, False: the horizontal
    pass first always), from the probe images; None when the kernel matches Pillow neither way or was not
    built. Found once per process."""
    if _ext is None:
        return None
    if not _order_found:
        with _order_lock:
            if not _order_found:
                _find_order()
    return _order_rule


def _find_order() -> None:
    """Run the kernel both ways on the probes against Pillow; set the order that matches (or None)."""
    global _order_rule, _order_found
    rng = np.random.default_rng(20261207)
    probes = []
    for (h, w), size in _PROBES:
        probes.append((rng.integers(0, 256, (h, w), dtype=np.uint8), size))
        probes.append((rng.integers(0, 256, (h, w, 3), dtype=np.uint8), size))
    want = [reference_gray_lanczos(img, [size])[0] for img, size in probes]
    _order_rule = None
    for rule in (True, False):
        if all(np.array_equal(_run(img, [size], rule)[0], ref) for (img, size), ref in zip(probes, want)):
            _order_rule = rule
            break
    if _order_rule is None:
        import PIL

        logger.warning(
            "the LANCZOS thumbnails of neuroprint.kernels._gray_lanczos differ from this Pillow's (%s) on "
            "the probe images: the hashes' thumbnails run in Pillow itself, with its bits, more slowly",
            PIL.__version__,
        )
    _order_found = True


def gray_lanczos(img: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """The formula above for one image, a uint8 [h, w] array per (w, h) in ``sizes`` (the C extension;
    the reference where it was not built or does not match the installed Pillow)."""
    global _warned
    if _ext is None:
        if not _warned:
            _warned = True
            logger.warning(
                "neuroprint.kernels._gray_lanczos was not built (no C compiler at install?): the hashes' "
                "thumbnails run in Pillow, with the same bits, more slowly"
            )
        return reference_gray_lanczos(img, sizes)
    sizes = _check(img, sizes)
    rule = pillow_order()
    if rule is None:
        return reference_gray_lanczos(img, sizes)
    return _run(img, sizes, rule)
