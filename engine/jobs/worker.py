"""A job's shard worker: the decoder, the backbone and the parts, built once; shards in, (rows, state) out.

The worker knows no part by name (`neuroprint.jobs.parts`): it decodes a shard's items in order, runs the
backbone when the job has one, asks each part for its columns and, at the end, for its state.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..io.decode import DEFAULT_MAX_PIXELS, Batch, ImageLoader
from .parts import union_of_states

__all__ = ["DECODERS", "ShardSpec", "ShardWorker", "make_loader", "resolve_decoder"]

DECODERS = ("auto", "pil", "dali")
BASE_FIELDS = ("id", "uri", "shard", "status", "error", "width", "height")


@dataclass
class ShardSpec:
    """Everything a worker needs to compute any shard of a job (picklable, for Ray actors)."""

    source: object
    extractor: str | None  # None: no backbone (parts that read decoded images only)
    weights: object
    layers: list
    device: str
    dtype: torch.dtype
    compile: bool
    seed: int
    recipe: object
    parts: list  # neuroprint.jobs.parts.Part, configured and prepared on the driver, not yet bound
    batch_size: int
    num_workers: int
    decoder: str = "pil"  # "pil" or "dali" (resolved by the job)
    max_pixels: int = DEFAULT_MAX_PIXELS  # images above it are failure rows, not decoded (0: no limit)


MALLOC_ARENAS = 2


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas (unless MALLOC_ARENA_MAX is set): each new decode thread otherwise gets
    an arena of its own whose freed pages stay resident, and a job's RSS grew with the images it decoded
    (hashes job, 20,000 images: 1,676 MiB peak against 711 MiB with 2 arenas, the same images/s)."""
    import os
    import sys

    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, MALLOC_ARENAS)  # M_ARENA_MAX
    except (OSError, AttributeError):  # another libc (musl): nothing to cap
        pass


def resolve_decoder(decoder: str, dev: torch.device) -> str:
    """'auto' is DALI on CUDA when DALI is installed, else PIL (DALI's CPU pipeline is slower than PIL's)."""
    from .._errors import NeuroprintError
    from ..io import dali as _dali

    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; expected one of {', '.join(DECODERS)}")
    if decoder == "auto":
        return "dali" if dev.type == "cuda" and _dali.is_available() else "pil"
    if decoder == "dali" and not _dali.is_available():
        raise NeuroprintError(
            "decoder 'dali' needs NVIDIA DALI: pip install 'neuroprint[dali]' (or the DALI build for your CUDA)"
        )
    return decoder


def make_loader(
    decoder,
    source,
    recipe,
    *,
    batch_size,
    num_workers,
    seed,
    dev,
    items=None,
    max_pixels=DEFAULT_MAX_PIXELS,
    segments=None,
):
    """The job's decoder over ``items`` (default: the whole source), or over ``segments`` one after the
    other (PIL only: `ImageLoader`), yielding ``Batch`` objects in order."""
    if decoder == "dali":
        if segments is not None:
            raise ValueError("the DALI loader reads one shard at a time (no segments)")
        from ..io.dali import DaliImageLoader

        device_id = None
        if dev.type == "cuda":
            device_id = dev.index if dev.index is not None else torch.cuda.current_device()
        return DaliImageLoader(
            source,
            recipe,
            batch_size=batch_size,
            num_threads=num_workers,
            device_id=device_id,
            seed=seed,
            items=items,
            max_pixels=max_pixels,
        )
    return ImageLoader(
        source,
        recipe,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        items=items,
        pin_memory=dev.type == "cuda",
        max_pixels=max_pixels,
        segments=segments,
    )


class PartsLoader(ImageLoader):
    """The PIL loader for parts that read decoded images: each batch also carries ``decoded`` (the images
    as decoded, when a part needs them) and ``per_image[name]`` (each part's ``per_image`` values, computed
    in the decode threads right after decoding, so a full-size image lives only until then)."""

    def __init__(self, source, recipe, *, need_pixels: bool, need_decoded: bool, per_image: dict, **kwargs):
        super().__init__(source, recipe, **kwargs)
        self.need_pixels, self.need_decoded, self.fns = need_pixels, need_decoded, dict(per_image)

    def _prepare(self, item, img):
        pixels = super()._prepare(item, img) if self.need_pixels else None
        values = {name: fn(img) for name, fn in self.fns.items()}
        return pixels, img if self.need_decoded else None, values

    def _collate(self, chunk, results) -> Batch:
        items, tensors, decoded, failures, sizes = [], [], [], [], []
        per_image = {name: [] for name in self.fns}
        for item, (got, info) in zip(chunk, results):
            if got is None:
                failures.append((item, info))
                continue
            items.append(item)
            tensors.append(got[0])
            decoded.append(got[1])
            for name in self.fns:
                per_image[name].append(got[2][name])
            sizes.append(info)
        pixels = torch.stack(tensors) if self.need_pixels and tensors else torch.zeros(0)
        batch = Batch(items=items, pixels=pixels, failures=failures, sizes=sizes)
        batch.decoded, batch.per_image = decoded, per_image
        return batch


class ShardWorker:
    """Builds the decoder, the backbone and the parts once; computes shards into (rows, state, failed)."""

    def __init__(self, spec: ShardSpec, built=None):
        from ..stats.profile import _CACHE, resolve_device

        limit_malloc_arenas()
        self.spec, self.source = spec, spec.source
        self.dev = resolve_device(spec.device)
        if built is None and spec.extractor is None:
            built = (None, None)
        elif built is None:
            built = _CACHE.get(
                spec.extractor,
                weights=spec.weights,
                layers=spec.layers,
                device=self.dev,
                dtype=spec.dtype,
                seed=spec.seed,
                compile=spec.compile,
            )
        self.ex, self.model = built
        self._shared = {}
        self.parts = list(spec.parts)
        for part in self.parts:
            part.bind(self)
        self.schema = row_schema([f for part in self.parts for f in part.fields()])
        self._per_image = {p.name: p.per_image for p in self.parts if p.per_image is not None}
        self._decoded = any("decoded" in p.needs for p in self.parts)
        self._dali = None  # built once (its pipeline too) and pointed at each shard's items

    def shared(self, key, build):
        """One object per worker for ``key`` (e.g. a model two parts read), built on first use."""
        if key not in self._shared:
            self._shared[key] = build()
        return self._shared[key]

    def _streams(self) -> bool:
        """Whether several shards can go through one loader (the PIL loaders; DALI runs shard by shard)."""
        return bool(self._per_image or self._decoded) or self.spec.decoder != "dali"

    def _loader(self, shard_items=None, segments=None):
        spec = self.spec
        if self._per_image or self._decoded:
            return PartsLoader(
                spec.source,
                spec.recipe,
                need_pixels=self.model is not None,
                need_decoded=self._decoded,
                per_image=self._per_image,
                batch_size=spec.batch_size,
                num_workers=spec.num_workers,
                seed=spec.seed,
                items=shard_items,
                segments=segments,
                pin_memory=self.dev.type == "cuda",
                max_pixels=spec.max_pixels,
            )
        if spec.decoder == "dali" and self._dali is not None:
            self._dali.items = list(shard_items)
            return self._dali
        loader = make_loader(
            spec.decoder,
            spec.source,
            spec.recipe,
            batch_size=spec.batch_size,
            num_workers=spec.num_workers,
            seed=spec.seed,
            dev=self.dev,
            items=shard_items,
            segments=segments,
            max_pixels=spec.max_pixels,
        )
        if spec.decoder == "dali":
            self._dali = loader
        return loader

    def run(self, k: int, shard_items, progress=None, failed_before: int = 0):
        """(rows, state, failed) of shard ``k``."""
        return self._shard(k, shard_items, self._loader(shard_items), progress, failed_before)

    def run_stream(self, shards, progress=None, failed_before: int = 0):
        """``(k, rows, state, failed)`` for each ``(k, items)`` of ``shards``, in order, the same as `run`
        shard by shard. One loader reads them all (`ImageLoader` segments), so the next shard is decoded
        while the caller commits the last one: the pipeline does not drain at every shard's end (DALI
        goes shard by shard)."""
        shards = list(shards)
        if not self._streams():
            for k, items in shards:
                table, state, failed = self.run(k, items, progress, failed_before)
                failed_before += failed
                yield k, table, state, failed
            return
        batches = iter(self._loader(segments=[items for _, items in shards]))
        bs = self.spec.batch_size
        for k, items in shards:
            own = itertools.islice(batches, -(-len(items) // bs))  # this shard's batches, none beyond
            table, state, failed = self._shard(k, items, own, progress, failed_before)
            failed_before += failed
            yield k, table, state, failed

    def _shard(self, k, shard_items, batches, progress, failed_before):
        import pyarrow as pa

        for part in self.parts:
            part.start_shard()
        rows = {name: [] for name in self.schema.names}
        extra = [n for n in self.schema.names if n not in BASE_FIELDS]
        failed = 0
        with torch.inference_mode():  # entered per shard: a generator must not hold the mode across yields
            for batch in batches:
                if batch.items:
                    feats = None
                    if self.model is not None:
                        feats = self.model(batch.pixels.to(self.dev, non_blocking=True))
                    cols = {}
                    for part in self.parts:
                        cols.update(part.columns(batch, feats))
                    for i, (item, size) in enumerate(zip(batch.items, batch.sizes)):
                        _append(rows, (item.id, item.uri, k, "ok", None, *size), extra, cols, i)
                for item, reason in batch.failures:
                    _append(rows, (item.id, item.uri, k, "failed", reason, None, None), extra, None, 0)
                    failed += 1
                if progress is not None:
                    progress.update(len(batch.items) + len(batch.failures))
                    if failed:
                        progress.set_postfix(failed=failed_before + failed)
        # Rows keep the source order within the shard.
        order = {it.id: i for i, it in enumerate(shard_items)}
        perm = sorted(range(len(rows["id"])), key=lambda i: order[rows["id"][i]])
        table = pa.table({n: [rows[n][i] for i in perm] for n in self.schema.names}, schema=self.schema)
        state = union_of_states(self.parts, "shard_state")
        return table, state, failed


def _append(rows, base, extra, cols, i) -> None:
    for name, value in zip(BASE_FIELDS, base):
        rows[name].append(value)
    for name in extra:
        rows[name].append(None if cols is None else cols[name][i])


def row_schema(fields):
    import pyarrow as pa

    base = [
        ("id", pa.string()),
        ("uri", pa.string()),
        ("shard", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
    names = [n for n, _ in fields]
    dup = sorted({n for n in names if names.count(n) > 1 or n in BASE_FIELDS})
    if dup:
        raise ValueError(f"job parts give the same column twice (or a base column): {', '.join(dup)}")
    return pa.schema(base + list(fields))
