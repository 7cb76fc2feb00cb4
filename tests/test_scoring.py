"""Distance matrices over many VDNAs and per-image scores against a reference, through API and CLI."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY

from neuroprint import EMD, IncompatibleVDNAError, emd_matrix, load_vdna_from_files, profile, score_images
from neuroprint.cli import main

KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=2, progress=False, device="cpu")


@pytest.fixture(scope="module")
def ranges(image_sets, tmp_path_factory):
    path = tmp_path_factory.mktemp("scoring") / "ranges"
    profile(image_sets["good"], "activation-ranges", **KW)["activation-ranges"].save(path)
    return path


@pytest.fixture(scope="module")
def subsets(image_sets, ranges):
    paths = [str(p) for p in image_sets["good_paths"]]
    groups = [paths[:2], paths[2:4], paths[4:], paths]
    return [profile(g, "histogram-40", ranges=ranges, **KW)["histogram-40"] for g in groups]


def test_emd_matrix_equals_pairwise_emd(subsets):
    mat = emd_matrix(subsets)
    assert mat.shape == (4, 4) and mat.dtype == torch.float64
    for i, a in enumerate(subsets):
        for j, b in enumerate(subsets):
            assert float(mat[i, j]) == pytest.approx(float(EMD(a, b)), rel=1e-12, abs=1e-15)
    assert torch.all(mat.diagonal() == 0)
    layer = emd_matrix(subsets[:2], subsets[2:], use_neurons_from_layer="layer3")
    assert float(layer[1, 0]) == pytest.approx(
        float(EMD(subsets[1], subsets[2], use_neurons_from_layer="layer3")), rel=1e-12
    )


def test_emd_matrix_refuses_mixed_settings(subsets, image_sets):
    other = profile(image_sets["good_paths"][:2], "histogram-40", ranges="auto", **KW)["histogram-40"]
    with pytest.raises(IncompatibleVDNAError, match="ranges"):
        emd_matrix(subsets + [other])


def test_scores_equal_explicit_per_image_vdnas(image_sets, subsets, tmp_path):
    reference = subsets[3]
    table = score_images(
        image_sets["mixed"], reference, batch_size=4, num_workers=2, progress=False, device="cpu"
    )
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [
        it.id for it in __import__("neuroprint").open_source(image_sets["mixed"])
    ]
    failed = [r for r in rows if not r["ok"]]
    assert len(failed) == 4 and all(r["error"] and r["emd"] is None for r in failed)
    ranges = reference.ranges
    for r in [r for r in rows if r["ok"]][:3]:
        own = profile([r["uri"]], "histogram-40", ranges=ranges, **KW)["histogram-40"]
        assert r["emd"] == pytest.approx(float(EMD(own, reference)), rel=1e-12)
        assert r["emd/layer2"] == pytest.approx(
            float(EMD(own, reference, use_neurons_from_layer="layer2")), rel=1e-12
        )


def test_score_cli_and_matrix_cli(image_sets, subsets, tmp_path, capsys):
    for i, v in enumerate(subsets):
        v.save(tmp_path / f"s{i}")
    assert (
        main(
            ["compare", *(str(tmp_path / f"s{i}") for i in range(4)), "--matrix", str(tmp_path / "m.parquet")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("EMD (all layers)")
    m = pq.read_table(tmp_path / "m.parquet").to_pydict()
    assert len(m["emd"]) == 16 and m["i"][5] == 1 and m["j"][5] == 1 and m["emd"][5] == 0.0
    assert m["emd"][1] == pytest.approx(float(EMD(subsets[0], subsets[1])), rel=1e-12)

    code = main(
        [
            "score",
            str(image_sets["good"]),
            "--reference",
            str(tmp_path / "s3"),
            "-o",
            str(tmp_path / "sc.parquet"),
            "--device",
            "cpu",
            "-q",
            "--batch-size",
            "4",
        ]
    )
    assert code == 0
    t = pq.read_table(tmp_path / "sc.parquet")
    assert t.num_rows == 6 and all(t.column("ok").to_pylist())
    assert t.schema.metadata[b"neuroprint.ranges_sha256"] == subsets[3].ranges.digest.encode()

    code = main(
        [
            "score",
            str(image_sets["good"]),
            "--reference",
            str(tmp_path / "nope"),
            "-o",
            str(tmp_path / "x.parquet"),
        ]
    )
    assert code == 1 and "not found" in capsys.readouterr().err


def test_score_needs_a_neuroprint_histogram(subsets, image_sets, tmp_path):
    g = profile(image_sets["good_paths"][:2], "gaussian", **KW)["gaussian"]
    with pytest.raises(IncompatibleVDNAError, match="histogram"):
        score_images(image_sets["good"], g, progress=False, device="cpu")
    v = load_vdna_from_files
    subsets[0].save(tmp_path / "r")
    ref = v(tmp_path / "r")
    ref.meta = {}  # as if written by vdna: no ranges recorded
    with pytest.raises(IncompatibleVDNAError, match="ranges"):
        score_images(image_sets["good"], ref, progress=False, device="cpu")
