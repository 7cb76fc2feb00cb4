"""Sharded, resumable jobs: one pass over the pixels writes per-image Parquet rows and dataset VDNAs.

Output directory::

    manifest.json            settings (and their digest), finished shards with their counts, summary
    ranges.json              histogram bin ranges, fixed at the first run so that a resume bins the same way
    rows/shard-00000.parquet one row per input item: id, uri, shard, status, error, width, height[, embedding]
    partials/shard-00000.npz the shard's exact reducer states (integers and float64 moments; no pickle)
    <distribution>.json/.npz the dataset VDNAs, merged from every shard's partial state
    failures.parquet         the items that could not be read, with their reasons
    job.lock                 while a process runs the job: its pid, host and start time (neuroprint._lock)

A shard counts as finished only once it is listed in the manifest, which is rewritten (temporary file,
then rename) after both of its files are in place; a rerun of the same job skips finished shards and
redoes the others, overwriting any half-written files, so no row is lost or duplicated and the final
output equals a clean run's. A rerun with different settings is refused.

Runners: local (one process, here) and Ray (``_ray.py``). Decoders: the PIL path (the reference) and DALI
(``_dali.py``; the default on CUDA when installed), chosen once per job and recorded in its settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._decode import DEFAULT_MAX_PIXELS, ImageLoader
from ._errors import NeuroprintError
from ._lock import LOCK_NAME, job_lock
from ._processor import (
    _CACHE,
    _default_workers,
    _json_source,
    _progress,
    _resolve_ranges,
    build_vdnas,
    resolve_device,
)
from ._ranges import Ranges
from ._reducers import ActivationRangesReducer, make_reducer, parse_distribution
from ._scoring import ReferenceScorer
from ._sources import open_source

__all__ = ["JobError", "JobResult", "run_job"]

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


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    _write_atomic(path, w)


def _row_schema(
    embedding_dim: int | None, references: Sequence[str] = (), hashes: Sequence[str] = (), fungi_dim: int = 0
):
    import pyarrow as pa

    fields = [
        ("id", pa.string()),
        ("uri", pa.string()),
        ("shard", pa.int32()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
    ]
    if embedding_dim:
        fields.append(("embedding", pa.list_(pa.float32(), embedding_dim)))
    fields.extend((f"emd:{name}", pa.float64()) for name in references)
    fields.extend((h, pa.int64()) for h in hashes)  # 64-bit perceptual hashes, packed as in neuroprint.dedup
    if hashes:  # how native the resolution looks (neuroprint._sharpness), for dedup's keep="largest"
        fields.append(("sharpness", pa.float32()))
    if fungi_dim:
        fields.append(("fungi", pa.list_(pa.float32(), fungi_dim)))  # [KL | DINO | SimCLR] blocks
    return pa.schema(fields)


@dataclass
class ShardSpec:
    """Everything a worker needs to compute any shard of a job (picklable, for Ray actors)."""

    source: object
    extractor: str | None  # None: a signatures-only job (hashes / FUNGI; no network, no VDNA)
    weights: object
    layers: list
    device: str
    dtype: torch.dtype
    compile: bool
    seed: int
    recipe: object
    names: list
    ranges: Ranges | None
    embeddings: bool
    batch_size: int
    num_workers: int
    references: dict = None  # column name -> histogram VDNA, for per-image EMD columns
    decoder: str = "pil"  # "pil" or "dali" (resolved by run_job)
    hashes: tuple = ()  # perceptual hashes of the decoded images: "phash", "dhash"
    fungi: dict | None = None  # FUNGI options (neuroprint._fungi_build.JOB_DEFAULTS' keys), or None
    max_pixels: int = DEFAULT_MAX_PIXELS  # images above it are failure rows, not decoded (0: no limit)


DECODERS = ("auto", "pil", "dali")


def resolve_decoder(decoder: str, dev: torch.device) -> str:
    """'auto' is DALI on CUDA when DALI is installed, else PIL (DALI's CPU pipeline is slower than PIL's)."""
    from . import _dali

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
    decoder: str,
    source,
    recipe,
    *,
    batch_size,
    num_workers,
    seed,
    dev,
    items=None,
    max_pixels=DEFAULT_MAX_PIXELS,
):
    """The job's decoder over ``items`` (default: the whole source), yielding ``Batch`` objects in order."""
    if decoder == "dali":
        from ._dali import DaliImageLoader

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
    )


class ShardWorker:
    """Builds the decoder, backbone and reducers' settings once; computes shards into (rows, state)."""

    def __init__(self, spec: ShardSpec, built=None):
        self.spec = spec
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
        self.emb_layer = list(self.ex.layers)[-1] if self.ex is not None else None
        refs = spec.references or {}
        self.scorers = {name: ReferenceScorer(v, self.dev) for name, v in refs.items()}
        self.fungi = None
        if spec.fungi:
            from types import SimpleNamespace

            from ._fungi_build import build_wrapper

            self.fungi, _ = build_wrapper(SimpleNamespace(**spec.fungi), self.dev, spec.source)
        self._embed = None  # signatures-only job: embeddings come from the FUNGI backbone
        if spec.embeddings and self.ex is None:
            from ._fungi_build import embedding_fn

            self._embed = embedding_fn(self.fungi)
        emb_dim = None
        if spec.embeddings:
            emb_dim = self.ex.layers[self.emb_layer] if self.ex is not None else self.fungi.embeddings_dim
        self.schema = _row_schema(
            emb_dim,
            list(refs),
            spec.hashes,
            self.fungi.feature_dim if self.fungi is not None else 0,
        )
        self._dali = None  # built once (its pipeline too) and pointed at each shard's items

    def _loader(self, shard_items):
        spec = self.spec
        if spec.hashes or spec.fungi:
            # The PIL path also hands back each decoded image, which hashes and FUNGI views need.
            from ._dedup_signatures import _SignatureLoader

            return _SignatureLoader(
                spec.source,
                spec.recipe,
                need_pixels=self.model is not None,
                need_decoded=bool(spec.fungi),
                hash_kinds=spec.hashes,
                sharpness=bool(spec.hashes),
                batch_size=spec.batch_size,
                num_workers=spec.num_workers,
                seed=spec.seed,
                items=shard_items,
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
            max_pixels=spec.max_pixels,
        )
        if spec.decoder == "dali":
            self._dali = loader
        return loader

    def _fungi(self, batch) -> np.ndarray:
        """FUNGI features [n, E * objectives] of the batch's images; each image's views come from its own
        generator (keyed by its id), so they do not depend on batches, shards or actors."""
        from PIL import Image

        from ._fungi_build import item_generator as _item_generator

        images = [Image.fromarray(d) for d in batch.decoded]
        gens = [_item_generator(self.spec.fungi["seed"], it.id) for it in batch.items]
        with torch.inference_mode(False), torch.enable_grad():
            return self.fungi(images, generator=gens).float().cpu().numpy()

    def run(self, k: int, shard_items, progress=None, failed_before: int = 0):
        import pyarrow as pa

        spec, ex = self.spec, self.ex
        reducers = [make_reducer(n, ex.layers, ranges=spec.ranges, device=self.dev) for n in spec.names]
        # (a signatures-only job has no distributions, so ``ex`` is never read above)
        loader = self._loader(shard_items)
        rows = {name: [] for name in self.schema.names}
        failed = 0
        with torch.inference_mode():
            for batch in loader:
                emb, scores = None, {}
                if batch.items and self.model is not None:
                    feats = self.model(batch.pixels.to(self.dev, non_blocking=True))
                    for r in reducers:
                        r.update(feats)
                    if spec.embeddings:
                        emb = feats[self.emb_layer].float().mean(dim=1).cpu().numpy()
                    scores = {name: scorer(feats)[0] for name, scorer in self.scorers.items()}
                elif batch.items and self._embed is not None:
                    from PIL import Image

                    emb = self._embed([Image.fromarray(d) for d in batch.decoded])
                if batch.items:
                    if spec.hashes:  # computed in the decode threads (bounded memory)
                        scores.update({h: batch.hashes[h] for h in spec.hashes})
                    if self.fungi is not None:
                        fungi = self._fungi(batch)
                for i, (item, size) in enumerate(zip(batch.items, batch.sizes)):
                    extra = {
                        (name if name in spec.hashes else f"emd:{name}"): (
                            int(v[i]) if name in spec.hashes else float(v[i])
                        )
                        for name, v in scores.items()
                    }
                    if self.fungi is not None:
                        extra["fungi"] = fungi[i]
                    if spec.hashes:
                        extra["sharpness"] = float(batch.sharpness[i])
                    _append(
                        rows,
                        item,
                        k,
                        "ok",
                        None,
                        size,
                        None if emb is None else emb[i],
                        spec.embeddings,
                        extra,
                    )
                for item, reason in batch.failures:
                    extra = dict.fromkeys([*(f"emd:{name}" for name in self.scorers), *spec.hashes], None)
                    if self.fungi is not None:
                        extra["fungi"] = None
                    if spec.hashes:
                        extra["sharpness"] = None
                    _append(rows, item, k, "failed", reason, (None, None), None, spec.embeddings, extra)
                    failed += 1
                if progress is not None:
                    progress.update(len(batch.items) + len(batch.failures))
                    if failed:
                        progress.set_postfix(failed=failed_before + failed)
        # Rows keep the source order within the shard.
        order = {it.id: i for i, it in enumerate(shard_items)}
        perm = sorted(range(len(rows["id"])), key=lambda i: order[rows["id"][i]])
        table = pa.table({n: [rows[n][i] for i in perm] for n in self.schema.names}, schema=self.schema)
        state = {
            f"{name}:{key}": arr for name, r in zip(spec.names, reducers) for key, arr in r.state().items()
        }
        return table, state, failed


def _run_job(
    source,
    out_dir: str | os.PathLike,
    distributions: str | Sequence[str] = "histogram-1000",
    *,
    extractor: str | None = "mugs_vit_base",
    weights: str | os.PathLike = "default",
    layers: Sequence[str] | None = None,
    ranges=None,
    embeddings: bool = False,
    shard_size: int = 1024,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    compile: bool | None = None,
    seed: int = 0,
    crop: str = "none",
    resize_mode: str | None = None,
    progress: bool = True,
    max_shards: int | None = None,
    ray: bool = False,
    num_actors: int | None = None,
    ray_address: str | None = None,
    references: dict | None = None,
    decoder: str = "auto",
    command: dict | None = None,
    hashes: Sequence[str] = (),
    fungi: dict | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> JobResult:
    """Profile ``source`` into ``out_dir`` shard by shard; rerunning resumes (see the module docstring).

    embeddings: also write each image's pooled embedding (the mean over positions/tokens of the last
    tapped layer) as a fixed-size list column. max_shards: stop after computing this many shards (the
    rest are done by a later call), e.g. to spread a job over several nightly windows.
    ray: run the shards on a pool of Ray actors (``num_actors``: one per GPU, else one per CPU slot;
    ``ray_address``: an existing cluster, else a local one is started); the driver alone writes the
    output, so results equal the local runner's. references: {column name: histogram VDNA (or its
    path)}: adds each image's EMD to it (mean over its neurons) as a column ``emd:<name>``. decoder:
    "pil" (the reference), "dali" (within ``neuroprint._dali.MAX_ABS_TOLERANCE`` of it; files DALI cannot
    decode exactly as PIL go through PIL) or "auto" (DALI on CUDA when installed, else PIL); the choice is
    part of the job's settings. hashes: any of "phash", "dhash": each image's 64-bit perceptual hash
    (bit-exact with the imagehash package, computed in the decode threads as each image is decoded, so
    full-size images are not held per batch) as an
    int64 column, with a ``sharpness`` float32 column (how native each image's resolution looks,
    `neuroprint._sharpness`, which dedup's keep="largest" reads), for ``neuroprint dedup`` over the job
    directory; needs the PIL decoder. fungi: FUNGI
    gradient features as a ``fungi`` column, with the options of ``neuroprint features`` (a dict with any
    of ``neuroprint._fungi_build.JOB_DEFAULTS``' keys: objectives "fungi", timm "model", "weights",
    "layer", "input_dim", "negatives", "fp16", "mode", "seed"); the same numbers as that command; needs
    the PIL decoder. max_pixels: images with more pixels (read from their header) are failure rows
    without being decoded (0: no limit); part of the job's settings. command: the CLI's arguments, recorded in the manifest at the first run
    so that ``neuroprint profile --resume --out-dir DIR`` can rerun it. Other arguments as
    `neuroprint.profile`.

    extractor=None with distributions=() is a signatures-only job: no network, no VDNA, only the
    hashes and/or FUNGI columns (and, with ``embeddings``, the FUNGI backbone's embeddings), with the
    same sharding, resume, Ray and failure rows (``neuroprint features`` runs this way).
    """
    import pyarrow.parquet as pq

    names = [distributions] if isinstance(distributions, str) else list(distributions)
    kinds = [parse_distribution(n) for n in names]
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if extractor is None:
        if names or references or ranges is not None:
            raise ValueError(
                "a job without an extractor makes no VDNA: pass distributions=() and no ranges/references"
            )
        if not (hashes or fungi):
            raise ValueError(
                "a job without an extractor needs hashes or fungi: there is nothing else to compute"
            )
        if embeddings and not fungi:
            raise ValueError("without an extractor, embeddings come from the FUNGI backbone: pass fungi")
    elif not (names or embeddings or references or hashes or fungi):
        raise ValueError("nothing to compute: give distributions, embeddings, references, hashes or fungi")
    out = Path(out_dir)
    dev = resolve_device(device)
    if compile is None:
        compile = dev.type == "cuda"
    src = open_source(source)
    items = list(src)
    shards = [items[i : i + shard_size] for i in range(0, len(items), shard_size)]
    if extractor is None:
        from ._recipe import Recipe

        ex = model = None
        # the loader's recipe is unused (no network input is made); a fixed one keeps the settings stable
        recipe = Recipe(size=(1, 1), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    else:
        ex, model = _CACHE.get(
            extractor, weights=weights, layers=layers, device=dev, dtype=dtype, seed=seed, compile=compile
        )
        recipe = ex.recipe if crop == "none" else ex.recipe.with_(crop=crop)
        if resize_mode is not None:
            recipe = recipe.with_(resize=resize_mode)
    workers = _default_workers() if num_workers is None else int(num_workers)
    hashes = tuple(dict.fromkeys(hashes or ()))
    bad = [h for h in hashes if h not in ("phash", "dhash")]
    if bad:
        raise ValueError(f"unknown hash {bad[0]!r}; expected phash or dhash")
    if fungi is not None:
        from ._fungi_build import job_options

        fungi = job_options(fungi)
    if (hashes or fungi) and decoder == "dali":
        raise ValueError(
            "hashes and FUNGI features are computed from the PIL decoder's images: use decoder='pil'"
        )
    decoder = resolve_decoder("pil" if (hashes or fungi) else decoder, dev)

    refs = {}
    for rname, ref in (references or {}).items():
        if isinstance(ref, (str, os.PathLike)):
            from ._vdna import load_vdna_from_files

            ref = load_vdna_from_files(ref)
        _check_job_reference(rname, ref, ex)
        refs[str(rname)] = ref
    settings = {
        "source": src.describe(),
        "item_ids_sha256": hashlib.sha256("\n".join(it.id for it in items).encode()).hexdigest(),
        "extractor": ex.name if ex is not None else None,
        "weights": ex.weights_id if ex is not None else None,
        "layers": ex.layers if ex is not None else None,
        "recipe": recipe.to_dict(),
        "dtype": str(dtype).replace("torch.", ""),
        "distributions": names,
        "ranges": _describe_ranges_arg(ranges),
        "embeddings": bool(embeddings),
        "references": {n: _vdna_digest(v) for n, v in refs.items()},
        "shard_size": int(shard_size),
        "seed": int(seed),
        "decoder": decoder,
        "max_pixels": int(max_pixels),
        "hashes": list(hashes),
        "fungi": fungi,
    }
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError as err:
            raise JobError(
                f"{manifest_path} is not readable JSON ({err}); remove it or use another directory"
            ) from err
        if manifest.get("settings_sha256") != digest:
            old = manifest.get("settings", {})
            changed = sorted(
                k
                for k in set(old) | set(settings)
                if json.dumps(old.get(k), sort_keys=True) != json.dumps(settings.get(k), sort_keys=True)
            )
            raise JobError(
                f"{out} holds a job with other settings (differs in: {', '.join(changed) or 'format'}); "
                "use another output directory"
            )
        logger.info("resuming %s: %d of %d shards finished", out, len(manifest["finished"]), len(shards))
    else:
        if out.exists() and any(p.name != LOCK_NAME for p in out.iterdir()):
            raise JobError(
                f"{out} exists and is not a neuroprint job directory (no {MANIFEST}); use an empty or new directory"
            )
        manifest = {"settings_sha256": digest, "settings": settings, "finished": {}, "complete": False}
        if command is not None:
            manifest["command"] = command
    (out / "rows").mkdir(parents=True, exist_ok=True)
    (out / "partials").mkdir(parents=True, exist_ok=True)
    _write_json(manifest_path, manifest)

    hist_ranges = None
    if any(k == "histogram" for k, _ in kinds):
        ranges_path = out / "ranges.json"
        if ranges_path.is_file():
            hist_ranges = Ranges.from_json(json.loads(ranges_path.read_text()))
        else:

            def auto_pass() -> Ranges:
                r = ActivationRangesReducer(ex.layers)
                loader = make_loader(
                    decoder,
                    src,
                    recipe,
                    batch_size=batch_size,
                    num_workers=workers,
                    seed=seed,
                    dev=dev,
                    max_pixels=max_pixels,
                )
                from ._processor import _empty, _run_pass

                fails = _run_pass(loader, model, [r], dev, desc=f"ranges {ex.name}", progress=progress)
                if r.count == 0:
                    raise _empty(src, fails)
                return r.to_ranges(origin=f"auto:{r.count} images of {src.kind}")

            hist_ranges = _resolve_ranges(ranges, ex, weights, auto_pass)
            _write_json(ranges_path, hist_ranges.to_json())

    todo = [k for k in range(len(shards)) if f"{k:05d}" not in manifest["finished"]]
    if max_shards is not None:
        todo = todo[: max(0, int(max_shards))]
    done_images = sum(v["images"] for v in manifest["finished"].values())

    spec = ShardSpec(
        source=src,
        extractor=extractor,
        weights=weights,
        layers=list(ex.layers) if ex is not None else [],
        device=str(dev),
        dtype=dtype,
        compile=compile,
        seed=seed,
        recipe=recipe,
        names=names,
        ranges=hist_ranges,
        embeddings=embeddings,
        batch_size=batch_size,
        num_workers=workers,
        references=refs,
        decoder=decoder,
        max_pixels=int(max_pixels),
        hashes=hashes,
        fungi=fungi,
    )

    failed_total = sum(v["failed"] for v in manifest["finished"].values())

    def commit(k: int, table, state: dict, failed: int) -> None:
        nonlocal failed_total
        _write_atomic(out / "partials" / f"shard-{k:05d}.npz", lambda tmp: _savez(tmp, state))
        _write_atomic(out / "rows" / f"shard-{k:05d}.parquet", lambda tmp: pq.write_table(table, tmp))
        manifest["finished"][f"{k:05d}"] = {"images": len(shards[k]), "failed": failed}
        _write_json(manifest_path, manifest)
        failed_total += failed
        if failed_total:
            bar.set_postfix(failed=failed_total)

    # The bar shows images (done by earlier runs included), images/s and the failures so far.
    with _progress(len(items), f"job {ex.name if ex is not None else 'signatures'}", progress) as bar:
        bar.update(done_images)
        if failed_total:
            bar.set_postfix(failed=failed_total)
        if ray:
            from ._ray import run_shards_on_ray

            run_shards_on_ray(
                functools.partial(ShardWorker, spec),
                spec.device,
                shards,
                todo,
                commit,
                bar,
                num_actors=num_actors,
                address=ray_address,
            )
        else:
            worker = ShardWorker(spec, built=(ex, model))
            for k in todo:
                table, state, failed = worker.run(k, shards[k], progress=bar, failed_before=failed_total)
                commit(k, table, state, failed)

    finished = len(manifest["finished"])
    if finished < len(shards):
        logger.info("%d of %d shards finished; rerun to continue", finished, len(shards))
        done = sum(v["images"] for v in manifest["finished"].values())
        failed = sum(v["failed"] for v in manifest["finished"].values())
        return JobResult(out, {}, len(items), done - failed, failed, len(todo), len(shards), complete=False)
    return _finish(
        out,
        manifest,
        names,
        ex,
        recipe,
        dtype,
        src,
        hist_ranges,
        shards,
        workers,
        batch_size,
        dev,
        seed,
        todo,
    )


@functools.wraps(_run_job)
def run_job(source, out_dir, *args, **kwargs) -> JobResult:
    # One process per job directory (see neuroprint._lock): a second start fails at once, naming the holder.
    with job_lock(out_dir):
        return _run_job(source, out_dir, *args, **kwargs)


def _check_job_reference(name: str, ref, ex) -> None:
    from ._errors import IncompatibleVDNAError

    if ref.feature_extractor_name != ex.name:
        raise IncompatibleVDNAError(
            f"reference {name!r} was made with {ref.feature_extractor_name}, not {ex.name}"
        )
    wid = ref.meta.get("weights")
    if wid is not None and wid != ex.weights_id:
        raise IncompatibleVDNAError(f"reference {name!r} was made with weights {wid}, not {ex.weights_id}")
    missing = [k for k in ref.neurons_list if k not in ex.layers]
    if missing:
        raise IncompatibleVDNAError(
            f"reference {name!r} needs layers the job does not tap: {', '.join(missing)}"
        )


def _vdna_digest(vdna) -> str:
    h = hashlib.sha256()
    for layer, t in vdna.data.items():
        h.update(layer.encode())
        h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()


def _describe_ranges_arg(ranges):
    if ranges is None or isinstance(ranges, str):
        return ranges
    if isinstance(ranges, os.PathLike):
        return os.fspath(ranges)
    if isinstance(ranges, Ranges):
        return f"sha256:{ranges.digest}"
    return type(ranges).__name__


def _savez(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _append(rows, item, shard, status, error, size, emb, embeddings, extra=None) -> None:
    rows["id"].append(item.id)
    rows["uri"].append(item.uri)
    rows["shard"].append(shard)
    rows["status"].append(status)
    rows["error"].append(error)
    rows["width"].append(size[0])
    rows["height"].append(size[1])
    if embeddings:
        rows["embedding"].append(None if emb is None else emb.astype(np.float32))
    for key, value in (extra or {}).items():
        rows[key].append(value)


def _finish(
    out, manifest, names, ex, recipe, dtype, src, hist_ranges, shards, workers, batch_size, dev, seed, todo
) -> JobResult:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ._sources import Item

    merged = [make_reducer(n, ex.layers, ranges=hist_ranges) for n in names]
    for k in range(len(shards)):
        with np.load(out / "partials" / f"shard-{k:05d}.npz", allow_pickle=False) as z:
            for name, r in zip(names, merged):
                part = make_reducer(name, ex.layers, ranges=hist_ranges)
                prefix = f"{name}:"
                part.load_state({key[len(prefix) :]: z[key] for key in z.files if key.startswith(prefix)})
                r.merge(part)
    rows = pq.read_table(out / "rows", columns=["id", "uri", "status", "error"])
    bad = rows.filter(pc.equal(rows["status"], "failed"))
    pq.write_table(bad.select(["id", "uri", "error"]), out / "failures.parquet")
    failures = [(Item(i, u), e) for i, u, e in zip(*(bad[c].to_pylist() for c in ("id", "uri", "error")))]
    data_settings = {
        "source": _json_source(src.describe()),
        "crop_to_square_pre_resize": recipe.crop,
        "resize_mode": recipe.resize,
        "max_pixels": int(manifest["settings"].get("max_pixels", DEFAULT_MAX_PIXELS)),
    }
    extraction = {
        "num_workers": workers,
        "batch_size": int(batch_size),
        "device": str(dev),
        "seed": int(seed),
    }
    vdnas = {}
    if merged and merged[0].count > 0:
        vdnas = build_vdnas(
            names,
            merged,
            ex,
            recipe,
            dtype,
            src,
            failures,
            hist_ranges,
            data_settings,
            extraction,
            decoder=manifest["settings"]["decoder"],
        )
        for name, v in vdnas.items():
            v.save(out / name)
    processed = rows.num_rows - bad.num_rows
    manifest["complete"] = True
    manifest["summary"] = {
        "images_in": len(src),
        "processed": processed,
        "failed": bad.num_rows,
        "rows": rows.num_rows,
    }
    _write_json(out / MANIFEST, manifest)
    if rows.num_rows != len(src):
        raise JobError(f"{out}: {rows.num_rows} rows for {len(src)} items; the directory was altered")
    if processed == 0:
        raise JobError(f"none of the {len(src)} images could be read; see {out / 'failures.parquet'}")
    return JobResult(out, vdnas, len(src), processed, bad.num_rows, len(todo), len(shards))
