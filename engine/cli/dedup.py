"""``neuroprint dedup``: near-duplicate search from the command line (thin over `neuroprint.dedup`)."""

from __future__ import annotations

import argparse
import sys
import textwrap

from .common import add_shared

DESCRIPTION = textwrap.dedent(
    """\
    Find near-duplicate images and write a keep/drop list.

    SOURCE is a folder (recursive), a .txt list, a .parquet table or WebDataset shards, decoded once: the
    perceptual hashes (pHash, dHash; bit-exact with the imagehash package) are computed on the decoded
    pixels and the embedding (mean of the extractor's last tap) on the network's input. SOURCE may also
    be a job directory written by `neuroprint profile --out-dir DIR --embeddings --hashes phash,dhash`:
    its embeddings and hashes (from the job's one pass, local or Ray) are used as they are; or a
    directory written by `neuroprint features --out-dir DIR`: its FUNGI features (PCA-reduced when
    present) are the embeddings.

    Hash pairs: Hamming distance <= --max-distance bits (of 64), exact over all pairs. Embedding pairs:
    cosine >= --threshold among each image's --k nearest neighbours (exact blocked search; --approximate
    for faiss IVF or k-means). Images are ranked by --keep: largest (most pixels among those that look
    native; upscaled or blurred copies rank after them), first (first in source order) or centre
    (closest to the group's mean embedding; hash medoid without embeddings); ties go to the first seen.
    --grouping kept (default): in that order, each image joins the first kept image it is paired with,
    else is kept itself, so every dropped image is a near-duplicate of its own kept image (no chaining);
    --grouping components: connected components of all pairs, the best of each kept.

    Writes to --out-dir: pairs.parquet, groups.parquet, keep.parquet (id, uri, keep, group, reason),
    failures.parquet (unreadable images), signatures.parquet, dedup.json (settings and counts) and with
    --contact-sheet contact_sheet.png (the largest groups, kept image first).
    """
)

EPILOG = textwrap.dedent(
    """\
    examples:
      neuroprint dedup photos/ --out-dir photos_dedup                       # pHash, <= 10 bits
      neuroprint dedup photos/ --out-dir d --method both --extractor dino_vit_base --threshold 0.92
      neuroprint dedup job_dir/ --out-dir d --method embedding --k 20        # embeddings of a profile job
      neuroprint dedup photos/ --out-dir d --keep first --contact-sheet
    """
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``dedup`` sub-command on an ``add_subparsers()`` object; returns its parser."""
    from ..dedup.settings import DEFAULT_MAX_DISTANCE, DEFAULT_THRESHOLD, GROUPINGS, KEEP_POLICIES, METHODS

    p = subparsers.add_parser(
        "dedup",
        help="find near-duplicate images: pairs, groups and a keep/drop list (Parquet)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="SOURCE|FEATURES_DIR", help="images, or a profile job directory")
    p.add_argument("--out-dir", required=True, help="output directory (new or empty, or a previous dedup's)")
    p.add_argument(
        "--method",
        default="phash",
        choices=METHODS,
        help="signature to compare; both = phash and embedding (default: %(default)s)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="embedding pairs: minimum cosine similarity (default: %(default)s; pick it from a benchmark of "
        "your data: random-init features are similar for almost every pair)",
    )
    p.add_argument(
        "--max-distance",
        type=int,
        default=DEFAULT_MAX_DISTANCE,
        help="hash pairs: maximum Hamming distance in bits of 64 (default: %(default)s)",
    )
    p.add_argument("--k", type=int, default=10, help="embedding neighbours searched per image (default: 10)")
    p.add_argument("--keep", default="largest", choices=KEEP_POLICIES, help="which image of a group to keep")
    p.add_argument(
        "--grouping",
        default="kept",
        choices=GROUPINGS,
        help="kept: drop an image only for a kept image it is paired with (no chaining); components: "
        "connected components of all pairs (default: %(default)s)",
    )
    p.add_argument(
        "--approximate",
        action="store_true",
        help="approximate embedding search (faiss IVF when installed, else k-means then within-cluster)",
    )
    add_shared(
        p, "extractor", "weights", "device", "batch_size", "num_workers", "ray", "ray_address", batch_size=32
    )
    p.add_argument(
        "--num-shards", type=int, default=None, help="with --ray: shards [default: one per CPU slot]"
    )
    p.add_argument("--layer", default=None, help="tap for the embedding (default: the extractor's last)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and of k-means")
    p.add_argument("--contact-sheet", action="store_true", help="also write contact_sheet.png")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    """Run ``neuroprint dedup`` for parsed ``args``; errors are raised as NeuroprintError subclasses
    (one line each), which the CLI's main turns into exit code 1."""
    from ..dedup import DedupError, find_duplicates

    if args.batch_size < 1:
        raise DedupError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.ray and args.approximate:
        raise DedupError("--ray runs the exact search; it cannot be combined with --approximate")
    if (args.num_shards is not None or args.ray_address) and not args.ray:
        raise DedupError("--num-shards and --ray-address need --ray")
    result = find_duplicates(
        args.source,
        args.out_dir,
        method=args.method,
        threshold=args.threshold,
        max_distance=args.max_distance,
        k=args.k,
        keep=args.keep,
        grouping=args.grouping,
        approximate=args.approximate,
        extractor=args.extractor,
        weights=args.weights,
        layer=args.layer,
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        seed=args.seed,
        contact_sheet=args.contact_sheet,
        progress=not args.quiet,
        ray=args.ray,
        num_shards=args.num_shards,
        ray_address=args.ray_address,
    )
    c = result.settings["counts"]
    print(
        f"{args.out_dir}: {c['images']} images, {c['pairs']} pairs, {c['groups']} groups, "
        f"{c['dropped']} to drop, {c['failed']} unreadable"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m neuroprint.cli.dedup``), with the same error handling as the CLI."""
    from .._errors import NeuroprintError

    parser = argparse.ArgumentParser(prog="neuroprint")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (NeuroprintError, ValueError, TypeError, FileNotFoundError, PermissionError) as err:
        print(f"neuroprint dedup: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
