"""Building extractors by name, and fetching vdna's published activation ranges."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from neuroprint._errors import WeightsError
from neuroprint.io.recipe import Recipe

from . import _timm
from ._backbone import TapBackbone
from ._checkpoint import file_fingerprint, load_strict, read_state_dict
from ._config import ExtractorConfig, UnknownExtractorError, list_extractors, registered_config
from ._hub import fetch_hub_file, fetch_url_file

logger = logging.getLogger(__name__)

WEIGHTS_CHOICES = ("default", "random")


class Extractor(nn.Module):
    """A frozen backbone that returns ``{tap name: activations [B, P, C]}`` for its ``layers``.

    P is every spatial position (CNNs, H*W) or every token including CLS (ViTs); C is the neuron count.
    The values are what vdna's network returns for the same weights and input, laid out as
    ``vdna_feat.flatten(2).transpose(1, 2)`` (vdna returns [B, C, P, 1] for ViTs, [B, C, H, W] for CNNs).
    The module stays in eval mode and its parameters never require gradients; an input of another
    dtype is cast to the extractor's.
    """

    def __init__(
        self,
        config: ExtractorConfig,
        backbone: TapBackbone,
        layers: dict[str, int],
        weights_id: str,
    ):
        super().__init__()
        self.config = config
        self.name = config.name
        self.recipe: Recipe = config.recipe
        self.layers = dict(layers)  # tap name -> neuron count, in the order forward returns them
        # "random:seed=N", "default:<repo>/<file>", "default:<url>" or "file:<name>:sha256=<16 hex>"
        self.weights_id = weights_id
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> Extractor:
        # Batch-norm statistics and dropout must never change what an extractor measures.
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        param = next(self.backbone.parameters(), None)
        if param is not None and x.dtype != param.dtype:
            x = x.to(param.dtype)
        taps = self.backbone(x)
        return {name: taps[name] for name in self.layers}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, weights_id={self.weights_id!r}, layers={len(self.layers)}"


def _unknown(name: str) -> UnknownExtractorError:
    return UnknownExtractorError(
        f"unknown extractor {name!r}; valid: {', '.join(list_extractors())}, or any timm model name "
        f"(optionally as 'timm:<name>')"
    )


def _timm_name(name: str) -> str | None:
    """timm model name behind ``name``, or None for a registered extractor. Registered names win."""
    if name.startswith(_timm.PREFIX):
        model_name = name[len(_timm.PREFIX) :]
        _timm.require_timm_model(model_name)
        return model_name
    if name in list_extractors():
        return None
    if _timm.is_timm_model(name):
        return name
    raise _unknown(name)


def get_extractor_config(name: str) -> ExtractorConfig:
    """The config of a registered extractor, or of a timm model (``timm:<name>`` or a plain timm name).

    For a timm model the default layers are read from its feature_info, which builds the model once.
    """
    if not isinstance(name, str):
        raise TypeError(f"extractor name must be a string, got {type(name).__name__}")
    model_name = _timm_name(name)
    if model_name is not None:
        return _timm.timm_config(model_name)
    config = registered_config(name)
    if config is None:  # pragma: no cover - _timm_name checked the registry
        raise _unknown(name)
    return config


def _weights_path(config: ExtractorConfig, weights: str | os.PathLike) -> tuple[Path, str]:
    instead = "or pass weights=<path to a local copy>"
    if weights == "default":
        if not config.weights_file:
            raise WeightsError(
                f"{config.name} has no published weights; pass weights='random' or a file path"
            )
        if config.weights_is_url:
            return fetch_url_file(config.weights_file, instead=instead), f"default:{config.weights_file}"
        path = fetch_hub_file(config.hub_repo, config.weights_file, instead=instead)
        return path, f"default:{config.hub_repo}/{config.weights_file}"
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be 'default', 'random' or a file path, not {type(weights).__name__}")
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(
            f"weights={str(weights)!r} is neither {' nor '.join(repr(c) for c in WEIGHTS_CHOICES)} "
            "nor an existing file"
        )
    return path, file_fingerprint(path)


def _layer_names(
    config: ExtractorConfig, backbone: TapBackbone, layers: Sequence[str] | str | None
) -> list[str]:
    if layers is None:
        names = list(config.layers) or list(backbone.tap_names)
        if not names:
            raise UnknownExtractorError(
                f"{config.name} lists no default taps (no feature_info); pass layers=[module paths]"
            )
        return names
    names = [layers] if isinstance(layers, str) else [str(n) for n in layers]
    if not names:
        raise ValueError("layers is empty; pass None for every tap")
    if len(set(names)) != len(names):
        raise ValueError(f"layers repeats a name: {names}")
    if not isinstance(backbone, _timm.TimmTaps):
        unknown = [n for n in names if n not in backbone.tap_channels]
        if unknown:
            raise UnknownExtractorError(
                f"{config.name} has no layer {unknown[0]!r}; valid: {', '.join(backbone.tap_names)}"
            )
    return names


def create_extractor(
    name: str,
    *,
    weights: str | os.PathLike = "default",
    layers: Sequence[str] | str | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Extractor:
    """Build a frozen extractor.

    name: a registered name (`list_extractors()`), ``timm:<model>``, or a timm model name that is not
        registered (registered names win: ``vgg16`` is vdna's, ``timm:vgg16`` is timm's).
    weights: "default" (the published weights vdna uses, downloaded once into the Hugging Face or torch
        hub cache; HF_HUB_OFFLINE=1 forbids downloads), "random" (initialised under ``seed``), or a
        local checkpoint: ``.safetensors``, a TorchScript archive, or anything ``torch.load`` reads with
        ``weights_only=True``; nested under "state_dict"/"model_state_dict"/"model"/"teacher" or not,
        with "module."/"backbone." prefixes or not. Loading is strict.
    layers: tap names (module paths for timm models), returned in this order; None for all of them
        (for a timm model: the modules of its feature_info). A network stops after its last tap.
    device, dtype: where and in what precision it runs; it is built and loaded on CPU first. fp32
        reproduces vdna (vdna itself runs CLIP in fp16); bf16/fp16 trade exactness for speed.
    seed: seeds the initialisation of weights="random" (the global RNG is left as it was).
    """
    model_name = _timm_name(name) if isinstance(name, str) else None
    config = (
        _timm.timm_config(model_name, layers={}) if model_name is not None else get_extractor_config(name)
    )

    # Published files first: a missing download should fail before minutes of model construction.
    source = None
    if weights == "random":
        weights_id = f"random:seed={int(seed)}"
    else:
        source, weights_id = _weights_path(config, weights)

    # fork_rng keeps the caller's global RNG stream untouched by the initialisation.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        backbone = config.builder()

    if source is not None:
        state_dict = backbone.adapt_state_dict(config.converter(read_state_dict(source)))
        load_strict(backbone.net, state_dict, source=str(source))
        logger.info("loaded %s weights from %s", config.name, source)

    backbone = backbone.to(device=device, dtype=dtype).eval()
    names = _layer_names(config, backbone, layers)
    counts = backbone.channels(names, config.recipe.size)
    backbone.select(names)
    if model_name is not None and not config.layers:
        config = _timm.timm_config(model_name, layers=dict(backbone.tap_channels))
    return Extractor(config, backbone, counts, weights_id)


@dataclass(frozen=True)
class ExtractorInfo:
    """What a job's driver needs of an extractor without holding the network: its name, weights id, tap
    layers with their neuron counts, and input recipe (the attributes of `Extractor` of the same names).
    A Ray job's driver gets one from a short-lived Ray task (`describe_extractor` there), so that only
    the actors build the model."""

    name: str
    weights_id: str
    layers: dict
    recipe: Recipe

    @classmethod
    def of(cls, ex: Extractor) -> ExtractorInfo:
        return cls(ex.name, ex.weights_id, dict(ex.layers), ex.recipe)


def describe_extractor(
    name: str,
    *,
    weights: str | os.PathLike = "default",
    layers: Sequence[str] | str | None = None,
    seed: int = 0,
) -> ExtractorInfo:
    """The `ExtractorInfo` of ``create_extractor(name, weights=..., layers=..., seed=...)``: the model is
    built (on CPU, float32: the layers and weights id do not depend on either) and its weights are loaded,
    so that a bad checkpoint fails here, then everything but the description is dropped."""
    return ExtractorInfo.of(create_extractor(name, weights=weights, layers=layers, seed=seed))


def read_ranges_file(path: str | os.PathLike) -> dict[str, dict[str, dict[int, float]]]:
    """vdna's activation_ranges.json: ``{"mins_per_neuron"|"maxs_per_neuron": {layer: {idx: value}}}``.

    Neuron keys become ints; the order of the file is kept, because vdna builds its normalisation
    tensors in that order.
    """
    path = Path(path)
    try:
        with open(path) as f:
            raw = json.load(f)
        out = {
            kind: {
                str(layer): {int(idx): float(v) for idx, v in neurons.items()}
                for layer, neurons in raw[kind].items()
            }
            for kind in ("mins_per_neuron", "maxs_per_neuron")
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise WeightsError(
            f"cannot read activation ranges from {path} ({type(err).__name__}: {err})"
        ) from err
    return out


def published_ranges(name: str) -> dict[str, dict[str, dict[int, float]]]:
    """vdna's published per-neuron activation ranges for ``name``, fetched from the Hub on first use."""
    instead = 'or pass a local ranges file, or use ranges="auto"'
    config = registered_config(name) if _timm_name(name) is None else None
    if config is None or not config.ranges_file or not config.hub_repo:
        raise WeightsError(
            f'vdna publishes no activation ranges for {name}; pass a local ranges file, or use ranges="auto"'
        )
    return read_ranges_file(fetch_hub_file(config.hub_repo, config.ranges_file, instead=instead))
