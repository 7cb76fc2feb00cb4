"""Preprocessing recipes: everything that changes pixels before the network sees them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# "clean": clean-fid / vdna resize. Each channel is resized as a float32 PIL image (mode "F") with an
#          antialiased bicubic filter, clipped to [0, 255] and never quantised back to uint8.
# "legacy_pytorch": torch bilinear interpolation without antialiasing (pytorch-fid's in-network resize).
RESIZE_MODES = ("clean", "legacy_pytorch")

# vdna's crop_to_square_pre_resize: "none" squashes the whole image to the network's square input.
CROP_MODES = ("none", "center", "random")


@dataclass(frozen=True)
class Recipe:
    """How one extractor wants its pixels: resize, crop, scale to [0, 1], then (x - mean) / std."""

    size: tuple[int, int]  # (height, width) of the network input
    mean: tuple[float, float, float]  # per-channel mean subtracted after scaling to [0, 1]
    std: tuple[float, float, float]  # per-channel std divided after subtracting the mean
    resize: str = "clean"  # one of RESIZE_MODES
    crop: str = "none"  # one of CROP_MODES, applied before resizing

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize!r}; valid: {', '.join(RESIZE_MODES)}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"unknown crop mode {self.crop!r}; valid: {', '.join(CROP_MODES)}")
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def with_(self, **changes) -> Recipe:
        return Recipe(**{**asdict(self), **changes})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
