"""The Triton kernels of `neuroprint.kernels.grad_projection` (imported on first use: see kernels/_jit.py)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _grad_projection_kernel(
    x_ptr,  # [B, R, D_IN], strides (sxb, sxr, sxd); fp32 / fp16 / bf16
    g_ptr,  # [B, R, D_OUT], strides (sgb, sgr, sgd); same dtype as x
    p_ptr,  # [D_OUT * K, E], strides (spk, spe); int8 or float
    part_ptr,  # float32 [B, n_oblocks, E], zero-initialised; this program owns part[b, ob, :]
    R,
    D_IN,
    D_OUT,
    E,
    sxb,
    sxr,
    sxd,
    sgb,
    sgr,
    sgd,
    spk,
    spe,
    HAS_BIAS: tl.constexpr,
    IEEE: tl.constexpr,  # exact float32 products (no TF32) for float32 inputs
    UPCAST: tl.constexpr,  # multiply in float32 (Triton's interpreter gets bf16 tl.dot wrong)
    BLOCK_R: tl.constexpr,
    BLOCK_O: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """part[b, ob, :] = sum over the tiles (o in block ob, i) of grad[b, o, i] * p[o * K + i, :],
    with grad[b] = g[b]^T [x[b], 1] formed tile by tile in registers (K = D_IN + HAS_BIAS)."""
    b = tl.program_id(0).to(tl.int64)
    ob = tl.program_id(1)
    n_ob = tl.num_programs(1)
    K = D_IN + HAS_BIAS
    offs_o = ob * BLOCK_O + tl.arange(0, BLOCK_O)
    omask = offs_o < D_OUT
    part_row = part_ptr + (b * n_ob + ob) * E
    for i0 in range(0, K, BLOCK_I):
        offs_i = i0 + tl.arange(0, BLOCK_I)
        acc = tl.zeros([BLOCK_O, BLOCK_I], dtype=tl.float32)
        for r0 in range(0, R, BLOCK_R):
            rows = r0 + tl.arange(0, BLOCK_R)
            rmask = rows < R
            gt = tl.load(
                g_ptr + b * sgb + rows[None, :].to(tl.int64) * sgr + offs_o[:, None].to(tl.int64) * sgd,
                mask=omask[:, None] & rmask[None, :],
                other=0.0,
            )  # [BLOCK_O, BLOCK_R]
            xt = tl.load(
                x_ptr + b * sxb + rows[:, None].to(tl.int64) * sxr + offs_i[None, :].to(tl.int64) * sxd,
                mask=rmask[:, None] & (offs_i[None, :] < D_IN),
                other=0.0,
            )  # [BLOCK_R, BLOCK_I]
            if HAS_BIAS:
                ones = rmask[:, None] & (offs_i[None, :] == D_IN)
                xt = tl.where(ones, 1.0, xt.to(tl.float32)).to(gt.dtype)
            if UPCAST:
                acc += tl.dot(gt.to(tl.float32), xt.to(tl.float32), input_precision="ieee")
            elif IEEE:
                acc += tl.dot(gt, xt, input_precision="ieee")
            else:
                acc += tl.dot(gt, xt)
        kidx = offs_o[:, None].to(tl.int64) * K + offs_i[None, :]
        kmask = omask[:, None] & (offs_i[None, :] < K)
        for e0 in range(0, E, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            emask = offs_e < E
            pt = tl.load(
                p_ptr + kidx[:, :, None] * spk + offs_e[None, None, :].to(tl.int64) * spe,
                mask=kmask[:, :, None] & emask[None, None, :],
                other=0,
            ).to(tl.float32)  # [BLOCK_O, BLOCK_I, BLOCK_E]
            contrib = tl.sum(tl.sum(acc[:, :, None] * pt, axis=1), axis=0)
            prev = tl.load(part_row + offs_e, mask=emask, other=0.0)
            tl.store(part_row + offs_e, prev + contrib, mask=emask)
