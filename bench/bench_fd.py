"""Frechet distance between two Gaussians fitted to correlated random features.

neuroprint.frechet_distance (symmetric eigendecompositions, float64 torch) against the formula that
pytorch-fid and clean-fid use (scipy.linalg.sqrtm of sigma1 @ sigma2, a Schur-based general matrix
square root), called through ``pytorch_fid.fid_score.calculate_frechet_distance`` when it imports.

Timing: the statistics (mean, covariance) are computed once, outside the timed region; each timed
call is one full distance computation from (mu1, sigma1, mu2, sigma2). Reported figures are medians.

    python bench/bench_fd.py                    # 2048-d, 4096 samples, CPU
    python bench/bench_fd.py --device cuda      # neuroprint on the GPU (the peer always runs on CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (default 2048, Inception pool3)")
    p.add_argument(
        "--samples",
        type=int,
        default=4096,
        help="samples per set used to fit each Gaussian (>= dim for a full-rank covariance; default 4096)",
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed calls per implementation; the median is reported (default 5)",
    )
    p.add_argument(
        "--peer-repeats", type=int, default=None, help="timed calls for the scipy peer (default: --repeats)"
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="device for neuroprint: cpu or cuda (default cpu); the scipy peer is CPU-only",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-peer", action="store_true", help="time neuroprint only")
    p.add_argument(
        "--no-breakdown",
        action="store_true",
        help="skip the per-step timing of neuroprint's formula and of a Cholesky variant",
    )
    p.add_argument("--out", default=None, help="write the results as JSON to this path")
    return p.parse_args(argv)


def make_stats(dim: int, samples: int, seed: int):
    """Two sets of correlated features (shared low-rank structure, different mixing and shift)."""
    rng = np.random.default_rng(seed)
    # A mixing matrix with a decaying spectrum, as real network features have.
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    scales = 1.0 / np.sqrt(1.0 + np.arange(dim) / 16.0)
    mix = q * scales
    sets = []
    for k in range(2):
        z = rng.standard_normal((samples, dim))
        pert = np.eye(dim) + 0.05 * rng.standard_normal((dim, dim)) / np.sqrt(dim) * (k + 1)
        x = np.maximum(z @ mix.T @ pert, 0.0) + 0.1 * k  # ReLU-like, correlated, non-Gaussian
        mu = x.mean(axis=0)
        sigma = np.cov(x, rowvar=False)
        sets.append((mu, sigma))
    return sets[0][0], sets[0][1], sets[1][0], sets[1][1]


def load_peer():
    """The pytorch-fid function, or a verbatim reimplementation if the package does not import."""
    try:
        from pytorch_fid.fid_score import calculate_frechet_distance

        return calculate_frechet_distance, "pytorch_fid.fid_score.calculate_frechet_distance (imported)"
    except Exception as err:  # pragma: no cover - depends on the environment
        from scipy import linalg

        def calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
            diff = mu1 - mu2
            covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
            if not np.isfinite(covmean).all():
                offset = np.eye(sigma1.shape[0]) * eps
                covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
            if np.iscomplexobj(covmean):
                covmean = covmean.real
            return diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)

        return calculate_frechet_distance, f"reimplemented pytorch-fid formula (import failed: {err})"


def time_calls(fn, repeats: int, sync=None):
    times, value = [], None
    for _ in range(repeats):
        # OpenBLAS (scipy) threads busy-wait a while after each call and would steal the cores of the
        # next torch call on a small machine: let them go to sleep first (not timed).
        time.sleep(0.3)
        t0 = time.perf_counter()
        value = fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times, float(value)


def breakdown(t_args, repeats: int, sync, our_value: float) -> dict:
    """Where neuroprint's time goes (its steps, re-run one by one), and a Cholesky variant for comparison.

    The variant is NOT part of neuroprint: tr sqrt(S1 S2) from the eigenvalues of L^T S2 L with
    S1 = L L^T (same spectrum as S1 S2), replacing the first full eigendecomposition by a Cholesky
    factorisation. It needs S1 positive definite.
    """
    from neuroprint.stats.distances import _sqrt_psd

    mu1, s1, mu2, s2 = t_args
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2

    def med(fn):
        times, out = [], None
        for _ in range(max(3, repeats)):
            t0 = time.perf_counter()
            out = fn()
            if sync:
                sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), out

    steps = {}
    steps["eigh(S1) -> sqrt(S1)  [_sqrt_psd]"], r1 = med(lambda: _sqrt_psd(s1))
    steps["sqrt(S1) @ S2 @ sqrt(S1)"], m = med(lambda: r1 @ s2 @ r1)
    steps["eigvalsh of that (symmetrised)"], _ = med(lambda: torch.linalg.eigvalsh((m + m.T) / 2))

    def chol_variant():
        lo = torch.linalg.cholesky(s1)
        mm = lo.T @ s2 @ lo
        eig = torch.linalg.eigvalsh((mm + mm.T) / 2)
        diff = mu1 - mu2
        return (diff.dot(diff) + torch.trace(s1) + torch.trace(s2) - 2 * eig.clamp(min=0).sqrt().sum()).item()

    chol_s, chol_value = med(chol_variant)
    total = sum(steps.values())
    print()
    print(
        "trace-term paths of neuroprint.frechet_distance (medians, re-run one by one): the square-root path is its fallback for a singular S1"
    )
    for k, v in steps.items():
        print(f"  {k:<40} {v:8.4f} s  {100 * v / total:5.1f}%")
    print(
        f"the Cholesky path (used when S1 is positive definite): cholesky(S1) + eigvalsh(L^T S2 L): {chol_s:.4f} s/call "
        f"({total / chol_s:.1f}x faster than the steps above), value rel. diff vs neuroprint "
        f"{abs(chol_value - our_value) / abs(our_value):.2e}"
    )
    return {"steps_s": steps, "cholesky_variant_s": chol_s, "cholesky_variant_value": chol_value}


def main(argv=None) -> int:
    args = parse_args(argv)
    import neuroprint

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda asked for but CUDA is not available", file=sys.stderr)
        return 2
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    t0 = time.perf_counter()
    mu1, s1, mu2, s2 = make_stats(args.dim, args.samples, args.seed)
    print(
        f"statistics: dim={args.dim} samples={args.samples} seed={args.seed} "
        f"(generated in {time.perf_counter() - t0:.1f} s, not timed)"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  cpus={os.cpu_count()}")
    print(
        f"torch {torch.__version__} threads={torch.get_num_threads()}  numpy {np.__version__}  "
        f"device={device}  python {platform.python_version()}"
    )

    # neuroprint: inputs already on the device (as a VDNA's tensors would be); one untimed warm-up call.
    t_args = [torch.as_tensor(a, dtype=torch.float64, device=device) for a in (mu1, s1, mu2, s2)]

    def ours():
        return neuroprint.frechet_distance(*t_args).item()

    ours()
    peer_fn = peer_desc = None
    if not args.skip_peer:
        peer_fn, peer_desc = load_peer()
    peer_repeats = 0 if args.skip_peer else (args.peer_repeats or args.repeats)
    # Interleaved (ours, peer, ours, peer, ...) so that load from other processes hits both alike.
    our_times, peer_times, our_value, peer_value = [], [], None, None
    for i in range(max(args.repeats, peer_repeats)):
        if i < args.repeats:
            t, our_value = time_calls(ours, 1, sync)
            our_times += t
        if i < peer_repeats:
            t, peer_value = time_calls(lambda: peer_fn(mu1, s1, mu2, s2), 1)
            peer_times += t

    rows = [
        (
            f"neuroprint.frechet_distance (Cholesky + eigvalsh, float64 torch, {device.type})",
            our_times,
            our_value,
        )
    ]
    result = {
        "benchmark": "frechet_distance",
        "dim": args.dim,
        "samples": args.samples,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "neuroprint": {"times_s": our_times, "median_s": statistics.median(our_times), "value": our_value},
    }
    if not args.skip_peer:
        rows.append(("peer: " + peer_desc.split(" (")[0] + " (scipy sqrtm, cpu)", peer_times, peer_value))
        result["peer"] = {
            "impl": peer_desc,
            "times_s": peer_times,
            "median_s": statistics.median(peer_times),
            "value": peer_value,
        }

    print()
    print(f"{'implementation':<78} {'median s/call':>13} {'min':>8} {'max':>8} {'n':>3}  value")
    for name, times, value in rows:
        print(
            f"{name:<78} {statistics.median(times):>13.4f} {min(times):>8.4f} {max(times):>8.4f} {len(times):>3}  {value:.10g}"
        )
    if not args.skip_peer:
        speedup = statistics.median(peer_times) / statistics.median(our_times)
        rel = abs(our_value - peer_value) / max(abs(peer_value), 1e-300)
        print()
        print(f"speed-up (peer median / neuroprint median): {speedup:.1f}x")
        print(f"relative difference of the two values:      {rel:.3e}")
        result.update(speedup=speedup, relative_difference=rel)
    if not args.no_breakdown:
        result["breakdown"] = breakdown(t_args, args.repeats, sync, our_value)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    result["loadavg_end"] = list(os.getloadavg())
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
