"""The Triton kernels of `neuroprint.kernels.emd` (imported on first use: see kernels/_jit.py)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _batched_emd_kernel(
    a_ptr,  # [Pa, R, N] contiguous
    b_ptr,  # [Pb, R, N] contiguous
    pairs_ptr,  # int64 [M, 2]
    out_ptr,  # float64 [M, R]
    R,
    N,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out[m, r] = sum_k |cumsum_k(a[i, r] / sum a[i, r] - b[j, r] / sum b[j, r])| for (i, j) = pairs[m]."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_r = tl.program_id(1)
    i = tl.load(pairs_ptr + pid_m * 2).to(tl.int64)
    j = tl.load(pairs_ptr + pid_m * 2 + 1).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    base_a = a_ptr + i * R * N + rows[:, None].to(tl.int64) * N
    base_b = b_ptr + j * R * N + rows[:, None].to(tl.int64) * N
    # First pass: row sums (float64, as vdna sums with dtype=double).
    sa = tl.zeros([BLOCK_R], dtype=tl.float64)
    sb = tl.zeros([BLOCK_R], dtype=tl.float64)
    for k0 in range(0, N, BLOCK_N):
        k = k0 + tl.arange(0, BLOCK_N)
        msk = rmask[:, None] & (k[None, :] < N)
        sa += tl.sum(tl.load(base_a + k[None, :], mask=msk, other=0).to(tl.float64), axis=1)
        sb += tl.sum(tl.load(base_b + k[None, :], mask=msk, other=0).to(tl.float64), axis=1)
    # Second pass: running cumulative difference, carried across chunks.
    carry = tl.zeros([BLOCK_R], dtype=tl.float64)
    acc = tl.zeros([BLOCK_R], dtype=tl.float64)
    for k0 in range(0, N, BLOCK_N):
        k = k0 + tl.arange(0, BLOCK_N)
        msk = rmask[:, None] & (k[None, :] < N)
        ha = tl.load(base_a + k[None, :], mask=msk, other=0).to(tl.float64)
        hb = tl.load(base_b + k[None, :], mask=msk, other=0).to(tl.float64)
        d = ha / sa[:, None] - hb / sb[:, None]
        c = tl.cumsum(d, axis=1) + carry[:, None]
        acc += tl.sum(tl.where(msk, tl.abs(c), 0.0), axis=1)
        carry = tl.sum(d, axis=1) + carry
    tl.store(out_ptr + pid_m * R + rows, acc, mask=rmask)
