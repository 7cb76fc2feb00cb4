"""A layer of any torch module, read as activations with gradients, and the units defined over it.

``LayerProbe`` runs a model up to one layer and returns that layer's output. The layer is named by
module path (``model.get_submodule``), by a tap name of a neuroprint ``Extractor``, or is the model's
output (``layer=""``). With a module path the forward stops right after the layer (a forward hook
raises): later modules cost nothing and an in-place op after the layer cannot overwrite the tensor
we differentiate.

Every layer is seen as ``[B, C, P]`` (channels by positions) whatever its layout:
``nchw`` ([B, C, H, W] conv maps), ``nlc`` ([B, P, C] tokens or an extractor's flattened positions),
``nc`` ([B, C] vectors such as logits). A ``Unit`` is one scalar per image read from that view.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from neuroprint._errors import NeuroprintError

REDUCTIONS = ("mean", "sum", "max")
_REDUCE_CODE = {name: i for i, name in enumerate(REDUCTIONS)}


class ExplainError(NeuroprintError, ValueError):
    """A layer, unit or setting of an explanation cannot be used."""


class _StopForward(Exception):
    """Raised by the layer hook once the layer has run: nothing after it is needed."""


@dataclass(frozen=True, eq=False)
class Unit:
    """One scalar per image read from a layer.

    channel only: the channel pooled over positions with ``reduce`` (dnnbrain's channel).
    channel and position: one neuron; position is (y, x) on a spatial grid or a token index.
    position only: a token (or spatial position) pooled over channels with ``reduce``.
    weights: sum(weights * activation) over the layer, weights shaped like one image's layer output
    (cnnpref's ``feature_mask``; a 0/1 mask sums the masked units, ``Unit.mask`` averages them).
    """

    channel: int | None = None  # channel index, or None to pool over channels
    position: int | tuple[int, int] | None = None  # (y, x), a flat position / token index, or None
    weights: torch.Tensor | None = None  # like one image's layer output ([C, H, W] also on token grids)
    reduce: str = "mean"  # pooling over the free axis: mean, sum or max (ignored with weights)

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS:
            raise ExplainError(f"unknown reduce {self.reduce!r}; valid: {', '.join(REDUCTIONS)}")
        if self.weights is not None and (self.channel is not None or self.position is not None):
            raise ExplainError("a weights unit takes no channel or position")
        if self.weights is None and self.channel is None and self.position is None:
            raise ExplainError("a unit needs a channel, a position or weights")

    @classmethod
    def mask(cls, mask: torch.Tensor) -> Unit:
        """The mean over the units where ``mask`` is true (a boolean tensor shaped like the layer)."""
        m = torch.as_tensor(mask).to(torch.float64)
        total = float(m.sum())
        if total <= 0:
            raise ExplainError("the feature mask selects no unit")
        return cls(weights=m / total)

    @classmethod
    def parse(cls, text: str, reduce: str = "mean") -> Unit:
        """``"12"`` channel 12; ``"12@3,4"`` channel 12 at (y=3, x=4); ``"12@7"`` channel 12 of token 7;
        ``"@7"`` token 7 pooled over channels."""
        m = re.fullmatch(r"\s*(\d*)\s*(?:@\s*(\d+)\s*(?:,\s*(\d+))?)?\s*", text)
        if m is None or (not m.group(1) and m.group(2) is None):
            raise ExplainError(f"cannot read unit {text!r}; write C, C@Y,X, C@T or @T")
        channel = int(m.group(1)) if m.group(1) else None
        position: int | tuple[int, int] | None = None
        if m.group(3) is not None:
            position = (int(m.group(2)), int(m.group(3)))
        elif m.group(2) is not None:
            position = int(m.group(2))
        return cls(channel=channel, position=position, reduce=reduce)

    @property
    def label(self) -> str:
        if self.weights is not None:
            return "weights"
        where = ""
        if isinstance(self.position, tuple):
            where = f"@{self.position[0]},{self.position[1]}"
        elif self.position is not None:
            where = f"@{self.position}"
        channel = "" if self.channel is None else str(self.channel)
        pooled = f":{self.reduce}" if self.channel is None or self.position is None else ""
        return f"{channel}{where}{pooled}"


def as_units(units: Unit | int | str | Sequence[Unit | int | str], reduce: str = "mean") -> list[Unit]:
    """Units from Unit objects, channel ints or ``Unit.parse`` strings."""
    if isinstance(units, (Unit, int, str)):
        units = [units]
    out = []
    for u in units:
        if isinstance(u, Unit):
            out.append(u)
        elif isinstance(u, bool):
            raise ExplainError("a unit cannot be a bool")
        elif isinstance(u, int):
            out.append(Unit(channel=int(u), reduce=reduce))
        elif isinstance(u, str):
            out.append(Unit.parse(u, reduce=reduce))
        else:
            raise ExplainError(f"a unit must be a Unit, an int or a string, not {type(u).__name__}")
    if not out:
        raise ExplainError("no unit given")
    return out


@dataclass(frozen=True)
class LayerShape:
    """How one image's layer output is laid out."""

    layout: str  # "nchw", "nlc" or "nc"
    channels: int
    positions: int
    grid: tuple[int, int] | None  # spatial (H, W) of the positions, when they form one
    prefix: int = 0  # leading non-spatial tokens (CLS, registers) of an "nlc" layer

    @property
    def sample_shape(self) -> tuple[int, ...]:
        if self.layout == "nchw":
            assert self.grid is not None
            return (self.channels, *self.grid)
        if self.layout == "nlc":
            return (self.positions, self.channels)
        return (self.channels,)


def infer_grid(positions: int, input_hw: tuple[int, int], max_prefix: int = 8) -> tuple[int, int, int] | None:
    """(prefix, H, W) with H*W + prefix == positions and H/W the input's aspect, or None."""
    h_in, w_in = input_hw
    for prefix in range(0, min(max_prefix, positions - 1) + 1):
        n = positions - prefix
        h = round(math.sqrt(n * h_in / w_in))
        for hh in (h - 1, h, h + 1):
            if hh > 0 and n % hh == 0:
                ww = n // hh
                if abs(hh / ww - h_in / w_in) <= 0.5 * h_in / w_in / max(hh, ww) + 1e-9 or hh * ww == n == 1:
                    return prefix, hh, ww
    return None


def to_cp(out: torch.Tensor, layout: str) -> torch.Tensor:
    """[B, C, P] view of a layer output."""
    if layout == "nchw":
        return out.flatten(2)
    if layout == "nlc":
        return out.transpose(1, 2)
    return out.unsqueeze(-1)


class LayerProbe:
    """Runs ``model`` on a batch and returns the output of ``layer`` (with autograd intact)."""

    def __init__(self, model: nn.Module, layer: str | None = None):
        if not isinstance(model, nn.Module):
            raise ExplainError(f"model must be a torch module, not {type(model).__name__}")
        self.model = model
        self.layer = layer or ""
        self._tap: str | None = None
        self._module: nn.Module | None = None
        self._nhwc = False
        from neuroprint.extractors import Extractor

        extractor = isinstance(model, Extractor)
        backbone = model.backbone if extractor else None
        if not self.layer:
            return
        if extractor and self.layer in model.layers:
            self._tap = self.layer
            # A timm extractor taps module paths: the module itself keeps the spatial layout.
            net = backbone.net
            if type(backbone).__name__ == "TimmTaps":
                self._module = self._find(net, self.layer)
                self._tap = None
                self._nhwc = getattr(net, "output_fmt", "NCHW") == "NHWC"
            return
        if extractor and self.layer in backbone.tap_names and type(backbone).__name__ != "TimmTaps":
            raise ExplainError(
                f"tap {self.layer!r} is not computed by this extractor; create it with layers=[{self.layer!r}]"
            )
        root = backbone.net if extractor else model
        self._module = self._find(root, self.layer)
        # timm's NHWC models (Swin, ...) say so; their maps are read as NCHW like every other
        self._nhwc = getattr(root, "output_fmt", "NCHW") == "NHWC"

    @staticmethod
    def _find(root: nn.Module, name: str) -> nn.Module:
        try:
            return root.get_submodule(name)
        except AttributeError:
            import difflib

            paths = [n for n, _ in root.named_modules() if n]
            close = difflib.get_close_matches(name, paths, n=5)
            hint = f"close: {', '.join(close)}" if close else f"e.g. {', '.join(paths[:8])}"
            raise ExplainError(f"the model has no layer {name!r}; {hint}") from None

    @property
    def dtype(self) -> torch.dtype:
        p = next(self.model.parameters(), None)
        return p.dtype if p is not None else torch.float32

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, str]:
        """(layer output, layout) for input batch ``x``."""
        if self._module is None:
            out = self.model(x)
            if self._tap is not None:
                out = out[self._tap]
                return out, _layout_of(out, tap=True)
        else:
            store: list[torch.Tensor] = []

            def hook(_m: nn.Module, _i: object, output: object) -> None:
                if isinstance(output, (tuple, list)):
                    output = output[0]
                store.append(output)
                raise _StopForward

            handle = self._module.register_forward_hook(hook)
            try:
                self.model(x)
            except _StopForward:
                pass
            finally:
                handle.remove()
            if not store:
                raise ExplainError(f"layer {self.layer!r} never ran in the model's forward")
            out = store[0]
            if self._nhwc and out.ndim == 4:
                out = out.permute(0, 3, 1, 2)
        if isinstance(out, dict):
            raise ExplainError("the model returns a dict; name the layer (a tap or a module path)")
        if not isinstance(out, torch.Tensor):
            raise ExplainError(f"layer {self.layer!r} returned {type(out).__name__}, not a tensor")
        return out, _layout_of(out, tap=False)

    def shape(self, out: torch.Tensor, layout: str, input_hw: tuple[int, int]) -> LayerShape:
        if layout == "nchw":
            return LayerShape("nchw", out.shape[1], out.shape[2] * out.shape[3], (out.shape[2], out.shape[3]))
        if layout == "nlc":
            found = infer_grid(out.shape[1], input_hw)
            grid = (found[1], found[2]) if found else None
            return LayerShape("nlc", out.shape[2], out.shape[1], grid, found[0] if found else 0)
        return LayerShape("nc", out.shape[1], 1, None)


def _layout_of(out: torch.Tensor, tap: bool) -> str:
    if out.ndim == 4 and not tap:
        return "nchw"
    if out.ndim == 3:
        return "nlc"
    if out.ndim == 2:
        return "nc"
    raise ExplainError(f"the layer output is {out.ndim}-D; explanations need 2-, 3- or 4-D layers")


class UnitSet:
    """Units compiled against one layer shape: index tensors for a vectorised read-out."""

    def __init__(self, units: Sequence[Unit], shape: LayerShape, device: torch.device, dtype: torch.dtype):
        self.units = list(units)
        self.shape = shape
        kinds, channels, positions, reduces = [], [], [], []
        self._weights: dict[int, torch.Tensor] = {}
        for k, u in enumerate(self.units):
            reduces.append(_REDUCE_CODE[u.reduce])
            if u.weights is not None:
                kinds.append(2)
                channels.append(0)
                positions.append(-1)
                self._weights[k] = self._canonical_weights(u.weights).to(device=device, dtype=dtype)
                continue
            kinds.append(0 if u.channel is not None else 1)
            if u.channel is not None and not 0 <= u.channel < shape.channels:
                raise ExplainError(f"channel {u.channel} is out of range: the layer has {shape.channels}")
            channels.append(u.channel if u.channel is not None else 0)
            positions.append(self._flat_position(u.position))
        self.kinds = kinds
        self.channel = torch.tensor(channels, dtype=torch.long, device=device)
        self.position = torch.tensor(positions, dtype=torch.long, device=device)
        self.reduce = torch.tensor(reduces, dtype=torch.long, device=device)
        self.device = device

    def __len__(self) -> int:
        return len(self.units)

    def _flat_position(self, position: int | tuple[int, int] | None) -> int:
        s = self.shape
        if position is None:
            return -1
        if isinstance(position, tuple):
            if s.grid is None:
                raise ExplainError(f"a {s.layout} layer has no (y, x) grid; give a flat position or token")
            y, x = position
            if not (0 <= y < s.grid[0] and 0 <= x < s.grid[1]):
                raise ExplainError(f"position {position} is outside the layer's {s.grid[0]}x{s.grid[1]} grid")
            return s.prefix + y * s.grid[1] + x
        if s.layout == "nc":
            raise ExplainError("a vector layer has no positions")
        if not 0 <= position < s.positions:
            raise ExplainError(f"position {position} is out of range: the layer has {s.positions}")
        return int(position)

    def _canonical_weights(self, w: torch.Tensor) -> torch.Tensor:
        w = torch.as_tensor(w)
        s = self.shape
        if s.layout == "nlc" and s.grid is not None and tuple(w.shape) == (s.channels, *s.grid):
            # [C, H, W] weights over a token layer's spatial grid; prefix tokens (CLS) weigh nothing
            spatial = w.reshape(s.channels, -1)
            return torch.cat([spatial.new_zeros(s.channels, s.prefix), spatial], 1)
        if tuple(w.shape) != s.sample_shape:
            raise ExplainError(f"unit weights of shape {tuple(w.shape)}; the layer is {s.sample_shape}")
        if s.layout == "nchw":
            return w.reshape(s.channels, s.positions)
        if s.layout == "nlc":
            return w.transpose(0, 1)
        return w.reshape(s.channels, 1)

    @staticmethod
    def _pool(a: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        mean, total, peak = a.mean(1), a.sum(1), a.amax(1)
        return torch.where(code == 2, peak, torch.where(code == 1, total, mean))

    def values(self, acts: torch.Tensor, rows: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Value of unit ``units[i]`` on sample ``rows[i]`` of ``acts`` ([R, C, P]); shape [M].

        ``units`` lives on the host: rows are grouped by unit kind there, so no device sync happens.
        """
        units = units.cpu()
        kinds = torch.tensor(self.kinds, dtype=torch.long)[units]
        out = acts.new_zeros(units.shape[0])
        dev = acts.device
        for kind in (0, 1, 2):
            sel = torch.nonzero(kinds == kind).flatten()
            if sel.numel() == 0:
                continue
            u = units[sel].to(dev)
            r = rows.to(dev)[sel.to(dev)]
            if kind == 0:
                a = acts[r, self.channel[u]]  # [M, P]
                pos = self.position[u]
                picked = a.gather(1, pos.clamp(min=0)[:, None])[:, 0]
                val = torch.where(pos >= 0, picked, self._pool(a, self.reduce[u]))
            elif kind == 1:
                a = acts[r, :, self.position[u]]  # [M, C]
                val = self._pool(a, self.reduce[u])
            else:
                stacked = torch.stack([self._weights[int(k)] for k in units[sel]])
                val = (acts[r] * stacked).sum((1, 2))
            out = out.index_copy(0, sel.to(dev), val.to(out.dtype))
        return out

    def matrix(self, acts: torch.Tensor) -> torch.Tensor:
        """Every unit on every sample: [R, K]."""
        r, k = acts.shape[0], len(self.units)
        rows = torch.arange(r, device=acts.device).repeat_interleave(k)
        units = torch.arange(k).repeat(r)
        return self.values(acts, rows, units).reshape(r, k)
