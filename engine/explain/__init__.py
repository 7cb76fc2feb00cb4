"""Explaining units of a network on many images: saliency, occlusion, activation maps, receptive fields.

Any torch module or neuroprint ``Extractor`` works; a layer is a module path, an extractor tap name, or
"" for the model's output. A unit is a channel (pooled over positions), a channel at a position, a
token, or weights over the whole layer (cnnpref's ``feature_mask``)::

    import timm, torch
    from neuroprint.explain import Saliency, Occlusion, Unit, receptive_field

    net = timm.create_model("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    grads = Saliency(net, "layer3").attribute(x, [0, 5, Unit(7, (1, 2))])      # [2, 3, 3, 64, 64]
    occ = Occlusion(net, "layer3").attribute(x, window=9, stride=4)            # every channel at once
    receptive_field(net, "layer3").region(1, 2)                                 # input pixels of a unit

Minimal images (parcels by felzenszwalb/slic/quickshift, PCA/ICA components) and masked images find
the least of an image that keeps a unit's value (``MinimalImages``, ``MaskedImages``).

Every gradient method explains all units of all images in batched forwards with one backward per
chunk (``max_rows`` rows at a time); results equal one unit and one image at a time, and equal
captum's Saliency / NeuronGradient / GuidedBackprop / NoiseTunnel / Occlusion / LayerActivation.
"""

from __future__ import annotations

from .layer import REDUCTIONS, ExplainError, LayerProbe, LayerShape, Unit, UnitSet, as_units
from .maps import (
    INTERPOLATIONS,
    ActivationMap,
    GuidedBackprop,
    LayerExplainer,
    Occlusion,
    OcclusionMaps,
    Saliency,
    SmoothGrad,
    guided_relu,
    smoothgrad_noise,
    window_starts,
)
from .minimal import (
    DECOMPOSITIONS,
    SEGMENTERS,
    MaskedImage,
    MaskedImages,
    MinimalImage,
    MinimalImages,
    decompose,
    segment,
)
from .rf import (
    EmpiricalField,
    ReceptiveField,
    ReceptiveFieldTable,
    empirical_field,
    receptive_field,
    receptive_fields,
)

__all__ = [
    "ActivationMap",
    "DECOMPOSITIONS",
    "EmpiricalField",
    "ExplainError",
    "GuidedBackprop",
    "INTERPOLATIONS",
    "LayerExplainer",
    "LayerProbe",
    "LayerShape",
    "MaskedImage",
    "MaskedImages",
    "MinimalImage",
    "MinimalImages",
    "Occlusion",
    "OcclusionMaps",
    "REDUCTIONS",
    "ReceptiveField",
    "ReceptiveFieldTable",
    "SEGMENTERS",
    "Saliency",
    "SmoothGrad",
    "Unit",
    "UnitSet",
    "as_units",
    "decompose",
    "empirical_field",
    "guided_relu",
    "receptive_field",
    "receptive_fields",
    "segment",
    "smoothgrad_noise",
    "window_starts",
]
