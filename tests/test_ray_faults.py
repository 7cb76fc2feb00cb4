"""Ray faults: killed actors, restarting actors and failing shards, on a real local Ray.

The scheduler (`neuroprint.jobs.ray._schedule`) is driven by real Ray actors: the job's own (killed with
SIGKILL while they run shards) and small test actors that die or raise on purpose, so the limits are
reached in seconds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from agreement import LEVEL_FLOAT32, assert_vdnas_agree
from conftest import TINY

from neuroprint import load_vdna_from_files, profile
from neuroprint._errors import RayJobError
from neuroprint.cli import main
from neuroprint.jobs.ray import MAX_DEATHS, MAX_FAILURES, _schedule, ray_session

ray = pytest.importorskip("ray")

KW = dict(extractor=TINY, weights="random", batch_size=2, num_workers=1, progress=False, device="cpu")


class _Bar:
    def __init__(self):
        self.n = 0

    def update(self, n):
        self.n += n


@pytest.fixture(scope="module")
def local_ray():
    with ray_session() as r:
        yield r


def _actor_class(r):
    @r.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
    class Flaky:
        """Dies (os._exit) or raises on the shards it is told to, a given number of times each."""

        def __init__(self, flags: str, mode: str, bad: list, restart_s: float = 0.0):
            self.flags, self.mode, self.bad = flags, mode, set(bad)
            if restart_s and any(f.startswith("died-") for f in os.listdir(flags)):
                time.sleep(restart_s)  # a restart that rebuilds a large model

        def pid(self):
            return os.getpid()

        def run(self, k, items):
            flag = os.path.join(self.flags, f"{k}-{time.monotonic_ns()}")
            if k in self.bad:
                tries = len([f for f in os.listdir(self.flags) if f.startswith(f"{k}-")])
                if self.mode.startswith("once") and tries >= 1:
                    pass
                else:
                    open(flag, "w").close()
                    if self.mode.endswith("die"):
                        open(os.path.join(self.flags, f"died-{k}"), "w").close()
                        os._exit(1)
                    raise ValueError(f"shard {k} is broken")
            return pa.table({"id": [f"{k}:{i}" for i in items]}), {}, 0

    return Flaky


def _run_flaky(r, tmp_path, mode, bad, num_actors=2, n_shards=6, restart_s=0.0):
    flags = tmp_path / "flags"
    flags.mkdir(parents=True)
    Flaky = _actor_class(r)
    actors = [Flaky.remote(str(flags), mode, bad, restart_s) for _ in range(num_actors)]
    r.get([a.pid.remote() for a in actors])  # both up before the clock starts
    shards = [list(range(3)) for _ in range(n_shards)]
    committed = []
    try:
        _schedule(r, actors, shards, list(range(n_shards)), lambda k, t, s, f: committed.append(k), _Bar())
    finally:
        for a in actors:
            r.kill(a)
    return committed


def test_an_actor_that_dies_once_per_shard_loses_and_repeats_nothing(local_ray, tmp_path):
    committed = _run_flaky(local_ray, tmp_path, "once-die", bad=[0, 2, 3, 5])
    assert sorted(committed) == list(range(6))  # every shard once, after four actor deaths


def test_while_an_actor_restarts_its_shard_goes_to_the_live_one(local_ray, tmp_path):
    # Submitting to a restarting actor fails at once ("The actor is restarting"); retrying it there
    # spent the old runner's attempts in a second. Now the live actor takes the work meanwhile.
    t0 = time.monotonic()
    committed = _run_flaky(local_ray, tmp_path, "once-die", bad=[0], n_shards=8, restart_s=20.0)
    assert sorted(committed) == list(range(8))
    assert time.monotonic() - t0 < 15.0, "the job waited for the restarting actor"


def test_a_shard_that_kills_its_actor_every_time_fails_the_job_in_one_line(local_ray, tmp_path):
    with pytest.raises(RayJobError, match=rf"shard 4: its Ray actor died {MAX_DEATHS} times") as err:
        _run_flaky(local_ray, tmp_path, "always-die", bad=[4])
    assert "\n" not in str(err.value)


def test_a_shard_whose_code_raises_is_retried_then_fails(local_ray, tmp_path):
    committed = _run_flaky(local_ray, tmp_path / "a", "once-raise", bad=[1])
    assert sorted(committed) == list(range(6))  # one failure is retried
    with pytest.raises(
        RayJobError, match=rf"shard 1 failed {MAX_FAILURES} times; last error: ValueError: shard 1"
    ):
        _run_flaky(local_ray, tmp_path / "b", "always-raise", bad=[1])


@pytest.fixture(scope="module")
def many(image_sets, tmp_path_factory):
    root = tmp_path_factory.mktemp("rayfaults")
    src = root / "images"
    src.mkdir()
    for i in range(30):
        p = image_sets["good_paths"][i % 6]
        shutil.copy(p, src / f"{i:03d}_{p.name}")
    shutil.copy(image_sets["bad"]["truncated"], src / "zz_truncated.jpg")
    profile(src, "activation-ranges", **KW)["activation-ranges"].save(root / "ranges")
    return src, root / "ranges"


def _busy_shard_actors() -> list[int]:
    """Pids of the job's actors while they run a shard: Ray titles an actor's process ``ray::Worker.run``
    while its ``run`` method executes (``ray::Worker`` when idle)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                title = f.read().split(b"\0", 1)[0]
        except OSError:
            continue
        if title.startswith(b"ray::Worker.run"):
            pids.append(int(d))
    return pids


def _kill_running_actors(stop: threading.Event, kills: list, times: int):
    """SIGKILLs an actor while it computes a shard (its process titled as running ``run``), `times` times.
    The title needs no call into the actor, which a busy actor would answer only after its shard."""
    while not stop.is_set() and len(kills) < times:
        busy = _busy_shard_actors()
        if busy and not stop.is_set():
            try:
                os.kill(busy[0], signal.SIGKILL)
            except ProcessLookupError:  # its shard just ended and Ray recycled nothing: look again
                continue
            kills.append(busy[0])
            time.sleep(1.0)
        time.sleep(0.01)


def test_cli_job_finishes_after_actors_are_killed_mid_shard(many, tmp_path, capsys):
    src, ranges = many
    out = tmp_path / "job"
    args = ["profile", str(src), "--out-dir", str(out), "-d", "histogram-40", "-d", "layer-gaussian",
            "--ranges", str(ranges), "--extractor", TINY, "--weights", "random", "--device", "cpu",
            "--batch-size", "2", "--shard-size", "4", "--ray", "--num-actors", "2", "-q"]  # fmt: skip
    stop, kills = threading.Event(), []
    killer = threading.Thread(target=_kill_running_actors, args=(stop, kills, 3))
    with ray_session():  # the CLI joins this Ray instance, so the test can find its actors
        killer.start()
        try:
            code = main(args)
        finally:
            stop.set()
            killer.join()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert kills, "no actor was killed while running a shard"
    print("actor kills:", len(kills))
    rows = pq.read_table(out / "rows")
    ids = rows.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 31  # every row exactly once
    assert rows.column("status").to_pylist().count("failed") == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["summary"]["rows"] == 31
    clean = profile(src, ["histogram-40", "layer-gaussian"], ranges=ranges, **KW)
    on_ray = {n: load_vdna_from_files(out / n) for n in ("histogram-40", "layer-gaussian")}
    assert_vdnas_agree(clean, on_ray, LEVEL_FLOAT32)
