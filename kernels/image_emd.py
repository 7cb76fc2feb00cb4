"""Per-image EMD against reference histograms, without materialising per-image histograms.

For image b and neuron c, the image's own distribution is the histogram of its P activations
``x[b, :, c]`` binned with the rule of `neuron_histogram` (same ranges, N bins, NaN not counted); its
score is vdna's EMD between that histogram and the reference histogram of neuron c::

    score[b, c] = sum_k | F_b,c(k) - G_c(k) |,   F = cumsum(own counts) / #counted,  G = cumsum(ref) / sum(ref)

in float64, in bin units. A neuron whose activations in an image are all NaN scores NaN.

Layers: the Triton kernel (one program per (image, block of neurons): it bins the image's positions into
counts kept on chip, scans them and compares with the reference CDF, so only [B, C] scores leave the
chip), the launcher, the torch reference (per-image histograms built in bounded chunks), and
`per_image_emd`, the custom op ``neuroprint::per_image_emd``.

The ``@triton.jit`` code lives in `_image_emd_jit.py`, imported on first use (see kernels/_jit.py).
"""

from __future__ import annotations

import torch

from ._jit import cdiv, lazy_jit, next_power_of_2, triton_available
from .histogram import _check as _check_hist

__all__ = ["per_image_emd", "reference_cdf", "reference_per_image_emd", "triton_per_image_emd"]


def reference_cdf(ref_counts: torch.Tensor) -> torch.Tensor:
    """float64 [C, N] cumulative distribution of reference histograms [C, N]."""
    if ref_counts.dim() != 2:
        raise ValueError(f"reference histograms must be [neurons, bins], got {tuple(ref_counts.shape)}")
    return torch.cumsum(ref_counts / ref_counts.sum(dim=1, dtype=torch.float64, keepdim=True), dim=1)


def _check(x, mean, std, ref_counts):
    bins = ref_counts.shape[-1] if ref_counts.dim() == 2 else -1
    bpc = _check_hist(x, mean, std, bins if bins > 0 else 1)
    if ref_counts.dim() != 2 or ref_counts.shape[0] != bpc.shape[-1]:
        raise ValueError(
            f"reference histograms {tuple(ref_counts.shape)} do not match {bpc.shape[-1]} neurons of the activations"
        )
    return bpc, bins


def reference_per_image_emd(
    x: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    ref_counts: torch.Tensor,
    *,
    chunk_cells: int = 1 << 24,
) -> torch.Tensor:
    """Torch reference: float64 [B, C] scores (per-image histograms built ``chunk_cells`` at a time)."""
    bpc, bins = _check(x, mean, std, ref_counts)
    B, P, C = bpc.shape
    dev = bpc.device
    mean = mean.to(device=dev, dtype=torch.float64)
    std = std.to(device=dev, dtype=torch.float64)
    g = reference_cdf(ref_counts.to(dev))
    out = torch.empty(B, C, dtype=torch.float64, device=dev)
    step = max(1, chunk_cells // max(1, C * bins))
    offsets = torch.arange(C, device=dev, dtype=torch.int64) * bins
    for s in range(0, B, step):
        xb = bpc[s : s + step].to(torch.float64)
        nb = xb.shape[0]
        xn = ((xb - mean) / std).clamp_(-1.0, 1.0)
        valid = ~torch.isnan(xn)
        pos = ((xn + 1.0) * bins / 2.0).to(torch.int64).clamp_(max=bins - 1)
        img = torch.arange(nb, device=dev, dtype=torch.int64).view(nb, 1, 1) * (C * bins)
        flat = (pos + offsets + img)[valid]
        hist = torch.bincount(flat, minlength=nb * C * bins).view(nb, C, bins)
        f = torch.cumsum(hist / hist.sum(dim=2, dtype=torch.float64, keepdim=True), dim=2)
        out[s : s + step] = (f - g).abs().sum(dim=2)
    return out


def triton_per_image_emd(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, ref_counts: torch.Tensor
) -> torch.Tensor:
    """Launcher: float64 [B, C] by the Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1)."""
    if not triton_available():
        raise RuntimeError("Triton is not installed; use reference_per_image_emd")
    bpc, bins = _check(x, mean, std, ref_counts)
    B, P, C = bpc.shape
    dev = bpc.device
    out = torch.empty(B, C, dtype=torch.float64, device=dev)
    if B == 0 or C == 0:
        return out
    cdf = reference_cdf(ref_counts.to(dev)).contiguous()
    mean = mean.to(device=dev, dtype=torch.float64).contiguous()
    std = std.to(device=dev, dtype=torch.float64).contiguous()
    plan = plan_per_image_emd(bpc.shape, bpc.stride(), bpc.dtype, bins)
    plan(x_ptr=bpc, mean_ptr=mean, std_ptr=std, cdf_ptr=cdf, out_ptr=out)
    return out


def plan_per_image_emd(shape, strides, dtype: torch.dtype, bins: int):
    """The `Launch` of `triton_per_image_emd` for a [B, P, C] view of ``shape`` / ``strides``."""
    from ._launch import Launch, extent

    B, P, C = (int(v) for v in shape)
    nb_pad = next_power_of_2(bins)
    block_c = max(1, min(next_power_of_2(C), 8192 // nb_pad, 16))
    block_p = max(16, min(128, next_power_of_2(max(P, 1)), 4096 // block_c))
    return Launch(
        _jit()._per_image_emd_kernel,
        grid=(B, cdiv(C, block_c)),
        pointers={"x_ptr": dtype, "mean_ptr": torch.float64, "std_ptr": torch.float64,
                  "cdf_ptr": torch.float64, "out_ptr": torch.float64},
        extents={"x_ptr": extent(shape, strides), "mean_ptr": C, "std_ptr": C, "cdf_ptr": C * bins,
                 "out_ptr": B * C},
        scalars={"P": P, "C": C, "sb": strides[0], "sp": strides[1], "sc": strides[2]},
        constexprs={"NBINS": bins, "NB_PAD": nb_pad, "BLOCK_P": block_p, "BLOCK_C": block_c},
    )  # fmt: skip


@torch.library.custom_op("neuroprint::per_image_emd", mutates_args=())
def _per_image_emd_op(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, ref_counts: torch.Tensor
) -> torch.Tensor:
    return reference_per_image_emd(x, mean, std, ref_counts)


@_per_image_emd_op.register_fake
def _(x, mean, std, ref_counts):
    channels = x.shape[1] if x.dim() == 4 else x.shape[-1]
    batch = x.shape[0] if x.dim() != 2 else 1
    return x.new_empty((batch, channels), dtype=torch.float64)


if triton_available():

    @_per_image_emd_op.register_kernel("cuda")
    def _(x, mean, std, ref_counts):
        return triton_per_image_emd(x, mean, std, ref_counts)


def per_image_emd(
    x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, ref_counts: torch.Tensor
) -> torch.Tensor:
    """float64 [B, C]: each image's EMD to the reference histograms ``ref_counts`` [C, N], per neuron.

    x: [B, P, C] or [B, C, H, W]; mean, std: float64 [C] from `norm_params` of the reference's ranges.
    """
    _check(x, mean, std, ref_counts)
    dev = x.device
    return _per_image_emd_op(
        x,
        mean.to(device=dev, dtype=torch.float64),
        std.to(device=dev, dtype=torch.float64),
        ref_counts.to(dev),
    )


# the @triton.jit code, imported on first use (see kernels/_jit.py)
_jit, __getattr__ = lazy_jit(__name__, "_image_emd_jit")
