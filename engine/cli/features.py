"""`neuroprint features`: per-image FUNGI gradient features (and embeddings) as Parquet rows.

Hooked into the main CLI with ``add_parser(subparsers)``; ``run(args)`` returns the exit code. Output:

    OUT_DIR/features.parquet   one row per item: id, uri, status ("ok"/"failed", as in job rows), error, fungi
                               (float32 [E * objectives], blocks in --fungi order, each L2-normalised),
                               embedding (float32 [E], --embeddings), fungi_pca (float32 [N], --pca)
    OUT_DIR/features.json      every setting that changes a number, the block layout and the counts
    OUT_DIR/fungi_pca.npz      the PCA fitted here (--pca), to apply to another split with --pca-from
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .._names import FUNGI_MODES as MODES
from .._names import FUNGI_OBJECTIVES as OBJECTIVES
from .common import add_shared

__all__ = ["OBJECTIVES", "add_parser", "run"]

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    fp = subparsers.add_parser(
        "features",
        help="per-image FUNGI gradient features (and embeddings) as Parquet rows",
        description=(
            "Extract FUNGI features (gradients of self-supervised losses w.r.t. one linear layer, randomly "
            "projected to the embedding size; fungivision 0.0.2's numbers) of every image of SOURCE, "
            "and write one Parquet row per image to OUT_DIR/features.parquet. Unreadable images become "
            "error rows. It runs as a sharded job (OUT_DIR/rows/shard-*.parquet, manifest.json): rerun the "
            "same command to resume, --ray to spread shards over actors, --max-shards to stop early; "
            "features.parquet (and the PCA) are written once every shard is done. For a kNN evaluation, "
            "run the train split with --pca N and apply its PCA to the other split with --pca-from "
            "TRAIN_OUT/fungi_pca.npz; neuroprint.fungi.knn_accuracy does the rest."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    fp.add_argument("source", help="a folder, image list, Parquet table or tar shard (as for profile)")
    fp.add_argument("--out-dir", required=True, help="output folder (created)")
    fp.add_argument(
        "--fungi", default="kl,dino,simclr", help=f"objectives in block order, from {list(OBJECTIVES)}"
    )
    fp.add_argument("--embeddings", action="store_true", help="also write the backbone's embeddings")
    fp.add_argument(
        "--pca", type=int, default=0, help="also write the features reduced to N dims (PCA fitted here)"
    )
    fp.add_argument("--pca-from", default=None, help="apply this fungi_pca.npz instead of fitting a PCA")
    fp.add_argument("--model", default="vit_small_patch16_224", help="a timm model name")
    fp.add_argument(
        "--weights",
        default="random",
        help="'random', 'timm' (timm's pretrained weights) or a state-dict file",
    )
    fp.add_argument(
        "--layer", default=None, help="dot path of the target linear layer; None: the last block's attn.proj"
    )
    fp.add_argument("--input-dim", type=int, default=224, help="the model's input size")
    fp.add_argument("--negatives", default=None, help="SOURCE of SimCLR's negatives; None: SOURCE itself")
    add_shared(fp, "batch_size", "num_workers", "ray", "num_actors", "ray_address", "device", batch_size=16)
    fp.add_argument(
        "--shard-size", type=int, default=1024, help="images per shard (the unit of resume and of Ray work)"
    )
    fp.add_argument(
        "--max-shards", type=int, default=None, help="stop after computing N shards; rerun to go on"
    )
    fp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    fp.add_argument(
        "--fp16", action="store_true", help="autocast in bfloat16 (a GPU setting; float32 otherwise)"
    )
    fp.add_argument(
        "--mode",
        choices=MODES,
        default="compat",
        help="compat: fungivision's numbers; fixed: its defects fixed",
    )
    fp.add_argument("--seed", type=int, default=0, help="seeds the heads, projection, negatives and crops")
    fp.set_defaults(func=run)
    return fp


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _ok_fungi(table):
    """float32 [ok rows, D] of a rows table's ``fungi`` column, and the boolean mask of ok rows."""
    import numpy as np
    import pyarrow as pa

    ok = np.asarray([s == "ok" for s in table.column("status").to_pylist()], dtype=bool)
    col = table.filter(pa.array(ok)).column("fungi").combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0), dtype=np.float32), ok
    flat = col.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(col), -1).astype(np.float32, copy=False), ok


def run(args) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .._version import __version__
    from ..fungi import PCA
    from ..fungi.build import JOB_DEFAULTS, _build_model, _configs, _default_layer, _objectives
    from ..jobs import run_job

    configs = _configs()
    names = _objectives(args.fungi)
    if args.pca < 0 or args.batch_size < 1:
        raise ValueError("--pca must be >= 0 and --batch-size >= 1")
    if args.pca and args.pca_from:
        raise ValueError("--pca fits a PCA and --pca-from applies one: give one of them")
    out_dir = Path(args.out_dir)
    from ..stats.profile import resolve_device

    device = resolve_device(args.device)
    opts = {key: getattr(args, key) for key in JOB_DEFAULTS}
    # The features are a signatures-only job: sharded rows, resumable, local or on Ray actors.
    res = run_job(
        args.source,
        out_dir,
        (),
        extractor=None,
        embeddings=args.embeddings,
        fungi=opts,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=device,
        progress=not args.quiet,
        max_shards=args.max_shards,
        ray=args.ray,
        num_actors=args.num_actors,
        ray_address=args.ray_address,
        decoder="pil",
    )
    if not res.complete:
        sys.stderr.write(
            f"incomplete: {res.processed + res.failed} of {res.images_in} images done; rerun the same "
            "command to continue\n"
        )
        return 0
    files = sorted((out_dir / "rows").glob("shard-*.parquet"))
    columns = ["id", "uri", "status", "error", "fungi"] + (["embedding"] if args.embeddings else [])
    feature_dim = pq.read_schema(files[0]).field("fungi").type.list_size

    pca_meta, reducer = None, None
    if args.pca_from:
        reducer = PCA.load(args.pca_from)
        if reducer.mean.shape[0] != feature_dim:
            raise ValueError(
                f"{args.pca_from} reduces {reducer.mean.shape[0]}-d features; these are {feature_dim}-d"
            )
        pca_meta = {"from": os.path.abspath(args.pca_from), "components": int(reducer.components.shape[0])}
    elif args.pca:
        # Streamed: the PCA comes from the ok rows' sum and Gram matrix, one shard at a time.
        count, total, gram = 0, None, None
        for f in files:
            x, _ = _ok_fungi(pq.read_table(f, columns=["status", "fungi"]))
            if not len(x):
                continue
            x = x.astype(np.float64)
            total = x.sum(0) if total is None else total + x.sum(0)
            gram = x.T @ x if gram is None else gram + x.T @ x
            count += len(x)
        reducer = PCA.fit_moments(count, total, gram, args.pca)
        reducer.save(str(out_dir / "fungi_pca.npz"))
        pca_meta = {"fitted_on": "this source", "components": int(reducer.components.shape[0])}

    def write(path):
        writer = None
        try:
            for f in files:
                table = pq.read_table(f, columns=columns)
                if reducer is not None:
                    x, ok = _ok_fungi(table)
                    reduced = reducer.transform(x).astype(np.float32) if len(x) else np.zeros((0, 0))
                    col = [None] * table.num_rows
                    for k, i in enumerate(np.flatnonzero(ok)):
                        col[i] = reduced[k]
                    table = table.append_column(
                        "fungi_pca",
                        pa.array(col, type=pa.list_(pa.float32(), int(reducer.components.shape[0]))),
                    )
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()

    _write_atomic(out_dir / "features.parquet", write)
    emb_dim = feature_dim // len(names)  # one block of the embedding size per objective
    manifest = json.loads((out_dir / "manifest.json").read_text())
    meta = {
        "neuroprint_version": __version__,
        "source": manifest["settings"]["source"],
        "model": args.model,
        "weights": args.weights,
        "target_layer": args.layer or _default_layer(_build_model(args)),
        "input_dim": args.input_dim,
        "objectives": names,
        "blocks": {n: [k * emb_dim, (k + 1) * emb_dim] for k, n in enumerate(names)},
        "objective_configs": {n: vars(configs[n]()) for n in names},
        "embeddings_dim": emb_dim,
        "dtype": "bfloat16" if args.fp16 else "float32",
        "mode": args.mode,
        "seed": args.seed,
        "negatives": args.negatives or "SOURCE" if "simclr" in names else None,
        "embeddings": bool(args.embeddings),
        "pca": pca_meta,
        "rows": res.images_in,
        "ok": res.processed,
        "errors": res.failed,
        "job": {"shards": res.shards_total, "shard_size": args.shard_size},
    }
    _write_atomic(out_dir / "features.json", lambda p: p.write_text(json.dumps(meta, indent=2, default=str)))
    log.info("wrote %d rows (%d errors) to %s", res.images_in, res.failed, out_dir)
    return 0
