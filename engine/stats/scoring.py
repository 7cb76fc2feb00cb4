"""Many-VDNA comparison and per-image scores against a reference VDNA, on the batched kernels."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from neuroprint.kernels.emd import batched_emd
from neuroprint.kernels.histogram import norm_params
from neuroprint.kernels.image_emd import per_image_emd

from .._errors import IncompatibleVDNAError, WeightsError
from ..io.decode import ImageLoader
from ..io.sources import open_source
from .profile import _CACHE, _progress, resolve_device
from .ranges import Ranges
from .vdna import VDNA, VDNAHist, check_compatible

__all__ = ["emd_matrix", "score_images"]

logger = logging.getLogger(__name__)


def _stack(vdnas: Sequence[VDNA], layer: str | None) -> torch.Tensor:
    layers = [layer] if layer is not None else list(vdnas[0].neurons_list)
    return torch.stack([torch.cat([v.data[k].cpu() for k in layers]) for v in vdnas])


def emd_matrix(
    vdnas_a: Sequence[VDNA],
    vdnas_b: Sequence[VDNA] | None = None,
    *,
    use_neurons_from_layer: str | None = None,
    device: str | torch.device | None = "cpu",
) -> torch.Tensor:
    """float64 [len(a), len(b)] matrix of vdna's EMD (mean over the selected neurons) for every pair.

    ``vdnas_b`` defaults to ``vdnas_a`` (a symmetric matrix with a zero diagonal). All VDNAs must be
    histogram VDNAs of the same settings and ranges.
    """
    a = list(vdnas_a)
    b = a if vdnas_b is None else list(vdnas_b)
    if not a or not b:
        raise ValueError("emd_matrix needs at least one VDNA on each side")
    for v in a + b:
        if not isinstance(v, VDNAHist):
            raise IncompatibleVDNAError(
                f"EMD needs histogram VDNAs, got {getattr(v, 'name', type(v).__name__)}"
            )
        check_compatible(a[0], v)
    if use_neurons_from_layer is not None and use_neurons_from_layer not in a[0].neurons_list:
        raise ValueError(
            f"layer {use_neurons_from_layer!r} not in the VDNAs; layers: {', '.join(a[0].neurons_list)}"
        )
    dev = resolve_device(device)
    ha = _stack(a, use_neurons_from_layer).to(dev)
    hb = ha if b is a else _stack(b, use_neurons_from_layer).to(dev)
    return batched_emd(ha, hb).view(len(a), len(b)).cpu()


def _check_reference(reference) -> Ranges:
    if not isinstance(reference, VDNAHist):
        raise IncompatibleVDNAError(
            f"scores need a histogram reference VDNA, got {getattr(reference, 'name', reference)}"
        )
    if reference.ranges is None:
        raise IncompatibleVDNAError(
            "the reference VDNA does not record its activation ranges (written by vdna?); "
            "re-profile it with neuroprint so that images are binned the same way"
        )
    return reference.ranges


class ReferenceScorer:
    """Per-image EMD of a batch's activations to one reference histogram VDNA (its ranges, its bins)."""

    def __init__(self, reference: VDNA, device):
        ranges = _check_reference(reference)
        self.layers = dict(reference.neurons_list)
        self.total = sum(self.layers.values())
        self.params = {
            k: tuple(t.to(device) for t in norm_params(ranges.mins[k], ranges.maxs[k])) for k in self.layers
        }
        self.refs = {k: reference.data[k].to(device) for k in self.layers}

    def __call__(self, feats) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(mean over all neurons [B], {layer: mean over the layer's neurons [B]})."""
        per_layer, overall = {}, None
        for k in self.layers:
            s = per_image_emd(feats[k], *self.params[k], self.refs[k])
            per_layer[k] = s.mean(dim=1).cpu().numpy()
            part = s.sum(dim=1)
            overall = part if overall is None else overall + part
        return (overall / self.total).cpu().numpy(), per_layer


def _weights_of(reference: VDNA, weights) -> str | os.PathLike:
    if weights is not None:
        return weights
    wid = reference.meta.get("weights")
    if wid is None:
        return "default"  # written by vdna: its published weights
    if wid.startswith("random:seed="):
        return "random"
    if wid.startswith("default:"):
        return "default"
    raise WeightsError(
        f"the reference was made with a local checkpoint ({wid}); pass the same file as weights=<path>"
    )


def score_images(
    source,
    reference: VDNA,
    *,
    weights: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
):
    """Each image's EMD to a reference histogram VDNA: a pyarrow Table with one row per source item.

    Columns: ``id``, ``uri``, ``ok``, ``error`` (the one-line reason when the image could not be read),
    ``emd`` (mean over all neurons) and ``emd/<layer>`` (mean over the layer's neurons). The image's own
    per-neuron histograms are never materialised (see `neuroprint.kernels.image_emd`). Rows follow the
    source order; unreadable images are rows with ``ok = False`` and null scores.
    """
    import pyarrow as pa

    ranges = _check_reference(reference)
    dev = resolve_device(device)
    seed = 0
    wid = reference.meta.get("weights", "")
    if wid.startswith("random:seed="):
        seed = int(wid.split("=", 1)[1])
    ex, model = _CACHE.get(
        reference.feature_extractor_name,
        weights=_weights_of(reference, weights),
        layers=list(reference.neurons_list),
        device=dev,
        dtype=dtype,
        seed=seed,
        compile=dev.type == "cuda",
    )
    if wid and ex.weights_id != wid:
        raise IncompatibleVDNAError(f"weights {ex.weights_id} differ from the reference's {wid}")
    rec = reference.meta.get("recipe")
    recipe = ex.recipe
    if rec:
        recipe = recipe.with_(resize=rec["resize"], crop=rec["crop"])
    layers = dict(reference.neurons_list)
    scorer = ReferenceScorer(reference, dev)
    src = open_source(source)
    workers = max(1, min(8, os.cpu_count() or 2)) if num_workers is None else num_workers
    loader = ImageLoader(
        src, recipe, batch_size=batch_size, num_workers=workers, pin_memory=dev.type == "cuda"
    )

    scores: dict[str, dict[str, np.ndarray]] = {}
    errors: dict[str, str] = {}
    with _progress(len(src), f"score {ex.name}", progress) as bar, torch.inference_mode():
        for batch in loader:
            for item, reason in batch.failures:
                errors[item.id] = reason
            if batch.items:
                feats = model(batch.pixels.to(dev, non_blocking=True))
                overall, per_layer = scorer(feats)
                for i, item in enumerate(batch.items):
                    scores[item.id] = {"emd": overall[i], **{k: v[i] for k, v in per_layer.items()}}
            bar.update(len(batch.items) + len(batch.failures))

    ids = [it.id for it in src]
    cols = {
        "id": pa.array(ids, pa.string()),
        "uri": pa.array([it.uri for it in src], pa.string()),
        "ok": pa.array([i in scores for i in ids], pa.bool_()),
        "error": pa.array([errors.get(i) for i in ids], pa.string()),
        "emd": pa.array([float(scores[i]["emd"]) if i in scores else None for i in ids], pa.float64()),
    }
    for k in layers:
        cols[f"emd/{k}"] = pa.array([float(scores[i][k]) if i in scores else None for i in ids], pa.float64())
    meta = {
        b"neuroprint.reference": str(reference.loaded_from_path).encode(),
        b"neuroprint.extractor": ex.name.encode(),
        b"neuroprint.weights": ex.weights_id.encode(),
        b"neuroprint.ranges_sha256": ranges.digest.encode(),
    }
    return pa.table(cols).replace_schema_metadata(meta)


def write_parquet(table, path: str | os.PathLike) -> None:
    """Write atomically: a temporary name, then a rename, so a reader never sees half a file."""
    import pyarrow.parquet as pq

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, target)
