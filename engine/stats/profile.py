"""Making VDNAs: one pass over the pixels feeds every requested distribution.

``profile`` is the engine's entry point (several distributions from one forward pass);
``VDNAProcessor.make_vdna`` is vdna's signature on top of it.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._errors import EmptySourceError
from ..extractors import Extractor, create_extractor, published_ranges
from ..io.decode import DEFAULT_MAX_PIXELS, ImageLoader, decode_image, preprocess
from ..io.sources import Source, open_source
from .ranges import Ranges
from .reducers import ActivationRangesReducer, Reducer, make_reducer, parse_distribution
from .vdna import VDNA, get_vdna, load_ranges

__all__ = ["VDNAProcessor", "profile", "resolve_device"]

logger = logging.getLogger(__name__)

# At most this many failures are listed one by one in a VDNA's metadata; all are counted.
MAX_LISTED_FAILURES = 100_000


def resolve_device(device: str | torch.device | None) -> torch.device:
    """None or "auto" -> the first CUDA device when there is one, else the CPU (decided per call)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for, but this machine has no CUDA device; use device='cpu'"
        )
    return dev


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2)))


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


def _run_pass(
    loader: ImageLoader,
    model,
    reducers: Sequence[Reducer],
    device: torch.device,
    *,
    desc: str,
    progress: bool,
) -> list[tuple]:
    """Feed every batch through ``model`` into every reducer; returns the failed items."""
    failures = []
    with _progress(len(loader.items), desc, progress) as bar, torch.inference_mode():
        for batch in loader:
            failures.extend(batch.failures)
            if len(batch.items):
                pixels = batch.pixels.to(device, non_blocking=True)
                feats = model(pixels)
                for r in reducers:
                    r.update(feats)
            bar.update(len(batch.items) + len(batch.failures))
            if batch.failures:
                bar.set_postfix(failed=len(failures))
    return failures


def _resolve_ranges(ranges, extractor: Extractor, weights, auto_pass) -> Ranges:
    """Bin ranges for histograms, from (in this order of the ``ranges`` argument):

    a `Ranges`; "auto" (a pre-pass over the source); "published" or None (vdna's published ranges of
    the extractor, only meaningful with its published weights); a path to an activation_ranges.json or
    to an activation-ranges VDNA; an activation-ranges VDNA object.
    """
    if isinstance(ranges, Ranges):
        out = ranges
    elif isinstance(ranges, VDNA):
        if ranges.type != "activation-ranges":
            raise ValueError(f"ranges must be an activation-ranges VDNA, got a {ranges.name} VDNA")
        out = ranges.to_ranges()
    elif ranges == "auto":
        out = auto_pass()
    elif ranges is None or ranges == "published":
        if ranges is None and weights != "default":
            logger.warning(
                "ranges not given with weights=%r: using %s's published ranges, which were measured with its "
                "published weights; pass ranges='auto' to measure them on this source",
                weights,
                extractor.name,
            )
        raw = published_ranges(extractor.name)
        out = Ranges.from_vdna_json(
            {k: {layer: {str(i): v for i, v in n.items()} for layer, n in raw[k].items()} for k in raw},
            origin=f"published:{extractor.name}",
        )
    elif isinstance(ranges, (str, os.PathLike)):
        out = load_ranges(ranges)
    else:
        raise TypeError(
            f"ranges must be None, 'auto', 'published', a path or Ranges, not {type(ranges).__name__}"
        )
    out.check_covers(extractor.layers, what=f"extractor {extractor.name}")
    return out.subset(extractor.layers)


class _ExtractorCache:
    """Keeps the last extractor (and its compiled form) so that repeated calls do not rebuild it."""

    def __init__(self):
        self.key = None
        self.extractor: Extractor | None = None
        self.model = None

    def get(self, name, *, weights, layers, device, dtype, seed, compile):
        key = (name, str(weights), tuple(layers) if layers else None, str(device), dtype, seed, compile)
        if key != self.key:
            ex = create_extractor(name, weights=weights, layers=layers, device=device, dtype=dtype, seed=seed)
            model = ex
            if compile:
                # Taps are inside the network's forward, so the whole tapped graph is compiled.
                model = torch.compile(ex)
            self.key, self.extractor, self.model = key, ex, model
        return self.extractor, self.model


_CACHE = _ExtractorCache()


def profile(
    source,
    distributions: str | Sequence[str] = "histogram-1000",
    *,
    extractor: str = "mugs_vit_base",
    weights: str | os.PathLike = "default",
    layers: Sequence[str] | None = None,
    ranges=None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    compile: bool | None = None,
    num_images: int = -1,
    shuffle: bool = False,
    seed: int = 0,
    crop: str = "none",
    resize_mode: str | None = None,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    histogram_precision: str = "fp64",
) -> dict[str, VDNA]:
    """Profile a source with one extractor into one VDNA per distribution, from a single forward pass.

    source: a folder, image file, .txt list, .parquet table, list of paths or of uint8 HWC arrays.
    distributions: "histogram-<bins>", "gaussian", "layer-gaussian", "activation-ranges" (or several).
    ranges: bin ranges of histograms: None (the extractor's published ranges), "auto" (measured by a
        first pass over this source), a path to an activation_ranges.json or activation-ranges VDNA, or
        a `Ranges`. The ranges used are stored in the output and checked before any comparison.
    histogram_precision: "fp64" (vdna's arithmetic, the default) or "fp32" (`neuroprint.kernels.histogram`),
        recorded in the histogram VDNAs.
    device: None picks CUDA when present, else the CPU. compile: None compiles on CUDA only (on CPU the
        compile time exceeds the gain for all but very large jobs).
    max_pixels: images with more pixels (read from their header) are failures, never decoded (0: no
    limit; recorded in the data settings). Images that cannot be read are skipped and listed in each VDNA's ``failures``; a source with no
    readable image raises EmptySourceError.
    """
    names = [distributions] if isinstance(distributions, str) else list(distributions)
    if not names:
        raise ValueError("no distribution asked for")
    if len(set(names)) != len(names):
        raise ValueError(f"distribution repeated: {names}")
    kinds = [parse_distribution(n) for n in names]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    if compile is None:
        compile = dev.type == "cuda"
    src = (
        source
        if isinstance(source, Source)
        else open_source(source, num_images=num_images, shuffle=shuffle, seed=seed)
    )
    ex, model = _CACHE.get(
        extractor, weights=weights, layers=layers, device=dev, dtype=dtype, seed=seed, compile=compile
    )
    recipe = ex.recipe if crop == "none" else ex.recipe.with_(crop=crop)
    if resize_mode is not None:
        recipe = recipe.with_(resize=resize_mode)
    workers = _default_workers() if num_workers is None else int(num_workers)
    loader = ImageLoader(
        src,
        recipe,
        batch_size=batch_size,
        num_workers=workers,
        seed=seed,
        pin_memory=dev.type == "cuda",
        max_pixels=max_pixels,
    )

    def auto_pass() -> Ranges:
        r = ActivationRangesReducer(ex.layers)
        fails = _run_pass(loader, model, [r], dev, desc=f"ranges {ex.name}", progress=progress)
        if r.count == 0:
            raise _empty(src, fails)
        return r.to_ranges(origin=f"auto:{r.count} images of {src.kind}")

    hist_ranges = None
    if any(k == "histogram" for k, _ in kinds):
        hist_ranges = _resolve_ranges(ranges, ex, weights, auto_pass)

    reducers = [
        make_reducer(n, ex.layers, ranges=hist_ranges, device=dev, histogram_precision=histogram_precision)
        for n in names
    ]
    failures = _run_pass(loader, model, reducers, dev, desc=f"profile {ex.name}", progress=progress)
    used = reducers[0].count
    if used == 0:
        raise _empty(src, failures)
    if failures:
        logger.warning("%d of %d images could not be read and were skipped", len(failures), len(src))

    data_settings = {
        "source": _json_source(source.describe() if isinstance(source, Source) else source),
        "crop_to_square_pre_resize": crop,
        "resize_mode": recipe.resize,
        "shuffle_files": bool(shuffle),
        "num_images": int(num_images),
        "max_pixels": int(max_pixels),
    }
    extraction = {
        "num_workers": workers,
        "batch_size": int(batch_size),
        "device": str(dev),
        "seed": int(seed),
    }
    return build_vdnas(
        names, reducers, ex, recipe, dtype, src, failures, hist_ranges, data_settings, extraction
    )


def build_vdnas(
    names, reducers, ex, recipe, dtype, src, failures, hist_ranges, data_settings, extraction, decoder="pil"
) -> dict[str, VDNA]:
    """VDNA objects from finished reducers, with vdna's settings fields and neuroprint's metadata."""
    from .._version import __version__

    meta = {
        "version": __version__,
        "extractor": ex.name,
        "weights": ex.weights_id,
        "recipe": recipe.to_dict(),
        "decoder": decoder,  # "pil" (the reference) or "dali" (within _dali.MAX_ABS_TOLERANCE of it)
        "dtype": str(dtype).replace("torch.", ""),
        "source": src.describe(),
        "num_listed": len(src),
        "num_failed": len(failures),
        "failures": [
            {"id": it.id, "uri": it.uri, "reason": reason} for it, reason in failures[:MAX_LISTED_FAILURES]
        ],
    }
    out = {}
    for name, reducer in zip(names, reducers):
        kind, bins = parse_distribution(name)
        vdna = get_vdna(name)
        vdna.data = reducer.result()
        vdna.num_images = reducer.count
        vdna.feature_extractor_name = ex.name
        vdna.neurons_list = dict(ex.layers)
        vdna.data_settings_used.update(data_settings)
        vdna.extraction_settings_used.update(extraction)
        vdna.extraction_settings_used.update(_vdna_flags(kind, bins))
        vdna.meta = dict(meta)
        if kind == "histogram":
            vdna.meta["ranges"] = hist_ranges.to_json()
            precision = getattr(reducer, "precision", "fp64")
            if precision != "fp64":  # recorded only then: fp64 VDNAs stay byte-identical to earlier ones
                vdna.meta["histogram_precision"] = precision
                vdna.extraction_settings_used["histogram_precision"] = precision
        out[name] = vdna
    return out


def _vdna_flags(kind: str, bins: int) -> dict:
    """The extraction flags vdna's distribution classes set, so that our metadata reads as theirs."""
    if kind == "histogram":
        return {
            "accumulate_spatial_feats_in_hist": True,
            "accumulate_sample_feats_in_hist": True,
            "hist_nb_bins": bins,
            "normalise_feats": True,
        }
    if kind in ("gaussian", "layer-gaussian"):
        return {"average_feats_spatially": True}
    return {"keep_only_min_max": True}


def _empty(src: Source, failures) -> EmptySourceError:
    first = f"; first failure: {failures[0][0].uri}: {failures[0][1]}" if failures else ""
    return EmptySourceError(f"none of the {len(src)} images of the source could be read{first}")


def write_sample_images(folder, src: Source, recipe, n: int, seed: int) -> list[Path]:
    """Write ``n`` randomly chosen preprocessed images (denormalised) as PNG files, as vdna does."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = list(src)
    picks = rng.choice(len(items), size=min(n, len(items)), replace=False)
    written = []
    mean = np.asarray(recipe.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(recipe.std, dtype=np.float32).reshape(3, 1, 1)
    for k, i in enumerate(sorted(picks.tolist())):
        item = items[i]
        try:
            crop_rng = np.random.default_rng([seed, zlib.crc32(item.id.encode())])
            x = preprocess(decode_image(src.read(item)), recipe, crop_rng).numpy()
        except Exception as err:  # a sample that cannot be read is just not written
            logger.debug("sample %s skipped: %s", item.uri, err)
            continue
        img = np.clip((x * std + mean) * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        path = folder / f"{k}.png"
        Image.fromarray(img).save(path)
        written.append(path)
    return written


class VDNAProcessor:
    """vdna's entry point: ``VDNAProcessor().make_vdna(source, ...)``. Keeps the last extractor built."""

    def make_vdna(
        self,
        source,
        num_images: int = -1,
        shuffle_files: bool = False,
        feat_extractor_name: str = "mugs_vit_base",
        distribution_name: str = "histogram-1000",
        seed: int = 0,
        batch_size: int = 64,
        device: str | None = None,
        verbose: bool = True,
        num_workers: int | None = None,
        save_sample_images: str | os.PathLike | None = None,
        n_sample_images: int = 5,
        crop_to_square_pre_resize: str = "none",
        *,
        weights: str | os.PathLike = "default",
        ranges=None,
        layers: Sequence[str] | None = None,
        dtype: torch.dtype = torch.float32,
        compile: bool | None = None,
        resize_mode: str | None = None,
    ) -> VDNA:
        """Make one VDNA of ``source``; arguments as vdna's, plus (keyword-only) neuroprint's own.

        device: None (default) picks CUDA when present, else the CPU (vdna's default is "cuda:0").
        num_workers: decoding threads; None picks one per core, up to 8.
        weights, ranges, layers, dtype, compile, resize_mode: see `profile`.
        """
        src = open_source(source, num_images=num_images, shuffle=shuffle_files, seed=seed)
        vdna = profile(
            src,
            distribution_name,
            extractor=feat_extractor_name,
            weights=weights,
            layers=layers,
            ranges=ranges,
            batch_size=batch_size,
            num_workers=num_workers,
            device=device,
            dtype=dtype,
            compile=compile,
            seed=seed,
            crop=crop_to_square_pre_resize,
            resize_mode=resize_mode,
            progress=verbose,
        )[distribution_name]
        vdna.data_settings_used.update(
            {
                "source": _json_source(source),
                "shuffle_files": bool(shuffle_files),
                "num_images": int(num_images),
            }
        )
        vdna.extraction_settings_used.update(
            {"verbose": bool(verbose), "n_sample_images": int(n_sample_images)}
        )
        if save_sample_images is not None:
            recipe = _CACHE.extractor.recipe
            if crop_to_square_pre_resize != "none":
                recipe = recipe.with_(crop=crop_to_square_pre_resize)
            if resize_mode is not None:
                recipe = recipe.with_(resize=resize_mode)
            write_sample_images(save_sample_images, src, recipe, n_sample_images, seed)
        return vdna


def _json_source(source):
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, np.ndarray):
        return "Provided NumPy Arrays - not saved in metadata"
    if isinstance(source, (list, tuple)):
        if source and isinstance(source[0], np.ndarray):
            return "Provided NumPy Arrays - not saved in metadata"
        # vdna stores the list itself; past a few thousand paths that bloats every file, so it is described.
        return [os.fspath(p) for p in source] if len(source) <= 1000 else f"list of {len(source)} paths"
    if isinstance(source, dict):
        return source.get("path") or f"{source.get('kind')} source of {source.get('num_items')} images"
    return str(source)
