"""Jobs over the bad-input corpus with both decoders, DALI vs PIL jobs, CLI --resume, and dataframe readers."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY
from PIL import Image

from neuroprint import open_source, profile
from neuroprint.cli import main
from neuroprint.io.dali import is_available as dali_available
from neuroprint.jobs import JobError, run_job

KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=2, progress=False, device="cpu")
DECODERS = ["pil", pytest.param("dali", marks=pytest.mark.skipif(not dali_available(), reason="no DALI"))]


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients with a few sharp shapes: JPEG-friendly content like a photograph."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(h + w - 2, 1)], -1)
    for _ in range(3):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(3, max(4, min(h, w) // 3))
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return img.clip(0, 255).astype(np.uint8)


# name -> expected status; "zz_deleted.jpg" is removed after the source is listed.
EXPECTED = {
    "ok_0.jpg": "ok",
    "ok_1.png": "ok",
    "cmyk.jpg": "ok",
    "sixteen.png": "ok",
    "gray.jpg": "ok",
    "rgba.png": "ok",
    "palette.png": "ok",
    "exif_rotated.jpg": "ok",
    "one_pixel.png": "ok",
    "one_pixel.jpg": "ok",
    "very_large.jpg": "ok",
    "truncated.jpg": "failed",
    "zero.jpg": "failed",
    "text.jpg": "failed",
    "link_loop_a.jpg": "failed",
    "link_loop_b.jpg": "failed",
    "zz_deleted.jpg": "failed",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rgb = Image.fromarray(_photo(90, 70, 1))
    Image.fromarray(_photo(64, 80, 2)).save(root / "ok_0.jpg", quality=90)
    Image.fromarray(_photo(50, 50, 3)).save(root / "ok_1.png")
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(np.arange(60 * 40, dtype=np.uint16).reshape(60, 40) * 27).save(root / "sixteen.png")
    rgb.convert("L").save(root / "gray.jpg")
    rgb.convert("RGBA").save(root / "rgba.png")
    rgb.convert("P").save(root / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    rgb.save(root / "exif_rotated.jpg", exif=exif.tobytes())
    Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(root / "one_pixel.png")
    Image.fromarray(np.full((1, 1, 3), 30, np.uint8)).save(root / "one_pixel.jpg")
    Image.fromarray(_photo(60, 80, 4)).resize((6400, 4800), Image.NEAREST).save(root / "very_large.jpg")
    good = (root / "ok_0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not a picture\n")
    os.symlink(root / "link_loop_b.jpg", root / "link_loop_a.jpg")
    os.symlink(root / "link_loop_a.jpg", root / "link_loop_b.jpg")
    os.symlink(root, root / "folder_loop")  # a folder cycle: listing must terminate
    (root / "zz_deleted.jpg").write_bytes(good)
    assert sorted(p.name for p in root.iterdir() if p.name != "folder_loop") == sorted(EXPECTED)
    return root


@pytest.fixture(scope="module")
def corpus_ranges(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("ranges") / "r"
    profile([corpus / "ok_0.jpg", corpus / "ok_1.png"], "activation-ranges", **KW)["activation-ranges"].save(
        path
    )
    return path


@pytest.mark.parametrize("decoder", DECODERS)
def test_bad_input_corpus_every_item_processed_or_recorded(corpus, corpus_ranges, tmp_path, decoder):
    src = open_source(corpus)
    assert sorted(it.id for it in src) == sorted(EXPECTED)  # the folder loop added nothing
    deleted = corpus / "zz_deleted.jpg"
    data = deleted.read_bytes()
    # First shards run, then the file goes away, then the job resumes: a file deleted mid-run.
    first = run_job(
        src, tmp_path / "job", "histogram-20", ranges=corpus_ranges, shard_size=4, max_shards=1,
        embeddings=True, decoder=decoder, **KW,
    )  # fmt: skip
    assert not first.complete
    ids = [it.id for it in src]
    assert ids.index("zz_deleted.jpg") >= 4  # not in the finished shard
    deleted.unlink()
    try:
        res = run_job(
            src, tmp_path / "job", "histogram-20", ranges=corpus_ranges, shard_size=4, embeddings=True,
            decoder=decoder, **KW,
        )  # fmt: skip
    finally:
        deleted.write_bytes(data)
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "job" / "rows").to_pylist()}
    assert list(rows) == ids
    for name, status in EXPECTED.items():
        assert rows[name]["status"] == status, (name, rows[name]["error"])
        if status == "failed":
            assert rows[name]["error"] and rows[name]["embedding"] is None
        else:
            assert rows[name]["error"] is None and np.isfinite(rows[name]["embedding"]).all()
    assert "file not found" in rows["zz_deleted.jpg"]["error"]
    assert "symbolic links" in rows["link_loop_a.jpg"]["error"]
    assert "truncated" in rows["truncated.jpg"]["error"]
    # Sizes are the stored pixels (EXIF orientation is not applied, as in vdna).
    assert (rows["exif_rotated.jpg"]["width"], rows["exif_rotated.jpg"]["height"]) == (70, 90)
    assert (rows["one_pixel.png"]["width"], rows["one_pixel.png"]["height"]) == (1, 1)
    assert (rows["very_large.jpg"]["width"], rows["very_large.jpg"]["height"]) == (6400, 4800)
    n_failed = sum(s == "failed" for s in EXPECTED.values())
    assert res.complete and res.images_in == len(EXPECTED) == res.processed + res.failed
    assert res.failed == n_failed and res.vdnas["histogram-20"].num_images == len(EXPECTED) - n_failed
    hist = res.vdnas["histogram-20"]
    for layer in hist.neurons_list:  # counts conserve: every position of every processed image binned
        sums = hist.data[layer].sum(dim=1)
        assert torch.all(sums == sums[0])
    failures = pq.read_table(tmp_path / "job" / "failures.parquet").to_pylist()
    assert sorted(f["id"] for f in failures) == sorted(k for k, v in EXPECTED.items() if v == "failed")
    summary = json.loads((tmp_path / "job" / "manifest.json").read_text())["summary"]
    assert summary == {"images_in": 17, "processed": 17 - n_failed, "failed": n_failed, "rows": 17}


@pytest.mark.skipif(not dali_available(), reason="no DALI")
def test_dali_job_agrees_with_pil_job(image_sets, corpus, corpus_ranges, tmp_path):
    common = dict(ranges=corpus_ranges, shard_size=5, embeddings=True, **KW)
    pil = run_job(image_sets["mixed"], tmp_path / "pil", "histogram-20", decoder="pil", **common)
    dali = run_job(image_sets["mixed"], tmp_path / "dali", "histogram-20", decoder="dali", **common)
    a = pq.read_table(tmp_path / "pil" / "rows").to_pylist()
    b = pq.read_table(tmp_path / "dali" / "rows").to_pylist()
    assert [(r["id"], r["status"], r["width"], r["height"]) for r in a] == [
        (r["id"], r["status"], r["width"], r["height"]) for r in b
    ]
    for ra, rb in zip(a, b):
        if ra["status"] == "ok":
            ea, eb = np.asarray(ra["embedding"]), np.asarray(rb["embedding"])
            cos = ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb)
            assert cos > 0.999, (ra["id"], cos)
    ha, hb = pil.vdnas["histogram-20"], dali.vdnas["histogram-20"]
    for layer in ha.neurons_list:
        x, y = ha.data[layer].double(), hb.data[layer].double()
        assert torch.equal(x.sum(1), y.sum(1))
        moved = (x - y).abs().sum() / (2 * x.sum())
        assert moved < 0.02, (layer, float(moved))  # under 2% of the counts change bins
    assert dali.vdnas["histogram-20"].meta["decoder"] == "dali"
    assert (
        json.loads((tmp_path / "dali" / "histogram-20.json").read_text())["neuroprint"]["decoder"] == "dali"
    )
    # The decoder is a setting: resuming with the other one is refused.
    with pytest.raises(JobError, match="decoder"):
        run_job(image_sets["mixed"], tmp_path / "dali", "histogram-20", decoder="pil", **common)


def test_unknown_decoder_is_an_error(image_sets, tmp_path):
    with pytest.raises(ValueError, match="unknown decoder"):
        run_job(image_sets["good"], tmp_path / "j", "histogram-20", decoder="cv2", **KW)


def test_cli_max_shards_then_resume_from_elsewhere(image_sets, corpus_ranges, tmp_path, capsys, monkeypatch):
    out = tmp_path / "job"
    monkeypatch.chdir(image_sets["root"])  # relative SOURCE and --ranges
    ranges = os.path.relpath(corpus_ranges, image_sets["root"])
    argv = ["profile", "mixed", "--out-dir", str(out), "--extractor", TINY, "--weights", "random"]
    argv += ["-d", "histogram-20", "--ranges", ranges, "--shard-size", "4", "--batch-size", "3", "-q"]
    assert main(argv + ["--device", "cpu", "--max-shards", "2"]) == 0
    said = capsys.readouterr().out
    assert "incomplete: 8 of 13 images done" in said and "--resume" in said
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "--resume", "--out-dir", str(out), "--device", "cpu", "-q"]) == 0
    said = capsys.readouterr().out
    assert "13 images in = 9 processed + 4 failed (2 of 4 shards computed now)" in said
    clean = tmp_path / "clean"
    monkeypatch.chdir(image_sets["root"])
    assert main(argv + ["--device", "cpu"] + ["--out-dir", str(clean)]) == 0
    for name in ("histogram-20.npz",):
        with np.load(out / name, allow_pickle=False) as x, np.load(clean / name, allow_pickle=False) as y:
            assert all(np.array_equal(x[k], y[k]) for k in x.files)
    assert pq.read_table(out / "rows").equals(pq.read_table(clean / "rows"))


def test_cli_resume_errors(image_sets, tmp_path, capsys):
    cases = [
        (["--resume", "--out-dir", str(tmp_path / "none")], "nothing to resume"),
        (["--resume", "-o", str(tmp_path / "x")], "give its --out-dir"),
        (["--out-dir", str(tmp_path / "y")], "give a SOURCE"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exc:
            main(["profile", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_rows_read_by_pandas_duckdb_polars(image_sets, corpus_ranges, tmp_path):
    run_job(
        image_sets["mixed"], tmp_path / "job", "histogram-20", ranges=corpus_ranges, shard_size=5,
        embeddings=True, **KW,
    )  # fmt: skip
    rows_glob = str(tmp_path / "job" / "rows" / "*.parquet")
    n = len(open_source(image_sets["mixed"]))

    pd = pytest.importorskip("pandas")
    df = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "job" / "rows").glob("*.parquet"))])
    assert len(df) == n and df["id"].is_unique and set(df["status"]) == {"ok", "failed"}
    assert df.loc[df.status == "ok", "embedding"].map(len).eq(96).all()

    duckdb = pytest.importorskip("duckdb")
    got = (
        duckdb.connect()
        .execute(
            f"select count(*), count(distinct id), sum(status = 'failed'), max(len(embedding)) "
            f"from read_parquet('{rows_glob}')"
        )
        .fetchone()
    )
    assert got == (n, n, 4, 96)

    pl = pytest.importorskip("polars")
    frame = pl.read_parquet(rows_glob)
    assert frame.height == n and frame["embedding"].dtype == pl.Array(pl.Float32, 96)
    fails = pl.read_parquet(tmp_path / "job" / "failures.parquet")
    assert fails.height == 4 and fails["error"].null_count() == 0


def test_job_hashes_feed_dedup_and_equal_the_signature_pass(image_sets, corpus_ranges, tmp_path):
    from neuroprint.dedup import compute_signatures, find_duplicates

    good = image_sets["good"]
    # A re-encoded copy of one image: a near-duplicate the hashes must pair.
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(good.iterdir()):
        (src / p.name).write_bytes(p.read_bytes())
    Image.open(good / "good_00.JPG").save(src / "zz_copy.jpg", quality=70)
    res = run_job(
        src, tmp_path / "job", "histogram-20", ranges=corpus_ranges, shard_size=3, embeddings=True,
        hashes=["phash", "dhash"], **KW,
    )  # fmt: skip
    rows = pq.read_table(tmp_path / "job" / "rows").to_pylist()
    sig = compute_signatures(src, ["phash", "dhash"], device="cpu", progress=False)
    assert [r["id"] for r in rows] == sig.ids
    assert [r["phash"] for r in rows] == sig.phash.tolist()
    assert [r["dhash"] for r in rows] == sig.dhash.tolist()
    # Same VDNA as a job without hashes (the loader that keeps decoded images changes nothing).
    plain = run_job(src, tmp_path / "plain", "histogram-20", ranges=corpus_ranges, shard_size=3, **KW)
    for layer in plain.vdnas["histogram-20"].neurons_list:
        assert torch.equal(plain.vdnas["histogram-20"].data[layer], res.vdnas["histogram-20"].data[layer])
    out = find_duplicates(tmp_path / "job", tmp_path / "dedup", method="phash", progress=False)
    pairs = out.pairs.to_pylist()
    assert {(p["id_a"], p["id_b"]) for p in pairs} == {("good_00.JPG", "zz_copy.jpg")}
    with pytest.raises(ValueError, match="decoder='pil'"):
        run_job(src, tmp_path / "j2", "histogram-20", hashes=["phash"], decoder="dali", **KW)
