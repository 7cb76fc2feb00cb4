"""How native an image's resolution looks: a scale-free sharpness statistic for choosing which duplicate
to keep.

An upscaled copy has more pixels than its original but no more detail: its spectrum stops at the
original's Nyquist frequency. Natural images, by contrast, are close to scale invariant (power falling
as 1/f^2, so every octave of frequencies holds about the same energy). `sharpness` compares the energy
in the top octave of frequencies (above a quarter cycle per pixel) at the image's own resolution with
the same fraction after halving the image (2x2 box mean):

    sharpness = top_octave_fraction(image) / top_octave_fraction(image halved)

Measured on 20 photo-like and 1/f images and their copies (noise of the 8-bit rounding taken off): 0.61
to 1.72 at native resolution, 0.39 to 1.47 for 0.6x and 0.8x downscales, 0.69 to 1.69 for JPEG q=90 and
0.39 to 1.55 for q=40; 0.04 to 0.22 for 2x bicubic or Lanczos upscales, all below ``UPSCALED_BELOW``;
1.5x and 1.25x upscales measure 0.09 to 0.67 and are caught only in part, and nearest-neighbour
upscales not at all (their blocks are edges at the new resolution). Blurred copies measure low too
(Gaussian radius 1: below 0.08): they carry less detail than their original.

The fractions are measured on the central square of at most ``CROP`` pixels (Hann windowed, float64),
so the cost per image is bounded whatever its size (5 ms for a 12 MP image on one core). NaN when the
image is smaller than twice ``MIN_SIDE`` on a side, or when even its halved copy has almost no detail
(top-octave fraction below ``MIN_FRACTION``: smooth images, where the ratio is noise; 36 of the 220
measured, all of smooth synthetic images): unknown, never taken as upscaled.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["CROP", "MIN_SIDE", "MIN_FRACTION", "UPSCALED_BELOW", "sharpness", "top_octave_fraction"]

CROP = 256
MIN_SIDE = 32
# Below this an image is treated as upscaled (or blurred) when choosing which duplicate to keep: above
# every 2x upscale measured (at most 0.22) and below every native image and downscale (at least 0.39).
UPSCALED_BELOW = 0.35
# Top-octave fraction the halved image must reach for the ratio to mean anything (1/f images: about
# 0.14; smooth synthetic images with a few shapes: 0.002 to 0.01; a smooth gradient: below 1e-4).
MIN_FRACTION = 1e-3
_LUMA = np.array([0.299, 0.587, 0.114])
_ROUNDING_VAR = 1.0 / 12.0  # variance of rounding to integer gray levels


def top_octave_fraction(gray: np.ndarray, noise_var: float = 0.0) -> float:
    """Fraction of the (Hann-windowed, mean-removed) spectral energy of a 2-d array at frequencies above a
    quarter cycle per pixel on either axis, after taking off each frequency's share of white noise of
    variance ``noise_var`` (the rounding of 8-bit pixels is 1/12: it would otherwise pass for detail in
    smooth images); NaN when nothing is left."""
    g = np.asarray(gray, dtype=np.float64)
    win, win_energy, any_freq, top = _spectrum_masks(*g.shape)
    power = np.abs(np.fft.rfft2((g - g.mean()) * win)) ** 2
    power = np.maximum(power - noise_var * win_energy, 0.0)
    total = power[any_freq].sum()
    if not total > 0:
        return float("nan")
    return float(power[top].sum() / total)


@functools.lru_cache(maxsize=64)
def _spectrum_masks(h: int, w: int):
    """(Hann window [h, w], its energy, mask of the nonzero frequencies, mask of the top octave) of the
    rfft2 of an h x w array; cached, as the crops of a collection come in few shapes. Read-only."""
    win = np.outer(np.hanning(h), np.hanning(w))
    radius = np.maximum(np.abs(np.fft.fftfreq(h))[:, None], np.abs(np.fft.rfftfreq(w))[None, :])
    any_freq, top = radius > 0, radius > 0.25
    for a in (win, any_freq, top):
        a.flags.writeable = False
    return win, float((win**2).sum()), any_freq, top


def _centre(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    ch, cw = min(h, size), min(w, size)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return a[y0 : y0 + ch, x0 : x0 + cw]


def sharpness(image) -> float:
    """The statistic of the module docstring for one decoded image (HxWx3 or HxW array, or a PIL image)."""
    a = np.asarray(image)
    if a.ndim == 3:
        region = _centre(a, 2 * CROP)[..., :3].astype(np.float64) @ _LUMA[: min(3, a.shape[2])]
    elif a.ndim == 2:
        region = _centre(a, 2 * CROP).astype(np.float64)
    else:
        raise ValueError(f"an image is HxW or HxWxC, got shape {a.shape}")
    h, w = region.shape
    if min(h, w) < 2 * MIN_SIDE:
        return float("nan")
    native = top_octave_fraction(_centre(region, CROP), _ROUNDING_VAR)
    h2, w2 = h // 2, w // 2
    r = region[: 2 * h2, : 2 * w2]
    halved = (r[0::2, 0::2] + r[1::2, 0::2] + r[0::2, 1::2] + r[1::2, 1::2]) * 0.25  # 2x2 box mean
    coarse = top_octave_fraction(_centre(halved, CROP), _ROUNDING_VAR / 4)  # averaging 4 pixels
    if not (np.isfinite(native) and np.isfinite(coarse)) or coarse < MIN_FRACTION:
        return float("nan")  # no detail even at half the resolution: nothing to compare with
    return float(native / coarse)
