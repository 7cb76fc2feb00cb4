"""Per-neuron histogram binning with Visual DNA's normalisation.

Formula (vdna 0.1.1, ``FeatureExtractionModel.get_data_features`` + ``histogram_per_channel`` on its
``torch.histc`` path), for neuron ``c`` with range ``[lo_c, hi_c]`` and ``N`` bins::

    a, b  = 1.2 * lo_c, 1.2 * hi_c                    (float64)
    mean  = (a + b) / 2;   std = (b - a) / 2 + 1e-8   (float64)
    x'    = clamp((float64(x) - mean) / std, -1, 1)
    bin   = trunc(((x' + 1) * N) / 2), and bin N -> N - 1  (the last bin is closed)

NaN activations are not counted (``histc`` skips them); +-inf land in the end bins. Counts are int64.

This module holds the plain torch reference, which is the CPU path and the oracle. The fused Triton
kernel (one launch per layer, counts kept on chip) is tracked separately; `neuron_histogram` is the one
entry point callers use, so the kernel slots in behind it without touching them.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["RANGE_SCALE", "neuron_histogram", "norm_params", "reference_neuron_histogram"]

# vdna's ExtractionSettings.range_scale_for_norm_params.
RANGE_SCALE = 1.2

# Elements binned per chunk: bounds the float64/int64 temporaries to a few hundred MB.
_CHUNK_ELEMENTS = 1 << 24


def norm_params(mins, maxs, range_scale: float = RANGE_SCALE) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron (mean, std) in float64 from activation ranges, computed as vdna computes them."""
    lo = np.asarray(mins, dtype=np.float64) * range_scale
    hi = np.asarray(maxs, dtype=np.float64) * range_scale
    if lo.shape != hi.shape or lo.ndim != 1:
        raise ValueError(f"mins and maxs must be 1-d of equal length, got {lo.shape} and {hi.shape}")
    mean = (lo + hi) / 2
    std = (hi - lo) / 2 + 1e-8
    return torch.from_numpy(mean), torch.from_numpy(std)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """[B, P, C] or [R, C] -> [R, C] (a view where possible)."""
    if x.dim() == 3:
        return x.reshape(-1, x.shape[-1])
    if x.dim() == 2:
        return x
    raise ValueError(f"activations must be [B, P, C] or [rows, C], got shape {tuple(x.shape)}")


def _check(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, bins: int) -> torch.Tensor:
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive int, got {bins!r}")
    if not x.is_floating_point():
        raise TypeError(f"activations must be floating point, got {x.dtype}")
    rows = _as_rows(x)
    channels = rows.shape[-1]
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(
            f"ranges cover {tuple(mean.shape)} / {tuple(std.shape)} neurons but activations have {channels}"
        )
    return rows


def reference_neuron_histogram(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, bins: int
) -> torch.Tensor:
    """Plain torch reference: int64 counts [C, bins] of activations x ([B, P, C] or [rows, C])."""
    rows = _check(x, mean, std, bins)
    channels = rows.shape[-1]
    device = rows.device
    mean = mean.to(device=device, dtype=torch.float64)
    std = std.to(device=device, dtype=torch.float64)
    offsets = torch.arange(channels, device=device, dtype=torch.int64) * bins
    counts = torch.zeros(channels * bins, dtype=torch.int64, device=device)
    step = max(1, _CHUNK_ELEMENTS // max(channels, 1))
    for start in range(0, rows.shape[0], step):
        xn = (rows[start : start + step].to(torch.float64) - mean) / std
        xn = xn.clamp_(-1.0, 1.0)
        valid = ~torch.isnan(xn)
        # histc's arithmetic, in this order: (x - min) * nbins / (max - min).
        pos = ((xn + 1.0) * bins / 2.0).to(torch.int64).clamp_(max=bins - 1)
        flat = (pos + offsets)[valid]
        counts += torch.bincount(flat, minlength=channels * bins)
    return counts.view(channels, bins)


def neuron_histogram(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    bins: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Counts [C, bins] (int64) of every neuron of one layer; added into ``out`` when given."""
    counts = reference_neuron_histogram(x, mean, std, bins)
    if out is None:
        return counts
    if out.shape != counts.shape or out.dtype != torch.int64:
        raise ValueError(f"out must be int64 {tuple(counts.shape)}, got {out.dtype} {tuple(out.shape)}")
    out += counts
    return out
