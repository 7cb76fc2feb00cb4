"""Cross-checks of neuroprint against the real ``vdna`` 0.1.1 package: distances, files, binning, FD, make_vdna.

Every test runs vdna's own code on the same inputs as neuroprint's and compares the results:

1. EMD / NFD / FD on VDNAs built and saved by vdna, loaded by ``neuroprint.load_vdna_from_files``.
   vdna computes NFD in the dtype of the stored data (float32 for gaussian files), averages FD layers in
   float32 (``torch.Tensor(list)``) and writes neuron-wise NFD/FD into float32 zeros (``torch.zeros(n)``);
   neuroprint computes everything in float64. So the 1e-9 comparison runs vdna on the same VDNAs with their
   data cast to float64 and torch's default dtype set to float64 (vdna's formulas are dtype-generic; its
   float32 zeros and ``torch.Tensor`` follow the default dtype), and a second test checks the stock float32
   vdna results to float32 precision.
2. Files both ways for the four kinds; the histogram npz layout; no pickle is ever loaded.
3. Per-neuron binning (``neuron_histogram``) against vdna's normalisation + ``histogram_per_channel``.
4. ``frechet_distance`` against pytorch-fid's scipy ``sqrtm`` formula on 2048-d statistics.
5. ``VDNAProcessor.make_vdna`` end to end against vdna's, with the same random ResNet-50 weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import neuroprint
from neuroprint import VDNAFileError
from neuroprint.kernels.histogram import neuron_histogram, norm_params

vdna = pytest.importorskip("vdna")
from vdna import vdnas as vdna_vdnas  # noqa: E402
from vdna.networks import feature_extraction_model as vdna_fem  # noqa: E402
from vdna.utils.stats import histogram_per_channel  # noqa: E402

# Small random VDNAs: three layers (names with dots, as timm layers have), a few dozen neurons.
LAYERS = {"conv.0": 5, "blocks.1": 17, "head": 40}
BINS = 50
EXTRACTOR = "parity_net"
KINDS = ("histogram", "gaussian", "layer-gaussian", "activation-ranges")

NP_METRICS = {"EMD": neuroprint.EMD, "NFD": neuroprint.NFD, "FD": neuroprint.FD}
VDNA_METRICS = {"EMD": vdna.EMD, "NFD": vdna.NFD, "FD": vdna.FD}

# (metric, kind of the first VDNA, kind of the second VDNA)
METRIC_CASES = [
    ("EMD", "histogram", "histogram"),
    ("NFD", "gaussian", "gaussian"),
    ("NFD", "layer-gaussian", "layer-gaussian"),  # vdna converts both to their diagonals
    ("NFD", "gaussian", "layer-gaussian"),  # mixed: vdna converts only the second
    ("FD", "layer-gaussian", "layer-gaussian"),
]
SELECTIONS = {
    "all-neurons": {},
    "one-layer": {"use_neurons_from_layer": "blocks.1"},
    "first-neuron": {"use_neurons_from_layer": "blocks.1", "use_neuron_index": 0},
    "last-neuron": {"use_neurons_from_layer": "head", "use_neuron_index": 39},
    "neuron-wise-one-layer": {"use_neurons_from_layer": "blocks.1", "return_neuron_wise": True},
    "neuron-wise-all-layers": {"return_neuron_wise": True},
}


# ---------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def make_vdna_object(kind: str, seed: int):
    """A vdna VDNA of ``kind`` filled with random data, as vdna's own classes hold it in memory."""
    rng = np.random.default_rng(seed)
    if kind == "histogram":
        v = vdna_vdnas.VDNAHist(hist_nb_bins=BINS)
    else:
        v = {
            "gaussian": vdna_vdnas.VDNAGauss,
            "layer-gaussian": vdna_vdnas.VDNALayerGauss,
            "activation-ranges": vdna_vdnas.VDNAActivationRanges,
        }[kind]()
    data = {}
    for layer, n in LAYERS.items():
        if kind == "histogram":
            counts = rng.integers(0, 40, (n, BINS)) * (rng.random((n, BINS)) < 0.7)
            counts[np.arange(n), rng.integers(0, BINS, n)] += 1  # no empty histogram
            data[layer] = torch.from_numpy(counts.astype(np.int64))
        elif kind == "gaussian":
            mu = rng.normal(0.0, 2.0, n).astype(np.float32)
            var = rng.uniform(0.05, 3.0, n).astype(np.float32)
            var[0] = 0.0  # vdna's variance of a one-image VDNA
            data[layer] = {"mu": torch.from_numpy(mu), "var": torch.from_numpy(var)}
        elif kind == "layer-gaussian":
            # Well conditioned: A A^T / m + 0.1 I with m > n, so that sqrtm and eigh agree to ~1e-13.
            m = 2 * n + 3
            a = rng.normal(size=(n, m))
            sigma = a @ a.T / m + 0.1 * np.eye(n)
            data[layer] = {"mu": torch.from_numpy(rng.normal(0.0, 1.0, n)), "sigma": torch.from_numpy(sigma)}
        else:
            lo = -rng.uniform(0.0, 3.0, n).astype(np.float32)
            hi = rng.uniform(0.1, 5.0, n).astype(np.float32)
            data[layer] = {"min": torch.from_numpy(lo), "max": torch.from_numpy(hi)}
    v.data = data
    v.neurons_list = dict(LAYERS)
    v.feature_extractor_name = EXTRACTOR
    v.num_images = 5 + seed
    return v


def to_float64(v):
    """The same vdna VDNA with every floating tensor cast to float64 (histogram counts stay integers)."""
    if v.type != "histogram":
        v.data = {layer: {k: t.double() for k, t in d.items()} for layer, d in v.data.items()}
    return v


def assert_same_distance(ours, ref, *, rtol: float, atol: float) -> None:
    """Same structure (tensor or {layer: tensor} in the same layer order); values within rtol/atol."""
    if isinstance(ref, dict):
        assert isinstance(ours, dict), f"expected a dict of layers, got {type(ours).__name__}"
        assert list(ours) == list(ref)
        for layer in ref:
            assert_same_distance(ours[layer], ref[layer], rtol=rtol, atol=atol)
        return
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float64
    ref = torch.as_tensor(ref)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref.to(torch.float64), rtol=rtol, atol=atol)


def assert_same_data(ours, theirs) -> None:
    """Bit-for-bit equal data (values and dtype), tensor by tensor."""
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and set(ours) == set(theirs)
        for k in theirs:
            assert_same_data(ours[k], theirs[k])
        return
    assert ours.dtype == theirs.dtype, (ours.dtype, theirs.dtype)
    assert torch.equal(ours.cpu(), theirs.cpu())


def vdna_file_dtype(kind: str) -> torch.dtype:
    """The dtype vdna 0.1.1 writes for each kind (and what neuroprint writes too)."""
    if kind == "histogram":
        return torch.int32
    return torch.float64 if kind == "layer-gaussian" else torch.float32


# ---------------------------------------------------------------------------------- files written by vdna


@pytest.fixture(scope="module")
def vdna_files(tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Two random VDNAs ("a", "b") of every kind, written by vdna's own ``save``."""
    root = tmp_path_factory.mktemp("vdna_written")
    paths = {}
    for kind in KINDS:
        for tag, seed in (("a", 1), ("b", 2)):
            path = root / f"{kind}_{tag}"
            make_vdna_object(kind, seed).save(str(path))
            paths[(kind, tag)] = path
    return paths


def load_pair(vdna_files, kind1: str, kind2: str, loader):
    return loader(str(vdna_files[(kind1, "a")])), loader(str(vdna_files[(kind2, "b")]))


@pytest.fixture
def vdna_sqrtm_compat(monkeypatch):
    """vdna's FD calls ``covmean, _ = sqrtm(A, disp=False)``. scipy 1.17 returns a bare array instead of the
    documented (sqrtm, errest) tuple when A is 1 x 1, so stock vdna crashes on its per-neuron FD paths
    (``use_neuron_index``, ``return_neuron_wise``) with "not enough values to unpack". This wrapper restores
    the documented return value; it changes nothing else (and silences scipy's deprecation of ``disp``)."""
    import scipy.linalg
    import vdna.utils.stats as vdna_stats

    def sqrtm(a, disp=True, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            out = scipy.linalg.sqrtm(a, disp=disp, **kwargs)
        if not disp and not isinstance(out, tuple):
            return out, 0.0
        return out

    monkeypatch.setattr(vdna_stats, "sqrtm", sqrtm)


# ------------------------------------------------------------------------------------------ 1. distances


@pytest.mark.parametrize("selection", list(SELECTIONS.values()), ids=list(SELECTIONS))
@pytest.mark.parametrize(
    ("metric", "kind1", "kind2"), METRIC_CASES, ids=[f"{m}-{a}-{b}" for m, a, b in METRIC_CASES]
)
def test_distances_match_vdna_in_float64(vdna_files, vdna_sqrtm_compat, metric, kind1, kind2, selection):
    """neuroprint on vdna's files == vdna on the same files in float64, to 1e-9 (rel and abs).

    FD's trace term is scipy's sqrtm in vdna and a symmetric eigendecomposition in neuroprint; on these
    well-conditioned covariances both are accurate far below 1e-9.
    """
    ours1, ours2 = load_pair(vdna_files, kind1, kind2, neuroprint.load_vdna_from_files)
    theirs1, theirs2 = (to_float64(v) for v in load_pair(vdna_files, kind1, kind2, vdna.load_vdna_from_files))
    ours = NP_METRICS[metric](ours1, ours2, **selection)
    with default_dtype(torch.float64):
        ref = VDNA_METRICS[metric](theirs1, theirs2, **selection)
    assert_same_distance(ours, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("selection", list(SELECTIONS.values()), ids=list(SELECTIONS))
@pytest.mark.parametrize(
    ("metric", "kind1", "kind2"), METRIC_CASES, ids=[f"{m}-{a}-{b}" for m, a, b in METRIC_CASES]
)
def test_distances_match_stock_vdna_to_float32_precision(
    vdna_files, vdna_sqrtm_compat, metric, kind1, kind2, selection
):
    """Against stock vdna (float32 where vdna computes in float32), neuroprint's float64 values agree to
    float32 precision: relative 2e-6, plus an absolute 1e-6 of the typical magnitude for cancellation."""
    ours1, ours2 = load_pair(vdna_files, kind1, kind2, neuroprint.load_vdna_from_files)
    theirs1, theirs2 = load_pair(vdna_files, kind1, kind2, vdna.load_vdna_from_files)
    ours = NP_METRICS[metric](ours1, ours2, **selection)
    ref = VDNA_METRICS[metric](theirs1, theirs2, **selection)
    values = torch.cat([t.reshape(-1) for t in ref.values()]) if isinstance(ref, dict) else ref.reshape(-1)
    assert_same_distance(ours, ref, rtol=2e-6, atol=1e-6 * float(values.abs().mean()))


# ---------------------------------------------------------------------------------------- 2. file formats


@pytest.mark.parametrize("kind", KINDS)
def test_vdna_written_files_load_in_neuroprint(vdna_files, kind):
    """Files written by vdna load in neuroprint with the same data (bit for bit) and metadata.

    vdna 0.1.1's ``_save_dist_data`` of the gaussian, layer-gaussian and activation-ranges kinds also writes
    ``data[layer] = {}``: one pickled 0-d object array per layer, named like the layer, which vdna never
    reads back. A loader that never unpickles must leave those members alone, not fail on them.
    """
    path = vdna_files[(kind, "a")]
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:  # lists members, reads none
        members = set(z.files)
    if kind != "histogram":
        assert set(LAYERS) <= members  # vdna's pickled placeholders, one per layer
    theirs = vdna.load_vdna_from_files(str(path))
    ours = neuroprint.load_vdna_from_files(path)
    assert type(ours).__name__ == type(theirs).__name__
    assert ours.type == theirs.type == kind
    assert ours.name == theirs.name
    assert ours.neurons_list == theirs.neurons_list == LAYERS
    assert list(ours.neurons_list) == list(LAYERS)
    assert ours.num_images == theirs.num_images == 6
    assert ours.feature_extractor_name == theirs.feature_extractor_name == EXTRACTOR
    if kind == "histogram":
        assert ours.hist_nb_bins == theirs.hist_nb_bins == BINS
    assert_same_data(ours.data, theirs.data)
    if kind == "activation-ranges":  # also usable as histogram ranges (``ranges=<path>``)
        ranges = neuroprint.load_ranges(path)
        for layer in LAYERS:
            assert np.array_equal(ranges.mins[layer], theirs.data[layer]["min"].double().numpy())
            assert np.array_equal(ranges.maxs[layer], theirs.data[layer]["max"].double().numpy())
    # What vdna wrote is what it held in memory, in the file's dtype.
    original = make_vdna_object(kind, 1).data
    for layer in LAYERS:
        if kind == "histogram":
            assert torch.equal(ours.data[layer], original[layer].to(torch.int32))
        else:
            for key, t in original[layer].items():
                assert torch.equal(ours.data[layer][key], t.to(vdna_file_dtype(kind)))


NP_DISTS = ["histogram-20", "gaussian", "layer-gaussian", "activation-ranges"]


def _uint8_images(seed: int, sizes) -> list[np.ndarray]:
    return [
        np.random.default_rng(seed + i).integers(0, 256, (h, w, 3), dtype=np.uint8)
        for i, (h, w) in enumerate(sizes)
    ]


@pytest.fixture(scope="module")
def np_written(tmp_path_factory):
    """neuroprint VDNAs of two tiny image sets (the second binned with the first's ranges), saved."""
    kw = dict(
        extractor="timm:resnet18", weights="random", batch_size=2, num_workers=0, progress=False, device="cpu"
    )
    a = neuroprint.profile(_uint8_images(10, [(32, 40), (48, 48), (40, 30)]), NP_DISTS, ranges="auto", **kw)
    b = neuroprint.profile(
        _uint8_images(20, [(36, 36), (50, 44), (28, 40)]), NP_DISTS, ranges=a["activation-ranges"], **kw
    )
    root = tmp_path_factory.mktemp("np_written")
    paths = {}
    for tag, made in (("a", a), ("b", b)):
        for dist, v in made.items():
            paths[(tag, dist)] = root / f"{tag}_{dist}"
            v.save(paths[(tag, dist)])
    return {"a": a, "b": b, "paths": paths}


@pytest.mark.parametrize("dist", NP_DISTS)
def test_neuroprint_written_files_load_in_vdna(np_written, dist):
    """Files written by neuroprint load in vdna (its extra "neuroprint" JSON key is ignored) with equal data."""
    path = np_written["paths"][("a", dist)]
    made = np_written["a"][dist]
    meta = json.loads(path.with_suffix(".json").read_text())
    assert "neuroprint" in meta and meta["neuroprint"]["extractor"] == "timm:resnet18"

    theirs = vdna.load_vdna_from_files(str(path))
    ours = neuroprint.load_vdna_from_files(path)
    kind = made.type
    assert theirs.type == ours.type == kind
    assert theirs.name == ours.name == dist
    assert theirs.num_images == ours.num_images == made.num_images == 3
    assert theirs.neurons_list == ours.neurons_list == made.neurons_list
    assert theirs.feature_extractor_name == ours.feature_extractor_name == "timm:resnet18"
    if kind == "histogram":
        assert theirs.hist_nb_bins == ours.hist_nb_bins == 20
    assert_same_data(theirs.data, ours.data)
    for layer in made.neurons_list:
        if kind == "histogram":
            assert theirs.data[layer].dtype == torch.int32
            assert torch.equal(theirs.data[layer].long(), made.data[layer])
        else:
            for key, t in made.data[layer].items():
                assert torch.equal(theirs.data[layer][key], t.to(vdna_file_dtype(kind)))


def test_vdna_distances_on_neuroprint_files(np_written):
    """vdna's EMD and NFD on neuroprint's files equal neuroprint's (vdna run in float64, as in test 1)."""
    paths = np_written["paths"]
    for dist, metric in (("histogram-20", "EMD"), ("gaussian", "NFD"), ("layer-gaussian", "NFD")):
        ours = NP_METRICS[metric](*(neuroprint.load_vdna_from_files(paths[(t, dist)]) for t in "ab"))
        theirs = [to_float64(vdna.load_vdna_from_files(str(paths[(t, dist)]))) for t in "ab"]
        with default_dtype(torch.float64):
            ref = VDNA_METRICS[metric](*theirs)
        assert float(ref) > 0
        assert_same_distance(ours, ref, rtol=1e-9, atol=1e-9)


def test_histogram_npz_holds_one_array_per_layer_and_nothing_else(np_written):
    """vdna treats every member of a histogram npz as a layer, so nothing else may be in it."""
    path = np_written["paths"][("a", "histogram-20")].with_suffix(".npz")
    made = np_written["a"]["histogram-20"]
    with np.load(path, allow_pickle=False) as z:
        assert sorted(z.files) == sorted(made.neurons_list)
        for layer, n in made.neurons_list.items():
            assert z[layer].dtype == np.int32 and z[layer].shape == (n, 20)


class _Tripwire:
    """Unpickling this creates a directory: proof that a loader ran pickle."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.mark.parametrize("kind", KINDS)
def test_no_pickle_is_ever_loaded(vdna_files, np_written, kind, tmp_path, monkeypatch):
    """Every np.load of neuroprint's loader has allow_pickle=False; an object array where data is expected
    is a VDNAFileError; a pickled payload anywhere in the npz is never executed."""
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle", "default"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    dist = {"histogram": "histogram-20"}.get(kind, kind)
    with contextlib.suppress(VDNAFileError):  # neuroprint's own file always loads; vdna's: see test 2
        neuroprint.load_vdna_from_files(np_written["paths"][("a", dist)])
        neuroprint.load_vdna_from_files(vdna_files[(kind, "a")])
    monkeypatch.setattr(np, "load", real_load)
    assert calls and all(c is False for c in calls), calls

    src = np_written["paths"][("a", dist)]
    base = tmp_path / "v"
    base.with_suffix(".json").write_text(src.with_suffix(".json").read_text())
    with real_load(src.with_suffix(".npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    needed = sorted(arrays)[0]
    tripwire = tmp_path / "unpickled"

    # A needed member replaced by an object array (pickled): refused, and its pickle never runs.
    evil = dict(arrays)
    evil[needed] = np.array([_Tripwire(tripwire)], dtype=object)
    np.savez(base.with_suffix(".npz"), **evil)
    with pytest.raises(VDNAFileError):
        neuroprint.load_vdna_from_files(base)
    assert not tripwire.exists()

    # An extra pickled member next to valid data: loaded or refused, but never unpickled.
    extra = dict(arrays)
    extra["zz-extra"] = np.array(_Tripwire(tripwire), dtype=object)
    np.savez(base.with_suffix(".npz"), **extra)
    with contextlib.suppress(VDNAFileError):
        neuroprint.load_vdna_from_files(base)
    assert not tripwire.exists()


# ----------------------------------------------------------------------------------------------- 3. binning

HISTC_THRESHOLD = 2e6  # vdna uses torch.histc only when B * C * P * 1 * bins >= 2e6


def range_with_std(target: float) -> float:
    """m such that the symmetric range [-m, m] gets vdna's norm params mean == 0 and std == target exactly
    (std = (1.2 m - -1.2 m) / 2 + 1e-8): normalised values are then x / target, exact for dyadic x."""
    m = (target - 1e-8) / 1.2
    for _ in range(1000):
        lo, hi = -m * 1.2, m * 1.2
        std = (hi - lo) / 2 + 1e-8
        if std == target and (lo + hi) / 2 == 0.0:
            return m
        m = float(np.nextafter(m, np.inf if std < target else -np.inf))
    raise AssertionError("no range found")


def binning_case(B: int, P: int, C: int, bins: int, seed: int = 0):
    """Activations [B, P, C] float32 and per-neuron ranges, with every awkward value:

    - neuron 0 has mean 0 and std 2 exactly, and holds dyadic values that fall exactly on bin edges
      (interior edges for even bin counts), zeros (the middle edge) and its range ends;
    - neuron 1 has min 0 (a ReLU layer) and holds zeros;
    - every neuron holds values within one float32 step of its bin edges, values outside its range,
      its exact scaled range ends, +-inf and NaN.
    """
    rng = np.random.default_rng(seed)
    mins = -rng.uniform(0.2, 3.0, C)
    maxs = rng.uniform(0.2, 3.0, C)
    mins[0], maxs[0] = -range_with_std(2.0), range_with_std(2.0)
    mins[1] = 0.0
    x = rng.normal(0.0, 2.0, (B, P, C)).astype(np.float32)  # often beyond 1.2 * the range
    mean, std = (t.numpy() for t in norm_params(mins, maxs))
    edges = -1.0 + 2.0 * rng.integers(0, bins + 1, (B, P, C)) / bins
    near = (mean + std * edges).astype(np.float32)
    step = rng.integers(-1, 2, (B, P, C))
    near = np.where(
        step == 0, near, np.nextafter(near, np.where(step > 0, np.inf, -np.inf).astype(np.float32))
    )
    x = np.where(rng.random((B, P, C)) < 0.3, near, x)
    # Neuron 0: exact dyadic values; with std 2 the normalised value x / 2 is exact.
    dyadic = np.linspace(-2.0, 2.0, 65).astype(np.float32)  # multiples of 1/16: every edge of 16 bins
    sel = rng.random((B, P)) < 0.5
    x[:, :, 0][sel] = rng.choice(dyadic, int(sel.sum()))
    x[:, :, 1][rng.random((B, P)) < 0.2] = 0.0
    x[0, 0, :] = (1.2 * mins).astype(np.float32)
    x[0, 1, :] = (1.2 * maxs).astype(np.float32)
    flat = x.reshape(-1)
    for value in (np.inf, -np.inf, np.nan):
        flat[rng.choice(flat.size, 5, replace=False)] = value
    return torch.from_numpy(x), mins, maxs


def vdna_normalised(x: torch.Tensor, mins, maxs) -> torch.Tensor:
    """vdna's normalisation of activations [B, P, C] laid out as its ViT features [B, C, P, 1]."""
    ranges = {
        "mins_per_neuron": {"layer": {str(i): float(v) for i, v in enumerate(mins)}},
        "maxs_per_neuron": {"layer": {str(i): float(v) for i, v in enumerate(maxs)}},
    }
    means, stds = vdna_fem.get_pre_hist_norm_params_from_min_max(ranges, 1.2)
    feats = x.permute(0, 2, 1).unsqueeze(-1)
    return (feats - means["layer"]) / stds["layer"]


def interior_edge_hits(xn: torch.Tensor, bins: int) -> torch.Tensor:
    """[C, bins] counts of normalised values lying exactly on the interior edge at the left of bin k
    (in histc's arithmetic: (x + 1) * bins / 2 is an integer in 1..bins-1)."""
    C = xn.shape[1]
    pos = (xn.clamp(-1.0, 1.0) + 1.0) * bins / 2.0
    hit = (pos == pos.floor()) & (pos > 0) & (pos < bins)
    out = torch.zeros(C, bins, dtype=torch.int64)
    for c in range(C):
        k = pos[:, c][hit[:, c]].long()
        out[c] += torch.bincount(k, minlength=bins)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("B", "P", "C", "bins"), [(1400, 13, 7, 17), (1400, 13, 7, 16), (24, 13, 7, 1000)])
def test_binning_equals_vdna_histc_path(B, P, C, bins, dtype):
    """neuron_histogram(x, norm_params(mins, maxs)) == vdna's normalise + histogram_per_channel, exactly.

    vdna's features of a half-precision network would be fp16/bf16; here vdna gets them converted to
    float32 first (exact), then normalises in float64 as it always does; neuroprint gets the fp16/bf16
    tensor itself. The sizes make vdna take its torch.histc path (see the next test for the other one).
    """
    x, mins, maxs = binning_case(B, P, C, bins)
    x = x.to(dtype)
    assert B * C * P * 1 * bins >= HISTC_THRESHOLD
    mean, std = norm_params(mins, maxs)
    ours = neuron_histogram(x, mean, std, bins)
    xn = vdna_normalised(x.float(), mins, maxs)
    theirs = histogram_per_channel(xn, hist_nb_bins=bins, hist_range=[-1.0, 1.0])
    assert ours.dtype == torch.int64 and ours.shape == (C, bins)
    assert torch.equal(ours, theirs.long())
    # NaN is not counted; +-inf and everything outside the range land in the end bins.
    assert torch.equal(ours.sum(1), (~torch.isnan(x.float())).sum(dim=(0, 1)))
    if bins % 2 == 0:
        assert interior_edge_hits(xn, bins).sum() > 0  # the exact-edge rule was exercised


def test_vdna_small_input_path_double_counts_interior_edges():
    """vdna defect: below 2e6 (B*C*P*bins) vdna bins with ``left <= x <= right`` against float32 edges, so a
    value exactly on an interior edge is counted in both neighbouring bins. neuroprint always follows the
    torch.histc rule (vdna's large-input path): ours == histc, and vdna's small path == ours plus exactly
    one extra count in the bin left of each interior-edge value."""
    B, P, C, bins = 2, 13, 7, 16  # 16 bins: every edge is exact in float32, so only double counting differs
    x, mins, maxs = binning_case(B, P, C, bins, seed=3)
    assert B * C * P * bins < HISTC_THRESHOLD
    mean, std = norm_params(mins, maxs)
    ours = neuron_histogram(x, mean, std, bins)

    xn = vdna_normalised(x, mins, maxs)
    clamped = xn.clamp(-1.0, 1.0)
    histc = torch.stack(
        [torch.histc(clamped[:, c].flatten(), bins=bins, min=-1.0, max=1.0) for c in range(C)]
    ).long()
    assert torch.equal(ours, histc)

    small_path = histogram_per_channel(xn, hist_nb_bins=bins, hist_range=[-1.0, 1.0])
    hits = interior_edge_hits(xn, bins)
    assert hits.sum() > 0
    extra = torch.zeros_like(hits)
    extra[:, :-1] = hits[:, 1:]  # a value on the edge left of bin k is also counted in bin k - 1
    assert not torch.equal(small_path, ours)
    assert torch.equal(small_path - ours, extra)


# -------------------------------------------------------------------------------------- 4. FD vs sqrtm


@pytest.mark.slow  # scipy's sqrtm of a 2048 x 2048 matrix: about a minute on 2 cores
@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_frechet_distance_matches_scipy_sqrtm_at_2048_dims():
    """neuroprint.frechet_distance == pytorch-fid's calculate_frechet_distance (scipy sqrtm of
    sigma1 @ sigma2, real part, trace) on 2048-d statistics of 2500 correlated samples, to 1e-6 relative."""
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(0)
    d, n = 2048, 2500
    w1 = rng.standard_normal((d, d)) / np.sqrt(d)
    w2 = w1 + 0.05 * rng.standard_normal((d, d)) / np.sqrt(d)
    x1 = rng.standard_normal((n, d)) @ w1 + 0.3 * rng.standard_normal((n, d)) + 1.0
    x2 = rng.standard_normal((n, d)) @ w2 + 0.3 * rng.standard_normal((n, d)) + 0.9
    mu1, mu2 = x1.mean(axis=0), x2.mean(axis=0)
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    ref = float(fid_score.calculate_frechet_distance(mu1, s1, mu2, s2))
    ours = neuroprint.frechet_distance(*(torch.from_numpy(a) for a in (mu1, s1, mu2, s2)))
    assert ours.dtype == torch.float64 and ours.shape == ()
    assert ref > 1.0
    assert abs(float(ours) - ref) <= 1e-6 * abs(ref)


# ------------------------------------------------------------------------------------------ 5. make_vdna


def _jitter(state_dict: dict[str, torch.Tensor], seed: int = 7) -> dict[str, torch.Tensor]:
    """Perturb constant-initialised tensors (BN scales, shifts, statistics) so that none is trivially 1/0."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state_dict.items():
        value = value.clone()
        if value.is_floating_point() and value.numel() > 1 and bool((value == value.flatten()[0]).all()):
            noise = 0.1 * torch.randn(value.shape, generator=gen)
            value = value + noise.abs() if key.endswith("running_var") else value + noise
        out[key] = value
    return out


def _single_threaded(fn):
    def wrapper(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def _write_pngs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    sizes = [(40, 50), (64, 64), (50, 40), (48, 64), (72, 60), (64, 80)]  # (h, w)
    for i, (h, w) in enumerate(sizes):
        rng = np.random.default_rng(100 + i)
        ramp = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1.0, h)[:, None, None]
        img = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{i}.png")
    return folder


def test_make_vdna_end_to_end_matches_vdna(tmp_path, monkeypatch):
    """vdna's VDNAProcessor.make_vdna vs neuroprint's on the same PNGs, with the same random ResNet-50
    ("rand_resnet50") weights and the same activation ranges:

    - activation-ranges: bit-identical (vdna's own result is the ranges file both then bin with);
    - histogram-500: bit-identical counts per layer, and EMD == 0 between vdna's file and ours;
    - layer-gaussian: mu to 1e-6 relative; sigma identical (1e-12) to vdna run on float64 features, and
      within float32 rounding of stock vdna, which averages every image over positions in float32 before
      its float64 covariance (neuroprint averages in float64);
    - num_images equal.

    vdna fetches weights and ranges with ``hf_hub_download`` at construction: that name in vdna's module is
    replaced by one returning files written here. vdna's ``forward`` moves the batch with ``.cuda()``,
    which fails without CUDA, so its ``get_features`` is pointed at the backbone pass that forward wraps.
    vdna's ``torch.compile`` wraps the module, but vdna calls ``get_data_features`` (never ``forward``)
    through it, so the compiled graph is never used either way.
    """
    import vdna.networks.random_resnet50 as vdna_resnet

    images = _write_pngs(tmp_path / "images")
    weights = tmp_path / "weights.pth"
    sd = neuroprint.create_extractor("rand_resnet50", weights="random", seed=7).backbone.net.state_dict()
    torch.save({"model_state_dict": _jitter(sd)}, weights)
    ranges_json = tmp_path / "activation_ranges.json"
    ranges_json.write_text(json.dumps({"mins_per_neuron": {}, "maxs_per_neuron": {}}))  # until measured

    requested = []

    def fake_hub(repo_id, filename, **kwargs):
        requested.append(filename)
        return str(ranges_json if filename.endswith("activation_ranges.json") else weights)

    monkeypatch.setattr(vdna_resnet, "hf_hub_download", fake_hub)
    # vdna bins with one torch.histc call per channel (15360 here). Each is a tiny OpenMP region; on a
    # busy 2-core machine those cost ~15x more with 2 threads than with 1. Counts are integers, so the
    # thread count cannot change them: vdna's own function runs unchanged, single-threaded.
    monkeypatch.setattr(vdna_fem, "histogram_per_channel", _single_threaded(vdna_fem.histogram_per_channel))
    monkeypatch.setattr(
        vdna_resnet.ResNetFeatureExtractor,
        "get_features",
        lambda self, batch: self.forward_backbone(batch)[1],
    )

    def run_vdna(dist):
        return vdna.VDNAProcessor().make_vdna(
            source=str(images), feat_extractor_name="rand_resnet50", distribution_name=dist,
            batch_size=8, device="cpu", num_workers=0, verbose=False,
        )  # fmt: skip

    def run_ours(dist, **kwargs):
        return neuroprint.VDNAProcessor().make_vdna(
            str(images), feat_extractor_name="rand_resnet50", distribution_name=dist,
            batch_size=8, device="cpu", num_workers=0, verbose=False, weights=weights, **kwargs,
        )  # fmt: skip

    # Activation ranges: vdna's become the ranges file of both histograms.
    theirs_ar = run_vdna("activation-ranges")
    assert "Random/rand_resnet50/weights.pth" in requested
    ranges_json.write_text(
        json.dumps(
            {
                f"{key}s_per_neuron": {
                    layer: {str(i): float(v) for i, v in enumerate(d[key].tolist())}
                    for layer, d in theirs_ar.data.items()
                }
                for key in ("min", "max")
            }
        )
    )
    ours_ar = run_ours("activation-ranges")
    assert list(ours_ar.neurons_list) == list(theirs_ar.neurons_list)
    assert_same_data(ours_ar.data, theirs_ar.data)

    # Histograms: same counts, bit for bit.
    theirs_h = run_vdna("histogram-500")
    ours_h = run_ours("histogram-500", ranges=ranges_json)
    assert ours_h.num_images == theirs_h.num_images == 6
    assert list(ours_h.data) == list(theirs_h.data)
    diffs = {
        layer: int((ours_h.data[layer] - theirs_h.data[layer].long()).abs().sum()) for layer in theirs_h.data
    }
    assert all(v == 0 for v in diffs.values()), f"histogram counts differ from vdna's: {diffs}"
    theirs_h.save(str(tmp_path / "vdna_hist"))
    loaded = neuroprint.load_vdna_from_files(tmp_path / "vdna_hist")
    assert float(neuroprint.EMD(loaded, ours_h)) == 0.0

    # Layer Gaussians.
    theirs_g = run_vdna("layer-gaussian")
    ours_g = run_ours("layer-gaussian")
    assert ours_g.num_images == theirs_g.num_images == 6
    assert list(ours_g.data) == list(theirs_g.data)
    for layer in theirs_g.data:
        mu_t, mu_o = theirs_g.data[layer]["mu"], ours_g.data[layer]["mu"]
        sg_t, sg_o = theirs_g.data[layer]["sigma"], ours_g.data[layer]["sigma"]
        assert mu_o.dtype == sg_o.dtype == torch.float64
        assert (mu_o - mu_t).abs().max() <= 1e-6 * mu_t.abs().max(), layer
        # vdna's per-image means carry float32 rounding (relative ~1e-7 of |mu|), which the covariance
        # passes on at the scale of the raw second moment |mu|^2 + sigma, not of sigma alone.
        second_moment = mu_t.abs().max() ** 2 + sg_t.abs().max()
        assert (sg_o - sg_t).abs().max() <= 1e-6 * second_moment, layer

    # The same vdna pipeline fed float64 features (so its spatial mean runs in float64): identical.
    monkeypatch.setattr(
        vdna_resnet.ResNetFeatureExtractor,
        "get_features",
        lambda self, batch: {k: v.double() for k, v in self.forward_backbone(batch)[1].items()},
    )
    theirs_g64 = run_vdna("layer-gaussian")
    for layer in theirs_g64.data:
        for key in ("mu", "sigma"):
            t, o = theirs_g64.data[layer][key], ours_g.data[layer][key]
            assert (o - t).abs().max() <= 1e-12 * t.abs().max(), (layer, key)
