"""Any timm model as an extractor, tapped by module path with forward hooks.

Without explicit layers the taps are the modules in the model's ``feature_info`` (what timm's
``features_only`` mode returns: the stem and every stage for CNNs, every block for ViTs).
Hooks are registered when the extractor is built, so they exist before any ``torch.compile``, and
they only store the tensor (no host synchronisation). 4-D outputs become [B, H*W, C] (NCHW models,
or NHWC ones such as Swin, read from the model's ``output_fmt``), 3-D token outputs stay [B, N, C],
and 2-D pooled outputs become [B, 1, C].
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Sequence

import torch
from torch import nn

from neuroprint._errors import NeuroprintError
from neuroprint.io.recipe import IMAGENET_MEAN, IMAGENET_STD, Recipe

from ._backbone import TapBackbone
from ._config import ExtractorConfig, StateDict, UnknownExtractorError

PREFIX = "timm:"


def is_timm_model(model_name: str) -> bool:
    import timm

    return bool(timm.is_model(model_name))


def require_timm_model(model_name: str) -> None:
    import timm

    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5)
        hint = f"; close timm names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise UnknownExtractorError(f"unknown timm model {model_name!r}{hint}")


def _format(out: object, nhwc: bool) -> torch.Tensor:
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]  # modules returning (features, extras) tap their features
    if not isinstance(out, torch.Tensor):
        raise NeuroprintError(f"tapped module returned {type(out).__name__}, not a tensor")
    if out.ndim == 4:
        return out.flatten(1, 2) if nhwc else out.flatten(2).transpose(1, 2)
    if out.ndim == 3:
        return out
    if out.ndim == 2:
        return out.unsqueeze(1)
    raise NeuroprintError(f"tapped module returned a {out.ndim}-D tensor; taps must be 2-, 3- or 4-D")


class TimmTaps(TapBackbone):
    """A whole timm model, run end to end, with a forward hook on each tapped module."""

    def __init__(self, net: nn.Module):
        info = getattr(net, "feature_info", None)
        if info is not None and not isinstance(info, list):  # FeatureInfo objects wrap the list
            info = getattr(info, "info", None)
        default = {str(d["module"]): int(d["num_chs"]) for d in (info or []) if d.get("module")}
        super().__init__(net, default)
        self.nhwc = getattr(net, "output_fmt", "NCHW") == "NHWC"
        self._store: dict[str, object] = {}
        self._hooks: dict[str, torch.utils.hooks.RemovableHandle] = {}

    def _hook(self, name: str):
        def store(_module: nn.Module, _inputs: object, output: object) -> None:
            self._store[name] = output

        return store

    def _ensure_hooks(self, names: Sequence[str]) -> None:
        for name in names:
            if name in self._hooks:
                continue
            try:
                module = self.net.get_submodule(name)
            except AttributeError:
                paths = [n for n, _ in self.net.named_modules() if n]
                close = difflib.get_close_matches(name, paths, n=5)
                hint = f"close: {', '.join(close)}" if close else f"e.g. {', '.join(paths[:8])}"
                raise UnknownExtractorError(f"the model has no module {name!r}; {hint}") from None
            self._hooks[name] = module.register_forward_hook(self._hook(name))

    def channels(self, names: Sequence[str], input_size: tuple[int, int]) -> dict[str, int]:
        """Neuron counts read from one probe forward pass: feature_info does not cover arbitrary modules."""
        self._ensure_hooks(names)
        param = next(self.net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        probe = torch.zeros(1, 3, *input_size, device=device, dtype=dtype)
        self.wanted = frozenset(names)
        with torch.no_grad():
            out = self(probe)
        counts = {name: int(out[name].shape[-1]) for name in names}
        self.tap_channels.update(counts)
        return counts

    def select(self, names: Sequence[str]) -> None:
        self._ensure_hooks(names)
        for name in list(self._hooks):
            if name not in names:
                self._hooks.pop(name).remove()
        self.wanted = frozenset(names)

    def adapt_state_dict(self, state_dict: StateDict) -> StateDict:
        # timm's own per-architecture converter (original-repo layouts -> timm), when the model has one.
        filter_fn = getattr(sys.modules.get(type(self.net).__module__), "checkpoint_filter_fn", None)
        return filter_fn(state_dict, self.net) if filter_fn is not None else state_dict

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._store.clear()
        self.net(x)
        missing = [name for name in self.wanted if name not in self._store]
        if missing:
            raise NeuroprintError(f"tapped modules never ran in forward: {', '.join(sorted(missing))}")
        out = {name: _format(self._store[name], self.nhwc) for name in self.wanted}
        self._store.clear()  # the caller owns the activations now; holding them would pin a batch in memory
        return out


def build_timm(model_name: str) -> TimmTaps:
    import timm

    return TimmTaps(timm.create_model(model_name, pretrained=False))


def timm_config(model_name: str, layers: dict[str, int] | None = None) -> ExtractorConfig:
    """Config of a timm model: recipe and published weights from its pretrained_cfg.

    ``layers=None`` builds the model once to read its feature_info.
    """
    from timm.models import get_pretrained_cfg

    require_timm_model(model_name)
    cfg = get_pretrained_cfg(model_name, allow_unregistered=True)
    if cfg is not None:
        recipe = Recipe(size=tuple(cfg.input_size[1:]), mean=tuple(cfg.mean), std=tuple(cfg.std))
    else:
        recipe = Recipe(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)
    hub_repo = weights_file = None
    if cfg is not None and cfg.hf_hub_id:
        hub_repo, weights_file = cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors"
    elif cfg is not None and cfg.url:
        weights_file = cfg.url
    if layers is None:
        layers = dict(build_timm(model_name).tap_channels)
    return ExtractorConfig(
        name=PREFIX + model_name,
        layers=layers,
        recipe=recipe,
        builder=lambda: build_timm(model_name),
        hub_repo=hub_repo,
        weights_file=weights_file,
        ranges_file=None,
        description=f"timm {model_name}, tapped with forward hooks",
    )
