"""The Ray runner (local Ray, CPU actors): same output as the local runner, and survives a killed actor."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import pyarrow.parquet as pq
import pytest
from agreement import LEVEL_FLOAT32, assert_rows_agree, assert_vdnas_agree
from conftest import TINY

from neuroprint import profile
from neuroprint.jobs import read_manifest, run_job

ray = pytest.importorskip("ray")

KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=1, progress=False, device="cpu")
DISTS = ["histogram-40", "layer-gaussian"]


@pytest.fixture(scope="module")
def many(image_sets, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    src = root / "images"
    src.mkdir()
    for i in range(24):
        p = image_sets["good_paths"][i % 6]
        shutil.copy(p, src / f"{i:03d}_{p.name}")
    shutil.copy(image_sets["bad"]["truncated"], src / "zz_truncated.jpg")
    profile(src, "activation-ranges", **KW)["activation-ranges"].save(root / "ranges")
    return src, root / "ranges"


def test_local_ray1_ray2_give_the_same_output(many, tmp_path):
    src, ranges = many
    local = run_job(src, tmp_path / "local", DISTS, ranges=ranges, shard_size=3, **KW)
    one = run_job(src, tmp_path / "ray1", DISTS, ranges=ranges, shard_size=3, ray=True, num_actors=1, **KW)
    two = run_job(src, tmp_path / "ray2", DISTS, ranges=ranges, shard_size=3, ray=True, num_actors=2, **KW)
    assert local.processed == one.processed == two.processed == 24 and two.failed == 1
    assert_vdnas_agree(local.vdnas, one.vdnas, LEVEL_FLOAT32)
    assert_vdnas_agree(local.vdnas, two.vdnas, LEVEL_FLOAT32)
    rows = [pq.read_table(tmp_path / d / "rows") for d in ("local", "ray1", "ray2")]
    assert rows[0].equals(rows[1]) and rows[0].equals(rows[2])


def test_dali_decoding_in_ray_actors_equals_local_dali(many, tmp_path):
    from neuroprint.io.dali import is_available

    if not is_available():
        pytest.skip("no DALI")
    src, ranges = many
    kw = dict(ranges=ranges, shard_size=5, decoder="dali", embeddings=True, **KW)
    local = run_job(src, tmp_path / "local", DISTS, **kw)
    two = run_job(src, tmp_path / "ray2", DISTS, ray=True, num_actors=2, **kw)
    assert local.processed == two.processed == 24 and two.failed == 1
    assert_vdnas_agree(local.vdnas, two.vdnas, LEVEL_FLOAT32)
    assert_rows_agree(pq.read_table(tmp_path / "local" / "rows"), pq.read_table(tmp_path / "ray2" / "rows"))


def test_killed_actor_loses_no_row(many, tmp_path):
    src, ranges = many
    out = tmp_path / "job"
    result = {}

    def job():
        result["res"] = run_job(
            src, out, DISTS, ranges=ranges, shard_size=1, ray=True, num_actors=2, **{**KW, "batch_size": 1}
        )

    t = threading.Thread(target=job)
    t.start()
    killed = False
    deadline = time.time() + 180
    while time.time() < deadline and t.is_alive() and not killed:
        try:
            finished = read_manifest(out)["finished"]
        except (OSError, ValueError, KeyError):
            finished = {}
        if finished:
            actor = ray.get_actor("neuroprint-shard-worker-0")
            os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)
            killed = True
        time.sleep(0.05)
    t.join(timeout=300)
    assert killed, "the job finished before an actor could be killed"
    res = result["res"]
    assert res.images_in == 25 == res.processed + res.failed
    ids = pq.read_table(out / "rows").column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 25
    clean = profile(src, DISTS, ranges=ranges, **{**KW, "batch_size": 1})
    assert_vdnas_agree(clean, res.vdnas, LEVEL_FLOAT32)


def test_cli_ray_job(many, tmp_path, capsys):
    from neuroprint.cli import main

    src, ranges = many
    code = main(["profile", str(src), "--out-dir", str(tmp_path / "j"), "-d", "histogram-40", "--ranges", str(ranges),
                 "--extractor", TINY, "--weights", "random", "--device", "cpu", "--shard-size", "8", "--ray",
                 "--num-actors", "2", "-q"])  # fmt: skip
    assert code == 0
    assert "25 images in = 24 processed + 1 failed (4 of 4 shards computed now)" in capsys.readouterr().out


def test_the_ray_driver_holds_no_model_and_auto_ranges_build_it_there(many, tmp_path):
    """Under Ray only the actors (and a one-off description task) build the network; the driver builds it
    only for a pass it runs itself ('auto' ranges), and the outputs equal the local runner's."""
    from neuroprint.stats.profile import _CACHE

    src, ranges = many
    _CACHE.key = _CACHE.extractor = _CACHE.model = None
    got = run_job(src, tmp_path / "ray", DISTS, ranges=ranges, shard_size=6, ray=True, num_actors=1, **KW)
    assert got.processed == 24 and got.failed == 1
    assert _CACHE.extractor is None, "the Ray driver built the model"
    settings = read_manifest(tmp_path / "ray")["settings"]
    local = run_job(src, tmp_path / "local", DISTS, ranges=ranges, shard_size=6, **KW)
    for key in ("extractor", "weights", "layers", "recipe"):
        assert settings[key] == read_manifest(tmp_path / "local")["settings"][key]
    assert_vdnas_agree(local.vdnas, got.vdnas, LEVEL_FLOAT32)
    _CACHE.key = _CACHE.extractor = _CACHE.model = None
    auto = run_job(src, tmp_path / "auto", DISTS, ranges="auto", shard_size=6, ray=True, num_actors=1, **KW)
    assert _CACHE.extractor is not None  # the ranges pass ran on the driver
    auto_local = run_job(src, tmp_path / "auto_local", DISTS, ranges="auto", shard_size=6, **KW)
    assert_vdnas_agree(auto_local.vdnas, auto.vdnas, LEVEL_FLOAT32)


def test_a_bad_checkpoint_fails_a_ray_job_with_the_extractor_error_before_claiming(many, tmp_path):
    from neuroprint import WeightsError

    src, ranges = many
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights file"):
        run_job(src, tmp_path / "out", DISTS, ranges=ranges, ray=True, num_actors=1, **{**KW, "weights": bad})
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_local_ray_head_runs_without_the_monitor_and_the_log_monitor():
    """The Ray a job starts on one machine has no autoscaler monitor and no log monitor (two Python
    daemons of about 80 MiB that such a job never uses), and every process it started ends with it."""
    import os

    import ray

    from neuroprint.jobs.ray import ray_session

    if ray.is_initialized():
        pytest.skip("another test's Ray is connected")

    def ray_processes() -> dict:
        out = {}
        for pid in os.listdir("/proc"):
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if pid.isdigit() and "/ray/" in cmd and int(pid) != os.getpid():
                out[int(pid)] = cmd
        return out

    before = ray_processes()
    with ray_session() as r:
        assert r.get(r.remote(lambda: 1 + 1).remote()) == 2
        mine = {p: c for p, c in ray_processes().items() if p not in before}
        assert any("gcs_server" in c for c in mine.values()) and any("raylet" in c for c in mine.values())
        assert not [c for c in mine.values() if "monitor.py" in c], mine  # monitor.py and log_monitor.py
    import time

    deadline = time.monotonic() + 30
    while set(ray_processes()) & set(mine) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(ray_processes()) & set(mine), "a Ray process outlived its session"


def test_ray_default_head_on_request(monkeypatch):
    """NEUROPRINT_RAY_HEAD=default leaves the start to ``ray.init`` (nothing is started here)."""
    from neuroprint.jobs.ray import _start_lean_head

    monkeypatch.setenv("NEUROPRINT_RAY_HEAD", "default")
    assert _start_lean_head() is None
