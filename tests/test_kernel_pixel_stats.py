"""The quality statistics' C kernel (kernels/_pixel_stats.c) vs its numpy reference, on odd shapes."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from sanitized import run_sanitized

from neuroprint.check.quality import _TABLES, quality_stats
from neuroprint.kernels import pixel_stats as ps

INT_KEYS = ("luma_hist", "rg_hist", "yb_hist", "lap_hist", "spread_sum")


def _images():
    rng = np.random.default_rng(7)
    shapes = [(1, 1), (1, 7), (7, 1), (2, 2), (2, 9), (3, 3), (5, 4), (17, 31), (64, 33), (480, 640)]
    out = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    out.append(np.zeros((9, 11, 3), np.uint8))
    out.append(np.full((9, 11, 3), 255, np.uint8))
    ramp = np.linspace(0, 255, 50 * 70).reshape(50, 70).astype(np.uint8)
    out.append(np.stack([ramp, ramp[::-1], ramp.T.reshape(50, 70)], axis=2))  # smooth, every pair of values
    extremes = rng.choice(np.array([0, 255], np.uint8), (23, 29, 3))  # the histograms' end bins
    out.append(extremes)
    return out


def test_extension_is_built():
    # CI installs with a C compiler: the suite must measure and test the kernel, not the fallback
    assert ps.compiled(), "neuroprint.kernels._pixel_stats was not built"


@pytest.mark.parametrize("img", _images(), ids=lambda a: "x".join(map(str, a.shape[:2])))
def test_kernel_equals_reference(img):
    want = ps.reference_pixel_stats(img, _TABLES)
    got = ps.pixel_stats(img, _TABLES)
    assert set(got) == set(want)
    for k in INT_KEYS:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    h, w = img.shape[:2]
    assert got["luma_hist"].sum() == h * w and got["rg_hist"].sum() == h * w and got["yb_hist"].sum() == h * w
    assert got["lap_hist"].sum() == (max(h - 2, 0) * max(w - 2, 0) if h >= 3 and w >= 3 else 0)
    # float32 terms summed in float64 in another order: equal to double precision
    for k in ("bright_sum", "sat_sum"):
        assert got[k] == pytest.approx(want[k], rel=1e-12, abs=1e-12), k


def test_strided_views_and_threads_give_the_reference():
    rng = np.random.default_rng(3)
    big = rng.integers(0, 256, (121, 203, 3), dtype=np.uint8)
    view = big[5:100:2, 3:190:3]  # not contiguous
    want = ps.reference_pixel_stats(np.ascontiguousarray(view), _TABLES)
    got = ps.pixel_stats(view, _TABLES)
    for k in INT_KEYS:
        np.testing.assert_array_equal(got[k], want[k])
    # decode threads call it side by side, with the GIL released: every thread gets its own image's sums
    imgs = [rng.integers(0, 256, (97, 61 + i, 3), dtype=np.uint8) for i in range(8)]
    results = [None] * len(imgs)

    def work(i):
        for _ in range(5):
            results[i] = ps.pixel_stats(imgs[i], _TABLES)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(imgs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for img, got in zip(imgs, results):
        want = ps.reference_pixel_stats(img, _TABLES)
        for k in INT_KEYS:
            np.testing.assert_array_equal(got[k], want[k])


def test_bad_inputs_are_refused():
    img = np.zeros((4, 4, 3), np.uint8)
    for bad in (img[..., 0], img.astype(np.float32), np.zeros((4, 4, 4), np.uint8), [[0, 0, 0]]):
        with pytest.raises(ValueError, match="uint8 RGB"):
            ps.pixel_stats(bad, _TABLES)
    with pytest.raises(ValueError, match="sq_b"):
        ps.pixel_stats(img, {**_TABLES, "sq_b": _TABLES["sq_b"].astype(np.float64)})
    if ps.compiled():  # the extension checks its own buffers too
        hists = [np.zeros(n, np.int64) for n in ps.HIST_SIZES.values()]
        with pytest.raises(ValueError, match="lap_hist"):
            ps._ext.pixel_stats(img, _TABLES["sq_rg"], _TABLES["sq_b"], _TABLES["sat"], *hists[:3], hists[2])
        with pytest.raises(ValueError, match="luma_hist"):
            ps._ext.pixel_stats(
                img, _TABLES["sq_rg"], _TABLES["sq_b"], _TABLES["sat"], hists[0].astype(np.int32), *hists[1:]
            )
        with pytest.raises(TypeError, match="writable"):
            ro = hists[0].copy()
            ro.flags.writeable = False
            ps._ext.pixel_stats(img, _TABLES["sq_rg"], _TABLES["sq_b"], _TABLES["sat"], ro, *hists[1:])
        with pytest.raises(ValueError, match="RGB"):
            ps._ext.pixel_stats(np.zeros((4, 4, 4), np.uint8), _TABLES["sq_rg"], _TABLES["sq_b"], _TABLES["sat"],
                                *hists)  # fmt: skip


def test_without_the_extension_the_reference_runs_and_says_so(monkeypatch, caplog):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (31, 45, 3), dtype=np.uint8)
    want = quality_stats(img)
    monkeypatch.setattr(ps, "_ext", None)
    monkeypatch.setattr(ps, "_warned", False)
    with caplog.at_level(logging.WARNING, logger="neuroprint.kernels.pixel_stats"):
        got = quality_stats(img)
        quality_stats(img)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "was not built" in caplog.records[0].getMessage()
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-12), k


_ASAN_SCRIPT = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import _pixel_stats as ext
rng = np.random.default_rng(0)
tables = [rng.random(65536, dtype=np.float32), rng.random(256, dtype=np.float32), rng.random(65536, dtype=np.float32)]
for it in range(300):
    h, w = (int(v) for v in rng.integers(1, 70, 2))
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hists = [np.zeros(n, np.int64) for n in (256, 511, 1021, 2041)]
    ext.pixel_stats(img, *tables, *hists)
    assert hists[0].sum() == h * w and hists[3].sum() == max(h - 2, 0) * max(w - 2, 0)
print("ASAN-DONE")
"""


def test_memory_safety_under_address_sanitizer(tmp_path):
    # the extension built with -fsanitize=address on random shapes, the extremes' table indices included
    assert "ASAN-DONE" in run_sanitized("_pixel_stats", _ASAN_SCRIPT, tmp_path, ("-fno-math-errno",))
