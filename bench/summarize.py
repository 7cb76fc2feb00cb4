"""Medians over several runs of the benchmarks, as Markdown tables (for bench/RESULTS.md).

    python bench/summarize.py bench/out/fd_run*.json bench/out/make_vdna_run*.json

Each input is the --out JSON of bench_fd.py or bench_make_vdna.py; runs of the same benchmark are
combined by taking the median of each figure across runs (each run's figure is itself a median or a
single warm call, see the benchmark).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def f(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def fx(x):
    return "-" if x is None else f"{x:.2f}x"


def fd_table(runs: list[dict]) -> str:
    ours = med([r["neuroprint"]["median_s"] for r in runs])
    peer = med([r["peer"]["median_s"] for r in runs if "peer" in r])
    rel = med([r.get("relative_difference") for r in runs])
    r0 = runs[0]
    lines = [
        f"dim {r0['dim']}, {r0['samples']} samples per set, device {r0['device']}, {len(runs)} runs "
        f"(per run: median of its repeats; table: median over runs)",
        "",
        "| implementation | s / call | speed-up |",
        "|---|---:|---:|",
        f"| neuroprint.frechet_distance (eigh, float64 torch) | {f(ours, '.3f')} | {f(peer / ours if peer else None, '.1f')}x |",
    ]
    if peer:
        lines.append(
            f"| pytorch-fid calculate_frechet_distance (scipy.linalg.sqrtm) | {f(peer, '.3f')} | 1.0x |"
        )
    lines += ["", f"relative difference of the two values: {f(rel, '.2e')}"]
    bds = [r["breakdown"] for r in runs if "breakdown" in r]
    if bds:
        lines += ["", "| neuroprint step | s |", "|---|---:|"]
        for k in bds[0]["steps_s"]:
            lines.append(f"| {k} | {f(med([b['steps_s'][k] for b in bds]), '.3f')} |")
        lines.append(
            f"| (variant, not in neuroprint) cholesky(S1) + eigvalsh(L^T S2 L), whole distance | "
            f"{f(med([b['cholesky_variant_s'] for b in bds]), '.3f')} |"
        )
    return "\n".join(lines)


def vdna_tables(runs: list[dict]) -> str:
    out = []
    names = list(dict.fromkeys(n for r in runs for n in r["extractors"]))
    labels = {
        "neuroprint": "neuroprint",
        "vdna": "vdna 0.1.1 (a) default (torch.compile on)",
        "vdna_nocompile": "vdna 0.1.1 (b) TORCHDYNAMO_DISABLE=1",
    }
    out.append(
        "| extractor | images | run | cold s | cold img/s | warm s | warm img/s | best warm img/s | vdna rebuild in warm call s | steady img/s |"
    )
    out.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    ratios = []
    for name in names:
        per = [r["extractors"][name] for r in runs if name in r["extractors"]]
        n = per[0]["num_images"]
        keys = [k for k in per[0]["summary"] if per[0]["summary"][k]]
        for k in keys:
            ss = [p["summary"].get(k) for p in per if p["summary"].get(k)]
            label = labels.get(k, k)
            out.append(
                f"| {name} | {n} | {label} | {f(med([s['cold_s'] for s in ss]), '.1f')} | "
                f"{f(med([s['cold_img_s'] for s in ss]))} | {f(med([s['warm_s'] for s in ss]), '.1f')} | "
                f"{f(med([s['warm_img_s'] for s in ss]))} | {f(max(s['warm_img_s'] for s in ss))} | "
                f"{f(med([s['build_in_warm_s'] for s in ss]), '.1f')} | "
                f"{f(med([s['steady_img_s'] for s in ss]))} |"
            )
        row = {"name": name}
        for k in ("vdna", "vdna_nocompile"):
            both = [
                (p["summary"]["neuroprint"], p["summary"][k])
                for p in per
                if p["summary"].get("neuroprint") and p["summary"].get(k)
            ]
            row[k] = (
                med([a["warm_img_s"] / b["warm_img_s"] for a, b in both]),
                med([a["cold_img_s"] / b["cold_img_s"] for a, b in both]),
                med([a["steady_img_s"] / b["steady_img_s"] for a, b in both]),
            )
        bs = [p["breakdown"] for p in per if p.get("breakdown") and "hist_only_np_s" in p["breakdown"]]
        row["hist_only"] = med([b["hist_only_vdna_s"] / b["hist_only_np_s"] for b in bs])
        ag = [
            p["agreement"].get("neuroprint_vs_vdna_nocompile") or p["agreement"].get("neuroprint_vs_vdna")
            for p in per
        ]
        ag = [a for a in ag if a and "error" not in a]
        row["agree"] = ag[0] if ag else None
        row["agree_all"] = ag
        ratios.append(row)
    out += [
        "",
        "| extractor | neuroprint/vdna(a) warm | neuroprint/vdna(b) warm | neuroprint/vdna(b) cold | neuroprint/vdna(b) steady | histogram only vdna/neuroprint | histogram totals diff | counts in another bin |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in ratios:
        a, b = row["vdna"], row["vdna_nocompile"]
        ag = row["agree"]
        moved = med([x["moved_fraction"] for x in row["agree_all"]]) if row["agree_all"] else None
        out.append(
            f"| {row['name']} | {fx(a[0])} | {fx(b[0])} | {fx(b[1])} | {fx(b[2])} | {fx(row['hist_only'])} | "
            f"{ag['total_count_difference'] if ag else '-'} | {f(moved, '.1e')} |"
        )
    # breakdown
    out += [
        "",
        "Breakdown on one batch (ms per image; decode single-threaded; median over runs):",
        "",
        "| extractor | stage | neuroprint | vdna | vdna/neuroprint |",
        "|---|---|---:|---:|---:|",
    ]
    for name in names:
        bs = [r["extractors"][name].get("breakdown") for r in runs if name in r["extractors"]]
        bs = [b for b in bs if b]
        if not bs:
            continue
        bsz = bs[0]["batch"]
        stages = [
            ("decode + preprocess", "np_decode_s_per_img", "vdna_decode_s_per_img", 1),
            ("forward", "np_forward_s", "vdna_forward_s", bsz),
            ("histogram, all layers", "np_hist_s", "vdna_hist_s", bsz),
        ]
        tn = tv = 0.0
        for label, kn, kv, div in stages:
            a = med([b[kn] / div for b in bs])
            v = med([b[kv] / div for b in bs if kv in b])
            tn += a
            tv = tv + v if v is not None and tv is not None else None
            out.append(
                f"| {name} | {label} | {f(a * 1e3, '.1f')} | {f(v * 1e3 if v else None, '.1f')} | {f(v / a if v else None)}x |"
            )
        out.append(
            f"| {name} | **sum** | **{f(tn * 1e3, '.1f')}** | **{f(tv * 1e3 if tv else None, '.1f')}** | {f(tv / tn if tv else None)}x |"
        )
        if "hist_only_np_s" in bs[0]:
            b0 = bs[0]
            hv = med([b["hist_only_vdna_s"] for b in bs])
            hn = med([b["hist_only_np_s"] for b in bs])
            el = b0["hist_layer_elements"]
            out.append(
                f"| {name} | histogram only, {b0['hist_layer']} {b0['hist_layer_shape_vdna']} (ns/value) | "
                f"{f(hn / el * 1e9, '.1f')} | {f(hv / el * 1e9, '.1f')} | {f(hv / hn)}x |"
            )
    for name in names:
        bs = [r["extractors"][name].get("breakdown") for r in runs if name in r["extractors"]]
        bs = [b for b in bs if b and "np_hist_ops" in b]
        if not bs:
            continue
        ops = bs[-1]["np_hist_ops"]
        tot = ops["total_self_s"]
        out += [
            "",
            f"{name}: neuroprint CPU histogram on {bs[-1]['hist_layer']}, top ops by self CPU time "
            f"(torch.profiler, last run, {tot * 1e3:.1f} ms in all): "
            + ", ".join(f"{k} {100 * s / tot:.0f}%" for k, s, _ in ops["top"][:6]),
        ]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="--out JSON files of bench_fd.py / bench_make_vdna.py")
    args = p.parse_args(argv)
    fd, mv = [], []
    for path in args.files:
        with open(path) as fh:
            d = json.load(fh)
        (fd if d.get("benchmark") == "frechet_distance" else mv).append(d)
    if fd:
        print("### Frechet distance\n")
        print(fd_table(fd))
        print()
    if mv:
        print("### make_vdna\n")
        print(vdna_tables(mv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
