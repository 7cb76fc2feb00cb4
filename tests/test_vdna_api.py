"""The Python API end to end: profile / make_vdna, files, merge, compatibility checks, bad input."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from agreement import LEVEL_FLOAT32, assert_vdnas_agree
from conftest import TINY

import neuroprint as npt
from neuroprint import (
    EMD,
    FD,
    NFD,
    EmptySourceError,
    IncompatibleVDNAError,
    SourceError,
    VDNAFileError,
    VDNAProcessor,
    load_vdna_from_files,
    profile,
)

KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=2, progress=False, device="cpu")
ALL = ["histogram-64", "gaussian", "layer-gaussian", "activation-ranges"]


@pytest.fixture(scope="module")
def ranges_file(image_sets, tmp_path_factory):
    """Activation ranges measured once over all good images, shared so that VDNAs are comparable."""
    path = tmp_path_factory.mktemp("ranges") / "ranges"
    profile(image_sets["good"], "activation-ranges", **KW)["activation-ranges"].save(path)
    return path


@pytest.fixture(scope="module")
def good_vdnas(image_sets, ranges_file):
    return profile(image_sets["good"], ALL, ranges=ranges_file, **KW)


def test_public_api_is_pinned():
    assert npt.__all__ == [
        "EMD", "FD", "NFD", "VDNA", "DecodeError", "EmptySourceError", "IncompatibleVDNAError", "Item",
        "JobError", "JobResult", "NeuroprintError", "Ranges", "Recipe", "Source", "SourceError", "VDNAActivationRanges", "VDNAFileError",
        "VDNAGauss", "VDNAHist", "VDNALayerGauss", "VDNAProcessor", "WeightsError", "__version__",
        "check", "create_extractor", "dedup", "earth_movers_distance", "emd_matrix", "explain", "frechet_distance",
        "frechet_distance_1d", "fungi", "get_vdna", "kernels", "list_extractors", "load_ranges", "load_vdna_from_files", "load_vdna_from_hub", "open_source", "profile", "run_job", "score_images", "visualize",
    ]  # fmt: skip
    for name in npt.__all__:
        assert getattr(npt, name) is not None


def test_profile_all_distributions_from_one_pass(good_vdnas, image_sets):
    h = good_vdnas["histogram-64"]
    assert isinstance(h, npt.VDNAHist) and h.hist_nb_bins == 64
    assert h.num_images == 6 and h.num_failed == 0
    assert list(h.neurons_list) == list(good_vdnas["gaussian"].neurons_list)
    positions = {"act1": 80 * 80, "layer1": 40 * 40, "layer2": 20 * 20, "layer3": 10 * 10, "layer4": 5 * 5}
    for layer, n in h.neurons_list.items():
        assert h.data[layer].shape == (n, 64) and h.data[layer].dtype == torch.int64
        # Every position of every image is counted once per neuron.
        assert torch.all(h.data[layer].sum(1) == 6 * positions[layer]), layer
    ar = good_vdnas["activation-ranges"]
    rng = h.ranges
    assert rng is not None and rng.origin.startswith("vdna:")
    for layer in h.neurons_list:
        np.testing.assert_array_equal(rng.mins[layer], ar.data[layer]["min"].double().numpy())
    lg, g = good_vdnas["layer-gaussian"], good_vdnas["gaussian"]
    for layer in g.neurons_list:
        torch.testing.assert_close(
            torch.diagonal(lg.data[layer]["sigma"]), g.data[layer]["var"], rtol=1e-12, atol=1e-12
        )


def test_metadata_records_every_setting(good_vdnas, tmp_path):
    h = good_vdnas["histogram-64"]
    h.save(tmp_path / "h")
    meta = json.loads((tmp_path / "h.json").read_text())
    np_meta = meta["neuroprint"]
    assert np_meta["weights"] == "random:seed=0"
    assert np_meta["recipe"]["size"] == [160, 160] and np_meta["dtype"] == "float32"
    assert np_meta["ranges"]["sha256"] == h.ranges.digest
    assert np_meta["version"] == npt.__version__
    assert (
        meta["extraction_settings"]["hist_nb_bins"] == 64 and meta["extraction_settings"]["normalise_feats"]
    )
    assert meta["num_images"] == 6 and meta["type"] == "histogram" and meta["name"] == "histogram-64"
    with zipfile.ZipFile(tmp_path / "h.npz") as z:
        assert sorted(n[:-4] for n in z.namelist()) == sorted(h.neurons_list)


@pytest.mark.parametrize("dist", ALL)
def test_save_load_round_trip(good_vdnas, dist, tmp_path):
    v = good_vdnas[dist]
    v.save(tmp_path / "v")
    w = load_vdna_from_files(tmp_path / "v")
    assert type(w) is type(v) and w.name == v.name and w.num_images == v.num_images
    assert w.meta == json.loads(json.dumps(v.meta))
    for layer in v.neurons_list:
        a, b = v.get_all_neurons_in_layer_dist(layer), w.get_all_neurons_in_layer_dist(layer)
        if isinstance(a, dict):
            for k in a:
                torch.testing.assert_close(b[k].double(), a[k].double(), rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(a, b.long())
    # Loading by any of the three spellings.
    load_vdna_from_files(str(tmp_path / "v.json"))
    load_vdna_from_files(str(tmp_path / "v.npz"))


def test_distances_on_identical_and_different_sets(good_vdnas, image_sets, ranges_file):
    other = profile(
        image_sets["good_paths"][:3], ["histogram-64", "layer-gaussian", "gaussian"], ranges=ranges_file, **KW
    )
    h, g, lg = good_vdnas["histogram-64"], good_vdnas["gaussian"], good_vdnas["layer-gaussian"]
    assert float(EMD(h, h)) == 0.0
    assert float(EMD(h, other["histogram-64"])) > 0
    assert abs(float(FD(lg, lg))) < 1e-6
    assert float(FD(lg, other["layer-gaussian"])) > 0
    assert float(NFD(g, other["gaussian"])) > 0
    # NFD accepts layer-gaussian VDNAs through their diagonals (vdna's conversion).
    torch.testing.assert_close(
        NFD(lg, other["layer-gaussian"]), NFD(g, other["gaussian"]), rtol=1e-9, atol=1e-12
    )
    per = EMD(h, other["histogram-64"], return_neuron_wise=True)
    assert list(per) == list(h.neurons_list)
    allm = torch.cat(list(per.values())).mean()
    torch.testing.assert_close(allm, EMD(h, other["histogram-64"]))
    one = EMD(h, other["histogram-64"], use_neurons_from_layer="layer2", use_neuron_index=3)
    assert float(one) == pytest.approx(float(per["layer2"][3]))


def test_batch_size_and_workers_do_not_change_results(image_sets, ranges_file, good_vdnas):
    other = profile(image_sets["good"], ALL, ranges=ranges_file, **{**KW, "batch_size": 4, "num_workers": 0})
    for dist in ("histogram-64", "activation-ranges"):
        for layer in other[dist].neurons_list:
            a, b = good_vdnas[dist].data[layer], other[dist].data[layer]
            if isinstance(a, dict):
                for k in a:
                    assert torch.equal(a[k], b[k])
            else:
                assert torch.equal(a, b)
    for layer in other["layer-gaussian"].neurons_list:
        torch.testing.assert_close(
            other["layer-gaussian"].data[layer]["sigma"],
            good_vdnas["layer-gaussian"].data[layer]["sigma"],
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize("dist", ["histogram-64", "gaussian", "layer-gaussian", "activation-ranges"])
def test_merge_equals_profile_of_union(image_sets, ranges_file, good_vdnas, dist, tmp_path):
    paths = [str(p) for p in image_sets["good_paths"]]
    a = profile(paths[:2], dist, ranges=ranges_file, **KW)[dist]
    b = profile(paths[2:], dist, ranges=ranges_file, **KW)[dist]
    # Through files too, as a nightly job would do.
    a.save(tmp_path / "a")
    merged = load_vdna_from_files(tmp_path / "a").merge(b)
    whole = good_vdnas[dist]
    assert merged.num_images == whole.num_images == 6
    # The halves ran in other batches than the whole: float32 agreement (and a through-file float32 copy).
    assert_vdnas_agree(merged, whole, LEVEL_FLOAT32)


def test_incompatible_vdnas_are_clear_errors(good_vdnas, image_sets, ranges_file):
    h = good_vdnas["histogram-64"]
    auto = profile(image_sets["good_paths"][:2], "histogram-64", ranges="auto", **KW)["histogram-64"]
    with pytest.raises(IncompatibleVDNAError, match="different activation ranges"):
        EMD(h, auto)
    with pytest.raises(IncompatibleVDNAError, match="different activation ranges"):
        h.merge(auto)
    other_bins = profile(image_sets["good_paths"][:2], "histogram-32", ranges=ranges_file, **KW)[
        "histogram-32"
    ]
    with pytest.raises(IncompatibleVDNAError):
        EMD(h, other_bins)
    other_weights = profile(
        image_sets["good_paths"][:2], "histogram-64", ranges=ranges_file, **{**KW, "seed": 1}
    )
    with pytest.raises(IncompatibleVDNAError, match="weights"):
        EMD(h, other_weights["histogram-64"])
    with pytest.raises(IncompatibleVDNAError, match="histogram"):
        EMD(h, good_vdnas["gaussian"])
    with pytest.raises(IncompatibleVDNAError, match="layer-gaussian"):
        FD(good_vdnas["gaussian"], good_vdnas["gaussian"])
    renamed = load_like(h)
    renamed.feature_extractor_name = "vgg16"
    with pytest.raises(IncompatibleVDNAError, match="extractors"):
        EMD(h, renamed)


def load_like(v):
    import copy

    return copy.deepcopy(v)


def test_bad_selection_arguments(good_vdnas):
    h = good_vdnas["histogram-64"]
    with pytest.raises(ValueError, match="not in the VDNA"):
        EMD(h, h, use_neurons_from_layer="nope")
    with pytest.raises(ValueError, match="out of range"):
        EMD(h, h, use_neurons_from_layer="layer1", use_neuron_index=10_000)
    with pytest.raises(ValueError, match="needs use_neurons_from_layer"):
        EMD(h, h, use_neuron_index=0)
    with pytest.raises(ValueError, match="neuron-wise"):
        EMD(h, h, use_neurons_from_layer="layer1", use_neuron_index=0, return_neuron_wise=True)


def test_mixed_folder_skips_and_records_every_bad_file(image_sets, ranges_file):
    v = profile(image_sets["mixed"], "histogram-64", ranges=ranges_file, **KW)["histogram-64"]
    bad_names = {p.name for p in image_sets["bad"].values()}
    failed = {f["uri"].rsplit("/", 1)[-1]: f["reason"] for f in v.failures}
    assert set(failed) == bad_names, failed
    assert v.num_failed == len(bad_names)
    # 4 good + 5 odd-mode images (gray, RGBA, palette, CMYK, 16-bit) are converted and used.
    assert v.num_images == 4 + len(image_sets["odd"])
    for reason in failed.values():
        assert reason and "\n" not in reason


def test_list_with_unreadable_paths(image_sets, ranges_file):
    v = profile(image_sets["list"], "histogram-64", ranges=ranges_file, **KW)["histogram-64"]
    assert v.num_images == 2 and v.num_failed == 2
    assert {f["id"] for f in v.failures} == {"missing/nowhere.png", "mixed/bad/folder.png"}


def test_odd_modes_alone(image_sets, ranges_file):
    v = profile([str(p) for p in image_sets["odd"]], "gaussian", ranges=ranges_file, **KW)["gaussian"]
    assert v.num_images == len(image_sets["odd"]) and v.num_failed == 0


def test_arrays_and_parquet_sources(image_sets, ranges_file, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    paths = image_sets["good_paths"]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    from_arrays = profile(arrays, "histogram-64", ranges=ranges_file, **KW)["histogram-64"]
    table = pa.table({"id": [p.name for p in paths], "image": [p.read_bytes() for p in paths]})
    pq.write_table(table, tmp_path / "t.parquet")
    from_table = profile(tmp_path / "t.parquet", "histogram-64", ranges=ranges_file, **KW)["histogram-64"]
    from_folder = profile(image_sets["good"], "histogram-64", ranges=ranges_file, **KW)["histogram-64"]
    for layer in from_folder.neurons_list:
        assert torch.equal(from_table.data[layer], from_folder.data[layer])
    # JPEG decoding is the same bytes -> same arrays -> same histograms.
    for layer in from_folder.neurons_list:
        assert torch.equal(from_arrays.data[layer], from_folder.data[layer])


def test_empty_and_missing_sources(image_sets, tmp_path, ranges_file):
    with pytest.raises(EmptySourceError, match="no images found"):
        profile(image_sets["root"] / "empty", "gaussian", **KW)
    with pytest.raises(SourceError, match="not found"):
        profile(tmp_path / "nowhere", "gaussian", **KW)
    only_bad = [str(p) for p in image_sets["bad"].values()]
    with pytest.raises(EmptySourceError, match="none of the 4 images"):
        profile(only_bad, "histogram-64", ranges=ranges_file, **KW)
    with pytest.raises(EmptySourceError):
        profile([], "gaussian", **KW)


def test_bad_arguments(image_sets):
    with pytest.raises(ValueError, match="unknown distribution"):
        profile(image_sets["good"], "histo", **KW)
    with pytest.raises(ValueError, match="batch_size"):
        profile(image_sets["good"], "gaussian", **{**KW, "batch_size": 0})
    with pytest.raises(npt.WeightsError, match="ranges"):
        profile(image_sets["good"], "histogram-10", ranges=image_sets["root"] / "nope.json", **KW)
    with pytest.raises(npt.WeightsError, match="no activation ranges|publishes no"):
        profile(image_sets["good"], "histogram-10", **KW)  # timm models have no published ranges


def test_make_vdna_signature_and_sample_images(image_sets, ranges_file, tmp_path):
    v = VDNAProcessor().make_vdna(
        str(image_sets["good"]),
        num_images=4,
        shuffle_files=True,
        feat_extractor_name=TINY,
        distribution_name="histogram-64",
        seed=3,
        batch_size=2,
        device="cpu",
        verbose=False,
        num_workers=1,
        save_sample_images=tmp_path / "samples",
        n_sample_images=2,
        weights="random",
        ranges=ranges_file,
    )
    assert v.num_images == 4
    assert v.data_settings_used["source"] == str(image_sets["good"])
    assert v.data_settings_used["shuffle_files"] is True and v.data_settings_used["num_images"] == 4
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["0.png", "1.png"]


# ------------------------------------------------------------------------------------- malformed files


def _saved(good_vdnas, tmp_path, dist="histogram-64"):
    good_vdnas[dist].save(tmp_path / "v")
    return tmp_path / "v"


def test_malformed_files(good_vdnas, tmp_path):
    base = _saved(good_vdnas, tmp_path)
    with pytest.raises(VDNAFileError, match="not found"):
        load_vdna_from_files(tmp_path / "missing")
    (tmp_path / "v.json").write_text("{not json")
    with pytest.raises(VDNAFileError, match="cannot read"):
        load_vdna_from_files(base)
    (tmp_path / "v.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(VDNAFileError, match="not VDNA metadata"):
        load_vdna_from_files(base)
    (tmp_path / "v.json").write_text(json.dumps({"name": "histogram-abc", "type": "histogram"}))
    with pytest.raises(VDNAFileError, match="histogram"):
        load_vdna_from_files(base)


def test_npz_problems(good_vdnas, tmp_path):
    base = _saved(good_vdnas, tmp_path)
    (tmp_path / "v.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(VDNAFileError, match="cannot read"):
        load_vdna_from_files(base)
    (tmp_path / "v.npz").unlink()
    with pytest.raises(VDNAFileError, match="not found"):
        load_vdna_from_files(base)
    # Object arrays need pickle, which is never allowed.
    h = good_vdnas["histogram-64"]
    arrays = {k: v.numpy() for k, v in h.data.items()}
    arrays["layer1"] = np.array([{"evil": 1}], dtype=object)
    np.savez(tmp_path / "v.npz", **arrays)
    with pytest.raises(VDNAFileError):
        load_vdna_from_files(base)
    # A layer with the wrong shape, and a missing layer.
    arrays = {k: v.numpy() for k, v in h.data.items()}
    arrays["layer1"] = arrays["layer1"][:, :10]
    np.savez(tmp_path / "v.npz", **arrays)
    with pytest.raises(VDNAFileError, match="shape"):
        load_vdna_from_files(base)
    arrays = {k: v.numpy() for k, v in h.data.items() if k != "layer1"}
    np.savez(tmp_path / "v.npz", **arrays)
    with pytest.raises(VDNAFileError, match="layers"):
        load_vdna_from_files(base)


def test_tampered_ranges_are_detected(good_vdnas, tmp_path):
    base = _saved(good_vdnas, tmp_path)
    meta = json.loads((tmp_path / "v.json").read_text())
    meta["neuroprint"]["ranges"]["mins"]["layer1"][0] = -123.0
    (tmp_path / "v.json").write_text(json.dumps(meta))
    # Refused when the file is loaded, naming the field, not later when the ranges are first used.
    with pytest.raises(VDNAFileError, match=r"neuroprint\.ranges.*sha256"):
        load_vdna_from_files(base)


def test_ranges_from_vdna_json_layout(good_vdnas, tmp_path, image_sets):
    """A vdna-style activation_ranges.json gives the same bins as the activation-ranges VDNA it came from."""
    ar = good_vdnas["activation-ranges"]
    rng = ar.to_ranges("x")
    (tmp_path / "ranges.json").write_text(json.dumps(rng.to_vdna_json()))
    loaded = npt.load_ranges(tmp_path / "ranges.json")
    for layer in rng.mins:
        np.testing.assert_array_equal(loaded.mins[layer], rng.mins[layer])
    assert loaded.digest == rng.digest
    (tmp_path / "bad.json").write_text(
        json.dumps({"mins_per_neuron": {"a": {"1": 0.0}}, "maxs_per_neuron": {"a": {"1": 1.0}}})
    )
    with pytest.raises(VDNAFileError, match="malformed"):
        npt.load_ranges(tmp_path / "bad.json")


def test_load_vdna_from_hub_uses_the_hub_client(good_vdnas, tmp_path, monkeypatch):
    import huggingface_hub

    good_vdnas["gaussian"].save(tmp_path / "hub" / "sets" / "g")
    calls = []

    def fake_download(repo_id, filename, repo_type):
        calls.append((repo_id, filename, repo_type))
        return str(tmp_path / "hub" / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    v = npt.load_vdna_from_hub("someone/vdnas", "sets/g")
    assert calls == [("someone/vdnas", "sets/g.json", "dataset"), ("someone/vdnas", "sets/g.npz", "dataset")]
    assert v.num_images == good_vdnas["gaussian"].num_images

    def offline(**kw):
        raise OSError("We have no connection to the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(npt.WeightsError, match="cannot fetch sets/g.json"):
        npt.load_vdna_from_hub("someone/vdnas", "sets/g")
