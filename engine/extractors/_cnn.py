"""Convolutional backbones on torchvision modules: ResNet-50 (DINO, vdna's random one) and VGG16.

vdna's ResNet pads the image by one pixel and then convolves with padding 2; that is torchvision's
padding 3 on the same zeros, so torchvision's ResNet-50 computes the same numbers. Its taps are the
outputs of every bottleneck block, after the block's final ReLU. VGG16 taps every ReLU of the
convolutional part (vdna's ``fw_relu`` with zero padding, i.e. torchvision's VGG16 unchanged).
"""

from __future__ import annotations

import torch
from torch import nn

from neuroprint.io.recipe import IMAGENET_MEAN, IMAGENET_STD, Recipe

from ._backbone import TapBackbone, spatial_to_tokens
from ._config import ExtractorConfig, StateDict, register_extractor

_IMAGENET_224 = Recipe(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)

RESNET50_LAYERS = {
    f"layer{stage}_{block}": width
    for stage, (blocks, width) in enumerate(((3, 256), (4, 512), (6, 1024), (3, 2048)), start=1)
    for block in range(blocks)
}


class ResNetTaps(TapBackbone):
    """torchvision ResNet (classifier removed), tapped after every residual block as ``layer<s>_<b>``."""

    def __init__(self, net: nn.Module):
        stages = (net.layer1, net.layer2, net.layer3, net.layer4)
        channels = {
            f"layer{s}_{b}": block.conv3.out_channels
            for s, stage in enumerate(stages, start=1)
            for b, block in enumerate(stage)
        }
        super().__init__(net, channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        out: dict[str, torch.Tensor] = {}
        index = 0
        for s, stage in enumerate((net.layer1, net.layer2, net.layer3, net.layer4), start=1):
            for b, block in enumerate(stage):
                if index > self.last_index:
                    return out
                x = block(x)
                if f"layer{s}_{b}" in self.wanted:
                    out[f"layer{s}_{b}"] = spatial_to_tokens(x)
                index += 1
        return out


def _build_resnet50() -> ResNetTaps:
    import torchvision

    net = torchvision.models.resnet50(weights=None)
    net.fc = nn.Identity()  # never tapped; published backbones come without it
    return ResNetTaps(net)


def convert_resnet(state_dict: StateDict) -> StateDict:
    """Checkpoints in torchvision's names; an ImageNet classifier, if present, is dropped."""
    return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}


@register_extractor
def dino_resnet50() -> ExtractorConfig:
    return ExtractorConfig(
        name="dino_resnet50",
        layers=dict(RESNET50_LAYERS),
        recipe=_IMAGENET_224,
        builder=_build_resnet50,
        converter=convert_resnet,
        weights_file="https://dl.fbaipublicfiles.com/dino/dino_resnet50_pretrain/dino_resnet50_pretrain.pth",
        ranges_file="DINO/dino_resnet50/activation_ranges.json",
        description="DINO ResNet-50 (torchvision resnet50), weights from DINO's release URL",
    )


@register_extractor
def rand_resnet50() -> ExtractorConfig:
    return ExtractorConfig(
        name="rand_resnet50",
        layers=dict(RESNET50_LAYERS),
        recipe=_IMAGENET_224,
        builder=_build_resnet50,
        converter=convert_resnet,
        weights_file="Random/rand_resnet50/weights.pth",
        ranges_file="Random/rand_resnet50/activation_ranges.json",
        description=(
            "randomly initialised ResNet-50 (torchvision resnet50); 'default' is vdna's published "
            "random init, 'random' a fresh seeded one"
        ),
    )


VGG16_LAYERS = {
    "relu_1_1": 64, "relu_1_2": 64,
    "relu_2_1": 128, "relu_2_2": 128,
    "relu_3_1": 256, "relu_3_2": 256, "relu_3_3": 256,
    "relu_4_1": 512, "relu_4_2": 512, "relu_4_3": 512,
    "relu_5_1": 512, "relu_5_2": 512, "relu_5_3": 512,
}  # fmt: skip


class VGGTaps(TapBackbone):
    """torchvision VGG16 ``features`` (convolutions only), tapped after every ReLU as ``relu_<block>_<conv>``."""

    def __init__(self, net: nn.Module):
        relus = [i for i, m in enumerate(net.features) if isinstance(m, nn.ReLU)]
        names = list(VGG16_LAYERS)
        if len(relus) != len(names):
            raise ValueError(f"expected {len(names)} ReLUs in VGG16 features, found {len(relus)}")
        channels = {}
        for name, relu_index in zip(names, relus):
            conv = net.features[relu_index - 1]
            channels[name] = conv.out_channels
        super().__init__(net, channels)
        self._relu_to_name = dict(zip(relus, names))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        seen = 0
        for i, module in enumerate(self.net.features):
            if seen > self.last_index:
                break
            x = module(x)
            name = self._relu_to_name.get(i)
            if name is not None:
                if name in self.wanted:
                    out[name] = spatial_to_tokens(x)
                seen += 1
        return out


def _build_vgg16() -> VGGTaps:
    from torchvision.models.vgg import cfgs, make_layers

    net = nn.Module()
    # Only the convolutional part: its keys ("features.N.*") match torchvision checkpoints, and the
    # 120M-parameter classifier would cost memory and start-up time for nothing.
    net.features = make_layers(cfgs["D"], batch_norm=False)
    for m in net.features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return VGGTaps(net)


def convert_vgg(state_dict: StateDict) -> StateDict:
    """torchvision VGG16 checkpoints: the classifier follows every tap and is dropped."""
    return {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}


@register_extractor
def vgg16() -> ExtractorConfig:
    return ExtractorConfig(
        name="vgg16",
        layers=dict(VGG16_LAYERS),
        recipe=_IMAGENET_224,
        builder=_build_vgg16,
        converter=convert_vgg,
        weights_file="https://download.pytorch.org/models/vgg16-397923af.pth",
        ranges_file="VGG/vgg16/activation_ranges.json",
        description="VGG16 convolutional part (torchvision), torchvision's ImageNet weights",
    )
