"""FUNGI's self-supervised objectives (fungivision 0.0.2): the extractor base class, KL, DINO, SimCLR and
their config dataclasses (same fields, defaults and `get_extractor(base_params)` contract).

An extractor here does not run the model: `FUNGIWrapper` makes the views of every objective, runs them
through the backbone in large batches and hands each extractor its slice of the embeddings. An extractor
says how to make its views (`make_views`), how embeddings become latents (`latents`) and what its
per-image loss is (`compute_loss`, mean over the batch, each image's graph independent of the others).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from . import views

__all__ = [
    "MODES",
    "BaseGradientExtractor",
    "DINOConfig",
    "DINOGradientsExtractor",
    "KLConfig",
    "KLGradientsExtractor",
    "SimCLRConfig",
    "SimCLRGradientsExtractor",
]

log = logging.getLogger(__name__)

# "compat": fungivision 0.0.2's numbers, quirks included. "fixed": its defects fixed (see each class).
MODES = ("compat", "fixed")


class BaseGradientExtractor(ABC):
    """One objective. Subclass it with `input_transform` and `compute_loss` (fungivision's contract), and
    override `make_views` / `latents` / `loss` when the objective needs more (see DINO and SimCLR).

    The constructor takes fungivision's base parameters; ``mode`` is this package's ("compat" or
    "fixed"); extra keyword arguments go to `input_transform`.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str,
        device: torch.device,
        projection: torch.Tensor,
        projection_scaling: float,
        embeddings_dim: int,
        latent_dim: int,
        input_dim: int = 224,
        use_fp16: bool = False,
        fp16_dtype: torch.dtype = torch.bfloat16,
        mode: str = "compat",
        **kwargs,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        self.model = model
        self.target_layer = target_layer
        self.device = torch.device(device)
        self.projection = projection
        self.projection_scaling = projection_scaling
        self.embeddings_dim = embeddings_dim
        self.latent_dim = latent_dim
        self.input_dim = input_dim
        self.use_fp16 = use_fp16
        self.fp16_dtype = fp16_dtype
        self.mode = mode
        self.projection_head = nn.Linear(embeddings_dim, latent_dim).to(self.device)
        self.transform = self.input_transform(input_dim=input_dim, **kwargs)

    @property
    def name(self) -> str:
        return type(self).__name__.removesuffix("GradientsExtractor").lower()

    @abstractmethod
    def input_transform(self, input_dim: int) -> Callable:
        """The transform of one PIL image into a [C, H, W] (one view) or [V, C, H, W] tensor."""

    def setup(self, dataset) -> None:  # noqa: B027 - optional hook, most objectives need nothing
        """Build supporting data (e.g. SimCLR's negatives) from a dataset of (PIL image, label)."""

    def make_views(self, images: list[Image.Image], generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, V, C, H, W] views of the images (on CPU or the device). The default applies
        `self.transform` to each image."""
        out = [self.transform(im) for im in images]
        out = [v.as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v for v in out]
        stacked = torch.stack(out)
        return stacked.unsqueeze(1) if stacked.dim() == 4 else stacked

    def latents(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B * V, E] backbone embeddings -> [B * V, L] latents: L2-normalise, then the projection head."""
        return self.projection_head(F.normalize(embeddings, dim=-1, p=2))

    def loss(self, embeddings: torch.Tensor, views_per_sample: int) -> torch.Tensor:
        """The mean over images of their losses, from the [B * V, E] embeddings of their views."""
        return self.compute_loss(self.latents(embeddings), views_per_sample)

    @abstractmethod
    def compute_loss(self, latents: torch.Tensor, views_per_sample: int, **kwargs) -> torch.Tensor:
        """Mean over the batch of per-image losses; latents is [B * V, L] with each image's V views
        adjacent. Each image's graph must be independent of the others'."""


# ---------------------------------------------------------------------------------------------- KL


class KLGradientsExtractor(BaseGradientExtractor):
    """KL divergence between softmax(latents / T) and the softmax of a uniform vector (itself uniform)."""

    def __init__(self, *args, temperature: float = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def input_transform(self, input_dim: int) -> Callable:
        return lambda im: views.kl_views([im], input_dim)[0, 0]

    def make_views(self, images, generator=None):
        return views.kl_views(images, self.input_dim)

    def compute_loss(self, latents, views_per_sample, **kwargs):
        latent_dim = latents.shape[1]
        uniform = torch.full((latent_dim,), 1.0 / latent_dim, device=latents.device)
        target = F.softmax(uniform / self.temperature, dim=0).expand(latents.shape[0], -1)
        log_p = F.log_softmax(latents / self.temperature, dim=1)
        # F.kl_div(log_p, target, reduction="mean") (the mean over all elements), without its warning.
        return (torch.xlogy(target, target) - target * log_p).mean()


@dataclass
class KLConfig:
    """Configuration for the KL objective."""

    temperature: float = 1  # softmax temperature for the latents and the uniform target
    latent_dim: int = 768  # output size of the linear projection head

    def get_extractor(self, base_params: dict) -> KLGradientsExtractor:
        return KLGradientsExtractor(**(base_params | asdict(self)))


# -------------------------------------------------------------------------------------------- DINO


class DINOGradientsExtractor(BaseGradientExtractor):
    """DINO's cross-entropy between a frozen teacher head on the 2 global views and the student head on
    all 12 views (every teacher view against every student view, the same view included, as fungivision).
    """

    GLOBAL_SCALE = (0.25, 1.0)
    LOCAL_SCALE = (0.05, 0.25)
    LOCAL_CROPS = 10

    def __init__(
        self, *args, teacher_temperature: float = 0.07, student_temperature: float = 0.1, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.teacher_temperature = teacher_temperature
        self.student_temperature = student_temperature
        self.teacher_projection = nn.Linear(self.embeddings_dim, self.latent_dim).to(self.device)
        self.teacher_projection.requires_grad_(False)

    def input_transform(self, input_dim: int) -> Callable:
        return lambda im: self.make_views([im])[0]

    def crop_boxes(self, images, generator: torch.Generator | None = None):
        """Each image's 12 (top, left, height, width) boxes, drawn as fungivision's DINOTransform draws them,
        from ``generator``: one for all images in order, a list with one per image, or None (torch's
        default generator, as fungivision)."""
        gens = list(generator) if isinstance(generator, (list, tuple)) else [generator] * len(images)
        if len(gens) != len(images):
            raise ValueError(f"{len(gens)} generators for {len(images)} images")
        return [
            views.dino_boxes(im, self.GLOBAL_SCALE, self.LOCAL_SCALE, self.LOCAL_CROPS, gen)
            for im, gen in zip(images, gens)
        ]

    def make_views(self, images, generator=None, boxes=None):
        boxes = self.crop_boxes(images, generator) if boxes is None else boxes
        return views.dino_views(images, boxes, self.input_dim)

    def loss(self, embeddings, views_per_sample):
        b = embeddings.shape[0] // views_per_sample
        normed = F.normalize(embeddings, dim=-1, p=2)
        with torch.no_grad():
            teacher = normed.reshape(b, views_per_sample, -1)[:, :2].reshape(b * 2, -1)
            teacher = self.teacher_projection(teacher)
        student = self.projection_head(normed)
        return self.compute_loss(student, views_per_sample, teacher_latents=teacher)

    def compute_loss(self, latents, views_per_sample, teacher_latents=None, **kwargs):
        b = latents.shape[0] // views_per_sample
        student = F.log_softmax(latents.reshape(b, views_per_sample, -1) / self.student_temperature, dim=-1)
        teacher = F.softmax(teacher_latents.reshape(b, 2, -1) / self.teacher_temperature, dim=-1)
        # sum_t sum_s -<teacher_t, student_s> = -<sum_t teacher_t, sum_s student_s>
        losses = -(teacher.sum(1) * student.sum(1)).sum(-1)
        return losses.mean()


@dataclass
class DINOConfig:
    """Configuration for the DINO objective."""

    teacher_temperature: float = 0.07  # softmax temperature for the teacher latents
    student_temperature: float = 0.1  # softmax temperature for the student latents
    latent_dim: int = 2048  # output size of the teacher and student projection heads

    def get_extractor(self, base_params: dict) -> DINOGradientsExtractor:
        return DINOGradientsExtractor(**(base_params | asdict(self)))


# ------------------------------------------------------------------------------------------ SimCLR


class SimCLRGradientsExtractor(BaseGradientExtractor):
    """InfoNCE of an image's overlapping patches (positives) against a fixed batch of negatives.

    Per positive view r of an image with V views, cosine similarities s over [negatives, own views] with
    s[r, r] replaced by ``self_similarity_constant``::

        loss_r = -sum_{c != r} s[r, c] / (T (V - 1)) + logsumexp_c(s[r, c] / t)

    fungivision ("compat") uses t = 1 in the normaliser, i.e. the temperature only scales the positives
    (its comment and InfoNCE say t = T); "fixed" uses t = T. fungivision also subtracts
    ``diag(s) / T`` as a row broadcast instead of zeroing the diagonal: that only adds a constant (the
    masked diagonal carries no gradient), so both modes compute the intended sum. In "compat" the
    patches are made at 224 pixels whatever ``input_dim`` (fungivision passes ``input_dim`` to Patchify
    under a name it ignores); "fixed" uses ``input_dim``.
    """

    def __init__(
        self,
        *args,
        temperature: float = 0.07,
        self_similarity_constant: float = -10e3,
        comparison_batch_size: int = 64,
        comparison_batch_encoding_batch_size: int = 32,
        num_patches: int = 4,
        stride_scale: int = 6,
        **kwargs,
    ) -> None:
        self.num_patches = num_patches
        self.stride_scale = stride_scale
        super().__init__(*args, **kwargs)
        self.temperature = temperature
        self.self_similarity_constant = self_similarity_constant
        self.comparison_batch_size = comparison_batch_size
        self.comparison_batch_encoding_batch_size = comparison_batch_encoding_batch_size
        self.comparison_batch: torch.Tensor | None = None
        self.image_size = 224 if self.mode == "compat" else self.input_dim
        views.patch_grid(num_patches, self.image_size, stride_scale)  # fail early on a bad grid

    def input_transform(self, input_dim: int) -> Callable:
        return lambda im: self.make_views([im])[0]

    def make_views(self, images, generator=None):
        return views.patch_views(images, self.num_patches, self.stride_scale, self.image_size, self.device)

    def setup(self, dataset, generator: torch.Generator | None = None) -> None:
        """Encode ``comparison_batch_size`` random images of ``dataset`` (their patches) as the negatives,
        drawn as fungivision draws them (a permutation from ``generator``, torch's default when None)."""
        order = torch.randperm(len(dataset), generator=generator)[: self.comparison_batch_size]
        if len(order) < self.comparison_batch_size:
            log.warning(
                "SimCLR negatives: the dataset has %d images, fewer than comparison_batch_size=%d",
                len(dataset),
                self.comparison_batch_size,
            )
        # Views are made image by image and encoded in consecutive batches of ``step`` (fungivision's
        # batches), so memory holds one batch and one image's views, not all of them at once.
        step = self.comparison_batch_encoding_batch_size
        encoded: list[torch.Tensor] = []
        buffer = None

        def encode(batch: torch.Tensor) -> None:
            encoded.append(self.projection_head(self.model(batch.to(self.device)).float()))

        with torch.no_grad():
            for i in order:
                made = self.make_views([dataset[int(i)][0]])[0]
                buffer = made if buffer is None else torch.cat([buffer, made])
                while len(buffer) >= step:
                    encode(buffer[:step])
                    buffer = buffer[step:]
            if buffer is not None and len(buffer):
                encode(buffer)
        self.comparison_batch = torch.cat(encoded)

    def latents(self, embeddings):
        # fungivision's SimCLR does not normalise embeddings before the head (its negatives neither).
        return self.projection_head(embeddings)

    def compute_loss(self, latents, views_per_sample, **kwargs):
        if self.comparison_batch is None:
            raise RuntimeError("SimCLR needs its negatives: call FUNGIWrapper.setup(dataset) first")
        v = views_per_sample
        b = latents.shape[0] // v
        pos = latents.reshape(b, v, -1)
        if self.use_fp16:
            pos = pos.to(self.fp16_dtype)
        neg = F.normalize(self.comparison_batch.to(pos.dtype), dim=-1, p=2)
        pos = F.normalize(pos, dim=-1, p=2)
        sim_neg = torch.einsum("bvl,ml->bvm", pos, neg)
        sim_pos = torch.einsum("bvl,bwl->bvw", pos, pos)
        eye = torch.eye(v, dtype=torch.bool, device=latents.device)
        sim_pos = sim_pos.masked_fill(eye, self.self_similarity_constant)
        positives = sim_pos.masked_fill(eye, 0.0).sum(-1) / (self.temperature * (v - 1))
        logits = torch.cat([sim_neg, sim_pos], dim=-1)
        if self.mode == "fixed":
            logits = logits / self.temperature
        nll = torch.logsumexp(logits, dim=-1) - positives  # [B, V]
        return nll.float().mean(1).mean()


@dataclass
class SimCLRConfig:
    """Configuration for the SimCLR objective."""

    temperature: float = 0.07  # scales the cosine similarities
    self_similarity_constant: float = -10e3  # replaces a view's similarity with itself (fits in fp16)
    comparison_batch_size: int = 64  # images in the negative batch (each gives V views)
    comparison_batch_encoding_batch_size: int = 32  # views per forward when encoding the negatives
    latent_dim: int = 96  # output size of the linear projection head
    num_patches: int = 4  # patches at stride scale 1; a perfect square
    stride_scale: int = 6  # the patch stride is patch_size // stride_scale

    def get_extractor(self, base_params: dict) -> SimCLRGradientsExtractor:
        return SimCLRGradientsExtractor(**(base_params | asdict(self)))
