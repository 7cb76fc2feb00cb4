"""The ``neuroprint`` command: happy paths and every bad input, with one-line errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from conftest import TINY

from neuroprint import EMD, load_vdna_from_files
from neuroprint.cli import main

COMMON = ["--extractor", TINY, "--weights", "random", "--batch-size", "3", "--device", "cpu", "-q"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, match):
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.startswith("neuroprint ")]
    assert len(lines) == 1, err
    assert match in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def cli_ranges(image_sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "ranges"
    assert main(["profile", str(image_sets["good"]), "-o", str(out), "-d", "activation-ranges", *COMMON]) == 0
    return out


def test_profile_and_compare(image_sets, cli_ranges, tmp_path, capsys):
    code, out, _ = run(
        capsys,
        "profile",
        image_sets["good"],
        "-o",
        tmp_path / "a",
        "-d",
        "histogram-50",
        "--ranges",
        cli_ranges,
        *COMMON,
    )
    assert code == 0 and "histogram-50 of 6 images" in out
    assert (tmp_path / "a.json").is_file() and (tmp_path / "a.npz").is_file()
    code, out, _ = run(
        capsys, "profile", image_sets["mixed"], "-o", tmp_path / "b", "-d", "histogram-50", "-d", "layer-gaussian",
        "--ranges", cli_ranges, *COMMON,
    )  # fmt: skip
    assert code == 0 and "unreadable" in out
    assert (tmp_path / "b-histogram-50.json").is_file() and (tmp_path / "b-layer-gaussian.npz").is_file()

    code, out, _ = run(capsys, "compare", tmp_path / "a", tmp_path / "b-histogram-50", "--json")
    assert code == 0
    res = json.loads(out)
    a, b = load_vdna_from_files(tmp_path / "a"), load_vdna_from_files(tmp_path / "b-histogram-50")
    assert res["metric"] == "emd" and res["value"] == pytest.approx(float(EMD(a, b)), rel=1e-12)

    pq_path = tmp_path / "per_neuron.parquet"
    code, out, _ = run(
        capsys,
        "compare",
        tmp_path / "a.json",
        tmp_path / "b-histogram-50.npz",
        "--layer",
        "layer2",
        "--per-neuron",
        pq_path,
    )
    assert code == 0 and out.startswith("EMD (layer layer2)")
    table = pq.read_table(pq_path).to_pydict()
    assert table["layer"] == ["layer2"] * a.neurons_list["layer2"]
    assert table["neuron"] == list(range(a.neurons_list["layer2"]))
    per = EMD(a, b, use_neurons_from_layer="layer2", return_neuron_wise=True)["layer2"]
    assert table["emd"] == pytest.approx(per.tolist(), rel=1e-12)

    code, out, _ = run(
        capsys, "compare", tmp_path / "a", tmp_path / "a", "--layer", "layer1", "--neuron", "2"
    )
    assert code == 0 and "neuron 2" in out and out.strip().endswith(": 0")


def test_info_merge_and_extractors(image_sets, cli_ranges, tmp_path, capsys):
    run(
        capsys,
        "profile",
        image_sets["mixed"],
        "-o",
        tmp_path / "m",
        "-d",
        "histogram-50",
        "--ranges",
        cli_ranges,
        *COMMON,
    )
    code, out, _ = run(capsys, "info", tmp_path / "m", "--failures")
    assert code == 0 and "4 unreadable" in out and "truncated.jpg" in out and "ranges" in out
    run(
        capsys,
        "profile",
        image_sets["good"],
        "-o",
        tmp_path / "g",
        "-d",
        "histogram-50",
        "--ranges",
        cli_ranges,
        *COMMON,
    )
    code, out, _ = run(capsys, "merge", tmp_path / "m", tmp_path / "g", "-o", tmp_path / "mg")
    assert code == 0 and "of 15 images" in out
    code, out, _ = run(capsys, "extractors")
    assert code == 0 and "mugs_vit_base" in out and "inception" in out and "timm" in out


@pytest.mark.parametrize(
    "argv,match",
    [
        (["profile", "{root}/empty", "-o", "{tmp}/x"], "no images found"),
        (["profile", "{root}/nowhere", "-o", "{tmp}/x"], "source not found"),
        (["profile", "{root}/good", "-o", "{tmp}/x", "-d", "histogram-0"], "histogram"),
        (
            ["profile", "{root}/good", "-o", "{tmp}/x", "--ranges", "{root}/nope.json"],
            "ranges file not found",
        ),
        (["profile", "{root}/good", "-o", "{tmp}/x", "--extractor", "not_a_net"], "unknown extractor"),
        (["profile", "{root}/good", "-o", "{tmp}/x", "--weights", "{root}/missing.pt"], "weights="),
        (["compare", "{tmp}/none", "{tmp}/none"], "not found"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(image_sets, tmp_path, capsys, argv, match):
    fill = {"root": image_sets["root"], "tmp": tmp_path}
    argv = [a.format(**fill) for a in argv]
    if argv[0] == "profile":
        given = {a for a in argv if a.startswith("--")}
        pairs = [COMMON[i : i + 2] for i in range(0, len(COMMON) - 1, 2)]
        argv += [x for pair in pairs if pair[0] not in given for x in pair] + ["-q"]
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err, match)


def test_all_images_unreadable(image_sets, tmp_path, capsys, cli_ranges):
    listing = tmp_path / "bad.txt"
    listing.write_text("\n".join(str(p) for p in image_sets["bad"].values()))
    code, _, err = run(
        capsys,
        "profile",
        listing,
        "-o",
        tmp_path / "x",
        "-d",
        "histogram-50",
        "--ranges",
        cli_ranges,
        *COMMON,
    )
    assert_one_line_error(code, err, "none of the 4 images")


def test_mismatched_and_malformed_vdnas(image_sets, cli_ranges, tmp_path, capsys):
    run(
        capsys,
        "profile",
        image_sets["good"],
        "-o",
        tmp_path / "h",
        "-d",
        "histogram-50",
        "--ranges",
        cli_ranges,
        *COMMON,
    )
    run(
        capsys,
        "profile",
        image_sets["good"],
        "-o",
        tmp_path / "auto",
        "-d",
        "histogram-50",
        "--ranges",
        "auto",
        "--num-images",
        "2",
        *COMMON,
    )
    run(capsys, "profile", image_sets["good"], "-o", tmp_path / "g", "-d", "gaussian", *COMMON)
    code, _, err = run(capsys, "compare", tmp_path / "h", tmp_path / "auto")
    assert_one_line_error(code, err, "different activation ranges")
    code, _, err = run(capsys, "compare", tmp_path / "h", tmp_path / "g")
    assert_one_line_error(code, err, "histogram")
    code, _, err = run(capsys, "compare", tmp_path / "h", tmp_path / "g", "--metric", "fd")
    assert_one_line_error(code, err, "layer-gaussian")
    code, _, err = run(capsys, "merge", tmp_path / "h", tmp_path / "auto", "-o", tmp_path / "x")
    assert_one_line_error(code, err, "different activation ranges")
    (tmp_path / "broken.json").write_text("[1, 2")
    (tmp_path / "broken.npz").write_bytes(b"")
    code, _, err = run(capsys, "compare", tmp_path / "broken", tmp_path / "h")
    assert_one_line_error(code, err, "cannot read VDNA metadata")
    code, _, err = run(capsys, "compare", tmp_path / "h", tmp_path / "h", "--layer", "nope")
    assert_one_line_error(code, err, "not in the VDNA")


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["profile"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["compare", "a", "b", "--metric", "kl"])
    assert e.value.code == 2


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "examples:" in out and "FID" in out
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    out = capsys.readouterr().out
    assert "--ranges" in out and "auto" in out and "published" in out


def test_console_script_entry_point(tmp_path):
    """The installed `neuroprint` command itself (not just main()) runs and fails cleanly."""
    exe = os.path.join(os.path.dirname(sys.executable), "neuroprint")
    proc = subprocess.run(
        [exe, "compare", str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().startswith("neuroprint compare: error:")
        and len(proc.stderr.strip().splitlines()) == 1
    )


def test_explain_and_rf_through_main(image_sets, tmp_path, capsys):
    import pyarrow.parquet as pq

    out = tmp_path / "explain"
    argv = ["explain", str(image_sets["good"]), "--extractor", TINY, "--weights", "random"]
    argv += ["--layer", "layer2", "--units", "0", "3", "--method", "actmap", "--device", "cpu"]
    assert main([*argv, "--out-dir", str(out), "-q"]) == 0
    index = pq.read_table(next(out.glob("*.parquet"))).to_pylist()
    assert len({r["id"] for r in index}) == 6
    assert main(["rf", "--extractor", "rand_resnet50", "--layer", "layer3_1", "--json"]) == 0
    rf = json.loads(capsys.readouterr().out)
    assert "layer3_1" in json.dumps(rf)
    assert main(["rf", "--extractor", "rand_resnet50", "--layer", "nope"]) == 1
    assert capsys.readouterr().err.startswith("neuroprint rf: error:")


def test_visualize_through_main(tmp_path):
    out = tmp_path / "vis"
    argv = ["visualize", "--extractor", TINY, "--weights", "random", "--layer", "layer2", "--units", "0:3"]
    argv += ["--steps", "3", "--size", "32", "--device", "cpu", "--out-dir", str(out)]
    assert main(argv) == 0
    index = pq.read_table(out / "index.parquet").to_pylist()
    assert [r["unit"] for r in index] == [0, 1, 2] and (out / "contact_sheet.png").is_file()
    assert main([*argv[:-2], "--out-dir", str(tmp_path / "bad"), "--layer", "nope"]) == 1
