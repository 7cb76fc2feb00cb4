"""Dedup groups that do not chain, and keep="largest" preferring native resolution over upscaled copies
(the sharpness statistic, the ranking, the reasons written, through the library, a job directory and the
CLI)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageFilter
from test_dedup import jpeg, photo

from neuroprint.cli.dedup import main
from neuroprint.dedup import (
    DedupError,
    Signatures,
    connected_components,
    find_duplicates,
    keep_ranking,
    kept_groups,
)
from neuroprint.dedup.hashes import hamming_distance
from neuroprint.dedup.sharpness import UPSCALED_BELOW, sharpness


def pink(seed: int, n: int = 256) -> Image.Image:
    """A colour image with a natural 1/f amplitude spectrum (scale invariant, as photos roughly are)."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    f[0, 0] = 1.0
    chans = []
    for _ in range(3):
        z = np.fft.ifft2((rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))) / f).real
        chans.append((z - z.min()) / (z.max() - z.min()) * 255)
    return Image.fromarray(np.stack(chans, -1).round().astype(np.uint8))


def upscale(img: Image.Image, factor: float, resample=Image.BICUBIC) -> Image.Image:
    return img.resize((round(img.width * factor), round(img.height * factor)), resample)


# ----------------------------------------------------------------------------------------- sharpness


@pytest.mark.parametrize(
    "make", [lambda: photo(0), lambda: photo(1, 200, 250), lambda: pink(0), lambda: pink(1, 384)]
)
def test_sharpness_separates_native_from_upscaled(make):
    img = make()
    native = [img, img.resize((img.width * 3 // 5, img.height * 3 // 5), Image.LANCZOS), jpeg(img, 90)]
    upscaled = [upscale(img, 2.0), upscale(img, 2.0, Image.LANCZOS), upscale(img, 3.0, Image.BILINEAR)]
    for im in native:
        assert sharpness(np.asarray(im)) > UPSCALED_BELOW + 0.1
    for im in upscaled:
        assert sharpness(np.asarray(im)) < UPSCALED_BELOW
    assert sharpness(np.asarray(img.filter(ImageFilter.GaussianBlur(1)))) < UPSCALED_BELOW  # blurred too
    # PIL image, RGB array and gray array: the same statistic (gray by the same luma weights).
    assert sharpness(img) == sharpness(np.asarray(img))
    assert np.isfinite(sharpness(np.asarray(img.convert("L"))))


def test_sharpness_unknown_for_tiny_and_flat_images():
    assert np.isnan(sharpness(np.zeros((40, 500, 3), np.uint8) + 7))  # too small on one side
    assert np.isnan(sharpness(np.full((200, 200, 3), 128, np.uint8)))  # no contrast
    with pytest.raises(ValueError, match="HxW"):
        sharpness(np.zeros(10, np.uint8))


# ---------------------------------------------------------------------------------- grouping, no chain


def chain_signatures() -> Signatures:
    """A - B - C by pHash: A to B and B to C 6 bits apart, A to C 12 (more than the 10 allowed)."""
    phash = np.array([0, (1 << 6) - 1, (1 << 12) - 1, 0x7F0F0F0F0F0F0F0F], np.int64)
    n = len(phash)
    return Signatures(
        ids=["A", "B", "C", "far"],
        uris=["a", "b", "c", "far"],
        widths=np.full(n, 64),
        heights=np.full(n, 64),
        phash=phash,
    )


def test_groups_do_not_chain_by_default():
    sig = chain_signatures()
    res = find_duplicates(None, None, method="phash", keep="first", signatures=sig, max_distance=10)
    assert res.groups.column("members").to_pylist() == [["A", "B"]]
    keep = {r["id"]: r for r in res.keep.to_pylist()}
    assert [keep[i]["keep"] for i in "ABC"] == [True, False, True]
    assert keep["B"]["reason"] == "duplicate of A"
    assert keep["C"]["group"] is None and "not within the threshold of any kept image" in keep["C"]["reason"]
    assert keep["far"]["reason"] == "unique"
    assert res.settings["grouping"] == "kept" and res.num_duplicates == 1
    # The connected components are still there on request: A, B and C in one group, C dropped for A.
    comp = find_duplicates(None, None, method="phash", keep="first", signatures=sig, grouping="components")
    assert comp.groups.column("members").to_pylist() == [["A", "B", "C"]]
    assert comp.num_duplicates == 2 and comp.settings["grouping"] == "components"
    with pytest.raises(DedupError, match="unknown grouping"):
        find_duplicates(None, None, method="phash", signatures=sig, grouping="chains")


def test_kept_grouping_invariants_on_planted_clusters():
    """On clustered random hashes: every dropped image is within the threshold of its own kept image,
    no two kept images of one component are paired, and components are the union-find ones."""
    rng = np.random.default_rng(5)
    centres = rng.integers(0, 2**62, size=40, dtype=np.int64)
    members = []
    for c in centres:
        for _ in range(int(rng.integers(1, 7))):
            flips = rng.choice(64, size=int(rng.integers(0, 9)), replace=False)
            members.append(int(c) ^ int(sum(1 << int(f) for f in flips if f < 63)))
    phash = np.asarray(members, np.int64)
    n = len(phash)
    sig = Signatures(
        ids=[f"i{k:03d}" for k in range(n)],
        uris=[str(k) for k in range(n)],
        widths=rng.integers(50, 400, n),
        heights=rng.integers(50, 400, n),
        phash=phash,
    )
    res = find_duplicates(None, None, method="phash", keep="largest", signatures=sig, max_distance=6)
    comp = find_duplicates(
        None, None, method="phash", keep="largest", signatures=sig, max_distance=6, grouping="components"
    )
    pos = {i: k for k, i in enumerate(sig.ids)}
    t = torch.as_tensor(phash)
    dist = hamming_distance(t[:, None], t[None, :]).numpy()
    keep = res.keep.to_pylist()
    assert [r["id"] for r in keep] == sig.ids  # one row per image, in order
    for kid, mem in zip(res.groups.column("keep_id").to_pylist(), res.groups.column("members").to_pylist()):
        for m in mem:
            assert dist[pos[m], pos[kid]] <= 6
    kept = [pos[r["id"]] for r in keep if r["keep"]]
    pairs = {
        (pos[a], pos[b])
        for a, b in zip(res.pairs.column("id_a").to_pylist(), res.pairs.column("id_b").to_pylist())
    }
    assert not any((a, b) in pairs or (b, a) in pairs for a in kept for b in kept if a < b)
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    root = connected_components(n, a, b)
    comp_sets = sorted(sorted(pos[m] for m in g) for g in comp.groups.column("members").to_pylist())
    expect = sorted(
        sorted(np.flatnonzero(root == r).tolist()) for r in np.unique(root) if (root == r).sum() > 1
    )
    assert comp_sets == expect
    assert res.num_duplicates <= comp.num_duplicates  # never drops more than the chained grouping
    assert len(res.keep) == len(comp.keep) == n


def test_kept_groups_follows_the_rank():
    # Star around node 2 with a tail: 2 is best ranked, so 0, 1, 3 join it and 4 (paired only with 3) stays.
    a, b = np.array([0, 1, 2, 3]), np.array([2, 2, 3, 4])
    rank = np.array([3, 2, 0, 1, 4])
    assert kept_groups(5, a, b, rank).tolist() == [2, 2, 2, 2, 4]
    # Rank 0 for node 4: it is kept first, 3 joins it, 2 is kept (3 is not kept), 0 and 1 join 2.
    assert kept_groups(5, a, b, np.array([3, 2, 1, 4, 0])).tolist() == [2, 2, 2, 4, 4]
    assert kept_groups(3, np.array([], np.int64), np.array([], np.int64), np.zeros(3)).tolist() == [0, 1, 2]


# ------------------------------------------------------------------------------- largest and native


def test_largest_ranks_upscaled_after_native():
    w, h = np.array([100, 200, 60]), np.array([100, 200, 60])
    sharp = np.array([1.1, 0.12, np.nan], np.float32)
    ranked, why = keep_ranking(np.arange(3), "largest", widths=w, heights=h, sharpness=sharp)
    assert ranked.tolist() == [0, 2, 1]  # NaN sharpness: unknown, ranks as native
    assert why[0] == "largest native resolution (100x100)"
    assert "looks upscaled or blurred (sharpness 0.12)" in why[2]
    ranked, _ = keep_ranking(np.arange(3), "largest", widths=w, heights=h)  # no sharpness: pixels only
    assert ranked.tolist() == [1, 0, 2]


@pytest.fixture(scope="module")
def upscaled_folder(tmp_path_factory):
    """Three originals with natural (1/f) spectra, each with a 2x bicubic upscale that sorts first and a
    2.5x Lanczos upscale."""
    root = tmp_path_factory.mktemp("upscaled")
    for g in range(3):
        img = pink(10 + g, 240)
        upscale(img, 2.0).save(root / f"g{g}_a_up2.png")
        upscale(img, 2.5, Image.LANCZOS).save(root / f"g{g}_b_up25.png")
        img.save(root / f"g{g}_c_native.png")
    return root


def _check_native_kept(keep_rows, groups=3):
    keep = {r["id"]: r for r in keep_rows}
    for g in range(groups):
        native = keep[f"g{g}_c_native.png"]
        assert native["keep"], native
        assert native["reason"].startswith("kept: largest native resolution (")
        assert native["reason"].endswith("preferred to 2 larger copies that look upscaled")
        for name in (f"g{g}_a_up2.png", f"g{g}_b_up25.png"):
            assert not keep[name]["keep"]
            assert keep[name]["reason"].startswith(
                f"duplicate of g{g}_c_native.png (looks upscaled or blurred"
            )


def test_largest_keeps_native_over_upscaled_copies(upscaled_folder, tmp_path):
    res = find_duplicates(upscaled_folder, tmp_path / "d", method="phash", keep="largest", progress=False)
    assert len(res.groups) == 3 and (np.asarray(res.groups.column("size")) == 3).all()
    _check_native_kept(res.keep.to_pylist())
    sig = pq.read_table(tmp_path / "d" / "signatures.parquet").to_pydict()
    s = dict(zip(sig["id"], sig["sharpness"]))
    assert s["g0_c_native.png"] > UPSCALED_BELOW > s["g0_a_up2.png"]


def test_job_directory_carries_sharpness_to_dedup(upscaled_folder, tmp_path):
    from neuroprint.dedup import compute_signatures, load_signatures
    from neuroprint.jobs import run_job

    run_job(
        upscaled_folder,
        tmp_path / "job",
        (),
        extractor=None,
        hashes=["phash"],
        shard_size=4,
        num_workers=2,
        progress=False,
    )
    loaded = load_signatures(tmp_path / "job")
    direct = compute_signatures(upscaled_folder, ["phash"], progress=False)
    assert loaded.ids == direct.ids
    np.testing.assert_allclose(loaded.sharpness, direct.sharpness, rtol=1e-6)
    assert (
        main(["dedup", str(tmp_path / "job"), "--out-dir", str(tmp_path / "d"), "--method", "phash", "-q"])
        == 0
    )
    _check_native_kept(pq.read_table(tmp_path / "d" / "keep.parquet").to_pylist())
    # The CLI's --grouping reaches the settings.
    argv = [
        "dedup",
        str(tmp_path / "job"),
        "--out-dir",
        str(tmp_path / "d2"),
        "--grouping",
        "components",
        "-q",
    ]
    assert main(argv) == 0
    assert json.loads((tmp_path / "d2" / "dedup.json").read_text())["grouping"] == "components"
