"""Decoding, the vdna-exact preprocessing and the threaded loader."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from neuroprint._errors import DecodeError
from neuroprint.io.decode import Batch, ImageLoader, decode_image, preprocess
from neuroprint.io.recipe import IMAGENET_MEAN, IMAGENET_STD, Recipe
from neuroprint.io.sources import open_source

vdna_im = pytest.importorskip("vdna.utils.im")

SHAPES = {"square": (64, 64), "wide": (45, 97), "tall": (130, 70)}


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("decode_images")
    files = {}
    for name, (h, w) in SHAPES.items():
        for fmt, ext in (("PNG", "png"), ("JPEG", "jpg")):
            path = root / f"{name}.{ext}"
            Image.fromarray(_rgb(h, w, seed=h * w)).save(path, fmt)
            files[f"{name}.{ext}"] = str(path)
    gray = root / "gray.png"
    Image.fromarray(_rgb(50, 80)[:, :, 0]).save(gray)
    files["gray.png"] = str(gray)
    return files


# ------------------------------------------------------------------------------------ vdna bit-exactness


@pytest.mark.parametrize("size", [224, 299])
@pytest.mark.parametrize("resize", ["clean", "legacy_pytorch"])
@pytest.mark.parametrize("crop", ["none", "center"])
@pytest.mark.parametrize("norm", ["imagenet", "half"])
def test_preprocess_matches_vdna_on_files(image_files, size, resize, crop, norm, capsys):
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if norm == "imagenet" else ((0.5,) * 3, (0.5,) * 3)
    paths = list(image_files.values())
    ref = vdna_im.ResizeDataset(
        file_paths=paths,
        resize_mode=resize,
        crop_to_square_pre_resize=crop,
        size=(size, size),
        norm_mean=list(mean),
        norm_std=list(std),
    )
    recipe = Recipe(size=(size, size), mean=mean, std=std, resize=resize, crop=crop)
    for i, path in enumerate(paths):
        expected = ref[i]
        with open(path, "rb") as f:
            from_bytes = preprocess(decode_image(f.read()), recipe)
        assert from_bytes.dtype == torch.float32 and from_bytes.shape == (3, size, size)
        assert torch.equal(from_bytes, expected), path
        assert torch.equal(preprocess(decode_image(path), recipe), expected), path


@pytest.mark.parametrize("size", [224, 299])
@pytest.mark.parametrize("resize", ["clean", "legacy_pytorch"])
@pytest.mark.parametrize("crop", ["none", "center"])
@pytest.mark.parametrize("norm", ["imagenet", "half"])
def test_preprocess_matches_vdna_on_arrays(size, resize, crop, norm, capsys):
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if norm == "imagenet" else ((0.5,) * 3, (0.5,) * 3)
    arrays = [_rgb(h, w, seed=i) for i, (h, w) in enumerate(SHAPES.values())]
    ref = vdna_im.ResizeDataset(
        images=arrays,
        resize_mode=resize,
        crop_to_square_pre_resize=crop,
        size=(size, size),
        norm_mean=list(mean),
        norm_std=list(std),
    )
    recipe = Recipe(size=(size, size), mean=mean, std=std, resize=resize, crop=crop)
    for i, arr in enumerate(arrays):
        assert torch.equal(preprocess(decode_image(arr), recipe), ref[i])


@pytest.mark.parametrize("resize", ["clean", "legacy_pytorch"])
def test_random_crop_with_global_rng_matches_vdna(resize, capsys):
    arrays = [_rgb(40, 90, seed=1), _rgb(90, 40, seed=2)]
    ref = vdna_im.ResizeDataset(
        images=arrays, resize_mode=resize, crop_to_square_pre_resize="random", size=(32, 32)
    )
    recipe = Recipe(size=(32, 32), mean=(0, 0, 0), std=(1, 1, 1), resize=resize, crop="random")
    for i, arr in enumerate(arrays):
        np.random.seed(7)
        expected = ref[i]
        np.random.seed(7)
        assert torch.equal(preprocess(arr, recipe), expected)


def test_random_crop_with_generator_is_seeded():
    arr = _rgb(40, 200)
    recipe = Recipe(size=(16, 16), mean=(0, 0, 0), std=(1, 1, 1), crop="random")
    a = preprocess(arr, recipe, np.random.default_rng(5))
    b = preprocess(arr, recipe, np.random.default_rng(5))
    assert torch.equal(a, b)
    draws = {preprocess(arr, recipe, np.random.default_rng(s)).sum().item() for s in range(6)}
    assert len(draws) > 1


def test_non_square_output_size_is_height_by_width():
    recipe = Recipe(size=(20, 30), mean=(0, 0, 0), std=(1, 1, 1))
    assert preprocess(_rgb(50, 50), recipe).shape == (3, 20, 30)
    assert preprocess(_rgb(50, 50), recipe.with_(resize="legacy_pytorch")).shape == (3, 20, 30)


def test_preprocess_rejects_non_rgb_uint8():
    recipe = Recipe(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        preprocess(np.zeros((8, 8), np.uint8), recipe)


# ------------------------------------------------------------------------------------- decoding modes


def _gray(h=6, w=7) -> np.ndarray:
    return np.arange(h * w, dtype=np.uint8).reshape(h, w) * 5


def _assert_gray_rgb(out: np.ndarray, gray: np.ndarray) -> None:
    assert out.dtype == np.uint8 and out.shape == (*gray.shape, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_grayscale_l_and_la():
    g = _gray()
    _assert_gray_rgb(decode_image(_encode(Image.fromarray(g), "PNG")), g)
    la = Image.merge("LA", [Image.fromarray(g), Image.fromarray(255 - g)])
    _assert_gray_rgb(decode_image(_encode(la, "PNG")), g)


def test_rgba_drops_alpha_without_compositing():
    rgba = np.random.default_rng(1).integers(0, 256, (5, 9, 4), dtype=np.uint8)
    out = decode_image(_encode(Image.fromarray(rgba), "PNG"))
    np.testing.assert_array_equal(out, rgba[:, :, :3])


@pytest.mark.parametrize("transparency", [None, 1, "bytes"])
def test_palette_images(transparency):
    palette = np.random.default_rng(2).integers(0, 256, 768, dtype=np.uint8)
    idx = np.random.default_rng(3).integers(0, 256, (8, 8), dtype=np.uint8)
    img = Image.fromarray(idx, "L").convert("P")
    img.putpalette(palette.tolist())
    img.frombytes(idx.tobytes())
    kw = {}
    if transparency == 1:
        kw["transparency"] = 1
    elif transparency == "bytes":
        kw["transparency"] = bytes(range(256))
    data = _encode(img, "PNG", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no per-image PIL warning on millions of palette files
        out = decode_image(data)
    np.testing.assert_array_equal(out, palette.reshape(256, 3)[idx])


def test_cmyk_matches_pil_conversion():
    cmyk = np.random.default_rng(4).integers(0, 256, (6, 6, 4), dtype=np.uint8)
    img = Image.fromarray(cmyk, "CMYK")
    out = decode_image(_encode(img, "JPEG", quality=100))
    expected = np.asarray(Image.open(io.BytesIO(_encode(img, "JPEG", quality=100))).convert("RGB"))
    np.testing.assert_array_equal(out, expected)
    white = decode_image(_encode(Image.new("CMYK", (3, 3), (0, 0, 0, 0)), "TIFF"))
    assert (white == 255).all()


def test_one_bit():
    bits = np.random.default_rng(5).integers(0, 2, (7, 9)).astype(bool)
    out = decode_image(_encode(Image.fromarray(bits), "PNG"))
    _assert_gray_rgb(out, np.where(bits, 255, 0).astype(np.uint8))


SIXTEEN_BIT = np.array([[0, 128, 129, 257], [1000, 32896, 65278, 65535]], dtype=np.uint16)
SIXTEEN_BIT_AS_8 = np.array([[0, 0, 1, 1], [4, 128, 254, 255]], dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_is_scaled_not_clipped(fmt):
    img = Image.fromarray(SIXTEEN_BIT)
    assert img.mode == "I;16"
    _assert_gray_rgb(decode_image(_encode(img, fmt)), SIXTEEN_BIT_AS_8)


def test_sixteen_bit_big_endian_and_exact_round_trip():
    h, w = SIXTEEN_BIT.shape
    img = Image.frombytes("I;16B", (w, h), SIXTEEN_BIT.astype(">u2").tobytes())
    data = _encode(img, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    _assert_gray_rgb(decode_image(data), SIXTEEN_BIT_AS_8)
    # An 8-bit image widened to 16 bits (v * 257) comes back unchanged.
    g = np.arange(256, dtype=np.uint8).reshape(16, 16)
    _assert_gray_rgb(decode_image(_encode(Image.fromarray(g.astype(np.uint16) * 257), "PNG")), g)


def test_thirty_two_bit_int_is_read_as_sixteen_bit_range():
    v = np.array([[-5, 0, 257, 65535, 100000]], dtype=np.int32)
    data = _encode(Image.fromarray(v), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    _assert_gray_rgb(decode_image(data), np.array([[0, 0, 1, 255, 255]], dtype=np.uint8))


def test_float_mode_follows_pil_like_vdna():
    v = np.array([[-5.0, 0.4, 1.6, 100.7, 300.0]], dtype=np.float32)
    data = _encode(Image.fromarray(v), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    _assert_gray_rgb(decode_image(data), np.array([[0, 0, 1, 100, 255]], dtype=np.uint8))


def test_exif_orientation_is_not_applied():
    img = Image.fromarray(_rgb(20, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(_encode(img, "JPEG", exif=exif.tobytes()))
    assert out.shape == (20, 40, 3)


def test_arrays():
    g = _gray()
    _assert_gray_rgb(decode_image(g), g)
    _assert_gray_rgb(decode_image(g[:, :, None]), g)
    rgba = np.random.default_rng(0).integers(0, 256, (4, 5, 4), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(rgba), rgba[:, :, :3])
    rgb = _rgb(3, 4)
    assert decode_image(rgb) is rgb
    with pytest.raises(DecodeError, match="dtype float32"):
        decode_image(rgb.astype(np.float32))
    with pytest.raises(DecodeError, match="shape"):
        decode_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(DecodeError, match="shape"):
        decode_image(np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(DecodeError, match="at least one pixel"):
        decode_image(np.zeros((0, 4, 3), np.uint8))


def test_npy_bytes_and_files(tmp_path):
    rgb = _rgb(5, 6)
    path = tmp_path / "a.npy"
    np.save(path, rgb)
    np.testing.assert_array_equal(decode_image(path), rgb)
    np.testing.assert_array_equal(decode_image(path.read_bytes()), rgb)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DecodeError, match="npy"):
        decode_image(tmp_path / "obj.npy")  # never unpickled


# ------------------------------------------------------------------------------------ decoding failures


def _one_line_error(payload, match: str) -> str:
    with pytest.raises(DecodeError, match=match) as info:
        decode_image(payload)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_errors(tmp_path, fmt):
    data = _encode(Image.fromarray(_rgb(64, 64)), fmt)
    _one_line_error(data[: len(data) // 2], "truncated")
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) * 3 // 4])
    _one_line_error(path, "truncated")


def test_zero_bytes_non_image_missing_and_directory(tmp_path):
    _one_line_error(b"", "empty file")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert str(empty) in _one_line_error(empty, "empty file")
    _one_line_error(b"this is not an image\n" * 10, "not a recognised image format")
    text = tmp_path / "fake.jpg"
    text.write_text("hello")
    _one_line_error(text, "not a recognised image format")
    _one_line_error(tmp_path / "nope.png", "file not found")
    _one_line_error(tmp_path, "is a directory")
    _one_line_error(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt|truncated|not a recognised")
    with pytest.raises(DecodeError, match="cannot decode a payload of type int"):
        decode_image(3)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied(tmp_path):
    path = tmp_path / "locked.png"
    Image.fromarray(_rgb(4, 4)).save(path)
    path.chmod(0)
    try:
        _one_line_error(path, "permission denied")
    finally:
        path.chmod(0o644)


def test_permission_denied_reported(tmp_path, monkeypatch):
    # Runs as root too, where chmod cannot deny a read.
    import neuroprint.io.decode as dec

    path = tmp_path / "locked.png"
    Image.fromarray(_rgb(4, 4)).save(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dec, "open", denied, raising=False)
    _one_line_error(path, "permission denied")


def test_decompression_bomb_guard(monkeypatch):
    data = _encode(Image.fromarray(_rgb(40, 40)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    _one_line_error(data, "too large")


# ---------------------------------------------------------------------------------------------- loader


@pytest.fixture()
def mixed_source(tmp_path):
    """A list with good images of several shapes, a corrupt one, a missing one and an empty one."""
    lines = []
    for i in range(11):
        h, w = 30 + 7 * i, 50 - 2 * i
        Image.fromarray(_rgb(h, w, seed=i)).save(tmp_path / f"img{i:02d}.png")
        lines.append(f"img{i:02d}.png")
        if i == 3:
            (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
            lines.append("corrupt.jpg")
        if i == 6:
            lines.append("missing.png")
        if i == 8:
            (tmp_path / "empty.png").write_bytes(b"")
            lines.append("empty.png")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return open_source(tmp_path / "list.txt")


def _run(loader: ImageLoader) -> tuple[list[str], torch.Tensor, dict[str, str], list[Batch]]:
    batches = list(loader)
    ids = [it.id for b in batches for it in b.items]
    failures = {it.id: reason for b in batches for it, reason in b.failures}
    pixels = torch.cat([b.pixels for b in batches])
    return ids, pixels, failures, batches


@pytest.mark.parametrize("crop", ["none", "random"])
def test_loader_every_item_once_and_independent_of_workers(mixed_source, crop):
    recipe = Recipe(size=(24, 24), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop=crop)
    reference = None
    for batch_size, workers in [(4, 0), (4, 3), (1, 2), (64, 3), (5, 1)]:
        loader = ImageLoader(mixed_source, recipe, batch_size=batch_size, num_workers=workers, seed=1)
        ids, pixels, failures, batches = _run(loader)
        assert len(batches) == len(loader)
        for b in batches:
            assert b.pixels.shape == (len(b.items), 3, 24, 24)
            assert len(b.items) + len(b.failures) <= batch_size
        assert sorted(ids + list(failures)) == sorted(it.id for it in mixed_source)
        assert set(ids).isdisjoint(failures)
        # source order is kept
        order = [it.id for it in mixed_source]
        assert ids == [i for i in order if i in set(ids)]
        if reference is None:
            reference = (ids, pixels, failures)
        else:
            assert ids == reference[0] and failures == reference[2]
            assert torch.equal(pixels, reference[1])
    ids, _, failures = reference
    assert set(failures) == {"corrupt.jpg", "missing.png", "empty.png"}
    assert "file not found" in failures["missing.png"]
    assert "empty file" in failures["empty.png"]
    assert len(ids) == 11


def test_loader_matches_vdna_dataset(mixed_source, capsys):
    recipe = Recipe(size=(32, 32), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    good = [it for it in mixed_source if it.id.startswith("img")]
    ref = vdna_im.ResizeDataset(
        file_paths=[it.uri for it in good],
        size=(32, 32),
        norm_mean=list(IMAGENET_MEAN),
        norm_std=list(IMAGENET_STD),
    )
    expected = torch.stack([ref[i] for i in range(len(good))])
    _, pixels, _, _ = _run(ImageLoader(mixed_source, recipe, batch_size=3, num_workers=2))
    assert torch.equal(pixels, expected)


def test_loader_arrays_with_bad_entries_and_items_subset():
    arrays = [_rgb(10, 12), np.zeros((10, 10, 2), np.uint8), _rgb(8, 8).astype(np.float32), _rgb(9, 7)]
    src = open_source(arrays)
    recipe = Recipe(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    ids, pixels, failures, _ = _run(ImageLoader(src, recipe, batch_size=2, num_workers=2))
    assert ids == ["array:00000000", "array:00000003"]
    assert set(failures) == {"array:00000001", "array:00000002"}
    assert "shape" in failures["array:00000001"] and "dtype" in failures["array:00000002"]
    shard_ids, _, _, _ = _run(ImageLoader(src, recipe, batch_size=2, num_workers=0, items=src.shard(2, 1)))
    assert shard_ids == ["array:00000003"]


def test_loader_all_failed_batch_and_early_stop():
    src = open_source([np.zeros((3, 3), np.float32)] * 3 + [_rgb(6, 6)] * 20)
    recipe = Recipe(size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    first = next(iter(ImageLoader(src, recipe, batch_size=3, num_workers=2)))
    assert first.pixels.shape == (0, 3, 8, 8) and len(first.failures) == 3
    loader = ImageLoader(src, recipe, batch_size=2, num_workers=2, prefetch=4)
    it = iter(loader)
    next(it)
    it.close()  # stopping early must not hang on the read-ahead


def test_global_truncated_flag_is_reported(monkeypatch, caplog):
    from PIL import ImageFile

    import neuroprint.io.decode as dec

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    monkeypatch.setattr(dec, "_warned_truncated_flag", False)
    data = _encode(Image.fromarray(_rgb(64, 64)), "PNG")
    with caplog.at_level("WARNING", logger="neuroprint.io.decode"):
        decode_image(data[: len(data) // 2])
    assert "LOAD_TRUNCATED_IMAGES" in caplog.text


def test_loader_segments_equal_one_loader_per_segment_and_read_ahead_crosses_them(mixed_source):
    """A worker streams its shards through one loader: no batch crosses a segment, the batches equal one
    loader per segment (good and failed items alike, ragged and empty segments), and the read-ahead
    window runs on into the next segment while the consumer holds the last batch of one."""
    recipe = Recipe(size=(16, 16), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop="random")
    items = mixed_source.item_list()
    cuts = [0, 5, 5, 12, len(items)]  # segments of 5, 0, 7 and the rest
    segments = [items[a:b] for a, b in zip(cuts, cuts[1:])]
    for workers in (0, 2):
        streamed = ImageLoader(
            mixed_source, recipe, batch_size=3, num_workers=workers, seed=4, segments=segments
        )
        assert len(streamed) == sum(-(-len(s) // 3) for s in segments)
        got = list(streamed)
        want = [
            b
            for s in segments
            for b in ImageLoader(mixed_source, recipe, batch_size=3, num_workers=workers, seed=4, items=s)
        ]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert [it.id for it in g.items] == [it.id for it in w.items]
            assert [(it.id, r) for it, r in g.failures] == [(it.id, r) for it, r in w.failures]
            assert torch.equal(g.pixels, w.pixels) and g.sizes == w.sizes
    with pytest.raises(ValueError, match="items or segments"):
        ImageLoader(mixed_source, recipe, batch_size=3, num_workers=0, items=segments[0], segments=segments)

    class Counting(type(mixed_source)):
        def read(self, item):
            seen.add(item.id)
            return super().read(item)

    import time

    seen: set = set()
    src = mixed_source
    src.__class__ = Counting  # the same source, its reads recorded
    first, second = items[:6], items[6:]
    it = iter(ImageLoader(src, recipe, batch_size=3, num_workers=2, prefetch=3, segments=[first, second]))
    next(it), next(it)  # the first segment's two batches: the window has reached the second's first items
    deadline = time.monotonic() + 10
    while not seen & {x.id for x in second} and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen & {x.id for x in second}, "the read-ahead stopped at the end of the first segment"
    it.close()
