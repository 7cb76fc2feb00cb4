"""What the CPU kernel benchmarks share: photo-like test images and a best-of-5 timer."""

from __future__ import annotations

import time

import numpy as np
from PIL import Image


def photo(w: int, h: int, seed: int) -> np.ndarray:
    """A uint8 RGB [h, w, 3] image: a smooth upscaled 16 x 12 pattern plus noise (JPEG-photo-like)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.BICUBIC)).astype(np.float32)
    return np.clip(img + rng.normal(0, 12, img.shape), 0, 255).astype(np.uint8)


def best_ms(fn, repeats: int) -> float:
    """The best of 5 rounds of ``repeats`` calls, in ms per call (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - t) / repeats)
    return best * 1e3


def thread_rates(fn, imgs: list, repeats: int) -> list[float]:
    """Images/s of ``fn`` over ``imgs`` with 1 and 2 threads (the kernels release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    rates = []
    for threads in (1, 2):
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(fn, imgs))
            t = time.perf_counter()
            for _ in range(max(1, repeats // 4)):
                list(pool.map(fn, imgs))
            rates.append(len(imgs) * max(1, repeats // 4) / (time.perf_counter() - t))
    return rates
