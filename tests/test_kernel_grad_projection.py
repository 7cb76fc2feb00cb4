"""Fused per-sample-gradient projection: kernel vs reference (Triton's interpreter on CPU, the real
kernel on CUDA), and reference vs per-sample gradients taken explicitly with autograd."""

from __future__ import annotations

import pytest
import torch

from neuroprint.kernels import grad_projection as kg

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (dtype, atol, rtol) relative to the output's scale: inputs are rounded to the dtype before both paths.
TOLERANCES = [(torch.float32, 1e-5, 1e-5), (torch.float16, 2e-3, 2e-3), (torch.bfloat16, 2e-3, 2e-3)]


def _inputs(b, r, d_in, d_out, e, dtype, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, r, d_in, generator=gen).to(dtype)
    g = torch.randn(b, r, d_out, generator=gen).to(dtype)
    rows = kg.projection_rows(d_out, d_in, bias)
    p = (torch.rand(rows, e, generator=gen) > 0.5).to(torch.int8) * 2 - 1
    return x, g, p.to(torch.int8)


def _close(got, want, atol, rtol):
    scale = want.abs().max().clamp_min(1.0)
    torch.testing.assert_close(got / scale, want / scale, atol=atol, rtol=rtol)


@pytest.mark.skipif(kg.triton is None, reason="Triton is not installed")
@pytest.mark.parametrize("dtype,atol,rtol", TOLERANCES)
@pytest.mark.parametrize(
    "b,r,d_in,d_out,e,bias",
    [
        (3, 37, 19, 21, 13, True),  # nothing a multiple of a block
        (1, 5, 31, 17, 40, True),  # the ones column starts a new column block (K = 32)
        (2, 70, 33, 9, 7, False),  # no bias; rows span three row blocks
        (2, 1, 1, 1, 1, True),  # one row, one input, one output
    ],
)
def test_kernel_equals_reference(dtype, atol, rtol, b, r, d_in, d_out, e, bias):
    x, g, p = _inputs(b, r, d_in, d_out, e, dtype, bias)
    want = kg.reference_grad_projection(x, g, p, bias)
    got = kg.triton_grad_projection(x.to(DEVICE), g.to(DEVICE), p.to(DEVICE), bias)
    assert got.dtype == torch.float32 and got.shape == (b, e)
    _close(got.cpu(), want, atol, rtol)


@pytest.mark.skipif(kg.triton is None, reason="Triton is not installed")
def test_kernel_on_strided_inputs_and_float_projection():
    x, g, p = _inputs(2, 23, 18, 20, 11, torch.float32)
    xs = torch.randn(2, 18, 23).transpose(1, 2)  # non-contiguous rows
    xs.copy_(x)
    want = kg.reference_grad_projection(x, g, p)
    got = kg.triton_grad_projection(xs.to(DEVICE), g.to(DEVICE), p.float().to(DEVICE))
    _close(got.cpu(), want, 1e-5, 1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_reference_equals_autograd_per_sample_gradients(bias):
    """flatten([dW, db]) @ p with dW, db taken by autograd one image at a time."""
    torch.manual_seed(3)
    b, v, t, d_in, d_out, e = 3, 2, 5, 7, 6, 9
    layer = torch.nn.Linear(d_in, d_out, bias=bias).double()
    inputs = torch.randn(b, v, t, d_in, dtype=torch.float64)
    target = torch.randn(d_out, dtype=torch.float64)
    p = (torch.rand(kg.projection_rows(d_out, d_in, bias), e) > 0.5).to(torch.int8) * 2 - 1
    p = p.to(torch.int8)
    per_sample = []
    xs, gs = [], []
    for i in range(b):
        layer.zero_grad()
        out = layer(inputs[i])  # [V, T, D_out]: one image, all its views and tokens
        out.retain_grad()
        loss = torch.tanh(out @ target).pow(2).sum()  # a nonlinear per-image loss
        loss.backward()
        grad = layer.weight.grad.clone()
        if bias:
            grad = torch.cat([grad, layer.bias.grad[:, None]], dim=1)
        per_sample.append(grad.flatten() @ p.double())
        xs.append(inputs[i].reshape(v * t, d_in))
        gs.append(out.grad.reshape(v * t, d_out))
    want = torch.stack(per_sample)
    got = kg.reference_grad_projection(torch.stack(xs).float(), torch.stack(gs).float(), p, bias)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    # The public op (custom op) gives the same numbers.
    got_op = kg.grad_projection(torch.stack(xs).float(), torch.stack(gs).float(), p, bias)
    torch.testing.assert_close(got_op, got)


def test_reference_chunking_does_not_change_results(monkeypatch):
    x, g, p = _inputs(5, 9, 12, 10, 6, torch.float32)
    want = kg.reference_grad_projection(x, g, p)
    monkeypatch.setattr(kg, "_GRAD_CHUNK", 130)  # one image per chunk
    monkeypatch.setattr(kg, "_P_CHUNK", 6 * 7)  # seven projection rows per slab
    torch.testing.assert_close(kg.reference_grad_projection(x, g, p), want, atol=1e-5, rtol=1e-5)


def test_bad_arguments_raise():
    x, g, p = _inputs(2, 4, 5, 3, 2, torch.float32)
    with pytest.raises(ValueError, match="rows"):
        kg.grad_projection(x, g, p[:-1])
    with pytest.raises(TypeError):
        kg.grad_projection(x, g.half(), p)
    with pytest.raises(ValueError, match="agree"):
        kg.grad_projection(x, g[:, :3], p)
    with pytest.raises(ValueError, match="\\[B, R, D\\]"):
        kg.grad_projection(x[0], g[0], p)


def test_custom_op_compiles():
    x, g, p = _inputs(2, 6, 5, 4, 3, torch.float32)
    fn = torch.compile(lambda a, b, c: kg.grad_projection(a, b, c) * 2, backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(x, g, p), kg.reference_grad_projection(x, g, p) * 2)


_COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from neuroprint.kernels import grad_projection as kg
ints = dict.fromkeys(["R", "D_IN", "D_OUT", "E"], "i32") | dict.fromkeys(
    ["sxb", "sxr", "sxd", "sgb", "sgr", "sgd", "spk", "spe"], "i64")
blocks = {"HAS_BIAS": 1, "UPCAST": False, "BLOCK_R": 32, "BLOCK_O": 16, "BLOCK_I": 32, "BLOCK_E": 16}
for dt in ("fp32", "fp16", "bf16"):
    sig = {"x_ptr": "*" + dt, "g_ptr": "*" + dt, "p_ptr": "*i8", "part_ptr": "*fp32"} | ints
    sig |= dict.fromkeys(list(blocks) + ["IEEE"], "constexpr")
    src = triton.compiler.ASTSource(fn=kg._grad_projection_kernel, signature=sig,
                                    constexprs=blocks | {"IEEE": dt == "fp32"})
    kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32))
    assert kernel.asm["cubin"], dt
    assert dt == "fp32" or "mma.sync" in kernel.asm["ptx"] or "wgmma" in kernel.asm["ptx"], dt
print("compiled")
"""


@pytest.mark.skipif(kg.triton is None, reason="Triton is not installed")
def test_kernel_compiles_for_sm90_without_a_gpu():
    """The real (not interpreted) kernel compiles to an H100 cubin, with tensor-core MMAs for fp16/bf16."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE], env=env, capture_output=True, text=True, timeout=300
    )
    if proc.returncode != 0 and ("ptxas" in proc.stderr or "No module named" in proc.stderr):
        pytest.skip(f"Triton's CUDA toolchain is unavailable: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "compiled" in proc.stdout
