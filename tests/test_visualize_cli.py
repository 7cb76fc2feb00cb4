"""`neuroprint visualize` through its own parser (engine/_visualize_cli.py)."""

from __future__ import annotations

import argparse
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from neuroprint.cli import visualize as vcli


def _args(argv):
    parser = argparse.ArgumentParser(prog="neuroprint")
    sub = parser.add_subparsers(dest="command")
    vcli.add_parser(sub)
    return parser.parse_args(["visualize", *argv])


def test_visualize_writes_pngs_contact_sheet_and_index(tmp_path):
    out = tmp_path / "vis"
    argv = ["--extractor", "timm:resnet18", "--weights", "random", "--layer", "layer1", "--units", "0:3,10"]
    argv += ["--steps", "4", "--size", "32", "--transforms", "none", "--device", "cpu", "--no-progress"]
    argv += ["--out-dir", str(out)]
    assert vcli.run(_args(argv)) == 0
    table = pq.read_table(out / "index.parquet")
    assert table.column_names == ["unit", "file", "objective", "initial_objective", "steps", "settings"]
    rows = table.to_pylist()
    assert [r["unit"] for r in rows] == [0, 1, 2, 10]
    for r in rows:
        img = Image.open(out / r["file"])
        assert img.size == (32, 32) and img.mode == "RGB"
        assert r["steps"] == 4
        assert r["objective"] > r["initial_objective"]
    settings = json.loads(rows[0]["settings"])
    assert (
        settings["weights"].startswith("random")
        and settings["param"] == "fft"
        and settings["size"] == [32, 32]
    )
    meta = json.loads(table.schema.metadata[b"neuroprint.visualize"])
    assert meta == settings
    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.size == (2 * 34 + 2, 2 * 34 + 2)  # 4 units -> 2 x 2 grid, 2-pixel gaps


def test_visualize_alpha_writes_rgba(tmp_path):
    out = tmp_path / "a"
    argv = [
        "--extractor",
        "timm:resnet18",
        "--weights",
        "random",
        "--layer",
        "layer1.0.conv1",
        "--units",
        "5",
    ]
    argv += ["--param", "alpha", "--steps", "2", "--size", "24", "--device", "cpu", "--no-progress"]
    assert vcli.run(_args([*argv, "--out-dir", str(out)])) == 0
    assert Image.open(out / "units" / "unit_00005.png").mode == "RGBA"


def test_parse_units():
    assert vcli.parse_units("all", 4) == [0, 1, 2, 3]
    assert vcli.parse_units("0:512", 6) == [0, 1, 2, 3, 4, 5]
    assert vcli.parse_units("1:7:2,0", 8) == [1, 3, 5, 0]
    with pytest.raises(ValueError, match="outside"):
        vcli.parse_units("9", 4)
    with pytest.raises(ValueError, match="cannot read"):
        vcli.parse_units("a-b", 4)


def test_bad_input_is_a_one_line_error(tmp_path):
    base = ["--extractor", "timm:resnet18", "--weights", "random", "--size", "32", "--device", "cpu"]
    with pytest.raises(ValueError, match="no layer 'nope'"):
        vcli.run(_args([*base, "--layer", "nope", "--out-dir", str(tmp_path)]))
    with pytest.raises(ValueError, match="outside"):
        vcli.run(_args([*base, "--layer", "layer1", "--units", "64", "--out-dir", str(tmp_path)]))
    with pytest.raises(ValueError, match="steps"):
        vcli.run(_args([*base, "--layer", "layer1", "--steps", "0", "--out-dir", str(tmp_path)]))


def test_visualize_dgn_keeps_codes_under_the_bound(tmp_path):
    out = tmp_path / "d"
    argv = ["--extractor", "timm:resnet18", "--weights", "random", "--layer", "layer1", "--units", "0,1"]
    argv += ["--param", "dgn", "--code-upper", "0.3", "--optimizer", "gd", "--lr", "0.5", "--steps", "2"]
    argv += [
        "--size",
        "32",
        "--transforms",
        "none",
        "--device",
        "cpu",
        "--no-progress",
        "--out-dir",
        str(out),
    ]
    assert vcli.run(_args(argv)) == 0
    rows = pq.read_table(out / "index.parquet").to_pylist()
    settings = json.loads(rows[0]["settings"])
    assert settings["param"] == "dgn" and settings["code_upper"] == 0.3
    codes = [c for r in rows for c in r["code"]]
    assert len(codes) == 2 * 4096 and min(codes) >= 0.0 and max(codes) <= 0.3 + 1e-7
    assert max(codes) > 0.3 - 1e-6  # the bound was reached, so it was enforced
    assert Image.open(out / "units" / "unit_00001.png").size == (32, 32)
