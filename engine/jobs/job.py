"""Sharded, resumable jobs: one pass over the pixels writes per-image Parquet rows and dataset outputs.

Output directory::

    manifest.json            settings (and their digest), finished shards with their counts, summary
    ranges.json              histogram bin ranges, fixed at the first run so that a resume bins the same way
    rows/shard-00000.parquet one row per input item: id, uri, shard, status, error, width, height, and the
                             parts' columns (embedding, emd:NAME, phash, dhash, sharpness, fungi, ...)
    partials/shard-00000.npz the shard's exact part states (integers and float64 moments; no pickle)
    <distribution>.json/.npz the dataset VDNAs, merged from every shard's partial state
    failures.parquet         the items that could not be read, with their reasons
    job.lock                 while a process runs the job: its pid, host and start time (neuroprint.jobs.lock)

A shard counts as finished only once it is listed in the manifest, which is rewritten (temporary file,
then rename) after both of its files are in place; a rerun of the same job skips finished shards and
redoes the others, overwriting any half-written files, so no row is lost or duplicated and the final
output equals a clean run's. A rerun with different settings is refused.

What a job produces is its list of parts (`neuroprint.jobs.parts`); the job knows none by name.
Runners: local (one process, here) and Ray (`neuroprint.jobs.ray`). Decoders: the PIL path (the
reference) and DALI (the default on CUDA when installed), chosen once per job and recorded in its settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._errors import NeuroprintError
from ..io.decode import DEFAULT_MAX_PIXELS
from .lock import LOCK_NAME, job_lock
from .parts import PARTS
from .worker import ShardSpec, ShardWorker, make_loader, resolve_decoder

__all__ = ["Job", "JobError", "JobResult"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class JobError(NeuroprintError, RuntimeError):
    """The output directory cannot be used for this job."""


@dataclass
class JobResult:
    out_dir: Path
    vdnas: dict  # distribution -> VDNA
    images_in: int
    processed: int
    failed: int
    shards_run: int  # shards computed by this call (the others were finished by an earlier run)
    shards_total: int
    complete: bool = True  # False: some shards are left for a later run (max_shards); no VDNAs yet


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
        self.source = open_source(self.source)
        items = list(self.source)
        shards = [items[i : i + self.shard_size] for i in range(0, len(items), self.shard_size)]
        self._open_backbone()
        for part in self.parts:
            part.configure(self)
        self._check_needs()
        manifest = self._claim(self._settings(items), len(shards))
        for part in self.parts:
            part.prepare(self)
        todo = [k for k in range(len(shards)) if f"{k:05d}" not in manifest["finished"]]
        if self.max_shards is not None:
            todo = todo[: max(0, int(self.max_shards))]
        self._run_shards(manifest, shards, todo, len(items))
        finished = manifest["finished"].values()
        if len(manifest["finished"]) < len(shards):
            logger.info("%d of %d shards finished; rerun to continue", len(manifest["finished"]), len(shards))
            done, failed = sum(v["images"] for v in finished), sum(v["failed"] for v in finished)
            return JobResult(self.out, {}, len(items), done - failed, failed, len(todo), len(shards), False)
        return self._finish(manifest, shards, todo)

    def _open_backbone(self) -> None:
        from ..stats.profile import _CACHE, _default_workers, resolve_device

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
        self.ex, self.model = _CACHE.get(
            b.extractor,
            weights=b.weights,
            layers=b.layers,
            device=self.dev,
            dtype=b.dtype,
            seed=self.seed,
            compile=self.compile,
        )
        recipe = self.ex.recipe if b.crop == "none" else self.ex.recipe.with_(crop=b.crop)
        self.recipe = recipe if b.resize_mode is None else recipe.with_(resize=b.resize_mode)

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
            "item_ids_sha256": hashlib.sha256("\n".join(it.id for it in items).encode()).hexdigest(),
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
        self.write_json(path, manifest)
        return manifest

    def _spec(self) -> ShardSpec:
        b = self.backbone
        return ShardSpec(
            source=self.source,
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

        import pyarrow.parquet as pq

        from ..stats.profile import _progress

        spec, out = self._spec(), self.out
        failed_total = sum(v["failed"] for v in manifest["finished"].values())

        def commit(k: int, table, state: dict, failed: int) -> None:
            nonlocal failed_total
            _write_atomic(out / "partials" / f"shard-{k:05d}.npz", lambda tmp: _savez(tmp, state))
            _write_atomic(out / "rows" / f"shard-{k:05d}.parquet", lambda tmp: pq.write_table(table, tmp))
            manifest["finished"][f"{k:05d}"] = {"images": len(shards[k]), "failed": failed}
            self.write_json(out / MANIFEST, manifest)
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
                for k in todo:
                    table, state, failed = worker.run(k, shards[k], progress=bar, failed_before=failed_total)
                    commit(k, table, state, failed)

    def _finish(self, manifest: dict, shards: list, todo: list) -> JobResult:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from ..io.sources import Item

        for k in range(len(shards)):
            with np.load(self.out / "partials" / f"shard-{k:05d}.npz", allow_pickle=False) as z:
                arrays = {key: z[key] for key in z.files}
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
        self.write_json(self.out / MANIFEST, manifest)
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
