"""Feature extractors: frozen backbones that return per-neuron activations of chosen layers.

A timm-style registry. Each registered name is one of vdna's networks, with vdna's layer names,
neuron counts and preprocessing, and returns the same activations as vdna's own network for the same
weights and input; any timm model works too (``timm:<name>``)::

    from neuroprint.extractors import create_extractor, list_extractors

    ex = create_extractor("dino_vit_base")            # published weights, fetched once
    feats = ex(images)                                # {"block_0": [B, 197, 768], ..., "last_norm": ...}
    ex = create_extractor("timm:resnet18", weights="random", layers=["layer1", "layer4"])
"""

from ._backbone import TapBackbone
from ._config import ExtractorConfig, UnknownExtractorError, list_extractors, register_extractor
from ._factory import (
    Extractor,
    ExtractorInfo,
    create_extractor,
    describe_extractor,
    get_extractor_config,
    published_ranges,
    read_ranges_file,
)

# Importing the builtin modules registers their extractors.
from . import _cnn, _inception, _vit  # noqa: E402, F401  isort: skip

__all__ = [
    "Extractor",
    "ExtractorConfig",
    "ExtractorInfo",
    "TapBackbone",
    "UnknownExtractorError",
    "create_extractor",
    "describe_extractor",
    "get_extractor_config",
    "list_extractors",
    "published_ranges",
    "read_ranges_file",
    "register_extractor",
]
