"""The FID Inception v3: the TensorFlow 2015-12-05 graph that FID scores are defined with.

It differs from torchvision's Inception v3 where the TF graph does: the average pools of the A, C
and first E blocks leave the padding out of the mean, and the last E block max-pools its pooling
branch. Module names follow torchvision, so pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
loads as is. Taps are vdna's ``InceptionV3(output_blocks=[0, 1, 2, 3])``:
block_0 after the first max pool, block_1 after the second, block_2 after Mixed_6e (the input of
the auxiliary classifier), block_3 the global average pool (2048-d, one position). The input is
expected normalised to [-1, 1] by the recipe (mean = std = 0.5), at 299 x 299.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neuroprint.io.recipe import Recipe

from ._backbone import TapBackbone, spatial_to_tokens
from ._config import ExtractorConfig, StateDict, register_extractor

FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"

INCEPTION_LAYERS = {"block_0": 64, "block_1": 192, "block_2": 768, "block_3": 2048}


class ConvBN(nn.Module):
    """Bias-free convolution, batch norm (TF's epsilon 1e-3), ReLU: torchvision's ``BasicConv2d`` names."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):  # fmt: skip
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's 3x3 'SAME' average pool divides by the number of real pixels under the window
    # (torchvision's Inception counts the zero padding).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _run(x: torch.Tensor, *convs: nn.Module) -> torch.Tensor:
    for conv in convs:
        x = conv(x)
    return x


class MixedA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(cin, 64, 1)
        self.branch5x5_1 = ConvBN(cin, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool = ConvBN(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                _run(x, self.branch5x5_1, self.branch5x5_2),
                _run(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                self.branch_pool(_tf_avg_pool(x)),
            ],
            dim=1,
        )


class ReductionB(nn.Module):
    """35x35 -> 17x17 (Mixed_6a): strided 3x3, strided double 3x3, max pool."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = ConvBN(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(cin, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                _run(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            dim=1,
        )


class MixedC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (1x7 then 7x1)."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, padding) pairs
        self.branch1x1 = ConvBN(cin, 192, 1)
        self.branch7x7_1 = ConvBN(cin, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7_3 = ConvBN(c7, 192, col[0], padding=col[1])
        self.branch7x7dbl_1 = ConvBN(cin, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_3 = ConvBN(c7, c7, row[0], padding=row[1])
        self.branch7x7dbl_4 = ConvBN(c7, c7, col[0], padding=col[1])
        self.branch7x7dbl_5 = ConvBN(c7, 192, row[0], padding=row[1])
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                _run(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                _run(x, self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                     self.branch7x7dbl_5),
                self.branch_pool(_tf_avg_pool(x)),
            ],
            dim=1,
        )  # fmt: skip


class ReductionD(nn.Module):
    """17x17 -> 8x8 (Mixed_7a)."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(cin, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(cin, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                _run(x, self.branch3x3_1, self.branch3x3_2),
                _run(x, self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            dim=1,
        )


class MixedE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs.

    ``max_pool``: the TF graph's last block (Mixed_7c) max-pools its pooling branch where the paper
    (and the first E block) average-pools; FID is defined with that graph, so it is kept.
    """

    def __init__(self, cin: int, *, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = ConvBN(cin, 320, 1)
        self.branch3x3_1 = ConvBN(cin, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(cin, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s3 = self.branch3x3_1(x)
        d3 = _run(x, self.branch3x3dbl_1, self.branch3x3dbl_2)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _tf_avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(s3),
                self.branch3x3_2b(s3),
                self.branch3x3dbl_3a(d3),
                self.branch3x3dbl_3b(d3),
                self.branch_pool(pooled),
            ],
            dim=1,
        )


class FIDInceptionV3(nn.Module):
    """The convolutional trunk of the FID Inception (no auxiliary head, no 1008-way classifier)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = MixedA(192, pool_features=32)
        self.Mixed_5c = MixedA(256, pool_features=64)
        self.Mixed_5d = MixedA(288, pool_features=64)
        self.Mixed_6a = ReductionB(288)
        self.Mixed_6b = MixedC(768, c7=128)
        self.Mixed_6c = MixedC(768, c7=160)
        self.Mixed_6d = MixedC(768, c7=160)
        self.Mixed_6e = MixedC(768, c7=192)
        self.Mixed_7a = ReductionD(768)
        self.Mixed_7b = MixedE(1280, max_pool=False)
        self.Mixed_7c = MixedE(2048, max_pool=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        for m in self.modules():
            # torchvision's initialisation, so that random weights give activations of a sane scale.
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.1, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stages(self) -> tuple[nn.Sequential, ...]:
        """The four runs of modules that end at the four taps."""
        return (
            nn.Sequential(self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1),
            nn.Sequential(self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.maxpool2),
            nn.Sequential(self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                          self.Mixed_6c, self.Mixed_6d, self.Mixed_6e),
            nn.Sequential(self.Mixed_7a, self.Mixed_7b, self.Mixed_7c, self.avgpool),
        )  # fmt: skip


class InceptionTaps(TapBackbone):
    def __init__(self, net: FIDInceptionV3):
        super().__init__(net, INCEPTION_LAYERS)
        # Plain tuple, not a ModuleList: the modules are registered once, under net.
        self._stages = net.stages()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for i, stage in enumerate(self._stages):
            if i > self.last_index:
                break
            x = stage(x)
            if f"block_{i}" in self.wanted:
                out[f"block_{i}"] = spatial_to_tokens(x)
        return out


def convert_fid_inception(state_dict: StateDict) -> StateDict:
    """pytorch-fid / torchvision names; the legacy 1008-way classifier and any aux head are dropped."""
    return {k: v for k, v in state_dict.items() if not k.startswith(("fc.", "AuxLogits."))}


@register_extractor
def inception() -> ExtractorConfig:
    return ExtractorConfig(
        name="inception",
        layers=dict(INCEPTION_LAYERS),
        recipe=Recipe(size=(299, 299), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        builder=lambda: InceptionTaps(FIDInceptionV3()),
        converter=convert_fid_inception,
        weights_file=FID_WEIGHTS_URL,
        ranges_file="Inception/inception_v3/activation_ranges.json",
        description="FID Inception v3 (TF 2015-12-05 graph, pytorch-fid's weights file)",
    )
