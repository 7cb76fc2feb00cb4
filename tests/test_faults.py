"""Faults a long job meets: a tar shard cut short, an image too large to decode, and a second process
started on a job directory that is in use."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tarfile
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY
from PIL import Image

from neuroprint import open_source, profile
from neuroprint._errors import DecodeError
from neuroprint.cli import main
from neuroprint.io.decode import DEFAULT_MAX_PIXELS, decode_image
from neuroprint.jobs import JobError, run_job
from neuroprint.jobs.lock import LOCK_NAME, JobLockedError, job_lock

KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def ranges(image_sets, tmp_path_factory):
    path = tmp_path_factory.mktemp("faults") / "ranges"
    profile(image_sets["good"], "activation-ranges", **KW)["activation-ranges"].save(path)
    return path


def _cut_tar(image_sets, folder):
    """Two shards; the second is cut in the middle of its third member's data."""
    folder.mkdir()
    paths = image_sets["good_paths"]
    for s in range(2):
        with tarfile.open(folder / f"shard-{s}.tar", "w") as tf:
            for i, p in enumerate(paths):
                tf.add(p, arcname=f"s{s}{i:02d}{p.suffix.lower()}")
    second = folder / "shard-1.tar"
    with tarfile.open(second) as tf:
        third = tf.getmembers()[2]
    data = second.read_bytes()
    second.write_bytes(data[: third.offset_data + third.size // 2])
    return folder


def test_a_cut_tar_keeps_its_complete_samples_and_records_the_damage(image_sets, ranges, tmp_path):
    folder = _cut_tar(image_sets, tmp_path / "wds")
    src = open_source(folder)
    ids = [it.id for it in src]
    assert ids[:6] == [
        f"shard-0.tar/s0{i:02d}{p.suffix.lower()}" for i, p in enumerate(image_sets["good_paths"])
    ]
    assert ids[6:9] == [
        f"shard-1.tar/s1{i:02d}{p.suffix.lower()}" for i, p in enumerate(image_sets["good_paths"][:3])
    ]
    assert len(ids) == 10 and ids[9].startswith("shard-1.tar/#damaged-tail@")
    res = run_job(folder, tmp_path / "job", "histogram-20", ranges=ranges, shard_size=4, **KW)
    rows = pq.read_table(tmp_path / "job" / "rows").to_pylist()
    assert [r["id"] for r in rows] == ids  # every sample once, in order
    status = {r["id"]: (r["status"], r["error"]) for r in rows}
    assert all(status[i][0] == "ok" for i in ids[:8])
    assert status[ids[8]][0] == "failed" and "truncated tar member" in status[ids[8]][1]
    assert status[ids[9]][0] == "failed" and "damaged or truncated tar" in status[ids[9]][1]
    assert res.images_in == 10 == res.processed + res.failed and res.failed == 2


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, followed by almost no image data (cut)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", 1 << 20)  # an IDAT of 1 MB announced, 40 bytes present
        + b"IDAT"
        + zlib.compress(b"\0" * 4096)[:40]
    )


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the max_pixels=0 case
def test_images_over_max_pixels_are_failures_without_decoding(image_sets, ranges, tmp_path):
    assert DEFAULT_MAX_PIXELS == 100_000_000
    # 150 MP claimed, a few bytes present: refused from the header (decoding it would be a truncation error).
    with pytest.raises(DecodeError, match=r"150.0 MP\) is over the max_pixels limit of 100 MP; not decoded"):
        decode_image(_png_header_only(15_000, 10_000))
    with pytest.raises(DecodeError, match="truncated|corrupt"):
        decode_image(_png_header_only(15_000, 10_000), max_pixels=0)  # no limit: PIL tries, and fails
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, side in enumerate((40, 120, 50)):
        Image.fromarray(np.full((side, side, 3), 60 * i, np.uint8)).save(folder / f"{i}.png")
    res = run_job(folder, tmp_path / "job", "histogram-20", ranges=ranges, max_pixels=10_000, **KW)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "job" / "rows").to_pylist()}
    assert rows["1.png"]["status"] == "failed" and "max_pixels limit of 0.01 MP" in rows["1.png"]["error"]
    assert rows["0.png"]["status"] == rows["2.png"]["status"] == "ok" and res.failed == 1
    # The limit is part of the job's settings: a resume with another one is refused.
    with pytest.raises(JobError, match="max_pixels"):
        run_job(folder, tmp_path / "job", "histogram-20", ranges=ranges, max_pixels=20_000, **KW)
    v = profile(folder, "histogram-20", ranges=ranges, max_pixels=10_000, **KW)["histogram-20"]
    assert v.num_images == 2 and v.data_settings_used["max_pixels"] == 10_000


def test_dali_routes_oversized_images_to_the_recorded_failure(image_sets, tmp_path):
    from neuroprint.extractors import create_extractor
    from neuroprint.io.dali import DaliImageLoader, is_available
    from neuroprint.io.recipe import Recipe  # noqa: F401  (the recipe comes from the extractor below)

    if not is_available():
        pytest.skip("no DALI")
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(folder / "small.png")
    Image.fromarray(np.zeros((150, 150, 3), np.uint8)).save(folder / "big.png")
    ex = create_extractor(TINY, weights="random")
    loader = DaliImageLoader(folder, ex.recipe, batch_size=2, num_threads=1, max_pixels=10_000)
    batches = list(loader)
    fails = [(it.id, why) for b in batches for it, why in b.failures]
    assert [i for i, _ in fails] == ["big.png"] and "max_pixels" in fails[0][1]
    assert sum(len(b.items) for b in batches) == 1


_HOLD = """
import sys, time
from neuroprint.jobs.lock import job_lock
with job_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_process_on_a_locked_job_directory_is_refused(image_sets, ranges, tmp_path, capsys):
    out = tmp_path / "job"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            JobLockedError, match=rf"is in use by pid {holder.pid} on host {socket.gethostname()}"
        ):
            run_job(image_sets["good"], out, "histogram-20", ranges=ranges, **KW)
        code = main(["profile", str(image_sets["good"]), "--out-dir", str(out), "-d", "histogram-20",
                     "--ranges", str(ranges), "--extractor", TINY, "--weights", "random", "--device", "cpu", "-q"])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 1 and "is in use by pid" in err and len(err.strip().splitlines()) == 1
        assert not (out / "manifest.json").exists()  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_is_taken_over_and_released(image_sets, ranges, tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "x"}))
    res = run_job(image_sets["good"], out, "histogram-20", ranges=ranges, **KW)
    assert res.complete and res.processed == 6
    assert not (out / LOCK_NAME).exists()
    # Released on an error too, and then the directory is free again.
    with pytest.raises(JobError):
        run_job(image_sets["good"], out, "histogram-30", ranges=ranges, **KW)
    assert not (out / LOCK_NAME).exists()
    with job_lock(out) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
