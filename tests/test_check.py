"""The nightly check (neuroprint.check): calibrated drift, planted drift and flags, duplicates against the
reference, resume, reference updates, bad input, the CLI's exit codes and the report in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY, kill_after_first_shard
from PIL import Image, ImageFilter

from neuroprint.check import CheckError, build_reference, check, parse_rule, update_reference
from neuroprint.check.quality import quality_stats
from neuroprint.cli import main

KW = dict(device="cpu", batch_size=16, num_workers=2, progress=False, shard_size=16)
REF_KW = dict(KW, extractor=TINY, weights="random", bins=32, pool_size=64)
NIGHT = 30


def _texture(rng, size=64) -> np.ndarray:
    """The reference's family: smooth colour blobs (8x8 noise upsampled) with pixel noise."""
    base = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(base).resize((size, size), Image.BILINEAR)).astype(np.float32)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


def _stripes(rng, size=64) -> np.ndarray:
    """Another texture family: oriented stripes."""
    y, x = np.mgrid[:size, :size]
    a = rng.uniform(0, np.pi)
    f = rng.uniform(0.3, 0.8)
    s = np.sin(f * (np.cos(a) * x + np.sin(a) * y))
    col = rng.integers(0, 256, 3)
    return np.clip(128 + s[..., None] * (col - 128)[None, None, :], 0, 255).astype(np.uint8)


def _save(folder, name, arr):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(folder / name)


def _night(folder, seed, n=NIGHT):
    rng = np.random.default_rng(seed)
    for i in range(n):
        _save(folder, f"n{seed}_{i:03d}.png", _texture(rng))
    return folder


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    rng = np.random.default_rng(0)
    for i in range(96):
        _save(root / "ref_src", f"r{i:03d}.png", _texture(rng))
    build_reference(root / "ref_src", root / "REF", **REF_KW)
    return root / "REF"


def _rows(out):
    return pq.read_table(out / "flags.parquet").to_pylist()


def test_quality_statistics_of_known_images():
    flat = np.full((20, 30, 3), 128, np.uint8)
    q = quality_stats(flat)
    assert q["contrast"] == 0 and q["entropy"] == 0 and q["laplacian_var"] == 0 and q["grayscale"]
    assert q["aspect_ratio"] == pytest.approx(1.5) and q["brightness"] == pytest.approx(128 / 255, abs=1e-3)
    white = quality_stats(np.full((8, 8, 3), 255, np.uint8))
    assert white["brightness"] == pytest.approx(1.0, abs=1e-4) and white["light_clip"] == 1.0
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    qn = quality_stats(noise)
    blurred = np.asarray(Image.fromarray(noise).filter(ImageFilter.GaussianBlur(2)))
    assert quality_stats(blurred)["laplacian_var"] < qn["laplacian_var"] / 10
    assert not qn["grayscale"] and qn["entropy"] > 7.5 and qn["saturation"] > 0.3
    gray = np.repeat(noise[..., :1], 3, axis=2)
    assert quality_stats(gray)["grayscale"] and quality_stats(gray)["saturation"] == 0
    with pytest.raises(ValueError):
        quality_stats(noise[..., 0])


def test_rules_parse_and_refuse_bad_forms():
    assert parse_rule("drift:p<0.01") == {
        "rule": "drift:p<0.01",
        "name": "drift:p",
        "op": "<",
        "value": 0.01,
        "percent": False,
    }
    assert parse_rule(" dark > 2% ")["percent"]
    for bad in ("drift:p<<1", "darkness>2%", "dark>x", ""):
        with pytest.raises(CheckError, match="NAME OP VALUE"):
            parse_rule(bad)
    with pytest.raises(CheckError, match="takes a value"):
        parse_rule("drift:p<1%")


def test_no_drift_nights_pass_at_the_calibrated_rate(ref, tmp_path):
    """20 nights from the reference's generator: at most 1 flagged at p < 0.01; the null is at the night's size."""
    ps = []
    for seed in range(100, 120):
        res = check(
            _night(tmp_path / f"src{seed}", seed),
            ref,
            tmp_path / f"night{seed}",
            resamples=199,
            report=False,
            **KW,
        )
        assert res.drift["n"] == NIGHT and res.drift["N"] == 96
        ps.append(res.drift["p"])
    flagged = sum(p < 0.01 for p in ps)
    print(
        f"no-drift false-positive rate at p < 0.01: {flagged}/20 = {flagged / 20:.2f}; p-values {np.round(ps, 3).tolist()}"
    )
    assert flagged <= 1
    # a null for another night size: 10 images spread more than 30 (the EMD of a smaller sample is larger)
    small = check(
        _night(tmp_path / "small", 200, n=10),
        ref,
        tmp_path / "small_night",
        resamples=199,
        report=False,
        **KW,
    )
    assert small.drift["n"] == 10
    big = check(
        _night(tmp_path / "big", 201, n=40), ref, tmp_path / "big_night", resamples=199, report=False, **KW
    )
    assert small.drift["emd_null"]["median"] > 1.3 * big.drift["emd_null"]["median"]


def _planted(folder, seed):
    """A night of 30: 21 from the reference's family, 9 changed (3 darkened, 3 blurred, 3 stripes)."""
    rng = np.random.default_rng(seed)
    changed = []
    for i in range(NIGHT):
        img = _texture(rng)
        name = f"p_{i:03d}.png"
        if i % 10 in (1, 4, 7):
            kind = ("dark", "blur", "stripes")[(i // 10)]
            if kind == "dark":
                img = (img * 0.25).astype(np.uint8)
            elif kind == "blur":
                img = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(3)))
            else:
                img = _stripes(rng)
            changed.append(name)
        _save(folder, name, img)
    return folder, changed


def test_planted_drift_is_flagged_and_its_images_lead_the_lists(ref, tmp_path):
    src, changed = _planted(tmp_path / "planted", 7)
    res = check(src, ref, tmp_path / "night", resamples=199, report=False, **KW)
    assert res.drift["p"] < 0.01 and res.verdict == "fail" and res.exit_code == 1
    rows = [r for r in _rows(tmp_path / "night") if r["status"] == "ok"]
    k = len(changed)
    by_outlier = [r["id"] for r in sorted(rows, key=lambda r: r["outlier_rank"])][:k]
    by_driving = [r["id"] for r in sorted(rows, key=lambda r: -r["driving_score"])][:k]
    p_out = len(set(by_outlier) & set(changed)) / k
    p_drv = len(set(by_driving) & set(changed)) / k
    assert [d["id"] for d in res.driving][:k] == by_driving
    # one neuron answers to some of the changes (darkening, blur or the other texture), not all of them
    top3 = [len({d["id"] for d in t["driving"][:3]} & set(changed)) / 3 for t in res.top_neurons]
    print(
        f"planted drift: p={res.drift['p']:.4f}; precision@{k}: outliers {p_out:.2f}, driving images {p_drv:.2f}; "
        f"precision@3 of each top neuron's driving images {np.round(top3, 2).tolist()}"
    )
    assert p_out >= 0.8 and p_drv >= 0.8 and np.mean(top3) >= 0.8


PLANTED = {
    "dark.png": "dark",
    "blurry.png": "blurry",
    "gray.png": "grayscale",
    "tiny.png": "odd_size",
    "wide.png": "odd_aspect_ratio",
}


def _quality_night(src, ref):
    """20 normal images and one of each planted problem, a within-night duplicate, a re-encoded copy of a
    reference image and a broken file."""
    rng = np.random.default_rng(11)
    for i in range(20):
        _save(src, f"ok_{i:02d}.png", _texture(rng))
    base = _texture(rng)
    _save(src, "dark.png", (base * 0.15).astype(np.uint8))
    _save(src, "blurry.png", np.asarray(Image.fromarray(_texture(rng)).filter(ImageFilter.GaussianBlur(4))))
    _save(src, "gray.png", np.repeat(_texture(rng)[..., 1:2], 3, axis=2))
    _save(src, "tiny.png", _texture(rng, size=64)[:8, :8])
    _save(src, "wide.png", np.asarray(Image.fromarray(_texture(rng)).resize((160, 40))))
    dup = _texture(rng)
    _save(src, "dup_a.png", dup)
    _save(src, "dup_b.png", dup)
    ref_img = np.asarray(Image.open(ref / ".." / "ref_src" / "r005.png").convert("RGB"))
    _save(src, "copy_of_ref.jpg", ref_img)  # re-encoded as JPEG: a near, not exact, copy
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return src


def test_planted_quality_problems_get_their_flags(ref, tmp_path):
    src = _quality_night(tmp_path / "night", ref)
    res = check(
        src,
        ref,
        tmp_path / "out",
        resamples=99,
        report=False,
        fail_on=["dark>0", "duplicates_reference>0"],
        **KW,
    )
    rows = {r["id"]: r for r in _rows(tmp_path / "out")}
    assert "dark" in rows["dark.png"]["flags"]
    assert "blurry" in rows["blurry.png"]["flags"]
    assert "grayscale" in rows["gray.png"]["flags"]
    assert "odd_size" in rows["tiny.png"]["flags"]
    assert "odd_aspect_ratio" in rows["wide.png"]["flags"]
    assert rows["dup_b.png"]["duplicate_of"] == "dup_a.png" and "duplicate" in rows["dup_b.png"]["flags"]
    assert rows["copy_of_ref.jpg"]["duplicate_of_reference"] == "r005.png"
    assert rows["broken.png"]["status"] == "failed" and rows["broken.png"]["error"]
    ok = [r for r in rows.values() if r["status"] == "ok" and r["id"].startswith("ok_")]
    assert sum("dark" in r["flags"] for r in ok) <= 1  # the percentile threshold spares the normal images
    c = res.counts
    assert c["images_in"] == len(rows) == c["processed"] + c["failed"] and c["failed"] == 1
    assert c["duplicates"] == 1 and c["duplicates_reference"] == 1 and c["flags"]["grayscale"] >= 1
    assert res.verdict == "fail" and [r["fails"] for r in res.rules] == [True, True]


CLEANVISION_TYPES = (
    "dark",
    "light",
    "blurry",
    "low_information",
    "grayscale",
    "odd_aspect_ratio",
    "odd_size",
)


def test_quality_flags_side_by_side_with_cleanvision(ref, tmp_path):
    """Our reference-calibrated flags and cleanvision's fixed thresholds on the same images: a table per
    issue type; both must find the planted problems of the types both have."""
    cleanvision = pytest.importorskip("cleanvision")
    src = _quality_night(tmp_path / "night", ref)
    (src / "broken.png").unlink()  # cleanvision is given readable files only; ours records broken ones
    check(src, ref, tmp_path / "out", resamples=99, report=False, **KW)
    ours = {r["id"]: set(r["flags"] or ()) for r in _rows(tmp_path / "out")}
    lab = cleanvision.Imagelab(data_path=str(src))
    lab.find_issues({t: {} for t in CLEANVISION_TYPES}, verbose=False)
    theirs = {
        os.path.basename(p): {t for t in CLEANVISION_TYPES if row[f"is_{t}_issue"]}
        for p, row in lab.issues.iterrows()
    }
    assert set(theirs) == set(ours)
    lines = [f"{'issue type':18s} both  ours-only  cleanvision-only  neither  agreement"]
    for t in CLEANVISION_TYPES:
        a = {i for i in ours if t in ours[i]}
        b = {i for i in theirs if t in theirs[i]}
        n = len(ours)
        lines.append(
            f"{t:18s} {len(a & b):4d}  {len(a - b):9d}  {len(b - a):16d}  {n - len(a | b):7d}  {(n - len(a ^ b)) / n:9.2f}"
        )
    print(f"\ncleanvision 0.3.7 vs neuroprint check on {len(ours)} images\n" + "\n".join(lines))
    for name, flag in PLANTED.items():
        assert flag in ours[name], (name, ours[name])
    print("planted:", {name: sorted(theirs[name]) for name in PLANTED})
    # where cleanvision's fixed thresholds see the planted problem too, we agree on it (its grayscale
    # reads the PNG's mode, RGB here, and its blur score does not fire on 64-pixel images)
    for name in ("dark.png", "tiny.png", "wide.png"):
        assert PLANTED[name] in theirs[name], (name, theirs[name])


def _strip(summary: dict) -> dict:
    s = json.loads(json.dumps(summary))
    s.pop("created"), s.pop("out_dir")
    return s


def test_resume_after_a_partial_check_equals_a_clean_check(ref, tmp_path):
    src = _night(tmp_path / "src", 300, n=40)
    clean = check(src, ref, tmp_path / "clean", resamples=99, report=False, **KW)
    assert check(src, ref, tmp_path / "night", resamples=99, report=False, max_shards=1, **KW) is None
    assert not (tmp_path / "night" / "summary.json").exists()
    resumed = check(src, ref, tmp_path / "night", resamples=99, report=False, **KW)
    assert _strip(resumed.to_dict()) == _strip(clean.to_dict())
    a, b = (
        pq.read_table(tmp_path / "clean" / "flags.parquet"),
        pq.read_table(tmp_path / "night" / "flags.parquet"),
    )
    assert a.equals(b)


def test_update_reference_merges_once(ref, tmp_path):
    mine = tmp_path / "REF"
    shutil.copytree(ref, mine)
    before = json.loads((mine / "reference.json").read_text())
    res = check(
        _night(tmp_path / "src", 400), mine, tmp_path / "night", resamples=99, report=False, update=True, **KW
    )
    assert res.verdict == "pass"
    after = json.loads((mine / "reference.json").read_text())
    assert after["images"] == before["images"] + NIGHT and len(after["nights"]) == 1
    assert after["state"] != before["state"] and not (mine / before["state"]).exists()
    from neuroprint.check import Reference

    r = Reference.open(mine)
    assert r.vdna(r.hist_name).num_images == before["images"] + NIGHT
    assert r.images().num_rows == before["images"] + NIGHT
    assert r.pool()["ids"].size == 64  # the pool keeps its size: the smallest sha256 ids of both sets
    with pytest.raises(CheckError, match="already merged"):
        update_reference(mine, tmp_path / "night")
    assert json.loads((mine / "reference.json").read_text()) == after  # nothing changed


def test_bad_references_nights_and_histories_are_one_clear_error(ref, tmp_path):
    night = _night(tmp_path / "src", 500, n=8)
    with pytest.raises(CheckError, match="does not exist"):
        check(night, tmp_path / "nope", tmp_path / "o1", **KW)
    half = tmp_path / "half"
    shutil.copytree(ref, half)
    (half / "reference.json").unlink()
    with pytest.raises(CheckError, match="not a finished check reference"):
        check(night, half, tmp_path / "o2", **KW)
    altered = tmp_path / "altered"
    shutil.copytree(ref, altered)
    meta = json.loads((altered / "reference.json").read_text())
    (altered / meta["state"] / "pool.npz").write_bytes(b"garbage")
    with pytest.raises(CheckError, match="pool.npz"):
        check(night, altered, tmp_path / "o3", **KW)
    with pytest.raises(CheckError, match="extractor"):
        check(night, ref, tmp_path / "o4", extractor="timm:resnet18", **KW)
    with pytest.raises(CheckError, match="weights"):
        check(night, ref, tmp_path / "o5", weights="default", **KW)
    hist = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1]}), hist)
    raw = hist.read_bytes()
    with pytest.raises(CheckError, match="another schema"):
        check(night, ref, tmp_path / "o6", history=hist, **KW)
    assert hist.read_bytes() == raw and not (tmp_path / "o6").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="(?i)no image|empty"):
        check(tmp_path / "empty", ref, tmp_path / "o7", **KW)


def _cli(*args) -> int:
    return main(
        ["check", *map(str, args), "--device", "cpu", "--batch-size", "16", "--num-workers", "2", "-q"]
    )


def test_cli_exit_codes_history_and_report(ref, tmp_path, capsys):
    hist = tmp_path / "history.parquet"
    ok = _night(tmp_path / "ok", 600)
    assert (
        _cli(ok, "--reference", ref, "--out-dir", tmp_path / "n1", "--history", hist, "--resamples", "99")
        == 0
    )
    src, _ = _planted(tmp_path / "bad", 8)
    code = _cli(
        src,
        "--reference",
        ref,
        "--out-dir",
        tmp_path / "n2",
        "--history",
        hist,
        "--resamples",
        "99",
        "--fail-on",
        "dark>2%",
    )
    assert code == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "rule dark>2% fails" in out
    table = pq.read_table(hist).to_pylist()
    assert [r["verdict"] for r in table] == ["pass", "fail"] and table[1]["dark"] >= 3
    # the same night again replaces its row
    assert (
        _cli(ok, "--reference", ref, "--out-dir", tmp_path / "n1", "--history", hist, "--resamples", "99")
        == 0
    )
    assert len(pq.read_table(hist)) == 2
    assert (tmp_path / "n2" / "report.html").stat().st_size > 10_000
    assert _cli(ok, "--reference", ref, "--out-dir", tmp_path / "n3", "--fail-on", "dork>1") == 2
    assert _cli(ok, "--out-dir", tmp_path / "n4") == 2
    assert _cli(tmp_path / "missing", "--reference", ref, "--out-dir", tmp_path / "n5") == 2
    err = capsys.readouterr().err
    assert err.count("neuroprint check: error:") == 3 and "Traceback" not in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_opens_in_headless_chromium_and_shows_the_summary(ref, tmp_path):
    import html.parser

    src, _ = _planted(tmp_path / "night_src", 9)
    hist = tmp_path / "h.parquet"
    check(_night(tmp_path / "prev", 700), ref, tmp_path / "prev_night", history=hist, resamples=99, **KW)
    res = check(src, ref, tmp_path / "night", history=hist, resamples=99, **KW)
    page = tmp_path / "night" / "report.html"
    body = page.read_text()
    # self-contained: nothing to fetch (images are data: URIs, no scripts or styles from elsewhere)
    assert not re.search(r"(src|href)=[\"']?(https?:|//)|url\(\s*['\"]?https?:|@import", body)
    run = subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'ud'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    dom = run.stdout

    class Grab(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.values, self.images = {}, None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "body":
                self.images = a.get("data-images")
            if "data-k" in a:
                self.values.setdefault(a["data-k"], a["data-v"])

    g = Grab()
    g.feed(dom)
    loaded, total = map(int, g.images.split("/"))
    assert total > 20 and loaded == total  # every thumbnail decoded
    assert dom.count("<svg") >= 4  # drift bars (EMD, FD), neuron histograms, trend
    s = json.loads((tmp_path / "night" / "summary.json").read_text())

    def get(key):
        v = s
        for part in key.split("."):
            v = v[int(part)] if isinstance(v, list) else v[part]
        return v

    assert len(g.values) > 30
    for key, shown in g.values.items():
        want = get(key)
        if isinstance(want, str):
            assert shown == want, key
        else:
            assert float(shown) == pytest.approx(want, rel=1e-12), key
    assert g.values["verdict"] == res.verdict == "fail"
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={tmp_path / 'ud2'}",
            "--window-size=1280,2400",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 10_000


def test_sigkill_mid_check_then_rerun_gives_the_same_summary_and_rows(ref, tmp_path):
    import sys

    src = _night(tmp_path / "src", 800, n=24)
    exe = os.path.join(os.path.dirname(sys.executable), "neuroprint")
    env = {**os.environ, "TORCHDYNAMO_DISABLE": "1"}

    def args(out):
        return [exe, "check", str(src), "--reference", str(ref), "--out-dir", str(out), "--resamples", "99",
                "--device", "cpu", "--batch-size", "2", "--shard-size", "2", "--no-report", "-q"]  # fmt: skip

    clean = subprocess.run(args(tmp_path / "clean"), env=env, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    state = kill_after_first_shard(args(tmp_path / "night"), env, tmp_path / "night" / "manifest.json")
    assert not state["complete"] and 0 < len(state["finished"]) < 12, "the kill came too late to test a crash"
    assert not (tmp_path / "night" / "summary.json").exists()
    done = subprocess.run(args(tmp_path / "night"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = json.loads((tmp_path / "clean" / "summary.json").read_text())
    b = json.loads((tmp_path / "night" / "summary.json").read_text())
    assert _strip(a) == _strip(b)
    assert pq.read_table(tmp_path / "clean" / "flags.parquet").equals(
        pq.read_table(tmp_path / "night" / "flags.parquet")
    )


def test_the_checks_per_image_emd_equals_score_images(ref, tmp_path):
    """emd:reference comes from each image's own histograms in the check; the same numbers as the
    References part (neuroprint.score_images' kernel) on the same features."""
    from neuroprint.check import Reference
    from neuroprint.check.drift import NeuronPool
    from neuroprint.jobs import run_job

    r = Reference.open(ref)
    hist = r.vdna(r.hist_name)
    src = _night(tmp_path / "src", 900, n=10)
    part = NeuronPool(
        [], means="all", bins=32, file="n.npz", reference={k: hist.data[k].numpy() for k in r.meta["layers"]}
    )
    job = dict(KW, extractor=TINY, weights="random", ranges=ref / "ranges.json", decoder="pil")
    run_job(src, tmp_path / "a", [r.hist_name], parts=[part], **job)
    run_job(src, tmp_path / "b", [r.hist_name], references={"reference": hist}, **job)
    a = pq.read_table(tmp_path / "a" / "rows").column("emd:reference").to_numpy()
    b = pq.read_table(tmp_path / "b" / "rows").column("emd:reference").to_numpy()
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("layout", ["channels", "tokens"])
def test_batched_per_image_histograms_equal_one_call_per_image(layout):
    import torch

    from neuroprint.check.drift import NeuronPool
    from neuroprint.kernels.histogram import neuron_histogram, norm_params

    g = torch.Generator().manual_seed(0)
    b, c, p = 5, 7, 33
    if layout == "channels":  # a CNN map [B, C, H, W] seen as [B, P, C]
        x = torch.randn(b, c, 3, 11, generator=g).flatten(2).transpose(1, 2)
    else:
        x = torch.randn(b, p, c, generator=g)
    part = NeuronPool([], means="all", bins=9)
    part._layers = {"l": c}
    mean, std = norm_params(np.full(c, -2.0), np.full(c, 2.5))
    part._params = {"l": (mean, std)}
    got = part._histograms({"l": x}, [0, 2, 3, 4, 1])
    for r, i in enumerate([0, 2, 3, 4, 1]):
        assert torch.equal(got[r], neuron_histogram(x[i : i + 1], mean, std, 9))


def test_fd_null_from_the_gram_matrix_equals_the_covariance_route():
    """The FD null's two routes against a direct reference (tr sqrt(S_a S_b) as the singular values of
    A B^T formed from the rows, no Gram matrix, no squared spectrum): `_fd_batched` on d x d covariances
    agrees to float64 rounding where they have full rank; `_fd_gram` (P x P work) agrees within the
    square-root floor of the zero eigenvalue it carries (sqrt(eps) of the largest singular value), where
    the d x d route cannot (k < d distinct rows: rank-deficient covariances); `_fd_null` picks either."""
    from neuroprint.check.drift import _fd_batched, _fd_gram, _fd_null, _gaussian

    def direct(wa, wb, x):
        out = []
        for a, b in zip(wa, wb):
            na, nb = a.sum(), b.sum()
            mua, mub = (a @ x) / na, (b @ x) / nb
            A = torch.sqrt(a / (na - 1))[:, None] * (x - mua)
            B = torch.sqrt(b / (nb - 1))[:, None] * (x - mub)
            nuc = torch.linalg.svdvals(A @ B.T).sum()
            out.append(((mua - mub) ** 2).sum() + (A * A).sum() + (B * B).sum() - 2 * nuc)
        return torch.stack(out)

    g = np.random.default_rng(0)
    cases = ((64, 16, 200, 90), (50, 4, 100, 1000), (40, 39, 40, 41), (64, 300, 30, 2560), (64, 512, 20, 640))
    for P, d, n, N in cases:
        x = torch.as_tensor(g.normal(size=(P, d)) * 3 + 5)
        x = x - x.mean(0)
        wa = torch.as_tensor(g.multinomial(n, np.full(P, 1 / P), size=5), dtype=torch.float64)
        wb = torch.as_tensor(g.multinomial(N, np.full(P, 1 / P), size=5), dtype=torch.float64)
        want = direct(wa, wb, x)
        scale = float(want.abs().max())
        k = int((wa > 0).sum(1).max())
        gram = _fd_gram(wa, wb, x @ x.T)
        # where _fd_null uses it (k < d) the floor is about 1e-9 here; with k > d, M M^T squares a
        # rank-deficient matrix's spectrum (measured up to 1e-6: the other route serves there)
        torch.testing.assert_close(gram, want, rtol=0, atol=(1e-7 if k < d else 1e-5) * scale)
        if k > d:  # full-rank covariances: the d x d route is exact to rounding
            cov = _fd_batched(*_gaussian(wa, x), *_gaussian(wb, x))
            torch.testing.assert_close(cov, want, rtol=0, atol=1e-9 * scale)
        torch.testing.assert_close(_fd_null(wa, wb, x, x @ x.T), want, rtol=0, atol=1e-7 * scale)
    same = _fd_gram(wa, wa, x @ x.T)  # identical samples (k = 20 < d): distance zero to the floor
    assert float(same.abs().max()) <= 1e-7 * scale


def test_hashes_part_without_sharpness_keeps_the_hashes_and_earlier_settings():
    from neuroprint.jobs.builtin import Hashes

    img = np.asarray(Image.fromarray(np.random.default_rng(2).integers(0, 256, (48, 64, 3), np.uint8)))
    full, lean = Hashes(("phash", "dhash")), Hashes(("phash", "dhash"), sharpness=False)
    assert full.settings() == {"hashes": ["phash", "dhash"]}  # the settings (and digests) of earlier jobs
    assert lean.settings() == {"hashes": ["phash", "dhash"], "sharpness": False}
    from neuroprint.dedup.hashes import image_hashes

    class Batch:  # what the loader hands the part: each image's per_image values
        per_image = {"hashes": [full.per_image(img), full.per_image(img[::-1].copy())]}

    a, b = full.columns(Batch, None), lean.columns(Batch, None)
    want = image_hashes([img, img[::-1].copy()])
    assert a["phash"] == want["phash"].tolist() and a["dhash"] == want["dhash"].tolist()
    assert b == {"phash": a["phash"], "dhash": a["dhash"]} and len(a["sharpness"]) == 2
    assert [f[0] for f in lean.fields()] == ["phash", "dhash"]
    assert [f[0] for f in full.fields()] == ["phash", "dhash", "sharpness"]


def test_reference_with_embeddings_finds_copies_by_cosine_too(tmp_path, capsys):
    """A reference built with embeddings: the night computes them as well; an exact copy of a reference
    image matches by pHash and by cosine (1.0); a shifted copy whose pHash moves beyond --dup-distance 0 is
    still found by its embedding; within the night, a shifted pair groups by cosine. The threshold sits
    between the copies' cosines and every other pair's (random weights: all embeddings are alike)."""
    import torch

    from neuroprint.kernels.cosine_topk import cosine_topk

    rng = np.random.default_rng(5)
    imgs = [_texture(rng) for _ in range(24)]
    for i, im in enumerate(imgs):
        _save(tmp_path / "src", f"r{i:02d}.png", im)
    kw = dict(REF_KW, pool_size=16)
    ref = build_reference(tmp_path / "src", tmp_path / "REF", embeddings=True, **kw)
    assert ref.meta["embeddings"] and "embedding" in ref.images().column_names

    def shifted(a):  # a 3-pixel circular shift: pHash moves 8 bits here, the pooled embedding hardly
        return np.roll(a, 3, axis=1)

    night = tmp_path / "night"
    _save(night, "a_exact.png", imgs[3])
    _save(night, "b_shifted.png", shifted(imgs[7]))
    pair = _stripes(rng)
    _save(night, "c_pair1.png", pair)
    _save(night, "c_pair2.png", shifted(pair))
    for i in range(6):
        _save(night, f"d_other{i}.png", _texture(rng))
    # the cosines these random weights give: copies against every other pair
    e_ref = torch.tensor(np.asarray(ref.images()["embedding"].to_pylist(), np.float32))
    res0 = check(
        night, tmp_path / "REF", tmp_path / "probe", dup_distance=0, dup_cosine=1.0, report=False, **KW
    )
    rows = {r["id"]: r for r in _rows(tmp_path / "probe")}
    assert rows["a_exact.png"]["reference_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert rows["a_exact.png"]["duplicate_of_reference"] == "r03.png"  # pHash distance 0
    e_night = torch.tensor(
        np.asarray(
            pq.read_table(tmp_path / "probe" / "rows", columns=["id", "embedding"])["embedding"].to_pylist(),
            np.float32,
        )
    )
    sims, _ = cosine_topk(e_night, e_ref, k=2)
    copy_cos = float(sims[1, 0])  # b_shifted.png against r07.png
    others = [float(sims[i, 0]) for i in range(4, 10)]
    assert copy_cos > max(others), (copy_cos, others)
    cut = (copy_cos + max(others)) / 2
    assert res0.settings["dup_cosine"] == 1.0
    res = check(
        night, tmp_path / "REF", tmp_path / "night_out", dup_distance=0, dup_cosine=cut, report=False, **KW
    )
    rows = {r["id"]: r for r in _rows(tmp_path / "night_out")}
    assert rows["b_shifted.png"]["duplicate_of_reference"] == "r07.png"
    assert "duplicate_of_reference" in rows["b_shifted.png"]["flags"]
    assert rows["b_shifted.png"]["reference_distance"] > 0  # the hash alone would have missed it
    assert not any(rows[f"d_other{i}.png"]["duplicate_of_reference"] for i in range(6))
    assert rows["c_pair2.png"]["duplicate_of"] == "c_pair1.png"  # within the night, by cosine alone
    assert not any(rows[f"d_other{i}.png"]["duplicate_of"] for i in range(6))
    match = {m["id"]: m for m in res.duplicates["reference"]}
    assert match["b_shifted.png"]["cosine"] == pytest.approx(copy_cos, abs=1e-5)
    assert res.counts["duplicates_reference"] == sum(bool(r["duplicate_of_reference"]) for r in rows.values())
    # --embeddings belongs to --build-reference: a usage error, exit 2
    argv = ["check", str(night), "--reference", str(tmp_path / "REF"), "--out-dir", str(tmp_path / "x")]
    assert main([*argv, "--embeddings"]) == 2
    assert "build-reference" in capsys.readouterr().err


def test_the_nights_histogram_vdna_equals_a_plain_profiles(ref, tmp_path):
    """The check bins each activation once: the night's histogram VDNA is the sum of the per-image
    histograms (NeuronPool), and equals a plain job's Distributions histogram of the same night with the
    reference's ranges, count for count (shards of 4 images: the per-shard sums merge exactly)."""
    from neuroprint import load_vdna_from_files
    from neuroprint.check import Reference
    from neuroprint.jobs import run_job

    r = Reference.open(ref)
    src = _night(tmp_path / "src", 901, n=10)
    check(src, ref, tmp_path / "night", report=False, **dict(KW, shard_size=4))
    run_job(
        src, tmp_path / "plain", [r.hist_name], extractor=TINY, weights="random", ranges=ref / "ranges.json",
        decoder="pil", **dict(KW, shard_size=4),
    )  # fmt: skip
    a = load_vdna_from_files(tmp_path / "night" / r.hist_name)
    b = load_vdna_from_files(tmp_path / "plain" / r.hist_name)
    assert a.num_images == b.num_images == 10
    assert list(a.data) == list(b.data)
    for k in a.data:
        assert torch.equal(a.data[k], b.data[k]), k
    assert (
        a.meta["ranges"]["sha256"] == b.meta["ranges"]["sha256"]
        and a.meta["extractor"] == b.meta["extractor"]
    )
    assert (tmp_path / "night" / "layer-gaussian.json").is_file()


def test_a_check_on_ray_equals_the_local_check(ref, tmp_path):
    """`check(..., ray=True)`: two actors compute the night's shards (the driver holds no model); the
    per-image columns that do not depend on the network are equal, the model's numbers agree to float32
    precision (actors run fewer torch threads), and the verdict and counts are the same."""
    pytest.importorskip("ray")
    src = _night(tmp_path / "src", 500, n=40)
    local = check(src, ref, tmp_path / "local", resamples=99, report=False, **KW)
    on_ray = check(src, ref, tmp_path / "ray", resamples=99, report=False, ray=True, num_actors=2, **KW)
    assert on_ray.verdict == local.verdict and on_ray.counts == local.counts
    a = pq.read_table(tmp_path / "local" / "flags.parquet").to_pydict()
    b = pq.read_table(tmp_path / "ray" / "flags.parquet").to_pydict()
    assert a.keys() == b.keys() and a["id"] == b["id"]
    exact = ["status", "width", "height", "brightness", "contrast", "colourfulness", "saturation",
             "laplacian_var", "entropy", "grayscale", "dark_clip", "light_clip", "duplicate_of",
             "duplicate_of_reference", "reference_distance"]  # fmt: skip
    for c in exact:
        assert a[c] == b[c], c
    for c in ("emd_reference", "outlier_score"):
        np.testing.assert_allclose(np.asarray(b[c], float), np.asarray(a[c], float), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(on_ray.drift["emd"], local.drift["emd"], rtol=1e-4)
