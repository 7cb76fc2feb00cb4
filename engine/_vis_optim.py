"""Optimisers for feature visualisation: Adam, SGD, cnnpref's scheduled GD with momentum, L-BFGS.

All of them minimise the loss ``-sum_k objective_k`` returned by a closure and call ``project()``
after every step so bounded parameterisations (raw pixels in [0, 1], DGN codes) stay inside their
bounds. Adam, SGD and the scheduled GD act element-wise or per item, so item k follows the path it
would follow alone; L-BFGS keeps one curvature history and one line search for the whole batch
(items are coupled through its step length), as ``torch.optim.LBFGS`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._vis_transforms import gaussian_blur

OPTIMIZERS = ("adam", "sgd", "gd", "lbfgs")


def _linear(start: float, end: float, t: int, steps: int) -> float:
    """cnnpref's schedule: start + t * (end - start) / steps."""
    return start + t * (end - start) / max(1, steps)


@dataclass
class GDSchedule:
    """cnnpref's gradient-ascent settings; (start, end) pairs are interpolated linearly over the steps.

    Defaults are cnnpref's ``prefer_img_gd`` values with the learning rate rescaled from Caffe's
    0..255 pixels to [0, 1] pixels (2 / 255). Blur and pixel clipping act only on pixel images.
    """

    lr: tuple[float, float] = (2.0 / 255.0, 1e-10)
    momentum: tuple[float, float] = (0.9, 0.9)
    decay: tuple[float, float] = (
        0.2,
        1e-10,
    )  # L2 decay towards ``centre``: x <- centre + (1 - d)(x - centre)
    blur_sigma: tuple[float, float] | None = (2.5, 0.5)  # Gaussian blur of the image after each step
    clip_small_norm: tuple[float, float] | None = (5.0, 5.0)  # percentile of pixel norms set to centre
    clip_small_norm_every: int = 4
    clip_extreme: tuple[float, float] | None = None  # percentile clipped at both ends
    clip_extreme_every: int = 4


class ScheduledGD:
    """Gradient ascent with momentum, per-item gradient normalisation (mean |g| = 1), L2 decay, blur
    and pixel clipping, each with a linear schedule (cnnpref ``prefer_img_gd`` / ``prefer_img_dgn_gd``).
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        steps: int,
        schedule: GDSchedule | None = None,
        *,
        image_params: Sequence[torch.Tensor] = (),
        centre: float = 0.0,
    ):
        self.params = list(params)
        self.steps = int(steps)
        self.s = schedule or GDSchedule()
        self.image_params = {id(p) for p in image_params}
        self.centre = float(centre)
        self.delta = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        with torch.enable_grad():
            loss = closure()
        s, t, n = self.s, self.t, self.steps
        lr = _linear(*s.lr, t, n)
        mom = _linear(*s.momentum, t, n)
        decay = _linear(*s.decay, t, n)
        for p, delta in zip(self.params, self.delta):
            if p.grad is None:
                continue
            g = -p.grad  # ascent on the objective
            per_item = g.abs().flatten(1).mean(1).clamp_min(1e-30)
            g = g / per_item.view(-1, *([1] * (g.dim() - 1)))
            delta.mul_(mom).add_(g, alpha=lr)
            p.add_(delta)
            is_image = id(p) in self.image_params and p.dim() == 4
            x = p - self.centre
            if is_image and s.clip_extreme and (t + 1) % s.clip_extreme_every == 0:
                pct = _linear(*s.clip_extreme, t, n) / 100.0
                flat = x.flatten(1)
                lo = torch.quantile(flat, pct, dim=1).view(-1, 1, 1, 1)
                hi = torch.quantile(flat, 1 - pct, dim=1).view(-1, 1, 1, 1)
                x = torch.maximum(torch.minimum(x, hi), lo)
            if is_image and s.clip_small_norm and (t + 1) % s.clip_small_norm_every == 0:
                pct = _linear(*s.clip_small_norm, t, n) / 100.0
                norm = x.norm(dim=1)  # [K, H, W]
                thr = torch.quantile(norm.flatten(1), pct, dim=1).view(-1, 1, 1)
                x = x * (norm >= thr).unsqueeze(1)
            x = x * (1.0 - decay)
            if is_image and s.blur_sigma:
                x = gaussian_blur(x, _linear(*s.blur_sigma, t, n))
            p.copy_(x + self.centre)
        self.t += 1
        return loss


class _Torch:
    """A torch optimiser behind the same ``step(closure)`` / ``zero_grad`` interface."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt = opt

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        return self.opt.step(closure)


def make_optimizer(
    name: str,
    params: Sequence[torch.Tensor],
    *,
    lr: float,
    steps: int,
    image_params: Sequence[torch.Tensor] = (),
    centre: float = 0.0,
    options: dict | None = None,
):
    """Build the named optimiser; ``options`` go to the torch optimiser or to ``GDSchedule``."""
    options = dict(options or {})
    if name == "adam":
        return _Torch(torch.optim.Adam(params, lr=lr, **options))
    if name == "sgd":
        return _Torch(torch.optim.SGD(params, lr=lr, **options))
    if name == "gd":
        sched = GDSchedule(**options)
        if "lr" not in options:
            sched.lr = (lr, sched.lr[1])
        return ScheduledGD(params, steps, sched, image_params=image_params, centre=centre)
    if name == "lbfgs":
        kw = {"max_iter": 1, "history_size": 10, "line_search_fn": "strong_wolfe", **options}
        return _Torch(torch.optim.LBFGS(params, lr=lr, **kw))
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
