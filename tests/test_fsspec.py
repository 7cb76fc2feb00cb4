"""Sources behind fsspec URLs: real fsspec filesystems (memory://, file://), same items and pixels as local."""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY

from neuroprint import DecodeError, EmptySourceError, SourceError, open_source, profile
from neuroprint.io.sources import FsspecSource
from neuroprint.jobs import run_job

KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=2, progress=False, device="cpu")


@pytest.fixture
def memory_tree(image_sets):
    """The "mixed" folder copied to memory://<unique>/ (with a hidden file that must be skipped)."""
    fs = fsspec.filesystem("memory")
    root = f"/np-{id(image_sets)}-{np.random.default_rng().integers(1 << 30)}"
    local = image_sets["mixed"]
    for p in sorted(local.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{root}/{p.relative_to(local).as_posix()}", p.read_bytes())
    fs.pipe_file(f"{root}/.hidden/skip.png", b"x")
    fs.pipe_file(f"{root}/notes.md", b"not an image")
    yield fs, root
    fs.rm(root, recursive=True)


def test_memory_folder_lists_and_reads_like_the_local_folder(image_sets, memory_tree):
    fs, root = memory_tree
    remote = open_source(f"memory://{root}")
    local = open_source(image_sets["mixed"])
    assert isinstance(remote, FsspecSource) and remote.kind == "fsspec"
    # The local folder has an empty sub-folder named folder.png; object stores have no empty folders.
    local_ids = [it.id for it in local if it.id != "bad/folder.png"]
    assert [it.id for it in remote] == local_ids
    for it in remote:
        assert it.uri == f"memory://{root}/{it.id}"
        assert remote.read(it) == (image_sets["mixed"] / it.id).read_bytes()
    assert remote.describe()["url"] == f"memory://{root}"


def test_memory_list_with_relative_absolute_and_missing_entries(memory_tree):
    fs, root = memory_tree
    fs.pipe_file(
        f"{root}/lists/l.txt",
        f"# a comment\n../good/good_00.JPG\n\nmemory://{root}/odd/gray.png\n../missing.png\n".encode(),
    )
    src = open_source(f"memory://{root}/lists/l.txt")
    assert [it.id for it in src] == ["../good/good_00.JPG", f"memory://{root}/odd/gray.png", "../missing.png"]
    assert src.read(src[0]) == fs.cat_file(f"{root}/good/good_00.JPG")
    assert src.read(src[1]) == fs.cat_file(f"{root}/odd/gray.png")
    with pytest.raises(DecodeError, match="file not found"):
        src.read(src[2])


def test_single_object_and_errors(memory_tree):
    fs, root = memory_tree
    one = open_source(f"memory://{root}/odd/gray.png")
    assert [it.id for it in one] == ["gray.png"]
    with pytest.raises(SourceError, match="source not found"):
        open_source(f"memory://{root}/nothing-here")
    fs.pipe_file(f"{root}/empty/readme.md", b"no images")
    with pytest.raises(EmptySourceError, match="no images found"):
        open_source(f"memory://{root}/empty")
    fs.pipe_file(f"{root}/lists/blank.txt", b"\n# only a comment\n")
    with pytest.raises(EmptySourceError, match="no paths listed"):
        open_source(f"memory://{root}/lists/blank.txt")
    with pytest.raises(SourceError, match="expected a folder, an image file or a .txt list"):
        open_source(f"memory://{root}/notes.md")
    with pytest.raises(SourceError, match="cannot open"):
        open_source("nosuchscheme://bucket/images")


def test_object_deleted_after_listing_is_a_per_item_failure(memory_tree):
    fs, root = memory_tree
    src = open_source(f"memory://{root}/good")
    fs.rm(f"{root}/good/good_01.png")
    with pytest.raises(DecodeError, match="file not found"):
        src.read(next(it for it in src if it.id == "good_01.png"))


def test_file_url_is_the_local_source(image_sets):
    src = open_source(f"file://{image_sets['good']}")
    assert src.kind == "folder" and len(src) == 6


def test_missing_backend_package_is_named(monkeypatch):
    # gcsfs is not a dependency: fsspec knows the scheme and says which package to install.
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    with pytest.raises(SourceError, match="gcsfs"):
        open_source("gs://some-bucket/images")


def test_job_over_a_memory_url_equals_the_local_job(image_sets, memory_tree, tmp_path):
    fs, root = memory_tree
    good = f"memory://{root}/good"
    ranges = tmp_path / "ranges"
    profile(image_sets["mixed"] / "good", "activation-ranges", **KW)["activation-ranges"].save(ranges)
    remote = run_job(good, tmp_path / "remote", "histogram-20", ranges=ranges, shard_size=2, **KW)
    local = run_job(
        image_sets["mixed"] / "good", tmp_path / "local", "histogram-20", ranges=ranges, shard_size=2, **KW
    )
    for layer in local.vdnas["histogram-20"].neurons_list:
        assert np.array_equal(
            remote.vdnas["histogram-20"].data[layer].numpy(), local.vdnas["histogram-20"].data[layer].numpy()
        )
    rows = pq.read_table(tmp_path / "remote" / "rows").to_pylist()
    assert [r["uri"] for r in rows] == [f"{good}/{r['id']}" for r in rows]
    assert all(r["status"] == "ok" for r in rows)
