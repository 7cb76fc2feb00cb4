"""Per-image quality statistics, computed at full resolution in the decode threads, and the quality flags
whose thresholds come from the reference's own distribution of the same statistics.

The statistics (all float32 columns but ``grayscale``, a bool; pixel values in [0, 1] unless said):

    brightness     mean perceived brightness sqrt(0.241 R^2 + 0.691 G^2 + 0.068 B^2) (cleanvision's formula)
    contrast       standard deviation of the 8-bit luma (77 R + 150 G + 29 B + 128) >> 8
    colourfulness  Hasler & Suesstrunk's M on rg = R - G, yb = (R + G) / 2 - B
    saturation     mean HSV saturation (max - min) / max
    laplacian_var  variance of the 4-neighbour Laplacian of the luma, in 8-bit units (low: blurry)
    entropy        Shannon entropy of the 256-bin luma histogram, in bits (low: little information)
    aspect_ratio   width / height
    grayscale      every pixel's channels within 2/255 of each other on average (mean spread < 2)
    dark_clip      share of pixels with luma <= 5/255;  light_clip: share >= 250/255

The flags (cleanvision's issue types, with its names where it has one), each against a threshold taken
at a percentile ``q`` (default 1) of the reference's values:

    dark            brightness below the reference's q-th percentile
    light           brightness above its (100 - q)-th percentile
    blurry          laplacian_var below its q-th percentile
    low_information entropy below its q-th percentile
    grayscale       a grayscale image, when grayscale images are rarer than q% in the reference
    odd_aspect_ratio |log aspect ratio - the reference's median| above its (100 - q)-th percentile and log 1.1
    odd_size        |log area - the reference's median| above its (100 - q)-th percentile and log 2
    clipped         dark_clip + light_clip above its (100 - q)-th percentile and 0.05
"""

from __future__ import annotations

import math

import numpy as np

from ..jobs.parts import Part, register_part
from ..kernels.pixel_stats import pixel_stats

__all__ = ["FLAGS", "QUALITY_COLUMNS", "Quality", "flag_images", "quality_stats", "thresholds_from"]

QUALITY_COLUMNS = (
    "brightness",
    "contrast",
    "colourfulness",
    "saturation",
    "laplacian_var",
    "entropy",
    "aspect_ratio",
    "grayscale",
    "dark_clip",
    "light_clip",
)
FLAGS = ("dark", "light", "blurry", "low_information", "grayscale", "odd_aspect_ratio", "odd_size", "clipped")

_ASPECT_FLOOR = math.log(1.1)
_SIZE_FLOOR = math.log(2.0)
_CLIP_FLOOR = 0.05


_SQ = {
    c: (w * np.arange(256, dtype=np.float32) ** 2).astype(np.float32)
    for c, w in zip("rgb", (0.241, 0.691, 0.068))
}
# 0.241 R^2 + 0.691 G^2 of every (R, G), indexed R * 256 + G: the same float32 sums as adding the two
# tables' entries per pixel, in one lookup
_SQ_RG = (_SQ["r"][:, None] + _SQ["g"][None, :]).astype(np.float32).ravel()
_idx = np.arange(256, dtype=np.float32)
# saturation (max - min) / max of every (max, min) pair, indexed max * 256 + min
_SAT = (
    np.where(_idx[:, None] > 0, (_idx[:, None] - _idx[None, :]) / np.maximum(_idx[:, None], 1), 0)
    .astype(np.float32)
    .ravel()
)
_TABLES = {"sq_rg": _SQ_RG, "sq_b": _SQ["b"], "sat": _SAT}


def _moments(counts: np.ndarray, offset: int) -> tuple[float, float]:
    """Mean and variance of integer values ``k - offset`` with ``counts[k]`` occurrences."""
    v = np.arange(counts.size, dtype=np.float64) - offset
    total = counts.sum()
    mean = float((counts * v).sum() / total)
    return mean, float((counts * (v - mean) ** 2).sum() / total)


def quality_stats(img: np.ndarray) -> dict:
    """The statistics above of one uint8 RGB image [H, W, 3], at its full resolution.

    One compiled pass over the pixels (`neuroprint.kernels.pixel_stats`: histograms and sums, about a
    millisecond for a 640x480 image), then the moments of the histograms: the luma is the 8-bit ITU-R 601
    luma (77 R + 150 G + 29 B + 128) >> 8, on which the contrast, entropy, clipping and Laplacian are
    computed, as OpenCV users compute them on a grayscale image.
    """
    s = pixel_stats(img, _TABLES)  # checks that img is a uint8 RGB image [H, W, 3]
    h, w = img.shape[:2]
    px = h * w
    counts = s["luma_hist"].astype(np.float64)
    mean_l, var_l = _moments(counts, 0)
    m_rg, v_rg = _moments(s["rg_hist"], 255)
    m_yb2, v_yb2 = _moments(s["yb_hist"], 510)
    m_yb, v_yb = m_yb2 / 2, v_yb2 / 4  # yb = (R + G) / 2 - B
    colourful = math.sqrt(v_rg + v_yb) + 0.3 * math.hypot(m_rg, m_yb)
    lap_var = _moments(s["lap_hist"], 1020)[1] if h >= 3 and w >= 3 else 0.0
    p = counts[counts > 0] / px
    return {
        "brightness": s["bright_sum"] / px / 255.0,
        "contrast": math.sqrt(var_l) / 255.0,
        "colourfulness": colourful / 255.0,
        "saturation": s["sat_sum"] / px,
        "laplacian_var": lap_var,
        "entropy": float(-(p * np.log2(p)).sum()),
        "aspect_ratio": w / h,
        "grayscale": bool(s["spread_sum"] / px < 2.0),
        "dark_clip": float(counts[:6].sum()) / px,
        "light_clip": float(counts[250:].sum()) / px,
    }


@register_part
class Quality(Part):
    """The quality statistics of each decoded image as columns (computed in the decode threads)."""

    name = "quality"

    def settings(self) -> dict:
        return {"quality": list(QUALITY_COLUMNS)}

    def per_image(self, img) -> dict:
        return quality_stats(img)

    def fields(self) -> list:
        import pyarrow as pa

        return [(c, pa.bool_() if c == "grayscale" else pa.float32()) for c in QUALITY_COLUMNS]

    def columns(self, batch, feats) -> dict:
        values = batch.per_image[self.name]
        return {c: [v[c] for v in values] for c in QUALITY_COLUMNS}


def _derived(table: dict) -> dict:
    """Arrays the flags read: the statistics plus log aspect ratio, log area and the clipped share."""
    out = {c: np.asarray(table[c], dtype=np.float64) for c in QUALITY_COLUMNS}
    out["log_aspect"] = np.log(np.maximum(out["aspect_ratio"], 1e-9))
    area = np.asarray(table["width"], dtype=np.float64) * np.asarray(table["height"], dtype=np.float64)
    out["log_area"] = np.log(np.maximum(area, 1.0))
    out["clip"] = out["dark_clip"] + out["light_clip"]
    return out


def thresholds_from(reference: dict, percentile: float) -> dict:
    """The flags' thresholds from the reference's statistics (a dict of arrays over its readable images)."""
    if not 0 < percentile < 50:
        raise ValueError(f"the flags' percentile must be in (0, 50), got {percentile}")
    d = _derived(reference)
    if d["brightness"].size == 0:
        raise ValueError("the reference has no readable image with quality statistics")
    q, top = percentile, 100 - percentile
    med_aspect, med_area = float(np.median(d["log_aspect"])), float(np.median(d["log_area"]))
    return {
        "percentile": q,
        "dark": {"brightness <": float(np.percentile(d["brightness"], q))},
        "light": {"brightness >": float(np.percentile(d["brightness"], top))},
        "blurry": {"laplacian_var <": float(np.percentile(d["laplacian_var"], q))},
        "low_information": {"entropy <": float(np.percentile(d["entropy"], q))},
        "grayscale": {"reference share": float(d["grayscale"].mean()), "flagged when share <": q / 100},
        "odd_aspect_ratio": {
            "median log aspect": med_aspect,
            "|log aspect - median| >": max(
                float(np.percentile(np.abs(d["log_aspect"] - med_aspect), top)), _ASPECT_FLOOR
            ),
        },
        "odd_size": {
            "median log area": med_area,
            "|log area - median| >": max(
                float(np.percentile(np.abs(d["log_area"] - med_area), top)), _SIZE_FLOOR
            ),
        },
        "clipped": {"dark_clip + light_clip >": max(float(np.percentile(d["clip"], top)), _CLIP_FLOOR)},
    }


def flag_images(table: dict, th: dict) -> dict:
    """{flag: bool array} for images with statistics ``table`` (dict of arrays), thresholds ``th``."""
    d = _derived(table)
    gray_rare = th["grayscale"]["reference share"] < th["grayscale"]["flagged when share <"]
    return {
        "dark": d["brightness"] < th["dark"]["brightness <"],
        "light": d["brightness"] > th["light"]["brightness >"],
        "blurry": d["laplacian_var"] < th["blurry"]["laplacian_var <"],
        "low_information": d["entropy"] < th["low_information"]["entropy <"],
        "grayscale": (d["grayscale"] > 0.5) & gray_rare,
        "odd_aspect_ratio": np.abs(d["log_aspect"] - th["odd_aspect_ratio"]["median log aspect"])
        > th["odd_aspect_ratio"]["|log aspect - median| >"],
        "odd_size": np.abs(d["log_area"] - th["odd_size"]["median log area"])
        > th["odd_size"]["|log area - median| >"],
        "clipped": d["clip"] > th["clipped"]["dark_clip + light_clip >"],
    }
