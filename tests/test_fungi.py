"""neuroprint.fungi: cross-checked against the real fungivision 0.0.2 on a random-init timm ViT-S/16,
batch-size invariance, the custom-objective contract and the compat/fixed modes."""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from neuroprint import fungi
from neuroprint.fungi import (
    BaseGradientExtractor,
    DINOConfig,
    FUNGIWrapper,
    KLConfig,
    SimCLRConfig,
)

timm = pytest.importorskip("timm")
LAYER = "blocks.11.attn.proj"


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    """Images of varied sizes and aspect ratios (some smaller than the 64-pixel crops)."""
    out = []
    for i in range(n):
        rng = np.random.default_rng(seed + i)
        h, w = 50 + (37 * i) % 90, 60 + (53 * i) % 100
        base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)  # some structure, not noise
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        out.append(img if i % 3 else img.convert("L"))  # a gray image now and then
    return out


def _vit(img_size: int, name: str = "vit_tiny_patch16_224") -> torch.nn.Module:
    """A random-init timm ViT; ViT-S/16 for the cross-check, ViT-Ti/16 (E = 192) where speed matters."""
    torch.manual_seed(0)
    # dynamic_img_size: fungivision makes SimCLR's patches at 224 pixels whatever input_dim.
    return timm.create_model(
        name, pretrained=False, num_classes=0, img_size=img_size, dynamic_img_size=True
    ).eval()


def _blocks(features: torch.Tensor, n: int) -> list[torch.Tensor]:
    return list(features.double().chunk(n, dim=-1))


def _min_cosine(a: torch.Tensor, b: torch.Tensor, n: int) -> list[float]:
    return [float(F.cosine_similarity(x, y, dim=-1).min()) for x, y in zip(_blocks(a, n), _blocks(b, n))]


def _copy_heads(ours: FUNGIWrapper, theirs) -> None:
    for mine, their in zip(ours.extractors, theirs.extractors):
        mine.projection_head.load_state_dict(their.projection_head.state_dict())
        if hasattr(their, "teacher_projection"):
            mine.teacher_projection.load_state_dict(their.teacher_projection.state_dict())


def _cross_check(input_dim: int, n_images: int) -> None:
    fv_wrapper = pytest.importorskip("fungivision.wrapper")
    fv_config = pytest.importorskip("fungivision.config")
    model = _vit(input_dim, "vit_small_patch16_224")
    images = _images(n_images)
    dataset = [(im, 0) for im in _images(3, seed=50)]
    # Encoding batches of 3 views: the 8 negatives' views split 3 + 3 + 2, as in fungivision.
    simclr = {
        "comparison_batch_size": 2,
        "num_patches": 4,
        "stride_scale": 1,
        "comparison_batch_encoding_batch_size": 3,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = fv_wrapper.FUNGIWrapper(
            copy.deepcopy(model), LAYER, torch.device("cpu"), input_dim=input_dim,
            extractor_configs=[fv_config.KLConfig(), fv_config.DINOConfig(), fv_config.SimCLRConfig(**simclr)],
        )  # fmt: skip
        torch.manual_seed(11)
        theirs.setup(dataset)
        torch.manual_seed(12)
        want = theirs(images)

    ours = FUNGIWrapper(
        copy.deepcopy(model), LAYER, "cpu", projection=theirs.extractors[0].projection, input_dim=input_dim,
        extractor_configs=[KLConfig(), DINOConfig(), SimCLRConfig(**simclr)], seed=None,
    )  # fmt: skip
    assert torch.equal(ours.projection_matrix(), theirs.extractors[0].projection)
    _copy_heads(ours, theirs)
    torch.manual_seed(11)  # our setup draws the same negatives from the global generator
    ours.setup(dataset)
    torch.testing.assert_close(
        ours.extractors[2].comparison_batch, theirs.extractors[2].comparison_batch, atol=1e-4, rtol=1e-4
    )
    torch.manual_seed(12)  # and the same DINO crops
    got = ours(images)

    assert got.shape == want.shape == (n_images, 3 * 384)
    for block in _blocks(got, 3):
        torch.testing.assert_close(block.norm(dim=-1), torch.ones(n_images, dtype=torch.float64))
    cosines = _min_cosine(got, want, 3)
    assert min(cosines) >= 0.9999, f"per-block minimum cosine [KL, DINO, SimCLR]: {cosines}"


def test_matches_fungivision_fp32():
    """Same model, projection, heads and seeds: our [KL | DINO | SimCLR] features equal fungivision's."""
    _cross_check(input_dim=64, n_images=3)


@pytest.mark.slow
def test_matches_fungivision_fp32_at_224():
    _cross_check(input_dim=224, n_images=2)


def test_projection_is_fungivisions_recipe():
    fv = pytest.importorskip("fungivision.utils.compression")
    torch.manual_seed(5)
    want = fv.generate_projection_matrix((7, 33))
    got = fungi.generate_projection(7, 33, torch.Generator().manual_seed(5))
    assert got.dtype == torch.int8 and got.shape == (33, 7)
    assert torch.equal(got.t().float(), want)


def _small_wrapper(mode: str = "fixed", **kwargs) -> FUNGIWrapper:
    model = _vit(32)
    configs = [KLConfig(), DINOConfig(), SimCLRConfig(comparison_batch_size=3, stride_scale=1)]
    return FUNGIWrapper(model, LAYER, "cpu", input_dim=32, extractor_configs=configs, mode=mode, **kwargs)


def test_batch_size_invariance():
    """Batches of 1, 7 and 16 images give the same features (per-image crop generators)."""
    wrapper = _small_wrapper()
    images = _images(16, seed=100)
    wrapper.setup([(im, 0) for im in _images(4, seed=200)])

    def run(batch: int) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(1000 + i) for i in range(len(images))]
        parts = [
            wrapper(images[s : s + batch], generator=gens[s : s + batch])
            for s in range(0, len(images), batch)
        ]
        return torch.cat(parts)

    full = run(16)
    assert full.shape == (16, 3 * 192) and torch.isfinite(full).all()
    for batch in (1, 7):
        torch.testing.assert_close(run(batch), full, atol=1e-5, rtol=0)
    # Views split over backbone calls of 7 (not a multiple of any objective's views) change nothing.
    wrapper.views_per_forward = 7
    torch.testing.assert_close(run(16), full, atol=1e-5, rtol=0)
    # Different images give different features (the check above is not vacuous).
    assert float(F.cosine_similarity(full[0], full[1], dim=0)) < 0.999


def test_equals_full_autograd_one_image_at_a_time():
    """Independent of fungivision: per image, the whole network under autograd, the loss backpropagated
    into the target layer's weight and bias, the [D_out, D_in + 1] gradient flattened and projected."""
    wrapper = _small_wrapper(views_per_forward=5)
    wrapper.setup([(im, 0) for im in _images(2, seed=300)])
    images = _images(3, seed=7)
    got = wrapper(images, generator=[torch.Generator().manual_seed(i) for i in range(3)])
    layer = wrapper.layer
    want = []
    for i, image in enumerate(images):
        blocks = []
        for ex in wrapper.extractors:
            views = ex.make_views([image], generator=[torch.Generator().manual_seed(i)])[0]
            layer.weight.grad = layer.bias.grad = None
            with torch.enable_grad():
                loss = ex.loss(wrapper.model(views), views.shape[0])
                loss.backward()
            grad = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], dim=1).flatten().double()
            blocks.append(F.normalize(grad @ wrapper.projection.double(), dim=0))
        want.append(torch.cat(blocks))
    torch.testing.assert_close(got.double(), torch.stack(want), atol=2e-5, rtol=0)


def test_seed_makes_heads_and_projection_reproducible():
    a, b = _small_wrapper(seed=3), _small_wrapper(seed=3)
    c = _small_wrapper(seed=4)
    assert torch.equal(a.projection, b.projection) and not torch.equal(a.projection, c.projection)
    assert a.projection.dtype == torch.int8 and a.projection.shape == (192 * 193, 192)
    assert torch.equal(a.extractors[1].teacher_projection.weight, b.extractors[1].teacher_projection.weight)


# ------------------------------------------------------------------------------- custom objective


class CustomGradientsExtractor(BaseGradientExtractor):
    """fungivision's README example, unchanged: a KL objective with its own temperature."""

    def __init__(self, *args, temperature: float = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def input_transform(self, input_dim: int):
        import torchvision.transforms.v2 as tf
        from torchvision.transforms import InterpolationMode

        return tf.Compose(
            [
                tf.ToImage(),
                tf.Resize((256, 256), interpolation=InterpolationMode.BILINEAR, antialias=True),
                tf.CenterCrop(input_dim),
                tf.ToDtype(torch.float32, scale=True),
                tf.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            ]
        )

    def compute_loss(self, latents, views_per_sample, **kwargs):
        latent_dim = latents.shape[1]
        uniform = (torch.ones(latent_dim) / latent_dim).to(self.device)
        softmax_uniform = F.softmax(uniform / self.temperature, dim=0)
        softmax_uniform = softmax_uniform.unsqueeze(dim=0).repeat(latents.shape[0], 1)
        softmax_latents = F.log_softmax(latents / self.temperature, dim=1)
        return F.kl_div(softmax_latents, softmax_uniform, reduction="mean")


@dataclass
class CustomConfig:
    temperature: float = 1
    latent_dim: int = 768

    def get_extractor(self, base_params: dict) -> CustomGradientsExtractor:
        return CustomGradientsExtractor(**(base_params | asdict(self)))


def test_custom_objective_equals_builtin_kl():
    model = _vit(32)
    wrapper = FUNGIWrapper(
        model, LAYER, "cpu", input_dim=32,
        extractor_configs=[KLConfig(temperature=0.5), CustomConfig(temperature=0.5), CustomConfig(temperature=3.0)],
    )  # fmt: skip
    for ex in wrapper.extractors[1:]:
        ex.projection_head.load_state_dict(wrapper.extractors[0].projection_head.state_dict())
    images = _images(3)
    kl, custom, other = wrapper.extract(images)
    torch.testing.assert_close(custom, kl, atol=1e-5, rtol=1e-5)
    assert float(F.cosine_similarity(other, kl).min()) < 0.9999  # the temperature matters


# ------------------------------------------------------------------------------------ modes, errors


def test_modes_differ_only_in_simclr():
    images = _images(2)
    results = {}
    for mode in ("compat", "fixed"):
        model = _vit(224)
        configs = [KLConfig(), SimCLRConfig(comparison_batch_size=2, stride_scale=1)]
        w = FUNGIWrapper(model, LAYER, "cpu", input_dim=224, extractor_configs=configs, mode=mode)
        w.setup([(im, 0) for im in _images(2, seed=9)])
        results[mode] = w.extract(images)
    torch.testing.assert_close(results["compat"][0], results["fixed"][0])
    assert float(F.cosine_similarity(results["compat"][1], results["fixed"][1]).min()) < 0.9999


def test_reduced_precision_close_to_fp32():
    """bf16 autocast (the speed setting) stays close to float32."""
    images = _images(2)
    kl_dino = [KLConfig(), DINOConfig()]
    model = _vit(32)
    a = FUNGIWrapper(copy.deepcopy(model), LAYER, "cpu", input_dim=32, extractor_configs=kl_dino)
    b = FUNGIWrapper(
        copy.deepcopy(model), LAYER, "cpu", input_dim=32, extractor_configs=kl_dino, use_fp16=True
    )
    fa = a(images, generator=torch.Generator().manual_seed(1))
    fb = b(images, generator=torch.Generator().manual_seed(1))
    assert fb.dtype == torch.float32 and torch.isfinite(fb).all()
    assert min(_min_cosine(fa, fb, 2)) > 0.95


def test_bad_arguments_raise():
    model = _vit(32)
    with pytest.raises(ValueError, match="no layer"):
        FUNGIWrapper(model, "blocks.99.attn.proj", "cpu", input_dim=32, extractor_configs=[KLConfig()])
    with pytest.raises(ValueError, match="linear"):
        FUNGIWrapper(model, "blocks.11.attn", "cpu", input_dim=32, extractor_configs=[KLConfig()])
    with pytest.raises(ValueError, match="at least one"):
        FUNGIWrapper(model, LAYER, "cpu", input_dim=32, extractor_configs=[])
    with pytest.raises(ValueError, match="mode"):
        FUNGIWrapper(model, LAYER, "cpu", input_dim=32, extractor_configs=[KLConfig()], mode="exact")
    with pytest.raises(ValueError, match=r"\[192, 37056\]"):
        FUNGIWrapper(
            model, LAYER, "cpu", input_dim=32, extractor_configs=[KLConfig()], projection=torch.ones(3, 3)
        )
    w = FUNGIWrapper(
        model, LAYER, "cpu", input_dim=32, extractor_configs=[SimCLRConfig(stride_scale=1)], mode="fixed"
    )
    with pytest.raises(RuntimeError, match="setup"):
        w(_images(1))
    assert w(_images(0)).shape == (0, 192)
