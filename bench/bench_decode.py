"""Decode + preprocess throughput: DALI on the CPU (DaliImageLoader) against the PIL ImageLoader.

Both loaders read the same N generated 500x375 JPEGs (smooth gradients, sharp shapes and noise, quality
90; default 256) from a folder and produce the same float32 [n, 3, H, W] batches (default recipe: 224x224
ImageNet mean/std, "clean" antialiased bicubic resize, squash). Each configuration runs in its own
process pinned to as many cores as it has threads (``num_threads`` for DALI, ``num_workers`` for PIL),
with torch limited to that many threads, so images/s per core is a fair figure. One untimed pass warms
up (DALI builds its pipeline), then ``--repeats`` timed passes; the median is reported.

    python bench/bench_decode.py                 # 256 images, 1 and 2 threads
    python bench/bench_decode.py --num-images 512 --threads 1 2 4 --out bench/out/decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-images", type=int, default=256, help="generated 500x375 JPEGs (default 256)")
    p.add_argument("--images", default=None, help="use the images of this folder instead of generated ones")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224, help="network input side (default 224)")
    p.add_argument("--crop", default="none", choices=["none", "center", "random"])
    p.add_argument(
        "--repeats", type=int, default=3, help="timed passes per configuration (median; default 3)"
    )
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    p.add_argument("--worker", nargs=3, metavar=("IMPL", "THREADS", "DIR"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_images(folder: str, n: int) -> None:
    from PIL import Image

    from neuroprint.cli.demo import natural_image

    for i in range(n):
        Image.fromarray(natural_image(375, 500, i)).save(os.path.join(folder, f"img_{i:05d}.jpg"), quality=90)


def worker(impl: str, threads: int, folder: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(threads)
    from neuroprint.io.decode import ImageLoader
    from neuroprint.io.recipe import IMAGENET_MEAN, IMAGENET_STD, Recipe

    recipe = Recipe(size=(args.size, args.size), mean=IMAGENET_MEAN, std=IMAGENET_STD, crop=args.crop)
    if impl == "dali":
        from neuroprint.io.dali import DaliImageLoader

        loader = DaliImageLoader(folder, recipe, batch_size=args.batch_size, num_threads=threads)
    else:
        loader = ImageLoader(folder, recipe, batch_size=args.batch_size, num_workers=threads)

    def one_pass() -> tuple[float, int, int]:
        t0 = time.perf_counter()
        ok = failed = 0
        for batch in loader:
            ok += batch.pixels.shape[0]
            failed += len(batch.failures)
        return time.perf_counter() - t0, ok, failed

    one_pass()  # warm-up: DALI builds its pipeline, the page cache holds the files
    times = []
    for _ in range(args.repeats):
        seconds, ok, failed = one_pass()
        times.append(seconds)
    median = statistics.median(times)
    return {
        "impl": impl,
        "threads": threads,
        "images": ok,
        "failed": failed,
        "seconds": times,
        "images_per_s": ok / median,
        "images_per_s_per_core": ok / median / threads,
    }


def run_config(impl: str, threads: int, folder: str, argv: list[str]) -> dict:
    cores = sorted(os.sched_getaffinity(0))[:threads]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TORCHDYNAMO_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, __file__, *argv, "--worker", impl, str(threads), folder],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cores),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} with {threads} threads failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        impl, threads, folder = args.worker
        print(json.dumps(worker(impl, int(threads), folder, args)))
        return 0
    passthrough = [
        *("--batch-size", str(args.batch_size), "--size", str(args.size)),
        *("--crop", args.crop, "--repeats", str(args.repeats)),
    ]
    available = len(os.sched_getaffinity(0))
    threads_list = [t for t in args.threads if t <= available]
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        folder = args.images or tmp
        if not args.images:
            make_images(folder, args.num_images)
        rows = []
        for threads in threads_list:
            for impl in ("pil", "dali"):
                rows.append(run_config(impl, threads, folder, passthrough))
    print(
        f"decode + preprocess, {rows[0]['images']} images "
        f"({'500x375 JPEG q90' if not args.images else args.images}) -> {args.size}x{args.size}, "
        f"crop={args.crop}, batch {args.batch_size}, median of {args.repeats}"
    )
    print(
        f"{'threads':>7} {'PIL img/s':>10} {'PIL /core':>10} {'DALI img/s':>11} {'DALI /core':>11} {'DALI/PIL':>9}"
    )
    for threads in threads_list:
        pil = next(r for r in rows if r["impl"] == "pil" and r["threads"] == threads)
        dali = next(r for r in rows if r["impl"] == "dali" and r["threads"] == threads)
        print(
            f"{threads:>7} {pil['images_per_s']:>10.1f} {pil['images_per_s_per_core']:>10.1f} "
            f"{dali['images_per_s']:>11.1f} {dali['images_per_s_per_core']:>11.1f} "
            f"{dali['images_per_s'] / pil['images_per_s']:>8.2f}x"
        )
    if args.out:
        result = {
            "machine": {
                "platform": platform.platform(),
                "cpus": available,
                "python": platform.python_version(),
            },
            "args": {k: v for k, v in vars(args).items() if k != "worker"},
            "rows": rows,
        }
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
