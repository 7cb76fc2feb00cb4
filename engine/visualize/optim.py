"""Optimisers for feature visualisation: Adam, SGD, cnnpref's scheduled GD with momentum, L-BFGS.

Every optimiser's ``step(closure)`` takes a closure that returns the per-item losses ``[K]``
(``-objective_k``) after back-propagating their sum. The caller calls ``project()`` after every step
so bounded parameterisations (raw pixels in [0, 1], DGN codes) stay inside their bounds.

Adam, SGD and the scheduled GD act element-wise or per item, so item k follows the path it would
follow alone. "lbfgs" (``BoundedLBFGS``) is a projected L-BFGS with box bounds run as K independent
problems in one batch: each item has its own curvature history, search direction and backtracking
line search, so item k also follows its own path (up to batched-arithmetic rounding), and its bounds
hold at every evaluation, not only after a clamp. "lbfgs-joint" is ``torch.optim.LBFGS`` on the whole
batch (one history and one strong-Wolfe line search; items coupled through the step length, bounds
by clamping after the step), the pre-1.0 behaviour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .transforms import gaussian_blur

OPTIMIZERS = ("adam", "sgd", "gd", "lbfgs", "lbfgs-joint")


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
            loss = closure().sum()
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
        return self.opt.step(lambda: closure().sum())


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products of [G, n] tensors, accumulated in float64."""
    return (a * b).sum(1, dtype=torch.float64)


class BoundedLBFGS:
    """Projected L-BFGS with box bounds, one independent problem per batch item.

    The batch's parameters are split into G groups: G = K items when every parameter has the items
    as its first dimension, else G = 1 (a parameter shared by the batch couples the items into one
    problem). Per group and step:

    1. evaluate loss and gradient at the current point (the closure re-draws nothing within a step);
    2. hold the variables on a bound whose gradient points outward; the two-loop recursion over the
       group's last ``history_size`` (s, y) pairs gives the direction on the free ones (steepest
       descent when that is not a descent direction or there is no history yet);
    3. backtracking line search along the projected path ``P(x + t d)`` from ``t = lr`` (steepest
       descent steps: ``lr * min(1, 1/|g|_1)``, as torch's first L-BFGS step), halving ``t`` until the projected Armijo
       condition ``f(P(x + t d)) <= f(x) + c1 g.(P(x + t d) - x)`` holds, at most ``max_ls`` times
       (a group that never satisfies it keeps its point for this step);
    4. store the pair (s, y) when ``s.y > 0``.

    This is the projected quasi-Newton scheme of Kim, Sra & Dhillon (2010), not the generalised
    Cauchy point of L-BFGS-B (Byrd et al. 1995); both keep every iterate inside the box. Each step
    costs one evaluation plus one per line-search trial, each a batched forward and backward of all
    items (items already accepted are re-evaluated at their accepted point).
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        *,
        items: int,
        lr: float = 1.0,
        bounds: dict[int, tuple[object, object]] | None = None,
        history_size: int = 10,
        max_ls: int = 12,
        c1: float = 1e-4,
    ):
        self.params = list(params)
        if not self.params:
            raise ValueError("no parameters to optimise")
        per_item = all(p.dim() >= 1 and p.shape[0] == items for p in self.params)
        self.groups = int(items) if per_item else 1
        self.items = int(items)
        self.lr, self.m, self.max_ls, self.c1 = float(lr), int(history_size), int(max_ls), float(c1)
        if self.lr <= 0 or self.m < 1 or self.max_ls < 1:
            raise ValueError("lbfgs needs lr > 0, history_size >= 1 and max_ls >= 1")
        lo, hi = [], []
        for p in self.params:
            b_lo, b_hi = (bounds or {}).get(id(p), (None, None))
            lo.append(self._full(b_lo, p, float("-inf")))
            hi.append(self._full(b_hi, p, float("inf")))
        self.lo, self.hi = self._flat(lo), self._flat(hi)
        if bool((self.lo > self.hi).any()):
            raise ValueError("a lower bound is above its upper bound")
        self.s: list[torch.Tensor] = []
        self.y: list[torch.Tensor] = []
        self.rho: list[torch.Tensor] = []
        self.gamma = torch.ones(self.groups, dtype=torch.float64, device=self.lo.device)
        self.pairs = torch.zeros(self.groups, dtype=torch.long, device=self.lo.device)
        self.evaluations = 0

    @staticmethod
    def _full(bound: object, p: torch.Tensor, fill: float) -> torch.Tensor:
        if bound is None:
            return torch.full_like(p, fill)
        b = torch.as_tensor(bound, dtype=p.dtype, device=p.device)
        # A tensor bound is per element of one item (e.g. a [4096] code bound): broadcast over items.
        return torch.broadcast_to(b, p.shape).clone()

    def _flat(self, ts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.reshape(self.groups, -1) for t in ts], 1)

    def _set(self, x: torch.Tensor) -> None:
        at = 0
        for p in self.params:
            n = p.numel() // self.groups
            p.copy_(x[:, at : at + n].reshape(p.shape))
            at += n

    def _evaluate(self, closure: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        for p in self.params:
            p.grad = None
        with torch.enable_grad():
            f = closure().detach()
        self.evaluations += 1
        f = f.reshape(-1).to(torch.float64)
        if self.groups == 1:
            f = f.sum().reshape(1)
        elif f.numel() != self.groups:
            raise ValueError(f"the closure returned {f.numel()} losses for {self.groups} items")
        g = self._flat([p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params])
        return f, g

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        lo, hi = self.lo, self.hi
        x = torch.minimum(torch.maximum(self._flat([p.detach() for p in self.params]), lo), hi)
        self._set(x)
        f, g = self._evaluate(closure)
        free = ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))
        q = g * free
        alphas = []
        for s, y, rho in zip(reversed(self.s), reversed(self.y), reversed(self.rho)):
            a = rho * _dot(s, q)
            q = q - a.to(q.dtype)[:, None] * y
            alphas.append(a)
        r = self.gamma.to(q.dtype)[:, None] * q
        for s, y, rho, a in zip(self.s, self.y, self.rho, reversed(alphas)):
            b = rho * _dot(y, r)
            r = r + (a - b).to(r.dtype)[:, None] * s
        d = -r * free
        steepest = -g * free
        gd = _dot(g, d)
        use_steepest = ~torch.isfinite(gd) | (gd >= 0) | (self.pairs == 0)
        d = torch.where(use_steepest[:, None], steepest, d)
        t = torch.full((self.groups,), self.lr, dtype=torch.float64, device=x.device)
        # A steepest-descent step (no history yet, or the quasi-Newton direction is not a descent one)
        # starts at lr * min(1, 1/|g|_1), as torch's first L-BFGS step; the quasi-Newton one at lr.
        g1 = steepest.abs().sum(1, dtype=torch.float64).clamp_min(1e-300)
        t = torch.where(use_steepest, self.lr * torch.clamp(1.0 / g1, max=1.0), t)

        accepted = torch.zeros(self.groups, dtype=torch.bool, device=x.device)
        x_new, f_new, g_new = x.clone(), f.clone(), g.clone()
        for _ in range(self.max_ls):
            trial = torch.minimum(torch.maximum(x + t.to(x.dtype)[:, None] * d, lo), hi)
            self._set(torch.where(accepted[:, None], x_new, trial))
            ft, gt = self._evaluate(closure)
            ok = ~accepted & torch.isfinite(ft) & (ft <= f + self.c1 * _dot(g, trial - x))
            x_new = torch.where(ok[:, None], trial, x_new)
            g_new = torch.where(ok[:, None], gt, g_new)
            f_new = torch.where(ok, ft, f_new)
            accepted |= ok
            if bool(accepted.all()):
                break
            t = torch.where(accepted, t, t * 0.5)
        self._set(x_new)

        s, y = x_new - x, g_new - g
        sy, yy = _dot(s, y), _dot(y, y)
        valid = accepted & (sy > 1e-10) & (yy > 0)
        keep = valid[:, None]
        self.s.append(torch.where(keep, s, torch.zeros_like(s)))
        self.y.append(torch.where(keep, y, torch.zeros_like(y)))
        self.rho.append(torch.where(valid, 1.0 / sy.clamp_min(1e-300), torch.zeros_like(sy)))
        if len(self.s) > self.m:
            self.s.pop(0), self.y.pop(0), self.rho.pop(0)
        self.gamma = torch.where(valid, sy / yy.clamp_min(1e-300), self.gamma)
        self.pairs += valid.long()
        return f.sum()


def make_optimizer(
    name: str,
    params: Sequence[torch.Tensor],
    *,
    lr: float,
    steps: int,
    image_params: Sequence[torch.Tensor] = (),
    centre: float = 0.0,
    options: dict | None = None,
    items: int = 1,
    bounds: dict[int, tuple[object, object]] | None = None,
):
    """Build the named optimiser; ``options`` go to the torch optimiser, to ``GDSchedule`` or to
    ``BoundedLBFGS`` (history_size, max_ls, c1). ``items`` is the batch size K and ``bounds`` the
    parameters' boxes (``ImageParam.box()``), used by "lbfgs"."""
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
        return BoundedLBFGS(params, items=items, lr=lr, bounds=bounds, **options)
    if name == "lbfgs-joint":
        kw = {"max_iter": 1, "history_size": 10, "line_search_fn": "strong_wolfe", **options}
        return _Torch(torch.optim.LBFGS(params, lr=lr, **kw))
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
