"""``neuroprint demo``: an offline tour on generated images with a random-weight network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def _scene(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth gradient with a few soft discs: a stand-in for clean photos."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    slope = rng.uniform(-1, 1, (2, 3)).astype(np.float32)
    img = base + x[..., None] * slope[0] * 255 / w + y[..., None] * slope[1] * 255 / h
    for _ in range(rng.integers(2, 5)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.1, 0.3) * min(h, w)
        mask = np.clip(1.5 - np.hypot(y - cy, x - cx) / r, 0, 1)[..., None]
        img = img * (1 - mask) + rng.uniform(0, 255, 3) * mask
    return np.clip(img, 0, 255).astype(np.uint8)


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Oriented stripes under heavy sensor-like noise: a stand-in for a degraded, textured collection."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.2, 0.6)
    wave = np.sin((x * np.cos(theta) + y * np.sin(theta)) * freq)[..., None]
    img = 128 + 90 * wave * rng.uniform(0.5, 1, 3) + rng.normal(0, 40, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def natural_image(h: int, w: int, seed: int) -> np.ndarray:
    """A photo-like test image: smooth colour gradients, sharp discs and rectangles, sensor-like noise.

    Used by the DALI tests and the decode benchmark (their tolerances were measured on these images)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 90 * np.sin(a * xx / w * 6 + b * yy / h * 6 + p * 3)
    for _ in range(5):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.05, 0.3) * min(h, w)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        y0, x0 = int(rng.uniform(0, h)), int(rng.uniform(0, w))
        img[y0 : y0 + int(r), x0 : x0 + int(1.5 * r)] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_demo_images(folder: Path, n: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Set "clean" (smooth scenes, with one truncated file among them) and set "noisy" (noisy textures)."""
    rng = np.random.default_rng(seed)
    clean_dir, noisy_dir = folder / "clean", folder / "noisy"
    clean_dir.mkdir(parents=True, exist_ok=True)
    noisy_dir.mkdir(parents=True, exist_ok=True)
    clean, noisy = [], []
    for i in range(n):
        h, w = int(rng.integers(160, 320)), int(rng.integers(160, 320))
        a = _scene(rng, h, w)
        p = clean_dir / f"img_{i:03d}.png"
        Image.fromarray(a).save(p)
        clean.append(p)
        b = _texture(rng, h, w)
        q = noisy_dir / f"img_{i:03d}.jpg"
        Image.fromarray(b).save(q, quality=85)
        noisy.append(q)
    # A real collection has broken files; neuroprint skips and records them.
    broken = clean_dir / "broken.jpg"
    broken.write_bytes(noisy[0].read_bytes()[:200])
    clean.append(broken)
    return clean, noisy


def run_demo(
    out: Path, *, images: int = 24, extractor: str = "rand_resnet50", device="auto", say: Callable = print
) -> dict[str, float]:
    from ..stats.distances import EMD, FD
    from ..stats.profile import profile

    out.mkdir(parents=True, exist_ok=True)
    say(
        f"1/4 writing {images} smooth and {images} noisy textured images (+1 truncated file) to {out / 'images'}"
    )
    clean, noisy = make_demo_images(out / "images", images)
    common = dict(extractor=extractor, weights="random", device=device, batch_size=16, progress=True)

    say(f"2/4 measuring activation ranges of {extractor} (random weights) over both sets")
    ranges = profile(out / "images", "activation-ranges", **common)["activation-ranges"]
    ranges.save(out / "ranges")

    half = len(clean) // 2
    sets = {"clean_1": clean[:half], "clean_2": clean[half:], "noisy": noisy}
    vdnas = {}
    say("3/4 profiling three sets (histogram-1000 and layer-gaussian from one pass each)")
    for name, paths in sets.items():
        res = profile(
            [str(p) for p in paths], ["histogram-1000", "layer-gaussian"], ranges=out / "ranges", **common
        )
        for dist, v in res.items():
            v.save(out / f"{name}-{dist}")
        vdnas[name] = res
        failed = (
            f", {res['histogram-1000'].num_failed} unreadable skipped"
            if res["histogram-1000"].num_failed
            else ""
        )
        say(f"    {name}: {res['histogram-1000'].num_images} images{failed}")

    say("4/4 distances (EMD in bins over all neurons; FD = mean over layers)")
    rows = {}
    for a, b in (("clean_1", "clean_2"), ("clean_1", "noisy"), ("clean_2", "noisy")):
        emd = float(EMD(vdnas[a]["histogram-1000"], vdnas[b]["histogram-1000"]))
        fd = float(FD(vdnas[a]["layer-gaussian"], vdnas[b]["layer-gaussian"]))
        rows[f"{a} vs {b}"] = emd
        say(f"    {a:8s} vs {b:8s}  EMD {emd:9.4f}   FD {fd:12.4g}")
    say("    (smaller = more alike: the two halves of one set are closer than either is to the other set;")
    say("     a random-weight network over a dozen images per set only gives a rough picture, FD especially)")
    say(f"files are in {out}/; try: neuroprint info {out}/clean_1-histogram-1000 --failures")
    say(
        f"          neuroprint compare {out}/clean_1-histogram-1000 {out}/noisy-histogram-1000 --layer layer4_2"
    )
    return rows
