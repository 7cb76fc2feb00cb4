"""Sharded resumable jobs: same VDNAs as one pass, one row per input, resume after a partial run or SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from agreement import LEVEL_BITWISE, LEVEL_FLOAT32_FILE, LEVEL_MERGE_ORDER, assert_vdnas_agree
from conftest import TINY, kill_after_first_shard

from neuroprint import load_vdna_from_files, open_source, profile
from neuroprint.jobs import JobError, run_job

DISTS = ["histogram-40", "layer-gaussian", "gaussian"]
KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=2, progress=False, device="cpu")


@pytest.fixture(scope="module")
def job_ranges(image_sets, tmp_path_factory):
    path = tmp_path_factory.mktemp("job") / "ranges"
    profile(image_sets["good"], "activation-ranges", **KW)["activation-ranges"].save(path)
    return path


def test_job_equals_single_pass_and_writes_one_row_per_item(image_sets, job_ranges, tmp_path):
    # Shards of whole batches keep every batch identical to the single pass: a network's float32
    # activations of an image may differ in the last bits with the batch it runs in (BLAS blocking).
    res = run_job(
        image_sets["mixed"], tmp_path / "job", DISTS, ranges=job_ranges, embeddings=True, shard_size=6, **KW
    )
    single = profile(image_sets["mixed"], DISTS, ranges=job_ranges, **KW)
    assert_vdnas_agree(single, res.vdnas, LEVEL_MERGE_ORDER)
    # The files on disk are the same VDNAs.
    assert_vdnas_agree(
        single, {n: load_vdna_from_files(tmp_path / "job" / n) for n in DISTS}, LEVEL_FLOAT32_FILE
    )
    rows = pq.read_table(tmp_path / "job" / "rows")
    ids = [it.id for it in open_source(image_sets["mixed"])]
    assert rows.column("id").to_pylist() == ids  # every item once, in source order
    assert res.images_in == len(ids) == res.processed + res.failed and res.failed == 4
    ok = rows.filter(rows["status"].to_numpy(zero_copy_only=False) == "ok").to_pylist()
    assert all(r["width"] > 0 and r["height"] > 0 and len(r["embedding"]) == 96 for r in ok)
    failed = pq.read_table(tmp_path / "job" / "failures.parquet").to_pylist()
    assert len(failed) == 4 and all(f["error"] for f in failed)
    manifest = json.loads((tmp_path / "job" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["summary"]["rows"] == len(ids)


def test_partial_run_then_resume_equals_clean_run(image_sets, job_ranges, tmp_path):
    clean = run_job(image_sets["mixed"], tmp_path / "clean", DISTS, ranges=job_ranges, shard_size=3, **KW)
    first = run_job(
        image_sets["mixed"], tmp_path / "job", DISTS, ranges=job_ranges, shard_size=3, max_shards=2, **KW
    )
    assert first.vdnas == {} and first.shards_run == 2
    # A crash while writing shard 2 left half a file behind: the rerun must replace it, not add to it.
    (tmp_path / "job" / "rows" / "shard-00002.parquet").write_bytes(b"PAR1 half written")
    second = run_job(image_sets["mixed"], tmp_path / "job", DISTS, ranges=job_ranges, shard_size=3, **KW)
    assert second.shards_run == second.shards_total - 2
    assert_vdnas_agree(clean.vdnas, second.vdnas, LEVEL_BITWISE)
    a = pq.read_table(tmp_path / "clean" / "rows").drop(["error"])
    b = pq.read_table(tmp_path / "job" / "rows").drop(["error"])
    assert a.equals(b)
    # A finished job rerun computes nothing and gives the same output (read from its files, which
    # hold float32 moments as vdna's do).
    third = run_job(image_sets["mixed"], tmp_path / "job", DISTS, ranges=job_ranges, shard_size=3, **KW)
    assert third.shards_run == 0 and third.reused
    assert_vdnas_agree(clean.vdnas, third.vdnas, LEVEL_FLOAT32_FILE)


def test_auto_ranges_are_fixed_at_the_first_run(image_sets, tmp_path):
    first = run_job(
        image_sets["good"], tmp_path / "job", "histogram-40", ranges="auto", shard_size=3, max_shards=1, **KW
    )
    assert (tmp_path / "job" / "ranges.json").is_file() and first.vdnas == {}
    done = run_job(image_sets["good"], tmp_path / "job", "histogram-40", ranges="auto", shard_size=3, **KW)
    clean = profile(image_sets["good"], "histogram-40", ranges="auto", **KW)
    assert_vdnas_agree(clean, done.vdnas, LEVEL_MERGE_ORDER)


def test_other_settings_and_foreign_directories_are_refused(image_sets, job_ranges, tmp_path):
    run_job(
        image_sets["good"],
        tmp_path / "job",
        "histogram-40",
        ranges=job_ranges,
        shard_size=2,
        max_shards=1,
        **KW,
    )
    with pytest.raises(JobError, match="other settings.*distributions"):
        run_job(image_sets["good"], tmp_path / "job", "histogram-30", ranges=job_ranges, shard_size=2, **KW)
    with pytest.raises(JobError, match="other settings.*shard_size"):
        run_job(image_sets["good"], tmp_path / "job", "histogram-40", ranges=job_ranges, shard_size=3, **KW)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(JobError, match="not a neuroprint job directory"):
        run_job(image_sets["good"], tmp_path / "other", "histogram-40", ranges=job_ranges, **KW)


def test_sigkill_mid_job_then_rerun(image_sets, job_ranges, tmp_path):
    """Kill the CLI with SIGKILL after its first finished shard; the rerun equals a clean run."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(40):
        p = image_sets["good_paths"][i % 6]
        shutil.copy(p, src / f"{i:03d}_{p.name}")
    exe = os.path.join(os.path.dirname(sys.executable), "neuroprint")
    args = [exe, "profile", str(src), "--out-dir", str(tmp_path / "job"), "-d", "histogram-40", "--ranges", str(job_ranges),
            "--extractor", TINY, "--weights", "random", "--device", "cpu", "--batch-size", "1", "--shard-size", "1", "-q"]  # fmt: skip
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}
    state = kill_after_first_shard(args, env, tmp_path / "job" / "manifest.json")
    assert not state["complete"] and 0 < len(state["finished"]) < 40, "the kill came too late to test a crash"
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "40 images in = 40 processed + 0 failed" in done.stdout
    clean = profile(src, "histogram-40", ranges=job_ranges, **{**KW, "batch_size": 1})
    # Same batches (one image each); the CLI process runs torch's default thread count, as this one does.
    assert_vdnas_agree(
        clean, {"histogram-40": load_vdna_from_files(tmp_path / "job" / "histogram-40")}, LEVEL_MERGE_ORDER
    )
    ids = pq.read_table(tmp_path / "job" / "rows").column("id").to_pylist()
    assert ids == sorted(ids) and len(ids) == len(set(ids)) == 40
    assert np.all(
        pq.read_table(tmp_path / "job" / "rows").column("status").to_numpy(zero_copy_only=False) == "ok"
    )


def test_cli_job_arguments(image_sets, job_ranges, tmp_path, capsys):
    from neuroprint.cli import main

    base = [
        "profile",
        str(image_sets["good"]),
        "--extractor",
        TINY,
        "--weights",
        "random",
        "-q",
        "--device",
        "cpu",
    ]
    for extra in (
        [],
        ["-o", str(tmp_path / "a"), "--out-dir", str(tmp_path / "b")],
        ["--out-dir", str(tmp_path / "c"), "--num-images", "2"],
    ):
        with pytest.raises(SystemExit) as e:
            main(base + extra)
        assert e.value.code == 2
    code = main(
        base
        + [
            "--out-dir",
            str(tmp_path / "d"),
            "-d",
            "histogram-40",
            "--ranges",
            str(job_ranges),
            "--embeddings",
            "--shard-size",
            "4",
        ]
    )
    assert code == 0
    assert "6 images in = 6 processed + 0 failed (2 of 2 shards computed now)" in capsys.readouterr().out


def test_job_reference_columns_equal_score_images(image_sets, job_ranges, tmp_path):
    from neuroprint import IncompatibleVDNAError, score_images

    ref = profile(image_sets["good"], "histogram-40", ranges=job_ranges, **KW)["histogram-40"]
    ref.save(tmp_path / "ref")
    res = run_job(
        image_sets["mixed"],
        tmp_path / "job",
        "gaussian",
        references={"ref": tmp_path / "ref"},
        shard_size=6,
        **KW,
    )
    rows = pq.read_table(tmp_path / "job" / "rows").to_pylist()
    scores = score_images(
        image_sets["mixed"], ref, batch_size=3, num_workers=2, progress=False, device="cpu"
    ).to_pylist()
    assert [r["id"] for r in rows] == [s["id"] for s in scores]
    for r, s in zip(rows, scores):
        assert (r["emd:ref"] is None) == (s["emd"] is None)
        if s["emd"] is not None:
            assert r["emd:ref"] == pytest.approx(s["emd"], rel=1e-12)
    assert res.failed == 4
    other = profile(image_sets["good"], "histogram-40", ranges=job_ranges, **{**KW, "seed": 5})[
        "histogram-40"
    ]
    with pytest.raises(IncompatibleVDNAError, match="weights"):
        run_job(image_sets["good"], tmp_path / "job2", "gaussian", references={"x": other}, **KW)
