"""`neuroprint features` (engine/_fungi_cli.py) end to end on a tiny labelled folder, and the kNN helpers."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from neuroprint.cli import features as _fungi_cli
from neuroprint.fungi import PCA, knn_accuracy, knn_predict, labels_from_ids

pytest.importorskip("timm")
pq = pytest.importorskip("pyarrow.parquet")


def _parse(argv):
    parser = argparse.ArgumentParser(prog="neuroprint")
    sub = parser.add_subparsers(dest="command")
    _fungi_cli.add_parser(sub)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    for label, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
        (root / label).mkdir()
        for i in range(3):
            rng = np.random.default_rng(i + (10 if label == "red" else 20))
            arr = np.clip(np.array(colour) + rng.normal(0, 25, (40 + 5 * i, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / label / f"{i}.png")
    (root / "blue" / "broken.png").write_bytes(b"not an image")
    return root


def _run(src, out, *extra):
    base = [
        "features",
        str(src),
        "--out-dir",
        str(out),
        "--model",
        "vit_tiny_patch16_224",
        "--input-dim",
        "32",
    ]
    args = _parse(base + list(extra))
    return args.func(args)


def test_features_command_writes_rows_and_metadata(labelled, tmp_path):
    out = tmp_path / "out"
    extra = ["--fungi", "kl,dino", "--embeddings", "--pca", "4", "--batch-size", "3", "--mode", "fixed"]
    assert _run(labelled, out, *extra) == 0
    table = pq.read_table(out / "features.parquet").to_pylist()
    meta = json.loads((out / "features.json").read_text())
    assert len(table) == 7 and meta["ok"] == 6 and meta["errors"] == 1
    bad = [r for r in table if r["status"] == "failed"]
    assert bad[0]["id"] == "blue/broken.png" and bad[0]["fungi"] is None and bad[0]["error"]
    good = [r for r in table if r["status"] == "ok"]
    feats = np.array([r["fungi"] for r in good])
    assert feats.shape == (6, 2 * 192) and np.isfinite(feats).all()
    np.testing.assert_allclose(np.linalg.norm(feats[:, :192], axis=1), 1.0, atol=1e-5)  # KL block
    np.testing.assert_allclose(np.linalg.norm(feats[:, 192:], axis=1), 1.0, atol=1e-5)  # DINO block
    assert np.array([r["embedding"] for r in good]).shape == (6, 192)
    assert np.array([r["fungi_pca"] for r in good]).shape == (6, 4)
    assert meta["objectives"] == ["kl", "dino"] and meta["blocks"]["dino"] == [192, 384]
    assert meta["target_layer"] == "blocks.11.attn.proj" and meta["mode"] == "fixed"

    # Another batch size gives the same rows (per-image crop generators), and the saved PCA applies.
    out2 = tmp_path / "out2"
    extra2 = [
        "--fungi",
        "kl,dino",
        "--batch-size",
        "4",
        "--mode",
        "fixed",
        "--pca-from",
        str(out / "fungi_pca.npz"),
    ]
    assert _run(labelled, out2, *extra2) == 0
    table2 = {r["id"]: r for r in pq.read_table(out2 / "features.parquet").to_pylist()}
    for r in good:
        np.testing.assert_allclose(table2[r["id"]]["fungi"], r["fungi"], atol=1e-5)
        np.testing.assert_allclose(table2[r["id"]]["fungi_pca"], r["fungi_pca"], atol=1e-4)


def test_features_command_with_simclr(labelled, tmp_path):
    out = tmp_path / "simclr"
    assert (
        _run(labelled, out, "--fungi", "simclr", "--mode", "fixed", "--negatives", str(labelled / "red")) == 0
    )
    rows = pq.read_table(out / "features.parquet").to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 6 and all(len(r["fungi"]) == 192 for r in ok)


def test_cli_names_agree_with_the_library():
    from neuroprint import fungi

    assert _fungi_cli.MODES == fungi.MODES
    assert _fungi_cli.OBJECTIVES == ("kl", "dino", "simclr")


def test_unknown_objective_is_an_error(labelled, tmp_path):
    with pytest.raises(ValueError, match="valid: kl, dino, simclr"):
        _run(labelled, tmp_path / "x", "--fungi", "kl,byol")


# ---------------------------------------------------------------------------------------------- kNN


def test_knn_on_separable_clusters_and_pca_fitted_on_train():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 16)) * 4
    train_y = np.repeat(np.arange(3), 30)
    test_y = np.repeat(np.arange(3), 10)
    train = centres[train_y] + rng.normal(0, 1, (90, 16))
    test = centres[test_y] + rng.normal(0, 1, (30, 16))
    assert knn_accuracy(train, train_y, test, test_y, k=20) == 1.0
    assert knn_accuracy(train, train_y, test, test_y, k=20, pca=4) == 1.0
    # Shuffled train labels: chance level, so the accuracy above is earned.
    assert knn_accuracy(train, rng.permutation(train_y), test, test_y, k=20) < 0.7


def test_knn_votes_and_ties():
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.array(["a", "a", "b"])
    assert list(knn_predict(train, labels, np.array([[0.1, 1.0]]), k=1)) == ["b"]
    assert list(knn_predict(train, labels, np.array([[0.1, 1.0]]), k=3)) == ["a"]  # majority of 3
    # A 1-1 tie at k=2 goes to the label with the larger similarity.
    assert list(knn_predict(train[1:], labels[1:], np.array([[0.2, 1.0]]), k=2)) == ["b"]


def test_pca_matches_torch_and_round_trips(tmp_path):
    x = np.random.default_rng(1).normal(0, 1, (50, 8)) @ np.diag([5, 4, 3, 2, 1, 0.5, 0.2, 0.1])
    pca = PCA.fit(x, 3)
    z = pca.transform(x)
    # The components' spreads are the top singular values of the centred data (eigenvalues of its scatter).
    eig = np.linalg.eigvalsh((x - x.mean(0)).T @ (x - x.mean(0)))[::-1][:3]
    np.testing.assert_allclose(np.linalg.norm(z, axis=0), np.sqrt(eig), rtol=1e-8)
    pca.save(str(tmp_path / "p.npz"))
    np.testing.assert_array_equal(PCA.load(str(tmp_path / "p.npz")).transform(x), z)
    assert labels_from_ids(["cat/a.png", "dog/x/b.jpg"]) == ["cat", "dog"]
    with pytest.raises(ValueError):
        labels_from_ids(["flat.png"])


def test_dedup_reads_a_features_directory(labelled, tmp_path):
    import shutil

    from neuroprint.dedup import find_duplicates, load_signatures

    src = tmp_path / "src"
    shutil.copytree(labelled, src)
    shutil.copy(src / "red" / "0.png", src / "red" / "0_copy.png")  # an exact copy must pair
    out = tmp_path / "feats"
    assert _run(src, out, "--fungi", "kl", "--batch-size", "4") == 0
    table = pq.read_table(out / "features.parquet").to_pylist()
    sig = load_signatures(out)
    ok = [r for r in table if r["status"] == "ok"]
    assert sig.ids == [r["id"] for r in ok] and [f[0] for f in sig.failures] == ["blue/broken.png"]
    np.testing.assert_array_equal(sig.embeddings, np.asarray([r["fungi"] for r in ok], dtype=np.float32))
    res = find_duplicates(out, tmp_path / "dups", method="embedding", threshold=0.9999, progress=False)
    pairs = res.pairs.to_pylist()
    assert [(p["id_a"], p["id_b"]) for p in pairs] == [("red/0.png", "red/0_copy.png")]
    keep = {r["id"]: r["keep"] for r in pq.read_table(tmp_path / "dups" / "keep.parquet").to_pylist()}
    assert len(keep) == len(ok) and keep["red/0.png"] and not keep["red/0_copy.png"]


def test_job_fungi_column_equals_the_features_command(labelled, tmp_path):
    from neuroprint.cli import main
    from neuroprint.jobs import run_job

    out = tmp_path / "feats"
    assert _run(labelled, out, "--fungi", "kl,dino", "--batch-size", "4", "--seed", "3") == 0
    want = {r["id"]: r for r in pq.read_table(out / "features.parquet").to_pylist()}
    fungi = {"fungi": "kl,dino", "model": "vit_tiny_patch16_224", "input_dim": 32, "seed": 3}
    common = dict(extractor="timm:test_resnet", weights="random", batch_size=3, num_workers=1, device="cpu")
    res = run_job(labelled, tmp_path / "job", "gaussian", shard_size=4, fungi=fungi, progress=False, **common)
    rows = pq.read_table(tmp_path / "job" / "rows").to_pylist()
    assert res.failed == 1 and [r["id"] for r in rows] == list(want)  # both in source order
    for r in rows:
        if r["status"] == "ok":
            np.testing.assert_allclose(r["fungi"], want[r["id"]]["fungi"], rtol=0, atol=1e-6)
        else:
            assert r["fungi"] is None and want[r["id"]]["fungi"] is None
    with pytest.raises(ValueError, match="unknown FUNGI option"):
        run_job(labelled, tmp_path / "j2", "gaussian", fungi={"objective": "kl"}, progress=False, **common)
    # Through the CLI: --fungi with --out-dir.
    argv = ["profile", str(labelled), "--out-dir", str(tmp_path / "cli"), "-d", "gaussian", "-q"]
    argv += ["--extractor", "timm:test_resnet", "--weights", "random", "--device", "cpu", "--shard-size", "4"]
    argv += ["--fungi", "kl,dino", "--fungi-model", "vit_tiny_patch16_224", "--fungi-input-dim", "32"]
    assert main([*argv, "--fungi-seed", "3"]) == 0
    cli_rows = pq.read_table(tmp_path / "cli" / "rows", columns=["id", "fungi"]).to_pylist()
    assert [r["fungi"] for r in cli_rows] == [r["fungi"] for r in rows]


def test_job_fungi_on_ray_actors_equals_local(labelled, tmp_path):
    pytest.importorskip("ray")
    from neuroprint.jobs import run_job

    fungi = {"fungi": "kl", "model": "vit_tiny_patch16_224", "input_dim": 32, "seed": 1}
    common = dict(extractor="timm:test_resnet", weights="random", batch_size=2, num_workers=1, device="cpu")
    common.update(shard_size=3, fungi=fungi, progress=False)
    run_job(labelled, tmp_path / "local", "gaussian", **common)
    run_job(labelled, tmp_path / "ray", "gaussian", ray=True, num_actors=2, **common)
    a = pq.read_table(tmp_path / "local" / "rows", columns=["id", "status", "fungi"]).to_pylist()
    b = pq.read_table(tmp_path / "ray" / "rows", columns=["id", "status", "fungi"]).to_pylist()
    assert [(r["id"], r["status"]) for r in a] == [(r["id"], r["status"]) for r in b]
    # Same views and weights; float32 sums in the ViT's matmuls differ in the last bits with the actors'
    # thread count (1 each here vs 2 locally), hence a tolerance (features are unit-norm blocks).
    for x, y in zip(a, b):
        if x["fungi"] is None:
            assert y["fungi"] is None
        else:
            np.testing.assert_allclose(x["fungi"], y["fungi"], rtol=0, atol=1e-5)


def test_pca_from_moments_equals_pca_fit():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (40, 12)) @ np.diag(np.linspace(6, 0.3, 12))
    direct = PCA.fit(x, 5)
    halves = [x[:17], x[17:]]  # accumulated shard by shard
    count = sum(len(h) for h in halves)
    total = sum(h.sum(0) for h in halves)
    gram = sum(h.T @ h for h in halves)
    streamed = PCA.fit_moments(count, total, gram, 5)
    np.testing.assert_allclose(streamed.mean, direct.mean, atol=1e-12)
    np.testing.assert_allclose(streamed.components, direct.components, atol=1e-8)
    np.testing.assert_allclose(streamed.transform(x), direct.transform(x), atol=1e-8)
    with pytest.raises(ValueError, match="at least 2 rows"):
        PCA.fit_moments(1, total, gram, 2)


def test_features_run_as_a_resumable_job_and_finish_on_ray(labelled, tmp_path, capsys):
    """--max-shards stops early (no features.parquet yet); rerunning the same command resumes, here on Ray
    actors; the result equals one clean local run, rows in source order, none lost or duplicated."""
    common = ["--fungi", "kl", "--batch-size", "2", "--shard-size", "3", "--pca", "3", "-q"]
    clean = tmp_path / "clean"
    assert _run(labelled, clean, *common) == 0
    want = pq.read_table(clean / "features.parquet").to_pylist()

    out = tmp_path / "resumed"
    assert _run(labelled, out, *common, "--max-shards", "1") == 0
    assert "incomplete: 3 of 7 images done" in capsys.readouterr().err
    assert not (out / "features.parquet").exists() and len(list((out / "rows").iterdir())) == 1
    extra = ["--ray", "--num-actors", "2"] if _has_ray() else []
    assert _run(labelled, out, *common, *extra) == 0
    got = pq.read_table(out / "features.parquet").to_pylist()
    assert [(r["id"], r["status"]) for r in got] == [(r["id"], r["status"]) for r in want]
    for a, b in zip(got, want):
        if a["status"] == "ok":
            np.testing.assert_allclose(a["fungi"], b["fungi"], atol=1e-5)
            np.testing.assert_allclose(a["fungi_pca"], b["fungi_pca"], atol=1e-4)
        else:
            assert a["fungi"] is None and a["fungi_pca"] is None and a["error"]
    meta = json.loads((out / "features.json").read_text())
    assert meta["rows"] == 7 and meta["ok"] == 6 and meta["job"]["shards"] == 3
    # Other settings in the same directory are refused, not mixed in.
    from neuroprint import JobError

    with pytest.raises(JobError, match="other settings"):
        _run(labelled, out, *[c if c != "kl" else "dino" for c in common])
    with pytest.raises(ValueError, match="give one of them"):
        _run(labelled, tmp_path / "x", "--pca", "2", "--pca-from", str(clean / "fungi_pca.npz"))


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def test_signatures_only_jobs_check_their_arguments(labelled, tmp_path):
    from neuroprint.dedup.hashes import image_hashes
    from neuroprint.jobs import run_job

    res = run_job(
        labelled, tmp_path / "h", (), extractor=None, hashes=["phash"], progress=False, shard_size=4
    )
    assert res.complete and res.vdnas == {} and res.failed == 1
    rows = [r for r in pq.read_table(tmp_path / "h" / "rows").to_pylist() if r["status"] == "ok"]
    want = image_hashes([np.asarray(Image.open(labelled / r["id"]).convert("RGB")) for r in rows], ["phash"])
    assert [r["phash"] for r in rows] == want["phash"].tolist()
    with pytest.raises(ValueError, match="makes no VDNA"):
        run_job(labelled, tmp_path / "a", "gaussian", extractor=None, hashes=["phash"], progress=False)
    with pytest.raises(ValueError, match="needs hashes or fungi"):
        run_job(labelled, tmp_path / "b", (), extractor=None, progress=False)
    with pytest.raises(ValueError, match="FUNGI backbone"):
        run_job(
            labelled, tmp_path / "c", (), extractor=None, hashes=["dhash"], embeddings=True, progress=False
        )
    with pytest.raises(ValueError, match="nothing to compute"):
        run_job(labelled, tmp_path / "d", (), extractor="timm:test_resnet", weights="random", progress=False)
