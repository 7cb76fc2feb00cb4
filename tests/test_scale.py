"""Jobs at scale: columnar items, slim worker sources, the merged-state checkpoint, the shard log, the
complete-job shortcut and keep-centre without the m x m matrix (issue 18)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from agreement import LEVEL_BITWISE, LEVEL_FLOAT32_FILE, LEVEL_MERGE_ORDER, assert_vdnas_agree
from conftest import TINY

from neuroprint import open_source
from neuroprint._errors import SourceError
from neuroprint._stamps import complete_job
from neuroprint.io.sources import Item, ItemList
from neuroprint.jobs import (
    Backbone,
    Distributions,
    Fungi,
    Hashes,
    Job,
    JobError,
    Part,
    read_manifest,
    run_job,
)
from neuroprint.jobs.job import SHARD_LOG, _loadz, _read_log, _savez_compact

DISTS = ["histogram-40", "gaussian", "layer-gaussian"]
KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=1, progress=False, device="cpu")


@pytest.fixture
def folder(image_sets, tmp_path):
    """A folder of 14 readable images (every shard of size 1 holds one)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(14):
        p = image_sets["good_paths"][i % len(image_sets["good_paths"])]
        shutil.copy(p, src / f"{i:03d}_{p.name}")
    return src


# ---- items


@pytest.mark.parametrize(
    "items",
    [
        [Item(f"a/{i}.png", f"/r/a/{i}.png", f"/r/a/{i}.png") for i in range(7)],  # ref = uri
        [Item(f"array:{i:08d}", f"array:{i:08d}", i) for i in range(7)],  # ref = position
        [Item(f"r{i}", f"t#{i}", f"/other/{i}") for i in range(7)],  # string refs
        [Item(f"m{i}", f"t#{i}", ("t.tar", 512 * i, 10)) for i in range(7)],  # other objects
    ],
)
def test_item_list_is_the_items(items):
    got = ItemList.from_items(items)
    assert len(got) == 7 and list(got) == items and got[3] == items[3] and got[-1] == items[-1]
    assert list(got[2:5]) == items[2:5] and list(got[5:]) == items[5:] and list(got[::3]) == items[::3]
    assert list(got.take([6, 0, 3])) == [items[6], items[0], items[3]]
    assert list(got[2:6].take([1, 0])) == [items[3], items[2]]
    assert got.ids_sha256() == hashlib.sha256("\n".join(it.id for it in items).encode()).hexdigest()
    back = pickle.loads(pickle.dumps(got[1:4]))
    assert list(back) == items[1:4]
    with pytest.raises(IndexError):
        got[7]


def test_folder_items_are_columns_and_a_pickled_shard_holds_only_its_items():
    ids = [f"d{i // 1000:02d}/img_{i:07d}.jpg" for i in range(50_000)]
    items = ItemList(ids, uri_prefix="/data/root/")
    assert items.nbytes() < 50_000 * 40  # the ids' text and offsets; the uris are the prefix plus the id
    assert items[12_345] == Item(ids[12_345], "/data/root/" + ids[12_345], "/data/root/" + ids[12_345])
    assert items.ids_sha256() == hashlib.sha256("\n".join(ids).encode()).hexdigest()
    shard = items[20_000:20_010]
    assert len(pickle.dumps(shard)) < 2_000 < len(pickle.dumps(items)) // 100


def test_worker_sources_hold_no_items(folder, tmp_path):
    src = open_source(folder)
    slim = src.for_workers()
    assert len(slim) == len(src) == 14 and len(src.item_list()) == 14
    with pytest.raises(SourceError, match="holds no items"):
        slim[0]
    assert slim.read(src[0]) == src.read(src[0])  # a shard's own items still read
    job = Job(folder, tmp_path / "j", [Hashes("phash")], None, progress=False, device="cpu")
    job.out, job.source = tmp_path / "j", src
    job._open_backbone()
    job._check_needs()
    spec = job._spec()
    with pytest.raises(SourceError):
        spec.source[0]
    blob = pickle.dumps(spec)
    assert not any(it.id.encode() in blob for it in src) and src[5].id.encode() in pickle.dumps(src)
    # FUNGI's SimCLR negatives drawn from the source need the items on the worker
    job.parts = [Fungi({"fungi": "simclr"})]
    assert job._spec().source[0] == src[0]
    job.parts = [Fungi({"fungi": "kl,dino"})]
    with pytest.raises(SourceError):
        job._spec().source[0]


# ---- partial states and the manifest log


def test_compact_partials_round_trip_in_their_dtypes(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "h": rng.integers(0, 300, size=(37, 41)).astype(np.int64),  # -> uint16
        "small": np.array([0, 3, 255], dtype=np.int64),  # -> uint8
        "neg": np.array([-5, 70_000], dtype=np.int64),  # -> int32
        "big": np.array([2**40], dtype=np.int64),
        "count": np.array(12, dtype=np.int64),
        "m": rng.standard_normal((5, 5)),
        "ids": np.array(["a", "bc"]),
        "empty": np.zeros((0, 3), dtype=np.int64),
        "cube": rng.integers(-3, 4, size=(3, 4, 5)).astype(np.int32),
        "column": rng.integers(0, 9, size=(6, 1)).astype(np.int64),  # one per row: narrowed only
        "extremes": np.array([[-128, 127, -128], [127, 0, -1]], dtype=np.int8),
        # 8- and 16-bit arrays are delta-coded in int32: the largest jumps must survive
        "u16": np.array([[0, 65535, 0, 65535], [65535, 1, 65534, 0]], dtype=np.uint16),
        "i16": np.array([[-32768, 32767, -32768], [32767, 0, -1]], dtype=np.int16),
        "u8": np.array([[0, 255, 0], [255, 255, 0]], dtype=np.uint8),
        "u64": np.array([0, 2**60, 5], dtype=np.uint64),
        "near_limit": np.array([-(2**61) - 1, 2**61], dtype=np.int64),  # narrowed only
    }
    _savez_compact(tmp_path / "p.npz", arrays)
    import json
    import zipfile

    import pyarrow as pa

    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        specs = json.loads(str(z["__dtypes__"]))
        # byte planes of the zigzag deltas ([0, 3, 255]: 0, 6, 504, two bytes), zstd-compressed into one
        # uint8 blob; single values and rows of one element narrowed
        assert specs["h"]["codec"] == "zstd" and specs["h"]["planes"] == [2, 37 * 41]  # deltas up to 2 * 299
        assert z["h"].dtype == np.uint8 and z["h"].ndim == 1
        assert specs["small"]["planes"] == [2, 3] and z["count"].dtype == np.uint8
        assert z["column"].dtype == np.uint8 and z["near_limit"].dtype == np.int64
        raw = pa.Codec("zstd").decompress(z["h"], decompressed_size=2 * 37 * 41, asbytes=True)
        assert len(raw) == 2 * 37 * 41

    # narrowed integers are deflated; floats and the compressed blobs are stored (deflate gains little on
    # float noise at many times the cost, and nothing on zstd's output)
    with zipfile.ZipFile(tmp_path / "p.npz") as zf:
        kind = {i.filename: i.compress_type for i in zf.infolist()}
    assert kind["m.npy"] == kind["h.npy"] == kind["cube.npy"] == zipfile.ZIP_STORED
    assert kind["count.npy"] == kind["near_limit.npy"] == zipfile.ZIP_DEFLATED
    # smooth counts (a histogram) compress better as deltas than as narrowed counts
    smooth = np.rint(5000 * np.exp(-(np.linspace(-4, 4, 1000) ** 2) / 2))[None] + rng.poisson(3, (64, 1000))
    _savez_compact(tmp_path / "s.npz", {"c": smooth.astype(np.int64)})
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, c=smooth.astype(np.uint16))
    assert (tmp_path / "s.npz").stat().st_size < 0.8 * buf.tell()
    assert np.array_equal(_loadz(tmp_path / "s.npz")["c"], smooth)
    back = _loadz(tmp_path / "p.npz")
    assert sorted(back) == sorted(arrays)
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and back[k].shape == a.shape and np.array_equal(back[k], a), k


def test_partials_with_deflated_planes_still_load(tmp_path, monkeypatch):
    """Partial files written before the zstd planes (deflated byte planes, a spec without "codec"), or by
    a pyarrow without zstd, load to the same arrays: a job resumed across the change merges them."""
    import json
    import zipfile

    import neuroprint.jobs.job as job_mod

    rng = np.random.default_rng(1)
    arrays = {
        "hists": rng.poisson(4, size=(5, 7, 33)).astype(np.uint16),
        "counts": rng.integers(-(2**40), 2**40, size=(3, 9)),
        "n": np.array(7, dtype=np.int64),
    }
    monkeypatch.setattr(job_mod, "_planes_codec", lambda: None)
    _savez_compact(tmp_path / "old.npz", arrays)
    monkeypatch.undo()
    with zipfile.ZipFile(tmp_path / "old.npz") as zf:
        assert zf.getinfo("hists.npy").compress_type == zipfile.ZIP_DEFLATED
        specs = json.loads(str(np.load(zf.open("__dtypes__.npy"), allow_pickle=False)))
    assert "codec" not in specs["hists"] and specs["hists"]["enc"] == "dz"
    _savez_compact(tmp_path / "new.npz", arrays)
    old, new = _loadz(tmp_path / "old.npz"), _loadz(tmp_path / "new.npz")
    for k, a in arrays.items():
        for got in (old[k], new[k]):
            assert got.dtype == a.dtype and np.array_equal(got, a), k


def test_a_corrupt_compressed_partial_is_a_clear_error(tmp_path):
    import json
    import zipfile

    arrays = {"hists": np.random.default_rng(2).poisson(9, size=(4, 50)).astype(np.int64)}
    _savez_compact(tmp_path / "p.npz", arrays)
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        blob, specs = z["hists"].copy(), json.loads(str(z["__dtypes__"]))

    def write(path, blob, spec):
        with zipfile.ZipFile(path, "w") as zf:
            for name, a in (("hists", blob), ("__dtypes__", np.array(json.dumps({"hists": spec})))):
                with zf.open(f"{name}.npy", "w") as f:
                    np.lib.format.write_array(f, a, allow_pickle=False)

    bad = blob.copy()
    bad[len(bad) // 2 :] ^= 0x5A  # the frame's data garbled
    cases = {
        "garbled": (bad, specs["hists"], "does not decompress|holds"),
        "truncated": (blob[: len(blob) // 2], specs["hists"], "does not decompress|holds"),
        "wrong size": (blob, {**specs["hists"], "planes": [1, 3]}, "does not decompress|holds"),
        "unknown codec": (blob, {**specs["hists"], "codec": "brotli9"}, "unknown codec"),
        "bad plane shape": (blob, {**specs["hists"], "planes": [2]}, "plane shape"),
        "not a blob": (blob.astype(np.int16), specs["hists"], "uint8 blob"),
    }
    for what, (b, spec, msg) in cases.items():
        path = tmp_path / f"{what}.npz"
        write(path, b, spec)
        with pytest.raises(ValueError, match=msg):
            _loadz(path)


def test_a_torn_log_line_is_not_a_finished_shard(tmp_path):
    log = tmp_path / SHARD_LOG
    log.write_text(
        '{"shard": "00000", "images": 4, "failed": 0}\n{"shard": "00001", "images": 4, "failed": 1}\n{"shard": "000'
    )
    assert _read_log(log) == {"00000": {"images": 4, "failed": 0}, "00001": {"images": 4, "failed": 1}}


# ---- the merged-state checkpoint


class _Boom(Part):
    """Raises in the shard that holds ``at`` (a stand-in for a crash mid-job)."""

    name = "boom"

    def __init__(self, at: str):
        self.at = at

    def columns(self, batch, feats) -> dict:
        if any(it.id == self.at for it in batch.items):
            raise RuntimeError("crash")
        return {}


def _job(folder, out, ranges, parts=(), **kw):
    built = [Distributions(DISTS, ranges), *parts]
    backbone = Backbone(TINY, "random")
    return Job(folder, out, built, backbone, shard_size=1, batch_size=3, num_workers=1, progress=False,
               device="cpu", **kw)  # fmt: skip


def test_checkpoint_holds_the_merged_state_and_a_crash_redoes_only_unsaved_shards(
    folder, tiny_ranges, tmp_path
):
    clean = _job(folder, tmp_path / "clean", tiny_ranges).run().vdnas
    out = tmp_path / "job"
    ids = [it.id for it in open_source(folder)]
    with pytest.raises(RuntimeError, match="crash"):
        _job(folder, out, tiny_ranges, [_Boom(ids[7])], checkpoint_every=3).run()
    m = read_manifest(out)
    # shards 0-5 are in the two checkpoints; 6 has rows but no saved state: not finished
    assert sorted(m["finished"]) == [f"{k:05d}" for k in range(6)] and not m["complete"]
    assert sorted(p.name for p in (out / "partials").iterdir()) == ["merged.npz"]
    assert (out / "rows" / "shard-00006.parquet").is_file()
    res = _job(folder, out, tiny_ranges, [_Boom("none")], checkpoint_every=3).run()
    assert res.complete and res.shards_run == 8  # 6..13
    # the resumed fold continues the checkpoint's: the same merges in the same order as the clean run
    assert_vdnas_agree(clean, res.vdnas, LEVEL_BITWISE)
    rows = pq.read_table(out / "rows")
    assert rows.column("id").to_pylist() == ids  # every item once
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["finished"]) == 14 and not (out / SHARD_LOG).exists()
    assert sorted(p.name for p in (out / "partials").iterdir()) == ["merged.npz"]


def test_a_directory_with_per_shard_partials_resumes_into_the_checkpoint(
    folder, tiny_ranges, tmp_path, monkeypatch
):
    clean = run_job(folder, tmp_path / "clean", DISTS, ranges=tiny_ranges, shard_size=1, **KW)
    out = tmp_path / "job"
    with monkeypatch.context() as mp:  # a part without a merged state: one partial file per shard
        mp.setattr(Distributions, "merged_state", lambda self: None)
        first = run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=1, max_shards=5, **KW)
    assert first.shards_run == 5 and len(list((out / "partials").glob("shard-*.npz"))) == 5
    assert len(_read_log(out / SHARD_LOG)) == 5  # the shard log, not a manifest rewrite per shard
    res = run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=1, **KW)
    assert res.shards_run == 9
    assert_vdnas_agree(clean.vdnas, res.vdnas, LEVEL_MERGE_ORDER)


# ---- a complete job asked again


def test_a_complete_job_returns_at_once_and_rebuild_redoes_the_outputs(
    folder, tiny_ranges, tmp_path, monkeypatch
):
    out = tmp_path / "job"
    first = run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=4, **KW)
    with monkeypatch.context() as mp:  # neither the source nor the model is touched
        mp.setattr("neuroprint.io.sources.FolderSource.__init__", lambda *a, **k: pytest.fail("listed"))
        mp.setattr("neuroprint.stats.profile._CACHE.get", lambda *a, **k: pytest.fail("built the model"))
        again = run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=4, **KW)
    assert again.reused and again.shards_run == 0 and again.complete
    assert (again.images_in, again.processed, again.failed) == (
        first.images_in,
        first.processed,
        first.failed,
    )
    assert_vdnas_agree(first.vdnas, again.vdnas, LEVEL_FLOAT32_FILE)
    (out / "histogram-40.npz").unlink()
    rebuilt = run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=4, rebuild=True, **KW)
    assert not rebuilt.reused and rebuilt.shards_run == 0 and (out / "histogram-40.npz").is_file()
    assert_vdnas_agree(first.vdnas, rebuilt.vdnas, LEVEL_MERGE_ORDER)
    # another request (other options, or a folder whose entries changed) goes the full way
    shutil.copy(next(folder.iterdir()), folder / "zz_new.png")
    with pytest.raises(JobError, match="item_ids_sha256"):
        run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=4, **KW)


def test_cli_profile_reports_a_complete_job(folder, tiny_ranges, tmp_path, capsys):
    from neuroprint.cli import main

    args = ["profile", str(folder), "--out-dir", str(tmp_path / "j"), "-d", "histogram-40", "--ranges",
            str(tiny_ranges), "--extractor", TINY, "--weights", "random", "--device", "cpu", "-q"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["profile", "--resume", "--out-dir", str(tmp_path / "j")]) == 0
    assert "already complete" in capsys.readouterr().out
    assert main(["profile", "--resume", "--rebuild", "--out-dir", str(tmp_path / "j")]) == 0
    assert "already complete" not in capsys.readouterr().out
    # a new process answers before torch is imported
    code = (
        "import sys; from neuroprint.cli import main; "
        f"rc = main(['profile', '--resume', '--out-dir', {str(tmp_path / 'j')!r}]); "
        "assert rc == 0 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:3]"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and "already complete" in done.stdout, done.stderr
    # a request file that changed (here the ranges) sends the job the full way
    assert complete_job(tmp_path / "j") is not None
    ranges_json = Path(f"{tiny_ranges}.json")
    st = ranges_json.stat()
    os.utime(ranges_json, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    try:
        assert complete_job(tmp_path / "j") is None
    finally:
        os.utime(ranges_json, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_a_new_process_asking_run_job_for_a_complete_job_answers_without_torch(
    folder, tiny_ranges, tmp_path, monkeypatch
):
    out = tmp_path / "job"
    first = run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=4, **KW)
    call = json.loads((out / "call.json").read_text())
    assert call["request_sha256"] == read_manifest(out)["request_sha256"]
    args = dict(
        source=str(folder),
        out_dir=str(out),
        distributions=DISTS,
        ranges=str(tiny_ranges),
        shard_size=4,
        **{**KW, "batch_size": 5, "num_workers": 2},
    )  # runtime options may differ
    code = (
        "import json, sys; from neuroprint.jobs import run_job; "
        f"res = run_job(**json.loads({json.dumps(args)!r})); "
        "before = 'torch' in sys.modules; h = res.vdnas['histogram-40']; "
        "print(json.dumps([before, res.reused, res.shards_run, res.shards_total, res.images_in, res.processed, "
        "res.failed, sorted(res.vdnas), h.num_images, 'torch' in sys.modules]))"
    )  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got[0] is False, "run_job imported torch to answer a complete job"
    assert got[1:] == [True, 0, first.shards_total, first.images_in, first.processed, first.failed,
                       sorted(first.vdnas), first.processed, True]  # fmt: skip
    # without call.json the job's own request digest answers (without listing) and records the call again
    (out / "call.json").unlink()
    with monkeypatch.context() as mp:
        mp.setattr("neuroprint.io.sources.FolderSource.__init__", lambda *a, **k: pytest.fail("listed"))
        slow = run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=4, **KW)
    assert slow.reused and json.loads((out / "call.json").read_text()) == call
    # in process too, the recorded call answers before the job is built
    monkeypatch.setattr(Job, "run", lambda self: pytest.fail("the job was built"))
    again = run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=4, **KW)
    assert again.reused
    assert_vdnas_agree(first.vdnas, again.vdnas, LEVEL_FLOAT32_FILE)


def test_the_recorded_call_answers_only_the_same_call_of_the_same_unchanged_job(
    folder, tiny_ranges, tmp_path
):
    from neuroprint.jobs.build import _call_digest, _reuse

    base = dict(source=str(folder), distributions=DISTS, extractor=TINY, weights="random", layers=None,
                ranges=str(tiny_ranges), embeddings=False, shard_size=4, dtype="float32", seed=0,
                crop="none", resize_mode=None, references=None, decoder="auto", hashes=(), fungi=None,
                max_pixels=100_000_000, parts=(), histogram_precision="fp64")  # fmt: skip
    out = tmp_path / "job"

    def digest(**change):
        return _call_digest({**base, "out_dir": out, **change})

    d0 = digest()
    assert d0 is not None and digest(dtype=torch.float32) == d0 and digest(source=folder) == d0
    for change in (dict(seed=1), dict(shard_size=5), dict(dtype="bfloat16"), dict(distributions=DISTS[:1]),
                   dict(hashes=("dhash",)), dict(max_pixels=0), dict(ranges="auto")):  # fmt: skip
        assert digest(**change) not in (None, d0), change
    # what cannot be identified without importing it gives no digest: the job takes the full way
    assert digest(parts=("brightness",)) is None and digest(source=open_source(folder)) is None
    assert digest(references={"ref": object()}) is None and digest(source=str(tmp_path / "missing")) is None
    run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=4, **KW)
    assert _reuse(out, d0) is not None and _reuse(out, digest(seed=1)) is None
    # the ranges file touched, an image added, an output removed, a live lock, another request's manifest
    ranges_json = Path(f"{tiny_ranges}.json")
    st = ranges_json.stat()
    os.utime(ranges_json, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    try:
        assert digest() != d0 and _reuse(out, d0) is None  # the manifest's request stamps it too
    finally:
        os.utime(ranges_json, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _reuse(out, digest()) is not None
    (out / "job.lock").write_text("{}")
    assert _reuse(out, d0) is None
    (out / "job.lock").unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "request_sha256": "0" * 64}))
    assert _reuse(out, d0) is None
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "gaussian.npz").rename(out / "gaussian.bak")
    assert _reuse(out, d0) is None
    (out / "gaussian.bak").rename(out / "gaussian.npz")
    shutil.copy(next(folder.iterdir()), folder / "zz_new.png")
    assert digest() != d0
    with pytest.raises(JobError, match="item_ids_sha256"):  # the full way refuses the changed source
        run_job(folder, out, DISTS, ranges=tiny_ranges, shard_size=4, **KW)


def test_a_folder_stamp_sees_changes_anywhere_in_the_tree(tmp_path):
    from neuroprint._stamps import path_stamp, stamps_unchanged

    root = tmp_path / "night"
    (root / "cam1" / "2026-12-06").mkdir(parents=True)
    (root / "cam2").mkdir()
    (root / "cam2" / "loop").symlink_to(root, target_is_directory=True)  # a cycle: not followed
    (root / "cam1" / "2026-12-06" / "a.png").write_bytes(b"x")
    stamp = path_stamp(root)
    folders = stamp[0::3]
    assert folders == sorted(folders) and len(folders) == len(set(folders))
    assert {os.path.relpath(f, root) for f in folders} == {".", "cam1", "cam1/2026-12-06", "cam2"}
    assert stamps_unchanged({"source": stamp})
    deep = root / "cam1" / "2026-12-06"
    st = deep.stat()
    (deep / "b.png").write_bytes(b"y")  # a new image two folders down
    os.utime(deep, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # coarse-mtime filesystems too
    assert not stamps_unchanged({"source": stamp})
    stamp = path_stamp(root)
    (root / "cam3").mkdir()  # a new folder moves its parent's mtime
    os.utime(root, ns=(root.stat().st_atime_ns, root.stat().st_mtime_ns + 1_000_000))
    assert not stamps_unchanged({"source": stamp})


# ---- keep-centre


def test_hash_medoid_without_the_pair_matrix():
    from neuroprint.dedup.hashes import hamming_distance
    from neuroprint.dedup.search import hash_distance_sums

    rng = np.random.default_rng(3)
    for m in (1, 2, 5, 129):
        h = rng.integers(-(2**63), 2**63 - 1, size=m, dtype=np.int64)
        t = torch.as_tensor(h)
        ref = hamming_distance(t[:, None], t[None, :]).sum(dim=1).numpy()
        assert np.array_equal(hash_distance_sums(h), ref), m
