"""The view recipes of fungivision 0.0.2's objectives, batched.

Each recipe uses the same torchvision operations, in the same order and with the same random draws, as
fungivision, so that identical random state gives identical views:

- KL: uint8 image -> resize (256, 256) bilinear antialiased -> centre crop -> [0, 1] -> ImageNet norm.
- DINO: 2 global crops (scale 0.25-1) + 10 local crops (scale 0.05-0.25), all resized to the input size
  with PIL bicubic, drawn with torchvision's RandomResizedCrop rule (`crop_box`) per image in that order.
- SimCLR: resize to (S, S) PIL bicubic -> [0, 1] -> overlapping patches (kernel S / sqrt(n), stride
  kernel // stride_scale) -> each resized to (S, S) bicubic antialiased on tensors -> ImageNet norm.
  The patch stage runs on the extraction device as one batched resize.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2 as tf
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "crop_box", "dino_views", "kl_views", "patch_views"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def kl_views(images: list[Image.Image], input_dim: int) -> torch.Tensor:
    """[B, 1, 3, input_dim, input_dim]: fungivision's KL transform of each image."""
    recipe = tf.Compose(
        [
            tf.ToImage(),
            tf.Resize((256, 256), interpolation=InterpolationMode.BILINEAR, antialias=True),
            tf.CenterCrop(input_dim),
            tf.ToDtype(torch.float32, scale=True),
            tf.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        ]
    )
    return torch.stack([recipe(_rgb(im)).as_subclass(torch.Tensor) for im in images]).unsqueeze(1)


def crop_box(
    height: int, width: int, scale: tuple[float, float], generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """(top, left, height, width) by torchvision's RandomResizedCrop rule (ratio 3/4 to 4/3), drawing the
    same numbers in the same order from ``generator`` (torch's default generator when None)."""
    area = height * width
    log_ratio = (math.log(_RATIO[0]), math.log(_RATIO[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            j = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(_RATIO):
        w, h = width, int(round(width / min(_RATIO)))
    elif in_ratio > max(_RATIO):
        h, w = height, int(round(height * max(_RATIO)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def dino_boxes(
    image: Image.Image,
    global_scale: tuple[float, float],
    local_scale: tuple[float, float],
    local_crops: int,
    generator: torch.Generator | None = None,
) -> list[tuple[int, int, int, int]]:
    """The crop boxes of one image: two global, then ``local_crops`` local, drawn in fungivision's order."""
    h, w = image.height, image.width
    boxes = [crop_box(h, w, global_scale, generator), crop_box(h, w, global_scale, generator)]
    boxes += [crop_box(h, w, local_scale, generator) for _ in range(local_crops)]
    return boxes


def dino_views(
    images: list[Image.Image],
    boxes: list[list[tuple[int, int, int, int]]],
    input_dim: int,
) -> torch.Tensor:
    """[B, V, 3, input_dim, input_dim]: each image's crops (boxes as from `dino_boxes`), resized with PIL
    bicubic and normalised."""
    out = torch.empty(len(images), len(boxes[0]) if boxes else 0, 3, input_dim, input_dim)
    for b, (image, image_boxes) in enumerate(zip(images, boxes, strict=True)):
        image = _rgb(image)
        for v, (top, left, h, w) in enumerate(image_boxes):
            crop = TF.resized_crop(
                image, top, left, h, w, [input_dim, input_dim], interpolation=InterpolationMode.BICUBIC
            )
            out[b, v] = _normalize(TF.pil_to_tensor(crop).float().div_(255))
    return out


def patch_grid(num_patches: int, image_size: int, stride_scale: int) -> tuple[int, int]:
    """(kernel, stride) of the SimCLR patches; fungivision requires image_size / sqrt(n) to be whole."""
    kernel = image_size / math.sqrt(num_patches)
    if not kernel.is_integer():
        raise ValueError(
            f"the image size ({image_size}) must be divisible by the square root of num_patches ({num_patches})"
        )
    kernel = int(kernel)
    stride = int(kernel / stride_scale)
    if stride < 1:
        raise ValueError(f"stride_scale {stride_scale} leaves a zero stride for {kernel}-pixel patches")
    return kernel, stride


def patch_views(
    images: list[Image.Image],
    num_patches: int,
    stride_scale: int,
    image_size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[B, V, 3, S, S] with S = image_size: fungivision's Patchify of each image, the patch resize batched
    on ``device``."""
    kernel, stride = patch_grid(num_patches, image_size, stride_scale)
    base = torch.stack(
        [
            TF.pil_to_tensor(
                TF.resize(_rgb(im), [image_size, image_size], interpolation=InterpolationMode.BICUBIC)
            )
            for im in images
        ]
    )
    base = base.to(device).float().div_(255)  # [B, 3, S, S]
    patches = base.unfold(2, kernel, stride).unfold(3, kernel, stride)  # [B, 3, N, N, k, k]
    b, c, n = patches.shape[:3]
    # fungivision reshapes [C, N, N, k, k] -> [C, N*N, k, k] -> [N*N, C, k, k]: patches in row-major order.
    patches = (
        patches.reshape(b, c, n * n, kernel, kernel).permute(0, 2, 1, 3, 4).reshape(-1, c, kernel, kernel)
    )
    resized = TF.resize(
        patches, [image_size, image_size], interpolation=InterpolationMode.BICUBIC, antialias=True
    )
    return _normalize(resized).reshape(b, n * n, c, image_size, image_size)
