"""Extractor configs and the decorator registry that holds them (timm's pattern)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from neuroprint._errors import NeuroprintError
from neuroprint.io.recipe import Recipe

from ._backbone import TapBackbone
from ._hub import VDNA_HUB_REPO

StateDict = dict[str, torch.Tensor]


def keep_state_dict(state_dict: StateDict) -> StateDict:
    """Converter for checkpoints that already use the backbone's key names."""
    return state_dict


class UnknownExtractorError(NeuroprintError, ValueError):
    """The extractor name is neither registered nor a timm model."""


@dataclass(frozen=True)
class ExtractorConfig:
    """Everything that defines one named extractor; two runs with equal configs and weights agree."""

    # Registry name, written into every output's metadata; for builtins it is vdna's feature_extractor name.
    name: str
    # Tap name -> neuron count, in network order; for builtins exactly vdna's NetworkSettings.neurons_per_layer.
    layers: dict[str, int]
    # Pixels the network expects: input size, mean and std exactly as vdna's NetworkSettings.
    recipe: Recipe
    # Builds the backbone with random weights on CPU; create_extractor seeds the RNG around the call.
    builder: Callable[[], TapBackbone] = field(repr=False)
    # Maps a published checkpoint (already un-nested, prefixes stripped) to the keys of ``builder().net``.
    converter: Callable[[StateDict], StateDict] = field(default=keep_state_dict, repr=False)
    # Hugging Face repo holding weights_file / ranges_file (vdna's ExtractionSettings.hub_repo).
    hub_repo: str | None = VDNA_HUB_REPO
    # Published weights vdna loads: a filename in hub_repo, or an https URL where vdna uses torch hub;
    # None when there are none (weights="random" or a local file only).
    weights_file: str | None = None
    # Filename in hub_repo of vdna's activation_ranges.json for this network; None where vdna has none.
    ranges_file: str | None = None
    # One line for listings: what the network is and where its weights come from.
    description: str = ""

    @property
    def weights_is_url(self) -> bool:
        return bool(self.weights_file) and self.weights_file.startswith(("https://", "http://"))


_REGISTRY: dict[str, Callable[[], ExtractorConfig]] = {}


def register_extractor(fn: Callable[[], ExtractorConfig]) -> Callable[[], ExtractorConfig]:
    """Register a function returning an `ExtractorConfig`; its name is the extractor's name."""
    name = fn.__name__
    if name in _REGISTRY:
        raise ValueError(f"extractor {name!r} is already registered")
    _REGISTRY[name] = fn
    return fn


def list_extractors() -> list[str]:
    """Names of the registered extractors (any timm model name works too, see `create_extractor`)."""
    return sorted(_REGISTRY)


def registered_config(name: str) -> ExtractorConfig | None:
    fn = _REGISTRY.get(name)
    if fn is None:
        return None
    config = fn()
    if config.name != name:
        raise ValueError(f"extractor {name!r} returned a config named {config.name!r}")
    return config
