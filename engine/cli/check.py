"""``neuroprint check``: the nightly data-quality check from the command line (thin over `neuroprint.check`)."""

from __future__ import annotations

import argparse
import textwrap

from .common import add_shared

DESCRIPTION = textwrap.dedent(
    """\
    Check tonight's images against a reference: a verdict, a report and an exit code.

    First build the reference once from accepted images (--build-reference SRC --out-dir REF): its
    histogram and layer-gaussian VDNAs, per-image quality statistics and hashes, and the null pool that
    calibrates the drift p-values. Then each night: TONIGHT --reference REF --out-dir NIGHT. One pass over
    tonight's pixels (local or --ray, resumable: rerun the same command after a crash) writes NIGHT/rows/
    and the VDNAs, then:

      flags.parquet   one row per image: status, quality statistics, flags (dark, light, blurry,
                      low_information, grayscale, odd_aspect_ratio, odd_size, clipped, duplicate,
                      duplicate_of_reference, outlier), EMD to the reference, outlier score and rank
      summary.json    the verdict, every score, p-value and threshold, counts (images in = processed + failed)
      report.html     one self-contained page: verdict, per-layer drift with the null band, the most
                      drifting neurons with the images that drive them, outliers, flags, duplicates, trend

    Drift p-values come from the statistic's null at tonight's sample size, drawn from the reference
    itself (--resamples two-sample draws); flag thresholds are the --percentile of the reference's own
    statistics. --history FILE appends one row per night (Parquet). --update-reference folds a passing
    night into the reference (a night is merged once).

    Exit codes: 0 every --fail-on rule passes, 1 a rule fails, 2 a usage or input error.
    """
)

EPILOG = textwrap.dedent(
    """\
    rules (--fail-on, repeatable; default drift:p<0.01): NAME OP VALUE[%] with OP < <= > >=
      drift:p<0.01  drift:emd>0.5  failed>1%  dark>2%  blurry>=10  duplicates>5%  duplicates_reference>0
      (flags and duplicates: a count, or with % a share of the processed images; failed: of the images in)

    examples:
      neuroprint check --build-reference accepted/ --out-dir ref --extractor dino_vit_base
      neuroprint check tonight/ --reference ref --out-dir nights/2026-12-06 --history nights/history.parquet \\
          --fail-on drift:p<0.01 --fail-on 'dark>2%' --fail-on 'duplicates>5%'
      # cron, 02:00 every night:
      0 2 * * * neuroprint check /data/incoming/$(date +\\%F) --reference /data/ref \\
          --out-dir /data/nights/$(date +\\%F) --history /data/nights/history.parquet -q || notify-team
    """
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .._names import CHECK_DEFAULT_BINS as DEFAULT_BINS
    from .._names import CHECK_DEFAULT_DUP_COSINE as DEFAULT_DUP_COSINE
    from .._names import CHECK_DEFAULT_DUP_DISTANCE as DEFAULT_DUP_DISTANCE
    from .._names import CHECK_DEFAULT_POOL as DEFAULT_POOL

    p = subparsers.add_parser(
        "check",
        help="nightly data-quality check: drift, flags, duplicates -> verdict, report.html, exit code",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(error_exit=2)
    p.add_argument(
        "source", metavar="TONIGHT", nargs="?", help="tonight's images: folder, list, Parquet, tar, URL"
    )
    p.add_argument(
        "--build-reference", metavar="SRC", default=None, help="build a reference from SRC into --out-dir"
    )
    p.add_argument(
        "--reference", metavar="REF", default=None, help="the reference directory to check against"
    )
    p.add_argument(
        "--out-dir", required=True, help="the night's (or, with --build-reference, the reference's) directory"
    )
    p.add_argument(
        "--history", metavar="HIST.parquet", default=None, help="append one row per night to this file"
    )
    p.add_argument(
        "--fail-on", metavar="RULE", action="append", default=None, help="a rule that fails the check"
    )
    p.add_argument(
        "--update-reference", action="store_true", help="fold the night into --reference when it passes"
    )
    p.add_argument(
        "--percentile", type=float, default=1.0, help="flags: percentile of the reference (default: 1)"
    )
    p.add_argument("--resamples", type=int, default=500, help="draws of the drift null (default: 500)")
    p.add_argument(
        "--dup-distance",
        type=int,
        default=DEFAULT_DUP_DISTANCE,
        help="near-duplicates: max pHash distance in bits",
    )
    p.add_argument(
        "--dup-cosine",
        type=float,
        default=DEFAULT_DUP_COSINE,
        help="near-duplicates: min embedding cosine (references built with --embeddings)",
    )
    p.add_argument(
        "--embeddings",
        action="store_true",
        help="reference: keep each image's embedding, so that nights find near-duplicates by embedding too",
    )
    p.add_argument("--top-neurons", type=int, default=8, help="drifting neurons shown with their images")
    p.add_argument(
        "--outlier-percentile", type=float, default=99.0, help="outliers: above this pool percentile"
    )
    p.add_argument(
        "--bins", type=int, default=DEFAULT_BINS, help="reference: histogram bins (default: %(default)s)"
    )
    p.add_argument(
        "--pool-size",
        type=int,
        default=DEFAULT_POOL,
        help="reference: null pool images (default: %(default)s)",
    )
    p.add_argument(
        "--ranges", default="auto", help="reference: activation ranges: auto (a first pass) or a file"
    )
    add_shared(p, "extractor", "weights", "layers", extractor=None, weights=None)
    add_shared(p, "device", "batch_size", "num_workers", "ray", "num_actors", "ray_address")
    p.add_argument("--shard-size", type=int, default=1024, help="images per shard (the unit of resume)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and of the null draws")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def run(args) -> int:
    from ..check import CheckError, build_reference, check

    job = dict(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        device=args.device,
        progress=not args.quiet,
        ray=args.ray,
        num_actors=args.num_actors,
        ray_address=args.ray_address,
    )
    if args.build_reference is not None:
        if args.source or args.reference or args.update_reference or args.history:
            raise CheckError(
                "--build-reference SRC --out-dir REF takes no TONIGHT, --reference, --history or --update-reference"
            )
        ranges = None if args.ranges == "published" else args.ranges
        ref = build_reference(
            args.build_reference,
            args.out_dir,
            extractor=args.extractor or "mugs_vit_base",
            weights=args.weights or "default",
            layers=args.layers,
            ranges=ranges,
            bins=args.bins,
            pool_size=args.pool_size,
            shard_size=args.shard_size,
            seed=args.seed,
            embeddings=args.embeddings,
            **job,
        )
        m = ref.meta
        print(
            f"{args.out_dir}: reference of {m['images']} images ({m['extractor']}, {m['bins']} bins, pool of {m['pool_size']})"
        )
        return 0
    if not args.source or not args.reference:
        raise CheckError("give TONIGHT and --reference REF (or --build-reference SRC to make a reference)")
    if args.embeddings:
        raise CheckError(
            "--embeddings is a --build-reference option: a night computes embeddings when its reference keeps them"
        )
    res = check(
        args.source,
        args.reference,
        args.out_dir,
        history=args.history,
        fail_on=args.fail_on,
        percentile=args.percentile,
        resamples=args.resamples,
        dup_distance=args.dup_distance,
        dup_cosine=args.dup_cosine,
        top_neurons=args.top_neurons,
        outlier_percentile=args.outlier_percentile,
        extractor=args.extractor,
        weights=args.weights,
        layers=args.layers,
        shard_size=args.shard_size,
        seed=args.seed,
        report=not args.no_report,
        update=args.update_reference,
        **job,
    )
    c, d = res.counts, res.drift
    flags = ", ".join(f"{k} {v}" for k, v in c["flags"].items() if v)
    print(
        f"{res.verdict.upper()}: {c['images_in']} images ({c['processed']} processed, {c['failed']} failed); "
        f"drift p={d['p']:.3g} (EMD {d['emd']:.4g} bins); flags: {flags or 'none'}; "
        f"{c['duplicates']} near-duplicates, {c['duplicates_reference']} copies of reference images"
    )
    for r in res.rules:
        if r["fails"]:
            print(f"  rule {r['rule']} fails (value {r['value']:.4g})")
    print(f"  {args.out_dir}/summary.json, flags.parquet" + ("" if args.no_report else ", report.html"))
    return res.exit_code
