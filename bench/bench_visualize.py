"""neuroprint.visualize vs torch-lucent: units visualised per second, same model, steps and size, one run.

neuroprint optimises every unit of the batch at once (the unit is the batch dimension, each item with
its own random transforms) and stops the forward after the layer; Lucent renders one objective per
``render_vis`` call, so visualising a layer means looping over its units (what Lucent users do).

Both sides: random-init timm resnet18 (fp32, eval), channel objective on --layer, Lucid's Fourier
parameterisation with decorrelated colour, Adam lr 0.05, Lucid's standard transforms (pad 12, jitter 8,
scale, rotate, jitter 4), ImageNet normalisation. Lucent resizes the transformed image to a fixed
network input; it gets --size + 24 (what the pad makes ours), so both networks see the same pixels count.
Lucent leaves its forward hooks on the model after every call (they pile up across a loop); the loop
removes them after each unit so the comparison is not skewed by that defect.

Lucent 0.1.8 calls kornia top-level names that current kornia moved; the script aliases them.

Run: python bench/bench_visualize.py [--device cpu|cuda:N] [--units 16] [--steps 32] [--size 64]
(--units 0 = every channel of the layer). Times are the best of --repeat alternating runs. Needs torch-lucent (--no-deps) + kornia, decorator, torchvision.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types

import timm
import torch

from neuroprint.visualize import layer_channels, render


def _lucent(device: torch.device):
    try:
        import IPython.display  # noqa: F401
    except ImportError:  # Lucent imports IPython only to display images
        ipy = types.ModuleType("IPython")
        ipy.display = types.ModuleType("IPython.display")
        sys.modules["IPython"], sys.modules["IPython.display"] = ipy, ipy.display
    if device.type == "cpu":
        torch.cuda.is_available = lambda: False  # Lucent picks cuda:0 whenever CUDA exists
    elif device != torch.device("cuda:0"):
        raise SystemExit("Lucent runs only on cuda:0; use --device cpu or cuda:0 for the comparison")
    import kornia
    import kornia.geometry.transform as kgt

    # Lucent 0.1.8 calls kornia.get_rotation_matrix2d / kornia.warp_affine, gone from kornia's top
    # level in current releases; point those names at kornia.geometry.transform.
    for name in ("get_rotation_matrix2d", "warp_affine"):
        if not hasattr(kornia, name):
            setattr(kornia, name, getattr(kgt, name))
    from lucent.optvis import objectives, param, transform
    from lucent.optvis import render as lrender
    from lucent.optvis.param import spatial

    spatial.device = device
    transform.device = device
    return objectives, param, lrender, transform


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layer", default="layer2")
    ap.add_argument("--units", type=int, default=16, help="first N channels of the layer; 0 = all")
    ap.add_argument("--lucent-units", type=int, default=None, help="Lucent units timed (default: --units)")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=2, help="alternating timed runs; the best of each is kept")
    ap.add_argument(
        "--precision", choices=["fp32", "bf16"], default="fp32", help="neuroprint's precision (Lucent: fp32)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    objectives, lparam, lrender, ltransform = _lucent(device)

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, zero_init_last=False).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    n = layer_channels(model, args.layer, args.size)
    k = n if args.units == 0 else min(args.units, n)
    units = list(range(k))
    lk = min(args.lucent_units or k, k)

    # Warm-up both (allocator, kernels) on one unit, few steps.
    render(model, args.layer, units[:2], size=args.size, steps=2, precision=args.precision)

    def run_ours():
        return render(
            model,
            args.layer,
            units,
            size=args.size,
            steps=args.steps,
            lr=0.05,
            transforms="standard",
            precision=args.precision,
        )

    lucent_layer = args.layer.replace(".", "_")

    def lucent_one(u: int, steps: int) -> None:
        lrender.render_vis(
            model,
            objectives.channel(lucent_layer, u),
            param_f=lambda: lparam.image(args.size, fft=True, decorrelate=True),
            optimizer=lambda ps: torch.optim.Adam(ps, lr=0.05),
            transforms=list(ltransform.standard_transforms),
            thresholds=(steps,),
            progress=False,
            show_image=False,
            fixed_image_size=args.size + 24,
        )
        for m in model.modules():  # Lucent never removes its hooks
            m._forward_hooks.clear()

    lucent_one(0, 2)
    # Alternate (ours, Lucent, ours, ...) and keep each side's best: outside load on a shared
    # machine then does not decide the ratio.
    t_ours = t_lucent = float("inf")
    for _ in range(max(1, args.repeat)):
        _sync(device)
        t0 = time.perf_counter()
        ours = run_ours()
        _sync(device)
        t_ours = min(t_ours, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for u in units[:lk]:
            lucent_one(u, args.steps)
        _sync(device)
        t_lucent = min(t_lucent, time.perf_counter() - t0)

    ours_rate, lucent_rate = k / t_ours, lk / t_lucent
    dev_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    print(
        f"model resnet18 (random), layer {args.layer} ({n} channels), {args.steps} steps, {args.size} px, {dev_name}"
    )
    print(f"{'':12s} {'units':>6s} {'seconds':>9s} {'units/s':>9s}")
    print(f"{'neuroprint':12s} {k:6d} {t_ours:9.2f} {ours_rate:9.3f}   (one batch, {args.precision})")
    print(f"{'lucent':12s} {lk:6d} {t_lucent:9.2f} {lucent_rate:9.3f}   (loop over units)")
    print(
        f"speed-up {ours_rate / lucent_rate:.1f}x; objective rose on {int((ours.objective > ours.initial).sum())}/{k} units"
    )
    print(
        json.dumps(
            {
                "bench": "visualize",
                "device": dev_name,
                "layer": args.layer,
                "steps": args.steps,
                "size": args.size,
                "units": k,
                "lucent_units": lk,
                "repeat": args.repeat,
                "precision": args.precision,
                "ours_units_per_s": round(ours_rate, 4),
                "lucent_units_per_s": round(lucent_rate, 4),
                "speedup": round(ours_rate / lucent_rate, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
