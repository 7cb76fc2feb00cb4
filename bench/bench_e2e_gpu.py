"""End-to-end histogram-VDNA throughput vs the bare compiled forward pass of the same network.

The issue's GPU figure: images/s of "JPEG bytes -> decoded + preprocessed pixels on the device -> tapped,
compiled ViT-B/16 -> histogram-1000 of all 13 taps" against the compiled forward pass alone
(``forward_features``, no taps, no histogram) on the same batch size and dtype. Goal: at least 0.9x.

Decoding: DALI ("mixed", nvJPEG) when installed (``--decoder dali``), else ``torchvision.io.decode_jpeg``
on the device (batched nvJPEG on CUDA) followed by an antialiased bicubic resize per image and the
extractor's normalisation, on the device (``--decoder torchvision``; its pixels are close to, not equal
to, PIL's). Encoded bytes are read from files into host memory once, outside the timing.

Also printed: decode-only images/s, tapped forward alone, and the histogram op alone, each from the same
run, so that the gap (if any) is attributed.

    python bench/bench_e2e_gpu.py --device cuda --batch 256 --num-images 1024 --dtype bf16
    python bench/bench_e2e_gpu.py --device cpu --batch 4 --num-images 8 --extractor rand_resnet50 --no-compile  # smoke
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from neuroprint.stats.profile import _CACHE
from neuroprint.stats.reducers import ActivationRangesReducer, make_reducer


def make_jpegs(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = (375, 500) if i % 2 else (500, 375)
        y, x = np.mgrid[0:h, 0:w]
        img = np.sin(
            x[..., None] / rng.uniform(5, 40) + y[..., None] / rng.uniform(5, 40) + rng.uniform(0, 6, 3)
        )
        img = img * 100 + 128 + rng.normal(0, 10, (h, w, 3))
        p = folder / f"{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


class TorchvisionDecoder:
    """JPEG bytes -> normalised [B, 3, H, W] float32 on ``device`` with torchvision's nvJPEG / libjpeg."""

    def __init__(self, recipe, device: torch.device):
        self.size = tuple(recipe.size)
        self.device = device
        self.mean = torch.tensor(recipe.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(recipe.std, device=device).view(1, 3, 1, 1)

    def __call__(self, encoded: list[torch.Tensor]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg

        dev = "cuda" if self.device.type == "cuda" else "cpu"
        images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=dev)
        out = torch.empty((len(images), 3, *self.size), device=self.device)
        for i, img in enumerate(images):
            x = img.to(self.device, non_blocking=True).unsqueeze(0).float()
            out[i] = torch.nn.functional.interpolate(x, self.size, mode="bicubic", antialias=True)[0]
        return (out.clamp_(0, 255) / 255 - self.mean) / self.std


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extractor", default="mugs_vit_base", help="a registered extractor (default: ViT-B/16)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument(
        "--num-images", type=int, default=1024, help="distinct JPEGs generated (500x375 / 375x500)"
    )
    ap.add_argument("--bins", type=int, default=1000)
    ap.add_argument("--decoder", default="auto", choices=["auto", "dali", "torchvision"])
    ap.add_argument("--no-compile", action="store_true", help="eager network (for a CPU smoke run)")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over all images (median)")
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args(argv)

    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device here; use --device cpu for a smoke run")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    compile = not args.no_compile

    work = Path(tempfile.mkdtemp(prefix="bench_e2e_"))
    paths = make_jpegs(work / "images", args.num_images)
    encoded = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    batches = [encoded[i : i + args.batch] for i in range(0, len(encoded), args.batch)]
    batches = [b for b in batches if len(b) == args.batch] or batches[:1]  # whole batches: one compiled shape
    n_images = sum(len(b) for b in batches)

    ex, model = _CACHE.get(
        args.extractor, weights="random", layers=None, device=dev, dtype=dtype, seed=0, compile=compile
    )
    decoder_name = args.decoder
    if decoder_name == "auto":
        from neuroprint.io.dali import is_available

        decoder_name = "dali" if is_available() else "torchvision"
    if decoder_name == "dali":
        from neuroprint import open_source
        from neuroprint.io.dali import DaliImageLoader

        device_id = (dev.index or 0) if dev.type == "cuda" else None
        src = open_source([str(p) for p in paths[:n_images]])
        loader = DaliImageLoader(src, ex.recipe, batch_size=args.batch, device_id=device_id)

        def decoded_batches():
            for b in loader:
                yield b.pixels

    else:
        tv = TorchvisionDecoder(ex.recipe, dev)

        def decoded_batches():
            for b in batches:
                yield tv(b)

    net = ex.backbone.net
    bare = getattr(net, "forward_features", net)
    if compile:
        bare = torch.compile(bare)
    pixels0 = next(iter(decoded_batches())).to(dtype)
    # Bin ranges measured on the first batch (published ranges belong to published weights).
    rr = ActivationRangesReducer(ex.layers)
    with torch.inference_mode():
        rr.update(model(pixels0))
    ranges = rr.to_ranges(origin="bench: first batch")

    def run_e2e():
        hist = make_reducer(f"histogram-{args.bins}", ex.layers, ranges=ranges, device=dev)
        with torch.inference_mode():
            for px in decoded_batches():
                hist.update(model(px))
        sync()
        return hist

    def run_decode():
        with torch.inference_mode():
            for px in decoded_batches():
                px.sum()  # touch the result
        sync()

    def run_bare():
        with torch.inference_mode():
            for _ in batches:
                bare(pixels0)
        sync()

    def run_tapped():
        with torch.inference_mode():
            for _ in batches:
                model(pixels0)
        sync()

    with torch.inference_mode():
        feats0 = model(pixels0)
    hist_only = make_reducer(f"histogram-{args.bins}", ex.layers, ranges=ranges, device=dev)

    def run_hist():
        with torch.inference_mode():
            for _ in batches:
                hist_only.update(feats0)
        sync()

    def timed(fn) -> float:
        fn()  # warm-up: compilation, DALI pipeline build, allocator
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    results = {}
    for name, fn in [
        ("end-to-end", run_e2e),
        ("bare compiled forward" if compile else "bare forward", run_bare),
        ("tapped forward", run_tapped),
        ("histogram op", run_hist),
        ("decode + preprocess", run_decode),
    ]:
        s = timed(fn)
        results[name] = {"seconds": s, "images_per_s": n_images / s}
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    print(
        f"{args.extractor} {args.dtype} batch {args.batch}, {n_images} images x {args.repeats} passes, "
        f"histogram-{args.bins} of {len(ex.layers)} taps, decoder {decoder_name}, compile {compile}, on {gpu}"
    )
    for name, r in results.items():
        print(f"  {name:24s} {r['seconds'] * 1e3:9.1f} ms/pass  {r['images_per_s']:9.1f} img/s")
    bare_key = next(k for k in results if k.startswith("bare"))
    ratio = results["end-to-end"]["images_per_s"] / results[bare_key]["images_per_s"]
    hist_frac = results["histogram op"]["seconds"] / results[bare_key]["seconds"]
    print(f"end-to-end / {bare_key}: {ratio:.2f}x (goal >= 0.9)")
    print(f"histogram op time / {bare_key} time: {hist_frac * 100:.1f}% (goal < 5%)")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "config": vars(args),
                    "device": gpu,
                    "torch": torch.__version__,
                    "python": sys.version.split()[0],
                    "decoder": decoder_name,
                    "results": results,
                    "ratio": ratio,
                    "hist_fraction": hist_frac,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
