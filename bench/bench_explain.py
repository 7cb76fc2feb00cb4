"""neuroprint.explain vs captum 0.9: units x images per second, same model, same inputs, from one run.

captum explains one target per call (the way dnnbrain and captum users loop over units); neuroprint
explains every unit of every image in batched forwards with one backward per chunk, and occlusion
reads every channel from one set of occluded forwards. Each row also reports the max abs difference
between the two outputs (they compute the same numbers).

Model: random-init timm resnet18 (zero_init_last=False), fp32, eval. Rows:
  saliency    --units neurons (channel c at the centre) of layer3   vs captum NeuronGradient per neuron
  guided      --units logits                                         vs captum GuidedBackprop per target
  smoothgrad  --units logits, --samples noisy copies                 vs captum NoiseTunnel(Saliency) per target
  occlusion   every channel of layer3 (mean), window/stride below    vs captum Occlusion per channel, timed on
              --captum-occlusion-units channels (its cost is linear in units, so its rate is per unit)

Times are the best of --repeat alternating runs (ours, captum, ours, ...), so a burst of outside load
on a shared machine does not decide the ratio. The difference column is 0 up to fp32 rounding, except
that a batch of another size may round a pre-activation across a ReLU or max-pool gate and move a
gradient by more (seen on 48x48 inputs; tests/test_explain.py compares gradients in float64).

Run: python bench/bench_explain.py [--device cpu|cuda] [--size 112] [--images 4] [--units 16]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import timm
import torch

from neuroprint.explain import GuidedBackprop, Occlusion, Saliency, SmoothGrad, Unit, smoothgrad_noise


def _timed(fn, sync, repeat: int = 1):
    """(output, best wall time over ``repeat`` runs): the minimum is the least disturbed run on a shared box."""
    best, out = float("inf"), None
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return out, best


def _pair(ours, theirs, sync, repeat: int):
    """Time both alternately (ours, theirs, ours, ...) so a burst of outside load hits both alike."""
    t_ours = t_theirs = float("inf")
    out_ours = out_theirs = None
    for _ in range(repeat):
        out_ours, t = _timed(ours, sync)
        t_ours = min(t_ours, t)
        out_theirs, t = _timed(theirs, sync)
        t_theirs = min(t_theirs, t)
    return out_ours, t_ours, out_theirs, t_theirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=112, help="input side")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--units", type=int, default=16)
    ap.add_argument("--samples", type=int, default=8, help="SmoothGrad noisy copies")
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--captum-occlusion-units", type=int, default=2)
    ap.add_argument("--max-rows", type=int, default=64)
    ap.add_argument(
        "--backward",
        choices=["auto", "shared", "copies"],
        default="auto",
        help="neuroprint's gradient strategy for many units of one input (see neuroprint.explain.Saliency)",
    )
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs per method; the best time counts")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from captum.attr import GuidedBackprop as CGuided
    from captum.attr import NeuronGradient, NoiseTunnel
    from captum.attr import Occlusion as COcclusion
    from captum.attr import Saliency as CSaliency

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    net = timm.create_model("resnet18", zero_init_last=False).eval().to(dev)
    for p in net.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.images, 3, args.size, args.size, generator=g).to(dev)
    n, k = args.images, args.units
    rows = []

    def row(method, ours_s, theirs_s, units_ours, units_theirs, diff):
        rows.append(
            {
                "method": method,
                "neuroprint_units_images_per_s": units_ours * n / ours_s,
                "captum_units_images_per_s": units_theirs * n / theirs_s,
                "ratio": (units_ours * n / ours_s) / (units_theirs * n / theirs_s),
                "max_abs_diff": diff,
                "neuroprint_s": ours_s,
                "captum_s": theirs_s,
            }
        )

    # saliency: neurons of layer3 at the centre of the map
    h = args.size // 16
    chans = list(range(0, 256, max(1, 256 // k)))[:k]
    units = [Unit(c, (h // 2, h // 2)) for c in chans]
    sal = Saliency(net, "layer3", max_rows=args.max_rows, backward=args.backward)
    sal.attribute(x[:1], units[:1])  # warm-up (and the layer-shape probe)
    ng = NeuronGradient(net, net.layer3)
    ours, t_ours, theirs, t_theirs = _pair(
        lambda: sal.attribute(x, units),
        lambda: torch.stack([ng.attribute(x, neuron_selector=(c, h // 2, h // 2)) for c in chans], 1),
        sync,
        args.repeat,
    )
    row("saliency (layer3 neurons)", t_ours, t_theirs, k, k, (ours - theirs).abs().max().item())

    # guided backprop on logits
    targets = list(range(0, 1000, 1000 // k))[:k]
    gb = GuidedBackprop(net, "fc", max_rows=args.max_rows, backward=args.backward)
    cg = CGuided(net)
    ours, t_ours, theirs, t_theirs = _pair(
        lambda: gb.attribute(x, targets),
        lambda: torch.stack([cg.attribute(x, target=c) for c in targets], 1),
        sync,
        args.repeat,
    )
    row("guided backprop (logits)", t_ours, t_theirs, k, k, (ours - theirs).abs().max().item())

    # SmoothGrad on logits; captum draws its own noise, so the difference is reported on identical noise
    sg = SmoothGrad(net, "fc", max_rows=args.max_rows, backward=args.backward)
    noise = smoothgrad_noise(x, args.samples, 0.1, seed=0)
    nt = NoiseTunnel(CSaliency(net))
    stdev = 0.1 * (x.max() - x.min()).item()
    _, t_ours, _, t_theirs = _pair(
        lambda: sg.attribute(x, targets, noise=noise),
        lambda: [
            nt.attribute(x, nt_type="smoothgrad", nt_samples=args.samples, stdevs=stdev, target=c, abs=False)
            for c in targets
        ],
        sync,
        args.repeat,
    )
    torch.manual_seed(3)
    ref = nt.attribute(
        x[:1], nt_type="smoothgrad", nt_samples=args.samples, stdevs=stdev, target=targets[0], abs=False
    )
    torch.manual_seed(3)
    same = torch.normal(0, torch.tensor(stdev, device=dev).repeat((args.samples, *x.shape[1:])))
    mine = sg.attribute(x[:1], targets[:1], noise=same[None])[:, 0]
    row(
        f"smoothgrad (logits, {args.samples} samples)",
        t_ours,
        t_theirs,
        k,
        k,
        (mine - ref).abs().max().item(),
    )

    # occlusion: every channel of layer3 from one set of forwards
    occ = Occlusion(net, "layer3", max_rows=args.max_rows)
    res, t_ours = _timed(
        lambda: occ.attribute(x, None, window=args.window, stride=args.stride), sync, args.repeat
    )
    store = []
    hook = net.layer3.register_forward_hook(lambda _m, _i, o: store.append(o))

    def layer_mean(z):
        store.clear()
        net(z)
        return store[0].mean((2, 3))

    co = COcclusion(layer_mean)
    few = list(range(args.captum_occlusion_units))
    win = {"sliding_window_shapes": (3, args.window, args.window), "strides": (3, args.stride, args.stride)}
    theirs, t_theirs = _timed(
        lambda: torch.stack(
            [
                co.attribute(x, target=c, baselines=0.0, perturbations_per_eval=args.max_rows, **win)
                for c in few
            ],
            1,
        ),
        sync,
        1,  # minutes per run at full size; its rate per unit is what counts
    )
    hook.remove()
    diff = (res.maps[:, few] - theirs[:, :, 0]).abs().max().item()
    row(
        f"occlusion (layer3, all {res.maps.shape[1]} channels)",
        t_ours,
        t_theirs,
        res.maps.shape[1],
        len(few),
        diff,
    )

    print(
        f"# device={dev} torch={torch.__version__} threads={torch.get_num_threads()} size={args.size} "
        f"images={n} units={k} max_rows={args.max_rows} backward={args.backward} repeat={args.repeat} "
        "(best of alternating runs)"
    )
    print("| method | neuroprint units*img/s | captum units*img/s | ratio | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['method']} | {r['neuroprint_units_images_per_s']:.2f} | {r['captum_units_images_per_s']:.2f} "
            f"| {r['ratio']:.2f}x | {r['max_abs_diff']:.1e} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
