"""End-to-end job throughput: local runner vs Ray with 1 and 2 actors, PIL vs DALI decoding, from one run.

Generates N JPEGs (mixed sizes), measures activation ranges once, then runs the same job
(``neuroprint.run_job``: sharded, rows + VDNA written) with each runner into a fresh directory and prints
images/s and the scaling ratio against the local runner. On a machine with GPUs, Ray actors take one GPU each.

    python bench/bench_job.py --extractor rand_resnet50 --num-images 96 --decoders pil dali

The Ray runs decode with the first of ``--decoders``; every other decoder gets a local run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from neuroprint import profile
from neuroprint.jobs import run_job


def make_images(folder: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = (375, 500) if i % 2 else (320, 256)
        y, x = np.mgrid[0:h, 0:w]
        img = (
            np.sin(x[..., None] / rng.uniform(5, 40) + rng.uniform(0, 6, 3)) * 100
            + 128
            + rng.normal(0, 12, (h, w, 3))
        )
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extractor", default="rand_resnet50")
    ap.add_argument("--num-images", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--decoders", nargs="+", default=["pil"], choices=["pil", "dali"])
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_job_"))
    try:
        images = work / "images"
        make_images(images, args.num_images)
        kw = dict(extractor=args.extractor, weights="random", device=args.device, progress=False)
        profile(images, "activation-ranges", batch_size=args.batch_size, **kw)["activation-ranges"].save(
            work / "ranges"
        )
        job = dict(ranges=work / "ranges", batch_size=args.batch_size, shard_size=args.shard_size, **kw)
        first = args.decoders[0]
        runs = [("local", {"decoder": first})]
        runs += [(f"local {d}", {"decoder": d}) for d in args.decoders[1:]]
        runs += [(f"ray x{n}", {"ray": True, "num_actors": n, "decoder": first}) for n in args.actors]
        # Warm-up: model build and page cache, not timed.
        for d in args.decoders:
            run_job(images, work / f"warm-{d}", "histogram-1000", max_shards=1, decoder=d, **job)
        results = {}
        for name, extra in runs:
            t = time.perf_counter()
            res = run_job(images, work / name.replace(" ", ""), "histogram-1000", **job, **extra)
            dt = time.perf_counter() - t
            results[name] = {"seconds": dt, "images_per_s": res.processed / dt}
            print(
                f"{name:10s} {dt:8.1f} s  {res.processed / dt:7.2f} img/s  ({res.processed} images)",
                flush=True,
            )
        base = results["local"]["images_per_s"]
        for name, r in results.items():
            print(f"  {name:10s} / local: {r['images_per_s'] / base:.2f}x")
        print(
            f"(Ray times include starting a local Ray instance and building each actor's model; cores: {os.cpu_count()})"
        )
        if args.out:
            Path(args.out).write_text(json.dumps({"config": vars(args), "results": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
