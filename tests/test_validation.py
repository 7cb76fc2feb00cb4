"""Loaded VDNAs are validated (no silent NaN or meaningless numbers), every user-facing fault is one line
and a non-zero exit, and the range and count options refuse what they cannot mean."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY
from test_cli import COMMON, assert_one_line_error, run

from neuroprint import load_ranges, load_vdna_from_files, open_source, profile
from neuroprint._errors import SourceError, VDNAFileError
from neuroprint.cli import COMMANDS
from neuroprint.jobs import run_job

KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def saved(image_sets, tmp_path_factory):
    """{distribution: path} of valid VDNAs of the good images, and the ranges they used."""
    root = tmp_path_factory.mktemp("valid")
    ranges = root / "ranges"
    profile(image_sets["good"], "activation-ranges", **KW)["activation-ranges"].save(ranges)
    out = {"ranges": ranges}
    for name, v in profile(
        image_sets["good"], ["histogram-20", "gaussian", "layer-gaussian"], ranges=ranges, **KW
    ).items():
        v.save(root / name)
        out[name] = root / name
    return out


def _tampered(src, dst, edit_arrays=None, edit_meta=None):
    """A copy of the VDNA `src` at `dst` with its arrays and/or metadata changed."""
    with np.load(src.with_suffix(".npz"), allow_pickle=False) as z:
        arrays = {k: z[k].copy() for k in z.files}
    meta = json.loads(src.with_suffix(".json").read_text())
    if edit_arrays:
        edit_arrays(arrays)
    if edit_meta:
        edit_meta(meta)
    np.savez(dst.with_suffix(".npz"), **arrays)
    dst.with_suffix(".json").write_text(json.dumps(meta))
    return dst


def _first(arrays, prefix=""):
    return next(k for k in sorted(arrays) if k.startswith(prefix))


def test_nan_means_are_refused_by_compare_and_merge(saved, tmp_path, capsys):
    def nan_mu(a):
        a[_first(a, "mu-")][3] = np.nan

    bad = _tampered(saved["gaussian"], tmp_path / "bad", edit_arrays=nan_mu)
    code, _, err = run(capsys, "compare", saved["gaussian"], bad)
    assert_one_line_error(code, err, "bad.npz: field 'mu' of layer")
    assert "NaN or inf" in err
    code, _, err = run(capsys, "merge", saved["gaussian"], bad, "-o", tmp_path / "m")
    assert_one_line_error(code, err, "NaN or inf")
    assert not (tmp_path / "m.json").exists()


def test_negative_and_empty_histograms_are_refused(saved, tmp_path, capsys):
    def negative(a):
        a[_first(a)][0, 0] = -5

    def empty(a):
        a[_first(a)][2, :] = 0

    neg = _tampered(saved["histogram-20"], tmp_path / "neg", edit_arrays=negative)
    code, _, err = run(capsys, "compare", saved["histogram-20"], neg)
    assert_one_line_error(code, err, "negative counts (neuron 0)")
    code, _, err = run(capsys, "merge", saved["histogram-20"], neg, "-o", tmp_path / "m")
    assert_one_line_error(code, err, "negative counts")
    hollow = _tampered(saved["histogram-20"], tmp_path / "hollow", edit_arrays=empty)
    code, _, err = run(capsys, "compare", saved["histogram-20"], hollow)
    assert_one_line_error(code, err, "is empty for 1 neuron(s) (first: 2)")


def test_inf_sigma_is_refused_before_fd(saved, tmp_path, capsys):
    def inf_sigma(a):
        a[_first(a, "sigma-")][1, 1] = np.inf

    bad = _tampered(saved["layer-gaussian"], tmp_path / "lg", edit_arrays=inf_sigma)
    code, _, err = run(capsys, "compare", saved["layer-gaussian"], bad)
    assert_one_line_error(code, err, "field 'sigma' of layer")


def test_malformed_metadata_names_the_field(saved, tmp_path, capsys):
    def ranges_string(m):
        m["neuroprint"]["ranges"] = "published"

    bad = _tampered(saved["histogram-20"], tmp_path / "meta", edit_meta=ranges_string)
    with pytest.raises(VDNAFileError, match=r"field 'neuroprint\.ranges' must be an object"):
        load_vdna_from_files(bad)
    code, _, err = run(capsys, "info", bad)
    assert_one_line_error(code, err, "neuroprint.ranges")


def test_valid_files_still_load(saved):
    for name in ("histogram-20", "gaussian", "layer-gaussian", "ranges"):
        assert load_vdna_from_files(saved[name]).num_images == 6


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(saved, monkeypatch, capsys):
    # A fault from below the engine (here Ray's wording for a restarting actor), of a type the CLI does
    # not know: still one line without --debug.
    def cluster_fault(args):
        raise RuntimeError("The actor is restarting\nand this is its second line")

    monkeypatch.setitem(COMMANDS, "info", cluster_fault)
    code, _, err = run(capsys, "info", saved["gaussian"])
    assert_one_line_error(code, err, "RuntimeError: The actor is restarting and this is its second line")
    assert "--debug" in err
    with pytest.raises(RuntimeError, match="restarting"):
        run(capsys, "--debug", "info", saved["gaussian"])


def test_a_jobs_ranges_json_is_accepted_by_ranges(image_sets, saved, tmp_path, capsys):
    run_job(image_sets["good"], tmp_path / "job", "histogram-20", ranges=saved["ranges"], shard_size=3, **KW)
    job_ranges = tmp_path / "job" / "ranges.json"
    assert load_ranges(job_ranges).digest == load_ranges(saved["ranges"]).digest
    code, out, err = run(
        capsys,
        "profile",
        image_sets["good"],
        "-o",
        tmp_path / "h",
        "-d",
        "histogram-20",
        "--ranges",
        job_ranges,
        *COMMON,
    )
    assert code == 0, err
    a, b = load_vdna_from_files(tmp_path / "h"), load_vdna_from_files(saved["histogram-20"])
    assert a.ranges.digest == b.ranges.digest
    for layer in a.neurons_list:  # same images, same batches: the same counts
        assert torch.equal(a.data[layer].long(), b.data[layer].long())


@pytest.mark.parametrize("n", ["0", "-2"])
def test_num_images_refuses_zero_and_negatives(image_sets, tmp_path, capsys, n):
    with pytest.raises(SystemExit) as exc:
        run(capsys, "profile", image_sets["good"], "-o", tmp_path / "x", "--num-images", n, *COMMON)
    assert exc.value.code == 2
    assert "must be -1 (all images) or at least 1" in capsys.readouterr().err
    with pytest.raises(SourceError, match="num_images must be -1"):
        open_source(image_sets["good"], num_images=int(n))
    assert len(list(open_source(image_sets["good"], num_images=-1))) == 6
    assert len(list(open_source(image_sets["good"], num_images=2))) == 2
