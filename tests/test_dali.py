"""DaliImageLoader against the PIL reference (ImageLoader): agreement, batch contract, bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali")

from neuroprint.cli.demo import natural_image  # noqa: E402
from neuroprint.io.dali import MAX_ABS_TOLERANCE, MEAN_ABS_TOLERANCE, DaliImageLoader, is_available  # noqa: E402
from neuroprint.io.decode import ImageLoader  # noqa: E402
from neuroprint.io.recipe import IMAGENET_MEAN, IMAGENET_STD, Recipe  # noqa: E402
from neuroprint.io.sources import open_source  # noqa: E402

R224 = Recipe(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)
R299 = Recipe(size=(299, 299), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
# (height, width): landscape, portrait, square, tiny, thin, larger than the network input and smaller.
SIZES = [(375, 500), (500, 375), (256, 256), (90, 120), (60, 400), (700, 320), (333, 217)]


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def natural_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali_natural")
    for i, (h, w) in enumerate(SIZES):
        img = Image.fromarray(natural_image(h, w, i))
        img.save(root / f"n{i:02d}.jpg", quality=90)
        img.save(root / f"n{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    """Good images interleaved with every awkward or broken kind of file."""
    root = tmp_path_factory.mktemp("dali_bad")
    rgb = Image.fromarray(natural_image(48, 40, 7))
    good = _encode(rgb, "JPEG", quality=90)
    sof = good.find(b"\xff\xc0")
    files = {
        "a_good.jpg": good,
        "b_truncated.jpg": good[: len(good) // 2],
        "c_zero.jpg": b"",
        "d_text.jpg": b"this is not an image\n",
        "e_cmyk.jpg": _encode(rgb.convert("CMYK"), "JPEG"),
        "f_sixteen.png": _encode(
            Image.fromarray((np.arange(48 * 40, dtype=np.uint16) * 31).reshape(48, 40)), "PNG"
        ),
        "g_gray.png": _encode(rgb.convert("L"), "PNG"),
        "h_gray.jpg": _encode(rgb.convert("L"), "JPEG"),
        "i_rgba.png": _encode(rgb.convert("RGBA"), "PNG"),
        "j_palette.png": _encode(rgb.convert("P"), "PNG"),
        "k_one_pixel.png": _encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        "l_one_pixel.jpg": _encode(Image.new("RGB", (1, 1), (10, 200, 30)), "JPEG"),
        # A header PIL accepts and an unsupported (lossless) JPEG process: DALI fails the whole batch.
        "m_lossless_sof.jpg": good[:sof] + b"\xff\xc7" + good[sof + 2 :],
        "n_corrupt_header.jpg": good[:2] + bytes(398) + good[400:],
        "o_truncated.png": _encode(rgb, "PNG")[:-100],
        "p_bmp.bmp": _encode(rgb, "BMP"),
        "q_good.png": _encode(rgb, "PNG"),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def _run(loader) -> tuple[list, np.ndarray, list, list]:
    items, pixels, failures, sizes = [], [], [], []
    for b in loader:
        assert b.pixels.dtype == torch.float32 and b.pixels.device.type == "cpu"
        assert b.pixels.shape[0] == len(b.items) == len(b.sizes)
        items += b.items
        pixels.append(b.pixels.numpy())
        failures += b.failures
        sizes += b.sizes
    return items, np.concatenate(pixels), failures, sizes


def test_is_available():
    assert is_available()


@pytest.mark.parametrize("recipe", [R224, R299], ids=["224-imagenet", "299-half"])
@pytest.mark.parametrize("crop", ["none", "center", "random"])
def test_agrees_with_pil_reference(natural_dir, recipe, crop):
    recipe = recipe.with_(crop=crop)
    d_items, d_pix, d_fail, d_sizes = _run(DaliImageLoader(natural_dir, recipe, batch_size=5, num_threads=2))
    p_items, p_pix, p_fail, p_sizes = _run(ImageLoader(natural_dir, recipe, batch_size=5, num_workers=2))
    assert d_fail == p_fail == []
    assert d_items == p_items and len(d_items) == 2 * len(SIZES)
    assert d_sizes == p_sizes
    assert d_pix.shape == p_pix.shape == (len(d_items), 3, *recipe.size)
    diff = np.abs(d_pix - p_pix)
    assert diff.max() <= MAX_ABS_TOLERANCE, diff.max()
    assert diff.mean() <= MEAN_ABS_TOLERANCE, diff.mean()
    # Away from the border (where the two resizers treat the edge differently) the match is much closer.
    assert diff[:, :, 4:-4, 4:-4].max() <= 0.1


def test_legacy_pytorch_resize_agrees(natural_dir):
    recipe = R224.with_(resize="legacy_pytorch", crop="center")
    _, d_pix, _, _ = _run(DaliImageLoader(natural_dir, recipe, batch_size=8, num_threads=2))
    _, p_pix, _, _ = _run(ImageLoader(natural_dir, recipe, batch_size=8, num_workers=0))
    assert np.abs(d_pix - p_pix).max() <= 1e-3


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_batches_cover_every_item_once_in_order(bad_dir, batch_size):
    source = open_source(bad_dir)
    all_items = list(source)
    loader = DaliImageLoader(source, R224.with_(size=(64, 64)), batch_size=batch_size, num_threads=2)
    batches = list(loader)
    assert len(batches) == len(loader) == -(-len(all_items) // batch_size)
    for k, b in enumerate(batches):
        chunk = all_items[k * batch_size : (k + 1) * batch_size]
        got = {it.id for it in b.items} | {it.id for it, _ in b.failures}
        assert got == {it.id for it in chunk} and len(b.items) + len(b.failures) == len(chunk)
        assert b.items == [it for it in chunk if it in b.items]  # in order
    seen = [it.id for b in batches for it in b.items] + [it.id for b in batches for it, _ in b.failures]
    assert sorted(seen) == sorted(it.id for it in all_items)


def test_bad_files_fall_back_or_fail_like_pil(bad_dir):
    recipe = R224.with_(crop="center")
    d_items, d_pix, d_fail, d_sizes = _run(DaliImageLoader(bad_dir, recipe, batch_size=6, num_threads=2))
    p_items, p_pix, p_fail, p_sizes = _run(ImageLoader(bad_dir, recipe, batch_size=6, num_workers=2))
    total = len(list(open_source(bad_dir)))
    assert len(d_items) + len(d_fail) == total
    # The same items fail, with the reference's reasons; everything else decodes to the same pixels.
    assert [(it.id, reason) for it, reason in d_fail] == [(it.id, reason) for it, reason in p_fail]
    failed = {it.id for it, _ in d_fail}
    assert failed == {
        "b_truncated.jpg",
        "c_zero.jpg",
        "d_text.jpg",
        "m_lossless_sof.jpg",
        "n_corrupt_header.jpg",
        "o_truncated.png",
    }
    for _, reason in d_fail:
        assert reason and "\n" not in reason
    assert d_items == p_items and d_sizes == p_sizes
    diff = np.abs(d_pix - p_pix)
    assert diff.max() <= MAX_ABS_TOLERANCE and diff.mean() <= MEAN_ABS_TOLERANCE


def test_array_source_uses_the_pil_path():
    rng = np.random.default_rng(3)
    arrays = [
        rng.integers(0, 256, (30, 50, 3), dtype=np.uint8),
        rng.integers(0, 256, (41, 29), dtype=np.uint8),  # gray
        rng.integers(0, 256, (20, 20, 4), dtype=np.uint8),  # RGBA
        rng.integers(0, 256, (20, 20, 2), dtype=np.uint8),  # not an image: a failure
    ]
    recipe = R299.with_(size=(32, 32))
    d_items, d_pix, d_fail, d_sizes = _run(DaliImageLoader(arrays, recipe, batch_size=3, num_threads=1))
    p_items, p_pix, p_fail, p_sizes = _run(ImageLoader(arrays, recipe, batch_size=3, num_workers=0))
    assert d_items == p_items and len(d_items) == 3 and d_sizes == p_sizes
    assert d_fail == p_fail and len(d_fail) == 1
    assert np.array_equal(d_pix, p_pix)  # the same code path: bit-identical


def test_item_subset_and_empty(natural_dir):
    source = open_source(natural_dir)
    subset = list(source)[3:6]
    items, pix, fail, _ = _run(DaliImageLoader(source, R224, batch_size=2, num_threads=1, items=subset))
    assert items == subset and not fail and pix.shape[0] == 3
    assert list(DaliImageLoader(source, R224, batch_size=2, items=[])) == []
