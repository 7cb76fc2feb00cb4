"""Objectives for feature visualisation: one value per batch item, to be maximised.

An objective maps a ``VisContext`` (the activations of the layers it names, as ``[K, C, P]``, plus
the rendered images) to a ``[K]`` tensor. Unit targets are per item: ``channel(layer, [3, 7, 9])``
asks item 0 for channel 3, item 1 for channel 7, ... so K units are optimised in one batch. The
optimiser minimises ``-sum_k value_k``: items do not interact (except through ``diversity``), so item
``k`` gets exactly the gradient it would get alone.

Layer names are module paths of the model (``layer3.1.conv2``); a ``:pre`` suffix reads the *input*
of the named module instead of its output (name an activation module, e.g. ``layer3.1.act2:pre``,
to get pre-activation features, as Lucid's ``*_pre_relu`` tensors and cnnpref's pre-ReLU layers).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class VisContext:
    """What an objective can read for one step."""

    acts: dict[str, torch.Tensor]  # layer name -> [K, C, P]
    grids: dict[str, tuple[int, int] | None]  # layer name -> (H, W) of P, or None for tokens
    images: torch.Tensor  # [K, C, H, W] rendered images before transforms (C = 4 with alpha)
    k: int  # number of items optimised (rows of ``acts`` beyond k belong to auxiliary inputs)

    def layer(self, name: str) -> torch.Tensor:
        return self.acts[name][: self.k]


def _per_item(values: int | Sequence[int] | torch.Tensor, k: int, what: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        return t.expand(k)
    if t.numel() != k:
        raise ValueError(f"{what}: {t.numel()} targets for a batch of {k} items")
    return t


@dataclass
class Objective:
    """A per-item objective; combine with ``+``, ``-``, ``*`` (scalars or objectives) and unary ``-``."""

    fn: Callable[[VisContext], torch.Tensor]
    name: str
    layers: frozenset[str] = field(default_factory=frozenset)

    def __call__(self, ctx: VisContext) -> torch.Tensor:
        return self.fn(ctx)

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Objective(
                lambda c: self(c) + other(c), f"({self.name} + {other.name})", self.layers | other.layers
            )
        return Objective(lambda c: self(c) + float(other), f"({self.name} + {other})", self.layers)

    __radd__ = __add__

    def __neg__(self) -> Objective:
        return Objective(lambda c: -self(c), f"-{self.name}", self.layers)

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-other)

    def __rsub__(self, other: float) -> Objective:
        return (-self) + other

    def __mul__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Objective(
                lambda c: self(c) * other(c), f"({self.name} * {other.name})", self.layers | other.layers
            )
        return Objective(lambda c: self(c) * float(other), f"{other} * {self.name}", self.layers)

    __rmul__ = __mul__

    def __truediv__(self, other: float) -> Objective:
        return self * (1.0 / float(other))


def _center(grid: tuple[int, int] | None, p: int) -> int:
    if grid is None:
        return p // 2
    h, w = grid
    return (h // 2) * w + w // 2


def channel(layer: str, units: int | Sequence[int] | torch.Tensor) -> Objective:
    """Mean activation of channel ``units[k]`` over all positions, for item k."""

    def fn(c: VisContext) -> torch.Tensor:
        a = c.layer(layer)
        idx = _per_item(units, a.shape[0], "channel").to(a.device)
        return a[torch.arange(a.shape[0], device=a.device), idx].mean(-1)

    return Objective(fn, f"channel({layer})", frozenset([layer]))


def neuron(
    layer: str,
    units: int | Sequence[int] | torch.Tensor,
    y: int | None = None,
    x: int | None = None,
    *,
    position: int | None = None,
) -> Objective:
    """Activation of channel ``units[k]`` at one position: grid (y, x) (default the centre, lower-right
    of the central 2x2 for even sizes), or a flat ``position`` (a token index for token layers)."""

    def fn(c: VisContext) -> torch.Tensor:
        a = c.layer(layer)
        grid = c.grids.get(layer)
        if position is not None:
            p = position
        elif y is not None or x is not None:
            if grid is None:
                raise ValueError(f"layer {layer!r} has tokens, not a grid: give position=, not y/x")
            h, w = grid
            p = (h // 2 if y is None else y) * w + (w // 2 if x is None else x)
        else:
            p = _center(grid, a.shape[-1])
        if not 0 <= p < a.shape[-1]:
            raise ValueError(f"position {p} is outside layer {layer!r} ({a.shape[-1]} positions)")
        idx = _per_item(units, a.shape[0], "neuron").to(a.device)
        return a[torch.arange(a.shape[0], device=a.device), idx, p]

    return Objective(fn, f"neuron({layer})", frozenset([layer]))


def feature_weights(layer: str, weights: torch.Tensor) -> Objective:
    """cnnpref's feature mask / weights: sum(weights * activations) / number of non-zero weights.

    ``weights`` is shaped like one item's layer output ([C, P], or [C, H, W] on a grid), like
    ``[C]`` (every position of a channel), or carries a leading K for one mask per item.
    A binary mask selects units (cnnpref's ``feature_mask``); real values weight them.
    """

    def fn(c: VisContext) -> torch.Tensor:
        a = c.layer(layer)
        k, ch, p = a.shape
        w = weights.to(a.device, a.dtype)
        if w.dim() == 1:
            w = w[:, None].expand(ch, p)
        if w.dim() >= 3 and w.shape[0] == k and w[0].numel() == ch * p:
            w = w.reshape(k, ch, p)
        elif w.numel() == ch * p:
            w = w.reshape(1, ch, p)
        else:
            raise ValueError(
                f"weights of shape {tuple(weights.shape)} do not fit layer {layer!r} ({ch} x {p})"
            )
        count = (w != 0).sum(dim=(1, 2)).clamp_min(1).to(a.dtype)
        return (w * a).sum(dim=(1, 2)) / count

    return Objective(fn, f"feature_weights({layer})", frozenset([layer]))


def feature_mask(layer: str, mask: torch.Tensor) -> Objective:
    """Mean activation of the units where ``mask`` is true (cnnpref's binary feature mask)."""
    return feature_weights(layer, mask.to(torch.float32))


def direction(layer: str, vectors: torch.Tensor) -> Objective:
    """Cosine similarity between each position's activation and ``vectors`` ([C] or [K, C]), averaged."""

    def fn(c: VisContext) -> torch.Tensor:
        a = c.layer(layer)
        v = vectors.to(a.device, a.dtype).reshape(-1, a.shape[1], 1)
        return F.cosine_similarity(a, v, dim=1).mean(-1)

    return Objective(fn, f"direction({layer})", frozenset([layer]))


def diversity(layer: str) -> Objective:
    """Minus each item's summed cosine similarity of Gram matrices with the other items, / K.

    Summed over items it is Lucid's diversity term; it couples the items of a batch.
    """

    def fn(c: VisContext) -> torch.Tensor:
        a = c.layer(layer)
        k = a.shape[0]
        grams = a @ a.transpose(1, 2)
        grams = F.normalize(grams.flatten(1), dim=1)
        sim = grams @ grams.T
        return -(sim.sum(1) - sim.diagonal()) / k

    return Objective(fn, f"diversity({layer})", frozenset([layer]))


def alpha_mean_penalty(target: float = 0.25, weight: float = 1.0) -> Objective:
    """-weight * (mean alpha - target)^2 per item: keeps an alpha channel from going fully opaque."""

    def fn(c: VisContext) -> torch.Tensor:
        if c.images.shape[1] != 4:
            raise ValueError("alpha_mean_penalty needs an alpha parameterisation (4 channels)")
        alpha = c.images[: c.k, 3]
        return -float(weight) * (alpha.mean(dim=(1, 2)) - float(target)) ** 2

    return Objective(fn, "alpha_mean_penalty", frozenset())


def constant(value: float) -> Objective:
    return Objective(lambda c: torch.full((c.k,), float(value), device=c.images.device), str(value))
