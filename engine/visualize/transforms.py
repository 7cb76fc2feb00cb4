"""Random transforms for feature visualisation, drawn independently for every batch item.

Lucent draws one shift, scale and angle per step and applies it to the whole batch; here item ``i``
draws from ``generators[i]`` only, so a batch of K units sees the same transforms as K separate runs.
Each transform is a callable ``(images [K, C, H, W], generators) -> images`` that keeps the size
(pad excepted). Jitter moves pixels by whole pixels (a gather, no interpolation); scale and
rotation are bilinear affine resamplings (``grid_sample``) about the image centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Generators = Sequence[torch.Generator]


def _choice(values: Sequence[float], generators: Generators) -> torch.Tensor:
    """One value per item, uniformly from ``values``."""
    idx = [int(torch.randint(len(values), (1,), generator=g)) for g in generators]
    return torch.tensor([float(values[i]) for i in idx])


def _affine(x: torch.Tensor, theta: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """Resample each item with its own 2x3 matrix (normalised output -> input coordinates)."""
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


class Pad:
    """Pad every side by ``width`` pixels: ``constant`` (value), ``reflect`` or ``replicate``."""

    def __init__(self, width: int, mode: str = "constant", value: float = 0.5):
        if mode not in ("constant", "reflect", "replicate"):
            raise ValueError(f"unknown pad mode {mode!r}; valid: constant, reflect, replicate")
        self.width, self.mode, self.value = int(width), mode, float(value)

    def __call__(self, x: torch.Tensor, generators: Generators) -> torch.Tensor:
        if self.mode == "constant":
            return F.pad(x, [self.width] * 4, mode="constant", value=self.value)
        return F.pad(x, [self.width] * 4, mode=self.mode)

    def __repr__(self) -> str:
        return f"Pad({self.width}, {self.mode!r})"


class Jitter:
    """Shift each item by its own integer (dy, dx), each uniform in [-(d - 1) // 2, d // 2]."""

    def __init__(self, d: int):
        if d < 1:
            raise ValueError(f"jitter must be at least 1 pixel, not {d}")
        self.d = int(d)

    def __call__(self, x: torch.Tensor, generators: Generators) -> torch.Tensor:
        k, c, h, w = x.shape
        lo = -((self.d - 1) // 2)
        shifts = torch.stack([torch.randint(lo, lo + self.d, (2,), generator=g) for g in generators])
        shifts = shifts.to(x.device)
        # Output pixel p reads input pixel p - shift (zeros outside): two gathers, no interpolation.
        rows = torch.arange(h, device=x.device)[None, :] - shifts[:, :1]  # [K, H]
        cols = torch.arange(w, device=x.device)[None, :] - shifts[:, 1:]  # [K, W]
        ridx = rows.clamp(0, h - 1)[:, None, :, None].expand(k, c, h, w)
        cidx = cols.clamp(0, w - 1)[:, None, None, :].expand(k, c, h, w)
        y = x.gather(2, ridx).gather(3, cidx)
        valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        return y * valid[:, None].to(x.dtype)

    def __repr__(self) -> str:
        return f"Jitter({self.d})"


class RandomScale:
    """Zoom each item about its centre by a factor drawn from ``scales`` (size kept)."""

    def __init__(self, scales: Sequence[float]):
        self.scales = [float(s) for s in scales]

    def __call__(self, x: torch.Tensor, generators: Generators) -> torch.Tensor:
        s = _choice(self.scales, generators)
        theta = torch.zeros(x.shape[0], 2, 3)
        theta[:, 0, 0] = 1.0 / s
        theta[:, 1, 1] = 1.0 / s
        return _affine(x, theta)

    def __repr__(self) -> str:
        return f"RandomScale({self.scales})"


class RandomRotate:
    """Rotate each item about its centre by an angle (degrees) drawn from ``angles``."""

    def __init__(self, angles: Sequence[float]):
        self.angles = [float(a) for a in angles]

    def __call__(self, x: torch.Tensor, generators: Generators) -> torch.Tensor:
        a = _choice(self.angles, generators) * (math.pi / 180.0)
        _, _, h, w = x.shape
        cos, sin = torch.cos(a), torch.sin(a)
        theta = torch.zeros(x.shape[0], 2, 3)
        # Rotation in pixel space, expressed in normalised coordinates of a non-square image.
        theta[:, 0, 0] = cos
        theta[:, 0, 1] = -sin * h / w
        theta[:, 1, 0] = sin * w / h
        theta[:, 1, 1] = cos
        return _affine(x, theta)

    def __repr__(self) -> str:
        return f"RandomRotate({len(self.angles)} angles)"


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding; ``sigma`` a float or one value per item."""
    k, c, h, w = x.shape
    sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
    if float(sig.max()) <= 0:
        return x
    radius = max(1, int(math.ceil(3 * float(sig.max()))))
    radius = min(radius, (min(h, w) - 1) // 2) if min(h, w) > 2 else 0
    if radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    sig = sig.expand(k).clamp_min(1e-6)
    kern = torch.exp(-0.5 * (t[None, :] / sig[:, None]) ** 2)
    kern = kern / kern.sum(1, keepdim=True)  # [K, taps]
    weight = kern[:, None, None, :].repeat_interleave(c, 0)  # one kernel per (item, channel)
    y = F.pad(x.reshape(1, k * c, h, w), [radius, radius, 0, 0], mode="reflect")
    y = F.conv2d(y, weight, groups=k * c)
    y = F.pad(y, [0, 0, radius, radius], mode="reflect")
    y = F.conv2d(y, weight.transpose(2, 3), groups=k * c)
    return y.reshape(k, c, h, w)


class Blur:
    """Gaussian blur with sigma drawn per item from ``sigmas`` (a single value: fixed blur)."""

    def __init__(self, sigmas: float | Sequence[float]):
        self.sigmas = [float(sigmas)] if isinstance(sigmas, (int, float)) else [float(s) for s in sigmas]

    def __call__(self, x: torch.Tensor, generators: Generators) -> torch.Tensor:
        return gaussian_blur(x, _choice(self.sigmas, generators))

    def __repr__(self) -> str:
        return f"Blur({self.sigmas})"


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor, generators: Generators) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, generators)
        return x

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


def standard_transforms() -> list:
    """Lucid/Lucent's standard robustness transforms, drawn per item."""
    return [
        Pad(12, "constant", 0.5),
        Jitter(8),
        RandomScale([1 + (i - 5) / 50.0 for i in range(11)]),
        RandomRotate(list(range(-10, 11)) + 5 * [0]),
        Jitter(4),
    ]
