"""FUNGI features: neuroprint.fungi vs fungivision 0.0.2 on one random-init timm ViT-S/16, from one run.

Both wrappers get the same model weights, projection matrix, heads, SimCLR negatives and seeds, so the
run also reports the per-block minimum cosine between the two feature sets (it must be >= 0.9999 in
fp32). Timed: extraction of --images images in batches of --batch (setup and construction are not).
Objectives: fungivision's defaults (KL, DINO 12 crops, SimCLR 4 patches at stride scale 6 = 49 views),
except the SimCLR negatives batch (--negatives images), which only changes setup time.

Run: python bench/bench_fungi.py [--device cpu|cuda] [--images 4] [--batch 4] [--fp16]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from neuroprint.fungi import DINOConfig, FUNGIWrapper, KLConfig, SimCLRConfig

LAYER = "blocks.11.attn.proj"


def _images(n: int, seed: int) -> list[Image.Image]:
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        h, w = 300 + (37 * i) % 200, 400 - (53 * i) % 150
        small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize((w, h), Image.BICUBIC))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--negatives", type=int, default=2, help="SimCLR comparison_batch_size (setup only)")
    ap.add_argument("--fp16", action="store_true", help="use_fp16=True (bfloat16) for both")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    from fungivision.config import DINOConfig as FD
    from fungivision.config import KLConfig as FK
    from fungivision.config import SimCLRConfig as FS
    from fungivision.wrapper import FUNGIWrapper as FW

    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    images = _images(args.images, 0)
    dataset = [(im, 0) for im in _images(max(args.negatives, 1), 1000)]
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    theirs = FW(
        copy.deepcopy(model), LAYER, dev, use_fp16=args.fp16,
        extractor_configs=[FK(), FD(), FS(comparison_batch_size=args.negatives)],
    )  # fmt: skip
    torch.manual_seed(1)
    theirs.setup(dataset)
    ours = FUNGIWrapper(
        copy.deepcopy(model), LAYER, dev, projection=theirs.extractors[0].projection.float(), use_fp16=args.fp16,
        extractor_configs=[KLConfig(), DINOConfig(), SimCLRConfig(comparison_batch_size=args.negatives)],
    )  # fmt: skip
    for mine, their in zip(ours.extractors, theirs.extractors):
        mine.projection_head.load_state_dict(their.projection_head.state_dict())
        if hasattr(their, "teacher_projection"):
            mine.teacher_projection.load_state_dict(their.teacher_projection.state_dict())
    ours.extractors[2].comparison_batch = theirs.extractors[2].comparison_batch.clone()

    def run(wrapper) -> tuple[float, torch.Tensor]:
        torch.manual_seed(2)
        sync()
        t = time.perf_counter()
        feats = [wrapper(images[s : s + args.batch]).float().cpu() for s in range(0, len(images), args.batch)]
        sync()
        return time.perf_counter() - t, torch.cat(feats)

    def forwards_only() -> float:
        """The same views through the bare backbone (inference, same chunks and autocast): the time of
        the backbone forwards alone, to get the share of our time spent outside them."""
        views = []
        for s in range(0, len(images), args.batch):
            for ex in ours.extractors:
                vs = ex.make_views(images[s : s + args.batch], generator=torch.Generator().manual_seed(s))
                views.append(vs.reshape(-1, *vs.shape[2:]).to(dev))
        sync()
        t = time.perf_counter()
        with torch.no_grad(), ours._autocast():
            for v in views:
                for chunk in v.split(ours.views_per_forward):
                    ours.model(chunk)
        sync()
        return time.perf_counter() - t

    t_theirs, f_theirs = run(theirs)
    t_ours, f_ours = run(ours)
    t_fwd = forwards_only()
    e = ours.embeddings_dim
    cos = [
        float(
            F.cosine_similarity(
                f_ours[:, k * e : (k + 1) * e].double(), f_theirs[:, k * e : (k + 1) * e].double()
            ).min()
        )
        for k in range(3)
    ]
    result = {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "images": args.images,
        "batch": args.batch,
        "fp16": args.fp16,
        "views_per_image": 1 + 12 + 49,
        "fungivision_images_per_s": round(args.images / t_theirs, 4),
        "neuroprint_images_per_s": round(args.images / t_ours, 4),
        "speedup": round(t_theirs / t_ours, 3),
        "backbone_forwards_s": round(t_fwd, 3),
        "fraction_outside_forwards": round(1 - t_fwd / t_ours, 3),
        "min_cosine_kl_dino_simclr": [round(c, 7) for c in cos],
    }
    print(f"fungivision  {t_theirs:8.2f} s  {args.images / t_theirs:8.3f} images/s")
    print(f"neuroprint   {t_ours:8.2f} s  {args.images / t_ours:8.3f} images/s   ({t_theirs / t_ours:.2f}x)")
    print(
        f"bare backbone forwards of the same views {t_fwd:.2f} s: {100 * (1 - t_fwd / t_ours):.0f}% of "
        "neuroprint's time is outside them (views, tail backward, gradient projection)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
