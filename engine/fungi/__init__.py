"""FUNGI: Features from UNsupervised GradIents, with fungivision 0.0.2's API and numbers.

    from neuroprint.fungi import FUNGIWrapper, KLConfig, DINOConfig, SimCLRConfig

    fungi = FUNGIWrapper(model, target_layer="blocks.11.attn.proj", device="cuda", use_fp16=True,
                         extractor_configs=[KLConfig(), DINOConfig(), SimCLRConfig()])
    fungi.setup(dataset=train_dataset)        # (PIL image, label) items; SimCLR's negatives
    features = fungi(list_of_pil_images)       # [B, 3 * E]: [KL | DINO | SimCLR], each L2-normalised

Each block is, for one image, the gradient of its objective's loss w.r.t. the target linear layer's
weight and bias (summed over the image's views and tokens, laid out [D_out, D_in + 1] row-major) times
fungivision's +-1 random projection to the embedding size E, then L2-normalised.

How it runs (the numbers are fungivision's; the work is not):
- the views of every objective go through the backbone together, grouped by size;
- the layers below the target layer run without autograd; the target layer's output becomes a leaf and
  only the tail is backpropagated (`torch.autograd.grad` w.r.t. that leaf: no weight gradients at all);
- the per-image gradients and their projection are one fused op (`neuroprint.kernels.grad_projection`:
  Triton on CUDA, never writing the [D_out, D_in + 1] gradient; a chunked torch reference elsewhere);
- SimCLR's patch resizing runs on the device.

Custom objective: subclass `BaseGradientExtractor` with `input_transform(input_dim)` (a transform of one
PIL image into [C, H, W] or [V, C, H, W]) and `compute_loss(latents, views_per_sample, **kw)` (the mean
over images of per-image losses from [B * V, L] latents, each image's graph independent), and write a
config dataclass whose `get_extractor(base_params)` returns ``YourExtractor(**(base_params |
asdict(self)))``; pass the config in ``extractor_configs``. Extra constructor parameters go before
``**kwargs``, as in fungivision (see tests/test_fungi.py for a worked example).

``mode="compat"`` (default) reproduces fungivision 0.0.2's numbers, quirks included; ``mode="fixed"``
fixes the quirks that change numbers. fungivision 0.0.2 defects found, and what this module does:

1. ``FUNGIWrapper(projection=P)`` raises UnboundLocalError (``scaling`` is only set when it draws P).
   Here a given projection ([E, D], fungivision's layout) works.
2. SimCLR passes ``input_dim`` to Patchify, whose parameter is ``image_size``: patches are always
   224 px. compat: 224; fixed: ``input_dim``.
3. SimCLR's InfoNCE normaliser is ``logsumexp(cos)`` without the temperature that scales the
   positives. compat: as is; fixed: ``logsumexp(cos / T)``.
4. SimCLR subtracts ``torch.diag(sim)`` as a row broadcast instead of zeroing the diagonal; this adds
   a constant (no gradient), so both modes compute the intended sum with identical gradients.
5. SimCLR's self-similarity mask is built with ``torch.ones(n)`` on the CPU, which a CUDA
   ``diagonal_scatter`` rejects (read from the source; not run here). Masks here live on the device.
6. The model is never put in eval mode: dropout / drop-path of a freshly built model stay active, so
   features are random and batch-dependent. Here: ``model.eval()``.
7. autocast is ``torch.cuda.amp.autocast(dtype=torch.bfloat16)``: ``fp16_dtype`` is ignored and CPUs
   run in float32 while the projection runs in half precision. Here: autocast on the device's type with
   ``fp16_dtype``; the projection accumulates in float32.
8. The target weight's full-batch gradient is computed and accumulated in ``.grad`` on every call
   (unused); all views of the negatives (1.9 GB at the defaults) are held at once; fewer images than
   ``comparison_batch_size`` silently give fewer negatives. Here: no parameter gradients, negatives
   encoded as they are made, a warning.
9. Per-sample bias gradients assume 3-d activations ([N, T, D]); a target fed [N, D] breaks. Here both
   work. Kept for compat, harmless after L2 normalisation: the 1 / sqrt(D) "scaling" and the gradient
   scaled by the number of views in the batch.

Other deliberate differences in both modes: the model's parameters are not frozen or touched; the
embedding size is probed with a zero image (fungivision draws a random one from the global generator);
heads and projection are drawn from ``seed`` (None: torch's global generator, as fungivision); views go
through the backbone ``views_per_forward`` at a time (results do not depend on it).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from neuroprint.kernels.grad_projection import grad_projection, projection_rows

from .knn import PCA, knn_accuracy, knn_predict, labels_from_ids
from .objectives import (
    MODES,
    BaseGradientExtractor,
    DINOConfig,
    DINOGradientsExtractor,
    KLConfig,
    KLGradientsExtractor,
    SimCLRConfig,
    SimCLRGradientsExtractor,
)

__all__ = [
    "MODES",
    "PCA",
    "BaseGradientExtractor",
    "DINOConfig",
    "DINOGradientsExtractor",
    "FUNGIWrapper",
    "KLConfig",
    "KLGradientsExtractor",
    "SimCLRConfig",
    "SimCLRGradientsExtractor",
    "generate_projection",
    "knn_accuracy",
    "knn_predict",
    "labels_from_ids",
]

log = logging.getLogger(__name__)


def _get_layer(model: nn.Module, path: str) -> nn.Module:
    try:
        layer = functools.reduce(getattr, path.split("."), model)
    except AttributeError:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        raise ValueError(
            f"{type(model).__name__} has no layer {path!r}; its linear layers include: {', '.join(linears[-8:])}"
        ) from None
    weight = getattr(layer, "weight", None)
    if not isinstance(layer, nn.Module) or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(
            f"target layer {path!r} must be a linear layer with a 2-d weight, got {type(layer).__name__}"
        )
    return layer


def generate_projection(
    embeddings_dim: int, gradients_dim: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """fungivision's random projection, as int8 [gradients_dim, embeddings_dim] (ours is its transpose).

    fungivision: ``((torch.rand((E, D)) - 0.5) > 0)`` -> +1, else -1, drawn on the CPU; with the same
    generator state this returns exactly that matrix, transposed.
    """
    draws = torch.rand((embeddings_dim, gradients_dim), generator=generator)
    # (u - 0.5) > 0 <=> u > 0.5 for float32 u in [0, 1) (the subtraction is exact where it matters).
    signs = (draws > 0.5).to(torch.int8).mul_(2).sub_(1)
    return signs.t().contiguous()


def _as_ours(projection: torch.Tensor, embeddings_dim: int, gradients_dim: int) -> torch.Tensor:
    """A projection given in fungivision's layout [E, D] -> ours [D, E] (int8 when it is all +-1)."""
    if tuple(projection.shape) != (embeddings_dim, gradients_dim):
        raise ValueError(
            f"projection must be [{embeddings_dim}, {gradients_dim}] (fungivision's [E, D]), "
            f"got {tuple(projection.shape)}"
        )
    if bool(((projection == 1) | (projection == -1)).all()):
        return projection.to(torch.int8).t().contiguous()
    return projection.float().t().contiguous()


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device):
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class FUNGIWrapper:
    """FUNGI features of any transformer backbone from one target linear layer (fungivision's signature;
    ``mode``, ``seed`` and ``views_per_forward`` are keyword-only additions; see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: str,
        device: torch.device | str,
        projection: torch.Tensor | None = None,
        input_dim: int = 224,
        use_fp16: bool = False,
        fp16_dtype: torch.dtype = torch.bfloat16,
        extractor_configs: Sequence = (),
        *,
        mode: str = "compat",
        seed: int | None = 0,
        views_per_forward: int | None = None,
    ) -> None:
        if model is None or not target_layer:
            raise ValueError("a model and a target layer path are required")
        if not extractor_configs:
            raise ValueError("extractor_configs must name at least one objective, e.g. [KLConfig()]")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.target_layer = target_layer
        self.layer = _get_layer(self.model, target_layer)
        self.bias = getattr(self.layer, "bias", None) is not None
        self.input_dim = input_dim
        self.use_fp16 = use_fp16
        self.fp16_dtype = fp16_dtype
        self.mode = mode
        self.seed = seed
        # Views per backbone call. On CPUs, calls of a few dozen views run faster per view than one call
        # over hundreds (large fresh activations cost page faults); GPUs want large batches.
        if views_per_forward is None:
            views_per_forward = 256 if self.device.type == "cuda" else 32
        if views_per_forward < 1:
            raise ValueError(f"views_per_forward must be >= 1, got {views_per_forward}")
        self.views_per_forward = int(views_per_forward)
        d_out, d_in = self.layer.weight.shape
        self.gradients_dim = projection_rows(d_out, d_in, self.bias)
        with torch.no_grad():
            probe = self.model(torch.zeros(1, 3, input_dim, input_dim, device=self.device))
        self.embeddings_dim = int(probe.shape[-1])
        with _seeded(seed, self.device):
            if projection is None:
                projection = generate_projection(self.embeddings_dim, self.gradients_dim)
            else:
                projection = _as_ours(projection, self.embeddings_dim, self.gradients_dim)
            self.projection = projection.to(self.device)
            # The CPU path is a GEMM that reads the whole projection per call: keep it in float32 there
            # rather than converting the int8 matrix every time.
            self._projection_compute = (
                self.projection if self.device.type == "cuda" else self.projection.float()
            )
            # fungivision: 1 / sqrt(projection.shape[1]) with its [E, D] layout, i.e. 1 / sqrt(D).
            self.projection_scaling = 1.0 / math.sqrt(self.gradients_dim)
            base = {
                "model": self.model,
                "target_layer": target_layer,
                "device": self.device,
                "projection": self.projection,
                "projection_scaling": self.projection_scaling,
                "embeddings_dim": self.embeddings_dim,
                "input_dim": input_dim,
                "use_fp16": use_fp16,
                "fp16_dtype": fp16_dtype,
                "mode": mode,
            }
            self.extractors: list[BaseGradientExtractor] = [
                cfg.get_extractor(base_params=base) for cfg in extractor_configs
            ]

    # ------------------------------------------------------------------------------------ public

    @property
    def feature_dim(self) -> int:
        return self.embeddings_dim * len(self.extractors)

    def projection_matrix(self) -> torch.Tensor:
        """The projection in fungivision's layout and dtype: float32 [E, D]."""
        return self.projection.t().float()

    def setup(self, dataset, generator: torch.Generator | None = None) -> None:
        """Run each objective's setup (SimCLR: encode its negatives) on a dataset of (PIL image, label).
        Draws from ``generator``, else from one seeded by ``seed``, else torch's global generator."""
        if generator is None and self.seed is not None:
            generator = torch.Generator().manual_seed(self.seed)
        for extractor in self.extractors:
            log.info("running setup for %s", type(extractor).__name__)
            if "generator" in inspect.signature(extractor.setup).parameters:
                extractor.setup(dataset=dataset, generator=generator)
            else:
                extractor.setup(dataset=dataset)

    def __call__(self, images, generator=None) -> torch.Tensor:
        return self.forward(images, generator=generator)

    def forward(self, images, generator=None) -> torch.Tensor:
        """[B, E * N] float32 features of a list of PIL images, one L2-normalised block per objective.

        ``generator`` drives the random views (DINO's crops): one generator for all images in order, a
        list with one per image (results then independent of batching and order), or None (torch's
        global generator, as fungivision).
        """
        blocks = self.extract(images, generator=generator)
        return torch.cat(blocks, dim=-1)

    def extract(self, images, generator=None) -> list[torch.Tensor]:
        """The per-objective blocks [B, E] of `forward`, each L2-normalised."""
        images = list(images)
        if not images:
            return [torch.zeros(0, self.embeddings_dim, device=self.device) for _ in self.extractors]
        with torch.inference_mode(False), torch.enable_grad():
            raw = self._projected_gradients(images, generator)
        return [F.normalize(r, dim=-1, p=2) for r in raw]

    # ---------------------------------------------------------------------------------- internals

    def _autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.fp16_dtype, enabled=self.use_fp16)

    def _forward_tail(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings of ``views`` with autograd recording only above the target layer; returns
        (embeddings, target input x, target output leaf y)."""
        captured: dict[str, torch.Tensor] = {}

        def hook(module, args, output):
            if "y" in captured:
                raise RuntimeError(f"target layer {self.target_layer!r} runs more than once per forward")
            captured["x"] = args[0].detach()
            captured["y"] = output.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # the tail records; no_grad's exit restores the outer mode
            return captured["y"]

        handle = self.layer.register_forward_hook(hook)
        try:
            with torch.no_grad(), self._autocast():
                embeddings = self.model(views)
        finally:
            handle.remove()
        if "y" not in captured:
            raise RuntimeError(f"target layer {self.target_layer!r} did not run in the model's forward")
        return embeddings, captured["x"], captured["y"]

    def _projected_gradients(self, images, generator) -> list[torch.Tensor]:
        b = len(images)
        view_sets = [ex.make_views(images, generator=generator) for ex in self.extractors]
        groups: dict[tuple[int, ...], list[int]] = {}
        for k, vs in enumerate(view_sets):
            if vs.dim() != 5 or vs.shape[0] != b:
                raise ValueError(
                    f"{type(self.extractors[k]).__name__} made views {tuple(vs.shape)}, not [B, V, C, H, W]"
                )
            groups.setdefault(tuple(vs.shape[2:]), []).append(k)

        total = None
        leaves, slices = [], {}
        for members in groups.values():
            # Some objectives make their views on the device (SimCLR), others on the CPU.
            batch = torch.cat(
                [
                    view_sets[k].reshape(-1, *view_sets[k].shape[2:]).to(self.device, non_blocking=True)
                    for k in members
                ]
            )
            parts = [self._forward_tail(chunk) for chunk in batch.split(self.views_per_forward)]
            embeddings = torch.cat([p[0] for p in parts])
            x = torch.cat([p[1] for p in parts])
            leaves.append([p[2] for p in parts])
            offset = 0
            for k in members:
                v = view_sets[k].shape[1]
                rows = slice(offset, offset + b * v)
                offset += b * v
                with self._autocast():
                    loss = self.extractors[k].loss(embeddings[rows], v)
                # fungivision scales the mean loss's gradient by the number of views in the batch.
                loss = loss.float() * (b * v)
                total = loss if total is None else total + loss
                slices[k] = (len(leaves) - 1, rows, x, v)
        flat = [y for group in leaves for y in group]
        flat_grads = iter(torch.autograd.grad(total, flat, allow_unused=True))
        grads = []
        for group in leaves:
            parts = [next(flat_grads) for _ in group]
            grads.append(None if any(g is None for g in parts) else torch.cat(parts))

        dtype = self.fp16_dtype if self.use_fp16 else torch.float32
        out = []
        for k in range(len(self.extractors)):
            leaf, rows, x, v = slices[k]
            g = grads[leaf]
            if g is None:
                raise RuntimeError(
                    f"{type(self.extractors[k]).__name__}'s loss does not depend on the target layer"
                )
            xk, gk = x[rows], g[rows]
            if xk.dim() == 2:  # a layer applied to pooled vectors: one token per view
                xk, gk = xk.unsqueeze(1), gk.unsqueeze(1)
            xk = xk.reshape(b, -1, xk.shape[-1]).to(dtype)
            gk = gk.reshape(b, -1, gk.shape[-1]).to(dtype)
            out.append(grad_projection(xk, gk, self._projection_compute, self.bias) * self.projection_scaling)
        return out
