"""One unit grammar for explain, visualize and rf: A:B (half-open) and A-B (inclusive) select the same
channels everywhere; lists, positions, 'all' and one error message listing the forms."""

from __future__ import annotations

import argparse
import json

import pyarrow.parquet as pq
import pytest

from neuroprint.cli.common import UNIT_FORMS, parse_units


def test_grammar_forms():
    assert parse_units("0:4") == parse_units("0-3") == parse_units(["0", "1,2", "3"]) == [0, 1, 2, 3]
    assert parse_units("0:10:3") == [0, 3, 6, 9]
    assert parse_units("2:", n=5) == [2, 3, 4] and parse_units("0:512", n=6) == list(range(6))
    assert parse_units(["0,5", "8-9", "7@2,3", "@4", "1@6"], positions=True) == [
        0,
        5,
        8,
        9,
        "7@2,3",
        "@4",
        "1@6",
    ]
    assert parse_units("all") is None and parse_units(["all"]) is None


@pytest.mark.parametrize("bad", ["x", "3-1", "0:4:0", "1:2:3:4", "-2", "5@x", "@1,2,3", ""])
def test_grammar_errors_list_the_forms(bad):
    with pytest.raises(ValueError) as err:
        parse_units(bad, positions=True)
    assert UNIT_FORMS in str(err.value)


def test_grammar_refusals():
    with pytest.raises(ValueError, match="takes channels only"):
        parse_units("7@2,3")
    with pytest.raises(ValueError, match="outside the layer's 4 channels"):
        parse_units("2-5", n=4)
    with pytest.raises(ValueError, match="not known here"):
        parse_units("3:")
    with pytest.raises(ValueError, match="cannot be combined"):
        parse_units("all,3")


def _cli(argv):
    from neuroprint.cli.explain import add_parser, add_rf_parser, run, run_rf

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    add_rf_parser(sub)
    args = parser.parse_args(argv)
    return (run if args.command == "explain" else run_rf)(args)


def test_explain_half_open_and_inclusive_ranges_select_the_same_channels(image_sets, tmp_path):
    settings = []
    for spec in ("0:4", "0-3"):
        out = tmp_path / spec.replace(":", "_")
        argv = ["explain", str(image_sets["list"]), "--extractor", "timm:test_resnet", "--weights", "random"]
        argv += ["--layer", "layer2", "--method", "actmap", "--out-dir", str(out), "-q", "--png-units", "0"]
        assert _cli([*argv, "--units", spec]) == 0
        settings.append(json.loads((out / "explain.json").read_text())["units"])
        rows = [r for r in pq.read_table(out / "index.parquet").to_pylist() if r["status"] == "ok"]
        assert len(rows) == 2 * 4
    assert settings[0] == settings[1] == ["0:mean", "1:mean", "2:mean", "3:mean"]


def test_visualize_half_open_and_inclusive_ranges_select_the_same_channels(tmp_path):
    from neuroprint.cli import visualize as vcli

    parser = argparse.ArgumentParser(prog="neuroprint")
    vcli.add_parser(parser.add_subparsers(dest="command"))
    got = []
    for spec in ("0:4", "0-3"):
        out = tmp_path / spec.replace(":", "_")
        argv = ["visualize", "--extractor", "timm:test_resnet", "--weights", "random", "--layer", "layer1"]
        argv += ["--units", spec, "--steps", "2", "--size", "32", "--transforms", "none", "--device", "cpu"]
        argv += ["--no-progress", "--out-dir", str(out)]
        assert vcli.run(parser.parse_args(argv)) == 0
        got.append([r["unit"] for r in pq.read_table(out / "index.parquet").to_pylist()])
    assert got[0] == got[1] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="takes channels only"):
        vcli.parse_units("1@2,3", 8)


def test_rf_unit_takes_the_position_forms(capsys):
    base = ["rf", "--extractor", "timm:resnet18", "--layer", "layer2", "--json"]
    regions = []
    for unit in ("1,2", "@1,2", "5@1,2"):
        assert _cli([*base, "--unit", unit]) == 0
        region = json.loads(capsys.readouterr().out)["layer2"]["region"]
        assert region.pop("unit") == unit  # the input echoed; the region itself is the same
        regions.append(region)
    assert regions[0] == regions[1] == regions[2]
    with pytest.raises(ValueError, match="position Y,X"):
        _cli([*base, "--unit", "5@3"])
    with pytest.raises(ValueError, match="names channel 5 but --channel is 2"):
        _cli([*base, "--unit", "5@1,2", "--channel", "2"])
