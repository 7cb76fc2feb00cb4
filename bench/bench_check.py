"""The nightly check's cost over a plain `profile --out-dir` job of the same night, and the null's cost.

    python bench/bench_check.py [--extractor timm:resnet18] [--images 256] [--size 640x480] [--device cpu]
        [--shard-size 64]

1. The same night (JPEG photos-like images of --size) through a plain job (histogram + layer-gaussian, the
   reference's ranges) and through `neuroprint.check.check` (the same VDNAs plus the quality statistics,
   hashes, per-image EMD and neuron means in the one pass, then the analysis and the report); both with
   random weights of the same extractor, one after the other, each run in a new process (as a nightly
   cron job runs: imports, the model's build and the allocator start from nothing each time; in this
   process with ``--in-process``, as before 2026-12-07's sixth sitting). Prints the ratio of the best runs.
2. The drift null (`drift_statistics`) for the extractor's neurons at pool sizes 64..512 and a fixed
   number of resamples. Its cost does not depend on how many shards or images the reference has: it
   reads the pool only (and the reference's merged VDNAs).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _images(folder: Path, n: int, w: int, h: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC)).astype(np.float32)
        img += rng.normal(0, 12, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def _timed(kind: str, root: Path, r: int, args, job: dict) -> dict:
    """One timed run in this process: the plain job, or the check then the same check again (the pass is
    skipped, the analysis and the report rerun)."""
    from neuroprint.check import check
    from neuroprint.jobs import run_job

    if kind == "plain":
        t0 = time.perf_counter()
        run_job(
            root / "night",
            root / f"plain{r}",
            [f"histogram-{args.bins}", "layer-gaussian"],
            extractor=args.extractor,
            weights="random",
            ranges=root / "REF" / "ranges.json",
            decoder="pil",
            **job,
        )
        return {"plain": time.perf_counter() - t0}
    t0 = time.perf_counter()
    check(root / "night", root / "REF", root / f"check{r}", resamples=args.resamples, **job)
    t1 = time.perf_counter()
    check(root / "night", root / "REF", root / f"check{r}", resamples=args.resamples, **job)
    return {"check": t1 - t0, "analysis": time.perf_counter() - t1}


def _timed_in_child(kind: str, root: Path, r: int, args, job: dict) -> dict:
    """`_timed` in a new Python process (the same options), as a nightly cron job runs."""
    argv = [sys.executable, __file__, "--child", kind, str(root), str(r), "--extractor", args.extractor,
            "--device", args.device, "--batch-size", str(args.batch_size), "--shard-size", str(args.shard_size),
            "--resamples", str(args.resamples), "--bins", str(args.bins)]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        raise RuntimeError(f"the {kind} run failed ({proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(line[0][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extractor", default="timm:resnet18")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=32)
    # 64 (four shards of the default night) shows the per-shard costs; the job's default is 1,024
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--resamples", type=int, default=500)
    ap.add_argument("--bins", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-null", action="store_true", help="skip part 2 (the null by pool size)")
    ap.add_argument(
        "--in-process", action="store_true", help="time the runs in this process (one after the other)"
    )
    ap.add_argument("--child", nargs=3, metavar=("KIND", "ROOT", "REPEAT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, root, r = args.child
        job = dict(device=args.device, batch_size=args.batch_size, progress=False, shard_size=args.shard_size)
        print("RESULT " + json.dumps(_timed(kind, Path(root), int(r), args, job)))
        return
    from neuroprint.check import build_reference
    from neuroprint.check.drift import drift_statistics

    w, h = map(int, args.size.split("x"))
    root = Path(tempfile.mkdtemp(prefix="bench_check_"))
    try:
        _images(root / "ref_src", args.images, w, h, 0)
        _images(root / "night", args.images, w, h, 1)
        job = dict(device=args.device, batch_size=args.batch_size, progress=False, shard_size=args.shard_size)
        t0 = time.perf_counter()
        build_reference(
            root / "ref_src", root / "REF", extractor=args.extractor, weights="random", bins=args.bins, **job
        )
        t_ref = time.perf_counter() - t0
        plain, full, analysis = [], [], []
        run = _timed if args.in_process else _timed_in_child
        for r in range(args.repeats):  # alternate, so that warm-up and drift of the machine fall on both
            plain.append(run("plain", root, r, args, job)["plain"])
            got = run("check", root, r, args, job)
            full.append(got["check"])
            analysis.append(got["analysis"])
        p, c, a = min(plain), min(full), min(analysis)
        print(
            f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}; "
            f"runs {'in this process' if args.in_process else 'each in a new process'}, best of {args.repeats}"
        )
        print(f"reference build ({args.images} images, auto ranges pass included): {t_ref:.1f} s")
        print(
            f"night of {args.images} {w}x{h} JPEGs, {args.extractor} random weights, batch {args.batch_size}, "
            f"shards of {args.shard_size}: "
            f"profile --out-dir {p:.2f} s, check {c:.2f} s (resamples {args.resamples}, report included); "
            f"check / profile = {c / p:.3f} (extra {100 * (c / p - 1):.1f}%)"
        )
        print(
            f"  of which the pass {c - a:.2f} s (pass / profile = {(c - a) / p:.3f}, extra "
            f"{100 * ((c - a) / p - 1):.1f}%) and the analysis + report {a:.2f} s (a fixed cost per night)"
        )
        if args.no_null:
            return
        # the null alone, by pool size, at the extractor's neuron counts

        ref_meta = json.loads((root / "REF" / "reference.json").read_text())
        from neuroprint.check import Reference

        ref = Reference.open(root / "REF")
        layers = ref_meta["layers"]
        hv, gv = ref.vdna(ref.hist_name), ref.vdna("layer-gaussian")
        chans = [int(hv.data[k].shape[0]) for k in layers]
        rng = np.random.default_rng(0)
        hist = {k: hv.data[k].numpy() for k in layers}
        gauss = {k: (gv.data[k]["mu"].numpy(), gv.data[k]["sigma"].numpy()) for k in layers}
        print(
            f"null: {sum(chans)} neurons in {len(layers)} layers, {args.bins} bins, {args.resamples} resamples"
        )
        for size in (64, 128, 256, 512):
            pool = {
                "ids": np.array([str(i) for i in range(size)]),
                "hists": rng.integers(0, 50, (size, sum(chans), args.bins)).astype(np.uint16),
                "means": rng.normal(size=(size, sum(chans))).astype(np.float32),
                "layers": np.array(layers),
                "channels": np.array(chans),
            }
            t0 = time.perf_counter()
            drift_statistics(
                hist, hist, gauss, gauss, pool, args.images, 10 * args.images, resamples=args.resamples
            )
            print(f"  pool {size:4d}: {time.perf_counter() - t0:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
