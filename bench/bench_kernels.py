"""Kernel benchmarks: fused histogram binning and batched EMD against the peer and the references.

Prints, from one run, for each op the time of every implementation and its ratio to ours:

histogram (all layers of a ViT-B-like network, [B, 197, 768] x 13 layers, or --shape):
  vdna          vdna 0.1.1's path: float64 normalisation, then one torch.histc per neuron
  bincount      a plain torch formulation (float64 temporaries of the whole layer, masked bincount)
  reference     neuroprint's torch reference (the CPU path: chunked, in place, one bincount)
  triton        the fused Triton kernel (CUDA only), and its time as a fraction of the backbone forward

EMD (all pairs of --sets histogram VDNAs with --neurons x --bins):
  vdna          vdna's earth_movers_distance, one call per pair
  numpy         the same formula in numpy, one call per pair
  reference     neuroprint's batched torch reference
  triton        the batched Triton kernel (CUDA only), with cells/s and achieved bandwidth

Run: python bench/bench_kernels.py [--device cuda] [--batch 256] [--layers 13]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from neuroprint.kernels import emd as ke
from neuroprint.kernels import histogram as kh


def timeit(fn, repeats: int, sync) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def vdna_histograms(feats, means, stds, bins):
    from vdna.utils.stats import histogram_per_channel

    out = []
    for x, m, s in zip(feats, means, stds):
        x4 = x.transpose(1, 2).unsqueeze(-1)  # vdna's ViT layout [B, C, P, 1]
        xn = (x4 - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)
        out.append(histogram_per_channel(xn, bins, [-1.0, 1.0]))
    return out


def bincount_histograms(feats, means, stds, bins):
    out = []
    for x, m, s in zip(feats, means, stds):
        rows = x.reshape(-1, x.shape[-1]).double()
        xn = ((rows - m) / s).clamp(-1, 1)
        valid = ~torch.isnan(xn)
        pos = ((xn + 1) * bins / 2).long().clamp(max=bins - 1)
        flat = (pos + torch.arange(x.shape[-1], device=x.device) * bins)[valid]
        out.append(torch.bincount(flat, minlength=x.shape[-1] * bins).view(-1, bins))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=197)
    ap.add_argument("--channels", type=int, default=768)
    ap.add_argument("--layers", type=int, default=13)
    ap.add_argument("--bins", type=int, default=1000)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--sets", type=int, default=16, help="histogram VDNAs for the EMD matrix")
    ap.add_argument("--neurons", type=int, default=9984, help="neurons per VDNA (ViT-B: 13 x 768)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-vdna", action="store_true")
    ap.add_argument("--forward", action="store_true", help="also time a ViT-B forward (timm, random weights)")
    ap.add_argument("--out", help="write the figures as JSON")
    args = ap.parse_args()

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    dtype = getattr(torch, args.dtype)
    g = torch.Generator().manual_seed(0)
    feats = [
        (torch.randn(args.batch, args.tokens, args.channels, generator=g) * 2).to(dtype).to(dev)
        for _ in range(args.layers)
    ]
    rng = np.random.default_rng(0)
    params = [
        kh.norm_params(-np.abs(rng.normal(4, 1, args.channels)), np.abs(rng.normal(4, 1, args.channels)))
        for _ in feats
    ]
    means = [m.to(dev) for m, _ in params]
    stds = [s.to(dev) for _, s in params]
    values = args.batch * args.tokens * args.channels * args.layers
    res = {"config": vars(args), "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"}
    print(f"histogram: {args.layers} layers of [{args.batch}, {args.tokens}, {args.channels}] {args.dtype}, "
          f"{args.bins} bins ({values / 1e6:.1f} M values) on {res['device']}")  # fmt: skip

    impls = {
        "reference": lambda: [
            kh.reference_neuron_histogram(x, m, s, args.bins) for x, m, s in zip(feats, means, stds)
        ],
        "bincount": lambda: bincount_histograms(feats, means, stds, args.bins),
    }
    if not args.skip_vdna:
        impls["vdna"] = lambda: vdna_histograms([f.float() for f in feats], means, stds, args.bins)
    if dev.type == "cuda" and kh.triton is not None:
        impls["triton"] = lambda: [
            kh.triton_neuron_histogram(x, m, s, args.bins) for x, m, s in zip(feats, means, stds)
        ]
    ours = "triton" if "triton" in impls else "reference"
    want = impls["reference"]()
    times = {}
    for name, fn in impls.items():
        got = fn()
        same = all(torch.equal(a.cpu().long(), b.cpu()) for a, b in zip(got, want))
        times[name] = timeit(fn, args.repeats, sync)
        print(f"  {name:10s} {times[name] * 1e3:10.2f} ms  {values / times[name] / 1e9:7.3f} G values/s  "
              f"identical to reference: {same}")  # fmt: skip
    for name, t in times.items():
        if name != ours:
            print(f"  ratio {name} / {ours}: {t / times[ours]:.2f}x")
    res["histogram_s"] = times
    if dev.type == "cuda" and "triton" in times:
        read = sum(f.numel() * f.element_size() for f in feats)
        print(f"  triton achieved read bandwidth: {read / times['triton'] / 1e9:.1f} GB/s")
        res["histogram_GBps"] = read / times["triton"] / 1e9
    if args.forward:
        import timm

        model = timm.create_model("vit_base_patch16_224", pretrained=False).to(dev).eval()
        x = torch.randn(args.batch, 3, 224, 224, device=dev)
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            t_fwd = timeit(lambda: model.forward_features(x), args.repeats, sync)
        print(f"  ViT-B forward at batch {args.batch}: {t_fwd * 1e3:.1f} ms; {ours} histogram of 13 layers = "
              f"{100 * times[ours] / t_fwd:.1f}% of it")  # fmt: skip
        res["forward_s"] = t_fwd

    # ------------------------------------------------------------------------------------------ EMD
    a = torch.randint(0, 500, (args.sets, args.neurons, args.bins), generator=g, dtype=torch.int64).to(
        torch.int32
    )
    cells = args.sets * args.sets * args.neurons * args.bins
    print(
        f"EMD: all {args.sets}x{args.sets} pairs of {args.neurons} neurons x {args.bins} bins ({cells / 1e9:.2f} G cells)"
    )
    ad = a.to(dev)
    eimpls = {"reference": lambda: ke.reference_batched_emd(ad, ad)}
    if not args.skip_vdna:
        from vdna.utils.stats import earth_movers_distance

        eimpls["vdna"] = lambda: [
            earth_movers_distance(a[i], a[j]) for i in range(args.sets) for j in range(args.sets)
        ]
    an = a.numpy()

    def numpy_emd():
        out = []
        for i in range(args.sets):
            hi = an[i] / an[i].sum(1, dtype=np.float64, keepdims=True)
            for j in range(args.sets):
                hj = an[j] / an[j].sum(1, dtype=np.float64, keepdims=True)
                out.append(np.abs(np.cumsum(hi - hj, axis=1)).sum(1))
        return out

    eimpls["numpy"] = numpy_emd
    if dev.type == "cuda" and ke.triton is not None:
        eimpls["triton"] = lambda: ke.triton_batched_emd(ad, ad)
    eours = "triton" if "triton" in eimpls else "reference"
    etimes = {}
    for name, fn in eimpls.items():
        reps = 1 if name in ("vdna", "numpy") else args.repeats
        etimes[name] = timeit(fn, reps, sync)
        print(f"  {name:10s} {etimes[name] * 1e3:10.1f} ms  {cells / etimes[name] / 1e9:7.3f} G cells/s")
    for name, t in etimes.items():
        if name != eours:
            print(f"  ratio {name} / {eours}: {t / etimes[eours]:.2f}x")
    if eours == "triton":
        # Each pair reads both histograms twice (sums, then the scan).
        read = 4 * 4 * cells
        print(
            f"  triton achieved read bandwidth: {read / etimes['triton'] / 1e9:.1f} GB/s (4 reads of int32 per cell)"
        )
    res["emd_s"] = etimes
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
