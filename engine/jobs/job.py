"""Sharded, resumable jobs: one pass over the pixels writes per-image Parquet rows and dataset outputs.

Output directory::

    manifest.json            settings (and their digest), finished shards with their counts, summary
    shards.log               while the job runs: one JSON line per finished shard, appended (the manifest
                             is rewritten only when a run starts and when the job completes)
    ranges.json              histogram bin ranges, fixed at the first run so that a resume bins the same way
    rows/shard-00000.parquet one row per input item: id, uri, shard, status, error, width, height, and the
                             parts' columns (embedding, emd:NAME, phash, dhash, sharpness, fungi, ...)
    partials/merged.npz      the parts' exact merged state (integers in the narrowest dtype that holds them,
                             integers delta-coded and deflated, float64 moments stored; no pickle) and the
                             table of the shards folded into it
    partials/shard-00000.npz only for parts without a merged state (`Part.merged_state`): each shard's state
    <distribution>.json/.npz the dataset VDNAs
    failures.parquet         the items that could not be read, with their reasons
    call.json                written by `run_job` when the job completes: the digest of its call and of the
                             request it made, so that the same call answers in a new process without torch
    job.lock                 while a process runs the job: its pid, host and start time (neuroprint.jobs.lock)

The driver folds each shard's state into the parts as the shard arrives and writes the merged state
(``partials/merged.npz``, temporary file then rename) every ``checkpoint_every`` shards or
``checkpoint_seconds``, whichever comes first, and at the end: a shard counts as finished once its rows
are in place and its state is in a written checkpoint, whose own table of shards is the authority (a
crash loses at most the shards since the last checkpoint; they are redone, overwriting their rows), so
the partials on disk are one file whatever the number of shards, and the final merge reads it alone.
Parts without a merged state keep one partial file per shard, finished once listed in ``shards.log``.
A rerun of the same job skips finished shards and redoes the others, so no row is lost or duplicated
and the final output equals a clean run's. A rerun with different settings is refused. A rerun of a
complete job whose request (source, backbone, parts, as given) is unchanged returns the finished result
at once, without listing the source or building the model, unless ``rebuild=True``.

What a job produces is its list of parts (`neuroprint.jobs.parts`); the job knows none by name.
Runners: local (one process, here) and Ray (`neuroprint.jobs.ray`). Decoders: the PIL path (the
reference) and DALI (the default on CUDA when installed), chosen once per job and recorded in its settings.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.decode import DEFAULT_MAX_PIXELS
from . import builtin as _builtin  # noqa: F401 - registers the built-in parts (PARTS), whose settings a job records
from .lock import LOCK_NAME, job_lock
from .parts import PARTS, path_stamp, union_of_states
from .result import MANIFEST, JobError, JobResult, finished_result
from .worker import ShardSpec, ShardWorker, make_loader, resolve_decoder

__all__ = ["Job", "JobError", "JobResult", "read_manifest"]

logger = logging.getLogger(__name__)

SHARD_LOG = "shards.log"
CHECKPOINT = "merged.npz"
REQUEST_FORMAT = 1


@dataclass
class Backbone:
    """The network a job runs on the model input (its taps are the parts' ``feats``)."""

    extractor: str
    weights: object = "default"
    layers: list | None = None
    dtype: torch.dtype = torch.float32
    compile: bool | None = None  # None: on CUDA
    crop: str = "none"
    resize_mode: str | None = None


@dataclass
class Job:
    """One pass of ``parts`` over ``source`` into ``out_dir``, shard by shard; ``run()`` (re)starts it."""

    source: object
    out_dir: str | os.PathLike
    parts: list
    backbone: Backbone | None = None
    shard_size: int = 1024
    batch_size: int = 64
    num_workers: int | None = None
    device: str | torch.device | None = None
    decoder: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    seed: int = 0
    progress: bool = True
    max_shards: int | None = None
    ray: bool = False
    num_actors: int | None = None
    ray_address: str | None = None
    command: dict | None = None  # the CLI's arguments, recorded at the first run (for --resume)
    rebuild: bool = False  # a complete job: re-list, re-check and rebuild the outputs instead of returning
    checkpoint_every: int = 16  # shards folded into the merged state between two checkpoints (at most)
    checkpoint_seconds: float = 120.0  # ... or seconds, whichever comes first

    def run(self) -> JobResult:
        # One process per job directory (see neuroprint.jobs.lock): a second start fails, naming the holder.
        with job_lock(self.out_dir):
            return self._run()

    def _run(self) -> JobResult:
        from ..io.sources import open_source

        if not self.parts:
            raise ValueError("a job needs at least one part: there is nothing to compute")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        self.out = Path(self.out_dir)
        request = self._request_digest()
        if request is not None and not self.rebuild:
            done = self._finished_result(request)
            if done is not None:
                return done
        self.source = open_source(self.source)
        items = self.source.item_list()  # columnar (neuroprint.io.sources.ItemList); shards are views
        shards = [items[i : i + self.shard_size] for i in range(0, len(items), self.shard_size)]
        with self._ray_session():  # one Ray session for the model's description and the shards
            self._open_backbone()
            for part in self.parts:
                part.configure(self)
            self._check_needs()
            manifest = self._claim(self._settings(items), len(shards))
            for part in self.parts:
                part.prepare(self)
            self._checkpointing = all(p.merged_state() is not None for p in self.parts)
            if self._checkpointing:
                self._load_checkpoint(manifest, len(shards))
            todo = [k for k in range(len(shards)) if f"{k:05d}" not in manifest["finished"]]
            if self.max_shards is not None:
                todo = todo[: max(0, int(self.max_shards))]
            self._run_shards(manifest, shards, todo, len(items))
        finished = manifest["finished"].values()
        if len(manifest["finished"]) < len(shards):
            logger.info("%d of %d shards finished; rerun to continue", len(manifest["finished"]), len(shards))
            done, failed = sum(v["images"] for v in finished), sum(v["failed"] for v in finished)
            return JobResult(self.out, {}, len(items), done - failed, failed, len(todo), len(shards), False)
        return self._finish(manifest, shards, todo, request)

    def _request_digest(self) -> str | None:
        """A digest of the job as asked for (source, backbone, parts and options as given), cheap to
        compute without listing the source or building the model; None when some input cannot be
        identified that way (in-memory sources, parts without ``request()``): then no shortcut."""
        source = path_stamp(self.source)
        if source is None:
            return None
        parts = []
        for part in self.parts:
            got = part.request()
            if got is None:
                return None
            parts.append([type(part).__qualname__, got])
        b = self.backbone
        backbone = None
        if b is not None:
            backbone = {
                "extractor": b.extractor,
                "weights": b.weights
                if isinstance(b.weights, str) and not os.path.exists(b.weights)
                else path_stamp(b.weights),
                "layers": None if b.layers is None else list(b.layers),
                "dtype": str(b.dtype),
                "crop": b.crop,
                "resize_mode": b.resize_mode,
            }
            if backbone["weights"] is None:
                return None
        request = {
            "format": REQUEST_FORMAT,
            "source": source,
            "backbone": backbone,
            "parts": parts,
            "shard_size": int(self.shard_size),
            "seed": int(self.seed),
            "decoder": self.decoder,
            "max_pixels": int(self.max_pixels),
        }
        try:
            text = json.dumps(request, sort_keys=True)
        except TypeError:
            return None
        self._request = request
        return hashlib.sha256(text.encode()).hexdigest()

    def _finished_result(self, request: str) -> JobResult | None:
        """The result of this complete job, read from its directory, when it was made from this very
        request and its outputs are all in place; else None (the job runs, resumes or is refused)."""
        from .._stamps import finished_manifest

        manifest = finished_manifest(self.out)
        if manifest is None or manifest.get("request_sha256") != request:
            return None
        logger.info("%s: the job is complete; nothing to do (rebuild=True recomputes the outputs)", self.out)
        return finished_result(self.out, manifest)

    def _open_backbone(self) -> None:
        from ..stats.profile import _default_workers, resolve_device

        self.dev = resolve_device(self.device)
        self.workers = _default_workers() if self.num_workers is None else int(self.num_workers)
        b = self.backbone
        self.ex = self.model = None
        self.weights, self.dtype = None, torch.float32
        if b is None:
            from ..io.recipe import Recipe

            # the loader's recipe is unused (no network input is made); a fixed one keeps the settings stable
            self.recipe = Recipe(size=(1, 1), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
            self.compile = False
            return
        self.compile = self.dev.type == "cuda" if b.compile is None else b.compile
        self.weights, self.dtype = b.weights, b.dtype
        if self.ray:
            # Only the actors hold the network: the driver reads its description (name, weights id,
            # layers, recipe), made in a one-off Ray worker. A part that runs the model on the driver
            # (the 'auto' ranges pass) builds it there on first use (`driver_model`).
            from .ray import describe_on_ray

            self.ex = describe_on_ray(b.extractor, weights=b.weights, layers=b.layers, seed=self.seed)
            self.model = None
        else:
            self.ex, self.model = self._build_model()
        recipe = self.ex.recipe if b.crop == "none" else self.ex.recipe.with_(crop=b.crop)
        self.recipe = recipe if b.resize_mode is None else recipe.with_(resize=b.resize_mode)

    def _build_model(self):
        from ..stats.profile import _CACHE

        b = self.backbone
        return _CACHE.get(
            b.extractor,
            weights=b.weights,
            layers=b.layers,
            device=self.dev,
            dtype=b.dtype,
            seed=self.seed,
            compile=self.compile,
        )

    def driver_model(self):
        """The backbone in this process, for parts that run it on the driver (the 'auto' ranges pass):
        the local runner's own; under Ray, built here on first call (the actors build their own)."""
        if self.model is None:
            if self.backbone is None:
                raise ValueError("this job has no backbone")
            ex, self.model = self._build_model()
            if ex.layers != self.ex.layers or ex.weights_id != self.ex.weights_id:
                raise RuntimeError(
                    f"the extractor built here differs from its description: {ex} vs {self.ex}"
                )
        return self.model

    def _ray_session(self):
        if not self.ray:
            return contextlib.nullcontext()
        from .ray import ray_session

        return ray_session(self.ray_address)

    def _check_needs(self) -> None:
        pil_only = [p.name for p in self.parts if "decoded" in p.needs or p.per_image is not None]
        if self.ex is None:
            need = [p.name for p in self.parts if "features" in p.needs]
            if need:
                raise ValueError(
                    f"job parts {', '.join(need)} read the backbone's features: give an extractor"
                )
        if pil_only and self.decoder == "dali":
            raise ValueError(
                f"{', '.join(pil_only)} read the PIL decoder's images (DALI hands back only the model input): "
                "use decoder='pil'"
            )
        self.decoder = resolve_decoder("pil" if pil_only else self.decoder, self.dev)

    def _settings(self, items) -> dict:
        settings = {
            "source": self.source.describe(),
            "item_ids_sha256": items.ids_sha256(),
            "extractor": self.ex.name if self.ex is not None else None,
            "weights": self.ex.weights_id if self.ex is not None else None,
            "layers": self.ex.layers if self.ex is not None else None,
            "recipe": self.recipe.to_dict(),
            "dtype": str(self.dtype).replace("torch.", ""),
            "shard_size": int(self.shard_size),
            "seed": int(self.seed),
            "decoder": self.decoder,
            "max_pixels": int(self.max_pixels),
        }
        present = {type(p) for p in self.parts}
        for cls in PARTS.values():  # the built-in parts record their settings when absent too
            if cls not in present and cls.absent_settings is not None:
                settings.update(cls.absent_settings)
        for part in self.parts:
            got = part.settings()
            clash = sorted(set(got) & {k for k in settings if k not in _absent_keys()})
            if clash:
                raise ValueError(f"part {part.name!r}: settings keys {clash} are taken")
            settings.update(got)
        return settings

    def _claim(self, settings: dict, num_shards: int) -> dict:
        """The manifest of this job in ``out`` (resumed when its settings match; refused otherwise)."""
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
        path = self.out / MANIFEST
        if path.is_file():
            try:
                manifest = json.loads(path.read_text())
            except ValueError as err:
                raise JobError(
                    f"{path} is not readable JSON ({err}); remove it or use another directory"
                ) from err
            if manifest.get("settings_sha256") != digest:
                old = manifest.get("settings", {})
                changed = sorted(
                    k
                    for k in set(old) | set(settings)
                    if json.dumps(old.get(k), sort_keys=True) != json.dumps(settings.get(k), sort_keys=True)
                )
                raise JobError(
                    f"{self.out} holds a job with other settings (differs in: {', '.join(changed) or 'format'}); "
                    "use another output directory"
                )
            manifest["finished"].update(_read_log(self.out / SHARD_LOG))
            manifest["complete"] = manifest.get("complete", False) and len(manifest["finished"]) == num_shards
            logger.info(
                "resuming %s: %d of %d shards finished", self.out, len(manifest["finished"]), num_shards
            )
        else:
            if self.out.exists() and any(p.name != LOCK_NAME for p in self.out.iterdir()):
                raise JobError(
                    f"{self.out} exists and is not a neuroprint job directory (no {MANIFEST}); "
                    "use an empty or new directory"
                )
            manifest = {"settings_sha256": digest, "settings": settings, "finished": {}, "complete": False}
            if self.command is not None:
                manifest["command"] = self.command
        (self.out / "rows").mkdir(parents=True, exist_ok=True)
        (self.out / "partials").mkdir(parents=True, exist_ok=True)
        self.write_json(path, manifest)  # the log's lines are in it now: the log starts again
        (self.out / SHARD_LOG).unlink(missing_ok=True)
        return manifest

    def _load_checkpoint(self, manifest: dict, num_shards: int) -> None:
        """Fold the written merged state into the parts; the shards it holds are the finished ones (plus
        finished shards of a directory written before checkpoints, from their own partial files)."""
        finished = {}
        path = self.out / "partials" / CHECKPOINT
        if path.is_file():
            arrays = _loadz(path)
            table = arrays.pop("__shards__")
            for part in self.parts:
                part.merge_state(arrays)
            finished = {f"{int(k):05d}": {"images": int(n), "failed": int(f)} for k, n, f in table}
        for key, rec in sorted(manifest["finished"].items()):
            old = self.out / "partials" / f"shard-{key}.npz"
            if key not in finished and old.is_file():
                for part in self.parts:
                    part.merge_state(_loadz(old))
                finished[key] = rec
        manifest["finished"] = {k: v for k, v in finished.items() if int(k) < num_shards}
        self._folded = dict(manifest["finished"])

    def _write_checkpoint(self, manifest: dict) -> None:
        arrays = union_of_states(self.parts, "merged_state")
        arrays["__shards__"] = np.array(
            [[int(k), v["images"], v["failed"]] for k, v in sorted(self._folded.items())], dtype=np.int64
        ).reshape(-1, 3)
        _write_atomic(self.out / "partials" / CHECKPOINT, lambda tmp: _savez_compact(tmp, arrays))
        new = [k for k in sorted(self._folded) if k not in manifest["finished"]]
        _append_log(self.out / SHARD_LOG, [(k, self._folded[k]) for k in new])
        for k in new:
            manifest["finished"][k] = self._folded[k]

    def _spec(self) -> ShardSpec:
        b = self.backbone
        # Workers get the source without its item list (each shard brings its own items), unless a part
        # reads items of the whole source on the worker (FUNGI's SimCLR negatives drawn from the source).
        whole = any(getattr(p, "reads_source_items", False) for p in self.parts)
        return ShardSpec(
            source=self.source if whole else self.source.for_workers(),
            extractor=b.extractor if b is not None else None,
            weights=self.weights,
            layers=list(self.ex.layers) if self.ex is not None else [],
            device=str(self.dev),
            dtype=self.dtype,
            compile=self.compile,
            seed=self.seed,
            recipe=self.recipe,
            parts=self.parts,
            batch_size=self.batch_size,
            num_workers=self.workers,
            decoder=self.decoder,
            max_pixels=int(self.max_pixels),
        )

    def _run_shards(self, manifest: dict, shards: list, todo: list, num_items: int) -> None:
        import functools
        import time

        import pyarrow.parquet as pq

        from ..stats.profile import _progress

        spec, out = self._spec(), self.out
        failed_total = sum(v["failed"] for v in manifest["finished"].values())

        last = time.monotonic()
        pending = 0

        def commit(k: int, table, state: dict, failed: int) -> None:
            nonlocal failed_total, last, pending
            rec = {"images": len(shards[k]), "failed": failed}
            _write_atomic(out / "rows" / f"shard-{k:05d}.parquet", lambda tmp: pq.write_table(table, tmp))
            if self._checkpointing:
                for part in self.parts:
                    part.merge_state(state)
                self._folded[f"{k:05d}"] = rec
                pending += 1
                now = time.monotonic()
                if pending >= max(1, int(self.checkpoint_every)) or now - last >= self.checkpoint_seconds:
                    self._write_checkpoint(manifest)
                    last, pending = now, 0
            else:
                _write_atomic(out / "partials" / f"shard-{k:05d}.npz", lambda tmp: _savez_compact(tmp, state))
                _append_log(out / SHARD_LOG, [(f"{k:05d}", rec)])
                manifest["finished"][f"{k:05d}"] = rec
            failed_total += failed
            if failed_total:
                bar.set_postfix(failed=failed_total)

        # The bar shows images (done by earlier runs included), images/s and the failures so far.
        desc = f"job {self.ex.name if self.ex is not None else 'signatures'}"
        with _progress(num_items, desc, self.progress) as bar:
            bar.update(sum(v["images"] for v in manifest["finished"].values()))
            if failed_total:
                bar.set_postfix(failed=failed_total)
            if self.ray:
                from .ray import run_shards_on_ray

                make = functools.partial(ShardWorker, spec)
                run_shards_on_ray(
                    make,
                    spec.device,
                    shards,
                    todo,
                    commit,
                    bar,
                    num_actors=self.num_actors,
                    address=self.ray_address,
                )
            else:
                worker = ShardWorker(spec, built=(self.ex, self.model))
                # one stream: the next shard is decoded while this one is committed
                stream = worker.run_stream([(k, shards[k]) for k in todo], bar, failed_total)
                for k, table, state, failed in stream:
                    commit(k, table, state, failed)
        if self._checkpointing and pending:
            self._write_checkpoint(manifest)

    def _finish(self, manifest: dict, shards: list, todo: list, request: str | None) -> JobResult:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from ..io.sources import Item

        if not self._checkpointing:  # else the parts hold the merged state already
            for k in range(len(shards)):
                arrays = _loadz(self.out / "partials" / f"shard-{k:05d}.npz")
                for part in self.parts:
                    part.merge_state(arrays)
        rows = pq.read_table(self.out / "rows", columns=["id", "uri", "status", "error"])
        bad = rows.filter(pc.equal(rows["status"], "failed"))
        pq.write_table(bad.select(["id", "uri", "error"]), self.out / "failures.parquet")
        self.failures = [
            (Item(i, u), e) for i, u, e in zip(*(bad[c].to_pylist() for c in ("id", "uri", "error")))
        ]
        self.max_pixels = int(manifest["settings"].get("max_pixels", DEFAULT_MAX_PIXELS))
        vdnas = {}
        for part in self.parts:
            vdnas.update(part.finish(self))
        n = len(self.source)
        processed = rows.num_rows - bad.num_rows
        manifest["complete"] = True
        manifest["summary"] = {
            "images_in": n,
            "processed": processed,
            "failed": bad.num_rows,
            "rows": rows.num_rows,
        }
        manifest["outputs"] = sorted(vdnas)
        if request is not None:
            manifest["request_sha256"], manifest["request"] = request, self._request
        else:
            manifest.pop("request_sha256", None)
            manifest.pop("request", None)
        self.write_json(self.out / MANIFEST, manifest)
        (self.out / SHARD_LOG).unlink(missing_ok=True)
        if rows.num_rows != n:
            raise JobError(f"{self.out}: {rows.num_rows} rows for {n} items; the directory was altered")
        if processed == 0:
            raise JobError(f"none of the {n} images could be read; see {self.out / 'failures.parquet'}")
        return JobResult(self.out, vdnas, n, processed, bad.num_rows, len(todo), len(shards))

    # what parts read of the job
    def loader(self, items=None):
        """The job's decoder over ``items`` (default: the whole source), yielding batches of model input."""
        return make_loader(
            self.decoder,
            self.source,
            self.recipe,
            batch_size=self.batch_size,
            num_workers=self.workers,
            seed=self.seed,
            dev=self.dev,
            items=items,
            max_pixels=self.max_pixels,
        )

    def data_settings(self) -> dict:
        from ..stats.profile import _json_source

        return {
            "source": _json_source(self.source.describe()),
            "crop_to_square_pre_resize": self.recipe.crop,
            "resize_mode": self.recipe.resize,
            "max_pixels": int(self.max_pixels),
        }

    def extraction_settings(self) -> dict:
        return {
            "num_workers": self.workers,
            "batch_size": int(self.batch_size),
            "device": str(self.dev),
            "seed": int(self.seed),
        }

    @staticmethod
    def write_json(path: Path, obj) -> None:
        def w(tmp):
            with open(tmp, "w") as f:
                json.dump(obj, f, indent=2)

        _write_atomic(path, w)


def _absent_keys() -> set:
    return {k for cls in PARTS.values() for k in (cls.absent_settings or {})}


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _narrow(a: np.ndarray) -> np.ndarray:
    """An integer array in the narrowest integer dtype holding its values (others as they are)."""
    if a.dtype.kind not in "iu" or a.size == 0:
        return a
    lo, hi = int(a.min()), int(a.max())
    for dt in (np.uint8, np.uint16, np.uint32) if lo >= 0 else (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return a.astype(dt)
    return a


# Integer arrays of two or more elements are stored as "dz" (delta-zigzag byte planes): the differences
# along the last axis (neighbouring histogram bins hold similar counts), zigzag-mapped to unsigned
# (0, -1, 1, -2 ... -> 0, 1, 2, 3 ...), narrowed, and split into byte planes (all low bytes, then all
# high bytes), which deflate compresses far better than the counts themselves: a 1,024-image
# mugs_vit_base histogram-1000 partial (9,984 x 1,000 counts, 54% nonzero) 7.34 MB as narrowed counts,
# 4.96 MB so (deflated at level 3; see `_PLANES_CODEC` for what is used now), and faster to write. Values beyond +-2**61 are narrowed only.
_DZ_LIMIT = 1 << 61  # differences then stay below 2**62, their zigzag below 2**63


def _dz_encode(a: np.ndarray) -> tuple[np.ndarray, dict] | None:
    if a.dtype.kind not in "iu" or a.ndim == 0 or a.size < 2 or a.shape[-1] < 2:
        return None
    lo, hi = int(a.min()), int(a.max())
    if lo < -_DZ_LIMIT or hi >= _DZ_LIMIT:
        return None
    # differences of 8- and 16-bit values, and their zigzag codes, fit in int32 (half the work of int64)
    work = np.int32 if a.dtype.itemsize <= 2 else np.int64
    d = np.diff(a.astype(work), axis=-1, prepend=work(0))
    z = _narrow((d << 1) ^ (d >> (8 * np.dtype(work).itemsize - 1)))  # zigzag: nonnegative
    planes = np.ascontiguousarray(np.ascontiguousarray(z).view(np.uint8).reshape(-1, z.itemsize).T)
    return planes, {"dtype": a.dtype.str, "enc": "dz", "shape": list(a.shape), "width": z.dtype.str}


def _dz_decode(planes: np.ndarray, spec: dict) -> np.ndarray:
    width = np.dtype(spec["width"])
    if planes.dtype != np.uint8 or planes.ndim != 2 or planes.shape[0] != width.itemsize:
        raise ValueError(
            f"a delta-coded array has planes {planes.dtype} {planes.shape}, expected {width.itemsize} byte planes"
        )
    # 8- and 16-bit arrays were coded in int32 (`_dz_encode`): decode them so too (half the work)
    work = np.int32 if np.dtype(spec["dtype"]).itemsize <= 2 and width.itemsize <= 4 else np.int64
    z = np.ascontiguousarray(planes.T).view(width).reshape(-1).astype(work)
    d = (z >> 1) ^ -(z & 1)
    shape = tuple(int(n) for n in spec["shape"])
    return np.cumsum(d.reshape(shape), axis=-1, dtype=work).astype(np.dtype(spec["dtype"]))


# Deflate level of the integer entries that are not delta-coded (narrowed scalars and single values per
# row), and of the byte planes where pyarrow has no zstd codec (see `_PLANES_CODEC`).
_DEFLATE_LEVEL = 3

# The delta-coded byte planes are compressed with zstd (pyarrow's codec, level 1) and stored as one uint8
# blob per array: the check's per-image histograms of a 64-image shard (uint16 [64, 1024, 64]) 1.36 MB in
# 11 ms and read back in 5 ms, against 1.47 MB in 75 ms and about 20 ms by deflate at level 3 (2026-12-08,
# AMD EPYC); files written before (deflated planes, spec without "codec") still load.
_PLANES_CODEC = "zstd"


def _planes_codec():
    import pyarrow as pa

    return pa.Codec(_PLANES_CODEC) if pa.Codec.is_available(_PLANES_CODEC) else None


def _savez_compact(path: Path, arrays: dict) -> None:
    """``arrays`` as an npz (`np.load` reads it: delta-coded arrays appear as uint8 blobs), integers
    delta-coded then zstd-compressed, or narrowed and deflated, floats stored as they are (deflate saves
    under 12% of float noise, e.g. a layer-gaussian's float64 second moments, at 20x the write time);
    restored by `_loadz`."""
    import zipfile

    codec = _planes_codec()
    specs, out, stored = {}, {}, set()
    for k, a in arrays.items():
        a = np.asarray(a)
        coded = _dz_encode(a)
        if coded is not None:
            planes, specs[k] = coded
            if codec is not None:
                blob = codec.compress(planes, asbytes=True)
                out[k] = np.frombuffer(blob, dtype=np.uint8)
                specs[k] = {**specs[k], "codec": _PLANES_CODEC, "planes": list(planes.shape)}
                stored.add(k)
            else:
                out[k] = planes
        else:
            specs[k], out[k] = a.dtype.str, _narrow(a)
    out["__dtypes__"] = np.array(json.dumps(specs))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=_DEFLATE_LEVEL) as zf:
        for k, a in out.items():
            name = f"{k}.npy"
            if a.dtype.kind in "fc" or k in stored:
                name = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                name.compress_type = zipfile.ZIP_STORED
            with zf.open(name, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, a, allow_pickle=False)


def _unpack_planes(blob: np.ndarray, spec: dict) -> np.ndarray:
    """The byte planes of a zstd-compressed delta-coded entry (`_savez_compact`)."""
    import pyarrow as pa

    shape = spec.get("planes")
    if (
        spec.get("codec") != _PLANES_CODEC
        or not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(v, int) and v >= 0 for v in shape)
    ):
        raise ValueError(f"a delta-coded array has an unknown codec or plane shape: {spec!r}")
    if blob.dtype != np.uint8 or blob.ndim != 1:
        raise ValueError(f"a compressed array must be a uint8 blob, got {blob.dtype} {blob.shape}")
    codec = _planes_codec()
    if codec is None:
        raise ValueError(f"this pyarrow has no {_PLANES_CODEC} codec to read the partial state")
    size = shape[0] * shape[1]
    try:
        raw = codec.decompress(blob, decompressed_size=size, asbytes=True)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise ValueError(f"a compressed array does not decompress: {e}") from e
    if len(raw) != size:
        raise ValueError(f"a compressed array holds {len(raw)} bytes, expected {size}")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def _loadz(path: Path) -> dict:
    """The arrays of a partial-state npz (no pickle), in their original dtypes."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {key: z[key] for key in z.files}
    specs = json.loads(str(arrays.pop("__dtypes__"))) if "__dtypes__" in arrays else {}
    out = {}
    for k, a in arrays.items():
        spec = specs.get(k)
        if isinstance(spec, dict):
            if "codec" in spec:
                a = _unpack_planes(a, spec)
            out[k] = _dz_decode(a, spec)
        else:
            out[k] = a.astype(np.dtype(spec), copy=False) if spec is not None else a
    return out


def _append_log(path: Path, records: list) -> None:
    """Append one JSON line per finished shard and make it durable (fsync) before the caller goes on."""
    if not records:
        return
    text = "".join(json.dumps({"shard": k, **v}) + "\n" for k, v in records)
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _read_log(path: Path) -> dict:
    """The shards a log lists; a torn line (a crash while appending) is not a finished shard."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_bytes().split(b"\n")[:-1]:  # the last piece is empty or a torn line
        try:
            rec = json.loads(line)
            out[rec["shard"]] = {"images": int(rec["images"]), "failed": int(rec["failed"])}
        except (ValueError, KeyError, TypeError):
            continue
    return out


def read_manifest(out_dir) -> dict:
    """A job directory's manifest with its ``finished`` shards as of now (the log's lines included)."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    manifest.setdefault("finished", {}).update(_read_log(out / SHARD_LOG))
    return manifest
