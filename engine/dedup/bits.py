"""Bit counting of packed 64-bit hashes (int64 tensors), shared by the hashes and the multi-index search."""

from __future__ import annotations

import torch

_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_H01 = 0x0101010101010101


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 (SWAR). Arithmetic shifts are safe: every mask clears the copied sign bits,
    and the final multiply may wrap, which leaves the top byte (the count) intact."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return (x * _H01) >> 56


def hamming_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise (broadcast) Hamming distance of int64 hashes."""
    return popcount64(torch.bitwise_xor(a, b))
