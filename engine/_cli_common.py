"""Argument types shared by every sub-command's parser (one definition, one error message)."""

from __future__ import annotations

import argparse

from ._decode import DEFAULT_MAX_PIXELS

__all__ = ["DEFAULT_MAX_PIXELS", "max_pixels_arg", "num_images_arg"]


def num_images_arg(text: str) -> int:
    """argparse type of every --num-images: -1 (all images) or a positive count; 0 is refused, not 'all'."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n == 0 or n < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (all images) or at least 1, got {n}")
    return n


def max_pixels_arg(text: str) -> int:
    """argparse type of --max-pixels: a pixel count (``100000000``, ``100M``, ``1.5G``); 0 is no limit."""
    t = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(t[-1:], 1)
    try:
        n = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a pixel count such as 100000000 or 100M, got {text!r}"
        ) from None
    if n < 0 or n != n:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: no limit), got {text!r}")
    return int(n)
