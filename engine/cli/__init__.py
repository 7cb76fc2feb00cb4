"""The ``neuroprint`` command: thin over the library; one line and a non-zero exit on bad input."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from pathlib import Path

from .common import DEFAULT_MAX_PIXELS, add_shared, max_pixels_arg, num_images_arg

EPILOG = textwrap.dedent(
    """\
    examples:
      neuroprint profile photos/ -o photos_dna                      # histogram-1000 with mugs_vit_base
      neuroprint profile photos/ -o photos -d histogram-1000 -d layer-gaussian --extractor dino_vit_base
      neuroprint profile set.parquet -o set_dna --ranges auto --weights random   # offline, no downloads
      neuroprint compare a_dna b_dna                                # EMD for histograms, FD for layer-gaussian
      neuroprint compare a_dna b_dna --layer block_3 --per-neuron per_neuron.parquet
      neuroprint compare day1 day2 day3 day4 --matrix emd_matrix.parquet   # all pairs
      neuroprint score new_images/ --reference ref_dna -o scores.parquet   # per-image EMD to a reference
      neuroprint profile real/ -o real --extractor inception --layers block_3 -d layer-gaussian
      neuroprint compare real fake --metric fd --layer block_3      # = FID (clean resize)
      neuroprint demo                                               # a self-contained tour, offline
    """
)

logger = logging.getLogger("neuroprint")


class CLIError(Exception):
    """A usage error found after parsing (reported like argparse's, exit code 2)."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neuroprint",
        description="Neuron-level fingerprints (Visual DNA) of image collections, and their distances.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=_version())
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    p.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    pr = sub.add_parser(
        "profile",
        help="make VDNAs of a set of images (OUT.json + OUT.npz)",
        description=(
            "Run a frozen network over every image of SOURCE and record each neuron's activation "
            "distribution. SOURCE is a folder (searched recursively), an image, a .txt list of paths "
            "(relative to the list's folder) or a .parquet table with a path or image-bytes column. "
            "Unreadable images are skipped and listed in the output's metadata."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pr.add_argument(
        "source",
        nargs="?",
        help="folder, image file, .txt list, .parquet table, WebDataset .tar shard(s) or URL (s3://...)",
    )
    pr.add_argument("-o", "--out", help="output name: writes OUT.json + OUT.npz")
    pr.add_argument(
        "--out-dir",
        help="run as a sharded, resumable job into this directory: per-image Parquet rows, VDNAs, manifest; "
        "rerun the same command to resume after a crash",
    )
    pr.add_argument(
        "--resume",
        action="store_true",
        help="with --out-dir: continue the job there (it must exist); without SOURCE its recorded command is "
        f"rerun, and only {', '.join('--' + k.replace('_', '-') for k in _RUNTIME_ARGS)} given now apply",
    )
    pr.add_argument("--shard-size", type=int, default=1024, help="images per shard (with --out-dir)")
    pr.add_argument(
        "--max-shards",
        type=int,
        default=None,
        help="with --out-dir: compute at most this many shards now, then stop (--resume continues)",
    )
    pr.add_argument(
        "--rebuild",
        action="store_true",
        help="with --out-dir on a complete job: re-list the source, check it against the job and rebuild "
        "the outputs (without it, a complete job asked again is reported done at once)",
    )
    pr.add_argument(
        "--hashes",
        type=lambda v: [h.strip() for h in v.split(",") if h.strip()],
        default=[],
        metavar="phash,dhash",
        help="with --out-dir: add each image's perceptual hashes as int64 columns (for neuroprint dedup)",
    )
    pr.add_argument(
        "--fungi",
        default=None,
        metavar="kl,dino,simclr",
        help="with --out-dir: add each image's FUNGI features (as `neuroprint features`) as a column",
    )
    pr.add_argument("--fungi-model", default="vit_small_patch16_224", help="timm model of --fungi")
    pr.add_argument("--fungi-weights", default="random", help="'random', 'timm' or a state-dict file")
    pr.add_argument("--fungi-layer", default=None, help="target linear layer [default: last attn.proj]")
    pr.add_argument("--fungi-input-dim", type=int, default=224, help="input size of --fungi-model")
    pr.add_argument(
        "--fungi-mode", default="compat", choices=["compat", "fixed"], help="see neuroprint.fungi"
    )
    pr.add_argument("--fungi-negatives", default=None, help="SimCLR negatives source [default: SOURCE]")
    pr.add_argument("--fungi-seed", type=int, default=0, help="seeds FUNGI's heads, projection and views")
    add_shared(
        pr,
        "extractor",
        "weights",
        "layers",
        "batch_size",
        "num_workers",
        "device",
        "decoder",
        "ray",
        "num_actors",
        "ray_address",
    )
    pr.add_argument(
        "--max-pixels",
        type=max_pixels_arg,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help="images over N pixels (from their header) are failures, never decoded; 0: no limit "
        "[default: 100000000]; also 100M, 1.5G",
    )
    pr.add_argument(
        "--embeddings", action="store_true", help="with --out-dir: add each image's pooled embedding"
    )
    pr.add_argument(
        "--reference",
        action="append",
        metavar="[NAME=]VDNA",
        help="with --out-dir: add each image's EMD to this histogram VDNA as column emd:NAME (repeatable)",
    )
    pr.add_argument(
        "-d",
        "--distribution",
        action="append",
        help="histogram-<bins>, gaussian, layer-gaussian or activation-ranges; repeat for several from one "
        "pass (then written as OUT-<distribution>.json/.npz) [default: histogram-1000]",
    )
    pr.add_argument(
        "--ranges",
        default=None,
        help="histogram bin ranges: 'published' (the extractor's, the default), 'auto' (measured by a first pass "
        "over SOURCE), or an activation_ranges.json / activation-ranges VDNA; VDNAs are comparable only "
        "when made with the same ranges",
    )
    pr.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="network precision"
    )
    pr.add_argument(
        "--histogram-precision",
        default="fp64",
        choices=["fp64", "fp32"],
        help="the histograms' normalisation arithmetic: fp64 (vdna's, exact parity) or fp32 (for bfloat16 / "
        "float16 networks: fewer GPU registers, no fp64 units); recorded in the VDNA",
    )
    pr.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile the network [default: on CUDA]",
    )
    pr.add_argument(
        "--num-images", type=num_images_arg, default=-1, help="use only this many images (-1: all)"
    )
    pr.add_argument(
        "--shuffle", action="store_true", help="pick --num-images at random (seeded) instead of the first"
    )
    pr.add_argument("--seed", type=int, default=0, help="seed for shuffling, random crops and random weights")
    pr.add_argument(
        "--crop", default="none", choices=["none", "center", "random"], help="square crop before resizing"
    )
    pr.add_argument(
        "--resize-mode", default=None, choices=["clean", "legacy_pytorch"], help="override the resize"
    )
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    cp = sub.add_parser(
        "compare",
        help="distance between two VDNAs, or the distance matrix of many",
        description=(
            "Distance between two VDNAs of the same extractor and distribution: emd (histograms, in bins), "
            "nfd (neuron-wise Frechet distance of gaussian / layer-gaussian VDNAs) or fd (Frechet distance of "
            "layer-gaussian VDNAs; FID on Inception's block_3). By default the mean over all neurons "
            "(fd: over layers). With more than two VDNAs, every pair is compared (EMD on the batched kernel) "
            "and --matrix writes the matrix as a Parquet table."
        ),
    )
    cp.add_argument(
        "vdnas", nargs="+", metavar="VDNA", help="two or more VDNAs (NAME, NAME.json or NAME.npz)"
    )
    cp.add_argument(
        "--matrix", metavar="FILE.parquet", help="write every pair's distance (columns a, b, i, j, value)"
    )
    cp.add_argument(
        "--metric",
        choices=["emd", "nfd", "fd"],
        help="default: emd for histograms, fd for layer-gaussian, nfd for gaussian",
    )
    cp.add_argument("--layer", help="use only the neurons of this layer")
    cp.add_argument("--neuron", type=int, help="use only this neuron of --layer")
    cp.add_argument(
        "--per-neuron", metavar="FILE.parquet", help="also write every neuron's distance to a Parquet table"
    )
    cp.add_argument("--json", action="store_true", help="print the result as JSON")

    sp = sub.add_parser(
        "score",
        help="score every image by its EMD to a reference histogram VDNA (Parquet rows)",
        description="Rank images by how far each one's own activation distribution is from a reference "
        "VDNA (curation, drift attribution): one row per image with the mean EMD over all neurons and per "
        "layer, using the reference's extractor, weights and ranges. Unreadable images are rows with ok=false.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sp.add_argument("source", help="folder, image file, .txt list or .parquet table")
    sp.add_argument("--reference", required=True, help="histogram VDNA made by neuroprint")
    sp.add_argument("-o", "--out", required=True, help="output Parquet file")
    sp.add_argument(
        "--weights", default=None, help="needed when the reference was made with a local checkpoint"
    )
    add_shared(sp, "batch_size", "num_workers", "device")
    sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    sp.add_argument("-q", "--quiet", action="store_true")

    ip = sub.add_parser("info", help="describe a VDNA: extractor, weights, images, failures, ranges")
    ip.add_argument("vdna", help="VDNA (NAME, NAME.json or NAME.npz)")
    ip.add_argument("--failures", action="store_true", help="list every image that could not be read")

    mp = sub.add_parser("merge", help="merge VDNAs of the same settings (add new images to a reference)")
    mp.add_argument("vdnas", nargs="+", help="two or more VDNAs")
    mp.add_argument("-o", "--out", required=True, help="output name")

    ep = sub.add_parser("extractors", help="list the extractors with their layers and neuron counts")
    ep.add_argument("--layers", action="store_true", help="also list every layer")

    dp = sub.add_parser(
        "demo",
        help="offline tour: makes images, profiles them with a random-weight network and compares",
        description="Generates two small image sets, measures shared activation ranges, profiles three subsets "
        "from one pass each and prints their distances. Needs no download.",
    )
    dp.add_argument("--out", default="demo-out", help="working folder")
    dp.add_argument("--images", type=int, default=24, help="images per set")
    add_shared(dp, "extractor", "device", extractor="rand_resnet50")

    from .features import add_parser as add_features_parser

    add_features_parser(sub)
    from .dedup import add_parser as add_dedup_parser

    add_dedup_parser(sub)
    from .explain import add_parser as add_explain_parser
    from .explain import add_rf_parser

    add_explain_parser(sub)
    add_rf_parser(sub)
    from .visualize import add_parser as add_visualize_parser

    add_visualize_parser(sub)
    from .check import add_parser as add_check_parser

    add_check_parser(sub)
    return p


def _version() -> str:
    from .._version import __version__

    return f"neuroprint {__version__}"


def _vdna_path(p: str) -> str:
    path = Path(p)
    return str(path.with_suffix("")) if path.suffix in (".json", ".npz") else str(path)


def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


# Options that change how a job runs, never what it computes: a --resume takes them from the new command.
_RUNTIME_ARGS = (
    "device",
    "num_workers",
    "ray",
    "num_actors",
    "ray_address",
    "quiet",
    "max_shards",
    "rebuild",
)
# Options that may name local files: recorded as absolute paths so that a resume works from any folder.
_PATH_ARGS = ("source", "ranges", "weights")


def _recorded_command(args) -> dict:
    rec = {
        k: v for k, v in vars(args).items() if k not in ("command", "verbose", "debug", "resume", "out_dir")
    }
    for key in _PATH_ARGS:
        value = rec.get(key)
        if isinstance(value, str) and "://" not in value and os.path.exists(value):
            rec[key] = os.path.abspath(value)
    refs = []
    for spec in rec.get("reference") or []:
        name, sep, path = spec.partition("=")
        refs.append(f"{name}={os.path.abspath(path)}" if sep else os.path.abspath(spec))
    rec["reference"] = refs or None
    return rec


def _apply_resume(args) -> None:
    from ..jobs import MANIFEST

    if args.out_dir is None:
        raise CLIError("--resume continues a job: give its --out-dir")
    manifest_path = Path(args.out_dir) / MANIFEST
    if not manifest_path.is_file():
        raise CLIError(f"nothing to resume: {args.out_dir} holds no job ({MANIFEST} not found)")
    if args.source is not None:
        return  # the whole command is given again; run_job checks that its settings are the job's
    try:
        recorded = json.loads(manifest_path.read_text()).get("command")
    except ValueError as err:
        raise CLIError(f"{manifest_path} is not readable JSON ({err})") from None
    if not isinstance(recorded, dict):
        raise CLIError(
            f"{manifest_path} records no command (the job was not started from the CLI): give SOURCE"
        )
    for key, value in recorded.items():
        if key not in _RUNTIME_ARGS and hasattr(args, key):
            setattr(args, key, value)


def cmd_profile(args) -> int:
    if args.resume and args.source is None and not args.rebuild and args.out_dir is not None:
        from .._stamps import complete_job

        done = complete_job(args.out_dir)  # before torch is imported: nothing to do takes no time
        if done is not None:
            s = done["summary"]
            print(
                f"{args.out_dir}: {s['images_in']} images in = {s['processed']} processed + {s['failed']} failed "
                f"(0 of {len(done['finished'])} shards computed now); VDNAs: {', '.join(done['outputs'])} "
                "(the job was already complete: nothing computed; --rebuild redoes the outputs)"
            )
            return 0
    from ..stats.profile import profile

    if args.resume:
        _apply_resume(args)
    if args.source is None:
        raise CLIError("give a SOURCE to profile (or --resume --out-dir DIR to continue a job)")
    dists = args.distribution or ["histogram-1000"]
    if (args.out is None) == (args.out_dir is None):
        raise CLIError("give exactly one of -o/--out (VDNA files) and --out-dir (a sharded job)")
    if args.out_dir is not None:
        if args.num_images != -1 or args.shuffle:
            raise CLIError(
                "--num-images/--shuffle select images for -o; a job (--out-dir) takes the whole source"
            )
        return _profile_job(args, dists)
    out = _vdna_path(args.out)
    vdnas = profile(
        args.source,
        dists,
        extractor=args.extractor,
        weights=args.weights,
        layers=args.layers,
        ranges=args.ranges,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=_dtype(args.dtype),
        compile=args.compile,
        num_images=args.num_images,
        max_pixels=args.max_pixels,
        shuffle=args.shuffle,
        seed=args.seed,
        crop=args.crop,
        resize_mode=args.resize_mode,
        progress=not args.quiet,
        histogram_precision=args.histogram_precision,
    )
    for name, vdna in vdnas.items():
        path = out if len(vdnas) == 1 else f"{out}-{name}"
        vdna.save(path)
        failed = (
            f", {vdna.num_failed} unreadable (see `neuroprint info {path} --failures`)"
            if vdna.num_failed
            else ""
        )
        print(f"{path}.json/.npz: {vdna.name} of {vdna.num_images} images{failed}")
    return 0


def _references(specs) -> dict:
    refs = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(_vdna_path(spec)).name, spec
        if name in refs:
            raise CLIError(f"--reference name {name!r} given twice")
        refs[name] = _vdna_path(path)
    return refs


def _fungi_options(args) -> dict | None:
    if not args.fungi:
        return None
    negatives = args.fungi_negatives
    if negatives and "://" not in negatives and os.path.exists(negatives):
        negatives = os.path.abspath(negatives)
    return {
        "fungi": args.fungi,
        "model": args.fungi_model,
        "weights": args.fungi_weights,
        "layer": args.fungi_layer,
        "input_dim": args.fungi_input_dim,
        "mode": args.fungi_mode,
        "negatives": negatives,
        "seed": args.fungi_seed,
    }


def _profile_job(args, dists) -> int:
    from ..jobs import run_job

    res = run_job(
        args.source,
        args.out_dir,
        dists,
        extractor=args.extractor,
        weights=args.weights,
        layers=args.layers,
        ranges=args.ranges,
        embeddings=args.embeddings,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=_dtype(args.dtype),
        compile=args.compile,
        seed=args.seed,
        crop=args.crop,
        resize_mode=args.resize_mode,
        progress=not args.quiet,
        references=_references(args.reference),
        ray=args.ray or args.ray_address is not None,
        num_actors=args.num_actors,
        ray_address=args.ray_address,
        decoder=args.decoder,
        command=_recorded_command(args),
        max_shards=args.max_shards,
        rebuild=args.rebuild,
        hashes=args.hashes,
        fungi=_fungi_options(args),
        max_pixels=args.max_pixels,
        histogram_precision=args.histogram_precision,
    )
    if not res.complete:
        print(
            f"{res.out_dir}: incomplete: {res.processed + res.failed} of {res.images_in} images done "
            f"({res.processed} processed + {res.failed} failed; {res.shards_run} shards computed now); "
            f"continue with: neuroprint profile --resume --out-dir {res.out_dir}"
        )
        return 0
    done = " (the job was already complete: nothing computed; --rebuild redoes the outputs)"
    print(
        f"{res.out_dir}: {res.images_in} images in = {res.processed} processed + {res.failed} failed "
        f"({res.shards_run} of {res.shards_total} shards computed now); VDNAs: {', '.join(res.vdnas)}"
        + (done if res.shards_run == 0 and res.reused else "")
    )
    return 0


def cmd_compare(args) -> int:
    from ..stats.distances import EMD, FD, NFD
    from ..stats.vdna import load_vdna_from_files

    if len(args.vdnas) < 2:
        raise CLIError("compare needs at least two VDNAs")
    if len(args.vdnas) > 2 or args.matrix:
        return _compare_many(args)
    args.a, args.b = args.vdnas
    a = load_vdna_from_files(_vdna_path(args.a))
    b = load_vdna_from_files(_vdna_path(args.b))
    metric = args.metric or {"histogram": "emd", "layer-gaussian": "fd", "gaussian": "nfd"}.get(a.type)
    if metric is None:
        raise CLIError(f"no distance is defined on {a.name} VDNAs; use emd, nfd or fd on other kinds")
    fn = {"emd": EMD, "nfd": NFD, "fd": FD}[metric]
    value = float(fn(a, b, use_neurons_from_layer=args.layer, use_neuron_index=args.neuron))
    if args.per_neuron:
        if args.neuron is not None:
            raise CLIError("--per-neuron lists every neuron; it cannot be combined with --neuron")
        per = fn(a, b, use_neurons_from_layer=args.layer, return_neuron_wise=True)
        _write_per_neuron(args.per_neuron, per, metric)
    scope = f"layer {args.layer}" if args.layer else "all layers"
    if args.neuron is not None:
        scope += f", neuron {args.neuron}"
    if args.json:
        print(
            json.dumps(
                {
                    "metric": metric,
                    "value": value,
                    "a": args.a,
                    "b": args.b,
                    "layer": args.layer,
                    "neuron": args.neuron,
                }
            )
        )
    else:
        print(f"{metric.upper()} ({scope}): {value:.6g}")
    return 0


def _compare_many(args) -> int:
    import numpy as np
    import pyarrow as pa

    from ..stats.distances import FD, NFD
    from ..stats.scoring import emd_matrix, write_parquet
    from ..stats.vdna import load_vdna_from_files

    if args.neuron is not None or args.per_neuron:
        raise CLIError("--neuron and --per-neuron apply to a comparison of two VDNAs")
    names = [_vdna_path(p) for p in args.vdnas]
    vdnas = [load_vdna_from_files(n) for n in names]
    metric = args.metric or {"histogram": "emd", "layer-gaussian": "fd", "gaussian": "nfd"}.get(vdnas[0].type)
    if metric is None:
        raise CLIError(f"no distance is defined on {vdnas[0].name} VDNAs")
    n = len(vdnas)
    if metric == "emd":
        mat = emd_matrix(vdnas, use_neurons_from_layer=args.layer).numpy()
    else:
        fn = {"fd": FD, "nfd": NFD}[metric]
        mat = np.zeros((n, n))
        for i in range(n):
            for j in range(i + 1, n):
                mat[i, j] = mat[j, i] = float(fn(vdnas[i], vdnas[j], use_neurons_from_layer=args.layer))
    if args.matrix:
        ii, jj = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        table = pa.table(
            {
                "a": pa.array([names[i] for i in ii.ravel()], pa.string()),
                "b": pa.array([names[j] for j in jj.ravel()], pa.string()),
                "i": pa.array(ii.ravel().astype(np.int32)),
                "j": pa.array(jj.ravel().astype(np.int32)),
                metric: pa.array(mat.ravel()),
            }
        )
        write_parquet(table, args.matrix)
    if args.json:
        print(json.dumps({"metric": metric, "vdnas": names, "matrix": mat.tolist(), "layer": args.layer}))
        return 0
    width = max(len(Path(x).name) for x in names)
    print(f"{metric.upper()} ({'layer ' + args.layer if args.layer else 'all layers'})")
    print(" " * width + "".join(f" {i:>10d}" for i in range(n)))
    for i, name in enumerate(names):
        print(f"{Path(name).name:>{width}s}" + "".join(f" {v:10.4g}" for v in mat[i]))
    return 0


def cmd_score(args) -> int:
    from ..stats.scoring import score_images, write_parquet
    from ..stats.vdna import load_vdna_from_files

    ref = load_vdna_from_files(_vdna_path(args.reference))
    table = score_images(
        args.source,
        ref,
        weights=args.weights,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        dtype=_dtype(args.dtype),
        progress=not args.quiet,
    )
    write_parquet(table, args.out)
    ok = table.column("ok").to_pylist()
    print(f"{args.out}: {sum(ok)} images scored, {len(ok) - sum(ok)} unreadable")
    return 0


def _write_per_neuron(path: str, per: dict, metric: str) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    layers, neurons, values = [], [], []
    for layer, t in per.items():
        v = t.detach().cpu().double().numpy()
        layers.extend([layer] * v.size)
        neurons.append(np.arange(v.size, dtype=np.int32))
        values.append(v)
    table = pa.table(
        {
            "layer": pa.array(layers, pa.string()),
            "neuron": pa.array(np.concatenate(neurons) if neurons else np.zeros(0, np.int32)),
            metric: pa.array(np.concatenate(values) if values else np.zeros(0)),
        }
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)


def cmd_info(args) -> int:
    from ..stats.vdna import load_vdna_from_files

    v = load_vdna_from_files(_vdna_path(args.vdna))
    m = v.meta
    lines = [
        f"{_vdna_path(args.vdna)}: {v.name} VDNA",
        f"  extractor   {v.feature_extractor_name} ({len(v.neurons_list)} layers, {sum(v.neurons_list.values())} neurons)",
        f"  weights     {m.get('weights', 'unknown (written by vdna)')}",
        f"  images      {v.num_images} used, {v.num_failed} unreadable",
        f"  source      {v.data_settings_used.get('source')}",
    ]
    if m.get("recipe"):
        r = m["recipe"]
        lines.append(
            f"  recipe      {r['size'][0]}x{r['size'][1]}, resize {r['resize']}, crop {r['crop']}, dtype {m.get('dtype')}"
        )
    if v.type == "histogram":
        rng = m.get("ranges")
        lines.append(
            f"  ranges      {rng['origin']} (sha256 {rng['sha256'][:12]})"
            if rng
            else "  ranges      not recorded"
        )
    if m.get("version"):
        lines.append(f"  made by     neuroprint {m['version']}")
    print("\n".join(lines))
    if args.failures:
        for f in v.failures:
            print(f"  failed  {f['uri']}: {f['reason']}")
    return 0


def cmd_merge(args) -> int:
    from ..stats.vdna import load_vdna_from_files

    if len(args.vdnas) < 2:
        raise CLIError("merge needs at least two VDNAs")
    merged = load_vdna_from_files(_vdna_path(args.vdnas[0]))
    for p in args.vdnas[1:]:
        merged = merged.merge(load_vdna_from_files(_vdna_path(p)))
    out = _vdna_path(args.out)
    merged.save(out)
    print(f"{out}.json/.npz: {merged.name} of {merged.num_images} images")
    return 0


def cmd_extractors(args) -> int:
    from ..extractors import get_extractor_config, list_extractors

    for name in list_extractors():
        c = get_extractor_config(name)
        neurons = sum(c.layers.values())
        h, w = c.recipe.size
        print(f"{name:18s} {len(c.layers):3d} layers {neurons:6d} neurons  {h}x{w}  {c.description}")
        if args.layers:
            for layer, n in c.layers.items():
                print(f"    {layer:16s} {n}")
    print("plus any timm model name (e.g. timm:resnet18 --layers layer1 layer4)")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), images=args.images, extractor=args.extractor, device=args.device)
    return 0


COMMANDS = {
    "profile": cmd_profile,
    "compare": cmd_compare,
    "score": cmd_score,
    "info": cmd_info,
    "merge": cmd_merge,
    "extractors": cmd_extractors,
    "demo": cmd_demo,
    "features": lambda args: __import__("neuroprint.cli.features", fromlist=["run"]).run(args),
    "dedup": lambda args: __import__("neuroprint.cli.dedup", fromlist=["run"]).run(args),
    "explain": lambda args: __import__("neuroprint.cli.explain", fromlist=["run"]).run(args),
    "rf": lambda args: __import__("neuroprint.cli.explain", fromlist=["run_rf"]).run_rf(args),
    "visualize": lambda args: __import__("neuroprint.cli.visualize", fromlist=["run"]).run(args),
    "check": lambda args: __import__("neuroprint.cli.check", fromlist=["run"]).run(args),
}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="neuroprint: %(levelname)s: %(message)s",
    )
    from .._errors import NeuroprintError

    try:
        return COMMANDS[args.command](args)
    except CLIError as err:
        parser.exit(2, f"neuroprint {args.command}: error: {err}\n")
    except (NeuroprintError, ValueError, TypeError, FileNotFoundError, PermissionError) as err:
        if args.debug:
            raise
        msg = " ".join(str(err).split()) or type(err).__name__
        print(f"neuroprint {args.command}: error: {msg}", file=sys.stderr)
        return getattr(args, "error_exit", 1)  # check: 2 (1 means a rule failed)
    except Exception as err:  # a fault we did not foresee (a cluster, a library): still one line
        if args.debug:
            raise
        msg = " ".join(str(err).split())
        print(
            f"neuroprint {args.command}: error: {type(err).__name__}: {msg} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return getattr(args, "error_exit", 1)
    except KeyboardInterrupt:
        print("neuroprint: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
