"""The quality statistics' pixel pass: the C kernel against its numpy reference, measured in one run.

    python bench/bench_pixel_stats.py [--sizes 640x480,1920x1080] [--repeats 30]

For photo-like uint8 RGB images of each size prints, per image:
  reference     kernels.pixel_stats.reference_pixel_stats (numpy: about twenty whole-image passes)
  kernel        kernels.pixel_stats.pixel_stats (the C extension: one pass, GIL released)
  quality       check.quality.quality_stats (the kernel plus the moments), what a decode thread runs
and the kernel's throughput with 1 and 2 threads (it releases the GIL, so decode threads scale).
"""

from __future__ import annotations

import argparse
import platform

from _cpu_kernels import best_ms, photo, thread_rates

from neuroprint.check.quality import _TABLES, quality_stats
from neuroprint.kernels import pixel_stats as ps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="640x480,1920x1080")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    if not ps.compiled():
        raise SystemExit("the C extension neuroprint.kernels._pixel_stats is not built: nothing to compare")
    print(f"machine: {platform.processor() or platform.machine()}")
    for size in args.sizes.split(","):
        w, h = map(int, size.split("x"))
        img = photo(w, h, 0)
        ref = best_ms(lambda img=img: ps.reference_pixel_stats(img, _TABLES), args.repeats)
        ker = best_ms(lambda img=img: ps.pixel_stats(img, _TABLES), args.repeats)
        q = best_ms(lambda img=img: quality_stats(img), args.repeats)
        imgs = [photo(w, h, s) for s in range(8)]
        rates = thread_rates(lambda a: ps.pixel_stats(a, _TABLES), imgs, args.repeats)
        print(
            f"{w}x{h}: reference {ref:.2f} ms, kernel {ker:.2f} ms (reference / kernel = {ref / ker:.2f}x), "
            f"quality_stats {q:.2f} ms; kernel images/s with 1 thread {rates[0]:.0f}, 2 threads {rates[1]:.0f} "
            f"({rates[1] / rates[0]:.2f}x)"
        )


if __name__ == "__main__":
    main()
