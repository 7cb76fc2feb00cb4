"""Minimal images and masked images: the least of an image that keeps a unit's activation.

Minimal images (dnnbrain's MinimalParcelImage / MinimalComponentImage): the image is split into parts,
either parcels (felzenszwalb, slic or quickshift superpixels from scikit-image; a parcel alone is shown
over a baseline) or components (PCA or ICA of the image's rows; a component alone is added to the mean
row). Parts are sorted by the unit's value on each part alone; the cumulative unions of the first
1, 2, ... parts are evaluated, and the result names the union with the largest value (dnnbrain's "max"
criterion) and the smallest union that keeps ``keep`` times the full image's value. Every part image and
every union runs in batched forwards.

Masked images (dnnbrain's MaskedImage): a contrast mask (importance >= mean + k std) is blurred into a
soft mask and eroded one pixel ring at a time while the unit keeps ``fraction`` of its value. The
erosion sequence is fixed in advance, so all its steps run batched; the result is what the sequential
loop would stop at.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .layer import ExplainError, Unit, as_units
from .maps import LayerExplainer, Saliency, _as_batch

SEGMENTERS = ("felzenszwalb", "slic", "quickshift")
DECOMPOSITIONS = ("pca", "ica")


def _display(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] network input -> [H, W, 3] float in [0, 1] for the segmenters (min-max per image)."""
    arr = image.detach().to(torch.float64).cpu().numpy().transpose(1, 2, 0)
    lo, hi = arr.min(), arr.max()
    arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return arr if arr.shape[2] == 3 else np.repeat(arr[..., :1], 3, axis=2)


def segment(rgb: np.ndarray, method: str = "slic", **params) -> np.ndarray:
    """Parcel labels [H, W] (0..n-1) of an [H, W, 3] float image in [0, 1], by scikit-image."""
    try:
        from skimage import segmentation
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ExplainError("parcels need scikit-image: pip install scikit-image") from err
    if method == "felzenszwalb":
        defaults = {"scale": 100, "sigma": 0.5, "min_size": 50}
        labels = segmentation.felzenszwalb(rgb, **{**defaults, **params})
    elif method == "slic":
        defaults = {"n_segments": 250, "compactness": 10, "sigma": 1, "start_label": 0}
        labels = segmentation.slic(rgb, **{**defaults, **params})
    elif method == "quickshift":
        defaults = {"kernel_size": 3, "max_dist": 6, "ratio": 0.5, "rng": 0}
        labels = segmentation.quickshift(rgb, **{**defaults, **params})
    else:
        raise ExplainError(f"unknown segmenter {method!r}; valid: {', '.join(SEGMENTERS)}")
    _, dense = np.unique(labels, return_inverse=True)
    return dense.reshape(labels.shape).astype(np.int64)


def decompose(image: torch.Tensor, method: str = "pca", n_components: int | None = None, seed: int = 0):
    """(mean [C, H, W], components [K, C, H, W]) with image ~= mean + components.sum(0).

    The image's rows are the samples (H of them, each W*C values); a component is the outer product of
    its row scores and its loadings. With every component (n_components=None: H for PCA, H - 1 for
    ICA) the sum is the image.
    """
    c, h, w = image.shape
    x = image.detach().to(torch.float64).cpu().permute(1, 2, 0).reshape(h, w * c)
    # ICA whitens the centred rows, whose rank is at most H - 1
    most = min(h if method == "pca" else h - 1, w * c)
    k = most if n_components is None else int(n_components)
    if not 1 <= k <= most:
        raise ExplainError(f"n_components must be in 1..{most} for {method}")
    mean_row = x.mean(0, keepdim=True)
    if method == "pca":
        u, s, vt = torch.linalg.svd(x - mean_row, full_matrices=False)
        scores, loadings = u[:, :k] * s[:k], vt[:k].T  # [H, K], [W*C, K]
    elif method == "ica":
        try:
            from sklearn.decomposition import FastICA
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ExplainError("ICA components need scikit-learn: pip install scikit-learn") from err
        ica = FastICA(n_components=k, random_state=seed, whiten="unit-variance", max_iter=1000)
        scores = torch.from_numpy(ica.fit_transform(x.numpy()))  # [H, K]
        loadings = torch.from_numpy(ica.mixing_)  # [W*C, K]
        mean_row = torch.from_numpy(ica.mean_)[None, :]
    else:
        raise ExplainError(f"unknown decomposition {method!r}; valid: {', '.join(DECOMPOSITIONS)}")
    comps = torch.einsum("hk,fk->khf", scores, loadings).reshape(k, h, w, c).permute(0, 3, 1, 2)
    mean = mean_row.expand(h, -1).reshape(h, w, c).permute(2, 0, 1)
    return mean.to(image.dtype), comps.to(image.dtype)


@dataclass
class MinimalImage:
    """The parts of one image ranked for one unit, and the least union that keeps its value."""

    order: list[int]  # parts sorted by the unit's value on each part alone (``sort`` order)
    part_values: torch.Tensor  # [n] value of each part alone, indexed by part
    cumulative_values: torch.Tensor  # [n] value of the union of the first i + 1 parts of ``order``
    full_value: float  # value on the whole image
    best: int  # parts in the union with the largest value (dnnbrain's "max" criterion)
    smallest: int | None  # fewest parts whose union keeps >= keep * full_value; None: no union does
    keep: float
    image: torch.Tensor  # [C, H, W]: the smallest keeping union, or the best union when none keeps
    labels: np.ndarray | None = None  # [H, W] parcel of each pixel (parcels only)
    mask: torch.Tensor | None = None  # [H, W] pixels of ``image``'s parcels (parcels only)


@dataclass
class MaskedImage:
    """A unit's image reduced to an eroded, blurred mask that keeps ``fraction`` of its value."""

    image: torch.Tensor  # [C, H, W]: image * soft_mask + baseline * (1 - soft_mask)
    mask: torch.Tensor  # [H, W] bool: the binary mask after ``steps`` erosions
    soft_mask: torch.Tensor  # [H, W]: the blurred mask that was applied
    steps: int  # erosions kept
    values: torch.Tensor  # [T + 1]: the unit's value after 0..T erosions (T: until empty or max_steps)
    original: float  # the unit's value on the unmasked image
    kept: bool  # whether even the un-eroded mask keeps the fraction


class MinimalImages(LayerExplainer):
    """Minimal parcel and component images of one unit (see the module docstring)."""

    def _values(self, images: torch.Tensor, unit: Unit) -> torch.Tensor:
        us = self.compile_units(images[:1], [unit])
        out = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.max_rows):
                out.append(us.matrix(self.layer_acts(images[start : start + self.max_rows]))[:, 0])
        return torch.cat(out)

    def _rank(self, parts, unions_of, full_value: float, keep: float, sort: str):
        part_values = self._values(parts, self._unit)
        order = torch.argsort(part_values, descending=(sort == "descending"), stable=True).tolist()
        unions = unions_of(order)
        cumulative = self._values(unions, self._unit)
        best = int(torch.argmax(cumulative)) + 1
        # the full union is the image itself; a batch of another size may round it differently by an ulp
        reach = torch.nonzero(cumulative >= keep * full_value - 1e-5 * abs(full_value)).flatten()
        smallest = int(reach[0]) + 1 if reach.numel() else None
        return order, part_values, cumulative, best, smallest, unions

    def _prepare(self, image: torch.Tensor, unit, keep: float, sort: str):
        if sort not in ("descending", "ascending"):
            raise ExplainError("sort must be 'descending' or 'ascending'")
        if not 0 < keep:
            raise ExplainError("keep must be positive")
        x = _as_batch(image, self.probe)
        if x.shape[0] != 1:
            raise ExplainError("minimal images take one image [C, H, W] at a time")
        units = as_units(unit)
        if len(units) != 1:
            raise ExplainError("minimal images take one unit")
        self._unit = units[0]
        return x[0], float(self._values(x, self._unit)[0])

    def parcels(
        self,
        image: torch.Tensor,
        unit: Unit | int | str,
        *,
        method: str = "slic",
        baseline: float | torch.Tensor = 0.0,
        keep: float = 1.0,
        sort: str = "descending",
        rgb: np.ndarray | None = None,
        **segment_params,
    ) -> MinimalImage:
        """Parcels by ``method`` (scikit-image; ``segment_params`` override dnnbrain's defaults) of ``rgb``
        (default: the input min-max scaled); a parcel alone is shown over ``baseline``."""
        x, full = self._prepare(image, unit, keep, sort)
        labels = segment(_display(x) if rgb is None else rgb, method, **segment_params)
        if labels.shape != tuple(x.shape[-2:]):
            raise ExplainError(f"rgb is {labels.shape}, the image {tuple(x.shape[-2:])}")
        lab = torch.from_numpy(labels).to(x.device)
        n = int(lab.max()) + 1
        masks = (lab[None] == torch.arange(n, device=x.device)[:, None, None]).to(x.dtype)  # [n, H, W]
        base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        parts = x * masks[:, None] + base * (1 - masks[:, None])

        def unions_of(order):
            cum = masks[order].cumsum(0).clamp(max=1)[:, None]
            return x * cum + base * (1 - cum)

        order, part_values, cumulative, best, smallest, unions = self._rank(
            parts, unions_of, full, keep, sort
        )
        chosen = (smallest or best) - 1
        mask = masks[order[: chosen + 1]].sum(0) > 0
        return MinimalImage(
            order, part_values, cumulative, full, best, smallest, keep, unions[chosen], labels, mask
        )

    def components(
        self,
        image: torch.Tensor,
        unit: Unit | int | str,
        *,
        method: str = "pca",
        n_components: int | None = 20,
        keep: float = 1.0,
        sort: str = "descending",
        seed: int = 0,
    ) -> MinimalImage:
        """Components by PCA or ICA (``decompose``); a component alone is added to the mean row."""
        x, full = self._prepare(image, unit, keep, sort)
        mean, comps = decompose(x, method, n_components, seed)
        mean, comps = mean.to(x.device), comps.to(x.device)
        parts = mean[None] + comps

        def unions_of(order):
            return mean[None] + comps[order].cumsum(0)

        order, part_values, cumulative, best, smallest, unions = self._rank(
            parts, unions_of, full, keep, sort
        )
        chosen = (smallest or best) - 1
        return MinimalImage(order, part_values, cumulative, full, best, smallest, keep, unions[chosen])


def _blur(masks: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0:
        return masks.astype(np.float64)
    from scipy.ndimage import gaussian_filter

    return np.stack([gaussian_filter(m.astype(np.float64), sigma, mode="constant") for m in masks])


class MaskedImages(LayerExplainer):
    """Masked images of one unit (see the module docstring)."""

    def attribute(
        self,
        image: torch.Tensor,
        unit: Unit | int | str,
        *,
        importance: torch.Tensor | None = None,
        stdev_size_thr: float = 1.0,
        filter_sigma: float = 1.0,
        fraction: float = 0.9,
        max_steps: int = 100,
        baseline: float | torch.Tensor = 0.0,
    ) -> MaskedImage:
        """importance: [H, W] map of where the unit looks (an occlusion or SmoothGrad map); default the
        max |gradient| over colour channels, blurred by ``filter_sigma``. The contrast mask keeps pixels
        with importance >= mean + stdev_size_thr * std (dnnbrain's stdev_size_thr)."""
        from scipy.ndimage import binary_erosion

        if not 0 < fraction <= 1:
            raise ExplainError("fraction must be in (0, 1]")
        x = _as_batch(image, self.probe)
        if x.shape[0] != 1:
            raise ExplainError("masked images take one image [C, H, W] at a time")
        units = as_units(unit)
        if len(units) != 1:
            raise ExplainError("masked images take one unit")
        u = units[0]
        if importance is None:
            grad = Saliency(self.model, self.layer, max_rows=self.max_rows).attribute(x, [u])[0, 0]
            importance = torch.from_numpy(_blur(grad.abs().amax(0).cpu().numpy()[None], filter_sigma)[0])
        imp = importance.detach().to(torch.float64).cpu().numpy()
        if imp.shape != tuple(x.shape[-2:]):
            raise ExplainError(f"importance is {imp.shape}, the image {tuple(x.shape[-2:])}")
        mask = imp >= imp.mean() + stdev_size_thr * imp.std()
        if not mask.any():
            mask = np.ones_like(mask)
        seq = [mask]
        while len(seq) <= max_steps and seq[-1].any():
            seq.append(binary_erosion(seq[-1], structure=np.ones((3, 3), dtype=bool)))
        if not seq[-1].any() and len(seq) > 1:
            seq.pop()  # an empty mask shows nothing: never a candidate
        soft = torch.from_numpy(_blur(np.stack(seq), filter_sigma)).to(device=x.device, dtype=x.dtype)
        base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        candidates = x * soft[:, None] + base * (1 - soft[:, None])
        us = self.compile_units(x, [u])
        with torch.no_grad():
            original = float(us.matrix(self.layer_acts(x))[0, 0])
            values = torch.cat(
                [
                    us.matrix(self.layer_acts(candidates[s : s + self.max_rows]))[:, 0]
                    for s in range(0, candidates.shape[0], self.max_rows)
                ]
            )
        ok = (values >= fraction * original).tolist()
        steps = 0
        while steps + 1 < len(ok) and ok[0] and ok[steps + 1]:
            steps += 1
        return MaskedImage(
            candidates[steps], torch.from_numpy(seq[steps]), soft[steps], steps, values, original, bool(ok[0])
        )
