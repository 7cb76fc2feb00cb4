"""Near-duplicate detection: quality against known ground truth, and the speed of exact search.

Quality (nothing here was tuned on this set: thresholds are not chosen, every method is scored by its
whole precision-recall curve over all pairs):
  originals     the natural photographs shipped with scikit-image (``skimage.data``; ``cat`` is the same
                photo as ``chelsea`` and is left out), gray ones converted to RGB
  duplicates    generated from each original with a seeded RNG: JPEG re-encode (q 15/40/75), resize
                (25-80 %), crop (5-30 % of each side removed), flip (horizontal, vertical), colour jitter
                (brightness, contrast, saturation), Gaussian blur (radius 1-4), text overlay, rotation
                (3-20 degrees); 2 or 3 of each per original
  distractors   the 200 images of ``skimage.data.lfw_subset`` (25x25 faces and non-faces, upscaled) and
                40 synthetic scenes (smooth colour fields with shapes)
  ground truth  a pair is a duplicate iff both images come from the same original
  per method    AP and recall at 90 % precision over all pairs, and per transformation (positives: the
                (original, transformed copy) pairs; negatives: every pair of different origins), the
                precision-recall curve (in --out), and CPU time per image (process time, all threads;
                torch limited to --threads, default 1, during this section)
  methods       neuroprint pHash / dHash (batched torch), neuroprint embedding (cosine of the pooled last
                tap of --extractor, random-init weights unless --weights), imagehash phash / dhash,
                imagededup PHash / DHash, imagededup CNN when its weights can be fetched

Scale (random clustered float32 signatures, --scale-n x --dim):
  exact top-k by neuroprint's cosine top-k op (CPU: the blocked torch reference) vs a plain torch full
  similarity matrix + topk; pairs compared per second, peak resident memory of each; Hamming search
  pairs/s; approximate search (k-means, faiss IVF) time and recall@k against exact; memory for 1M x 768
  signatures by calculation.

Run: python bench/bench_dedup.py [--weights default --extractor dino_vit_base] [--scale-n 20000]
     [--device cuda] [--out bench/out/dedup.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

PHOTOS = [
    "astronaut", "brick", "camera", "chelsea", "cell", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
]  # fmt: skip
TRANSFORMS = ["jpeg", "resize", "crop", "flip", "jitter", "blur", "text", "rotate"]


# ------------------------------------------------------------------------------------------------- data


def load_photos() -> dict[str, Image.Image]:
    import skimage.data

    out = {}
    for name in PHOTOS:
        try:
            a = np.asarray(getattr(skimage.data, name)())
        except Exception as e:  # some skimage builds fetch a few images on demand
            print(f"  (skipping skimage.data.{name}: {type(e).__name__})")
            continue
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        out[name] = Image.fromarray(a[:, :, :3].astype(np.uint8))
    return out


def transform(img: Image.Image, kind: str, variant: int, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    if kind == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=(15, 40, 75)[variant])
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if kind == "resize":
        s = rng.uniform(0.25, 0.8)
        return img.resize((max(8, round(w * s)), max(8, round(h * s))), Image.BILINEAR)
    if kind == "crop":
        fx, fy = rng.uniform(0.05, 0.30, 2)
        cw, ch = round(w * (1 - fx)), round(h * (1 - fy))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x0, y0, x0 + cw, y0 + ch))
    if kind == "flip":
        return img.transpose(Image.FLIP_LEFT_RIGHT if variant == 0 else Image.FLIP_TOP_BOTTOM)
    if kind == "jitter":
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.7, 1.3))
        return ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4))
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 4.0)))
    if kind == "text":
        out = img.copy()
        draw = ImageDraw.Draw(out)
        size = max(10, h // 8)
        try:
            font = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        words = ["SAMPLE", "(c) 2024 photo", "DRAFT", "neuroprint"][int(rng.integers(0, 4))]
        xy = (int(rng.integers(0, max(1, w // 3))), int(rng.integers(0, max(1, h - size))))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.text(xy, words, fill=colour, font=font)
        return out
    if kind == "rotate":
        angle = rng.uniform(3, 20) * (1 if rng.random() < 0.5 else -1)
        return img.rotate(angle, resample=Image.BILINEAR)
    raise ValueError(kind)


def synthetic(seed: int, h: int = 240, w: int = 320) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.fromarray((rng.random((5, 7, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        box = [x0, y0, x0 + int(rng.integers(20, 100)), y0 + int(rng.integers(20, 100))]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return img


def build_set(seed: int = 0):
    """Images (uint8 HxWx3), their origin (original index or -1 for distractors), their kind."""
    import skimage.data

    rng = np.random.default_rng(seed)
    photos = load_photos()
    images, origin, kind = [], [], []
    for o, img in enumerate(photos.values()):
        images.append(np.asarray(img))
        origin.append(o)
        kind.append("original")
        for t in TRANSFORMS:
            for v in range(3 if t == "jpeg" else 2):
                images.append(np.asarray(transform(img, t, v, rng).convert("RGB")))
                origin.append(o)
                kind.append(t)
    lfw = skimage.data.lfw_subset()
    for face in lfw:
        a = (np.clip(face, 0, 1) * 255).round().astype(np.uint8)
        images.append(np.asarray(Image.fromarray(a).resize((96, 96), Image.BICUBIC).convert("RGB")))
        origin.append(-1)
        kind.append("distractor")
    for s in range(40):
        images.append(np.asarray(synthetic(1000 + s)))
        origin.append(-1)
        kind.append("distractor")
    return images, np.asarray(origin), np.asarray(kind), list(photos)


# --------------------------------------------------------------------------------------------- metrics


def pr_curve(scores: np.ndarray, labels: np.ndarray):
    """Precision and recall at every distinct score threshold (ties resolved together), descending."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp, fp = np.cumsum(y), np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True]  # the end of each run of tied scores
    tp, fp = tp[last], fp[last]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(int(y.sum()), 1)
    return precision, recall, s[last]


def average_precision(precision, recall) -> float:
    """sum over thresholds of (R_n - R_{n-1}) P_n (the step-wise definition scikit-learn uses)."""
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def recall_at_precision(precision, recall, p: float = 0.9) -> float:
    ok = precision >= p
    return float(recall[ok].max()) if ok.any() else 0.0


def evaluate(score: np.ndarray, origin: np.ndarray, kind: np.ndarray) -> dict:
    """score: [N, N] similarity (higher = more alike). Over the pairs i < j."""
    i, j = np.triu_indices(len(origin), k=1)
    s = score[i, j].astype(np.float64)
    same = (origin[i] == origin[j]) & (origin[i] >= 0)
    diff = ~same
    out = {}
    p, r, _ = pr_curve(s, same)
    out["all"] = {"ap": average_precision(p, r), "r90p": recall_at_precision(p, r)}
    keep = np.unique(np.linspace(0, len(p) - 1, 300).astype(int))  # a thinned curve, ends included
    out["curve"] = {"precision": p[keep].tolist(), "recall": r[keep].tolist()}
    for t in TRANSFORMS:
        pos = same & (((kind[i] == "original") & (kind[j] == t)) | ((kind[j] == "original") & (kind[i] == t)))
        m = pos | diff
        p, r, _ = pr_curve(s[m], pos[m])
        out[t] = {"ap": average_precision(p, r), "r90p": recall_at_precision(p, r)}
    return out


# -------------------------------------------------------------------------------------------- methods


def cpu_timed(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def hamming_scores(hashes: np.ndarray) -> np.ndarray:
    from neuroprint.dedup.hashes import hamming_distance

    h = torch.from_numpy(np.asarray(hashes, dtype=np.int64))
    return -hamming_distance(h[:, None], h[None, :]).numpy().astype(np.float64)


def signed64(hexstr: str) -> int:
    v = int(hexstr, 16)
    return v - (1 << 64) if v >= 1 << 63 else v


RAW_HASHES: dict[str, np.ndarray] = {}  # method -> int64 hashes, for the bit-for-bit comparison


def run_methods(images, args) -> dict:
    from neuroprint.dedup import compute_signatures
    from neuroprint.dedup.hashes import image_hashes

    results = {}
    for m in ("phash", "dhash"):
        got, cpu, wall = cpu_timed(lambda m=m: image_hashes(images, [m])[m].numpy())
        results[f"neuroprint {m}"] = (hamming_scores(got), cpu, wall)
        RAW_HASHES[f"neuroprint {m}"] = np.asarray(got)
    try:
        import imagehash

        pil = [Image.fromarray(a) for a in images]
        for m in ("phash", "dhash"):
            fn = getattr(imagehash, m)
            got, cpu, wall = cpu_timed(lambda fn=fn: [signed64(str(fn(im))) for im in pil])
            results[f"imagehash {m}"] = (hamming_scores(np.asarray(got)), cpu, wall)
            RAW_HASHES[f"imagehash {m}"] = np.asarray(got)
    except ImportError:
        print("  imagehash not installed: pip install imagehash")
    try:
        from imagededup.methods import DHash, PHash

        for name, cls in (("PHash", PHash), ("DHash", DHash)):
            enc = cls(verbose=False)
            got, cpu, wall = cpu_timed(
                lambda enc=enc: [signed64(enc.encode_image(image_array=a)) for a in images]
            )
            results[f"imagededup {name}"] = (hamming_scores(np.asarray(got)), cpu, wall)
        try:
            from imagededup.methods import CNN

            cnn = CNN(verbose=False)
            got, cpu, wall = cpu_timed(lambda: np.stack([cnn.encode_image(image_array=a)[0] for a in images]))
            e = torch.nn.functional.normalize(torch.from_numpy(got).float(), dim=1)
            results["imagededup CNN"] = ((e @ e.T).numpy(), cpu, wall)
        except Exception as err:
            print(f"  imagededup CNN unavailable: {type(err).__name__}: {' '.join(str(err).split())[:120]}")
    except ImportError as err:
        print(
            f"  imagededup unavailable ({err}): pip install imagededup --no-deps (+ scikit-learn, matplotlib)"
        )
    sig, cpu, wall = cpu_timed(
        lambda: compute_signatures(
            images,
            ["embedding"],
            extractor=args.extractor,
            weights=args.weights,
            device=args.device,
            batch_size=32,
            num_workers=2,
            progress=False,
        )
    )
    raw = torch.from_numpy(sig.embeddings).float()
    e = torch.nn.functional.normalize(raw, dim=1)
    label = f"neuroprint embedding ({args.extractor}, {args.weights} weights)"
    results[label] = ((e @ e.T).numpy(), cpu, wall)
    # Pooled features of a random network share a large common component (cosine near 1 for every
    # pair); removing the set's mean feature before the cosine is the obvious fix, shown separately.
    c = torch.nn.functional.normalize(raw - raw.mean(dim=0), dim=1)
    results[label.replace("embedding", "embedding, centred")] = ((c @ c.T).numpy(), cpu, wall)
    return results


# ----------------------------------------------------------------------------------------------- scale


def peak_rss_reset():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def scale_data(n: int, d: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((max(1, n // 10), d)).astype(np.float32)
    return centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)


def _measure_exact(method: str, n: int, d: int, k: int, device: str):
    """Run in a fresh process: (seconds, peak RSS above the process's RSS with the data loaded, indices).
    A fresh process, because freed heap of earlier work hides later allocations from RSS."""
    from neuroprint.kernels.cosine_topk import cosine_topk

    dev = torch.device(device)
    xt = torch.from_numpy(scale_data(n, d)).to(dev)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    cosine_topk(xt[:64], xt[:128], k=k)  # warm-up (op registration, Triton compile)
    sync()
    base = rss_mb()
    peak_rss_reset()
    t = time.perf_counter()
    if method == "ours":
        _, idx = cosine_topk(xt, k=k)
    else:
        xn = torch.nn.functional.normalize(xt, dim=1)
        s = xn @ xn.T
        s.fill_diagonal_(float("-inf"))
        _, idx = torch.topk(s, k, dim=1)
    sync()
    return time.perf_counter() - t, peak_rss_mb() - base, idx.cpu().numpy()


def scale_section(args) -> dict:
    import multiprocessing as mp

    from neuroprint.dedup import approximate_topk, recall_at_k
    from neuroprint.dedup.hashes import hamming_pairs

    n, d, k = args.scale_n, args.dim, args.k
    rng = np.random.default_rng(1)
    x = scale_data(n, d)
    dev = torch.device(args.device)
    out = {"n": n, "dim": d, "k": k, "device": str(dev)}
    print(f"\nScale: exact top-{k} self-search over {n} x {d} float32 signatures on {dev}")
    ctx = mp.get_context("spawn")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        ours, ours_peak, ei = pool.apply(_measure_exact, ("ours", n, d, k, args.device))
    out["ours_s"], out["ours_pairs_per_s"], out["ours_peak_extra_mb"] = ours, n * n / ours, ours_peak
    full_bytes = n * n * 4
    if full_bytes < 0.3 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"):
        with ctx.Pool(1, maxtasksperchild=1) as pool:
            full, full_peak, bi = pool.apply(_measure_exact, ("full", n, d, k, args.device))
        agree = float((bi == ei).mean())
        out.update(
            full_s=full, full_pairs_per_s=n * n / full, full_peak_extra_mb=full_peak, index_agreement=agree
        )
    else:
        full = None
        print(f"  full matrix baseline skipped: {full_bytes / 2**30:.1f} GiB would not fit")
    print(f"  {'method':44s} {'time s':>8s} {'pairs/s':>10s} {'peak extra RSS':>15s}")
    print(
        f"  {'neuroprint cosine_topk (blocked reference)':44s} {ours:8.2f} {n * n / ours:10.3g} {ours_peak:12.0f} MB"
    )
    if full is not None:
        print(
            f"  {'torch full matrix + topk':44s} {full:8.2f} {n * n / full:10.3g} {out['full_peak_extra_mb']:12.0f} MB"
        )
        print(
            f"  ratio full/ours time: {full / ours:.2f}x; top-{k} indices identical for {100 * agree:.3f}% of slots"
        )

    hashes = torch.from_numpy(rng.integers(-(2**63), 2**63 - 1, size=n, dtype=np.int64))
    t = time.perf_counter()
    scan = hamming_pairs(hashes, 10, method="scan")
    ht = time.perf_counter() - t
    out["hamming_s"], out["hamming_pairs_per_s"] = ht, n * (n - 1) / 2 / ht
    print(f"  {'Hamming search <= 10 bits (all pairs i<j)':44s} {ht:8.2f} {n * (n - 1) / 2 / ht:10.3g}")
    for r in (6, 10):
        t = time.perf_counter()
        mih = hamming_pairs(hashes, r, method="mih")
        mt = time.perf_counter() - t
        same = r != 10 or all(torch.equal(a, b) for a, b in zip(mih, scan))
        out[f"mih_{r}_s"], out[f"mih_{r}_equal_scan"] = mt, same
        print(
            f"  {f'Hamming search <= {r} bits (multi-index)':44s} {mt:8.2f} {n * (n - 1) / 2 / mt:10.3g}"
            f"   pairs {len(mih[0])}" + (f", same as the scan: {same}" if r == 10 else "")
        )
    for big in args.hamming_n or []:
        hb = torch.from_numpy(rng.integers(-(2**63), 2**63 - 1, size=big, dtype=np.int64))
        for r in (6, 10):
            t = time.perf_counter()
            got = hamming_pairs(hb, r, method="mih")
            mt = time.perf_counter() - t
            out[f"mih_{big}_{r}_s"] = mt
            # the scan's time at this size, from its measured pairs/s above
            est = big * (big - 1) / 2 / out["hamming_pairs_per_s"]
            print(
                f"  {f'multi-index, {big:,} hashes, <= {r} bits':44s} {mt:8.2f}   pairs {len(got[0])}; "
                f"the scan would take about {est:,.0f} s ({est / mt:.0f}x)"
            )

    exact_i = ei
    approximate_topk(x[:500], k, nprobe=2, backend="kmeans")  # warm-up
    for backend in ("kmeans", "faiss"):
        try:
            t = time.perf_counter()
            _, ai = approximate_topk(x, k, nprobe=args.nprobe, backend=backend, device=dev)
            at = time.perf_counter() - t
        except ImportError:
            print(f"  approximate {backend}: not installed")
            continue
        rec = recall_at_k(ai, exact_i)
        out[f"approx_{backend}"] = {"s": at, "recall": rec, "nprobe": args.nprobe}
        print(
            f"  {'approximate ' + backend + f' (nprobe {args.nprobe})':44s} {at:8.2f} {'':10s}  recall@{k} vs exact {rec:.4f}"
        )

    m = 1_000_000
    print("\n  Memory for 1M x 768 signatures (calculation):")
    print(
        f"    signatures fp32          1e6 * 768 * 4 B       = {m * 768 * 4 / 1e9:.2f} GB   (fp16/bf16: {m * 768 * 2 / 1e9:.2f} GB)"
    )
    print(f"    inverse norms fp32       1e6 * 4 B             = {m * 4 / 1e6:.0f} MB")
    print(
        f"    top-{k} output           1e6 * {k} * (4 + 8) B    = {m * k * 12 / 1e6:.0f} MB  (+ int64 keys {m * k * 8 / 1e6:.0f} MB)"
    )
    print(
        f"    CPU working set          1024 x 8192 block * (4 + 8 + 8) B = {1024 * 8192 * 20 / 1e6:.0f} MB per block"
    )
    print(f"    full similarity matrix   1e6^2 * 4 B           = {m * m * 4 / 1e12:.0f} TB (never formed)")
    print(f"    pHash+dHash              1e6 * 2 * 8 B         = {m * 16 / 1e6:.0f} MB")
    print(
        f"    Triton kernel: the database streams through tiles; per program BLOCK_M x next_pow2(k) int64 "
        f"running keys in registers; total device memory = signatures + output ({(m * 768 * 2 + m * k * 8) / 1e9:.2f} GB in bf16)"
    )
    return out


# ------------------------------------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extractor", default="timm:resnet18", help="backbone for the embedding method")
    ap.add_argument(
        "--weights", default="random", help="'random' (offline), 'default' (pretrained) or a path"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale-n", type=int, default=20000)
    ap.add_argument(
        "--hamming-n",
        type=int,
        nargs="*",
        default=None,
        help="also time multi-index Hamming search on N hashes",
    )
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=8)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the quality section, so that CPU time per image compares with the "
        "single-threaded peers (the scale section uses torch's default)",
    )
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--out", help="write every number (and the PR curves) to this JSON file")
    args = ap.parse_args()
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "args": vars(args),
    }
    print(
        f"bench_dedup: {report['machine']}, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f} (other processes share these cores)"
    )
    if not args.skip_quality:
        default_threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        images, origin, kind, names = build_set(args.seed)
        n_dup = int((origin >= 0).sum() - len(names))
        print(
            f"\nQuality: {len(names)} skimage photos, {n_dup} generated near-duplicates, "
            f"{int((origin < 0).sum())} distractors = {len(images)} images, {len(images) * (len(images) - 1) // 2} pairs"
        )
        results = run_methods(images, args)
        torch.set_num_threads(default_threads)
        report["quality"] = {}
        header = f"  {'method':52s} {'AP':>6s} {'R@90P':>6s} {'CPU ms/img':>10s} {'wall ms/img':>11s}"
        print(header)
        per_t = {}
        for name, (score, cpu, wall) in results.items():
            ev = evaluate(score, origin, kind)
            ev["cpu_ms_per_image"] = 1000 * cpu / len(images)
            ev["wall_ms_per_image"] = 1000 * wall / len(images)
            report["quality"][name] = ev
            per_t[name] = ev
            print(
                f"  {name:52s} {ev['all']['ap']:6.3f} {ev['all']['r90p']:6.3f} {ev['cpu_ms_per_image']:10.2f} "
                f"{ev['wall_ms_per_image']:11.2f}"
            )
        print(
            "\n  AP / recall at 90% precision per transformation (original vs transformed copy, all negatives)"
        )
        print(f"  {'method':30s} " + " ".join(f"{t:>11s}" for t in TRANSFORMS))
        for name, ev in per_t.items():
            short = name if len(name) <= 30 else name[:27] + "..."
            print(
                f"  {short:30s} " + " ".join(f"{ev[t]['ap']:5.2f}/{ev[t]['r90p']:4.2f}" for t in TRANSFORMS)
            )
        print()
        for m in ("phash", "dhash"):
            ours, peer = per_t.get(f"neuroprint {m}"), per_t.get(f"imagehash {m}")
            if ours and peer:
                same = int((RAW_HASHES[f"neuroprint {m}"] == RAW_HASHES[f"imagehash {m}"]).sum())
                print(
                    f"  {m}: neuroprint = imagehash bit for bit on {same}/{len(images)} images; CPU time per "
                    f"image neuroprint / imagehash: {ours['cpu_ms_per_image'] / peer['cpu_ms_per_image']:.2f}x"
                )
        print("\n  Precision at recall levels (overall PR curve; max precision at recall >= r)")
        levels = [0.2, 0.4, 0.6, 0.8, 0.9, 1.0]
        print(f"  {'method':52s} " + " ".join(f"{lv:>5.1f}" for lv in levels))
        for name, ev in per_t.items():
            p, r = np.asarray(ev["curve"]["precision"]), np.asarray(ev["curve"]["recall"])
            vals = [p[r >= lv - 1e-12].max() if (r >= lv - 1e-12).any() else 0.0 for lv in levels]
            print(f"  {name:52s} " + " ".join(f"{v:5.2f}" for v in vals))
    if not args.skip_scale:
        report["scale"] = scale_section(args)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
