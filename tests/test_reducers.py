"""Histogram binning reference and the mergeable reducers: exactness and batch/shard invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroprint import Ranges
from neuroprint._errors import IncompatibleVDNAError
from neuroprint.kernels.histogram import neuron_histogram, norm_params, reference_neuron_histogram
from neuroprint.stats.reducers import (
    ActivationRangesReducer,
    GaussianReducer,
    HistogramReducer,
    LayerGaussianReducer,
    make_reducer,
    parse_distribution,
)


def naive_histogram(x: np.ndarray, mins: np.ndarray, maxs: np.ndarray, bins: int) -> np.ndarray:
    """Element-by-element statement of the binning rule (Python floats are IEEE doubles)."""
    rows = x.reshape(-1, x.shape[-1]).astype(np.float64)
    out = np.zeros((rows.shape[1], bins), dtype=np.int64)
    for c in range(rows.shape[1]):
        a, b = float(mins[c]) * 1.2, float(maxs[c]) * 1.2
        mean, std = (a + b) / 2, (b - a) / 2 + 1e-8
        for v in rows[:, c]:
            if np.isnan(v):
                continue
            xn = min(max((float(v) - mean) / std, -1.0), 1.0)
            k = int((xn + 1.0) * bins / 2.0)
            out[c, min(k, bins - 1)] += 1
    return out


def _acts(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 3
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape,bins", [((3, 13, 7), 17), ((2, 5, 1), 1), ((1, 1, 9), 1000), ((4, 7, 3), 2)])
def test_reference_equals_naive_rule(dtype, shape, bins):
    x = _acts(shape, dtype)
    c = shape[-1]
    rng = np.random.default_rng(1)
    mins = -np.abs(rng.normal(2, 1, c))
    maxs = np.abs(rng.normal(2, 1, c))
    mins[0] = 0.0  # a neuron whose range starts at zero (ReLU layers)
    mean, std = norm_params(mins, maxs)
    got = reference_neuron_histogram(x, mean, std, bins)
    want = naive_histogram(x.double().numpy(), mins, maxs, bins)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), want)
    assert int(got.sum()) == x.numel()


def test_edges_nan_and_inf():
    mins, maxs = np.array([-1 / 1.2]), np.array([1 / 1.2])  # normalised range is exactly [-1, 1]
    mean, std = norm_params(mins, maxs)
    x = torch.tensor([[-5.0], [float("-inf")], [float("inf")], [float("nan")], [0.0], [1.0], [0.99999]])
    counts = reference_neuron_histogram(x, mean, std, 4)[0]
    want = naive_histogram(x.numpy(), mins, maxs, 4)[0]
    np.testing.assert_array_equal(counts.numpy(), want)
    assert int(counts.sum()) == 6  # NaN not counted; -inf and -5 in the first bin, +inf in the last
    assert counts[0] == 2 and counts[-1] >= 2


def test_layouts_rows_and_bpc_agree_and_out_accumulates():
    x = _acts((3, 11, 5), torch.float32)
    mean, std = norm_params(-np.ones(5) * 4, np.ones(5) * 4)
    a = neuron_histogram(x, mean, std, 33)
    b = neuron_histogram(x.reshape(-1, 5), mean, std, 33)
    assert torch.equal(a, b)
    out = torch.zeros(5, 33, dtype=torch.int64)
    neuron_histogram(x, mean, std, 33, out=out)
    neuron_histogram(x, mean, std, 33, out=out)
    assert torch.equal(out, 2 * a)


def test_non_contiguous_input():
    x = _acts((3, 5, 11), torch.float32).transpose(1, 2)  # [3, 11, 5] strided
    mean, std = norm_params(-np.ones(5) * 4, np.ones(5) * 4)
    assert torch.equal(neuron_histogram(x, mean, std, 9), neuron_histogram(x.contiguous(), mean, std, 9))


def test_histogram_bad_arguments():
    mean, std = norm_params(-np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="neurons"):
        neuron_histogram(torch.zeros(2, 3, 5), mean, std, 10)
    with pytest.raises(TypeError, match="floating"):
        neuron_histogram(torch.zeros(2, 3, 4, dtype=torch.int32), mean, std, 10)
    with pytest.raises(ValueError, match="bins"):
        neuron_histogram(torch.zeros(2, 3, 4), mean, std, 0)
    with pytest.raises(ValueError, match="out must be"):
        neuron_histogram(torch.zeros(2, 3, 4), mean, std, 10, out=torch.zeros(4, 10, dtype=torch.int32))


# ------------------------------------------------------------------------------------------- reducers

LAYERS = {"a": 6, "b": 3}


def _batches(n_images: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(n_images, 9, 6, generator=g) * 2 + 0.5,
        "b": torch.randn(n_images, 1, 3, generator=g).double().float() * 5,
    }


def _ranges():
    return Ranges(
        {"a": -np.full(6, 5.0), "b": -np.full(3, 12.0)}, {"a": np.full(6, 6.0), "b": np.full(3, 11.0)}, "test"
    )


def _reducers():
    return [
        HistogramReducer(LAYERS, 50, _ranges()),
        GaussianReducer(LAYERS),
        LayerGaussianReducer(LAYERS),
        ActivationRangesReducer(LAYERS),
    ]


def _feed(reducers, feats, splits):
    start = 0
    for size in splits:
        for r in reducers:
            r.update({k: v[start : start + size] for k, v in feats.items()})
        start += size
    return reducers


def _assert_same(r1, r2, exact: bool):
    a, b = r1.result(), r2.result()
    for layer in LAYERS:
        if isinstance(r1, HistogramReducer):
            assert torch.equal(a[layer], b[layer])
            continue
        for key in a[layer]:
            if exact:
                assert torch.equal(a[layer][key], b[layer][key]), key
            else:
                torch.testing.assert_close(a[layer][key], b[layer][key], rtol=1e-12, atol=1e-12)


def test_one_batch_many_batches_and_shards_agree():
    feats = _batches(37)
    whole = _feed(_reducers(), feats, [37])
    many = _feed(_reducers(), feats, [1, 5, 8, 2, 13, 8])
    # Three shards reduced separately, merged in a scrambled order.
    shards = [
        _feed(_reducers(), {k: v[s:e] for k, v in feats.items()}, [e - s])
        for s, e in ((0, 10), (10, 11), (11, 37))
    ]
    merged = shards[2]
    for other in (shards[0], shards[1]):
        merged = [m.merge(o) for m, o in zip(merged, other)]
    for w, m, s in zip(whole, many, merged):
        assert w.count == m.count == s.count == 37
        exact = isinstance(w, (HistogramReducer, ActivationRangesReducer))
        _assert_same(w, m, exact)
        _assert_same(w, s, exact)


def test_moments_match_float64_two_pass_and_vdna_conventions():
    feats = _batches(23)
    g, lg = GaussianReducer(LAYERS), LayerGaussianReducer(LAYERS)
    _feed([g, lg], feats, [4, 4, 15])
    for layer in LAYERS:
        v = feats[layer].double().mean(dim=1)  # vdna: per-image spatial mean first
        torch.testing.assert_close(g.result()[layer]["mu"], v.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g.result()[layer]["var"], v.var(0, correction=1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lg.result()[layer]["sigma"], torch.cov(v.T), rtol=1e-12, atol=1e-12)


def test_single_image_variance_is_zero_like_vdna():
    g, lg = GaussianReducer(LAYERS), LayerGaussianReducer(LAYERS)
    _feed([g, lg], _batches(1), [1])
    assert torch.count_nonzero(g.result()["a"]["var"]) == 0
    assert torch.count_nonzero(lg.result()["a"]["sigma"]) == 0


def test_empty_batches_are_ignored():
    feats = _batches(5)
    rs = _feed(_reducers(), feats, [0, 5, 0])
    ref = _feed(_reducers(), feats, [5])
    for a, b in zip(rs, ref):
        _assert_same(a, b, exact=True)


def test_activation_ranges_to_ranges():
    feats = _batches(8)
    r = _feed([ActivationRangesReducer(LAYERS)], feats, [8])[0]
    rng = r.to_ranges("t")
    np.testing.assert_array_equal(rng.mins["a"], feats["a"].amin(dim=(0, 1)).double().numpy())
    np.testing.assert_array_equal(rng.maxs["b"], feats["b"].amax(dim=(0, 1)).double().numpy())
    with pytest.raises(ValueError, match="no activations"):
        ActivationRangesReducer(LAYERS).result()


def test_merge_refuses_mismatches():
    h1 = HistogramReducer(LAYERS, 50, _ranges())
    other_ranges = Ranges(
        {"a": -np.full(6, 4.0), "b": -np.full(3, 12.0)}, {"a": np.full(6, 6.0), "b": np.full(3, 11.0)}
    )
    with pytest.raises(IncompatibleVDNAError):
        h1.merge(HistogramReducer(LAYERS, 50, other_ranges))
    with pytest.raises(IncompatibleVDNAError):
        h1.merge(HistogramReducer(LAYERS, 40, _ranges()))
    with pytest.raises(IncompatibleVDNAError):
        GaussianReducer(LAYERS).merge(LayerGaussianReducer(LAYERS))
    with pytest.raises(IncompatibleVDNAError):
        GaussianReducer(LAYERS).merge(GaussianReducer({"a": 6}))


def test_update_checks_shapes():
    r = GaussianReducer(LAYERS)
    with pytest.raises(ValueError, match="expected"):
        r.update({"a": torch.zeros(2, 3, 5), "b": torch.zeros(2, 1, 3)})
    with pytest.raises(ValueError, match="same images"):
        r.update({"a": torch.zeros(2, 3, 6), "b": torch.zeros(3, 1, 3)})


def test_ranges_must_cover_layers():
    from neuroprint import VDNAFileError

    with pytest.raises(VDNAFileError, match="no layer"):
        HistogramReducer({"c": 2}, 10, _ranges())
    with pytest.raises(VDNAFileError, match="neurons"):
        HistogramReducer({"a": 5}, 10, _ranges())


@pytest.mark.parametrize(
    "name,parsed",
    [
        ("histogram-1000", ("histogram", 1000)),
        ("gaussian", ("gaussian", 0)),
        ("layer-gaussian", ("layer-gaussian", 0)),
    ],
)
def test_parse_distribution(name, parsed):
    assert parse_distribution(name) == parsed


@pytest.mark.parametrize("bad", ["histogram", "histogram-0", "histogram-x", "hist-10", "gauss", ""])
def test_parse_distribution_rejects(bad):
    with pytest.raises(ValueError, match="distribution|histogram"):
        parse_distribution(bad)


def test_histogram_reducer_needs_ranges():
    with pytest.raises(ValueError, match="ranges"):
        make_reducer("histogram-10", LAYERS)


@pytest.mark.parametrize("layout", ["channel-major", "rows"])
def test_moment_and_range_reducers_equal_the_whole_batch_formulas_past_one_chunk(layout):
    """The float64 per-image means are taken a few images at a time on the CPU (no whole-batch float64
    copy) and the ranges without reshaping to rows: the same numbers, bit for bit, as the plain formulas,
    for a batch larger than one chunk (5 x 3001 x 71 > 2**20 elements) and a ragged last chunk."""
    from neuroprint.stats.reducers import ActivationRangesReducer, GaussianReducer, LayerGaussianReducer

    g = torch.Generator().manual_seed(3)
    if layout == "channel-major":
        x = (torch.randn(5, 71, 3001, generator=g) * 3 + 1).transpose(1, 2)  # [B, P, C], stride(1) == 1
    else:
        x = torch.randn(5, 3001, 71, generator=g) * 3 + 1
    x[2, 7, 5] = float("nan")
    layers = {"l": 71}
    v = x.to(torch.float64).mean(dim=1)
    lg, ga, ra = LayerGaussianReducer(layers), GaussianReducer(layers), ActivationRangesReducer(layers)
    for r in (lg, ga, ra):
        r.update({"l": x})
    torch.testing.assert_close(lg.mean["l"], v.mean(0), rtol=0, atol=0, equal_nan=True)
    c = v - v.mean(0)
    torch.testing.assert_close(lg.m2["l"], c.T @ c, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(ga.m2["l"], (c * c).sum(0), rtol=0, atol=0, equal_nan=True)
    rows = x.reshape(-1, 71)
    torch.testing.assert_close(ra.min["l"], rows.amin(0).float(), rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(ra.max["l"], rows.amax(0).float(), rtol=0, atol=0, equal_nan=True)
