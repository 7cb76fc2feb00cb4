"""The Triton kernels of `neuroprint.kernels.histogram` (imported on first use: see kernels/_jit.py)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def bin_tile(x, mean, std, mask, lc, NBINS: tl.constexpr, NB_PAD: tl.constexpr, FP64: tl.constexpr = True):
    """The binning rule on a [rows, BLOCK_C] tile: returns (index into BLOCK_C * NB_PAD on-chip
    counts, whether the value counts). NaN and masked-out values do not count. ``mean`` and ``std``
    come in the precision of the normalisation: float64 (FP64, vdna's) or float32."""
    if FP64:
        xn = (x.to(tl.float64) - mean[None, :]) / std[None, :]
    else:
        xn = (x.to(tl.float32) - mean[None, :]) / std[None, :]
    valid = mask & (xn == xn)
    xn = tl.minimum(tl.maximum(xn, -1.0), 1.0)
    pos = tl.minimum(((xn + 1.0) * NBINS / 2.0).to(tl.int32), NBINS - 1)
    return tl.where(valid, lc[None, :] * NB_PAD + pos, 0), valid


@triton.jit
def channel_block(mean_ptr, std_ptr, C, BLOCK_C: tl.constexpr):
    """The neurons of this program (block ``program_id(1)`` of BLOCK_C): (lanes 0..BLOCK_C-1, their neuron
    indices, which exist, and their float64 normalisation mean and std; 0 and 1 past C)."""
    lc = tl.arange(0, BLOCK_C)
    cols = tl.program_id(1) * BLOCK_C + lc
    cmask = cols < C
    mean = tl.load(mean_ptr + cols, mask=cmask, other=0.0)
    std = tl.load(std_ptr + cols, mask=cmask, other=1.0)
    return lc, cols, cmask, mean, std


@triton.jit
def _neuron_histogram_kernel(
    x_ptr,  # activations, [B, P, C] with strides (sb, sp, sc); fp32 / fp16 / bf16 / fp64
    mean_ptr,  # float64 [C]
    std_ptr,  # float64 [C]
    out_ptr,  # int64 [C, NBINS], accumulated into
    R,  # rows = B * P
    P,
    C,
    sb,
    sp,
    sc,
    rows_per_prog,  # a multiple of BLOCK_R
    NBINS: tl.constexpr,
    NB_PAD: tl.constexpr,  # next power of two >= NBINS
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    FP64: tl.constexpr,  # normalise in float64 (vdna's arithmetic) or float32
):
    """counts[c, k] += #{r : bin(x[r, c]) == k} for the rows [pid_r * rows_per_prog, ...) and
    channels [program_id(1) * BLOCK_C, ...), with bin() the rule of this module."""
    pid_r = tl.program_id(0)
    lc, cols, cmask, mean, std = channel_block(mean_ptr, std_ptr, C, BLOCK_C)
    if not FP64:
        mean = mean.to(tl.float32)
        std = std.to(tl.float32)
    acc = tl.zeros([BLOCK_C * NB_PAD], dtype=tl.int32)
    row_start = pid_r * rows_per_prog
    for r0 in range(row_start, row_start + rows_per_prog, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)  # R < 2**31: the launcher splits larger batches
        rmask = rows < R
        b = (rows // P).to(tl.int64)
        p = (rows % P).to(tl.int64)
        offs = b[:, None] * sb + p[:, None] * sp + cols[None, :].to(tl.int64) * sc
        m = rmask[:, None] & cmask[None, :]
        x = tl.load(x_ptr + offs, mask=m, other=0.0)
        idx, valid = bin_tile(x, mean, std, m, lc, NBINS, NB_PAD, FP64)
        acc += tl.histogram(
            tl.reshape(idx, [BLOCK_R * BLOCK_C]),
            BLOCK_C * NB_PAD,
            mask=tl.reshape(valid, [BLOCK_R * BLOCK_C]),
        )
    counts = tl.reshape(acc, [BLOCK_C, NB_PAD]).to(tl.int64)
    k = tl.arange(0, NB_PAD)
    optr = out_ptr + cols[:, None].to(tl.int64) * NBINS + k[None, :]
    tl.atomic_add(optr, counts, mask=cmask[:, None] & (k[None, :] < NBINS))
