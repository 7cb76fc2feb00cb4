"""The histograms' fp32 normalisation end to end: job and profile settings, the VDNA's record, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY

from neuroprint import load_vdna_from_files, profile
from neuroprint.cli import main
from neuroprint.jobs import JobError, run_job
from neuroprint.stats.vdna import IncompatibleVDNAError, check_compatible

KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=1, progress=False, device="cpu")


def test_fp32_job_records_its_precision_and_moves_few_counts(image_sets, tiny_ranges, tmp_path):
    ranges = tiny_ranges
    exact = run_job(image_sets["good"], tmp_path / "fp64", "histogram-200", ranges=ranges, **KW)
    fast = run_job(
        image_sets["good"],
        tmp_path / "fp32",
        "histogram-200",
        ranges=ranges,
        histogram_precision="fp32",
        **KW,
    )
    a, b = exact.vdnas["histogram-200"], fast.vdnas["histogram-200"]
    assert "histogram_precision" not in a.meta  # fp64 VDNAs and settings are as before
    assert b.meta["histogram_precision"] == "fp32"
    assert b.extraction_settings_used["histogram_precision"] == "fp32"
    m64 = json.loads((tmp_path / "fp64" / "manifest.json").read_text())["settings"]
    m32 = json.loads((tmp_path / "fp32" / "manifest.json").read_text())["settings"]
    assert "histogram_precision" not in json.dumps(m64) and "histogram_precision" in json.dumps(m32)
    moved = total = 0
    for layer in a.data:
        assert torch.equal(a.data[layer].sum(1), b.data[layer].sum(1))  # every value counted once
        moved += int((a.data[layer] - b.data[layer]).abs().sum()) // 2
        total += int(a.data[layer].sum())
    assert moved <= 1e-3 * total, (moved, total)
    # The file keeps it, and comparing across precisions is refused; fp32 with fp32 is fine.
    saved = load_vdna_from_files(tmp_path / "fp32" / "histogram-200")
    assert saved.meta["histogram_precision"] == "fp32"
    check_compatible(saved, b)
    with pytest.raises(IncompatibleVDNAError, match="precision: fp64 vs fp32"):
        check_compatible(a, b)
    # A resume of the fp64 job directory with fp32 is another job: refused.
    with pytest.raises(JobError):
        run_job(
            image_sets["good"],
            tmp_path / "fp64",
            "histogram-200",
            ranges=ranges,
            histogram_precision="fp32",
            **KW,
        )


def test_profile_api_and_cli_take_the_precision(image_sets, tiny_ranges, tmp_path):
    ranges = tiny_ranges
    v = profile(image_sets["good"], "histogram-50", ranges=ranges, histogram_precision="fp32", **KW)
    assert v["histogram-50"].meta["histogram_precision"] == "fp32"
    with pytest.raises(ValueError, match="precision"):
        profile(image_sets["good"], "histogram-50", ranges=ranges, histogram_precision="fp16", **KW)
    out = tmp_path / "cli"
    rc = main(
        ["profile", str(image_sets["good"]), "--extractor", TINY, "--weights", "random", "--ranges", str(ranges),
         "--device", "cpu", "-q", "--histogram-precision", "fp32", "--out-dir", str(out), "-d", "histogram-50"]
    )  # fmt: skip
    assert rc == 0
    assert load_vdna_from_files(out / "histogram-50").meta["histogram_precision"] == "fp32"
