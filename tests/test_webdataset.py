"""WebDataset tar shards as a source: same pixels as the files, stable ids, bad members recorded."""

from __future__ import annotations

import tarfile

import pytest
import torch
from conftest import TINY

from neuroprint import EmptySourceError, SourceError, open_source, profile
from neuroprint.jobs import run_job

KW = dict(extractor=TINY, weights="random", batch_size=3, num_workers=2, progress=False, device="cpu")


def _make_tars(image_sets, folder):
    folder.mkdir()
    paths = image_sets["good_paths"]
    for s, chunk in enumerate((paths[:4], paths[4:])):
        with tarfile.open(folder / f"shard-{s:04d}.tar", "w") as tf:
            for i, p in enumerate(chunk):
                tf.add(p, arcname=f"sample{s}{i:03d}.{p.suffix[1:].lower()}")
            if s == 1:
                tf.add(image_sets["bad"]["truncated"], arcname="sample1999.jpg")
    return sorted(folder.glob("*.tar"))


def test_tar_shards_equal_the_files(image_sets, tmp_path):
    tars = _make_tars(image_sets, tmp_path / "wds")
    src = open_source(tmp_path / "wds")
    assert src.kind == "webdataset" and len(src) == 7
    assert [it.id for it in src][:2] == ["shard-0000.tar/sample0000.jpg", "shard-0000.tar/sample0001.png"]
    assert open_source([str(t) for t in tars]).describe()["num_items"] == 7
    assert open_source(tars[0]).describe()["num_items"] == 4
    ranges = profile(image_sets["good"], "activation-ranges", **KW)["activation-ranges"].to_ranges("t")
    a = profile(tmp_path / "wds", "histogram-30", ranges=ranges, **KW)["histogram-30"]
    b = profile(image_sets["good"], "histogram-30", ranges=ranges, **KW)["histogram-30"]
    assert a.num_images == 6 and a.num_failed == 1 and "sample1999.jpg" in a.failures[0]["id"]
    for layer in a.neurons_list:
        assert torch.equal(a.data[layer], b.data[layer])
    res = run_job(tmp_path / "wds", tmp_path / "job", "histogram-30", ranges=ranges, shard_size=3, **KW)
    assert res.images_in == 7 and res.failed == 1


def test_bad_tar_sources(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(SourceError, match="tar"):
        open_source(tmp_path / "x.tar")
    with tarfile.open(tmp_path / "empty.tar", "w") as tf:
        (tmp_path / "a.txt").write_text("hi")
        tf.add(tmp_path / "a.txt", arcname="a.txt")
    with pytest.raises(EmptySourceError, match="no images"):
        open_source(tmp_path / "empty.tar")
