"""The engine's determinism guarantee (tests/agreement.py), tested by changing batching and threads on
purpose: a tolerance too tight for float32 fails here on every CPU, not only on some."""

from __future__ import annotations

import contextlib

import pytest
import torch
from agreement import LEVEL_BITWISE, LEVEL_FLOAT32, assert_vdnas_agree, bitwise_equal, moved_values
from conftest import TINY

from neuroprint import profile

DISTS = ["histogram-40", "gaussian", "layer-gaussian", "activation-ranges"]
KW = dict(extractor=TINY, weights="random", num_workers=1, progress=False, device="cpu")


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ranges_path(image_sets, tmp_path_factory):
    path = tmp_path_factory.mktemp("inv") / "ranges"
    profile(image_sets["good"], "activation-ranges", batch_size=6, **KW)["activation-ranges"].save(path)
    return path


@pytest.fixture(scope="module")
def baseline(image_sets, ranges_path):
    with torch_threads(2):
        return profile(image_sets["mixed"], DISTS, ranges=ranges_path, batch_size=4, **KW)


def test_rerun_with_same_batches_and_threads_is_bitwise(image_sets, ranges_path, baseline):
    with torch_threads(2):
        again = profile(image_sets["mixed"], DISTS, ranges=ranges_path, batch_size=4, **KW)
    assert_vdnas_agree(baseline, again, LEVEL_BITWISE)


@pytest.mark.parametrize(("batch_size", "threads"), [(1, 2), (7, 2), (4, 1), (3, 1)])
def test_other_batching_or_threads_agree_to_float32(image_sets, ranges_path, baseline, batch_size, threads):
    with torch_threads(threads):
        other = profile(image_sets["mixed"], DISTS, ranges=ranges_path, batch_size=batch_size, **KW)
    if batch_size != 4:
        # Other batches fold the moments in another order: exact equality would fail on any machine.
        assert not bitwise_equal(baseline, other), "the runs should differ in their last bits"
    assert_vdnas_agree(baseline, other, LEVEL_FLOAT32)


def test_float32_tolerance_still_catches_a_missing_image(image_sets, ranges_path):
    paths = [str(p) for p in image_sets["good_paths"]]
    all_six = profile(paths, "gaussian", ranges=ranges_path, batch_size=3, **KW)["gaussian"]
    five = profile(paths[1:], "gaussian", ranges=ranges_path, batch_size=3, **KW)["gaussian"]
    five.num_images = all_six.num_images  # so that only the statistics are compared
    with pytest.raises(AssertionError):
        assert_vdnas_agree(all_six, five, LEVEL_FLOAT32)


def test_moved_values_counts_bin_changes():
    a = torch.tensor([[3, 1, 0, 2]])
    assert moved_values(a, a).tolist() == [0]
    assert moved_values(a, torch.tensor([[2, 2, 0, 2]])).tolist() == [1]  # one value, one edge
    assert moved_values(a, torch.tensor([[2, 1, 1, 2]])).tolist() == [2]  # one value over two edges
