"""Fused histogram kernel vs the torch reference (Triton's interpreter on CPU, the real kernel on CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroprint.kernels import histogram as kh

pytestmark = pytest.mark.skipif(kh.triton is None, reason="Triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _ranges(c: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    mins = -np.abs(rng.normal(2, 1, c))
    maxs = np.abs(rng.normal(2, 1, c))
    mins[: max(1, c // 3)] = 0.0  # ReLU-like neurons whose range starts at zero
    return mins, maxs


def _special_values(x: torch.Tensor, mins, maxs, bins: int) -> torch.Tensor:
    """Plant values exactly on bin edges, at and beyond the range ends, NaN and +-inf."""
    flat = x.reshape(-1, x.shape[-1])
    c = flat.shape[1]
    for j in range(c):
        a, b = 1.2 * mins[j], 1.2 * maxs[j]
        edges = np.linspace(a, b, bins + 1)
        vals = [
            a,
            b,
            a - 1.0,
            b + 1.0,
            *edges[: min(len(edges), 6)],
            float("nan"),
            float("inf"),
            -float("inf"),
        ]
        for i, v in enumerate(vals[: flat.shape[0]]):
            flat[(i * 7 + j) % flat.shape[0], j] = v
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,bins",
    [
        ((3, 13, 7), 17),  # C not a multiple of the channel block
        ((5, 1, 19), 1000),  # P = 1
        ((2, 11, 3), 1),  # N = 1
        ((1, 37, 33), 1000),  # N = 1000, two channel blocks
        ((4, 9, 1), 2),
    ],
)
def test_kernel_equals_reference(dtype, shape, bins):
    c = shape[-1]
    mins, maxs = _ranges(c)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3).double()
    x = _special_values(x, mins, maxs, bins).to(dtype).to(DEVICE)
    mean, std = kh.norm_params(mins, maxs)
    got = kh.triton_neuron_histogram(x, mean, std, bins)
    want = kh.reference_neuron_histogram(x.cpu(), mean, std, bins)
    assert got.dtype == torch.int64 and got.shape == (c, bins)
    assert torch.equal(got.cpu(), want)
    # Counts conserve: every non-NaN activation is counted once per neuron.
    nan = torch.isnan(x.double()).reshape(-1, c).sum(0).cpu()
    assert torch.equal(got.sum(1).cpu(), shape[0] * shape[1] - nan)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_on_bchw_and_strided_views(dtype):
    mins, maxs = _ranges(6)
    mean, std = kh.norm_params(mins, maxs)
    x4 = (torch.randn(2, 6, 5, 3) * 2).to(dtype).to(DEVICE)  # [B, C, H, W]
    bpc = x4.flatten(2).transpose(1, 2)  # the view extractors return
    want = kh.reference_neuron_histogram(bpc.cpu().contiguous(), mean, std, 31)
    assert torch.equal(kh.triton_neuron_histogram(x4, mean, std, 31).cpu(), want)
    assert torch.equal(kh.triton_neuron_histogram(bpc, mean, std, 31).cpu(), want)
    assert torch.equal(kh.reference_neuron_histogram(x4.cpu(), mean, std, 31), want)


def test_empty_input_and_bad_arguments():
    mean, std = kh.norm_params(np.zeros(4), np.ones(4))
    assert (
        torch.count_nonzero(kh.triton_neuron_histogram(torch.zeros(0, 3, 4, device=DEVICE), mean, std, 8))
        == 0
    )
    with pytest.raises(ValueError, match="neurons"):
        kh.triton_neuron_histogram(torch.zeros(2, 3, 5, device=DEVICE), mean, std, 8)
    with pytest.raises(TypeError):
        kh.triton_neuron_histogram(torch.zeros(2, 3, 4, dtype=torch.int64, device=DEVICE), mean, std, 8)


def test_custom_op_is_registered_and_traceable(monkeypatch):
    """The op compiles into a graph without breaks (fake tensor shape inference, no host sync)."""
    import torch._dynamo

    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)  # the suite runs with dynamo off

    mins, maxs = _ranges(5)
    mean, std = kh.norm_params(mins, maxs)
    lin = torch.nn.Linear(8, 5)

    def f(x):
        return kh.neuron_histogram(torch.relu(lin(x)), mean, std, 10)

    x = torch.randn(2, 7, 8)
    with torch._dynamo.config.patch(disable=False):
        torch._dynamo.reset()
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        got = compiled(x)
    assert torch.equal(got, f(x))
    assert hasattr(torch.ops.neuroprint, "neuron_histogram")

    def broken(x):  # the same check must fail on a real graph break, or it proves nothing
        torch._dynamo.graph_break()
        return f(x)

    with (
        torch._dynamo.config.patch(disable=False),
        pytest.raises(Exception, match="graph_break|Unsupported|graph break"),
    ):
        torch._dynamo.reset()
        torch.compile(broken, backend="aot_eager", fullgraph=True)(x)


@pytest.mark.parametrize("name", ["timm:test_resnet", "timm:test_vit"])
def test_extractor_and_histogram_compile_without_graph_breaks(monkeypatch, name):
    """The hot path of make_vdna (extractor taps + histogram op per layer) is one graph under torch.compile."""
    import torch._dynamo

    from neuroprint.extractors import create_extractor

    monkeypatch.delenv("TORCHDYNAMO_DISABLE", raising=False)
    ex = create_extractor(name, weights="random")
    params = {k: kh.norm_params(-np.full(c, 3.0), np.full(c, 3.0)) for k, c in ex.layers.items()}

    def step(x):
        feats = ex(x)
        return [kh.neuron_histogram(feats[k], *params[k], 50) for k in ex.layers]

    h, w = ex.recipe.size
    x = torch.randn(2, 3, h, w)
    with torch._dynamo.config.patch(disable=False), torch.inference_mode():
        torch._dynamo.reset()
        got = torch.compile(step, backend="aot_eager", fullgraph=True)(x)
        want = step(x)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_reference_workspace_survives_inference_mode_switches():
    mean, std = kh.norm_params(-np.ones(3), np.ones(3))
    x = torch.randn(2, 5, 3)
    kh._workspace.__dict__.clear()  # the first buffers are made under inference_mode
    with torch.inference_mode():
        a = kh.reference_neuron_histogram(x, mean, std, 7)
    b = kh.reference_neuron_histogram(x, mean, std, 7)  # same workspace, now outside inference mode
    with torch.inference_mode():
        c = kh.reference_neuron_histogram(x, mean, std, 7)
    assert torch.equal(a, b) and torch.equal(b, c)


# ------------------------------------------------------------------ float32 normalisation (precision)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,bins", [((3, 13, 7), 17), ((1, 37, 33), 1000), ((4, 9, 1), 2)])
def test_fp32_kernel_equals_fp32_reference(dtype, shape, bins):
    """The float32 path: kernel and reference take the same IEEE steps (subtract, divide, clamp, add,
    scale, truncate), so the counts are equal, special values included."""
    c = shape[-1]
    mins, maxs = _ranges(c, seed=2)
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(4)) * 3).double()
    x = _special_values(x, mins, maxs, bins).to(dtype).to(DEVICE)
    mean, std = kh.norm_params(mins, maxs)
    got = kh.triton_neuron_histogram(x, mean, std, bins, precision="fp32")
    want = kh.reference_neuron_histogram(x.cpu(), mean, std, bins, precision="fp32")
    assert torch.equal(got.cpu(), want)
    assert torch.equal(kh.neuron_histogram(x.cpu(), mean, std, bins, precision="fp32"), want)


@pytest.mark.parametrize("bins", [64, 1000])
def test_fp32_counts_move_only_values_within_rounding_of_a_bin_edge(bins):
    """fp32 vs fp64 normalisation on 240k activations: a value may change bin only where its exact
    (float64) position lies within the float32 rounding bound of a bin edge, so the counts moved are at
    most the number of such values; the bound per value is 2**-23 * N/2 * ((|x| + 2|mean|) / std + 4)
    (each of the five float32 roundings, twice over)."""
    g = torch.Generator().manual_seed(7)
    c = 12
    mins, maxs = _ranges(c, seed=5)
    mean, std = kh.norm_params(mins, maxs)
    x = (torch.rand(20000, c, generator=g) * 1.4 - 0.2) * torch.from_numpy(1.2 * (maxs - mins)).float()
    x = (x + torch.from_numpy(1.2 * mins).float()).contiguous()
    # Plant values exactly on float64 bin edges, the hardest case.
    edges = [np.linspace(1.2 * mins[j], 1.2 * maxs[j], bins + 1) for j in range(c)]
    for j in range(c):
        x[: bins + 1, j] = torch.from_numpy(edges[j]).float()
    exact = kh.reference_neuron_histogram(x, mean, std, bins)
    fast = kh.reference_neuron_histogram(x, mean, std, bins, precision="fp32")
    assert torch.equal(exact.sum(1), fast.sum(1))  # every value still counted once
    moved = (exact - fast).abs().sum(1) // 2
    xd, m, s = x.double().numpy(), mean.numpy(), std.numpy()
    pos = ((xd - m) / s + 1) * bins / 2  # unclamped: values far outside the range cannot move
    delta = 2.0**-23 * bins / 2 * ((np.abs(xd) + 2 * np.abs(m)) / s + 4)
    near = ((np.abs(pos - np.round(pos)) <= delta) & (pos > -delta) & (pos < bins + delta)).sum(0)
    assert (moved.numpy() <= near).all(), (moved, near)
    assert int(moved.sum()) <= 0.05 * x.numel()  # mostly the planted edge values
    print(f"bins={bins}: {int(moved.sum())} of {x.numel()} values moved bin (bound {int(near.sum())})")


def test_precision_is_checked():
    mean, std = kh.norm_params(np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="precision"):
        kh.neuron_histogram(torch.zeros(3, 2), mean, std, 4, precision="fp16")
