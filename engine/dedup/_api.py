"""The duplicate search's entry points (`neuroprint.dedup` re-exports them, imported on first use)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._errors import NeuroprintError
from .search import (
    _dedupe_pairs,
    approximate_topk,
    connected_components,
    embedding_pairs,
    hash_pairs,
    keep_ranking,
    kept_groups,
    sharded_topk,
)
from .settings import DEFAULT_MAX_DISTANCE, DEFAULT_THRESHOLD, GROUPINGS, KEEP_POLICIES, METHODS
from .signatures import HASH_METHODS, Signatures, compute_signatures, is_features_dir, load_signatures

logger = logging.getLogger(__name__)

OUTPUT_FILES = (
    "pairs.parquet",
    "groups.parquet",
    "keep.parquet",
    "failures.parquet",
    "signatures.parquet",
    "dedup.json",
    "contact_sheet.png",
)


class DedupError(NeuroprintError, ValueError):
    """The duplicate search cannot run with these inputs or settings."""


def resolve_methods(method: str | Sequence[str]) -> list[str]:
    """A method name or a list of them -> a validated list, with "both" expanded to phash and embedding."""
    names = [method] if isinstance(method, str) else list(method)
    out = []
    for m in names:
        if m not in METHODS:
            raise DedupError(f"unknown method {m!r}; expected one of {', '.join(METHODS)}")
        out.extend(["phash", "embedding"] if m == "both" else [m])
    return list(dict.fromkeys(out))


@dataclass
class DedupResult:
    out_dir: Path | None
    pairs: object  # pyarrow.Table
    groups: object  # pyarrow.Table
    keep: object  # pyarrow.Table
    failures: object  # pyarrow.Table
    settings: dict

    @property
    def num_duplicates(self) -> int:
        """Images to drop."""
        return int(len(self.keep) - sum(self.keep.column("keep").to_pylist()))


def find_pairs(
    sig: Signatures,
    methods: str | Sequence[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    k: int = 10,
    approximate: bool = False,
    device: str | torch.device = "cpu",
    ray: bool = False,
    num_shards: int | None = None,
    ray_address: str | None = None,
):
    """(pairs table, a, b): the table (id_a, id_b, similarity, method, distance) over the methods, sorted
    by method then source order, and its rows' source-order indices a < b as int64 arrays. Embedding pairs: b among a's k nearest (or a among b's) and cosine >= threshold (exact,
    or `approximate_topk` when ``approximate``, or `sharded_topk` over Ray actors when ``ray``). Hash
    pairs: every pair within ``max_distance`` bits."""
    import pyarrow as pa

    cols = {"a": [], "b": [], "similarity": [], "method": [], "distance": []}
    for m in resolve_methods(methods):
        values = sig.get(m)
        if values is None:
            raise DedupError(f"method {m!r} needs {m} signatures, which were not computed")
        if m == "embedding":
            if approximate or ray:
                if approximate:
                    sims, idx = approximate_topk(values, k, device=device)
                else:
                    sims, idx = sharded_topk(
                        values, k, num_shards=num_shards, ray_address=ray_address, device=str(device)
                    )
                r, c = np.nonzero((idx >= 0) & (sims >= threshold))
                a, b, s = _dedupe_pairs(r, idx[r, c], sims[r, c], len(sig))
            else:
                a, b, s = embedding_pairs(values, threshold, k, device=device)
            dist = np.full(len(a), -1, np.int32)
        else:
            a, b, d = hash_pairs(values, max_distance, device=device)
            s = 1.0 - d.astype(np.float32) / 64.0
            dist = d.astype(np.int32)
        cols["a"].append(a)
        cols["b"].append(b)
        cols["similarity"].append(np.asarray(s, np.float32))
        cols["method"].extend([m] * len(a))
        cols["distance"].append(dist)
    a = np.concatenate(cols["a"]).astype(np.int64)
    b = np.concatenate(cols["b"]).astype(np.int64)
    ids = np.asarray(sig.ids, dtype=object)
    dist = np.concatenate(cols["distance"])
    table = pa.table(
        {
            "id_a": pa.array(ids[a].tolist(), pa.string()),
            "id_b": pa.array(ids[b].tolist(), pa.string()),
            "similarity": pa.array(np.concatenate(cols["similarity"]), pa.float32()),
            "method": pa.array(cols["method"], pa.string()),
            "distance": pa.array(dist, pa.int32(), mask=dist < 0),
        }
    )
    return table, a, b


def _groups_and_keep(sig: Signatures, a: np.ndarray, b: np.ndarray, policy: str, grouping: str = "kept"):
    import pyarrow as pa

    if policy not in KEEP_POLICIES:
        raise DedupError(f"unknown keep policy {policy!r}; expected one of {', '.join(KEEP_POLICIES)}")
    if grouping not in GROUPINGS:
        raise DedupError(f"unknown grouping {grouping!r}; expected one of {', '.join(GROUPINGS)}")
    n = len(sig)
    hashes = sig.phash if sig.phash is not None else sig.dhash
    features = dict(
        widths=sig.widths,
        heights=sig.heights,
        embeddings=sig.embeddings,
        hashes=hashes,
        sharpness=sig.sharpness,
    )
    # Rank every member of every connected component by the keep policy (within its component), then
    # either keep the best of each component, or group without chaining around kept members.
    root = connected_components(n, a, b)
    sizes = np.bincount(root, minlength=n)
    order = np.argsort(root, kind="stable")
    bounds = np.searchsorted(root[order], np.arange(n + 1))
    rank = np.arange(n, dtype=np.int64)
    why_kept = {}
    position = 0
    for r in np.flatnonzero(sizes > 1):
        ranked, why = keep_ranking(order[bounds[r] : bounds[r + 1]], policy, **features)
        rank[ranked] = n + position + np.arange(len(ranked))  # after every node outside components
        position += len(ranked)
        why_kept.update(zip(ranked.tolist(), why))
    if grouping == "components":
        head = np.where(sizes[root] > 1, root, np.arange(n))
        for r in np.flatnonzero(sizes > 1):  # the best-ranked member of each component is kept
            members = order[bounds[r] : bounds[r + 1]]
            head[members] = members[np.argmin(rank[members])]
    else:
        head = kept_groups(n, a, b, rank)
    counts = np.bincount(head, minlength=n)
    in_group = counts[head] > 1
    group_key = np.full(n, n, dtype=np.int64)  # groups numbered by their first member in source order
    np.minimum.at(group_key, head[in_group], np.flatnonzero(in_group))
    heads = np.flatnonzero(counts > 1)
    heads = heads[np.argsort(group_key[heads], kind="stable")]
    group_id = np.full(n, -1, dtype=np.int64)
    group_id[heads] = np.arange(len(heads))
    group_of = np.where(in_group, group_id[head], -1)
    from .sharpness import UPSCALED_BELOW

    keep = head == np.arange(n)
    reason = ["unique"] * n
    g_rows = {"group": [], "size": [], "keep_id": [], "members": [], "policy": []}
    by_head = np.argsort(head, kind="stable")
    head_bounds = np.searchsorted(head[by_head], np.arange(n + 1))
    sharp = sig.sharpness
    area = sig.widths.astype(np.int64) * sig.heights.astype(np.int64)
    for g, h in enumerate(heads.tolist()):
        members = by_head[head_bounds[h] : head_bounds[h + 1]]  # ascending source order
        why = why_kept[h]
        if policy == "largest":
            larger = [m for m in members if area[m] > area[h]]
            if larger:  # only upscaled-looking members can rank above a larger one
                copies = (
                    "1 larger copy that looks"
                    if len(larger) == 1
                    else f"{len(larger)} larger copies that look"
                )
                why += f"; preferred to {copies} upscaled"
        reason[h] = f"kept: {why}"
        for m in members:
            if m != h:
                soft = (
                    policy == "largest"
                    and sharp is not None
                    and np.isfinite(sharp[m])
                    and sharp[m] < UPSCALED_BELOW
                )
                reason[m] = f"duplicate of {sig.ids[h]}" + (
                    f" (looks upscaled or blurred: sharpness {float(sharp[m]):.2f})" if soft else ""
                )
        g_rows["group"].append(g)
        g_rows["size"].append(len(members))
        g_rows["keep_id"].append(sig.ids[h])
        g_rows["members"].append([sig.ids[m] for m in members])
        g_rows["policy"].append(policy)
    for m in np.flatnonzero(keep & ~in_group & (sizes[root] > 1)).tolist():
        reason[m] = "kept: not within the threshold of any kept image (its pairs are dropped for others)"
    groups = pa.table(
        {
            "group": pa.array(g_rows["group"], pa.int64()),
            "size": pa.array(g_rows["size"], pa.int32()),
            "keep_id": pa.array(g_rows["keep_id"], pa.string()),
            "members": pa.array(g_rows["members"], pa.list_(pa.string())),
            "policy": pa.array(g_rows["policy"], pa.string()),
        }
    )
    keep_table = pa.table(
        {
            "id": pa.array(sig.ids, pa.string()),
            "uri": pa.array(sig.uris, pa.string()),
            "keep": pa.array(keep, pa.bool_()),
            "group": pa.array(group_of, pa.int64(), mask=group_of < 0),
            "reason": pa.array(reason, pa.string()),
        }
    )
    return groups, keep_table


def _write_parquet(path: Path, table) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _prepare_out_dir(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise DedupError(f"{out} exists and is not a directory")
        foreign = [p.name for p in out.iterdir() if p.name not in OUTPUT_FILES]
        if foreign:
            raise DedupError(
                f"{out} holds other files ({', '.join(sorted(foreign)[:3])}); use an empty or new directory"
            )
    out.mkdir(parents=True, exist_ok=True)


def find_duplicates(
    source,
    out_dir: str | os.PathLike | None = None,
    *,
    method: str | Sequence[str] = "phash",
    threshold: float = DEFAULT_THRESHOLD,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    k: int = 10,
    keep: str = "largest",
    grouping: str = "kept",
    approximate: bool = False,
    extractor: str = "mugs_vit_base",
    weights: str | os.PathLike = "default",
    layer: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    seed: int = 0,
    contact_sheet: bool = False,
    progress: bool = True,
    signatures: Signatures | None = None,
    ray: bool = False,
    num_shards: int | None = None,
    ray_address: str | None = None,
) -> DedupResult:
    """Find near-duplicates in ``source`` and write the tables to ``out_dir`` (see the module docstring).

    source: anything `neuroprint.open_source` accepts, or a job directory with an ``embedding`` column
    (then only ``method="embedding"`` is possible). method: phash, dhash, embedding, both (= phash and
    embedding) or a list. threshold: minimum cosine similarity for embedding pairs; max_distance: maximum
    Hamming distance (bits of 64) for hash pairs; k: neighbours searched per image for embeddings.
    keep: largest, first or centre (see `keep_ranking`). grouping: "kept" (no chaining: each image is
    dropped only for a kept image it is paired with, see `kept_groups`) or "components" (connected
    components of all pairs, one kept per component). ``signatures``: precomputed, skips the pass.
    ray: run the exact embedding search on Ray actors, the signatures split into ``num_shards`` (see
    `sharded_topk`; the signature pass itself runs here, or use a Ray profile job's directory).
    """
    from ..stats.profile import resolve_device

    methods = resolve_methods(method)
    if keep not in KEEP_POLICIES:
        raise DedupError(f"unknown keep policy {keep!r}; expected one of {', '.join(KEEP_POLICIES)}")
    if grouping not in GROUPINGS:
        raise DedupError(f"unknown grouping {grouping!r}; expected one of {', '.join(GROUPINGS)}")
    if not isinstance(k, int) or k < 1:
        raise DedupError(f"k must be a positive integer, got {k!r}")
    if not -1.0 <= float(threshold) <= 1.0:
        raise DedupError(f"threshold is a cosine similarity in [-1, 1], got {threshold}")
    if not 0 <= int(max_distance) <= 64:
        raise DedupError(f"max_distance is a number of bits in 0..64, got {max_distance}")
    dev = resolve_device(device)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _prepare_out_dir(out)
    from_dir = signatures is None and isinstance(source, (str, os.PathLike)) and is_features_dir(source)
    if signatures is not None:
        sig = signatures
    elif from_dir:
        sig = load_signatures(source)
        missing = [m for m in methods if sig.get(m) is None]
        if missing:
            raise DedupError(
                f"{source} is a job directory without {', '.join(missing)} signatures (it has "
                f"{', '.join(sig.kinds())}); rerun the job with --embeddings / --hashes phash,dhash, or pass "
                "the image source itself"
            )
    else:
        sig = compute_signatures(
            source,
            methods,
            extractor=extractor,
            weights=weights,
            layer=layer,
            device=dev,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            progress=progress,
        )
    pairs, a, b = find_pairs(
        sig,
        methods,
        threshold=threshold,
        max_distance=max_distance,
        k=k,
        approximate=approximate,
        device=dev,
        ray=ray,
        num_shards=num_shards,
        ray_address=ray_address,
    )
    groups, keep_table = _groups_and_keep(sig, a, b, keep, grouping)
    import pyarrow as pa

    failures = pa.table(
        {
            "id": pa.array([f[0] for f in sig.failures], pa.string()),
            "uri": pa.array([f[1] for f in sig.failures], pa.string()),
            "error": pa.array([f[2] for f in sig.failures], pa.string()),
        }
    )
    from .._version import __version__

    settings = {
        "methods": methods,
        "threshold": float(threshold) if "embedding" in methods else None,
        "max_distance": int(max_distance) if any(m in HASH_METHODS for m in methods) else None,
        "k": int(k) if "embedding" in methods else None,
        "keep": keep,
        "grouping": grouping,
        "approximate": bool(approximate),
        "ray_shards": num_shards if ray else None,
        "signatures": sig.settings,
        "counts": {
            "images": len(sig),
            "failed": len(sig.failures),
            "pairs": len(pairs),
            "groups": len(groups),
            "dropped": int(len(keep_table) - sum(keep_table.column("keep").to_pylist())),
        },
        "version": __version__,
    }
    if out is not None:
        # A previous run's files go only now, once this run has its results: none may survive into this
        # run's output, and a run that fails earlier leaves the previous output as it was.
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
        _write_parquet(out / "pairs.parquet", pairs)
        _write_parquet(out / "groups.parquet", groups)
        _write_parquet(out / "keep.parquet", keep_table)
        _write_parquet(out / "failures.parquet", failures)
        sig_cols = {
            "id": pa.array(sig.ids, pa.string()),
            "uri": pa.array(sig.uris, pa.string()),
            "width": pa.array(sig.widths, pa.int32()),
            "height": pa.array(sig.heights, pa.int32()),
        }
        for h in HASH_METHODS:
            if sig.get(h) is not None:
                sig_cols[h] = pa.array(sig.get(h), pa.int64())
        if sig.sharpness is not None:
            sig_cols["sharpness"] = pa.array(sig.sharpness, pa.float32())
        _write_parquet(out / "signatures.parquet", pa.table(sig_cols))
        if contact_sheet:
            write_contact_sheet(source, groups, out / "contact_sheet.png", from_dir=from_dir, sig=sig)
        tmp = out / "dedup.json.tmp"
        tmp.write_text(json.dumps(settings, indent=2, default=str))
        os.replace(tmp, out / "dedup.json")
    return DedupResult(out, pairs, groups, keep_table, failures, settings)


def write_contact_sheet(
    source,
    groups,
    path: str | os.PathLike,
    *,
    max_groups: int = 8,
    max_members: int = 8,
    thumb: int = 96,
    from_dir: bool = False,
    sig: Signatures | None = None,
) -> Path:
    """A PNG of the largest groups: one row per group, the kept image first (green frame), its
    duplicates after it (red frames). Images are read again from ``source``; for a job directory the
    rows' uris are read as files when they exist. Unreadable images are drawn as grey tiles."""
    from PIL import Image, ImageDraw

    from ..io.decode import decode_image

    path = Path(path)
    rows = sorted(
        zip(groups.column("group").to_pylist(), groups.column("size").to_pylist(), range(len(groups))),
        key=lambda t: (-t[1], t[0]),
    )[:max_groups]
    reader = None
    if not from_dir:
        from ..io.sources import open_source

        src = open_source(source)
        by_id = {it.id: it for it in src}

        def reader(item_id):
            return decode_image(src.read(by_id[item_id]))
    else:
        uri_of = dict(zip(sig.ids, sig.uris)) if sig is not None else {}

        def reader(item_id):
            return decode_image(uri_of.get(item_id, item_id))

    pad = 4
    cols = max([min(max_members, s) for _, s, _ in rows], default=1)
    sheet = Image.new("RGB", (cols * (thumb + pad) + pad, max(1, len(rows)) * (thumb + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    keep_ids = groups.column("keep_id").to_pylist()
    members_all = groups.column("members").to_pylist()
    for r, (_, _, gi) in enumerate(rows):
        members = [keep_ids[gi]] + [m for m in members_all[gi] if m != keep_ids[gi]]
        for c, item_id in enumerate(members[:max_members]):
            x0, y0 = pad + c * (thumb + pad), pad + r * (thumb + pad)
            try:
                im = Image.fromarray(reader(item_id))
                im.thumbnail((thumb - 4, thumb - 4))
                sheet.paste(im, (x0 + 2, y0 + 2))
            except Exception:  # a tile, not a crash: the sheet is a preview
                draw.rectangle([x0 + 2, y0 + 2, x0 + thumb - 3, y0 + thumb - 3], fill=(128, 128, 128))
            colour = (0, 160, 0) if c == 0 else (200, 0, 0)
            draw.rectangle([x0, y0, x0 + thumb - 1, y0 + thumb - 1], outline=colour, width=2)
    tmp = path.with_name(path.name + ".tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path
