"""Argument types shared by every sub-command's parser (one definition, one error message)."""

from __future__ import annotations

import argparse


def num_images_arg(text: str) -> int:
    """argparse type of every --num-images: -1 (all images) or a positive count; 0 is refused, not 'all'."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n == 0 or n < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (all images) or at least 1, got {n}")
    return n
