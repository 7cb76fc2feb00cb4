"""The hashes' grayscale LANCZOS thumbnails: the C kernel against Pillow (its reference), in one run.

    python bench/bench_gray_lanczos.py [--sizes 640x480,1920x1080,480x1920,64x48] [--repeats 30]

For photo-like uint8 RGB images of each size (width x height) prints, per image, for the two thumbnails the
jobs' pHash and dHash read (32 x 32 and 9 x 8):
  pillow   kernels.gray_lanczos.reference_gray_lanczos: Image.fromarray, convert("L"), two LANCZOS resizes
  kernel   kernels.gray_lanczos.gray_lanczos: the C extension, one pass over the image, GIL released
and the kernel's throughput with 1 and 2 threads. 480x1920 (a tall image) takes Pillow 13's vertical-first
order for the 9 x 8 thumbnail; 64x48 is bench_scale's image.
"""

from __future__ import annotations

import argparse
import platform

import numpy as np
from _cpu_kernels import best_ms, photo, thread_rates

from neuroprint.kernels import gray_lanczos as gl

SIZES = [(32, 32), (9, 8)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="640x480,1920x1080,480x1920,64x48")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    if not gl.compiled() or gl.pillow_order() is None:
        raise SystemExit(
            "the C extension neuroprint.kernels._gray_lanczos is not built or does not match Pillow"
        )
    import PIL

    print(f"machine: {platform.processor() or platform.machine()}; Pillow {PIL.__version__}")
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        img = photo(w, h, 0)
        same = all(
            np.array_equal(a, b)
            for a, b in zip(gl.gray_lanczos(img, SIZES), gl.reference_gray_lanczos(img, SIZES))
        )
        ref = best_ms(lambda img=img: gl.reference_gray_lanczos(img, SIZES), args.repeats)
        ker = best_ms(lambda img=img: gl.gray_lanczos(img, SIZES), args.repeats)
        imgs = [photo(w, h, s) for s in range(8)]
        rates = thread_rates(lambda a: gl.gray_lanczos(a, SIZES), imgs, args.repeats)
        print(
            f"{w}x{h}: pillow {ref:.3f} ms, kernel {ker:.3f} ms (pillow / kernel = {ref / ker:.2f}x, same bits: "
            f"{same}); kernel images/s with 1 thread {rates[0]:.0f}, 2 threads {rates[1]:.0f} ({rates[1] / rates[0]:.2f}x)"
        )


if __name__ == "__main__":
    main()
