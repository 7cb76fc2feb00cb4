"""The Triton kernels of `neuroprint.kernels.image_emd` (imported on first use: see kernels/_jit.py)."""

from __future__ import annotations

import triton
import triton.language as tl

from ._histogram_jit import bin_tile, channel_block


@triton.jit
def _per_image_emd_kernel(
    x_ptr,  # [B, P, C] with strides (sb, sp, sc)
    mean_ptr,  # float64 [C]
    std_ptr,  # float64 [C]
    cdf_ptr,  # float64 [C, NBINS]: reference CDF
    out_ptr,  # float64 [B, C]
    P,
    C,
    sb,
    sp,
    sc,
    NBINS: tl.constexpr,
    NB_PAD: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """out[b, c] = sum_k |cumsum(hist(x[b, :, c]))_k / n - cdf[c, k]| over the channels of this program."""
    b = tl.program_id(0).to(tl.int64)
    lc, cols, cmask, mean, std = channel_block(mean_ptr, std_ptr, C, BLOCK_C)
    acc = tl.zeros([BLOCK_C * NB_PAD], dtype=tl.int32)
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        m = (p[:, None] < P) & cmask[None, :]
        offs = b * sb + p[:, None].to(tl.int64) * sp + cols[None, :].to(tl.int64) * sc
        x = tl.load(x_ptr + offs, mask=m, other=0.0)
        idx, valid = bin_tile(x, mean, std, m, lc, NBINS, NB_PAD)
        acc += tl.histogram(
            tl.reshape(idx, [BLOCK_P * BLOCK_C]),
            BLOCK_C * NB_PAD,
            mask=tl.reshape(valid, [BLOCK_P * BLOCK_C]),
        )
    counts = tl.reshape(acc, [BLOCK_C, NB_PAD])
    total = tl.sum(counts, axis=1).to(tl.float64)
    own = tl.cumsum(counts, axis=1).to(tl.float64) / total[:, None]
    k = tl.arange(0, NB_PAD)
    km = cmask[:, None] & (k[None, :] < NBINS)
    ref = tl.load(cdf_ptr + cols[:, None].to(tl.int64) * NBINS + k[None, :], mask=km, other=0.0)
    score = tl.sum(tl.where(km, tl.abs(own - ref), 0.0), axis=1)
    tl.store(out_ptr + b * C + cols, score, mask=cmask)
