"""Per-image signatures for duplicate search: perceptual hashes and backbone embeddings from one pass.

Each image is decoded once (the PIL reference decoder, in threads, as every job does); its decoded
pixels feed the hashes (computed in the decode thread right after decoding, `_hashes`, so a full-size
image is dropped once hashed) and its preprocessed pixels
feed the backbone, whose last tapped layer, averaged over positions, is the embedding (the same
definition as the job's ``embedding`` column). An existing job directory's ``embedding`` column can be
read instead of recomputing it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._errors import EmptySourceError, NeuroprintError
from ..io.decode import Batch, ImageLoader
from .hashes import hash_pixels, hashes_from_pixels
from .sharpness import sharpness as image_sharpness

logger = logging.getLogger(__name__)

HASH_METHODS = ("phash", "dhash")
SIGNATURE_KINDS = (*HASH_METHODS, "embedding")


@dataclass
class Signatures:
    """Signatures of the readable images of a source, in source order (failures listed apart)."""

    ids: list[str]  # item ids (the key of every output row)
    uris: list[str]  # where each image came from
    widths: np.ndarray  # int64 [N] decoded width (0 when unknown)
    heights: np.ndarray  # int64 [N] decoded height (0 when unknown)
    phash: np.ndarray | None = None  # int64 [N] packed 64-bit pHash
    dhash: np.ndarray | None = None  # int64 [N] packed 64-bit dHash
    embeddings: np.ndarray | None = None  # float32 [N, D] pooled backbone features
    sharpness: np.ndarray | None = (
        None  # float32 [N] how native each resolution looks (`_sharpness`; NaN: unknown)
    )
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (id, uri, one-line reason)
    settings: dict = field(default_factory=dict)  # what produced them: extractor, weights, layer, source

    def __len__(self) -> int:
        return len(self.ids)

    def kinds(self) -> list[str]:
        return [k for k in SIGNATURE_KINDS if self.get(k) is not None]

    def get(self, kind: str):
        if kind not in SIGNATURE_KINDS:
            raise ValueError(f"unknown signature {kind!r}; expected one of {', '.join(SIGNATURE_KINDS)}")
        return self.embeddings if kind == "embedding" else getattr(self, kind)


class _SignatureLoader(ImageLoader):
    """ImageLoader that also hands back each decoded image (FUNGI views need it) and/or its perceptual
    hashes, and can skip the network's preprocessing when no embedding is wanted.

    hash_kinds: hashes computed in the decode threads, image by image, right after decoding, so a
    full-size image lives only until it is hashed (memory is bounded by the threads, not by the batch
    size times the largest images): Pillow's small gray images there (`hash_pixels`), the bits for the
    whole batch in ``_collate`` (`hashes_from_pixels`), the batched ``image_hashes``'s bits. ``batch.hashes`` maps each kind to int64 [len(batch.items)].
    sharpness: also each image's `neuroprint.dedup.sharpness.sharpness` (how native its resolution looks),
    in ``batch.sharpness`` (float32 [len(batch.items)]).
    """

    def __init__(
        self,
        source,
        recipe,
        *,
        need_pixels: bool,
        need_decoded: bool,
        hash_kinds: Sequence[str] = (),
        sharpness: bool = False,
        **kwargs,
    ):
        super().__init__(source, recipe, **kwargs)
        self.need_pixels = need_pixels
        self.need_decoded = need_decoded
        self.hash_kinds = tuple(hash_kinds)
        self.sharpness = bool(sharpness)

    def _prepare(self, item, img):
        pixels = super()._prepare(item, img) if self.need_pixels else None
        hashes = None
        if self.hash_kinds:
            hashes = hash_pixels(img, self.hash_kinds)  # the bits: per batch, in _collate
        sharp = image_sharpness(img) if self.sharpness else None
        return pixels, img if self.need_decoded else None, hashes, sharp

    def _collate(self, chunk, results) -> Batch:
        items, tensors, decoded, failures, sizes, sharp = [], [], [], [], [], []
        small = []  # each item's hash_pixels
        for item, (got, info) in zip(chunk, results):
            if got is None:
                failures.append((item, info))
                continue
            items.append(item)
            tensors.append(got[0])
            decoded.append(got[1])
            if self.hash_kinds:
                small.append(got[2])
            sharp.append(got[3])
            sizes.append(info)
        pixels = torch.stack(tensors) if self.need_pixels and tensors else torch.zeros(0)
        batch = Batch(items=items, pixels=pixels, failures=failures, sizes=sizes)
        batch.decoded = decoded
        batch.hashes = hashes_from_pixels(small, self.hash_kinds) if self.hash_kinds else {}
        batch.sharpness = np.asarray(sharp, dtype=np.float32) if self.sharpness else None
        return batch


def compute_signatures(
    source,
    kinds: Sequence[str] = SIGNATURE_KINDS,
    *,
    extractor: str = "mugs_vit_base",
    weights: str | os.PathLike = "default",
    layer: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 32,
    num_workers: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Signatures:
    """Hashes and/or embeddings of every readable image of ``source``, decoding each image once.

    kinds: any of "phash", "dhash", "embedding". The embedding is the mean over positions of the
    extractor's tap ``layer`` (default: its last tap). Unreadable images are listed in ``failures``;
    a source with no readable image raises EmptySourceError.
    """
    from ..io.sources import open_source
    from ..stats.profile import _CACHE, _default_workers, _progress, resolve_device

    kinds = list(dict.fromkeys(kinds))
    for kind in kinds:
        if kind not in SIGNATURE_KINDS:
            raise ValueError(f"unknown signature {kind!r}; expected one of {', '.join(SIGNATURE_KINDS)}")
    if not kinds:
        raise ValueError("no signature asked for")
    dev = resolve_device(device)
    src = open_source(source)
    settings = {"source": src.describe(), "kinds": kinds}
    recipe, model, tap = None, None, None
    if "embedding" in kinds:
        ex, model = _CACHE.get(
            extractor,
            weights=weights,
            layers=[layer] if layer else None,
            device=dev,
            dtype=dtype,
            seed=seed,
            compile=False,
        )
        tap = layer or list(ex.layers)[-1]
        recipe = ex.recipe
        settings.update(
            extractor=ex.name,
            weights=ex.weights_id,
            layer=tap,
            recipe=recipe.to_dict(),
            dtype=str(dtype).replace("torch.", ""),
        )
    hash_kinds = [k for k in kinds if k in HASH_METHODS]
    workers = _default_workers() if num_workers is None else int(num_workers)
    loader = _SignatureLoader(
        src,
        recipe,
        need_pixels=model is not None,
        need_decoded=False,
        hash_kinds=hash_kinds,
        sharpness=True,
        batch_size=batch_size,
        num_workers=workers,
        seed=seed,
    )
    ids, uris, sizes, failures, sharp = [], [], [], [], []
    hashes = {k: [] for k in hash_kinds}
    embeddings = []
    bar = _progress(len(loader.items), f"signatures {'+'.join(kinds)}", progress)
    try:
        with torch.inference_mode():
            for batch in loader:
                if batch.items:
                    for k in hash_kinds:
                        hashes[k].append(batch.hashes[k])
                    sharp.append(batch.sharpness)
                    if model is not None:
                        feats = model(batch.pixels.to(dev, non_blocking=True))
                        embeddings.append(feats[tap].float().mean(dim=1).cpu().numpy())
                for item, size in zip(batch.items, batch.sizes):
                    ids.append(item.id)
                    uris.append(item.uri)
                    sizes.append(size)
                failures.extend((item.id, item.uri, reason) for item, reason in batch.failures)
                bar.update(len(batch.items) + len(batch.failures))
                if failures:
                    bar.set_postfix(failed=len(failures))
    finally:
        bar.close()
    if not ids:
        first = f"; first failure: {failures[0][1]}: {failures[0][2]}" if failures else ""
        raise EmptySourceError(f"none of the {len(src)} images of the source could be read{first}")
    wh = np.asarray(sizes, dtype=np.int64).reshape(-1, 2)
    return Signatures(
        ids=ids,
        uris=uris,
        widths=wh[:, 0],
        heights=wh[:, 1],
        phash=np.concatenate(hashes["phash"]) if "phash" in hashes else None,
        dhash=np.concatenate(hashes["dhash"]) if "dhash" in hashes else None,
        embeddings=np.concatenate(embeddings).astype(np.float32, copy=False) if embeddings else None,
        sharpness=np.concatenate(sharp),
        failures=failures,
        settings=settings,
    )


def _is_job_dir(p: Path) -> bool:
    return p.is_dir() and (p / "manifest.json").is_file() and (p / "rows").is_dir()


def _is_fungi_dir(p: Path) -> bool:
    return p.is_dir() and (p / "features.parquet").is_file() and (p / "features.json").is_file()


def is_features_dir(path) -> bool:
    """Whether ``path`` is a job output directory (``neuroprint profile --out-dir``) or a FUNGI features
    directory (``neuroprint features --out-dir``)."""
    p = Path(path)
    return _is_job_dir(p) or _is_fungi_dir(p)


def _load_fungi(root: Path) -> Signatures:
    """The FUNGI features of ``neuroprint features`` (their PCA-reduced form when present) as embeddings."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(root / "features.parquet")
    column = "fungi_pca" if "fungi_pca" in table.column_names else "fungi"
    cols = table.select(["id", "uri", "status", "error"]).to_pydict()
    ok = np.asarray([s == "ok" for s in cols["status"]], dtype=bool)
    failures = [(cols["id"][i], cols["uri"][i], cols["error"][i] or "failed") for i in np.flatnonzero(~ok)]
    if not ok.any():
        raise EmptySourceError(f"{root}: no readable image in features.parquet")
    feats = table.filter(pa.array(ok)).column(column).combine_chunks()
    if feats.null_count:
        raise NeuroprintError(f"{root}/features.parquet: rows with status ok but no {column}")
    import pyarrow.compute as pc

    lengths = pc.list_value_length(feats).to_numpy(zero_copy_only=False)
    if len(set(lengths.tolist())) != 1:
        raise NeuroprintError(f"{root}/features.parquet: {column} vectors of different lengths")
    flat = feats.flatten().to_numpy(zero_copy_only=False).reshape(len(feats), int(lengths[0]))
    ids = [cols["id"][i] for i in np.flatnonzero(ok)]
    meta = json.loads((root / "features.json").read_text())
    logger.info(
        "%s: %d FUNGI features (%s); sizes unknown, so keep='largest' falls back to first seen",
        root,
        len(ids),
        column,
    )
    return Signatures(
        ids=ids,
        uris=[cols["uri"][i] for i in np.flatnonzero(ok)],
        widths=np.zeros(len(ids), dtype=np.int64),
        heights=np.zeros(len(ids), dtype=np.int64),
        embeddings=flat.astype(np.float32, copy=False),
        failures=failures,
        settings={"features_dir": str(root), "kinds": ["embedding"], "column": column, "features": meta},
    )


def load_signatures(features_dir: str | os.PathLike) -> Signatures:
    """Embeddings and/or hashes (and sizes) from a job directory written by ``neuroprint profile --out-dir
    DIR --embeddings [--hashes phash,dhash]`` (its rows/*.parquet, in shard order), or the FUNGI features
    of a ``neuroprint features --out-dir DIR`` directory as embeddings (``fungi_pca`` when present, else
    ``fungi``); failed rows become failures."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(features_dir)
    if _is_fungi_dir(root):
        return _load_fungi(root)
    if not _is_job_dir(root):
        raise NeuroprintError(
            f"{root} is not a neuroprint job directory (no manifest.json and rows/) nor a features "
            "directory (no features.parquet and features.json)"
        )
    manifest = json.loads((root / "manifest.json").read_text())
    files = sorted((root / "rows").glob("shard-*.parquet"))
    if not files:
        raise EmptySourceError(f"{root}/rows holds no shard files; has the job run?")
    if not manifest.get("complete", False):
        logger.warning("%s: the job is not complete; using the %d finished shards", root, len(files))
    ids, uris, widths, heights, embs, failures = [], [], [], [], [], []
    first = pq.read_schema(files[0]).names
    has_emb = "embedding" in first
    hash_cols = [h for h in HASH_METHODS if h in first]
    if not has_emb and not hash_cols:
        raise NeuroprintError(
            f"{files[0]} has no embedding or hash column; rerun the job with --embeddings and/or "
            f"--hashes phash,dhash into a new directory"
        )
    hashes = {h: [] for h in hash_cols}
    sharp = []  # a job computes it with its hashes; older job directories have no such column (NaN)
    for f in files:
        table = pq.read_table(f)
        cols = table.to_pydict()
        ok = np.asarray([s == "ok" for s in cols["status"]], dtype=bool)
        values = cols.get("sharpness", [None] * len(ok))
        sharp.extend(np.nan if v is None else v for v, good in zip(values, ok) if good)
        for i in np.flatnonzero(~ok):
            failures.append((cols["id"][i], cols["uri"][i], cols["error"][i] or "failed"))
        for h in hash_cols:
            hashes[h].extend(v for v, good in zip(cols[h], ok) if good)
        if ok.any() and has_emb:
            emb = table.filter(pa.array(ok)).column("embedding").combine_chunks()
            if emb.null_count:
                raise NeuroprintError(f"{f}: rows with status ok but no embedding")
            flat = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, emb.type.list_size)
            embs.append(flat)
        if ok.any():
            for i in np.flatnonzero(ok):
                ids.append(cols["id"][i])
                uris.append(cols["uri"][i])
                widths.append(cols["width"][i] or 0)
                heights.append(cols["height"][i] or 0)
    if not ids:
        raise EmptySourceError(f"{root}: no readable image in the job's rows")
    settings = manifest.get("settings", {})
    return Signatures(
        ids=ids,
        uris=uris,
        widths=np.asarray(widths, dtype=np.int64),
        heights=np.asarray(heights, dtype=np.int64),
        phash=np.asarray(hashes["phash"], dtype=np.int64) if "phash" in hashes else None,
        dhash=np.asarray(hashes["dhash"], dtype=np.int64) if "dhash" in hashes else None,
        embeddings=np.concatenate(embs).astype(np.float32, copy=False) if has_emb else None,
        sharpness=np.asarray(sharp, dtype=np.float32),
        failures=failures,
        settings={
            "features_dir": str(root),
            "kinds": [*hash_cols, *(["embedding"] if has_emb else [])],
            **{k: settings.get(k) for k in ("extractor", "weights", "layers", "recipe", "dtype", "source")},
        },
    )
