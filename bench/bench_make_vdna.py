"""make_vdna throughput (images/s): neuroprint vs vdna 0.1.1, same images, same weights, same ranges.

For every extractor asked for, in one run:

1. fixtures: N deterministic images (mixed sizes, JPEG and PNG) unless --images is given; vdna's own
   network built with random init, its state dict saved to a file; one activation_ranges.json (vdna's
   layout) measured by neuroprint (distribution "activation-ranges") on the first 8 images.
2. timed runs, each in its own subprocess (cold call = first call of the process, model build included;
   then warm calls):
   - neuroprint: ``neuroprint.VDNAProcessor().make_vdna(folder, ..., weights=<ckpt>, ranges=<json>)``
   - vdna (a):   ``vdna.VDNAProcessor().make_vdna(source=folder, ...)`` as a user runs it (vdna wraps its
                 extractor in torch.compile), with its Hub / torch-hub downloads monkeypatched to hand back
                 the fixture files
   - vdna (b):   the same with TORCHDYNAMO_DISABLE=1, to isolate steady-state work
3. the histograms of neuroprint and vdna are compared (total counts, counts in a different bin, EMD).
4. a breakdown of where time goes, on one batch: decode+preprocess (per image, one thread), forward,
   histogram of all layers, plus a "histogram only" row on one representative activation tensor
   (vdna's normalisation + ``histogram_per_channel`` vs ``neuroprint.kernels.histogram.neuron_histogram``
   on the very same memory) and the top torch ops of neuroprint's CPU histogram (torch.profiler).

    python bench/bench_make_vdna.py                                  # all three extractors, CPU
    python bench/bench_make_vdna.py --extractor mugs_vit_base --num-images 256
    python bench/bench_make_vdna.py --device cuda --dtype bf16 --compile --batch-size 64

Not yet exercised on a GPU (written and run on a 2-core CPU box). On CPU, vdna's dino_resnet50 is
patched to run at all (its forward calls .cuda()); the output says so.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ALL_EXTRACTORS = ("mugs_vit_base", "dino_resnet50", "vgg16")
# Images per extractor when --num-images is not given: ~10 min for all three on 2 CPU cores. The
# generated set has max(these) = 128 images; the heavy extractors use its first 64 / 32.
DEFAULT_IMAGES = {"mugs_vit_base": 64, "dino_resnet50": 128, "vgg16": 32}
BINS = 1000
DISTRIBUTION = f"histogram-{BINS}"
RANGES_IMAGES = 8

# vdna modules that import the downloaders under their own names (as in tests/test_extractors.py).
VDNA_HUB_MODULES = (
    "mugs_vit",
    "dino_vit",
    "clip",
    "dino_resnet50",
    "random_resnet50",
    "vgg16",
    "inception_pytorch",
)
VDNA_URL_MODULES = ("dino_vit", "dino_resnet50", "inception_pytorch")

DINO_RESNET50_URL = "https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--extractor",
        nargs="+",
        default=["all"],
        help=f"extractors: any of {', '.join(ALL_EXTRACTORS)} or 'all' (default all)",
    )
    p.add_argument(
        "--num-images",
        type=int,
        default=None,
        help="images per extractor (default: "
        + ", ".join(f"{k} {v}" for k, v in DEFAULT_IMAGES.items())
        + ")",
    )
    p.add_argument(
        "--images",
        default=None,
        help="use the images of this folder instead of generated ones (the first --num-images in sorted order)",
    )
    p.add_argument(
        "--batch-size", type=int, default=32, help="batch size of both implementations (default 32)"
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=2,
        help="decode workers of both implementations: vdna's DataLoader processes, neuroprint's threads (default 2)",
    )
    p.add_argument(
        "--vdna-extra-workers",
        type=int,
        nargs="*",
        default=[],
        help="also run vdna (compile on) with these num_workers, e.g. 12 (vdna's default)",
    )
    p.add_argument(
        "--warm-runs",
        type=int,
        default=1,
        help="warm calls after the cold one in each timed process (default 1)",
    )
    p.add_argument(
        "--skip-vdna", action="store_true", help="time neuroprint only (no comparison, no vdna breakdown)"
    )
    p.add_argument(
        "--skip-vdna-compile", action="store_true", help="skip vdna run (a), the one with torch.compile on"
    )
    p.add_argument("--skip-breakdown", action="store_true", help="skip the per-stage breakdown")
    p.add_argument(
        "--profile-repeats",
        type=int,
        default=2,
        help="breakdown: timed repeats of the histogram steps, median reported (forward: 1 after a warm-up; histogram-only row: 2 more)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        choices=["cpu", "cuda"],
        help="device of both implementations (default cpu)",
    )
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16"],
        help="neuroprint's extractor dtype (vdna is always fp32); bf16 on CPU is fast where the CPU has "
        "AVX512-BF16 or AMX (oneDNN), slow elsewhere",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="neuroprint: torch.compile the extractor (cuda only; off by default on CPU)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the images and of the random weights")
    p.add_argument(
        "--workdir",
        default=None,
        help="folder for images, weights and logs (default: a temp folder, removed at the end)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp workdir")
    p.add_argument(
        "--worker-timeout", type=int, default=1200, help="seconds before a timed subprocess is killed"
    )
    p.add_argument("--out", default=None, help="write all results as JSON to this path")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.extractor == ["all"]:
        args.extractor = list(ALL_EXTRACTORS)
    if args.compile and args.device != "cuda":
        p.error("--compile is for --device cuda")
    return args


# ------------------------------------------------------------------------------------------- fixtures


def make_images(folder: Path, n: int, seed: int) -> list[Path]:
    """Smooth synthetic photos (gradients, waves, boxes, mild noise): sizes cycle, JPEG q90 and PNG alternate."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(256, 320), (320, 256), (240, 320), (300, 400)]  # (H, W)
    paths = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        rng = np.random.default_rng([seed, i])
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        yy /= h
        xx /= w
        img = np.empty((h, w, 3), np.float32)
        for c in range(3):
            a, b, f1, f2, ph = rng.uniform([-1, -1, 1, 1, 0], [1, 1, 6, 6, 6.28])
            img[:, :, c] = (
                0.5 + 0.25 * (a * xx + b * yy) + 0.2 * np.sin(f1 * 6.28 * xx + ph) * np.cos(f2 * 6.28 * yy)
            )
        for _ in range(4):
            y0, x0 = rng.integers(0, h - 20), rng.integers(0, w - 20)
            y1, x1 = y0 + rng.integers(10, h // 2), x0 + rng.integers(10, w // 2)
            img[y0:y1, x0:x1] = rng.uniform(0, 1, 3)
        img = img * 255 + rng.normal(0, 6, img.shape).astype(np.float32)
        arr = np.clip(img, 0, 255).astype(np.uint8)
        if i % 2 == 0:
            path = folder / f"img_{i:05d}.jpg"
            Image.fromarray(arr).save(path, format="JPEG", quality=90)
        else:
            path = folder / f"img_{i:05d}.png"
            Image.fromarray(arr).save(path, format="PNG")
        paths.append(path)
    return paths


def list_images(folder: Path) -> list[Path]:
    exts = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def image_subset(paths: list[Path], n: int, folder: Path) -> Path:
    """A folder holding exactly the first n images (hard links, or copies across file systems)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for p in paths[:n]:
        dst = folder / p.name
        try:
            os.link(p, dst)
        except OSError:
            shutil.copyfile(p, dst)
    return folder


@contextlib.contextmanager
def _vdna_ranges_stub(tmp: Path):
    """vdna's constructors read activation ranges from the Hub; an empty file while we only build networks."""
    import vdna.networks  # noqa: F401  (imports every network module)

    empty = tmp / "empty_ranges.json"
    empty.write_text(json.dumps({"mins_per_neuron": {}, "maxs_per_neuron": {}}))
    saved = {}
    for m in VDNA_HUB_MODULES:
        mod = sys.modules[f"vdna.networks.{m}"]
        saved[m] = mod.hf_hub_download
        mod.hf_hub_download = lambda repo_id, filename, **_: str(empty)
    try:
        yield
    finally:
        for m, fn in saved.items():
            sys.modules[f"vdna.networks.{m}"].hf_hub_download = fn


def build_weights(name: str, workdir: Path, seed: int) -> dict:
    """vdna's own network with random init -> its state dict in a file both implementations load.

    Returns {"neuroprint": path, "vdna": {...what the patched vdna downloads hand back...}}.
    """
    import torch

    torch.manual_seed(seed)
    if name == "mugs_vit_base":
        from vdna.networks.mugs_vit import vit_base

        net = vit_base(num_relation_blocks=1)  # what MugsViTFeatExtractor("base") builds
        path = workdir / f"{name}_weights.pth"
        torch.save({"state_dict": net.state_dict()}, path)
        return {"neuroprint": str(path), "vdna": {"hub": {"Mugs/mugs_vit_base/weights.pth": str(path)}}}
    if name == "dino_resnet50":
        from vdna.networks.dino_resnet50 import Bottleneck, ResNetFeatureExtractor
        from vdna.utils.settings import ExtractionSettings

        with _vdna_ranges_stub(workdir):
            net = ResNetFeatureExtractor(
                Bottleneck, [3, 4, 6, 3], extraction_settings=ExtractionSettings(device="cpu")
            )
        path = workdir / f"{name}_weights.pth"
        torch.save(net.state_dict(), path)
        return {"neuroprint": str(path), "vdna": {"url": {DINO_RESNET50_URL: str(path)}}}
    if name == "vgg16":
        import torchvision

        # vdna's VGG16 wraps torchvision's vgg16 (it loads ImageNet weights into it); random init here.
        full = torchvision.models.vgg16(weights=None).state_dict()
        features = {k: v for k, v in full.items() if k.startswith("features.")}
        path = workdir / f"{name}_features.pth"
        torch.save(features, path)  # the classifier follows every tap: vdna gets zeros for it
        return {"neuroprint": str(path), "vdna": {"torchvision_vgg16": str(path)}}
    raise SystemExit(f"unsupported extractor {name!r}; supported: {', '.join(ALL_EXTRACTORS)}")


def measure_ranges(name: str, folder: Path, weights: str, out: Path) -> Path:
    """vdna-layout activation_ranges.json measured by neuroprint on the first images of the set."""
    import neuroprint
    from neuroprint.stats import profile as _processor

    paths = list_images(folder)[:RANGES_IMAGES]
    v = neuroprint.profile(
        [str(p) for p in paths],
        "activation-ranges",
        extractor=name,
        weights=weights,
        batch_size=RANGES_IMAGES,
        num_workers=0,
        device="cpu",
        progress=False,
    )["activation-ranges"]
    out.write_text(json.dumps(v.to_ranges(origin="bench").to_vdna_json()))
    _processor._CACHE.__init__()  # drop the extractor: the main process keeps no model
    return out


# ------------------------------------------------------------------------------------------ vdna patch


def patch_vdna(name: str, fx: dict, device: str) -> list[str]:
    """Make vdna's downloads hand back the fixture files; returns notes on what was changed."""
    import torch
    import vdna.networks  # noqa: F401

    notes = []
    ranges = fx["ranges"]
    hub = fx["vdna"].get("hub", {})
    urls = fx["vdna"].get("url", {})

    def fake_hub(repo_id, filename, **_kw):
        if filename.endswith("activation_ranges.json"):
            return ranges
        return hub[filename]

    def fake_url(url, *a, **k):
        return torch.load(urls[url], map_location="cpu")

    for m in VDNA_HUB_MODULES:
        sys.modules[f"vdna.networks.{m}"].hf_hub_download = fake_hub
    for m in VDNA_URL_MODULES:
        sys.modules[f"vdna.networks.{m}"].load_state_dict_from_url = fake_url
    torch.hub.load_state_dict_from_url = fake_url
    if "torchvision_vgg16" in fx["vdna"]:
        import torchvision.models._api as tv_api

        path = fx["vdna"]["torchvision_vgg16"]

        def fake_tv(url, *a, **k):
            sd = torch.load(path, map_location="cpu")
            for i, shape in ((0, (4096, 25088)), (3, (4096, 4096)), (6, (1000, 4096))):
                sd[f"classifier.{i}.weight"] = torch.zeros(shape)
                sd[f"classifier.{i}.bias"] = torch.zeros(shape[0])
            return sd

        tv_api.load_state_dict_from_url = fake_tv
    if name == "dino_resnet50" and device == "cpu":
        # vdna's ResNet forward() moves every batch with .cuda(): it cannot run on a CPU-only machine.
        from vdna.networks.dino_resnet50 import ResNetFeatureExtractor

        ResNetFeatureExtractor.get_features = lambda self, batch: self.forward_backbone(batch)[1]
        notes.append(
            "vdna dino_resnet50 forward() calls .cuda() on every batch; patched get_features to forward_backbone() so it runs on CPU"
        )
    return notes


# -------------------------------------------------------------------------------------------- workers


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _dtype(name: str):
    import torch

    return torch.bfloat16 if name == "bf16" else torch.float32


def worker_run(spec: dict) -> dict:
    """One process: a cold make_vdna call, then warm ones. Saves the last histograms to an .npz."""
    import torch

    name, device, folder = spec["extractor"], spec["device"], spec["folder"]
    notes = []
    builds = []
    if spec["impl"] == "vdna":
        notes += patch_vdna(name, spec["fixtures"], device)
        import vdna
        import vdna.vdna_processor as vp

        real_get = vp.get_feature_extractor

        def timed_get(*a, **k):
            t0 = time.perf_counter()
            try:
                return real_get(*a, **k)
            finally:
                builds.append(time.perf_counter() - t0)

        vp.get_feature_extractor = timed_get
        proc = vdna.VDNAProcessor()
        vdev = "cuda:0" if device == "cuda" else "cpu"

        def call():
            return proc.make_vdna(
                source=folder,
                feat_extractor_name=name,
                distribution_name=DISTRIBUTION,
                device=vdev,
                batch_size=spec["batch_size"],
                num_workers=spec["num_workers"],
                verbose=False,
            )
    else:
        import neuroprint

        proc = neuroprint.VDNAProcessor()

        def call():
            return proc.make_vdna(
                folder,
                feat_extractor_name=name,
                distribution_name=DISTRIBUTION,
                device=device,
                batch_size=spec["batch_size"],
                num_workers=spec["num_workers"],
                weights=spec["fixtures"]["neuroprint"],
                ranges=spec["fixtures"]["ranges"],
                verbose=False,
                dtype=_dtype(spec["dtype"]),
                compile=spec["compile"] if device == "cuda" else None,
            )

    times, build_per_call = [], []
    v = None
    for _ in range(1 + spec["warm_runs"]):
        n_builds = len(builds)
        t0 = time.perf_counter()
        v = call()
        _sync(device)
        times.append(time.perf_counter() - t0)
        build_per_call.append(sum(builds[n_builds:]))
    np.savez(spec["npz"], **{k: t.detach().cpu().numpy().astype(np.int64) for k, t in v.data.items()})
    out = {
        "impl": spec["impl"],
        "label": spec["label"],
        "times_s": times,
        "build_s": build_per_call,
        "num_images": int(v.num_images),
        "torch_threads": torch.get_num_threads(),
        "dynamo_disabled": os.environ.get("TORCHDYNAMO_DISABLE") == "1",
        "notes": notes,
    }
    if spec["impl"] == "vdna":
        from torch._dynamo.utils import counters

        out["dynamo_frames"] = {k: dict(v) for k, v in counters.items() if k in ("frames", "stats")}
        out["vdna_extractor_type"] = type(proc.feat_extractor).__name__
    return out


def _median_time(fn, repeats: int, device: str) -> tuple[float, object]:
    times, res = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), res


def _np_hist_ops(x, mean, std, bins: int) -> dict:
    """Top torch ops of one neuron_histogram call by self CPU time (torch.profiler): follows the code as it is."""
    from torch.profiler import ProfilerActivity, profile

    from neuroprint.kernels.histogram import neuron_histogram

    neuron_histogram(x, mean, std, bins)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        neuron_histogram(x, mean, std, bins)
    rows = sorted(
        ((e.key, e.self_cpu_time_total / 1e6, int(e.count)) for e in prof.key_averages()), key=lambda r: -r[1]
    )
    return {"total_self_s": sum(r[1] for r in rows), "top": rows[:8]}


def worker_profile(spec: dict) -> dict:
    """Where time goes, on the first batch: decode, forward, histogram; both implementations."""
    import torch

    import neuroprint
    from neuroprint.io.decode import ImageLoader
    from neuroprint.kernels.histogram import neuron_histogram, norm_params
    from neuroprint.stats.ranges import load_ranges

    name, device, bs = spec["extractor"], spec["device"], spec["batch_size"]
    paths = [str(p) for p in list_images(Path(spec["folder"]))][:bs]
    dev = torch.device(device)
    res: dict = {"batch": len(paths)}

    ex = neuroprint.create_extractor(
        name, weights=spec["fixtures"]["neuroprint"], device=dev, dtype=_dtype(spec["dtype"])
    )
    ranges = load_ranges(spec["fixtures"]["ranges"]).subset(ex.layers)
    params = {}
    for layer in ex.layers:
        m, s = norm_params(ranges.mins[layer], ranges.maxs[layer])
        params[layer] = (m.to(dev), s.to(dev))
    loader = ImageLoader(neuroprint.open_source(paths), ex.recipe, batch_size=bs, num_workers=0)

    # decode + preprocess, one thread, per image
    t0 = time.perf_counter()
    np_pix = [loader.load(it)[0] for it in loader.items]
    res["np_decode_s_per_img"] = (time.perf_counter() - t0) / len(paths)
    pixels = torch.stack(np_pix).to(dev)

    with torch.inference_mode():
        ex(pixels[:2])
        _sync(device)
        res["np_forward_s"], feats = _median_time(lambda: ex(pixels), 1, device)

        def np_hist(acts=feats):
            return {layer: neuron_histogram(acts[layer], *params[layer], BINS) for layer in ex.layers}

        res["np_hist_s"], np_counts = _median_time(np_hist, spec["profile_repeats"], device)
    res["activations_per_img"] = sum(int(t.numel()) for t in feats.values()) / len(paths)
    del feats

    if not spec["skip_vdna"]:
        notes = patch_vdna(name, spec["fixtures"], device)
        from vdna.networks import get_feature_extractor
        from vdna.utils.settings import DataSettings, ExtractionSettings
        from vdna.utils.stats import histogram_per_channel

        vdev = "cuda:0" if device == "cuda" else "cpu"
        vnet = get_feature_extractor(
            name, ExtractionSettings(device=vdev, batch_size=bs, num_workers=0, verbose=False)
        )
        dataset = vnet.get_dataloader(DataSettings(source=paths, num_images=-1, shuffle_files=False)).dataset
        t0 = time.perf_counter()
        v_pix = [dataset[i] for i in range(len(dataset))]
        res["vdna_decode_s_per_img"] = (time.perf_counter() - t0) / len(paths)
        res["pixels_max_abs_diff"] = float((torch.stack(v_pix) - torch.stack(np_pix)).abs().max())
        vpixels = torch.stack(v_pix).to(vdev)

        def vdna_hist_layer(f, layer):
            # vdna's get_data_features: normalise (float64, via its double mean/std), then histogram
            f = (f - vnet.norm_means_per_layer[layer]) / vnet.norm_stds_per_layer[layer]
            return histogram_per_channel(f, hist_nb_bins=BINS, hist_range=[-1.0, 1.0])

        with torch.no_grad():
            vnet.get_batch_features(vpixels[:2], vdev)
            _sync(device)
            res["vdna_forward_s"], vfeats = _median_time(
                lambda: vnet.get_batch_features(vpixels, vdev), 1, device
            )

            def v_hist():
                return {layer: vdna_hist_layer(vfeats[layer], layer) for layer in vfeats}

            res["vdna_hist_s"], v_counts = _median_time(v_hist, spec["profile_repeats"], device)
        # same pixels, two networks: bins may differ by float rounding of the activations, totals may not
        diff = sum(int((np_counts[k].cpu() - v_counts[k].cpu()).abs().sum()) for k in np_counts) // 2
        total = sum(int(v_counts[k].sum()) for k in v_counts)
        res["batch_hist_moved_fraction"] = diff / max(total, 1)
        res["notes"] = notes

        # histogram only: one representative layer, the very same memory for both
        layers = list(vfeats)
        layer = spec.get("hist_layer") or layers[len(layers) // 2]
        tv = vfeats[layer]  # vdna's own tensor: [B, C, P, 1] (ViT, a permuted view) or [B, C, H, W]
        tn = tv.flatten(2).transpose(1, 2)  # neuroprint's [B, P, C] layout of the same memory
        res["hist_layer"] = layer
        res["hist_layer_shape_vdna"] = list(tv.shape)
        res["hist_layer_elements"] = int(tv.numel())
        r = spec["profile_repeats"] + 2
        res["hist_only_vdna_s"], hv = _median_time(lambda: vdna_hist_layer(tv, layer), r, device)
        res["hist_only_np_s"], hn = _median_time(
            lambda: neuron_histogram(tn, *params[layer], BINS), r, device
        )
        res["hist_only_identical"] = bool(torch.equal(hv.cpu().long(), hn.cpu().long()))
        tc = tn.contiguous()
        res["hist_only_np_contiguous_s"], _ = _median_time(
            lambda: neuron_histogram(tc, *params[layer], BINS), r, device
        )
        if device == "cpu":
            res["np_hist_ops"] = _np_hist_ops(tn, *params[layer], BINS)
        del vfeats
    return res


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    if spec["kind"] == "run":
        out = worker_run(spec)
    else:
        out = worker_profile(spec)
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------------------- orchestrator


def run_worker(spec: dict, workdir: Path, tag: str, env_extra: dict, timeout: int) -> dict | None:
    spec_path = workdir / f"{tag}.spec.json"
    spec["result"] = str(workdir / f"{tag}.result.json")
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    env.pop("TORCHDYNAMO_DISABLE", None)
    env.update(env_extra)
    env.setdefault("HF_HUB_OFFLINE", "1")
    log = workdir / f"{tag}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--_worker", str(spec_path)],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    wall = time.perf_counter() - t0
    if rc != 0 or not Path(spec["result"]).exists():
        tail = log.read_text()[-3000:]
        print(f"  !! {tag} failed (rc={rc}); log tail:\n{tail}", flush=True)
        return None
    out = json.loads(Path(spec["result"]).read_text())
    out["process_wall_s"] = wall
    return out


def compare_hists(a_path: str, b_path: str) -> dict:
    a, b = np.load(a_path), np.load(b_path)
    if sorted(a.files) != sorted(b.files):
        return {"error": f"layers differ: {sorted(a.files)} vs {sorted(b.files)}"}
    total_a = total_b = moved = 0
    max_abs = 0
    emds = []
    worst = ("", 0.0)
    for k in a.files:
        x, y = a[k].astype(np.int64), b[k].astype(np.int64)
        if x.shape != y.shape:
            return {"error": f"layer {k}: shapes {x.shape} vs {y.shape}"}
        total_a += int(x.sum())
        total_b += int(y.sum())
        d = np.abs(x - y)
        moved += int(d.sum()) // 2
        max_abs = max(max_abs, int(d.max()))
        frac = d.sum() / 2 / max(int(y.sum()), 1)
        if frac > worst[1]:
            worst = (k, float(frac))
        xn = x / x.sum(axis=1, keepdims=True)
        yn = y / y.sum(axis=1, keepdims=True)
        emds.append(np.abs(np.cumsum(xn - yn, axis=1)).sum(axis=1))
    return {
        "total_a": total_a,
        "total_b": total_b,
        "total_count_difference": total_a - total_b,
        "counts_in_other_bin": moved,
        "moved_fraction": moved / max(total_b, 1),
        "max_abs_bin_difference": max_abs,
        "identical": moved == 0 and total_a == total_b,
        "mean_emd_bins": float(np.concatenate(emds).mean()),
        "worst_layer": worst[0],
        "worst_layer_moved_fraction": worst[1],
    }


def _fmt(x, spec=".2f", none="-"):
    return none if x is None else format(x, spec)


def summarize_run(r: dict | None, n: int) -> dict | None:
    if r is None:
        return None
    cold = r["times_s"][0]
    warm = r["times_s"][1:] or [cold]
    warm_s = statistics.median(warm)
    build_warm = statistics.median(r["build_s"][1:] or r["build_s"][:1])
    return {
        "cold_s": cold,
        "cold_img_s": n / cold,
        "warm_s": warm_s,
        "warm_img_s": n / warm_s,
        "build_in_warm_s": build_warm,
        "steady_img_s": n / max(warm_s - build_warm, 1e-9),
    }


def run_extractor(name: str, n: int, all_paths: list[Path], workdir: Path, args) -> dict:
    print(
        f"\n=== {name}: {n} images, batch {args.batch_size}, num_workers {args.num_workers}, device {args.device}",
        flush=True,
    )
    ex_dir = workdir / name
    ex_dir.mkdir(parents=True, exist_ok=True)
    folder = image_subset(all_paths, n, ex_dir / "images")
    t0 = time.perf_counter()
    fx = build_weights(name, ex_dir, args.seed)
    fx["ranges"] = str(measure_ranges(name, folder, fx["neuroprint"], ex_dir / "activation_ranges.json"))
    print(
        f"  fixtures (weights, ranges from {RANGES_IMAGES} images): {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    base = {
        "kind": "run",
        "extractor": name,
        "folder": str(folder),
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "device": args.device,
        "dtype": args.dtype,
        "compile": args.compile,
        "warm_runs": args.warm_runs,
        "fixtures": fx,
    }
    runs = []  # (key, label, spec, env)
    np_label = "neuroprint" + (
        f" ({args.dtype}{', compiled' if args.compile else ''})" if args.device == "cuda" else ""
    )
    runs.append(("neuroprint", np_label, dict(base, impl="neuroprint"), {}))
    if not args.skip_vdna:
        if not args.skip_vdna_compile:
            runs.append(("vdna", "vdna 0.1.1 (a) default, torch.compile on", dict(base, impl="vdna"), {}))
        runs.append(
            (
                "vdna_nocompile",
                "vdna 0.1.1 (b) TORCHDYNAMO_DISABLE=1",
                dict(base, impl="vdna"),
                {"TORCHDYNAMO_DISABLE": "1"},
            )
        )
        for w in args.vdna_extra_workers:
            runs.append(
                (f"vdna_w{w}", f"vdna 0.1.1 (a) num_workers={w}", dict(base, impl="vdna", num_workers=w), {})
            )

    results: dict = {"num_images": n, "runs": {}, "summary": {}}
    for key, label, spec, env in runs:
        spec = dict(spec, label=label, npz=str(ex_dir / f"{key}.npz"))
        r = run_worker(spec, ex_dir, key, env, args.worker_timeout)
        if r is not None:
            r["npz"] = spec["npz"]
            if r["num_images"] != n:
                print(f"  !! {key} used {r['num_images']} images, expected {n}")
        results["runs"][key] = r
        results["summary"][key] = summarize_run(r, n)
        s = results["summary"][key]
        if s:
            print(
                f"  {label:<44} cold {s['cold_s']:7.1f} s   warm {s['warm_s']:7.1f} s   ({s['warm_img_s']:.2f} img/s)",
                flush=True,
            )

    # histogram agreement
    agree = {}
    np_run = results["runs"].get("neuroprint")
    for key in ("vdna", "vdna_nocompile"):
        other = results["runs"].get(key)
        if np_run and other:
            agree[f"neuroprint_vs_{key}"] = compare_hists(np_run["npz"], other["npz"])
    if results["runs"].get("vdna") and results["runs"].get("vdna_nocompile"):
        agree["vdna_vs_vdna_nocompile"] = compare_hists(
            results["runs"]["vdna"]["npz"], results["runs"]["vdna_nocompile"]["npz"]
        )
    results["agreement"] = agree

    if not args.skip_breakdown:
        spec = {
            "kind": "profile",
            "extractor": name,
            "folder": str(folder),
            "batch_size": args.batch_size,
            "device": args.device,
            "dtype": args.dtype,
            "skip_vdna": args.skip_vdna,
            "profile_repeats": args.profile_repeats,
            "fixtures": fx,
        }
        results["breakdown"] = run_worker(
            spec, ex_dir, "profile", {"TORCHDYNAMO_DISABLE": "1"}, args.worker_timeout
        )
    print_extractor(name, results, args)
    return results


def print_extractor(name: str, res: dict, args) -> None:
    n = res["num_images"]
    S = res["summary"]
    print(
        f"\n--- {name}: make_vdna, {n} images, {DISTRIBUTION}, batch {args.batch_size}, device {args.device}"
    )
    hdr = f"{'run':<46} {'cold s':>8} {'cold img/s':>10} {'warm s':>8} {'warm img/s':>10} {'build in warm s':>15} {'steady img/s':>12}"
    print(hdr)
    for key, r in res["runs"].items():
        s = S.get(key)
        if not s:
            print(f"{key:<46} FAILED")
            continue
        print(
            f"{r['label']:<46} {s['cold_s']:>8.1f} {s['cold_img_s']:>10.2f} {s['warm_s']:>8.1f} {s['warm_img_s']:>10.2f} "
            f"{s['build_in_warm_s']:>15.1f} {s['steady_img_s']:>12.2f}"
        )
    np_s = S.get("neuroprint")
    for key in ("vdna", "vdna_nocompile"):
        v = S.get(key)
        if np_s and v:
            print(
                f"ratio neuroprint/{key} images/s: warm {np_s['warm_img_s'] / v['warm_img_s']:.2f}x, "
                f"cold {np_s['cold_img_s'] / v['cold_img_s']:.2f}x, steady (vdna's per-call rebuild excluded) "
                f"{np_s['steady_img_s'] / v['steady_img_s']:.2f}x"
            )
    for key, r in res["runs"].items():
        if r and r.get("impl") == "vdna":
            frames = r.get("dynamo_frames", {}).get("frames", {})
            print(
                f"  {key}: extractor object {r.get('vdna_extractor_type')}, dynamo frames {frames or 'none'}"
            )
        for note in (r or {}).get("notes", []):
            print(f"  note ({key}): {note}")
    for key, a in res.get("agreement", {}).items():
        if "error" in a:
            print(f"histograms {key}: {a['error']}")
            continue
        print(
            f"histograms {key}: total count difference {a['total_count_difference']} "
            f"(of {a['total_b']}), counts in another bin {a['counts_in_other_bin']} ({a['moved_fraction']:.2e}), "
            f"max |bin diff| {a['max_abs_bin_difference']}, mean EMD {a['mean_emd_bins']:.2e} bins, identical: {a['identical']}"
        )
    b = res.get("breakdown")
    if not b:
        return
    bsz = b["batch"]
    print(
        f"\nbreakdown on one batch of {bsz} images (ms per image; decode single-threaded; "
        f"{b['activations_per_img'] / 1e6:.1f} M activations per image):"
    )
    print(f"{'stage':<44} {'neuroprint':>11} {'vdna':>11} {'vdna/neuroprint':>16}")
    rows = [
        ("decode + preprocess (1 thread)", b["np_decode_s_per_img"], b.get("vdna_decode_s_per_img")),
        (
            "forward",
            b["np_forward_s"] / bsz,
            b.get("vdna_forward_s", 0) / bsz if "vdna_forward_s" in b else None,
        ),
        (
            "histogram, all layers (normalise + bin)",
            b["np_hist_s"] / bsz,
            b.get("vdna_hist_s", 0) / bsz if "vdna_hist_s" in b else None,
        ),
    ]
    tot_n = sum(r[1] for r in rows)
    tot_v = sum(r[2] for r in rows) if all(r[2] is not None for r in rows) else None
    rows.append(("sum (serial CPU work)", tot_n, tot_v))
    for label, a, v in rows:
        ratio = f"{v / a:.2f}x" if v else "-"
        print(
            f"{label:<44} {a * 1e3:>11.1f} {_fmt(v * 1e3 if v is not None else None, '.1f'):>11} {ratio:>16}"
        )
    print(
        f"  -> the sum predicts {1 / tot_n:.2f} img/s for neuroprint"
        + (f", {1 / tot_v:.2f} img/s for vdna" if tot_v else "")
        + f" (measured warm: {_fmt(np_s and np_s['warm_img_s'])}"
        + (f", {_fmt(S['vdna_nocompile']['warm_img_s'])}" if S.get("vdna_nocompile") else "")
        + ")"
    )
    if "hist_only_np_s" in b:
        hv, hn = b["hist_only_vdna_s"], b["hist_only_np_s"]
        print(
            f"histogram only, layer {b['hist_layer']} {b['hist_layer_shape_vdna']} ({b['hist_layer_elements'] / 1e6:.1f} M values, same memory): "
            f"vdna {hv * 1e3:.1f} ms, neuroprint {hn * 1e3:.1f} ms (contiguous [B,P,C] input: {b['hist_only_np_contiguous_s'] * 1e3:.1f} ms), "
            f"ratio vdna/neuroprint {hv / hn:.2f}x, identical counts: {b['hist_only_identical']}"
        )
        print(
            f"  ns per value: vdna {hv / b['hist_layer_elements'] * 1e9:.1f}, neuroprint {hn / b['hist_layer_elements'] * 1e9:.1f}"
        )
    if "np_hist_ops" in b:
        ops = b["np_hist_ops"]
        tot = ops["total_self_s"]
        print(
            f"  neuroprint CPU histogram on that layer, top ops by self CPU time (torch.profiler, {tot * 1e3:.1f} ms in all):"
        )
        for key, sec, count in ops["top"]:
            print(f"    {key:<44} {sec * 1e3:8.1f} ms  {100 * sec / tot:5.1f}%  x{count}")
    if "pixels_max_abs_diff" in b:
        print(
            f"  preprocessed pixels, neuroprint vs vdna: max |diff| {b['pixels_max_abs_diff']:.3g}; "
            f"batch histograms (each its own network's activations): {b['batch_hist_moved_fraction']:.2e} of counts in another bin"
        )


def source_digest() -> str:
    """sha256 (12 hex) of neuroprint's Python sources as imported: tells whether the code changed mid-run."""
    import hashlib

    import neuroprint
    import neuroprint.kernels

    h = hashlib.sha256()
    for pkg in (neuroprint, neuroprint.kernels):
        root = Path(pkg.__file__).parent
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def machine_info() -> dict:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import torch

    return {
        "cpu": model,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._worker:
        return worker_main(args._worker)
    for name in args.extractor:
        if name not in ALL_EXTRACTORS:
            print(f"unsupported extractor {name!r}; supported: {', '.join(ALL_EXTRACTORS)}", file=sys.stderr)
            return 2
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda asked for but CUDA is not available", file=sys.stderr)
            return 2
    info = machine_info()
    print(
        f"machine: {info['cpu']} x{info['cpus']}, torch {info['torch']} ({info['torch_threads']} threads), "
        f"cuda {info['cuda']}, python {info['python']}, {info['date_utc']} UTC"
    )
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    digest_start = source_digest()
    print(f"neuroprint sources sha256: {digest_start}")
    tmp = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench_make_vdna_")) if tmp else Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    counts = {name: args.num_images or DEFAULT_IMAGES[name] for name in args.extractor}
    t0 = time.perf_counter()
    if args.images:
        all_paths = list_images(Path(args.images))
        if len(all_paths) < max(counts.values()):
            counts = {k: min(v, len(all_paths)) for k, v in counts.items()}
        print(f"images: {len(all_paths)} files from {args.images}")
    else:
        all_paths = make_images(workdir / "all_images", max(counts.values()), args.seed)
        print(
            f"images: {len(all_paths)} generated (sizes 256x320, 320x256, 240x320, 300x400; JPEG q90 / PNG "
            f"alternating) in {time.perf_counter() - t0:.1f} s"
        )
    results = {
        "machine": info,
        "args": {k: v for k, v in vars(args).items() if k != "_worker"},
        "extractors": {},
    }
    try:
        for name in args.extractor:
            results["extractors"][name] = run_extractor(name, counts[name], all_paths, workdir, args)
    finally:
        if tmp and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif tmp:
            print(f"workdir kept: {workdir}")

    print("\n=== summary (warm calls; images/s)")
    print(
        f"{'extractor':<16} {'images':>6} {'neuroprint':>11} {'vdna (a)':>10} {'vdna (b)':>10} {'np/vdna(a)':>11} {'np/vdna(b)':>11} "
        f"{'hist-only vdna/np':>17} {'hist agree':>22}"
    )
    for name, r in results["extractors"].items():
        S = r["summary"]
        npw = S.get("neuroprint") and S["neuroprint"]["warm_img_s"]
        va = S.get("vdna") and S["vdna"]["warm_img_s"]
        vb = S.get("vdna_nocompile") and S["vdna_nocompile"]["warm_img_s"]
        b = r.get("breakdown") or {}
        ho = f"{b['hist_only_vdna_s'] / b['hist_only_np_s']:.2f}x" if "hist_only_np_s" in b else "-"
        ag = r.get("agreement", {}).get("neuroprint_vs_vdna_nocompile") or r.get("agreement", {}).get(
            "neuroprint_vs_vdna"
        )
        ags = (
            f"d={ag['total_count_difference']} moved={ag['moved_fraction']:.1e}"
            if ag and "error" not in ag
            else "-"
        )
        print(
            f"{name:<16} {r['num_images']:>6} {_fmt(npw):>11} {_fmt(va):>10} {_fmt(vb):>10} "
            f"{(f'{npw / va:.2f}x' if npw and va else '-'):>11} {(f'{npw / vb:.2f}x' if npw and vb else '-'):>11} {ho:>17} {ags:>22}"
        )
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results["source_digest"] = [digest_start, source_digest()]
    if results["source_digest"][0] != results["source_digest"][1]:
        print(
            f"WARNING: neuroprint's sources changed during the run ({digest_start} -> {results['source_digest'][1]})"
        )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2, default=str)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
