"""The hashes' grayscale LANCZOS thumbnails (kernels/_gray_lanczos.c) vs Pillow itself, bit for bit."""

from __future__ import annotations

import logging
import math
import threading

import numpy as np
import pytest
from sanitized import run_sanitized

from neuroprint.kernels import gray_lanczos as gl

HASH_SIZES = [(32, 32), (9, 8)]


def _coeffs(n_in: int, n_out: int) -> list[tuple[int, list[int]]]:
    """Pillow's LANCZOS weights of one axis (Resample.c), in plain Python: (first input, int weights)."""
    scale = n_in / n_out
    fs = max(scale, 1.0)
    support = 3.0 * fs

    def sinc(v):
        return 1.0 if v == 0.0 else math.sin(v * math.pi) / (v * math.pi)

    out = []
    for xx in range(n_out):
        center = 0.0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), n_in) - xmin
        k = [
            sinc(t) * sinc(t / 3) if -3.0 <= t < 3.0 else 0.0
            for t in ((x + xmin - center + 0.5) / fs for x in range(xmax))
        ]
        ww = 0.0
        for v in k:
            ww += v
        k = [v / ww for v in k] if ww != 0.0 else k
        out.append((xmin, [int(-0.5 + v * (1 << 22)) if v < 0 else int(0.5 + v * (1 << 22)) for v in k]))
    return out


def _pass(a: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    a = np.moveaxis(a, axis, -1)
    res = np.empty(a.shape[:-1] + (n_out,), np.int64)
    for xx, (xmin, k) in enumerate(_coeffs(a.shape[-1], n_out)):
        s = (1 << 21) + (a[..., xmin : xmin + len(k)].astype(np.int64) * np.array(k, np.int64)).sum(-1)
        res[..., xx] = np.clip(s >> 22, 0, 255)
    return np.moveaxis(res, -1, axis)


def _numpy_model(img: np.ndarray, w: int, h: int, vertical_first: bool) -> np.ndarray:
    """The recipe in numpy with a given order of the passes (a second oracle, for the order the installed
    Pillow does not follow)."""
    if img.ndim == 3:
        r, g, b = (img[..., i].astype(np.int64) for i in range(3))
        a = (19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16
    else:
        a = img.astype(np.int64)
    for axis in "vh" if vertical_first else "hv":
        if axis == "h" and a.shape[1] != w:
            a = _pass(a, w, 1)
        if axis == "v" and a.shape[0] != h:
            a = _pass(a, h, 0)
    return a.astype(np.uint8)


def _pillow13_vertical_first(img, w, h) -> bool:
    H, W = img.shape[:2]
    return (H - h) > 0 and (H - h) > (W - w) * 2


def _images():
    rng = np.random.default_rng(11)
    shapes = [(1, 1), (1, 7), (7, 1), (2, 2), (8, 9), (9, 8), (32, 32), (8, 9), (5, 3), (31, 33), (23, 5),
              (153, 81), (100, 60), (2, 500), (500, 2), (480, 640), (777, 1001)]  # fmt: skip
    out = []
    for i, (h, w) in enumerate(shapes):
        shape = (h, w, 3) if i % 2 == 0 else (h, w)
        img = rng.integers(0, 256, shape, dtype=np.uint8)
        if (
            i % 3 == 0
        ):  # smooth rows too (the weights' negative lobes then matter less than the sums' rounding)
            img = np.sort(img, axis=1)
        out.append(img)
    out.append(np.zeros((40, 30, 3), np.uint8))
    out.append(np.full((30, 40), 255, np.uint8))
    out.append(rng.choice(np.array([0, 255], np.uint8), (61, 47, 3)))  # the clip at both ends
    return out


def test_extension_is_built_and_matches_this_pillow():
    # CI installs with a C compiler: the suite must test the kernel, not the fallback
    assert gl.compiled(), "neuroprint.kernels._gray_lanczos was not built"
    assert gl.pillow_order() is not None, "the kernel matches the installed Pillow in neither order"


@pytest.mark.parametrize("img", _images(), ids=lambda a: "x".join(map(str, a.shape)))
def test_kernel_equals_pillow(img):
    sizes = [*HASH_SIZES, (img.shape[1], img.shape[0]), (3, 17), (17, 3), (1, 1), (40, 2)]
    for got, want in zip(gl.gray_lanczos(img, sizes), gl.reference_gray_lanczos(img, sizes)):
        assert got.dtype == np.uint8 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_random_shapes_equal_pillow():
    rng = np.random.default_rng(5)
    for _ in range(120):
        h, w = (int(v) for v in rng.integers(1, 200, 2))
        img = rng.integers(0, 256, (h, w, 3) if rng.random() < 0.5 else (h, w), dtype=np.uint8)
        sizes = [tuple(int(v) for v in rng.integers(1, 48, 2)) for _ in range(int(rng.integers(1, 4)))]
        for got, want in zip(gl.gray_lanczos(img, sizes), gl.reference_gray_lanczos(img, sizes)):
            np.testing.assert_array_equal(got, want, err_msg=f"{img.shape} -> {want.shape}")


@pytest.mark.parametrize("rule", [True, False])
def test_both_orders_equal_the_numpy_model(rule):
    # the order the installed Pillow does not follow is checked too, against the plain recipe
    rng = np.random.default_rng(3)
    cases = [
        ((23, 5), (9, 8)),
        ((153, 81), (32, 32)),
        ((40, 37), (32, 32)),
        ((6, 50), (9, 8)),
        ((90, 12), (5, 7)),
    ]
    for (h, w), (ow, oh) in cases:
        for shape in ((h, w), (h, w, 3)):
            img = rng.integers(0, 256, shape, dtype=np.uint8)
            got = gl._run(img, [(ow, oh)], rule)[0]
            vfirst = rule and _pillow13_vertical_first(img, ow, oh)
            np.testing.assert_array_equal(
                got, _numpy_model(img, ow, oh, vfirst), err_msg=f"{shape} -> {(ow, oh)}"
            )


def test_non_contiguous_input_and_threads():
    rng = np.random.default_rng(8)
    big = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    view = big[::2, 1::3]  # strided: the wrapper copies it
    np.testing.assert_array_equal(
        gl.gray_lanczos(view, [(9, 8)])[0], gl.reference_gray_lanczos(view, [(9, 8)])[0]
    )
    want = gl.reference_gray_lanczos(big, HASH_SIZES)
    errors = []

    def work():  # the GIL is released: decode threads run the kernel side by side
        for _ in range(10):
            got = gl.gray_lanczos(big, HASH_SIZES)
            if not all(np.array_equal(a, b) for a, b in zip(got, want)):
                errors.append("mismatch")

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize(
    "img, sizes, match",
    [
        (np.zeros((4, 4, 3), np.float32), HASH_SIZES, "uint8"),
        (np.zeros((4, 4, 4), np.uint8), HASH_SIZES, "uint8"),
        (np.zeros((0, 4, 3), np.uint8), HASH_SIZES, "at least one pixel"),
        (np.zeros((4, 4), np.uint8), [(0, 3)], "1..4096"),
        (np.zeros((4, 4), np.uint8), [(5000, 3)], "1..4096"),
        (np.zeros((4, 4), np.uint8), [(2, 2)] * 9, "1 to 8"),
        (np.zeros((4, 4), np.uint8), [], "1 to 8"),
    ],
)
def test_bad_input(img, sizes, match):
    with pytest.raises(ValueError, match=match):
        gl.gray_lanczos(img, sizes)


def test_extension_checks_its_buffers():
    img = np.zeros((8, 8), np.uint8)
    ro = np.zeros((4, 4), np.uint8)
    ro.flags.writeable = False
    with pytest.raises((ValueError, BufferError, TypeError)):
        gl._ext.gray_lanczos(img, (ro,), True)
    with pytest.raises(ValueError, match="uint8"):
        gl._ext.gray_lanczos(img, (np.zeros((4, 4), np.int32),), True)
    with pytest.raises(ValueError, match="uint8"):
        gl._ext.gray_lanczos(np.zeros((8, 8, 2), np.uint8), (np.zeros((4, 4), np.uint8),), True)


def test_fallbacks_say_so(monkeypatch, caplog):
    img = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    want = gl.reference_gray_lanczos(img, HASH_SIZES)
    # not built: Pillow, one warning
    monkeypatch.setattr(gl, "_ext", None)
    monkeypatch.setattr(gl, "_warned", False)
    with caplog.at_level(logging.WARNING, logger=gl.__name__):
        for _ in range(2):
            got = gl.gray_lanczos(img, HASH_SIZES)
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert sum("was not built" in r.message for r in caplog.records) == 1
    monkeypatch.undo()
    caplog.clear()
    # built, but a Pillow whose bits it matches in neither order: Pillow, one warning
    real = gl.reference_gray_lanczos

    def another_pillow(img, sizes):
        return [np.asarray(a) ^ np.uint8(1) for a in real(img, sizes)]

    monkeypatch.setattr(gl, "_order_found", False)
    monkeypatch.setattr(gl, "_order_rule", gl._order_rule)
    monkeypatch.setattr(gl, "reference_gray_lanczos", another_pillow)
    with caplog.at_level(logging.WARNING, logger=gl.__name__):
        assert gl.pillow_order() is None
        got = gl.gray_lanczos(img, HASH_SIZES)
    assert all(np.array_equal(a, b) for a, b in zip(got, another_pillow(img, HASH_SIZES)))
    assert sum("differ from this Pillow" in r.message for r in caplog.records) == 1
    monkeypatch.undo()
    monkeypatch.setattr(gl, "_order_found", False)
    assert gl.pillow_order() is not None  # found again with the real Pillow


_ASAN_SCRIPT = r"""
import sys, numpy as np
sys.path.insert(0, sys.argv[1])
import _gray_lanczos as ext
from PIL import Image
rng = np.random.default_rng(0)
bad = 0
for it in range(300):
    h, w = (int(v) for v in rng.integers(1, 90, 2))
    img = rng.integers(0, 256, (h, w, 3) if it % 2 else (h, w), dtype=np.uint8)
    sizes = [tuple(int(v) for v in rng.integers(1, 64, 2)) for _ in range(int(rng.integers(1, 5)))]
    outs = tuple(np.empty((hh, ww), np.uint8) for ww, hh in sizes)
    ext.gray_lanczos(img, outs, bool(it % 3))
    if it % 3:
        g = Image.fromarray(img)
        g = g.convert("L") if img.ndim == 3 else g
        bad += sum(not np.array_equal(o, np.asarray(g.resize(s, Image.LANCZOS))) for o, s in zip(outs, sizes))
print("ASAN-DONE", bad)
"""


def test_memory_safety_under_address_sanitizer(tmp_path):
    # the extension built with -fsanitize=address on random shapes (upscales, 1-pixel sides, 1-4 outputs)
    out = run_sanitized("_gray_lanczos", _ASAN_SCRIPT, tmp_path, ("-ffp-contract=off",))
    assert "ASAN-DONE 0" in out, out
