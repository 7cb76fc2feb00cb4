"""Per-sample gradients of one linear layer, fused with FUNGI's random projection.

Formula (fungivision 0.0.2, ``BaseGradientExtractor.backprop`` + ``autograd_hacks.compute_grad1``), for
image ``b`` with ``R`` rows (all its views times all their tokens), layer inputs ``x[b]`` [R, D_in] and
gradients of the loss w.r.t. the layer's outputs ``g[b]`` [R, D_out]::

    x1[b]   = [x[b], 1]                          [R, K], K = D_in + 1 (the ones column is the bias)
    grad[b] = g[b]^T @ x1[b]                     [D_out, K]: the weight gradient, bias as last column
    out[b]  = flatten(grad[b]) @ p               [E], p: [D_out * K, E] (row-major flattening)

Without a bias, ``K = D_in`` and there is no ones column. ``p`` is FUNGI's +-1 projection stored as
int8 (a quarter of fungivision's float32 matrix; ``p == fungivision_projection.T``); any float ``p`` is
accepted too. The output is float32 whatever the input dtype; products accumulate in float32.

Layers of this module: the Triton kernel (one program per (image, block of output rows): it forms a
[BLOCK_O, BLOCK_I] tile of ``grad[b]`` in registers with ``tl.dot`` over the rows, multiplies it into the
matching [BLOCK_O * BLOCK_I, E] slab of ``p`` and accumulates a per-program partial [E]; the
[D_out, K] gradient is never written to memory), its launcher, the plain torch reference (the CPU path
and the oracle; it forms the gradient of a chunk of images at a time so memory stays bounded), and
`grad_projection`, registered as the torch custom op ``neuroprint::grad_projection``; it runs the
kernel on CUDA and the reference elsewhere.

The ``@triton.jit`` code lives in `_grad_projection_jit.py`, imported on first use (see kernels/_jit.py).
"""

from __future__ import annotations

import os

import torch

from ._jit import cdiv, lazy_jit, triton_available

__all__ = [
    "grad_projection",
    "projection_rows",
    "reference_grad_projection",
    "triton_grad_projection",
]

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# Gradient elements (images x D_out x K) formed at once by the reference, and rows of p converted to
# float at once: 16 MB each in float32.
_GRAD_CHUNK = 1 << 22
_P_CHUNK = 1 << 22


def projection_rows(d_out: int, d_in: int, bias: bool) -> int:
    """Rows of the projection for a [d_out, d_in] linear layer: d_out * (d_in + 1) with a bias."""
    return d_out * (d_in + int(bias))


def _check(x: torch.Tensor, g: torch.Tensor, p: torch.Tensor, bias: bool) -> tuple[int, int, int, int, int]:
    """Validate the arguments; returns (B, R, D_in, D_out, E)."""
    if x.dim() != 3 or g.dim() != 3:
        raise ValueError(f"x and g must be [B, R, D], got {tuple(x.shape)} and {tuple(g.shape)}")
    if x.shape[:2] != g.shape[:2]:
        raise ValueError(f"x {tuple(x.shape)} and g {tuple(g.shape)} must agree on [B, R]")
    if x.dtype not in _FLOATS or g.dtype != x.dtype:
        raise TypeError(f"x and g must share a dtype among {_FLOATS}, got {x.dtype} and {g.dtype}")
    if p.dim() != 2 or not (p.dtype == torch.int8 or p.dtype in _FLOATS):
        raise TypeError(f"p must be a 2-d int8 or float tensor, got {p.dtype} {tuple(p.shape)}")
    b, r, d_in = x.shape
    d_out = g.shape[2]
    rows = projection_rows(d_out, d_in, bias)
    if p.shape[0] != rows:
        raise ValueError(
            f"p has {p.shape[0]} rows but a [{d_out}, {d_in}] layer{' with bias' if bias else ''} needs {rows}"
        )
    if x.device != g.device or x.device != p.device:
        raise ValueError(f"x, g and p must be on one device, got {x.device}, {g.device}, {p.device}")
    return b, r, d_in, d_out, p.shape[1]


def reference_grad_projection(
    x: torch.Tensor, g: torch.Tensor, p: torch.Tensor, bias: bool = True
) -> torch.Tensor:
    """Plain torch reference: out [B, E] float32 = flatten(g[b]^T [x[b], 1]) @ p for every image b.

    The gradient of a chunk of images is formed in float32 (bounded by ``_GRAD_CHUNK`` elements), then
    multiplied by ``p`` a slab of rows at a time (each slab converted to float32 once per chunk).
    """
    b, _, d_in, d_out, e = _check(x, g, p, bias)
    k = d_in + int(bias)
    rows = d_out * k
    out = torch.zeros(b, e, dtype=torch.float32, device=x.device)
    if b == 0 or e == 0 or rows == 0:
        return out
    step = max(1, min(b, _GRAD_CHUNK // rows))
    p_step = max(1, _P_CHUNK // max(1, e))
    for start in range(0, b, step):
        stop = min(b, start + step)
        gb = g[start:stop].float().transpose(1, 2)  # [n, D_out, R]
        grads = torch.empty(stop - start, d_out, k, dtype=torch.float32, device=x.device)
        grads[:, :, :d_in] = torch.bmm(gb, x[start:stop].float())
        if bias:
            grads[:, :, d_in] = gb.sum(2)
        flat = grads.view(stop - start, rows)
        for r0 in range(0, rows, p_step):
            r1 = min(rows, r0 + p_step)
            out[start:stop].addmm_(flat[:, r0:r1], p[r0:r1].float())
    return out


# ------------------------------------------------------------------------------------------ Triton


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def plan_grad_projection(
    b: int,
    r: int,
    d_in: int,
    d_out: int,
    e: int,
    dtype: torch.dtype,
    p_dtype: torch.dtype,
    bias: bool = True,
    x_strides=None,
    g_strides=None,
    p_strides=None,
):
    """The `Launch` of `triton_grad_projection` (contiguous strides unless given)."""
    from ._launch import Launch, extent

    block_o, block_i, block_r, block_e = 16, 32, 32, 16
    k = d_in + int(bias)
    xs = x_strides or (r * d_in, d_in, 1)
    gs = g_strides or (r * d_out, d_out, 1)
    ps = p_strides or (e, 1)
    n_ob = max(1, cdiv(d_out, block_o))
    return Launch(
        _jit()._grad_projection_kernel,
        grid=(max(b, 1), n_ob),
        pointers={"x_ptr": dtype, "g_ptr": dtype, "p_ptr": p_dtype, "part_ptr": torch.float32},
        extents={"x_ptr": extent((b, r, d_in), xs), "g_ptr": extent((b, r, d_out), gs),
                 "p_ptr": extent((d_out * k, e), ps), "part_ptr": b * n_ob * e},
        scalars={"R": r, "D_IN": d_in, "D_OUT": d_out, "E": e, "sxb": xs[0], "sxr": xs[1], "sxd": xs[2],
                 "sgb": gs[0], "sgr": gs[1], "sgd": gs[2], "spk": ps[0], "spe": ps[1]},
        constexprs={"HAS_BIAS": int(bias), "IEEE": dtype == torch.float32,
                    "UPCAST": dtype == torch.bfloat16 and _interpreted(),
                    "BLOCK_R": block_r, "BLOCK_O": block_o, "BLOCK_I": block_i, "BLOCK_E": block_e},
        # float32's full-precision products spill 12 bytes per thread at 4 warps on sm_90; 8 do not.
        num_warps=8 if dtype == torch.float32 else 4,
    )  # fmt: skip


def triton_grad_projection(
    x: torch.Tensor, g: torch.Tensor, p: torch.Tensor, bias: bool = True
) -> torch.Tensor:
    """Launcher: out [B, E] float32 by the Triton kernel (CUDA tensors, or CPU under TRITON_INTERPRET=1)."""
    if not triton_available():
        raise RuntimeError("Triton is not installed; use reference_grad_projection")
    b, r, d_in, d_out, e = _check(x, g, p, bias)
    plan = plan_grad_projection(
        b, r, d_in, d_out, e, x.dtype, p.dtype, bias, x.stride(), g.stride(), p.stride()
    )
    part = torch.zeros(b, plan.grid[1], e, dtype=torch.float32, device=x.device)
    if b == 0 or e == 0 or d_out == 0:
        return part.sum(1)
    plan(x_ptr=x, g_ptr=g, p_ptr=p, part_ptr=part)
    # A sum over a fixed number of partials in a fixed order: deterministic, unlike atomics.
    return part.sum(1)


# -------------------------------------------------------------------------------------- custom op


@torch.library.custom_op("neuroprint::grad_projection", mutates_args=())
def _grad_projection_op(x: torch.Tensor, g: torch.Tensor, p: torch.Tensor, bias: bool) -> torch.Tensor:
    return reference_grad_projection(x, g, p, bias)


@_grad_projection_op.register_fake
def _(x, g, p, bias):
    return x.new_empty((x.shape[0], p.shape[1]), dtype=torch.float32)


if triton_available():

    @_grad_projection_op.register_kernel("cuda")
    def _(x, g, p, bias):
        return triton_grad_projection(x, g, p, bias)


def grad_projection(x: torch.Tensor, g: torch.Tensor, p: torch.Tensor, bias: bool = True) -> torch.Tensor:
    """Projected per-sample gradients [B, E] (float32) of a linear layer, without forming them in memory.

    x: layer inputs [B, R, D_in]; g: gradients w.r.t. the layer outputs [B, R, D_out] (R = views x tokens
    of one image, same dtype among fp32/fp16/bf16); p: the projection [D_out * (D_in + bias), E], int8
    +-1 or float. Runs the Triton kernel on CUDA, the torch reference elsewhere.
    """
    _check(x, g, p, bias)
    return _grad_projection_op(x, g, p, bias)


# the @triton.jit code, imported on first use (see kernels/_jit.py)
_jit, __getattr__ = lazy_jit(__name__, "_grad_projection_jit")
