"""Sources: listing, ids, order, per-item failures, Parquet tables, sharding and subsetting."""

from __future__ import annotations

import json
import os
import pickle
import random
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from neuroprint._errors import DecodeError, EmptySourceError, SourceError
from neuroprint.io.decode import ImageLoader, decode_image
from neuroprint.io.recipe import Recipe
from neuroprint.io.sources import IMAGE_EXTENSIONS, Source, open_source


def _save(path, seed: int = 0, size=(6, 5)) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    ext = path.suffix.lower()
    if ext == ".npy":
        np.save(path, arr)
    else:
        fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}.get(ext, ext[1:].upper())
        Image.fromarray(arr).save(path, fmt)
    return path.read_bytes()


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "data"
    for i, rel in enumerate(
        ["b.png", "A.PNG", "sub/c.jpg", "sub/deeper/d.JpEg", "sub/e.webp", "x.npy", "sub/f.bmp", "z.TIFF"]
    ):
        _save(root / rel, seed=i)
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "anim.gif").write_bytes(b"GIF89a")
    (root / "README").write_text("no extension")
    _save(root / ".hidden.png")
    _save(root / ".cache" / "g.png")
    return root


# ----------------------------------------------------------------------------------------------- folders


def test_folder_recursive_case_insensitive_sorted(folder):
    src = open_source(folder)
    ids = [it.id for it in src]
    assert ids == sorted(
        ["A.PNG", "b.png", "sub/c.jpg", "sub/deeper/d.JpEg", "sub/e.webp", "sub/f.bmp", "x.npy", "z.TIFF"]
    )
    assert src.kind == "folder" and len(src) == 8
    assert [it.id for it in open_source(str(folder))] == ids  # deterministic
    for item in src:
        assert os.path.isabs(item.uri) and item.uri == os.path.join(folder, *item.id.split("/"))
        assert src.read(item) == open(item.uri, "rb").read()
        assert decode_image(src.read(item)).shape == (6, 5, 3)
    assert src[2] == list(src)[2]
    json.dumps(src.describe())


def test_folder_order_matches_vdna_for_its_extensions(tmp_path):
    fem = pytest.importorskip("vdna.networks.feature_extraction_model")
    root = tmp_path / "plain"
    for i, rel in enumerate(["b.png", "a.jpg", "sub/c.jpg", "sub-x.png", "sub_y/d.png", "sub/e/f.JPEG"]):
        _save(root / rel, seed=i)
    vdna_files = fem.FeatureExtractionModel.get_files_list(
        SimpleNamespace(extraction_settings=SimpleNamespace(verbose=False, seed=0)),
        SimpleNamespace(source=str(root), num_images=-1, shuffle_files=False),
    )
    assert [it.uri for it in open_source(root)] == vdna_files


def test_folder_symlink_cycle_terminates(folder):
    os.symlink(folder, folder / "sub" / "loop")
    ids = [it.id for it in open_source(folder)]
    assert ids == [it.id for it in open_source(folder)] and len(ids) == 8  # the loop back is not followed
    os.symlink(folder / "sub" / "deeper", folder / "again")
    assert "again/d.JpEg" in [it.id for it in open_source(folder)]  # a link elsewhere is followed


def test_empty_folder_and_missing_paths(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(EmptySourceError, match="no images found in .*empty.*jpg") as info:
        open_source(tmp_path / "empty")
    assert "\n" not in str(info.value)
    with pytest.raises(SourceError, match="source not found"):
        open_source(tmp_path / "nope")
    (tmp_path / "table.csv").write_text("a,b")
    with pytest.raises(SourceError, match="cannot use .*table.csv"):
        open_source(tmp_path / "table.csv")
    with pytest.raises(SourceError, match="cannot use a int"):
        open_source(3)


def test_single_file(folder):
    src = open_source(folder / "sub" / "c.jpg")
    assert src.kind == "file" and len(src) == 1
    assert src[0].id == str(folder / "sub" / "c.jpg")
    assert decode_image(src.read(src[0])).shape == (6, 5, 3)


# -------------------------------------------------------------------------------------------- .txt lists


def test_txt_list_relative_to_list_folder(tmp_path, monkeypatch):
    imgs = tmp_path / "imgs"
    a = _save(imgs / "a.png", 1)
    b = _save(imgs / "sub" / "b.png", 2)
    c = _save(tmp_path / "elsewhere" / "c.png", 3)
    lists = tmp_path / "lists"
    lists.mkdir()
    lst = lists / "files.txt"
    lst.write_text(
        "# images for run 3\n"
        "\n"
        "../imgs/sub/b.png\n"
        "   ../imgs/a.png  \r\n"
        f"{tmp_path / 'elsewhere' / 'c.png'}\n"
        "./missing.png\n"
        "# trailing comment\n"
        "../imgs/a.png\n"
    )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    src = open_source("../lists/files.txt")
    assert src.kind == "list"
    ids = [it.id for it in src]
    assert ids == [
        "../imgs/sub/b.png",
        "../imgs/a.png",
        str(tmp_path / "elsewhere" / "c.png"),
        "missing.png",
        "../imgs/a.png#2",
    ]
    assert [src.read(it) for it in src if "missing" not in it.id] == [b, a, c, a]
    with pytest.raises(DecodeError, match="file not found: .*lists/missing.png"):
        src.read(src[3])
    monkeypatch.chdir(tmp_path)  # reading does not depend on the current folder
    assert src.read(src[0]) == b


def test_txt_list_missing_file_is_a_per_item_failure(tmp_path):
    _save(tmp_path / "a.png")
    (tmp_path / "l.txt").write_text("a.png\ngone.png\n")
    batches = list(
        ImageLoader(
            tmp_path / "l.txt", Recipe(size=(8, 8), mean=(0,) * 3, std=(1,) * 3), batch_size=4, num_workers=0
        )
    )
    assert [it.id for it in batches[0].items] == ["a.png"]
    assert [(it.id, "file not found" in r) for it, r in batches[0].failures] == [("gone.png", True)]


def test_txt_list_empty_and_unreadable(tmp_path):
    (tmp_path / "l.txt").write_text("# nothing\n\n   \n")
    with pytest.raises(EmptySourceError, match="no images found in .*l.txt"):
        open_source(tmp_path / "l.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SourceError, match="cannot read list .*UTF-8"):
        open_source(tmp_path / "bin.txt")
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(EmptySourceError):  # a folder named like a list is a folder, here an empty one
        open_source(tmp_path / "dir.txt")


# --------------------------------------------------------------------------------------- lists in code


def test_list_of_paths_with_duplicates(tmp_path, monkeypatch):
    _save(tmp_path / "a.png", 1)
    _save(tmp_path / "b.png", 2)
    monkeypatch.chdir(tmp_path)
    src = open_source(["a.png", tmp_path / "b.png", "a.png", "a.png", "nope.png"])
    assert src.kind == "paths"
    assert [it.id for it in src] == ["a.png", str(tmp_path / "b.png"), "a.png#2", "a.png#3", "nope.png"]
    assert len({it.id for it in src}) == len(src)
    monkeypatch.chdir("/")
    assert src.read(src[2]) == (tmp_path / "a.png").read_bytes()
    with pytest.raises(DecodeError, match="file not found"):
        src.read(src[4])
    with pytest.raises(EmptySourceError):
        open_source([])
    with pytest.raises(SourceError, match="only paths or only arrays"):
        open_source(["a.png", np.zeros((2, 2, 3), np.uint8)])
    with pytest.raises(SourceError, match="only paths or only arrays"):
        open_source(["a.png", 3])


def test_arrays_validated_at_decode_not_listing():
    good = np.zeros((4, 4, 3), np.uint8)
    arrays = [
        good,
        np.zeros((4, 4, 5), np.uint8),
        np.zeros((4, 4), np.float64),
        np.zeros((4, 4, 4), np.uint8),
    ]
    src = open_source(arrays)
    assert src.kind == "arrays"
    assert [it.id for it in src] == [f"array:{i:08d}" for i in range(4)]
    assert src.read(src[0]) is good
    decode_image(src.read(src[3]))
    for i in (1, 2):
        with pytest.raises(DecodeError):
            decode_image(src.read(src[i]))
    stacked = open_source(np.zeros((3, 4, 4, 3), np.uint8))
    assert len(stacked) == 3 and stacked.read(stacked[2]).shape == (4, 4, 3)
    with pytest.raises(SourceError, match="N x H x W x C"):
        open_source(np.zeros((4, 4, 3), np.uint8))


# ------------------------------------------------------------------------------------------------ Parquet


def test_parquet_path_column_relative_to_table(tmp_path, monkeypatch):
    a = _save(tmp_path / "imgs" / "a.png", 1)
    b = _save(tmp_path / "imgs" / "b.jpg", 2)
    table = pa.table({"label": [0, 1, 2], "File": ["imgs/a.png", "imgs/b.jpg", None]})
    pq.write_table(table, tmp_path / "t.parquet")
    monkeypatch.chdir(tmp_path / "imgs")
    src = open_source("../t.parquet")
    assert src.kind == "parquet" and src.describe()["path_column"] == "File"
    assert [it.id for it in src] == ["imgs/a.png", "imgs/b.jpg", "row:00000002"]
    assert src[0].uri == str(tmp_path / "imgs" / "a.png")
    assert [src.read(src[0]), src.read(src[1])] == [a, b]
    with pytest.raises(DecodeError, match="no path"):
        src.read(src[2])
    json.dumps(src.describe())


def test_parquet_bytes_column_with_id_column_and_row_groups(tmp_path):
    payloads = [_save(tmp_path / f"src{i}.png", seed=i, size=(3 + i, 4)) for i in range(10)]
    payloads[4] = None
    table = pa.table(
        {
            "key": [f"k{i}" for i in range(10)],
            "blob": pa.array(payloads, pa.binary()),
            "path": [f"orig/{i}.png" for i in range(10)],
        }
    )
    pq.write_table(table, tmp_path / "t.pq", row_group_size=3)
    src = open_source(tmp_path / "t.pq", bytes_column="blob", id_column="key")
    assert [it.id for it in src] == [f"k{i}" for i in range(10)]
    # read out of order and from threads: row groups are loaded on demand and shared safely
    order = [9, 0, 5, 1, 8, 2, 7, 3, 6]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: src.read(src[i]), order))
    assert got == [payloads[i] for i in order]
    with pytest.raises(DecodeError, match="no image bytes"):
        src.read(src[4])
    # default id: the path column; payload: the bytes
    auto = open_source(tmp_path / "t.pq", bytes_column="blob")
    assert auto[1].id == "orig/1.png" and auto.read(auto[1]) == payloads[1]
    clone = pickle.loads(pickle.dumps(src))
    assert clone.read(clone[7]) == payloads[7]


def test_parquet_auto_image_column_and_hf_struct(tmp_path):
    data = [_save(tmp_path / f"s{i}.png", seed=i) for i in range(3)]
    pq.write_table(pa.table({"image": pa.array(data, pa.binary())}), tmp_path / "plain.parquet")
    src = open_source(tmp_path / "plain.parquet")
    assert [it.id for it in src] == ["row:00000000", "row:00000001", "row:00000002"]
    assert src.read(src[2]) == data[2]
    hf = pa.table({"image": pa.array([{"bytes": d, "path": None} for d in data])})
    pq.write_table(hf, tmp_path / "hf.parquet")
    src = open_source(tmp_path / "hf.parquet")
    assert src.read(src[1]) == data[1]


def test_parquet_errors(tmp_path):
    pq.write_table(pa.table({"label": [1, 2], "score": [0.1, 0.2]}), tmp_path / "t.parquet")
    with pytest.raises(SourceError, match="no usable column .*columns: label, score"):
        open_source(tmp_path / "t.parquet")
    with pytest.raises(SourceError, match="no column 'img'"):
        open_source(tmp_path / "t.parquet", bytes_column="img")
    with pytest.raises(SourceError, match="has type double, expected string"):
        open_source(tmp_path / "t.parquet", path_column="score")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match="cannot read Parquet table"):
        open_source(tmp_path / "bad.parquet")
    pq.write_table(pa.table({"path": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(EmptySourceError, match="no images found"):
        open_source(tmp_path / "empty.parquet")


# -------------------------------------------------------------------------------------- shards, subsets


@pytest.mark.parametrize("n", [1, 7, 10, 23])
def test_shards_cover_every_item_once(n):
    src = open_source([np.zeros((2, 2, 3), np.uint8)] * n)
    for num_shards in (1, 2, 3, 7, 10, 30):
        shards = [src.shard(num_shards, i) for i in range(num_shards)]
        assert [it for s in shards for it in s] == list(src)
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1
        assert shards == [src.shard(num_shards, i) for i in range(num_shards)]
    with pytest.raises(ValueError):
        src.shard(2, 2)
    with pytest.raises(ValueError):
        src.shard(0, 0)


def test_num_images_and_shuffle_match_vdna(folder):
    full = open_source(folder)
    all_ids = [it.id for it in full]
    assert [it.id for it in open_source(folder, num_images=3)] == all_ids[:3]
    assert [it.id for it in open_source(folder, num_images=100, shuffle=True)] == all_ids  # vdna: no shuffle
    state = random.getstate()
    picked = [it.id for it in open_source(folder, num_images=4, shuffle=True, seed=5)]
    assert random.getstate() == state  # the global RNG is left alone
    expected = list(all_ids)
    random.seed(5)
    random.shuffle(expected)  # what vdna does to its sorted file list
    assert picked == expected[:4]
    assert [it.id for it in open_source(folder, num_images=4, shuffle=True, seed=5)] == picked
    sub = open_source(folder, num_images=4, shuffle=True, seed=5)
    assert sub.describe()["selection"] == {"num_images": 4, "shuffle": True, "seed": 5}
    assert full.describe()["selection"] is None


def test_open_source_on_a_source_does_not_touch_it(folder):
    full = open_source(folder)
    before = list(full)
    sub = open_source(full, num_images=2, shuffle=True, seed=1)
    assert len(sub) == 2 and list(full) == before and isinstance(sub, Source)
    assert open_source(full) is not full and list(open_source(full)) == before


def test_extensions_are_vdnas():
    assert set(IMAGE_EXTENSIONS) == {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp", "npy"}
