"""DALI decoding: a drop-in alternative to :class:`~neuroprint.io.decode.ImageLoader` (optional dependency).

:class:`DaliImageLoader` reads each item's encoded bytes through ``source.read(item)``, feeds them to a
DALI pipeline (``external_source`` -> ``fn.decoders.image`` (RGB, EXIF orientation NOT applied, as in
the PIL path) -> square crop with ``fn.slice`` -> ``fn.resize`` (float output) -> clamp to [0, 255] ->
``fn.crop_mirror_normalize`` (``/ 255``, mean, std, CHW)) and yields the same :class:`Batch` objects as
ImageLoader: batch ``k`` covers items ``[k * batch_size, (k + 1) * batch_size)`` in order, every item is
either a row of ``pixels`` or a ``failures`` entry, ``sizes`` are the decoded (width, height).
With ``device_id`` set, decoding is DALI's "mixed" (nvJPEG) and ``pixels`` is a CUDA tensor.

Resize settings. "clean" (PIL's antialiased bicubic on float32 channels) maps to
``interp_type=INTERP_CUBIC, antialias=True, dtype=FLOAT`` (then clamp to [0, 255]): DALI's cubic is the
same Keys a=-0.5 kernel, widened by the scale when downsampling, as PIL does. INTERP_LANCZOS3 (max 0.31,
mean 9e-3), INTERP_LINEAR/TRIANGULAR (0.53, 1.3e-2) and INTERP_GAUSSIAN (0.63, 1.3e-2) are further off.

Tolerance measured against ``preprocess(decode_image(x))`` (CPU decoding, DALI 2.4.0) on generated
natural-like images (smooth colour gradients + sharp discs and rectangles + Gaussian noise), 16 sizes
from 1x1, 7x300 and 60x400 to 1000x300 and 800x800 (portrait, landscape, square), each as JPEG q90 and
PNG (32 files), ImageNet mean/std at 224x224 and mean=std=0.5 at 299x299, crops none/center/random:

- decoded pixels: identical (max abs difference 0) for baseline and progressive JPEG with 4:2:0, 4:2:2
  and 4:4:4 chroma, gray JPEG, and 8-bit PNG (RGB, gray, RGBA, LA, palette, 1-bit);
- normalised pixels, all files: **max abs difference 0.21, mean abs difference 1e-4 to 3e-4** (ImageNet
  std; 0.08 and 1e-4 with std 0.5); the worst single image (a 7-pixel crop upsampled 32x) has a mean of
  3.3e-3. The largest differences sit on the first and last 1-3 output rows and columns next to sharp
  edges: at the border PIL renormalises the filter weights over the pixels inside the image while DALI
  repeats the edge pixel. More than 3 pixels from the border the max is 0.06 (0.11 for the 32x upsample).
  For features and distances these differences are negligible.

The tests assert max <= 0.25 and mean <= 5e-4 (``MAX_ABS_TOLERANCE``, ``MEAN_ABS_TOLERANCE``).
"legacy_pytorch" (torch bilinear, no antialiasing, half-pixel centres) maps to ``INTERP_LINEAR`` with
``antialias=False``: max abs difference 2e-4 (float rounding).

Speed: on the CPU this loader is slower than the PIL ImageLoader (0.57x with 1 thread, 0.66x with 2
on a 2-core AMD EPYC, ``bench/bench_decode.py``): DALI's JPEG decoding is faster than PIL's, but its CPU
antialiased cubic resize is about half as fast as PIL's. Its use is the GPU ("mixed") path.

What goes to the PIL path (``decode_image`` + ``preprocess``, so that results stay the reference's):
arrays and ``.npy`` payloads, every format but JPEG and PNG (BMP, TIFF, WebP, PPM, ...), CMYK/YCCK
JPEGs, 16-bit PNGs (PIL scales them to 8 bits its own way), animated PNG/MPO, files whose header PIL
cannot parse (empty, text, corrupt headers: PIL then records the reason), and files without their end
marker (JPEG EOI / PNG IEND: truncated files, which PIL reports as truncated while DALI may decode them
partly). DALI raises for the whole batch when one file fails to decode; the batch is then retried one
item at a time and the items that fail alone go to the PIL path, which decodes them or records the
failure with its reason. A bad file never stops the loader. The random crop runs in DALI too: its
offsets are drawn in Python with exactly ImageLoader's per-item generator, so both crop the same window.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .._errors import DecodeError
from .decode import DEFAULT_MAX_PIXELS, Batch, _one_line, decode_image, preprocess
from .recipe import Recipe
from .sources import Item, Source, open_source

logger = logging.getLogger(__name__)

__all__ = ["MAX_ABS_TOLERANCE", "MEAN_ABS_TOLERANCE", "DaliImageLoader", "is_available"]

# Agreement with the PIL reference asserted by the tests (normalised pixels; see the module docstring).
MAX_ABS_TOLERANCE = 0.25
MEAN_ABS_TOLERANCE = 5e-4

_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TAIL = 64  # bytes searched for the end marker (files may carry a little trailing data)


def is_available() -> bool:
    """Whether DALI (``nvidia.dali``) can be imported."""
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.fn  # noqa: F401
    except Exception:  # ImportError, or a broken install raising anything else at import
        return False
    return True


# ------------------------------------------------------------------------------------------- probing


def _probe(payload: object) -> tuple[int, int] | None:
    """(width, height) when DALI can decode ``payload`` exactly as PIL would; None sends it to PIL.

    Reads only the header (PIL's ``Image.open`` parses markers up to the image data) and the tail.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        return None
    data = bytes(payload) if not isinstance(payload, bytes) else payload
    if data.startswith(_JPEG_MAGIC):
        if data.rfind(b"\xff\xd9", max(0, len(data) - _TAIL)) < 0:
            return None  # no EOI: truncated; PIL says so
        want_format, modes = "JPEG", ("RGB", "L")
    elif data.startswith(_PNG_MAGIC):
        # IHDR is always the first chunk: byte 24 is the bit depth.
        if len(data) < 33 or data[12:16] != b"IHDR" or data[24] > 8:
            return None  # 16-bit: PIL's 8-bit conversion is its own
        if data.rfind(b"IEND", max(0, len(data) - _TAIL)) < 0:
            return None  # truncated
        want_format, modes = "PNG", ("RGB", "RGBA", "L", "LA", "P", "1")
    else:
        return None
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a DecompressionBombWarning is PIL's to give, if it decodes
            with Image.open(io.BytesIO(data)) as img:
                if img.format != want_format or img.mode not in modes or getattr(img, "is_animated", False):
                    return None
                width, height = img.size
    except Exception:  # unreadable header, decompression bomb, ...: the PIL path gives the reason
        return None
    if width < 1 or height < 1:
        return None
    return int(width), int(height)


def _square_window(w: int, h: int, crop: str, rng: np.random.Generator | None) -> tuple[int, int, int, int]:
    """(y0, x0, height, width) of the crop that ``_decode._make_square`` takes, drawn the same way."""
    if crop == "none" or h == w:
        return 0, 0, h, w
    size = min(h, w)
    if crop == "center":
        return (h - size) // 2, (w - size) // 2, size, size
    assert rng is not None
    if h > w:
        return int(rng.integers(0, h - size)), 0, size, size
    return 0, int(rng.integers(0, w - size)), size, size


@dataclass
class _Prepared:
    item: Item
    payload: object = None  # what source.read returned
    window: tuple[int, int, int, int] | None = None  # set: DALI decodes it
    size: tuple[int, int] | None = None  # (width, height) from the header
    reason: str | None = None  # set: the read failed


# -------------------------------------------------------------------------------------------- loader


class DaliImageLoader:
    """Decode and preprocess a source in batches with NVIDIA DALI, in source order.

    Same iteration contract as :class:`~neuroprint.io.decode.ImageLoader`: ``Batch(items, pixels,
    failures, sizes)`` per ``batch_size`` consecutive items, failed items reported, never raised.
    ``num_threads`` (default: the usable cores) sizes DALI's thread pool and the PIL fallback pool.
    ``device_id=None`` runs on the CPU and yields CPU tensors; an int decodes with "mixed" (nvJPEG) on
    that GPU and yields CUDA tensors. ``seed`` drives the random crop exactly as in ImageLoader.
    """

    def __init__(
        self,
        source: Source | object,
        recipe: Recipe,
        *,
        batch_size: int,
        num_threads: int | None = None,
        device_id: int | None = None,
        seed: int = 0,
        items: Sequence[Item] | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_threads is None:
            try:
                num_threads = len(os.sched_getaffinity(0))
            except AttributeError:  # not on Linux
                num_threads = os.cpu_count() or 1
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        if not is_available():
            raise ImportError(
                "DALI is not installed: pip install nvidia-dali-cuda130 (or the build for your CUDA)"
            )
        self.source = source if isinstance(source, Source) else open_source(source)
        self.recipe = recipe
        self.batch_size = int(batch_size)
        self.num_threads = int(num_threads)
        self.device_id = None if device_id is None else int(device_id)
        self.seed = int(seed)
        self.items = list(self.source) if items is None else list(items)
        self.max_pixels = int(max_pixels)
        self._pipe = None
        self.device = torch.device("cpu") if self.device_id is None else torch.device("cuda", self.device_id)

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    # ------------------------------------------------------------------------------------- pipeline

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types
        from nvidia.dali import math as dmath

        recipe = self.recipe
        height, width = recipe.size
        gpu = self.device_id is not None
        crop = recipe.crop != "none"
        if recipe.resize == "clean":
            interp, antialias = types.INTERP_CUBIC, True
        elif recipe.resize == "legacy_pytorch":
            interp, antialias = types.INTERP_LINEAR, False
        else:
            raise ValueError(f"unknown resize mode {recipe.resize!r}")

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=self.num_threads,
            device_id=self.device_id,
            prefetch_queue_depth=1,  # fed batch by batch with feed_input, run right after
            exec_dynamic=True,
        )
        def pipe():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1, no_copy=False)
            images = fn.decoders.image(
                encoded,
                device="mixed" if gpu else "cpu",
                output_type=types.RGB,
                adjust_orientation=False,  # the PIL path (and vdna) ignore EXIF orientation
                jpeg_fancy_upsampling=True,  # libjpeg's default, which PIL uses (matters for nvJPEG)
            )
            if crop:
                anchor = fn.external_source(name="anchor", dtype=types.INT32, ndim=1)
                shape = fn.external_source(name="shape", dtype=types.INT32, ndim=1)
                images = fn.slice(
                    images, anchor, shape, axes=[0, 1], normalized_anchor=False, normalized_shape=False
                )
            images = fn.resize(
                images,
                size=[height, width],
                mode="stretch",
                interp_type=interp,
                antialias=antialias,
                dtype=types.FLOAT,
            )
            images = dmath.clamp(images, 0.0, 255.0)
            return fn.crop_mirror_normalize(
                images,
                dtype=types.FLOAT,
                output_layout="CHW",
                mean=[255.0 * m for m in recipe.mean],
                std=[255.0 * s for s in recipe.std],
            )

        p = pipe()
        p.build()
        return p

    def _run_dali(self, prepared: list[_Prepared]) -> torch.Tensor:
        """Decode ``prepared`` (all DALI-routed) in one pipeline run -> float32 [n, 3, H, W]."""
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if self._pipe is None:
            self._pipe = self._build()
        p = self._pipe
        p.feed_input("encoded", [np.frombuffer(x.payload, dtype=np.uint8) for x in prepared])
        if self.recipe.crop != "none":
            p.feed_input("anchor", [np.array(x.window[:2], dtype=np.int32) for x in prepared])
            p.feed_input("shape", [np.array(x.window[2:], dtype=np.int32) for x in prepared])
        (out,) = p.run()
        height, width = self.recipe.size
        pixels = torch.empty((len(prepared), 3, height, width), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        feed_ndarray(out.as_tensor(), pixels, cuda_stream=stream)
        return pixels

    # ----------------------------------------------------------------------------------- per item

    def _rng_for(self, item: Item) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(item.id.encode("utf-8"))])

    def _prepare(self, item: Item) -> _Prepared:
        try:
            payload = self.source.read(item)
        except DecodeError as e:
            return _Prepared(item, reason=_one_line(e))
        except Exception as e:  # a read error is this item's failure, as in ImageLoader
            return _Prepared(item, reason=f"{type(e).__name__}: {_one_line(e)}")
        prep = _Prepared(item, payload=payload)
        size = _probe(payload)
        if size is not None and self.max_pixels and size[0] * size[1] > self.max_pixels:
            size = None  # the PIL path records it as over the limit, without decoding it
        if size is not None:
            w, h = size
            rng = self._rng_for(item) if self.recipe.crop == "random" else None
            prep.window = _square_window(w, h, self.recipe.crop, rng)
            prep.size = size
        return prep

    def _pil(self, prep: _Prepared) -> tuple[torch.Tensor | None, str | tuple[int, int]]:
        """The reference path, with ImageLoader's failure reasons."""
        if prep.reason is not None:
            return None, prep.reason
        try:
            img = decode_image(prep.payload, max_pixels=self.max_pixels)
            rng = self._rng_for(prep.item) if self.recipe.crop == "random" else None
            return preprocess(img, self.recipe, rng), (int(img.shape[1]), int(img.shape[0]))
        except DecodeError as e:
            reason = _one_line(e)
        except Exception as e:
            reason = f"{type(e).__name__}: {_one_line(e)}"
        logger.debug("skipping %s: %s", prep.item.uri, reason)
        return None, reason

    def _decode_chunk(self, chunk: list[_Prepared], pool: ThreadPoolExecutor) -> Batch:
        on_dali = [i for i, x in enumerate(chunk) if x.window is not None]
        dali_set = set(on_dali)
        to_pil = [i for i in range(len(chunk)) if i not in dali_set]
        pil_futures = {i: pool.submit(self._pil, chunk[i]) for i in to_pil}  # runs while DALI decodes
        rows: dict[int, torch.Tensor] = {}
        dali_pixels = None  # the whole DALI output, when the batch run succeeded
        if on_dali:
            try:
                dali_pixels = self._run_dali([chunk[i] for i in on_dali])
                rows.update(zip(on_dali, dali_pixels))
            except Exception as e:  # one bad file fails DALI's whole batch: retry one by one
                logger.debug(
                    "DALI batch failed (%s); retrying its %d items one by one", _one_line(e), len(on_dali)
                )
                for i in on_dali:
                    try:
                        rows[i] = self._run_dali([chunk[i]])[0]
                    except Exception as e1:
                        logger.debug(
                            "DALI cannot decode %s (%s); using PIL", chunk[i].item.uri, _one_line(e1)
                        )
                        pil_futures[i] = pool.submit(self._pil, chunk[i])
        ok_items, tensors, failures, sizes = [], [], [], []
        for i, prep in enumerate(chunk):
            if i in rows:
                ok_items.append(prep.item)
                tensors.append(rows[i])
                sizes.append(prep.size)
                continue
            tensor, info = pil_futures[i].result()
            if tensor is None:
                failures.append((prep.item, info))
            else:
                ok_items.append(prep.item)
                tensors.append(tensor.to(self.device, non_blocking=True))
                sizes.append(info)
        height, width = self.recipe.size
        if dali_pixels is not None and len(tensors) == len(on_dali):
            pixels = dali_pixels  # every decoded item came from DALI, in order: no copy
        elif tensors:
            pixels = torch.stack(tensors)
        else:
            pixels = torch.empty((0, 3, height, width), dtype=torch.float32, device=self.device)
        return Batch(items=ok_items, pixels=pixels, failures=failures, sizes=sizes)

    def __iter__(self) -> Iterator[Batch]:
        items, bs = self.items, self.batch_size
        if not items:
            return
        # One thread reads and probes the next batch while the current one decodes; the pool runs the
        # PIL fallback next to DALI's own threads.
        reader = ThreadPoolExecutor(1, thread_name_prefix="neuroprint-dali-read")
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="neuroprint-dali-pil")
        try:
            pending = reader.submit(lambda c: [self._prepare(it) for it in c], items[0:bs])
            for start in range(0, len(items), bs):
                chunk = pending.result()
                nxt = items[start + bs : start + 2 * bs]
                if nxt:
                    pending = reader.submit(lambda c: [self._prepare(it) for it in c], nxt)
                yield self._decode_chunk(chunk, pool)
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
