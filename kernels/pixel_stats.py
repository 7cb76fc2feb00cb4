"""One pass over a decoded image's pixels for the check's quality statistics (a CPU kernel).

Formula, for a uint8 RGB image [H, W, 3] (all integer outputs exact)::

    luma        = (77 R + 150 G + 29 B + 128) >> 8                    (the 8-bit ITU-R 601 luma)
    luma_hist   = counts of luma                                       int64 [256]
    rg_hist     = counts of R - G + 255                                int64 [511]
    yb_hist     = counts of R + G - 2 B + 510                          int64 [1021]
    lap_hist    = counts of 4 l[y,x] - l[y-1,x] - l[y+1,x] - l[y,x-1] - l[y,x+1] + 1020
                  over the interior pixels (none when H < 3 or W < 3)  int64 [2041]
    bright_sum  = sum of sqrt(sq_rg[R * 256 + G] + sq_b[B])           (float32 terms, float64 sum)
    sat_sum     = sum of sat[max * 256 + min]                          (float32 terms, float64 sum)
    spread_sum  = sum of max - min                                     (exact)

where ``max``/``min`` are over a pixel's three channels and the float32 tables are the caller's.

This runs in the decode threads on every full-size image, so it is one compiled pass over the pixels
(`_pixel_stats.c`, a C extension built with the package, that releases the GIL) instead of the twenty-odd
whole-image numpy passes of `reference_pixel_stats`, the plain numpy oracle. Triton has no CPU backend
outside its interpreter, and torch in a decode thread would start an OpenMP team for every image, which
is why this kernel is C. `pixel_stats` runs the extension; where it was not built (an install without a
C compiler) it logs that once and runs the reference, which gives the same numbers, more slowly.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["HIST_SIZES", "compiled", "pixel_stats", "reference_pixel_stats"]

logger = logging.getLogger(__name__)

HIST_SIZES = {"luma": 256, "rg": 511, "yb": 1021, "lap": 2041}

try:
    from . import _pixel_stats as _ext
except ImportError:  # an install without a C compiler: say so once, then the reference
    _ext = None
_warned = False


def compiled() -> bool:
    """Whether the C extension was built (the suite checks it is, so CI never times the fallback)."""
    return _ext is not None


def _check(img, tables) -> None:
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        raise ValueError(
            f"pixel statistics need a uint8 RGB image [H, W, 3], got {getattr(img, 'dtype', type(img))} "
            f"{getattr(img, 'shape', '')}"
        )
    for name, size in (("sq_rg", 65536), ("sq_b", 256), ("sat", 65536)):
        t = tables[name]
        if not (isinstance(t, np.ndarray) and t.dtype == np.float32 and t.shape == (size,)):
            raise ValueError(f"table {name} must be float32 [{size}]")


def reference_pixel_stats(img: np.ndarray, tables: dict) -> dict:
    """The formula above in numpy: the oracle of `pixel_stats`."""
    _check(img, tables)
    h, w = img.shape[:2]
    r16, g16, b16 = (img[..., i].astype(np.uint16) for i in range(3))
    bright = np.sqrt(tables["sq_rg"].take((r16 << 8) | g16) + tables["sq_b"].take(b16))
    luma = ((77 * r16 + 150 * g16 + 29 * b16 + 128) >> 8).astype(np.uint8)
    hi, lo = np.maximum(np.maximum(r16, g16), b16), np.minimum(np.minimum(r16, g16), b16)
    out = {
        "luma_hist": np.bincount(luma.ravel(), minlength=256).astype(np.int64),
        "rg_hist": np.bincount((r16 + 255 - g16).ravel(), minlength=511).astype(np.int64),
        "yb_hist": np.bincount((r16 + g16 + 510 - 2 * b16).ravel(), minlength=1021).astype(np.int64),
        "lap_hist": np.zeros(2041, np.int64),
        "bright_sum": float(bright.sum(dtype=np.float64)),
        "sat_sum": float(tables["sat"].take((hi << 8) | lo).sum(dtype=np.float64)),
        "spread_sum": int((hi - lo).sum(dtype=np.int64)),
    }
    if h >= 3 and w >= 3:
        l16 = luma.astype(np.int16)
        lap = 4 * l16[1:-1, 1:-1] - l16[:-2, 1:-1] - l16[2:, 1:-1] - l16[1:-1, :-2] - l16[1:-1, 2:]
        out["lap_hist"] = np.bincount((lap + 1020).ravel(), minlength=2041).astype(np.int64)
    return out


def pixel_stats(img: np.ndarray, tables: dict) -> dict:
    """The formula above for one image (the C extension; the reference where it was not built)."""
    global _warned
    if _ext is None:
        if not _warned:
            _warned = True
            logger.warning(
                "neuroprint.kernels._pixel_stats was not built (no C compiler at install?): the quality "
                "statistics run in numpy, with the same values, several times slower"
            )
        return reference_pixel_stats(img, tables)
    _check(img, tables)
    hists = {f"{k}_hist": np.zeros(n, np.int64) for k, n in HIST_SIZES.items()}
    bright, sat, spread = _ext.pixel_stats(
        np.ascontiguousarray(img),
        tables["sq_rg"],
        tables["sq_b"],
        tables["sat"],
        hists["luma_hist"],
        hists["rg_hist"],
        hists["yb_hist"],
        hists["lap_hist"],
    )
    return {**hists, "bright_sum": bright, "sat_sum": sat, "spread_sum": spread}
