"""Receptive fields: theoretical (by tracing the module graph with torch.fx) and empirical (from maps).

Theoretical: every node of the traced graph carries, per spatial axis, the field of its unit 0 as
(size, jump, left): the field spans input pixels ``left .. left + size - 1`` and unit i's field is
shifted by ``i * jump``. A convolution or pooling with kernel k, stride s, padding p, dilation d maps
(size, jump, left) to (size + (k - 1) d jump, jump s, left - p jump). Pointwise ops keep it; an op
with several inputs (a residual add, a concatenation) takes the union of their fields, which must
share one jump. Global pooling, linear layers and attention make a field global (the whole input), and
so do layout changes (flatten, reshape, permute) that turn a map into tokens: a ViT's patch projection
has a 16x16 field and every token after it is global; any op after a global field stays global.
Because the graph is traced, branches (ResNet shortcuts, Inception mixes) are followed as they are
wired, not as a list of layers; AlexNet, VGG and ResNet are special cases.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .layer import ExplainError


@dataclass(frozen=True)
class ReceptiveField:
    """Theoretical receptive field of the units of one layer, in input pixels (pixel i has centre i)."""

    size: tuple[int, int] | None  # (height, width) of one unit's field; None: global (the whole input)
    stride: tuple[int, int]  # input pixels between neighbouring units ("jump")
    start: tuple[float, float]  # centre of unit (0, 0)'s field; may be negative (padding)

    @property
    def is_global(self) -> bool:
        return self.size is None

    def region(
        self, y: int, x: int, input_size: tuple[int, int] | None = None
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """((y0, y1), (x0, x1)), half-open, of unit (y, x); clipped to ``input_size`` when given."""
        if self.size is None:
            if input_size is None:
                raise ExplainError("a global receptive field needs input_size to give a region")
            return (0, input_size[0]), (0, input_size[1])
        out = []
        for i, (pos, size, jump, centre) in enumerate(zip((y, x), self.size, self.stride, self.start)):
            lo = int(round(centre - (size - 1) / 2)) + pos * jump
            hi = lo + size
            if input_size is not None:
                lo, hi = max(lo, 0), min(hi, input_size[i])
            out.append((lo, hi))
        return out[0], out[1]


# per axis: (size, jump, left); None for a global field
_Axis = tuple[int, int, int]
_Field = tuple[_Axis, _Axis] | str | None  # "global" or None (node carries no image field)

_GLOBAL = "global"

_POINTWISE_MODULES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
    nn.LocalResponseNorm,
    nn.GroupNorm,  # its statistics span the map; like every RF convention, we count only the data path
    nn.InstanceNorm2d,
    nn.LayerNorm,
)
_GLOBAL_MODULES = (
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Linear,
    nn.Flatten,
    nn.MultiheadAttention,
)
_POINTWISE_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.neg,
    operator.iadd,
    operator.imul,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.cat,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    F.relu,
    F.relu6,
    F.gelu,
    F.silu,
    F.hardswish,
    F.hardsigmoid,
    F.leaky_relu,
    F.elu,
    F.dropout,
    F.batch_norm,
    F.layer_norm,
    F.group_norm,
}
_POINTWISE_METHODS = {
    "add", "add_", "mul", "mul_", "sub", "div", "relu", "relu_", "sigmoid", "tanh", "clamp",
    "contiguous", "float", "to", "type_as", "clone", "detach", "__add__", "__mul__",
}  # fmt: skip
_GLOBAL_FUNCTIONS = {
    torch.flatten,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.linear,
    torch.matmul,
    torch.bmm,
    F.softmax,
    F.scaled_dot_product_attention,
}
_GLOBAL_METHODS = {
    "flatten",
    "mean",
    "amax",
    "sum",
    "view",
    "reshape",
    "softmax",
    "matmul",
    "permute",
    "transpose",
}
_LAYOUT_OPS = {
    "flatten",
    "transpose",
    "permute",
    "contiguous",
    "reshape",
    "view",
    torch.flatten,
    torch.transpose,
}
_SHAPE_METHODS = {"size", "dim"}  # results carry no image field


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window(field: _Field, kernel, stride, padding, dilation=1) -> _Field:
    if field is None or field == _GLOBAL:
        return field
    k, s, d = _pair(kernel), _pair(stride if stride not in (None, ()) else kernel), _pair(dilation)
    if isinstance(padding, str):
        if padding == "valid":
            p = (0, 0)
        elif padding == "same":
            p = tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
        else:
            raise ExplainError(f"unknown padding {padding!r}")
    else:
        p = _pair(padding)
    out = []
    for i, (size, jump, left) in enumerate(field):
        out.append((size + (k[i] - 1) * d[i] * jump, jump * s[i], left - p[i] * jump))
    return tuple(out)  # type: ignore[return-value]


def _union(fields: list[_Field], what: str) -> _Field:
    fields = [f for f in fields if f is not None]
    if not fields:
        return None
    if any(f == _GLOBAL for f in fields):
        return _GLOBAL
    out = []
    for axis in range(2):
        jumps = {f[axis][1] for f in fields}
        if len(jumps) > 1:
            raise ExplainError(f"{what} combines maps with different strides {sorted(jumps)}")
        left = min(f[axis][2] for f in fields)
        right = max(f[axis][2] + f[axis][0] for f in fields)
        out.append((right - left, jumps.pop(), left))
    return tuple(out)  # type: ignore[return-value]


def _module_field(mod: nn.Module, field: _Field, name: str) -> _Field:
    if field is None:
        return None
    if isinstance(mod, nn.Conv2d):
        return _window(field, mod.kernel_size, mod.stride, mod.padding, mod.dilation)
    if isinstance(mod, nn.MaxPool2d):
        return _window(field, mod.kernel_size, mod.stride, mod.padding, mod.dilation)
    if isinstance(mod, nn.AvgPool2d):
        return _window(field, mod.kernel_size, mod.stride, mod.padding)
    if isinstance(mod, _GLOBAL_MODULES):
        return _GLOBAL
    if isinstance(mod, _POINTWISE_MODULES) or type(mod).__module__ == "torch.nn.modules.activation":
        return field
    if field == _GLOBAL:
        return _GLOBAL  # what follows a global field stays global, whatever the module does
    raise ExplainError(
        f"receptive field: module {name!r} ({type(mod).__name__}) has no known spatial rule; "
        "supported: Conv2d, MaxPool2d, AvgPool2d, adaptive pools, pointwise layers"
    )


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _function_field(node: fx.Node, fields: dict[fx.Node, _Field], root: nn.Module) -> _Field:
    ins = [fields.get(a) for a in node.all_input_nodes]
    target = node.target
    if node.op == "call_method" and target in _SHAPE_METHODS:
        return None
    if target is getattr or target is operator.getitem:
        src = fields.get(node.args[0]) if isinstance(node.args[0], fx.Node) else None
        if target is operator.getitem and src is not None and isinstance(node.args[1], int):
            return src  # one output of a tuple-returning op
        return None if target is getattr else src
    if all(f is None for f in ins):
        return None
    if target in (F.max_pool2d, F.avg_pool2d):
        kernel = _arg(node, 1, "kernel_size")
        stride = _arg(node, 2, "stride", None)
        padding = _arg(node, 3, "padding", 0)
        dilation = _arg(node, 4, "dilation", 1) if target is F.max_pool2d else 1
        return _window(fields.get(node.args[0]), kernel, stride, padding, dilation)
    if target is F.conv2d:
        weight = node.args[1]
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            raise ExplainError("receptive field: F.conv2d with a computed weight cannot be traced")
        kernel = tuple(_get_attr(root, str(weight.target)).shape[-2:])
        return _window(
            fields.get(node.args[0]),
            kernel,
            _arg(node, 3, "stride", 1),
            _arg(node, 4, "padding", 0),
            _arg(node, 5, "dilation", 1),
        )
    if node.op == "call_function" and target in _POINTWISE_FUNCTIONS:
        return _union(ins, f"{getattr(target, '__name__', target)}")
    if node.op == "call_method" and target in _POINTWISE_METHODS:
        return _union(ins, str(target))
    if (node.op == "call_function" and target in _GLOBAL_FUNCTIONS) or (
        node.op == "call_method" and target in _GLOBAL_METHODS
    ):
        return _GLOBAL
    if all(f is None or f == _GLOBAL for f in ins):
        # Downstream of a global field (e.g. a ViT's tokens after their first reshape, or attention's
        # unbind/split) every value may depend on the whole input: no rule is needed.
        return _GLOBAL
    raise ExplainError(
        f"receptive field: no spatial rule for {node.op} {getattr(target, '__name__', target)!r}"
    )


def _get_attr(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _to_rf(field: _Field) -> ReceptiveField | None:
    if field is None:
        return None
    if field == _GLOBAL:
        return ReceptiveField(None, (0, 0), (0.0, 0.0))
    size = (field[0][0], field[1][0])
    stride = (field[0][1], field[1][1])
    start = tuple(field[i][2] + (field[i][0] - 1) / 2 for i in range(2))
    return ReceptiveField(size, stride, start)  # type: ignore[arg-type]


def _root_of(model: nn.Module) -> tuple[nn.Module, bool]:
    """The module to trace, and whether its output is a dict of extractor taps."""
    from neuroprint.extractors import Extractor

    if not isinstance(model, Extractor):
        return model, False
    backbone = model.backbone
    if type(backbone).__name__ == "TimmTaps":
        return backbone.net, False  # its taps are module paths, and hooks are invisible to fx
    return backbone, True


class ReceptiveFieldTable(dict):
    """{layer: ReceptiveField} of one network, in graph order."""

    def region(
        self, layer: str, y: int, x: int, input_size: tuple[int, int] | None = None
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """Input pixels ((y0, y1), (x0, x1)), half-open, of unit (y, x) of ``layer``."""
        if layer not in self:
            import difflib

            close = difflib.get_close_matches(layer, list(self), n=5)
            hint = f"close: {', '.join(close)}" if close else f"e.g. {', '.join(list(self)[:8])}"
            raise ExplainError(f"no receptive field for layer {layer!r}; {hint}")
        return self[layer].region(y, x, input_size)


def receptive_fields(model: nn.Module) -> ReceptiveFieldTable:
    """Theoretical receptive field of every module output (and every extractor tap) of ``model``.

    Keys are module paths (a block's field is that of its last op) and, for registered extractors, tap
    names. Raises ExplainError naming the first op with no known spatial rule.
    """
    root, returns_taps = _root_of(model)
    try:
        graph = fx.symbolic_trace(root)
    except Exception as err:
        raise ExplainError(f"receptive field: the model cannot be traced with torch.fx ({err})") from err
    fields: dict[fx.Node, _Field] = {}
    owner: dict[str, fx.Node] = {}
    first_input = True
    taps: dict[str, fx.Node] = {}
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            fields[node] = ((1, 1, 0), (1, 1, 0)) if first_input else None
            first_input = False
            continue
        if node.op == "get_attr":
            fields[node] = None
            continue
        if node.op == "output":
            out = node.args[0]
            if returns_taps and isinstance(out, dict):
                taps = {k: v for k, v in out.items() if isinstance(v, fx.Node)}
            continue
        if node.op == "call_module":
            ins = [fields.get(a) for a in node.all_input_nodes]
            src = ins[0] if ins else None
            fields[node] = _module_field(graph.get_submodule(node.target), src, node.target)
        else:
            fields[node] = _function_field(node, fields, graph)
        for path in node.meta.get("nn_module_stack", {}) or {}:
            owner[path] = node
        if node.op == "call_module":
            owner[node.target] = node
    result = ReceptiveFieldTable()
    for path, node in owner.items():
        rf = _to_rf(fields.get(node))
        if rf is not None:
            result[path] = rf
    for tap, node in taps.items():
        # taps are laid out as [B, H*W, C]: the field is that of the map before the reshaping
        while node.target in _LAYOUT_OPS and node.args and isinstance(node.args[0], fx.Node):
            node = node.args[0]
        rf = _to_rf(fields.get(node))
        if rf is not None:
            result[tap] = rf
    return result


def receptive_field(model: nn.Module, layer: str) -> ReceptiveField:
    """Theoretical receptive field of ``layer`` (a module path, or a registered extractor's tap)."""
    table = receptive_fields(model)
    table.region(layer, 0, 0, (1, 1))  # raises, with close names, for an unknown layer
    return table[layer]


@dataclass
class EmpiricalField:
    """Where a unit's maps concentrate over a set of images."""

    mean_map: torch.Tensor  # [H, W]: mean of the per-image maps, each scaled to max |value| = 1
    region: tuple[tuple[int, int], tuple[int, int]]  # half-open bounding box of mean_map >= threshold
    area: int  # pixels of mean_map >= threshold
    threshold: float


def empirical_field(maps: torch.Tensor, threshold: float = 0.5) -> EmpiricalField:
    """Empirical receptive field of one unit from its maps over many images ([N, H, W], e.g. occlusion
    discrepancy maps or activation maps of one neuron): each map is scaled to max |value| 1, the maps
    are averaged, and the field is where the mean reaches ``threshold`` of its peak."""
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ExplainError(f"maps must be [N, H, W] with N >= 1; got {tuple(maps.shape)}")
    if not 0 < threshold <= 1:
        raise ExplainError("threshold must be in (0, 1]")
    m = maps.detach().to(torch.float64).abs()
    peak = m.flatten(1).amax(1).clamp(min=torch.finfo(torch.float64).tiny)
    mean = (m / peak[:, None, None]).mean(0)
    top = mean.max()
    keep = mean >= threshold * top if top > 0 else torch.zeros_like(mean, dtype=torch.bool)
    if not bool(keep.any()):
        return EmpiricalField(mean, ((0, 0), (0, 0)), 0, threshold)
    ys = torch.nonzero(keep.any(1)).flatten()
    xs = torch.nonzero(keep.any(0)).flatten()
    region = ((int(ys[0]), int(ys[-1]) + 1), (int(xs[0]), int(xs[-1]) + 1))
    return EmpiricalField(mean, region, int(keep.sum()), threshold)
