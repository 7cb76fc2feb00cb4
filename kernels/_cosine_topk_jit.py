"""The Triton kernels of `neuroprint.kernels.cosine_topk` (imported on first use: see kernels/_jit.py)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _cosine_topk_kernel(
    q_ptr,  # [Nq, D] fp32 / fp16 / bf16, strides (sqm, sqd)
    d_ptr,  # [Nd, D] same dtype, strides (sdn, sdd)
    rq_ptr,  # float32 [Nq]: inverse norms of the query rows
    rd_ptr,  # float32 [Nd]: inverse norms of the database rows
    out_ptr,  # int64 [Nq, K] keys, written in descending order
    Nq,
    Nd,
    D,
    sqm,
    sqd,
    sdn,
    sdd,
    query_offset,  # with EXCLUDE: query row i is database row query_offset + i and is skipped
    K: tl.constexpr,
    K_PAD: tl.constexpr,  # next power of two >= K
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,  # fp32 inputs: full fp32 products (no TF32), so rankings match the reference
    UPCAST: tl.constexpr,  # convert tiles to fp32 before the dot (the interpreter has no bf16 matmul)
    EXCLUDE: tl.constexpr,  # skip self-matches (see query_offset)
):
    """keys[i, :] = the K largest pack(s(i, j), j) over database rows j, for i in this program's
    BLOCK_M query rows; s as in the module docstring, accumulated in float32."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < Nq
    rq = tl.load(rq_ptr + rows, mask=rmask, other=0.0)
    slot = tl.arange(0, K_PAD)
    empty = tl.full([BLOCK_M, K_PAD], -9223372036854775807 - 1, tl.int64)
    # Distinct placeholders (just above the empty key) so that "the slot holding the row minimum" is
    # unique; padding slots beyond K start at +inf-like keys so they are never replaced nor chosen.
    top = tl.where(slot[None, :] < K, empty + 1 + slot[None, :].to(tl.int64), empty)
    top = tl.where(slot[None, :] < K, top, 9223372036854775807)
    for n0 in range(0, Nd, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        cmask = cols < Nd
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < D
            a = tl.load(
                q_ptr + rows[:, None].to(tl.int64) * sqm + ks[None, :].to(tl.int64) * sqd,
                mask=rmask[:, None] & kmask[None, :],
                other=0.0,
            )
            b = tl.load(
                d_ptr + cols[None, :].to(tl.int64) * sdn + ks[:, None].to(tl.int64) * sdd,
                mask=cmask[None, :] & kmask[:, None],
                other=0.0,
            )
            if UPCAST:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        rd = tl.load(rd_ptr + cols, mask=cmask, other=0.0)
        s = acc * rq[:, None] * rd[None, :]
        bits = s.to(tl.int32, bitcast=True)
        ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
        keys = (ordered << 32) | (4294967295 - cols[None, :].to(tl.int64))
        valid = cmask[None, :] & (rows[:, None] >= 0)
        if EXCLUDE:
            valid = valid & (cols[None, :] != rows[:, None] + query_offset)
        keys = tl.where(valid, keys, -9223372036854775807 - 1)
        # Merge: move the block's best keys into the running top-k while they beat its minimum. Once
        # the running top-k has settled, most blocks improve no row and skip the K passes.
        improves = tl.max(keys, axis=1) > tl.min(top, axis=1)
        if tl.sum(improves.to(tl.int32), axis=0) > 0:
            for _ in range(K):
                cmax = tl.max(keys, axis=1)
                tmin = tl.min(top, axis=1)
                better = cmax > tmin
                top = tl.where((top == tmin[:, None]) & better[:, None], cmax[:, None], top)
                keys = tl.where(keys == cmax[:, None], -9223372036854775807 - 1, keys)
    # Emit in descending order; placeholders become the empty key.
    top = tl.where(slot[None, :] < K, top, -9223372036854775807 - 1)
    for t in range(K):
        m = tl.max(top, axis=1)
        val = tl.where(m < -9223372036854775807 + K_PAD, -9223372036854775807 - 1, m)
        tl.store(out_ptr + rows.to(tl.int64) * K + t, val, mask=rmask)
        top = tl.where(top == m[:, None], -9223372036854775807 - 1, top)
