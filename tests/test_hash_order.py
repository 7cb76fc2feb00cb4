"""Perceptual hashes follow the installed Pillow's resampling pass order (Pillow 13 changed it for
images whose height shrinks much more than their width): bit-exact with PIL and imagehash on tall
and wide images."""

from __future__ import annotations

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from neuroprint.dedup.hashes import _resize_lanczos, image_hashes, pillow_resize_order

# (height, width): tall, wide, extreme, near the Pillow 13 switch, and upscaled in one axis.
SHAPES = [(300, 37), (37, 300), (1000, 20), (20, 1000), (171, 90), (170, 90), (100, 5), (64, 64), (31, 29)]


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth seeded RGB content (a photo's statistics more than noise's), uint8 [h, w, 3]."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(0, 1, (max(2, h // 8), max(2, w // 8), 3))
    img = np.asarray(
        Image.fromarray(((coarse - coarse.min()) / np.ptp(coarse) * 255).astype(np.uint8)).resize(
            (w, h), Image.BICUBIC
        ),
        dtype=np.float64,
    )
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def _signed(hexstr: str) -> int:
    v = int(hexstr, 16)
    return v - (1 << 64) if v >= 1 << 63 else v


@pytest.mark.parametrize("out", [(9, 8), (32, 32)])
def test_resize_equals_pillow_on_tall_and_wide_images(out):
    ow, oh = out
    rng = np.random.default_rng(0)
    for h, w in SHAPES:
        gray = rng.integers(0, 256, (h, w), dtype=np.uint8)  # noise: the two pass orders always differ
        ref = np.asarray(Image.fromarray(gray).resize((ow, oh), Image.LANCZOS), dtype=np.float64)
        ours = _resize_lanczos(torch.from_numpy(gray)[None], torch.tensor([[h, w]]), ow, oh)[0].numpy()
        assert np.array_equal(ours, ref), (h, w, out)


def test_resize_order_is_per_image_in_a_padded_batch():
    rng = np.random.default_rng(1)
    grays = [rng.integers(0, 256, s, dtype=np.uint8) for s in SHAPES]
    hmax, wmax = max(s[0] for s in SHAPES), max(s[1] for s in SHAPES)
    padded = torch.zeros((len(grays), hmax, wmax), dtype=torch.float64)
    for i, g in enumerate(grays):
        padded[i, : g.shape[0], : g.shape[1]] = torch.from_numpy(g)
    ours = _resize_lanczos(padded, torch.tensor(SHAPES), 9, 8).numpy()
    for i, g in enumerate(grays):
        assert np.array_equal(ours[i], np.asarray(Image.fromarray(g).resize((9, 8), Image.LANCZOS))), SHAPES[
            i
        ]


def test_hashes_bit_exact_with_imagehash_on_tall_and_wide_images():
    imagehash = pytest.importorskip("imagehash")
    arrays = [_texture(h, w, seed) for seed, (h, w) in enumerate(SHAPES)]
    ours = image_hashes(arrays)
    for i, a in enumerate(arrays):
        im = Image.fromarray(a)
        assert ours["dhash"][i].item() == _signed(str(imagehash.dhash(im))), SHAPES[i]
        assert ours["phash"][i].item() == _signed(str(imagehash.phash(im))), SHAPES[i]


def test_detected_order_is_the_installed_pillows():
    major = int(PIL.__version__.split(".")[0])
    assert pillow_resize_order() == ("larger-reduction-first" if major >= 13 else "horizontal-first")
