"""Maps of units over input pixels: gradients (vanilla, guided, SmoothGrad), occlusion, activation maps.

Batching: the gradient methods explain K units of N images with one forward and one backward per
chunk of rows. Each image is repeated K times along the batch (row ``n*K + k`` holds image n), row i
reads out its own unit, the values are summed and differentiated once. Rows of a network in eval mode
do not interact, so the gradient of row i is exactly the gradient of unit k on image n. We chose this
over ``torch.autograd.grad(..., is_grads_batched=True)`` (one forward, vmapped backward) because it
works for every module: custom autograd functions (the guided ReLU below), hooks and in-place ops need
no vmap support. It costs K forwards' worth of compute, which the batch dimension absorbs.

Occlusion evaluates every window of an image as one batch (in chunks) and reads every requested unit
(by default every channel of the layer) from the same forwards.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .layer import ExplainError, LayerProbe, LayerShape, Unit, UnitSet, as_units, to_cp

logger = logging.getLogger(__name__)

UnitsLike = Unit | int | str | Sequence[Unit | int | str]


class _GuidedReLUFunction(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients through positive inputs (Springenberg et al.)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0).to(grad.dtype)


_RELU_FUNCTIONS = frozenset(
    {
        F.relu,
        F.relu_,
        torch.relu,
        torch.relu_,
        torch.Tensor.relu,
        torch.Tensor.relu_,
        torch.nn.functional.relu,
    }
)


class guided_relu(TorchFunctionMode):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within this context every ReLU runs as the guided ReLU.

    A torch-function mode sees every call of ``F.relu``/``torch.relu``/``Tensor.relu`` and their
    in-place forms, so it catches ``nn.ReLU`` modules (which call ``F.relu``, in place or not, as timm's
    ResNets do with ``inplace=True``) and functional ReLUs written in a model's forward alike, wherever
    they sit: before the target layer, inside the target block, or in a branch. An in-place ReLU is
    replaced by an out-of-place one whose result is returned; models that use the return value (all
    of torch and timm do) compute the same forward. Not caught: ReLUs fused into compiled or scripted
    code, and clamp(min=0) written by hand.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELU_FUNCTIONS:
            return _GuidedReLUFunction.apply(args[0] if args else (kwargs or {})["input"])
        return func(*args, **(kwargs or {}))


def _as_batch(x: torch.Tensor, probe: LayerProbe) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ExplainError(f"images must be a tensor [N, 3, H, W], not {type(x).__name__}")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ExplainError(f"images must be [N, C, H, W]; got shape {tuple(x.shape)}")
    p = next(probe.model.parameters(), None)
    device = p.device if p is not None else x.device
    return x.detach().to(device=device, dtype=probe.dtype)


class LayerExplainer:
    """Base of every method: a model, one of its layers, and how many rows run per forward.

    model: any torch module (put it in eval mode: batch norm in training mode couples the rows of a
        batch) or a neuroprint ``Extractor``. layer: a module path, an extractor tap name, or "" for
        the model's output. max_rows: rows per forward/backward; results do not depend on it.
    """

    def __init__(self, model: nn.Module, layer: str | None = None, *, max_rows: int = 64):
        if max_rows < 1:
            raise ExplainError("max_rows must be at least 1")
        self.probe = LayerProbe(model, layer)
        self.max_rows = int(max_rows)
        self._shapes: dict[tuple[int, ...], LayerShape] = {}
        if getattr(model, "training", False):
            logger.warning("explaining a model in training mode: batch statistics couple the rows")

    @property
    def model(self) -> nn.Module:
        return self.probe.model

    @property
    def layer(self) -> str:
        return self.probe.layer

    def layer_shape(self, x: torch.Tensor) -> LayerShape:
        """Layout of the layer for inputs shaped like ``x`` (one probe forward, cached)."""
        key = tuple(x.shape[1:])
        if key not in self._shapes:
            with torch.no_grad():
                out, layout = self.probe(x[:1])
            self._shapes[key] = self.probe.shape(out, layout, (x.shape[-2], x.shape[-1]))
        return self._shapes[key]

    def compile_units(self, x: torch.Tensor, units: UnitsLike | None, reduce: str = "mean") -> UnitSet:
        shape = self.layer_shape(x)
        if units is None:
            unit_list = [Unit(channel=c, reduce=reduce) for c in range(shape.channels)]
        else:
            unit_list = as_units(units, reduce=reduce)
        return UnitSet(unit_list, shape, x.device, x.dtype)

    def layer_acts(self, x: torch.Tensor) -> torch.Tensor:
        out, layout = self.probe(x)
        return to_cp(out, layout)


BACKWARDS = ("auto", "shared", "copies")


class Saliency(LayerExplainer):
    """d unit / d input (vanilla gradient; not made absolute, as in dnnbrain).

    backward: how K units of one input get their gradients.
      "shared": one forward per input, then one backward over K one-hot cotangents batched with
        ``is_grads_batched`` (torch vmaps the backward graph; for convolution and batch-norm backward
        it loops over the K cotangents inside each node). Fewer FLOPs: 1.3-1.4x faster than "copies"
        on a 2-core CPU (resnet18, 64 units).
      "copies": K copies of the input run forward and backward as one batch, unit k read on copy k.
        K times the forward FLOPs, but each node is one large kernel.
      "auto": "shared" on the CPU, "copies" on GPUs, where many small per-cotangent kernels are the
        usual bottleneck (not yet measured on a GPU; bench/bench_explain.py --backward compares).
    All give the same gradients (tests compare them).
    """

    guided = False

    def __init__(
        self, model: nn.Module, layer: str | None = None, *, max_rows: int = 64, backward: str = "auto"
    ):
        super().__init__(model, layer, max_rows=max_rows)
        if backward not in BACKWARDS:
            raise ExplainError(f"unknown backward {backward!r}; valid: {', '.join(BACKWARDS)}")
        self.backward = backward

    def _strategy(self, device: torch.device) -> str:
        if self.backward != "auto":
            return self.backward
        return "shared" if device.type == "cpu" else "copies"

    def _gradients(
        self, build: Callable[[torch.Tensor], torch.Tensor], n_inputs: int, units: UnitSet
    ) -> torch.Tensor:
        """Gradients [n_inputs, K, C, H, W] of every unit at every input; ``build(rows)`` makes inputs.

        Each input runs forward once; the K units' gradients come from one batched backward over K
        one-hot cotangents (``is_grads_batched``: a vmap over the backward graph), so the forward is
        shared by the units. Rows in flight (inputs x units per backward) stay within ``max_rows``.
        """
        k = len(units)
        if self._strategy(units.device) == "copies":
            return self._gradients_copies(build, n_inputs, units)
        per_forward = max(1, self.max_rows // k)
        per_backward = max(1, min(k, self.max_rows // per_forward))
        chunks = []
        for start in range(0, n_inputs, per_forward):
            rows = torch.arange(start, min(start + per_forward, n_inputs))
            xin = build(rows).detach().requires_grad_(True)
            with torch.enable_grad():
                vals = units.matrix(self._acts_for_gradients(xin))  # [n, K]
            grads = xin.new_empty(len(rows), k, *xin.shape[1:])
            for u0 in range(0, k, per_backward):
                u = torch.arange(u0, min(u0 + per_backward, k))
                # cotangent b selects unit u[b] of every input: d vals[n, u[b]] / d xin[n]
                cot = vals.new_zeros(len(u), *vals.shape)
                cot[torch.arange(len(u)), :, u.to(vals.device)] = 1
                (g,) = torch.autograd.grad(
                    vals, xin, cot, is_grads_batched=True, retain_graph=u0 + per_backward < k
                )
                grads[:, u0 : u0 + len(u)] = g.transpose(0, 1)
            chunks.append(grads)
        return torch.cat(chunks)

    def _acts_for_gradients(self, xin: torch.Tensor) -> torch.Tensor:
        """The layer's activations with autograd, every ReLU guided when ``self.guided``."""
        if self.guided:
            with guided_relu():
                return self.layer_acts(xin)
        return self.layer_acts(xin)

    def _gradients_copies(
        self, build: Callable[[torch.Tensor], torch.Tensor], n_inputs: int, units: UnitSet
    ) -> torch.Tensor:
        """As ``_gradients``; row r = input r // K with unit r % K, ``max_rows`` rows per batch."""
        k = len(units)
        chunks = []
        for start in range(0, n_inputs * k, self.max_rows):
            rows = torch.arange(start, min(start + self.max_rows, n_inputs * k))
            xin = build(rows // k).detach().requires_grad_(True)
            with torch.enable_grad():
                acts = self._acts_for_gradients(xin)
                vals = units.values(acts, torch.arange(len(rows), device=acts.device), rows % k)
                (grad,) = torch.autograd.grad(vals.sum(), xin)
            chunks.append(grad)
        return torch.cat(chunks).reshape(n_inputs, k, *chunks[0].shape[1:])

    def attribute(self, images: torch.Tensor, units: UnitsLike, *, reduce: str = "mean") -> torch.Tensor:
        """Gradients [N, K, C, H, W] of every unit for every image."""
        x = _as_batch(images, self.probe)
        us = self.compile_units(x, units, reduce)
        return self._gradients(lambda r: x[r], x.shape[0], us)


class GuidedBackprop(Saliency):
    """Guided backpropagation: every ReLU of the forward (see ``guided_relu``) passes back only
    positive gradients through positive inputs.

    Difference from dnnbrain (``GuidedSaliencyImage.register_hooks``): dnnbrain walks
    ``model.modules()`` in registration order, puts a backward hook on each ``nn.ReLU`` module and stops
    at the target module, so ReLUs inside the target block (a ResNet block's own ReLUs, registered
    after the block itself), modules registered after the target even if they run before it, and
    functional ReLUs keep their plain gradient. Here the rule follows execution, not registration: every
    ReLU that runs up to the target's output is rectified, and with a module-path layer nothing after
    the target runs. The rule itself is the same (captum's too): grad_in = relu(grad_out) * (x > 0).
    """

    guided = True


def smoothgrad_noise(images: torch.Tensor, n_samples: int, noise_level: float, seed: int = 0) -> torch.Tensor:
    """Gaussian noise [N, S, C, H, W], std = noise_level * (max - min) of each image, from ``seed``."""
    x = images if images.ndim == 4 else images.unsqueeze(0)
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    span = (x.amax((1, 2, 3)) - x.amin((1, 2, 3))).to(torch.float64).cpu()
    noise = torch.randn((x.shape[0], n_samples, *x.shape[1:]), generator=g, dtype=torch.float64)
    return (noise * (noise_level * span).view(-1, 1, 1, 1, 1)).to(device=x.device, dtype=x.dtype)


class SmoothGrad(Saliency):
    """Mean gradient over noisy copies of each image (Smilkov et al.); ``guided=True`` smooths guided
    backprop. All samples of all units run batched."""

    def __init__(
        self,
        model: nn.Module,
        layer: str | None = None,
        *,
        guided: bool = False,
        max_rows: int = 64,
        backward: str = "auto",
    ):
        super().__init__(model, layer, max_rows=max_rows, backward=backward)
        self.guided = bool(guided)

    def attribute(
        self,
        images: torch.Tensor,
        units: UnitsLike,
        *,
        n_samples: int = 16,
        noise_level: float = 0.1,
        seed: int = 0,
        noise: torch.Tensor | None = None,
        reduce: str = "mean",
    ) -> torch.Tensor:
        """[N, K, C, H, W]. ``noise`` ([N, S, C, H, W]) overrides the seeded draw of ``smoothgrad_noise``."""
        x = _as_batch(images, self.probe)
        if noise is None:
            if n_samples < 1:
                raise ExplainError("n_samples must be at least 1")
            noise = smoothgrad_noise(x, n_samples, noise_level, seed)
        noise = noise.to(device=x.device, dtype=x.dtype)
        if noise.ndim != 5 or noise.shape[0] != x.shape[0] or noise.shape[2:] != x.shape[1:]:
            raise ExplainError(f"noise must be [N, S, C, H, W]; got {tuple(noise.shape)}")
        s = noise.shape[1]
        us = self.compile_units(x, units, reduce)
        k = len(us)
        # input r = n * S + s is noisy copy s of image n; every unit shares the copy's forward.
        copy = lambda r: x[r // s] + noise.reshape(-1, *x.shape[1:])[r]  # noqa: E731
        grads = self._gradients(copy, x.shape[0] * s, us)
        return grads.reshape(x.shape[0], s, k, *x.shape[1:]).mean(1)


@dataclass
class OcclusionMaps:
    """Occlusion discrepancy of K units on N images."""

    maps: torch.Tensor  # [N, K, H, W]: per pixel, mean discrepancy of the windows covering it (captum's rule)
    grid: torch.Tensor  # [N, K, nh, nw]: discrepancy (clean - occluded) for each window position
    clean: torch.Tensor  # [N, K]: unit values on the unoccluded images
    starts: tuple[list[int], list[int]]  # window top and left edges along y and x
    units: list[Unit]


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window positions 0, stride, ... : ceil((size - window) / stride) + 1 of them, the last one cut by
    the edge when stride does not divide (captum's Occlusion rule)."""
    if window > size:
        raise ExplainError(f"occlusion window {window} is larger than the image side {size}")
    if window < 1 or stride < 1:
        raise ExplainError("occlusion window and stride must be positive")
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


def _cover(size: int, starts: list[int], window: int, dtype: torch.dtype, device) -> torch.Tensor:
    m = torch.zeros(len(starts), size, dtype=dtype, device=device)
    for i, s in enumerate(starts):
        m[i, s : s + window] = 1
    return m


class Occlusion(LayerExplainer):
    """Occluder discrepancy maps: slide a baseline-filled window over the image and record how much each
    unit drops (dnnbrain's OccluderDiscrepancyMapping, captum's Occlusion)."""

    _field = None  # the layer's traced receptive field (False: not traceable), for region="field"

    def attribute(
        self,
        images: torch.Tensor,
        units: UnitsLike | None = None,
        *,
        window: int | tuple[int, int] = 11,
        stride: int | tuple[int, int] = 2,
        baseline: float | torch.Tensor = 0.0,
        statistic: str = "mean",
        progress: Callable[[int], None] | None = None,
        region: tuple[tuple[int, int], tuple[int, int]] | str | None = None,
    ) -> OcclusionMaps:
        """units=None reads every channel of the layer pooled with ``statistic`` (mean or max).

        region: ((y0, y1), (x0, x1)), half-open input pixels outside which occluding cannot change
        the units (their theoretical receptive field, ``ReceptiveField.region``): windows that miss
        it are not run and get discrepancy 0, which is what running them would give. "field": the
        union of the units' traced receptive fields when every unit sits at a (y, x) position of a
        spatial layer; otherwise (pooled or weights units, global or untraceable layers) every window.
        """
        x = _as_batch(images, self.probe)
        wh, ww = (window, window) if isinstance(window, int) else window
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        h, w = x.shape[-2:]
        ys, xs = window_starts(h, wh, sh), window_starts(w, ww, sw)
        us = self.compile_units(x, units, statistic)
        rows_y = _cover(h, ys, wh, x.dtype, x.device)  # [nh, H]
        cols_x = _cover(w, xs, ww, x.dtype, x.device)  # [nw, W]
        masks = (rows_y[:, None, :, None] * cols_x[None, :, None, :]).reshape(-1, 1, h, w)  # [nh*nw, 1, H, W]
        base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        if isinstance(region, str):
            if region != "field":
                raise ExplainError(f"region is ((y0, y1), (x0, x1)), 'field' or None, not {region!r}")
            region = self._field_region(us.units, (h, w))
        run = torch.arange(masks.shape[0], device=x.device)
        if region is not None:
            (ry0, ry1), (rx0, rx1) = region
            hit_y = torch.tensor([s < ry1 and s + wh > ry0 for s in ys], dtype=torch.bool)
            hit_x = torch.tensor([s < rx1 and s + ww > rx0 for s in xs], dtype=torch.bool)
            run = run[(hit_y[:, None] & hit_x[None, :]).flatten().to(x.device)]
        grids, cleans = [], []
        with torch.no_grad():
            clean = us.matrix(self.layer_acts(x))  # [N, K]
            for n in range(x.shape[0]):
                img = x[n : n + 1]
                occ = clean[n][None, :].repeat(masks.shape[0], 1)  # windows not run: no change
                for start in range(0, len(run), self.max_rows):
                    idx = run[start : start + self.max_rows]
                    m = masks[idx]
                    occluded = img * (1 - m) + base * m
                    occ[idx] = us.matrix(self.layer_acts(occluded))
                grids.append((clean[n][None, :] - occ).T.reshape(len(us), len(ys), len(xs)))
                cleans.append(clean[n])
                if progress is not None:
                    progress(1)
        grid = torch.stack(grids)  # [N, K, nh, nw]
        # Each window adds its discrepancy to the pixels it covers; the map is that sum over the number
        # of windows covering each pixel. Windows are products of a row band and a column band, so the
        # sum is rows_y^T @ grid @ cols_x (no [windows, H, W] tensor).
        total = torch.einsum("yh,nkyx,xw->nkhw", rows_y, grid, cols_x)
        coverage = rows_y.sum(0)[:, None] * cols_x.sum(0)[None, :]
        # a stride larger than the window leaves pixels no window covers: their map is 0
        maps = torch.where(coverage > 0, total / coverage.clamp(min=1), torch.zeros_like(total))
        return OcclusionMaps(maps, grid, torch.stack(cleans), (ys, xs), us.units)

    def _field_region(self, units: list[Unit], hw: tuple[int, int]):
        """Union of the traced receptive fields of neuron units, or None when that does not apply."""
        if not self.layer or not all(u.weights is None and isinstance(u.position, tuple) for u in units):
            return None
        if self._field is None:
            from .rf import receptive_field

            try:
                self._field = receptive_field(self.model, self.layer)
            except ExplainError as err:  # not a traceable conv/pool graph: every window runs
                logger.info("occlusion runs every window: no receptive field for %s (%s)", self.layer, err)
                self._field = False
        if self._field is False or self._field.is_global:
            return None
        boxes = [self._field.region(u.position[0], u.position[1], hw) for u in units]
        return (
            (min(b[0][0] for b in boxes), max(b[0][1] for b in boxes)),
            (min(b[1][0] for b in boxes), max(b[1][1] for b in boxes)),
        )


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")


class ActivationMap(LayerExplainer):
    """A unit's activation over the layer's grid, resampled to the input size (dnnbrain's
    UpsamplingActivationMapping). Units: channels, or weights units (weighted sum over channels at
    each position)."""

    def attribute(
        self,
        images: torch.Tensor,
        units: UnitsLike | None = None,
        *,
        mode: str = "bicubic",
        size: tuple[int, int] | None = None,
        threshold: float | None = None,
        align_corners: bool | None = None,
    ) -> torch.Tensor:
        """[N, K, H, W]. threshold in [0, 1]: values below that quantile of each map become 0 (0.58 keeps
        the top 42%, as dnnbrain's interp_threshold)."""
        if mode not in INTERPOLATIONS:
            raise ExplainError(f"unknown interpolation {mode!r}; valid: {', '.join(INTERPOLATIONS)}")
        if threshold is not None and not 0 <= threshold <= 1:
            raise ExplainError("threshold must be in [0, 1]")
        x = _as_batch(images, self.probe)
        us = self.compile_units(x, units)
        shape = us.shape
        if shape.grid is None:
            raise ExplainError(f"layer {self.layer!r} has no spatial grid to map")
        for u in us.units:
            if u.weights is None and (u.channel is None or u.position is not None):
                raise ExplainError(f"activation maps take channel or weights units, not {u.label!r}")
        with torch.no_grad():
            acts = self.layer_acts(x)[:, :, shape.prefix :]  # [N, C, H*W]
            per_unit = []
            for k, u in enumerate(us.units):
                if u.weights is None:
                    per_unit.append(acts[:, u.channel])
                else:
                    per_unit.append((acts * us._weights[k][None, :, shape.prefix :]).sum(1))
            maps = torch.stack(per_unit, 1).reshape(x.shape[0], len(us), *shape.grid)
            kwargs = {}
            if mode in ("bilinear", "bicubic"):
                kwargs["align_corners"] = bool(align_corners) if align_corners is not None else False
            maps = F.interpolate(maps, size=size or tuple(x.shape[-2:]), mode=mode, **kwargs)
            if threshold is not None:
                flat = maps.flatten(2)
                q = torch.quantile(flat.to(torch.float64), threshold, dim=2, keepdim=True).to(flat.dtype)
                maps = torch.where(flat >= q, flat, torch.zeros_like(flat)).reshape(maps.shape)
        return maps
