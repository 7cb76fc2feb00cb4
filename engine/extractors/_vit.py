"""Vision transformers: Mugs and DINO ViTs, and the image tower of OpenAI CLIP ViT-B/16, on timm.

vdna taps the output of every block and of the final LayerNorm, keeping every token (CLS first).
The Mugs/DINO networks are timm's ``vit_*_patch16_224`` exactly (qkv bias, GELU, LayerNorm eps 1e-6);
CLIP is timm's QuickGELU CLIP tower (LayerNorm eps 1e-5, a pre-norm before the blocks).
"""

from __future__ import annotations

import torch

from neuroprint.io.recipe import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, Recipe

from ._backbone import TapBackbone
from ._config import ExtractorConfig, StateDict, register_extractor


def vit_layers(depth: int, dim: int) -> dict[str, int]:
    layers = {f"block_{i}": dim for i in range(depth)}
    layers["last_norm"] = dim
    return layers


class ViTTaps(TapBackbone):
    """A timm VisionTransformer run block by block.

    ``last_norm_cls_only``: vdna's CLIP applies the final LayerNorm to the CLS token alone, so that tap
    has one position; LayerNorm is per token, so normalising only that token gives the same numbers.
    """

    def __init__(self, net: torch.nn.Module, *, last_norm_cls_only: bool = False):
        super().__init__(net, vit_layers(len(net.blocks), net.embed_dim))
        self.last_norm_cls_only = last_norm_cls_only

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        net = self.net
        x = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
        out: dict[str, torch.Tensor] = {}
        depth = len(net.blocks)
        for i, block in enumerate(net.blocks):
            if i > self.last_index:
                return out
            x = block(x)
            if f"block_{i}" in self.wanted:
                out[f"block_{i}"] = x
        if self.last_index == depth:
            out["last_norm"] = net.norm(x[:, :1] if self.last_norm_cls_only else x)
        return out


def _timm_vit(arch: str, **kwargs) -> torch.nn.Module:
    import timm

    # num_classes=0: the classifier is never tapped and published backbones do not have one.
    return timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)


def convert_dino_mugs(state_dict: StateDict) -> StateDict:
    """Mugs checkpoints carry the relation block used only in pre-training; DINO training checkpoints
    carry the projection head. Neither is part of the tapped network. Keys are otherwise timm's."""
    return {k: v for k, v in state_dict.items() if not k.startswith(("relation_blocks.", "head."))}


# OpenAI's CLIP names -> timm's, applied in order to keys with the "visual." prefix removed.
_OPENAI_RENAMES = (
    ("transformer.resblocks.", "blocks."),
    (".ln_1.", ".norm1."),
    (".ln_2.", ".norm2."),
    (".attn.in_proj_weight", ".attn.qkv.weight"),
    (".attn.in_proj_bias", ".attn.qkv.bias"),
    (".attn.out_proj.", ".attn.proj."),
    (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
)
_OPENAI_TOP = {"conv1.": "patch_embed.proj.", "ln_pre.": "norm_pre.", "ln_post.": "norm."}


def convert_openai_clip(state_dict: StateDict) -> StateDict:
    """OpenAI CLIP (full model, ``visual.*`` keys) or timm-layout CLIP tower -> timm VisionTransformer.

    The text tower and the image projection ``visual.proj`` come after every tapped activation and
    are dropped. Tensors keep their dtype (OpenAI's are fp16); loading casts them to the network's.
    """
    if not any(k.startswith("visual.") for k in state_dict):
        return {k: v for k, v in state_dict.items() if not k.startswith("head.")}
    out: StateDict = {}
    for key, value in state_dict.items():
        if not key.startswith("visual."):
            continue
        key = key[len("visual.") :]
        if key == "proj":
            continue
        if key == "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
            continue
        if key == "positional_embedding":
            out["pos_embed"] = value.unsqueeze(0)
            continue
        for old, new in _OPENAI_TOP.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        for old, new in _OPENAI_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    return out


_IMAGENET_224 = Recipe(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)

# vdna version -> (timm architecture, depth, width); vdna's vit_* are these timm configurations exactly.
_MUGS = {
    "small": ("vit_small_patch16_224", 12, 384),
    "base": ("vit_base_patch16_224", 12, 768),
    "large": ("vit_large_patch16_224", 24, 1024),
}


def _mugs(version: str, ranges: bool) -> ExtractorConfig:
    arch, depth, dim = _MUGS[version]
    return ExtractorConfig(
        name=f"mugs_vit_{version}",
        layers=vit_layers(depth, dim),
        recipe=_IMAGENET_224,
        builder=lambda: ViTTaps(_timm_vit(arch)),
        converter=convert_dino_mugs,
        weights_file=f"Mugs/mugs_vit_{version}/weights.pth",
        ranges_file=f"Mugs/mugs_vit_{version}/activation_ranges.json" if ranges else None,
        description=f"Mugs ViT-{version[0].upper()}/16 (timm {arch}), weights from vdna's Hub repo",
    )


@register_extractor
def mugs_vit_small() -> ExtractorConfig:
    return _mugs("small", ranges=False)


@register_extractor
def mugs_vit_base() -> ExtractorConfig:
    return _mugs("base", ranges=True)


@register_extractor
def mugs_vit_large() -> ExtractorConfig:
    return _mugs("large", ranges=True)


_DINO_URLS = {
    "base": "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
    "small": "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
}


@register_extractor
def dino_vit_base() -> ExtractorConfig:
    return ExtractorConfig(
        name="dino_vit_base",
        layers=vit_layers(12, 768),
        recipe=_IMAGENET_224,
        builder=lambda: ViTTaps(_timm_vit("vit_base_patch16_224")),
        converter=convert_dino_mugs,
        weights_file=_DINO_URLS["base"],
        ranges_file="DINO/dino_vit_base/activation_ranges.json",
        description="DINO ViT-B/16 (timm vit_base_patch16_224), weights from DINO's release URL",
    )


@register_extractor
def dino_vit_small() -> ExtractorConfig:
    # vdna 0.1.1 lists this name but its constructor rejects "small"; the network is DINO's ViT-S/16.
    return ExtractorConfig(
        name="dino_vit_small",
        layers=vit_layers(12, 384),
        recipe=_IMAGENET_224,
        builder=lambda: ViTTaps(_timm_vit("vit_small_patch16_224")),
        converter=convert_dino_mugs,
        weights_file=_DINO_URLS["small"],
        ranges_file=None,
        description="DINO ViT-S/16 (timm vit_small_patch16_224), weights from DINO's release URL",
    )


_CLIP_URL = "https://openaipublic.azureedge.net/clip/models/{}"
# vdna version -> (timm architecture, depth, width, OpenAI file); vdna uses published ranges for b16 only.
_CLIP = {
    "vit_b16": ("vit_base_patch16_clip_quickgelu_224", 12, 768,
                "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt"),
    "vit_b32": ("vit_base_patch32_clip_quickgelu_224", 12, 768,
                "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"),
    "vit_l14": ("vit_large_patch14_clip_quickgelu_224", 24, 1024,
                "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"),
}  # fmt: skip


def _clip(version: str) -> ExtractorConfig:
    arch, depth, dim, file = _CLIP[version]
    return ExtractorConfig(
        name=f"clip_im_{version}",
        layers=vit_layers(depth, dim),
        recipe=Recipe(size=(224, 224), mean=CLIP_MEAN, std=CLIP_STD),
        builder=lambda: ViTTaps(_timm_vit(arch), last_norm_cls_only=True),
        converter=convert_openai_clip,
        weights_file=_CLIP_URL.format(file),
        ranges_file=f"CLIP/clip_im_{version}/activation_ranges.json" if version == "vit_b16" else None,
        description=f"OpenAI CLIP {version} image tower (timm {arch}); last_norm is the CLS token only",
    )


@register_extractor
def clip_im_vit_b16() -> ExtractorConfig:
    return _clip("vit_b16")


@register_extractor
def clip_im_vit_b32() -> ExtractorConfig:
    return _clip("vit_b32")


@register_extractor
def clip_im_vit_l14() -> ExtractorConfig:
    return _clip("vit_l14")
