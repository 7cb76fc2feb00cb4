"""Mergeable dataset-level statistics of activations.

Every reducer has ``update(feats)``, ``merge(other)`` and ``result()``. Merging is associative and
commutative and the result does not depend on how the images were batched or split into shards:
histogram counts are integers, and moments are merged with Chan et al.'s pairwise formulas in float64.

``feats`` is ``{layer: [B, P, C]}``: B images, P spatial positions or tokens, C neurons.
"""

from __future__ import annotations

import numpy as np
import torch

from neuroprint.kernels.histogram import PRECISIONS, images_per_chunk, neuron_histogram, norm_params

from .._errors import IncompatibleVDNAError
from .ranges import Ranges

__all__ = [
    "ActivationRangesReducer",
    "GaussianReducer",
    "HistogramReducer",
    "LayerGaussianReducer",
    "Reducer",
    "make_reducer",
    "parse_distribution",
]

DISTRIBUTIONS = ("histogram-<bins>", "gaussian", "layer-gaussian", "activation-ranges")


def parse_distribution(name: str) -> tuple[str, int]:
    """'histogram-1000' -> ("histogram", 1000); other names -> (name, 0). Unknown names raise."""
    if not isinstance(name, str):
        raise TypeError(f"distribution name must be a string, got {type(name).__name__}")
    if name.startswith("histogram-"):
        tail = name[len("histogram-") :]
        if not tail.isdigit() or int(tail) < 1:
            raise ValueError(
                f"bad histogram distribution {name!r}: expected histogram-<bins>, e.g. histogram-1000"
            )
        return "histogram", int(tail)
    if name in ("gaussian", "layer-gaussian", "activation-ranges"):
        return name, 0
    raise ValueError(f"unknown distribution {name!r}; valid: {', '.join(DISTRIBUTIONS)}")


class Reducer:
    """Base class: a statistic over every image seen so far."""

    kind: str = ""

    def __init__(self, layers: dict[str, int]):
        self.layers = dict(layers)
        self.count = 0  # images seen

    def update(self, feats: dict[str, torch.Tensor]) -> None:
        batch = None
        for layer, channels in self.layers.items():
            x = feats[layer]
            if x.dim() != 3 or x.shape[-1] != channels:
                raise ValueError(f"layer {layer}: expected [B, P, {channels}], got {tuple(x.shape)}")
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ValueError("all layers of one update must hold the same images")
            self._update_layer(layer, x)
        self.count += int(batch or 0)

    def _update_layer(self, layer: str, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check_mergeable(self, other: Reducer) -> None:
        if type(other) is not type(self) or other.layers != self.layers:
            raise IncompatibleVDNAError(f"cannot merge {other!r} into {self!r}")

    def merge(self, other: Reducer) -> Reducer:
        """Fold ``other`` into ``self`` (in place) and return self."""
        raise NotImplementedError  # pragma: no cover - abstract

    def result(self) -> dict:
        raise NotImplementedError  # pragma: no cover - abstract

    def state(self) -> dict[str, np.ndarray]:
        """The exact partial state as plain arrays (for npz files written by job shards)."""
        out = {"count": np.array(self.count, dtype=np.int64)}
        for name in self._state_fields:
            for layer, t in getattr(self, name).items():
                out[f"{name}/{layer}"] = t.detach().cpu().numpy()
        return out

    def load_state(self, arrays) -> Reducer:
        """Restore a state written by `state` (into a reducer built with the same layers)."""
        self.count = int(arrays["count"])
        for name in self._state_fields:
            target = getattr(self, name)
            for layer in self.layers:
                key = f"{name}/{layer}"
                if key in arrays:
                    target[layer] = torch.from_numpy(np.array(arrays[key]))
        return self

    _state_fields: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={len(self.layers)}, images={self.count})"


class HistogramReducer(Reducer):
    """Per-neuron int64 histograms over every position of every image, binned with vdna's normalisation."""

    kind = "histogram"
    _state_fields = ("counts",)

    def __init__(
        self, layers: dict[str, int], bins: int, ranges: Ranges, device="cpu", precision: str = "fp64"
    ):
        super().__init__(layers)
        ranges.check_covers(self.layers)
        if precision not in PRECISIONS:
            raise ValueError(f"histogram precision must be one of {PRECISIONS}, got {precision!r}")
        self.bins = int(bins)
        self.ranges = ranges
        self.precision = precision  # the normalisation's arithmetic (neuroprint.kernels.histogram)
        self.params = {}
        self.counts = {}
        for layer, channels in self.layers.items():
            mean, std = norm_params(ranges.mins[layer], ranges.maxs[layer])
            self.params[layer] = (mean.to(device), std.to(device))
            self.counts[layer] = torch.zeros(channels, self.bins, dtype=torch.int64, device=device)

    def _update_layer(self, layer: str, x: torch.Tensor) -> None:
        mean, std = self.params[layer]
        if mean.device != x.device:
            mean, std = mean.to(x.device), std.to(x.device)
            self.params[layer] = (mean, std)
            self.counts[layer] = self.counts[layer].to(x.device)
        neuron_histogram(x, mean, std, self.bins, out=self.counts[layer], precision=self.precision)

    def merge(self, other: Reducer) -> HistogramReducer:
        self._check_mergeable(other)
        if other.bins != self.bins or other.ranges.digest != self.ranges.digest:
            raise IncompatibleVDNAError("cannot merge histograms with different bins or ranges")
        if other.precision != self.precision:
            raise IncompatibleVDNAError(
                f"cannot merge histograms binned in {other.precision} with histograms binned in {self.precision}"
            )
        for layer in self.layers:
            self.counts[layer] += other.counts[layer].to(self.counts[layer].device)
        self.count += other.count
        return self

    def result(self) -> dict[str, torch.Tensor]:
        return {layer: c.cpu() for layer, c in self.counts.items()}


def _image_means_f64(x: torch.Tensor) -> torch.Tensor:
    """float64 [B, C]: ``x.to(torch.float64).mean(dim=1)`` of activations [B, P, C], the same numbers (each
    image's mean is its own reduction). On the CPU a few images at a time, so that the float64 copy stays
    within one histogram chunk: a whole-batch copy (205 MB for resnet18's first stage at batch 32) costs
    ten times the arithmetic in page faults."""
    b, p, c = x.shape
    step = b if x.is_cuda else images_per_chunk(p * c, b)
    if step >= b:
        return x.to(torch.float64).mean(dim=1)
    return torch.cat([x[i : i + step].to(torch.float64).mean(dim=1) for i in range(0, b, step)])


class _MomentReducer(Reducer):
    """Count, mean and centred second moment of per-image spatial means, in float64."""

    full_covariance = False
    _state_fields = ("mean", "m2")

    def state(self) -> dict[str, np.ndarray]:
        out = super().state()
        for layer, n in self.n.items():
            out[f"n/{layer}"] = np.array(n, dtype=np.int64)
        return out

    def load_state(self, arrays) -> _MomentReducer:
        super().load_state(arrays)
        self.n = {layer: int(arrays[f"n/{layer}"]) for layer in self.layers}
        return self

    def __init__(self, layers: dict[str, int]):
        super().__init__(layers)
        self.n: dict[str, int] = dict.fromkeys(self.layers, 0)
        self.mean: dict[str, torch.Tensor] = {}
        self.m2: dict[str, torch.Tensor] = {}

    def _update_layer(self, layer: str, x: torch.Tensor) -> None:
        # vdna averages every image over its positions first (in float64); the statistic is over images.
        v = _image_means_f64(x)
        nb = v.shape[0]
        if nb == 0:
            return
        mb = v.mean(dim=0)
        c = v - mb
        m2b = c.T @ c if self.full_covariance else (c * c).sum(dim=0)
        self._combine(layer, nb, mb, m2b)

    def _combine(self, layer: str, nb: int, mb: torch.Tensor, m2b: torch.Tensor) -> None:
        na = self.n[layer]
        if na == 0:
            self.n[layer], self.mean[layer], self.m2[layer] = nb, mb.clone(), m2b.clone()
            return
        ma, m2a = self.mean[layer], self.m2[layer]
        mb, m2b = mb.to(ma.device), m2b.to(ma.device)
        n = na + nb
        delta = mb - ma
        self.mean[layer] = ma + delta * (nb / n)
        w = na * nb / n
        extra = torch.outer(delta, delta) * w if self.full_covariance else delta * delta * w
        self.m2[layer] = m2a + m2b + extra
        self.n[layer] = n

    def merge(self, other: Reducer) -> _MomentReducer:
        self._check_mergeable(other)
        for layer in self.layers:
            if other.n[layer]:
                self._combine(layer, other.n[layer], other.mean[layer], other.m2[layer])
        self.count += other.count
        return self

    def _mean_and_m2(self, layer: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        n = self.n[layer]
        channels = self.layers[layer]
        if n == 0:
            shape = (channels, channels) if self.full_covariance else (channels,)
            return torch.zeros(channels, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64), 0
        return self.mean[layer].cpu(), self.m2[layer].cpu(), n


class GaussianReducer(_MomentReducer):
    """Per-neuron mean and variance (correction 1) of per-image spatial means: vdna's "gaussian"."""

    kind = "gaussian"

    def result(self) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for layer in self.layers:
            mean, m2, n = self._mean_and_m2(layer)
            # vdna sets the variance of a one-image VDNA to 0.
            var = m2 / (n - 1) if n > 1 else torch.zeros_like(mean)
            out[layer] = {"mu": mean, "var": var}
        return out


class LayerGaussianReducer(_MomentReducer):
    """Mean and full covariance (correction 1) of per-image spatial means per layer: vdna's "layer-gaussian"."""

    kind = "layer-gaussian"
    full_covariance = True

    def result(self) -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for layer in self.layers:
            mean, m2, n = self._mean_and_m2(layer)
            sigma = m2 / (n - 1) if n > 1 else torch.zeros_like(m2)
            out[layer] = {"mu": mean, "sigma": sigma}
        return out


class ActivationRangesReducer(Reducer):
    """Per-neuron min and max over every position of every image: vdna's "activation-ranges"."""

    kind = "activation-ranges"
    _state_fields = ("min", "max")

    def __init__(self, layers: dict[str, int]):
        super().__init__(layers)
        self.min: dict[str, torch.Tensor] = {}
        self.max: dict[str, torch.Tensor] = {}

    def _fold(self, layer: str, lo: torch.Tensor, hi: torch.Tensor) -> None:
        if layer in self.min:
            self.min[layer] = torch.minimum(self.min[layer], lo.to(self.min[layer].device))
            self.max[layer] = torch.maximum(self.max[layer], hi.to(self.max[layer].device))
        else:
            self.min[layer], self.max[layer] = lo.clone(), hi.clone()

    def _update_layer(self, layer: str, x: torch.Tensor) -> None:
        if x.shape[0] == 0:
            return
        # over images and positions at once: a channel-major view would be copied by a reshape to rows
        self._fold(layer, x.amin(dim=(0, 1)).float(), x.amax(dim=(0, 1)).float())

    def merge(self, other: Reducer) -> ActivationRangesReducer:
        self._check_mergeable(other)
        for layer in other.min:
            self._fold(layer, other.min[layer], other.max[layer])
        self.count += other.count
        return self

    def result(self) -> dict[str, dict[str, torch.Tensor]]:
        if len(self.min) != len(self.layers):
            raise ValueError("no activations seen: activation ranges are undefined")
        return {layer: {"min": self.min[layer].cpu(), "max": self.max[layer].cpu()} for layer in self.layers}

    def to_ranges(self, origin: str) -> Ranges:
        res = self.result()
        return Ranges(
            {k: v["min"].double().numpy() for k, v in res.items()},
            {k: v["max"].double().numpy() for k, v in res.items()},
            origin,
        )


def make_reducer(
    distribution: str,
    layers: dict[str, int],
    *,
    ranges: Ranges | None = None,
    device="cpu",
    histogram_precision: str = "fp64",
) -> Reducer:
    kind, bins = parse_distribution(distribution)
    if kind == "histogram":
        if ranges is None:
            raise ValueError("a histogram reducer needs activation ranges")
        return HistogramReducer(layers, bins, ranges, device=device, precision=histogram_precision)
    if kind == "gaussian":
        return GaussianReducer(layers)
    if kind == "layer-gaussian":
        return LayerGaussianReducer(layers)
    return ActivationRangesReducer(layers)
