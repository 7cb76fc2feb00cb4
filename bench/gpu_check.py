"""Everything that needs a GPU, in one run: the first GPU hour's script (run through bench/gpu_check.sh).

On a machine with torch, triton, timm, pyarrow and torchvision (Ray and DALI not needed), in order, each
step timed and isolated (a failing step is recorded and the next one runs):

1. env         torch / triton / GPU / driver
2. tests       the kernel tests compiled for real (pytest tests/test_kernel_*.py, TRITON_INTERPRET=0),
               when pytest is importable
3. kernels     every Triton kernel against its torch reference on the device, same inputs: time of each,
               the ratio, and whether they agree (histogram both precisions, batched EMD, per-image EMD,
               cosine top-k, FUNGI's gradient projection)
4. e2e         bench/bench_e2e_gpu.py: histogram-1000 VDNA of a compiled ViT-B/16 at batch 256 (bf16) vs
               its bare compiled forward
5. fungi       FUNGI (KL + DINO + SimCLR) features of a random-init ViT-B/16 in bf16: images/s
6. explain     saliency of 16 layer3 units of a resnet18 (and guided backprop of 16 logits): units x
               images / s
7. visualize   feature visualisation of 16 resnet18 layer2 channels, 64 steps at 128 px: units / s

Writes OUT/gpu_check.json (every figure) and OUT/RESULTS_rows.md (the rows to paste into
bench/RESULTS.md). ``--smoke`` runs the same steps on the CPU with tiny shapes (Triton under its
interpreter, small models, no compile) so that CI keeps the script working; its figures mean nothing.

    python bench/gpu_check.py --out gpu-out            # on the GPU machine (about 6 minutes on an H100)
    python bench/gpu_check.py --smoke --out /tmp/smoke # CI
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, dev, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up call."""
    fn()
    _sync(dev)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(dev)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


# ---------------------------------------------------------------------------------------------- steps


def step_env(a) -> dict:
    import torch
    import triton

    import neuroprint

    d = {
        "neuroprint": str(Path(neuroprint.__file__).parent),  # the links folder when not installed
        "neuroprint_source": str(Path(neuroprint.__file__).resolve().parent),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        d.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1))
        d["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    return d


def step_tests(a) -> dict:
    try:
        import pytest  # noqa: F401
    except ImportError:
        return {"skipped": "pytest is not installed on this machine"}
    if a.smoke:
        return {"skipped": "smoke run: the suite runs these tests under the interpreter already"}
    env = dict(os.environ, TRITON_INTERPRET="0")
    t = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *sorted(map(str, ROOT.glob("tests/test_kernel_*.py")))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=a.step_timeout,
    )  # fmt: skip
    tail = res.stdout.strip().splitlines()[-1:] or [""]
    return {"returncode": res.returncode, "summary": tail[0], "seconds": time.perf_counter() - t,
            "output_tail": (res.stdout + res.stderr)[-3000:]}  # fmt: skip


def step_kernels(a) -> dict:
    import torch

    from neuroprint.kernels import cosine_topk as kc
    from neuroprint.kernels import emd as ke
    from neuroprint.kernels import grad_projection as kg
    from neuroprint.kernels import histogram as kh
    from neuroprint.kernels import image_emd as ki

    dev = torch.device(a.device)
    g = torch.Generator(device="cpu").manual_seed(0)
    rows = {}
    s = a.smoke

    def rec(name, tri, ref, agree, **extra):
        rows[name] = {
            "triton_s": tri,
            "reference_s": ref,
            "speedup": ref / tri,
            "agree": bool(agree),
            **extra,
        }

    # Histogram: ViT-B/16 tokens, 13 layers of [B, 197, 768], 1000 bins.
    b, p, c, layers, bins = (2, 5, 7, 2, 17) if s else (256, 197, 768, 13, 1000)
    mean, std = kh.norm_params(-torch.ones(c).numpy() * 3, torch.ones(c).numpy() * 3)
    for dt in (torch.float32, torch.bfloat16):
        x = [(torch.randn(b, p, c, generator=g) * 1.5).to(dev, dt) for _ in range(layers)]
        for prec in kh.PRECISIONS:
            tri = _time(
                lambda x=x, prec=prec: [kh.triton_neuron_histogram(t, mean, std, bins, prec) for t in x],
                dev,
                a.repeats,
            )
            ref = _time(
                lambda x=x, prec=prec: [kh.reference_neuron_histogram(t, mean, std, bins, prec) for t in x],
                dev,
                a.repeats,
            )
            same = all(
                torch.equal(kh.triton_neuron_histogram(t, mean, std, bins, prec), kh.reference_neuron_histogram(t, mean, std, bins, prec))
                for t in x[:2]
            )  # fmt: skip
            rec(f"histogram {dt} {prec}", tri, ref, same, values=layers * b * p * c,
                values_per_s=layers * b * p * c / tri)  # fmt: skip
    # Batched EMD: all pairs of 16 VDNAs of 9,984 neurons x 1,000 bins (int32 counts).
    sets, r, n = (3, 10, 17) if s else (16, 9984, 1000)
    h = torch.randint(0, 50, (sets, r, n), generator=g, dtype=torch.int32).to(dev)
    tri = _time(lambda: ke.triton_batched_emd(h, h), dev, a.repeats)
    ref = _time(lambda: ke.reference_batched_emd(h, h), dev, max(1, a.repeats // 3))
    err = (ke.triton_batched_emd(h, h) - ke.reference_batched_emd(h, h)).abs().max().item()
    rec(
        "batched emd int32",
        tri,
        ref,
        err <= 1e-9 * n,
        max_abs_diff=err,
        cells_per_s=sets * sets * r * n / tri,
    )
    # Per-image EMD: 256 images of ViT tokens against a 1,000-bin reference.
    x = (torch.randn(b, p, c, generator=g)).to(dev, torch.bfloat16)
    refc = torch.randint(1, 100, (c, bins), generator=g).to(dev)
    tri = _time(lambda: ki.triton_per_image_emd(x, mean, std, refc), dev, a.repeats)
    ref = _time(lambda: ki.reference_per_image_emd(x, mean, std, refc), dev, a.repeats)
    err = (
        (ki.triton_per_image_emd(x, mean, std, refc) - ki.reference_per_image_emd(x, mean, std, refc))
        .abs()
        .max()
    )
    rec("per-image emd bf16", tri, ref, float(err) <= 1e-9 * bins, max_abs_diff=float(err))
    # Cosine top-k: 8,192 queries against 262,144 x 768 embeddings, k = 10.
    nq, nd, dim, k = (20, 50, 24, 5) if s else (8192, 262144, 768, 10)
    for dt in (torch.float32, torch.bfloat16):
        db = torch.randn(nd, dim, generator=g).to(dev, dt)
        q = db[:nq]
        tri = _time(lambda q=q, db=db: kc.triton_cosine_topk(q, db, k), dev, a.repeats)
        ref = _time(lambda q=q, db=db: kc.reference_cosine_topk(q, db, k), dev, a.repeats)
        same_idx = (
            (
                kc.keys_to_topk(kc.triton_cosine_topk(q, db, k))[1]
                == kc.keys_to_topk(kc.reference_cosine_topk(q, db, k))[1]
            )
            .float()
            .mean()
            .item()
        )
        rec(f"cosine top-k {dt}", tri, ref, same_idx >= (1.0 if dt == torch.float32 else 0.99),
            index_agreement=same_idx)  # fmt: skip
    # FUNGI gradient projection: ViT-B/16 attn.proj (768 -> 768, bias) of 64 images x 49 views, E = 768.
    bb, rr, e = (2, 6, 8) if s else (64, 49 * 197 // 8, 768)
    di = do = 12 if s else 768
    xg = torch.randn(bb, rr, di, generator=g).to(dev, torch.bfloat16)
    gg = torch.randn(bb, rr, do, generator=g).to(dev, torch.bfloat16)
    pp = (torch.randint(0, 2, (do * (di + 1), e), generator=g, dtype=torch.int8) * 2 - 1).to(dev)
    tri = _time(lambda: kg.triton_grad_projection(xg, gg, pp), dev, a.repeats)
    ref = _time(lambda: kg.reference_grad_projection(xg, gg, pp), dev, a.repeats)
    a1, a2 = kg.triton_grad_projection(xg, gg, pp), kg.reference_grad_projection(xg, gg, pp)
    cos = torch.nn.functional.cosine_similarity(a1, a2, dim=1).min().item()
    rec("grad projection bf16", tri, ref, cos >= 0.999, min_cosine=cos)
    return rows


def step_e2e(a) -> dict:
    out = Path(a.out) / "e2e.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_e2e_gpu.py"), "--out", str(out)]
    if a.smoke:
        cmd += ["--device", "cpu", "--batch", "2", "--num-images", "4", "--extractor", "timm:test_vit",
                "--no-compile", "--dtype", "fp32", "--repeats", "1", "--bins", "16"]  # fmt: skip
    else:
        cmd += ["--device", "cuda", "--batch", "256", "--num-images", "1024", "--dtype", "bf16"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.step_timeout)
    if res.returncode != 0:
        raise RuntimeError(f"bench_e2e_gpu.py failed: {(res.stdout + res.stderr)[-2000:]}")
    return json.loads(out.read_text())


def step_fungi(a) -> dict:
    import timm
    import torch

    from neuroprint.fungi import DINOConfig, FUNGIWrapper, KLConfig, SimCLRConfig

    dev = torch.device(a.device)
    name = "vit_tiny_patch16_224" if a.smoke else "vit_base_patch16_224"
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    from PIL import Image

    n, batch = (1, 1) if a.smoke else (64, 32)
    imgs = [Image.new("RGB", (320, 240), (i * 3 % 256, 90, 160)) for i in range(n)]
    # fungivision's default objectives (KL, DINO, SimCLR); the smoke run keeps KL only (CPU seconds).
    configs = [KLConfig()] if a.smoke else [KLConfig(), DINOConfig(), SimCLRConfig(comparison_batch_size=2)]
    w = FUNGIWrapper(model, "blocks.11.attn.proj", dev, use_fp16=True, extractor_configs=configs)
    w.setup([(im, 0) for im in imgs[:2]])
    sec = _time(lambda: [w(imgs[i : i + batch]) for i in range(0, n, batch)], dev, 1 if a.smoke else 2)
    return {"model": name, "objectives": [type(c).__name__ for c in configs], "images": n, "batch": batch,
            "dtype": "bf16", "images_per_s": n / sec}  # fmt: skip


def step_explain(a) -> dict:
    import timm
    import torch

    from neuroprint.explain import GuidedBackprop, Saliency, Unit

    dev = torch.device(a.device)
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval().to(dev)
    for p in net.parameters():
        p.requires_grad_(False)
    n, size, k = (1, 32, 2) if a.smoke else (16, 224, 16)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1)).to(dev)
    h = size // 16
    units = [Unit(c, (h // 2, h // 2)) for c in range(0, 256, 256 // k)][:k]
    sal = Saliency(net, "layer3")
    t_sal = _time(lambda: sal.attribute(x, units), dev, a.repeats)
    gb = GuidedBackprop(net, "fc")
    targets = list(range(0, 1000, 1000 // k))[:k]
    t_gb = _time(lambda: gb.attribute(x, targets), dev, a.repeats)
    return {"model": "resnet18", "images": n, "size": size, "units": k,
            "saliency_units_images_per_s": k * n / t_sal, "guided_units_images_per_s": k * n / t_gb}  # fmt: skip


def step_visualize(a) -> dict:
    import timm
    import torch

    from neuroprint.visualize import render

    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval().to(dev)
    units, steps, size = (2, 2, 32) if a.smoke else (16, 64, 128)
    t = time.perf_counter()
    render(model, "layer2", list(range(units)), size=size, steps=steps)
    _sync(dev)
    sec = time.perf_counter() - t
    return {"model": "resnet18", "layer": "layer2", "units": units, "steps": steps, "size": size,
            "seconds": sec, "units_per_s": units / sec}  # fmt: skip


STEPS = {
    "env": step_env,
    "tests": step_tests,
    "kernels": step_kernels,
    "e2e": step_e2e,
    "fungi": step_fungi,
    "explain": step_explain,
    "visualize": step_visualize,
}


def _rows_md(result: dict) -> str:
    env = result["env"].get("value", {})
    machine = env.get("gpu", "CPU (smoke)")
    lines = [f"### gpu_check.py, {result['date']}, commit {result['commit']}, {machine}", ""]
    lines.append(f"`{result['command']}`; torch {env.get('torch')}, triton {env.get('triton')}")
    lines.append("")
    for name, step in result.items():
        if not isinstance(step, dict) or "seconds" not in step:
            continue
        if "error" in step:
            lines.append(f"- {name}: FAILED: {step['error'].splitlines()[-1][:200]}")
        elif name == "kernels":
            lines.append("| kernel | triton s | reference s | speedup | agree |")
            lines.append("|---|---|---|---|---|")
            for k, v in step["value"].items():
                lines.append(
                    f"| {k} | {v['triton_s']:.4g} | {v['reference_s']:.4g} | {v['speedup']:.1f}x | {v['agree']} |"
                )
        elif name != "env":
            lines.append(f"- {name}: {json.dumps(step['value'], default=str)[:600]}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (CI)")
    ap.add_argument("--steps", nargs="+", default=list(STEPS), choices=list(STEPS))
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--step-timeout", type=int, default=240)
    a = ap.parse_args(argv)
    a.device = "cpu" if a.smoke else "cuda"
    a.repeats = a.repeats or (1 if a.smoke else 5)
    if a.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    else:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: run with --smoke on a CPU machine", file=sys.stderr)
            return 2
    Path(a.out).mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit.stdout.strip() or "unknown",
        "command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "smoke": a.smoke,
    }
    failed = 0
    for name in a.steps:
        t = time.perf_counter()
        try:
            value = STEPS[name](a)
            result[name] = {"value": value, "seconds": time.perf_counter() - t}
        except Exception:  # noqa: BLE001 - one failing step must not cost the others' figures
            failed += 1
            result[name] = {"error": traceback.format_exc(), "seconds": time.perf_counter() - t}
        print(f"[gpu_check] {name}: {'FAILED' if 'error' in result[name] else 'ok'} "
              f"({result[name]['seconds']:.1f} s)", flush=True)  # fmt: skip
        (Path(a.out) / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    (Path(a.out) / "RESULTS_rows.md").write_text(_rows_md(result))
    print(_rows_md(result))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
