"""Where neuroprint's make_vdna spends its time, measured inside the real pipeline (no peer).

Wraps ``Extractor.forward`` and ``HistogramReducer.update`` with timers, then runs
``neuroprint.VDNAProcessor().make_vdna`` (cold call, then warm calls) on the fixtures of
bench_make_vdna.py: the same generated images, vdna's randomly initialised network, and ranges measured
on 8 images. "other" is everything else: decode waits, batching, the source scan and, in the cold
call, the model build.

    python bench/pipeline_split.py --extractor mugs_vit_base dino_resnet50 vgg16
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_make_vdna as bm  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--extractor", nargs="+", default=list(bm.ALL_EXTRACTORS))
    p.add_argument(
        "--num-images", type=int, default=None, help="default: bench_make_vdna.py's per-extractor counts"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--warm-runs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    import neuroprint
    from neuroprint.extractors import _factory
    from neuroprint.stats import reducers as _reducers

    timers = {"forward": 0.0, "histogram": 0.0}
    forward, update = _factory.Extractor.forward, _reducers.HistogramReducer.update

    def timed_forward(self, x):
        t0 = time.perf_counter()
        try:
            return forward(self, x)
        finally:
            timers["forward"] += time.perf_counter() - t0

    def timed_update(self, feats):
        t0 = time.perf_counter()
        try:
            return update(self, feats)
        finally:
            timers["histogram"] += time.perf_counter() - t0

    _factory.Extractor.forward = timed_forward
    _reducers.HistogramReducer.update = timed_update

    print(f"neuroprint sources sha256: {bm.source_digest()}")
    work = Path(tempfile.mkdtemp(prefix="pipeline_split_"))
    try:
        counts = {n: args.num_images or bm.DEFAULT_IMAGES[n] for n in args.extractor}
        paths = bm.make_images(work / "all", max(counts.values()), args.seed)
        print(
            f"{'extractor':<15} {'call':<5} {'images':>6} {'total s':>8} {'img/s':>6} {'forward ms/img':>15} "
            f"{'histogram ms/img':>17} {'other ms/img':>13} {'forward share':>14}"
        )
        for name in args.extractor:
            n = counts[name]
            folder = bm.image_subset(paths, n, work / name / "images")
            fx = bm.build_weights(name, work / name, args.seed)
            ranges = bm.measure_ranges(name, folder, fx["neuroprint"], work / name / "ranges.json")
            proc = neuroprint.VDNAProcessor()
            for i in range(1 + args.warm_runs):
                timers["forward"] = timers["histogram"] = 0.0
                t0 = time.perf_counter()
                proc.make_vdna(
                    str(folder), feat_extractor_name=name, distribution_name=bm.DISTRIBUTION, device="cpu",
                    batch_size=args.batch_size, num_workers=args.num_workers, weights=fx["neuroprint"],
                    ranges=str(ranges), verbose=False,
                )  # fmt: skip
                total = time.perf_counter() - t0
                fwd, hist = timers["forward"], timers["histogram"]
                print(
                    f"{name:<15} {'cold' if i == 0 else 'warm':<5} {n:>6} {total:>8.1f} {n / total:>6.2f} "
                    f"{fwd / n * 1e3:>15.0f} {hist / n * 1e3:>17.0f} {(total - fwd - hist) / n * 1e3:>13.0f} "
                    f"{100 * fwd / total:>13.0f}%",
                    flush=True,
                )
            neuroprint.stats.profile._CACHE.__init__()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
