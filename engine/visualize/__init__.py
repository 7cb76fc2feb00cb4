"""Preferred images and feature visualisations for every unit of a layer in one batched job.

The unit is the batch dimension: ``render`` optimises one image per unit, K units at once, each with
its own random initialisation and its own random transforms, on whatever device the model is on::

    from neuroprint import create_extractor
    from neuroprint.visualize import render

    ex = create_extractor("timm:resnet18", weights="random", layers=["layer3"])
    res = render(ex, "layer3", units=range(256), param="fft", size=128, steps=256)
    res.images          # [256, 3, 128, 128] in [0, 1]
    res.objective       # [256] final objective of each unit (no transforms)

Pieces (each usable alone): parameterisations (``PixelParam``, ``FFTParam`` with Lucid's
decorrelated colour, alpha channels with random / noise / adversarial backgrounds, a shared low-res
component, ``DGNParam`` on the fc6 generator with code bounds), objectives (``channel``, ``neuron``,
``feature_weights`` / ``feature_mask``, ``direction``, ``diversity``, ``alpha_mean_penalty``;
combine with + - * and unary -), per-item transforms (``Pad``, ``Jitter``, ``RandomScale``,
``RandomRotate``, ``Blur``) and optimisers (Adam, SGD, cnnpref's scheduled GD, L-BFGS).

Item k's randomness (initialisation, transforms, random backgrounds) comes from a generator seeded
by (seed, unit, occurrence of the unit), so a batch of K units gives the same images as K separate
runs (except with ``diversity`` or L-BFGS, which couple the items) and chunking changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .objectives import (
    Objective,
    VisContext,
    alpha_mean_penalty,
    channel,
    constant,
    direction,
    diversity,
    feature_mask,
    feature_weights,
    neuron,
)
from .optim import OPTIMIZERS, GDSchedule, ScheduledGD, make_optimizer
from .param import (
    COLOR_CORRELATION,
    DGNParam,
    FC6Generator,
    FFTParam,
    ImageParam,
    PixelParam,
    decorrelate_colors,
    fft_sample,
    load_generator,
    spectrum_scale,
    to_valid_rgb,
)
from .transforms import (
    Blur,
    Compose,
    Jitter,
    Pad,
    RandomRotate,
    RandomScale,
    gaussian_blur,
    standard_transforms,
)

__all__ = [
    "BACKGROUNDS",
    "COLOR_CORRELATION",
    "OPTIMIZERS",
    "PARAMS",
    "PRECISIONS",
    "Blur",
    "Compose",
    "DGNParam",
    "FC6Generator",
    "FFTParam",
    "GDSchedule",
    "ImageParam",
    "Jitter",
    "LayerReader",
    "Objective",
    "Pad",
    "PixelParam",
    "RandomRotate",
    "RandomScale",
    "ScheduledGD",
    "VisContext",
    "VisResult",
    "VisualizeError",
    "alpha_mean_penalty",
    "channel",
    "constant",
    "decorrelate_colors",
    "direction",
    "diversity",
    "feature_mask",
    "feature_weights",
    "fft_sample",
    "gaussian_blur",
    "item_generators",
    "layer_channels",
    "load_generator",
    "make_param",
    "neuron",
    "render",
    "spectrum_scale",
    "standard_transforms",
    "to_valid_rgb",
]

log = logging.getLogger(__name__)

PARAMS = ("fft", "pixel", "alpha", "dgn")
BACKGROUNDS = ("random", "noise", "adversarial")

try:
    from .._errors import NeuroprintError as _Base
except ImportError:  # pragma: no cover - the package always has it
    _Base = Exception


PRECISIONS = ("fp32", "bf16")


class VisualizeError(_Base, ValueError):
    """A layer, unit or setting of a visualisation cannot be used."""


class _Stop(Exception):
    """Raised by the last layer hook: nothing after the layers an objective reads is computed."""


# ----------------------------------------------------------------------------------------------
# Reading layers


def _as_bcp(t: torch.Tensor, nhwc: bool = False) -> tuple[torch.Tensor, tuple[int, int] | None]:
    """A layer output as [B, C, P] and its grid: NCHW (CNN; NHWC when the model says so), NLC
    (tokens), NC (vectors)."""
    if t.dim() == 4:
        if nhwc:
            t = t.permute(0, 3, 1, 2)
        return t.flatten(2), (int(t.shape[2]), int(t.shape[3]))
    if t.dim() == 3:
        return t.transpose(1, 2), None
    if t.dim() == 2:
        return t.unsqueeze(-1), (1, 1)
    raise VisualizeError(f"cannot read a layer output of shape {tuple(t.shape)}")


class LayerReader:
    """Runs ``model`` on images and returns the named layers as ``[B, C, P]`` (with autograd).

    ``model`` is any ``nn.Module`` (layers are module paths) or a neuroprint ``Extractor`` (module
    paths inside ``ex.backbone.net``, or its tap names). ``name:pre`` reads the input of the module.
    The forward stops right after the last needed layer. Models whose ``output_fmt`` is "NHWC"
    (timm's Swin, ...) have their 4-D layer outputs read channels-last.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str]):
        self.model = model
        self.layers = list(dict.fromkeys(layers))
        net = getattr(getattr(model, "backbone", None), "net", None)
        self.root = net if isinstance(net, nn.Module) else model
        self.nhwc = getattr(self.root, "output_fmt", "NCHW") == "NHWC"
        taps = getattr(model, "layers", None)
        self.modules: dict[str, nn.Module] = {}
        self.taps: list[str] = []
        for name in self.layers:
            path, _, kind = name.partition(":")
            if kind not in ("", "pre"):
                raise VisualizeError(f"layer {name!r}: the only suffix is ':pre' (the module's input)")
            try:
                self.modules[name] = self.root.get_submodule(path) if path else self.root
            except AttributeError:
                if isinstance(taps, dict) and path in taps and not kind:
                    self.taps.append(name)
                    continue
                names = [n for n, _ in self.root.named_modules() if n][:12]
                raise VisualizeError(
                    f"the model has no layer {path!r}; module paths look like: {', '.join(names)}, ..."
                ) from None

    def __call__(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int] | None]]:
        got: dict[str, torch.Tensor] = {}
        handles = []
        need = len(self.modules)

        def make_hook(name: str, pre: bool):
            def hook(_m, inputs, output=None):
                t = inputs[0] if pre else output
                if isinstance(t, (tuple, list)):
                    t = t[0]
                # A module input may be changed in place by the module itself; with several layers the
                # forward goes on past this one and later in-place ops could change it too.
                got[name] = t.clone() if pre or need > 1 or self.taps else t
                if len(got) == need and not self.taps:
                    raise _Stop

            return hook

        for name, mod in self.modules.items():
            pre = name.endswith(":pre")
            if pre:
                handles.append(mod.register_forward_pre_hook(make_hook(name, True)))
            else:
                handles.append(mod.register_forward_hook(make_hook(name, False)))
        out = None
        try:
            out = self.model(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.modules if n not in got]
        if missing:
            raise VisualizeError(f"layer(s) {missing} did not run in the model's forward")
        acts, grids = {}, {}
        for name, t in got.items():
            acts[name], grids[name] = _as_bcp(t, self.nhwc)
        for name in self.taps:
            t = out[name.partition(":")[0]]  # extractor taps are [B, P, C]
            acts[name], grids[name] = t.transpose(1, 2), None
        return acts, grids


def layer_channels(model: nn.Module, layer: str, size: int | tuple[int, int] = 64) -> int:
    """Number of channels of ``layer`` for an input of ``size`` (one grey probe image)."""
    h, w = (size, size) if isinstance(size, int) else size
    device = _model_device(model)
    with torch.no_grad():
        acts, _ = LayerReader(model, [layer])(torch.full((1, 3, h, w), 0.5, device=device))
    return int(acts[layer].shape[1])


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------
# Per-item randomness and parameterisations


def item_generators(units: Sequence[int], seed: int = 0) -> list[torch.Generator]:
    """One CPU generator per item, seeded by (seed, unit, occurrence of that unit in ``units``)."""
    seen: dict[int, int] = {}
    gens = []
    for u in units:
        u = int(u)
        occ = seen.get(u, 0)
        seen[u] = occ + 1
        key = (int(seed) * 1_000_003 + u) * 1_009 + occ
        gens.append(torch.Generator().manual_seed(key & 0x7FFF_FFFF_FFFF_FFFF))
    return gens


def make_param(
    kind: str,
    k: int,
    size: tuple[int, int],
    generators: Sequence[torch.Generator],
    *,
    seed: int = 0,
    **options,
) -> ImageParam:
    """Build a parameterisation by name (``PARAMS``); ``options`` go to its constructor.

    "dgn" takes ``generator`` (an ``FC6Generator``) or ``generator_weights`` (a file; random weights
    with a warning when neither is given) and ``code_bounds``.
    """
    if kind == "fft":
        return FFTParam(k, size, generators=generators, seed=seed, **options)
    if kind == "pixel":
        return PixelParam(k, size, generators=generators, seed=seed, **options)
    if kind == "alpha":
        return FFTParam(k, size, generators=generators, seed=seed, alpha=True, **options)
    if kind == "dgn":
        gen = options.pop("generator", None)
        weights = options.pop("generator_weights", None)
        if gen is None:
            if weights is None:
                log.warning("dgn: no generator weights given; using a randomly initialised generator")
            gen = load_generator(weights, seed=seed)
        return DGNParam(k, size, gen, generators=generators, seed=seed, **options)
    raise VisualizeError(f"unknown parameterisation {kind!r}; valid: {', '.join(PARAMS)}")


# ----------------------------------------------------------------------------------------------
# Rendering


@dataclass
class VisResult:
    """The outcome of ``render``: one row per unit, in the order of ``units``."""

    images: torch.Tensor  # [K, 3 or 4, H, W] in [0, 1] on CPU (4 = RGBA for the alpha parameterisation)
    units: list[int]
    objective: torch.Tensor  # [K] final objective, rendered image without random transforms
    initial: torch.Tensor  # [K] the same before the first step
    history: torch.Tensor  # [steps, K] objective of each step (with that step's transforms)
    settings: dict = field(default_factory=dict)
    codes: torch.Tensor | None = None  # [K, 4096] final DGN codes


def _resolve_transforms(transforms) -> list:
    if transforms is None:
        return []
    if isinstance(transforms, str):
        if transforms == "standard":
            return standard_transforms()
        if transforms == "none":
            return []
        raise VisualizeError(f"unknown transforms {transforms!r}; valid: 'standard', 'none' or a list")
    return list(transforms)


class _Run:
    """One batch of K items: parameterisation, background, transforms and the loss of a step."""

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        param: ImageParam,
        generators: Sequence[torch.Generator],
        *,
        transforms: Sequence,
        mean: torch.Tensor | None,
        std: torch.Tensor | None,
        background: str,
        reader: LayerReader,
        penalty: Objective | None = None,
        channels_last: bool = False,
        autocast: torch.dtype | None = None,
    ):
        self.model, self.objective, self.param = model, objective, param
        # Terms on the image itself (alpha penalty): counted once, never on the background half.
        self.penalty = penalty
        self.gens = list(generators)
        self.k = len(self.gens)
        self.transform = Compose(transforms)
        self.mean, self.std = mean, std
        self.reader = reader
        self.channels_last = channels_last
        self.autocast = autocast
        self.device = next(param.parameters()).device
        self.alpha = param.forward_shape()[1] == 4
        if background not in BACKGROUNDS:
            raise VisualizeError(f"unknown background {background!r}; valid: {', '.join(BACKGROUNDS)}")
        self.background = background
        self.bg_param = None
        if self.alpha and background == "adversarial":
            self.bg_param = FFTParam(self.k, param.size, generators=self.gens).to(self.device)

    def trainable(self) -> list[torch.Tensor]:
        ps = [p for p in self.param.parameters() if p.requires_grad]
        if self.bg_param is not None:
            ps += list(self.bg_param.parameters())
        return ps

    def _backdrop(self, shape: tuple[int, ...]) -> torch.Tensor:
        k, _, h, w = shape
        if self.background == "noise":
            return torch.stack([torch.rand((3, h, w), generator=g) for g in self.gens]).to(self.device)
        # Lucid's image_sample: a fresh 1/f^1.5 decorrelated spectrum per item and step.
        sample = fft_sample(k, (h, w), sd=0.4 * 20 ** (-0.5), decay_power=1.5, generators=self.gens)
        return sample.to(self.device)

    def _network_input(self, images: torch.Tensor, *, train: bool) -> tuple[torch.Tensor, int]:
        """Composite (alpha), transform, normalise. Returns the input and the number of rows."""
        x = images
        if self.alpha:
            rgb, a = images[:, :3], images[:, 3:4]
            if not train:
                bg = torch.full_like(rgb, 0.5)
                x = rgb * a + (1 - a) * bg
            elif self.bg_param is not None:
                bg = 0.5 * self.bg_param() + 0.5 * self._backdrop(rgb.shape)
                # Lucid's notebook: foreground learns against a fixed background, background against
                # a fixed foreground, in two halves of one batch.
                fg = rgb * a + (1 - a) * bg.detach()
                bgx = (rgb * a).detach() + (1 - a).detach() * bg
                x = torch.cat([fg, bgx])
            else:
                bg = self._backdrop(rgb.shape)
                x = rgb * a + (1 - a) * bg
        if train and self.transform.transforms:
            gens = self.gens if x.shape[0] == self.k else self.gens + self.gens
            x = self.transform(x, gens)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, x.shape[0]

    def values(self, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-item objective [K], per-item loss to minimise [K]) for the current parameters."""
        images = self.param()
        x, rows = self._network_input(images, train=train)
        if self.autocast is not None:
            with torch.autocast(x.device.type, dtype=self.autocast):
                acts, grids = self.reader(x)
            acts = {name: a.float() for name, a in acts.items()}  # objectives and losses in float32
        else:
            acts, grids = self.reader(x)
        ctx = VisContext(acts=acts, grids=grids, images=images, k=self.k)
        vals = self.objective(ctx)
        if self.penalty is not None:
            vals = vals + self.penalty(ctx)
        loss = -vals
        if rows > self.k:
            # The adversarial background of item k lowers item k's objective (second half of the batch).
            bg_ctx = VisContext(
                acts={n: a[self.k :] for n, a in acts.items()}, grids=grids, images=images, k=self.k
            )
            loss = loss + self.objective(bg_ctx)
        return vals, loss

    def project(self) -> None:
        self.param.project()


def render(
    model: nn.Module,
    layer: str | None = None,
    units: Sequence[int] | int | range | None = None,
    *,
    objective: Objective | Callable[[list[int]], Objective] | None = None,
    param: str | ImageParam = "fft",
    param_options: dict | None = None,
    size: int | tuple[int, int] = 128,
    steps: int = 256,
    optimizer: str = "adam",
    lr: float = 0.05,
    optimizer_options: dict | None = None,
    transforms: str | Sequence | None = "standard",
    normalize: tuple[Sequence[float], Sequence[float]] | None | str = "auto",
    background: str = "random",
    alpha_penalty: float = 1.0,
    alpha_target: float = 0.25,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = False,
    channels_last: bool | None = None,
    precision: str = "fp32",
) -> VisResult:
    """Optimise one image per unit, all units of a batch at once, on the model's device.

    model: an ``nn.Module`` or a neuroprint ``Extractor`` (left on its device; never moved).
    layer, units: the default objective is ``channel(layer, units)``; ``units`` defaults to every
        channel of ``layer``; an int means that unit alone.
    objective: an ``Objective`` with per-item targets for all ``units`` (then no chunking), or a
        function ``units_of_chunk -> Objective`` (chunked by ``batch_size``).
    param: "fft" (Lucid's decorrelated Fourier image), "pixel", "alpha" (RGBA, composited over
        ``background``, with ``alpha_penalty * (mean alpha - alpha_target)^2`` subtracted), "dgn"
        (fc6 generator; ``param_options`` take ``generator`` / ``generator_weights`` and
        ``code_bounds``), or a built ``ImageParam`` with one item per unit.
    optimizer: "adam", "sgd", "gd" (cnnpref's schedules; ``optimizer_options`` are ``GDSchedule``
        fields), "lbfgs" (one iteration per step of a projected L-BFGS with box bounds, run as an
        independent problem per item: own history and line search, bounds held at every
        evaluation; ``optimizer_options``: history_size, max_ls, c1) or "lbfgs-joint"
        (``torch.optim.LBFGS`` over the whole batch, bounds by clamping after the step).
    transforms: "standard" (Lucid's pad / jitter / scale / rotate / jitter, drawn per item), "none"
        or a list of transform objects.
    normalize: (mean, std) applied after the transforms; "auto" takes an Extractor's recipe, else
        ImageNet's; None feeds [0, 1] pixels.
    channels_last: feed the network channels-last images (the model itself is not touched); None:
        on the CPU (oneDNN: 1.2x for a ResNet here) and with bf16, not for fp32 on GPUs.
    precision: "fp32", or "bf16" (the network runs under bf16 autocast; parameterisation, transforms,
        objectives and the optimiser stay fp32): about 2x on CPUs with AVX512-BF16 and on GPUs.
    """
    if steps < 0:
        raise VisualizeError(f"steps must be >= 0, not {steps}")
    if precision not in PRECISIONS:
        raise VisualizeError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if optimizer not in OPTIMIZERS:
        raise VisualizeError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
    device = _model_device(model)
    if isinstance(units, int):
        units = [units]
    if units is None:
        if layer is None:
            raise VisualizeError("give units, or a layer to visualise all its channels")
        units = list(range(layer_channels(model, layer, hw)))
    units = [int(u) for u in units]
    if not units:
        raise VisualizeError("no units to visualise")
    if objective is None:
        if layer is None:
            raise VisualizeError("give a layer or an objective")
        n = layer_channels(model, layer, hw)
        bad = [u for u in units if not 0 <= u < n]
        if bad:
            raise VisualizeError(f"units {bad[:5]} are outside layer {layer!r} ({n} channels)")
        objective = lambda us, _layer=layer: channel(_layer, us)  # noqa: E731
    if isinstance(param, ImageParam) or isinstance(objective, Objective):
        chunks = [units]
    else:
        bs = batch_size or len(units)
        chunks = [units[i : i + bs] for i in range(0, len(units), bs)]

    if normalize == "auto":
        recipe = getattr(model, "recipe", None)
        normalize = (
            (recipe.mean, recipe.std)
            if recipe is not None
            else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        )
    mean = std = None
    if normalize is not None:
        mean = torch.tensor(normalize[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(normalize[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)

    tlist = _resolve_transforms(transforms)
    if channels_last is None:
        channels_last = device.type == "cpu" or precision == "bf16"
    images, finals, initials, histories, codes = [], [], [], [], []
    total = len(units) * steps
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="visualize", unit="unit-step", smoothing=0.1)
    all_gens = item_generators(units, seed)  # keyed over the whole list: chunking changes nothing
    start = 0
    for chunk in chunks:
        gens = all_gens[start : start + len(chunk)]
        obj = objective if isinstance(objective, Objective) else objective(chunk)
        penalty = None
        if param == "alpha" or (isinstance(param, ImageParam) and param.forward_shape()[1] == 4):
            if alpha_penalty:
                penalty = alpha_mean_penalty(alpha_target, alpha_penalty)
        if isinstance(param, ImageParam):
            p = param
            if p.forward_shape()[0] != len(chunk):
                raise VisualizeError(f"param has {p.forward_shape()[0]} items for {len(chunk)} units")
        else:
            p = make_param(param, len(chunk), hw, gens, seed=seed, **dict(param_options or {}))
        p = p.to(device)
        reader = LayerReader(model, sorted(obj.layers))
        run = _Run(
            model,
            obj,
            p,
            gens,
            transforms=tlist,
            mean=mean,
            std=std,
            background=background,
            reader=reader,
            penalty=penalty,
            channels_last=channels_last,
            autocast=torch.bfloat16 if precision == "bf16" else None,
        )
        with torch.no_grad():
            initials.append(run.values(train=False)[0].detach().cpu())
        image_ps = [p.pixels] if isinstance(p, PixelParam) else []
        centre = 0.5 if isinstance(p, PixelParam) and not p.sigmoid else 0.0
        opt = make_optimizer(
            optimizer,
            run.trainable(),
            lr=lr,
            steps=steps,
            image_params=image_ps,
            centre=centre,
            options=optimizer_options,
            items=len(chunk),
            bounds=p.box(),
        )
        hist = []
        for _ in range(steps):
            states = [g.get_state() for g in gens]
            last: list[torch.Tensor] = []

            def closure(gens=gens, states=states, opt=opt, run=run, last=last):
                # Every evaluation within a step (L-BFGS line search) sees the same random draws.
                for g, s in zip(gens, states):
                    g.set_state(s)
                opt.zero_grad()
                vals, loss = run.values(train=True)
                loss.sum().backward()
                last[:] = [vals.detach()]
                return loss.detach()

            opt.step(closure)
            run.project()
            hist.append(last[0].cpu())
            if bar is not None:
                bar.update(len(chunk))
        with torch.no_grad():
            vals, _ = run.values(train=False)
            finals.append(vals.detach().cpu())
            images.append(p().detach().float().cpu())
        if isinstance(p, DGNParam):
            codes.append(p.code.detach().cpu())
        histories.append(torch.stack(hist) if hist else torch.zeros(0, len(chunk)))
        log.info("visualized units %d..%d of %d", start, start + len(chunk) - 1, len(units))
        start += len(chunk)
    if bar is not None:
        bar.close()
    settings = {
        "param": param if isinstance(param, str) else type(param).__name__,
        "param_options": {
            k: v
            for k, v in (param_options or {}).items()
            if isinstance(v, (int, float, str, bool, tuple, list))
        },
        "size": list(hw),
        "steps": steps,
        "optimizer": optimizer,
        "lr": lr,
        "transforms": [repr(t) for t in tlist],
        "normalize": None if normalize is None else [list(normalize[0]), list(normalize[1])],
        "background": background if param == "alpha" else None,
        "seed": seed,
        "layer": layer,
        "precision": precision,
        "channels_last": bool(channels_last),
    }
    return VisResult(
        images=torch.cat(images),
        units=units,
        objective=torch.cat(finals),
        initial=torch.cat(initials),
        history=torch.cat(histories, 1),
        settings=settings,
        codes=torch.cat(codes) if codes else None,
    )
