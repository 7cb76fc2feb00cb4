"""PIL decoding and the reference preprocessing, plus a threaded batch loader over a Source.

The reference is vdna 0.1.1's ``ResizeDataset.__getitem__`` (itself clean-fid's): for every image that
vdna can read, ``preprocess(decode_image(x), recipe)`` is bit-identical to vdna's tensor. Deliberate
differences, all on inputs vdna mishandles or rejects:

- 16-bit and 32-bit integer images (PIL modes ``I;16*`` and ``I``) are scaled to 8 bits
  (``round(v * 255 / 65535)``); vdna's ``convert("RGB")`` clips them to 255, which turns most of the
  image white.
- Grayscale (HxW, HxWx1) and RGBA (HxWx4) arrays are accepted: gray is replicated to three channels
  and alpha is dropped, as PIL's ``convert("RGB")`` does for files. vdna crashes on gray arrays and on
  RGBA arrays with ``legacy_pytorch``; with ``clean`` it also drops alpha, so that case matches.
- Non-square network sizes: "clean" resizes to (W, H) in PIL order. vdna passes (H, W) to PIL and then
  reshapes, which scrambles the pixels; every vdna network is square, so no vdna result changes.
- Truncated files are errors. vdna would raise too, unless some other library set PIL's global
  ``ImageFile.LOAD_TRUNCATED_IMAGES``, in which case both silently decode a partly grey image.

EXIF orientation is deliberately NOT applied, because vdna does not apply it: a photo stored sideways
with an orientation tag is fingerprinted sideways, exactly as vdna does.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, UnidentifiedImageError

from .._errors import DecodeError
from .recipe import Recipe
from .sources import Item, Source, open_source

logger = logging.getLogger(__name__)

__all__ = ["Batch", "ImageLoader", "decode_image", "preprocess"]

_NPY_MAGIC = b"\x93NUMPY"
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I")


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------------------------- decoding


from ._limits import DEFAULT_MAX_PIXELS  # noqa: E402 - re-exported here (images above it are failures)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if max_pixels and width * height > max_pixels:
        raise DecodeError(
            f"image of {width}x{height} ({width * height / 1e6:.1f} MP) is over the max_pixels limit "
            f"of {max_pixels / 1e6:g} MP; not decoded (raise --max-pixels, or 0 for no limit)"
        )


def decode_image(
    payload: bytes | bytearray | memoryview | str | os.PathLike | np.ndarray,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode one payload to a uint8 HxWx3 RGB array.

    ``payload`` is the encoded file content (bytes), a path to a file, or an image array (uint8 HxW,
    HxWx1, HxWx3 or HxWx4). ``.npy`` content is read with ``allow_pickle=False`` and follows the array
    rules. Every failure raises :class:`DecodeError` with a one-line reason.

    PIL's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is honoured as currently set: an image
    over twice the limit is a DecodeError. The global setting is read, never changed here. Before that,
    an encoded image of more than ``max_pixels`` pixels (read from its header) is a DecodeError without
    being decoded; 0 disables the check.
    """
    if isinstance(payload, np.ndarray):
        return _array_to_rgb(payload)
    if isinstance(payload, (str, os.PathLike)):
        return _decode_path(Path(payload), max_pixels)
    if isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
        if not data:
            raise DecodeError("empty file (0 bytes)")
        if data.startswith(_NPY_MAGIC):
            return _array_to_rgb(_load_npy(io.BytesIO(data)))
        return _decode_pil(io.BytesIO(data), max_pixels)
    raise DecodeError(f"cannot decode a payload of type {type(payload).__name__}")


def _decode_path(path: Path, max_pixels: int) -> np.ndarray:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise DecodeError(f"is a directory, not an image file: {path}")
        if size == 0:
            raise DecodeError(f"empty file (0 bytes): {path}")
        with open(path, "rb") as f:
            if f.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
                f.seek(0)
                return _array_to_rgb(_load_npy(f))
            f.seek(0)
            return _decode_pil(f, max_pixels)
    except FileNotFoundError:
        raise DecodeError(f"file not found: {path}") from None
    except PermissionError:
        raise DecodeError(f"permission denied: {path}") from None
    except OSError as e:
        raise DecodeError(f"cannot read {path}: {_one_line(e.strerror or e)}") from None


def _load_npy(f) -> np.ndarray:
    try:
        return np.load(f, allow_pickle=False)
    except Exception as e:  # a corrupt or object-dtype .npy: never unpickle, report it
        raise DecodeError(f"unreadable .npy array: {_one_line(e)}") from None


_warned_truncated_flag = False


def _warn_if_truncated_images_allowed() -> None:
    # The flag is PIL-global and read at load time, so it cannot be switched off per call from threads;
    # say once that truncated files will now decode (partly grey) instead of failing.
    global _warned_truncated_flag
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated_flag:
        _warned_truncated_flag = True
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by other code): truncated files will decode "
            "as partly grey images instead of being reported as failures"
        )


def _decode_pil(f, max_pixels: int) -> np.ndarray:
    _warn_if_truncated_images_allowed()
    try:
        with Image.open(f) as img:
            _check_pixels(*img.size, max_pixels)  # the header is parsed; no pixel is decoded yet
            # load() raises on truncated data as long as LOAD_TRUNCATED_IMAGES stays False (PIL's default);
            # convert() would load lazily too, but an explicit load keeps the error cause unambiguous.
            img.load()
            return _pil_to_rgb(img)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError(f"image too large (decompression-bomb guard): {_one_line(e)}") from None
    except UnidentifiedImageError:
        raise DecodeError("not a recognised image format") from None
    except OSError as e:
        msg = _one_line(e)
        if "truncated" in msg.lower():
            raise DecodeError(f"truncated image data: {msg}") from None
        raise DecodeError(f"corrupt image data: {msg}") from None
    except Exception as e:  # PIL plugins raise SyntaxError, ValueError, struct.error, EOFError, ...
        raise DecodeError(f"corrupt image data: {type(e).__name__}: {_one_line(e)}") from None


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        v = np.asarray(img).astype(np.int64)
        if v.ndim != 2:
            raise DecodeError(f"unsupported {mode} image with shape {v.shape}")
        v8 = ((np.clip(v, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(v8[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        # The transparency entry changes nothing in the RGB pixels, only triggers a PIL warning per image.
        img.info.pop("transparency")
    if mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img)


def _array_to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.dtype != np.uint8:
        raise DecodeError(f"array has dtype {arr.dtype}; expected uint8")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise DecodeError(f"array has shape {arr.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DecodeError(f"array has shape {arr.shape}; an image needs at least one pixel")
    if arr.shape[2] == 1:
        return np.repeat(arr, 3, axis=2)
    return arr if arr.shape[2] == 3 else arr[:, :, :3]


# ------------------------------------------------------------------------------------------ preprocessing


def _make_square(img: np.ndarray, crop: str, rng: np.random.Generator | None) -> np.ndarray:
    h, w = img.shape[:2]
    if crop == "none" or h == w:
        return img
    size = min(h, w)
    if crop == "center":
        return img[(h - size) // 2 : (h + size) // 2, (w - size) // 2 : (w + size) // 2]
    # vdna draws from [0, long - short) (high end excluded), so the last offset is never chosen; kept
    # so that a seeded legacy numpy RNG reproduces vdna's crops.
    draw = np.random.randint if rng is None else rng.integers
    if h > w:
        off_h, off_w = int(draw(0, h - size)), 0
    else:
        off_h, off_w = 0, int(draw(0, w - size))
    return img[off_h : off_h + size, off_w : off_w + size]


def _resize_clean(img: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.empty((3, height, width), dtype=np.float32)
    for c in range(3):
        channel = Image.fromarray(img[:, :, c].astype(np.float32))  # mode "F"
        resized = channel.resize((width, height), resample=Image.BICUBIC)
        np.clip(np.asarray(resized), 0, 255, out=out[c])
    return out


def _resize_legacy_pytorch(img: np.ndarray, height: int, width: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))[None]
    out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)[0].numpy()
    return np.clip(out, 0, 255, out=out)


def preprocess(img: np.ndarray, recipe: Recipe, rng: np.random.Generator | None = None) -> torch.Tensor:
    """uint8 HxWx3 RGB -> float32 [3, H, W], bit-identical to vdna's ``ResizeDataset.__getitem__``.

    Square crop (``recipe.crop``), resize, clip to [0, 255], ``/ 255``, then ``(x - mean) / std`` with
    float32 mean and std, in that order, as torchvision's ToTensor and Normalize do. ``rng`` drives the
    random crop; ``None`` uses numpy's global legacy RNG, as vdna does.
    """
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        raise ValueError(f"preprocess expects a uint8 HxWx3 array, got {getattr(img, 'shape', type(img))}")
    height, width = recipe.size
    img = _make_square(img, recipe.crop, rng)
    if recipe.resize == "clean":
        x = _resize_clean(img, height, width)
    elif recipe.resize == "legacy_pytorch":
        x = _resize_legacy_pytorch(img, height, width)
    else:  # Recipe validates its modes; this guards a future mode added there but not here
        raise ValueError(f"unknown resize mode {recipe.resize!r}")
    # Scaling and normalisation run in numpy: float32 division and subtraction are correctly rounded in
    # numpy and torch alike, so the result is bit-identical, and numpy starts no OpenMP team, which torch
    # would do from every decoding thread (oversubscribing the cores the model needs).
    x /= np.float32(255)
    x -= np.asarray(recipe.mean, dtype=np.float32).reshape(3, 1, 1)
    x /= np.asarray(recipe.std, dtype=np.float32).reshape(3, 1, 1)
    return torch.from_numpy(x)


# ------------------------------------------------------------------------------------------------ loader


@dataclass
class Batch:
    """One batch of consecutive source items; every item is in exactly one of ``pixels`` or ``failures``."""

    items: list[Item]  # the items whose rows are in ``pixels``, in order
    pixels: torch.Tensor  # float32 [len(items), 3, H, W]
    failures: list[tuple[Item, str]] = field(default_factory=list)  # (item, one-line reason)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # decoded (width, height) of each item


class ImageLoader:
    """Decode and preprocess a source in batches, in source order, with a pool of threads.

    Batch ``k`` covers source items ``[k * batch_size, (k + 1) * batch_size)``; failed items are left out
    of ``pixels`` and reported in ``failures``, so a bad file never stops a job. Threads suffice
    because PIL, numpy and torch release the GIL while decoding and resizing. Read-ahead is bounded to
    the current batch plus ``prefetch`` items (default: two batches). The output does not depend on ``num_workers`` or
    ``batch_size``: the random crop draws from a generator seeded by ``(seed, item id)``.

    ``segments`` (instead of ``items``: a sequence of item sequences, e.g. a worker's next shards) are
    read one after the other, no batch crossing from one into the next, and the read-ahead window runs
    on into the next segment: the decode threads keep working while the consumer finishes a segment
    (commits a shard). A segment's items are made only as the window reaches them.
    """

    def __init__(
        self,
        source: Source | object,
        recipe: Recipe,
        *,
        batch_size: int,
        num_workers: int,
        seed: int = 0,
        items: Sequence[Item] | None = None,
        pin_memory: bool = False,
        prefetch: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        segments: Sequence[Sequence[Item]] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.source = source if isinstance(source, Source) else open_source(source)
        self.recipe = recipe
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        # ``items`` lets a runner load one shard of the source, ``segments`` several shards in a row.
        if segments is not None:
            if items is not None:
                raise ValueError("give items or segments, not both")
            self.items, self.segments = None, list(segments)
        else:
            self.items = list(self.source) if items is None else list(items)
            self.segments = [self.items]
        # Pinned host memory needs an accelerator runtime; without one it only costs an error.
        self.pin_memory = bool(pin_memory) and torch.cuda.is_available()
        self.prefetch = max(self.batch_size, int(prefetch) if prefetch else 2 * self.batch_size)
        if max_pixels < 0:
            raise ValueError(f"max_pixels must be >= 0 (0: no limit), got {max_pixels}")
        self.max_pixels = int(max_pixels)

    def __len__(self) -> int:
        return sum(-(-len(seg) // self.batch_size) for seg in self.segments)

    def _batch_lengths(self) -> Iterator[int]:
        bs = self.batch_size
        for seg in self.segments:
            n = len(seg)
            yield from (min(bs, n - start) for start in range(0, n, bs))

    def _rng_for(self, item: Item) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(item.id.encode("utf-8"))])

    def load(self, item: Item) -> tuple[torch.Tensor | None, str | tuple[int, int]]:
        """One item -> (pixels, (width, height)) or (None, reason)."""
        try:
            img = decode_image(self.source.read(item), max_pixels=self.max_pixels)
            return self._prepare(item, img), (int(img.shape[1]), int(img.shape[0]))
        except DecodeError as e:
            reason = _one_line(e)
        except Exception as e:  # one bad item must never end the job; the reason goes to its failure row
            reason = f"{type(e).__name__}: {_one_line(e)}"
        logger.debug("skipping %s: %s", item.uri, reason)
        return None, reason

    def _prepare(self, item: Item, img: np.ndarray):
        """What a decoded image becomes in its batch: here the network's input pixels."""
        rng = self._rng_for(item) if self.recipe.crop == "random" else None
        return preprocess(img, self.recipe, rng)

    def _collate(self, chunk: list[Item], results: list[tuple[torch.Tensor | None, object]]) -> Batch:
        ok_items, tensors, failures, sizes = [], [], [], []
        for item, (tensor, info) in zip(chunk, results):
            if tensor is None:
                failures.append((item, info))
            else:
                ok_items.append(item)
                tensors.append(tensor)
                sizes.append(info)
        height, width = self.recipe.size
        pixels = torch.empty(
            (len(tensors), 3, height, width), dtype=torch.float32, pin_memory=self.pin_memory
        )
        if tensors:
            torch.stack(tensors, out=pixels)
        return Batch(items=ok_items, pixels=pixels, failures=failures, sizes=sizes)

    def __iter__(self) -> Iterator[Batch]:
        feed = itertools.chain.from_iterable(self.segments)  # items in order, made as they are reached
        if self.num_workers == 0:
            for n in self._batch_lengths():
                chunk = list(itertools.islice(feed, n))
                yield self._collate(chunk, [self.load(it) for it in chunk])
            return
        total = sum(len(seg) for seg in self.segments)
        pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="neuroprint-decode")
        try:
            pending: deque[tuple[Item, Future]] = deque()
            submitted = consumed = 0
            for n in self._batch_lengths():
                # Keep the window full: this batch plus up to ``prefetch`` items beyond it.
                for item in itertools.islice(
                    feed, max(0, min(total, consumed + n + self.prefetch) - submitted)
                ):
                    pending.append((item, pool.submit(self.load, item)))
                    submitted += 1
                got = [pending.popleft() for _ in range(n)]
                consumed += n
                yield self._collate([item for item, _ in got], [fut.result() for _, fut in got])
        finally:
            # A consumer that stops early must not wait for the read-ahead to finish decoding.
            pool.shutdown(wait=True, cancel_futures=True)
