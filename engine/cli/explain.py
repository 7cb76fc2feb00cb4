"""`neuroprint explain` (maps of units on every image of a source) and `neuroprint rf` (receptive fields).

Hooked into the main CLI with ``add_parser(subparsers)``; ``run(args)`` returns the exit code. Output
of ``explain``:

    OUT_DIR/maps/NNNNNN.npz      per image: maps float32 [K, H, W] (gradient methods: max |gradient| over
                                 colour channels), gradients float32 [K, 3, H, W] (gradient methods),
                                 grid float32 [K, nh, nw] (occlusion), units (labels) -- with --format npz
    OUT_DIR/overlays/NNNNNN_uK.png  the map of unit K over the image (the first --png-units units)
    OUT_DIR/index.parquet        one row per (image, unit): id, uri, status, error, unit, unit_index, file,
                                 png, peak, mean_abs; with --format parquet also map (float32 list) and
                                 map_shape, and no npz files
    OUT_DIR/explain.json         every setting that changes a number, and the counts
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .common import add_shared, num_images_arg

__all__ = ["METHODS", "add_parser", "add_rf_parser", "run", "run_rf"]

log = logging.getLogger(__name__)

# Names only: torch is imported when the command runs, so `neuroprint --help` stays fast.
METHODS = ("saliency", "guided", "smoothgrad", "occlusion", "actmap", "minimal", "masked")
PARTS = ("slic", "felzenszwalb", "quickshift", "pca", "ica")  # explain.SEGMENTERS + explain.DECOMPOSITIONS
_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")


def add_parser(subparsers) -> argparse.ArgumentParser:
    ep = subparsers.add_parser(
        "explain",
        help="maps of units (channels, neurons, tokens) over the pixels of every image of a source",
        description=(
            "Explain units of one layer of an extractor on every image of SOURCE: gradients (saliency, "
            "guided backprop, SmoothGrad), occlusion discrepancy maps, upsampled activation maps, or "
            "minimal and masked images. All units of a batch of images run in batched forwards. Writes "
            "one .npz of maps per image, PNG overlays and an index table to OUT_DIR. Units: C (channel C "
            "pooled over positions with --reduce), C@Y,X (channel C at grid position Y,X), C@T (channel "
            "C of token T), @T (token T pooled over channels), ranges of channels (8-11), or 'all' "
            "(every channel); give SOURCE before --units. Example: neuroprint explain imgs/ --extractor "
            "timm:resnet18 --weights random --layer layer3 --units 0,5 7@2,3 --method guided "
            "--out-dir out/"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ep.add_argument("source", help="a folder, image list, Parquet table or tar shard (as for profile)")
    ep.add_argument("--out-dir", required=True, help="output folder (created)")
    add_shared(ep, "extractor", "weights", extractor="timm:resnet18")
    ep.add_argument("--layer", required=True, help="a tap name or module path of the extractor's network")
    ep.add_argument(
        "--units",
        nargs="+",
        default=["all"],
        help="units: 'all', channels N, ranges A:B (B excluded) or A-B (B included), lists (0,5 8-11), "
        "C@Y,X, C@T, @T, separated by spaces or commas",
    )
    ep.add_argument(
        "--method",
        choices=METHODS,
        default="saliency",
        help="what to compute; minimal and masked write the reduced images (PNG) and their masks",
    )
    ep.add_argument(
        "--reduce", choices=("mean", "sum", "max"), default="mean", help="pooling of C and @T units"
    )
    sg = ep.add_argument_group("smoothgrad")
    sg.add_argument("--n-samples", type=int, default=16, help="noisy copies per image")
    sg.add_argument("--noise-level", type=float, default=0.1, help="noise std as a fraction of max-min")
    sg.add_argument("--seed", type=int, default=0, help="seed of the noise")
    sg.add_argument("--guided", action="store_true", help="smooth guided backprop instead of gradients")
    oc = ep.add_argument_group("occlusion")
    oc.add_argument("--window", type=int, nargs="+", default=[11], help="window side, or height width")
    oc.add_argument("--stride", type=int, nargs="+", default=[2], help="window step, or y x")
    oc.add_argument(
        "--baseline", type=float, default=0.0, help="value inside the window (network input units)"
    )
    am = ep.add_argument_group("actmap")
    am.add_argument("--interp", choices=_INTERPOLATIONS, default="bicubic", help="resampling to input size")
    am.add_argument("--threshold", type=float, default=None, help="zero values below this quantile (0..1)")
    mi = ep.add_argument_group("minimal and masked images")
    mi.add_argument(
        "--parts", choices=PARTS, default="slic", help="minimal: parcels or components to combine"
    )
    mi.add_argument("--n-parts", type=int, default=None, help="slic segments / PCA, ICA components")
    mi.add_argument("--keep", type=float, default=1.0, help="minimal: fraction of the unit's value to keep")
    mi.add_argument("--fraction", type=float, default=0.9, help="masked: erode while the unit keeps this")
    mi.add_argument("--blur", type=float, default=1.0, help="masked: sigma of the mask's blur (pixels)")
    mi.add_argument("--stdev-thr", type=float, default=1.0, help="masked: contrast mask at mean + k std")
    out = ep.add_argument_group("output and resources")
    out.add_argument("--format", choices=("npz", "parquet"), default="npz", help="where the maps go")
    out.add_argument("--png-units", type=int, default=8, help="overlays for the first N units (0: none)")
    add_shared(
        out,
        "batch_size",
        "num_workers",
        "device",
        batch_size=8,
        num_workers=2,
        aliases={"num_workers": "--workers"},
    )
    out.add_argument("--max-rows", type=int, default=64, help="rows (image x unit x sample) per forward")
    out.add_argument("--num-images", type=num_images_arg, default=-1, help="explain only the first N images")
    out.add_argument(
        "--backward",
        choices=("auto", "shared", "copies"),
        default="auto",
        help="gradient methods: one forward per image shared by all units (shared) or one copy per unit "
        "(copies); auto = shared on CPU, copies on GPU",
    )
    out.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return ep


def add_rf_parser(subparsers) -> argparse.ArgumentParser:
    rp = subparsers.add_parser(
        "rf",
        help="theoretical receptive fields of an extractor's layers (size, stride, start, unit regions)",
        description=(
            "Trace the network with torch.fx and print the receptive field of every layer, or of --layer: "
            "size and stride (jump) in input pixels, and the centre of unit (0, 0)'s field (start). With "
            "--unit Y,X also the input region of that unit, clipped to --input-size. Works for any "
            "conv/pool network, branches included (ResNets)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_shared(rp, "extractor", extractor="timm:resnet18")
    rp.add_argument("--layer", default=None, help="one tap name or module path; default: every layer")
    rp.add_argument(
        "--unit", default=None, help="Y,X (or C@Y,X) of a unit of --layer: print its input region"
    )
    rp.add_argument("--input-size", type=int, nargs=2, default=None, help="H W to clip regions to")
    rp.add_argument("--json", action="store_true", help="print JSON instead of a table")
    em = rp.add_argument_group(
        "empirical field (--empirical SOURCE --layer L --unit Y,X)",
        "Occlude each image of SOURCE with a sliding window and see where unit (Y,X) of --layer reacts: "
        "the per-image discrepancy maps are scaled to peak 1 and averaged; the field is where the mean "
        "reaches --threshold of its peak. Printed next to the theoretical region of the same unit.",
    )
    em.add_argument("--empirical", metavar="SOURCE", default=None, help="images: folder, list, Parquet, URL")
    add_shared(em, "weights")  # (the theoretical field needs none)
    em.add_argument("--channel", type=int, default=None, help="one channel at (Y,X); default: every channel")
    em.add_argument("--num-images", type=num_images_arg, default=64, help="use the first N images of SOURCE")
    em.add_argument("--window", type=int, nargs="+", default=[7], help="occluder side, or height width")
    em.add_argument("--stride", type=int, nargs="+", default=[2], help="occluder step, or y x")
    em.add_argument("--threshold", type=float, default=0.5, help="fraction of the mean map's peak")
    em.add_argument("--map", default=None, help="also write the mean map as a PNG heat map here")
    add_shared(em, "batch_size", "device", batch_size=8)
    em.add_argument("--max-rows", type=int, default=64, help="occluded images per forward")
    em.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return rp


def _parse_pair(values: list[int], what: str) -> tuple[int, int]:
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise ValueError(f"--{what} takes one or two integers")


def _units(tokens: list[str], reduce: str):
    """None for 'all'; else Units in the one unit grammar (`neuroprint.cli.common.UNIT_FORMS`)."""
    from ..explain import Unit
    from .common import parse_units

    parsed = parse_units(tokens, positions=True)
    if parsed is None:
        return None
    return [
        Unit(channel=u, reduce=reduce) if isinstance(u, int) else Unit.parse(u, reduce=reduce) for u in parsed
    ]


def _heat(values, rgb):
    """Blend a [H, W] map (normalised to [0, 1]) over an RGB float image as a blue-red ramp."""
    import numpy as np

    v = np.clip(values, 0.0, 1.0)[..., None]
    ramp = np.concatenate([v, 1.0 - np.abs(2 * v - 1.0), 1.0 - v], axis=-1)
    return np.clip(0.45 * rgb + 0.55 * ramp, 0.0, 1.0)


def _normalised(m):
    import numpy as np

    m = np.asarray(m, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def run(args) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image
    from tqdm.auto import tqdm

    from .._version import __version__
    from ..explain import (
        ActivationMap,
        GuidedBackprop,
        MaskedImages,
        MinimalImages,
        Occlusion,
        Saliency,
        SmoothGrad,
    )
    from ..extractors import create_extractor
    from ..io.decode import ImageLoader
    from ..io.sources import open_source

    if args.batch_size < 1 or args.max_rows < 1:
        raise ValueError("--batch-size and --max-rows must be at least 1")
    window = _parse_pair(args.window, "window")
    stride = _parse_pair(args.stride, "stride")
    units = _units(args.units, args.reduce)
    from ..stats.profile import resolve_device

    args.device = str(resolve_device(args.device))  # "auto": the first CUDA device when there is one
    ex = create_extractor(args.extractor, weights=args.weights, device=args.device)
    method = args.method
    if method in ("saliency", "guided"):
        explainer = (GuidedBackprop if method == "guided" else Saliency)(
            ex, args.layer, max_rows=args.max_rows, backward=args.backward
        )
    elif method == "smoothgrad":
        explainer = SmoothGrad(
            ex, args.layer, guided=args.guided, max_rows=args.max_rows, backward=args.backward
        )
    elif method == "occlusion":
        explainer = Occlusion(ex, args.layer, max_rows=args.max_rows)
    elif method == "actmap":
        explainer = ActivationMap(ex, args.layer, max_rows=args.max_rows)
    elif method == "minimal":
        explainer = MinimalImages(ex, args.layer, max_rows=args.max_rows)
    else:
        explainer = MaskedImages(ex, args.layer, max_rows=args.max_rows)

    source = open_source(args.source, num_images=args.num_images)
    loader = ImageLoader(source, ex.recipe, batch_size=args.batch_size, num_workers=args.num_workers)
    out_dir = Path(args.out_dir)
    (out_dir / "maps").mkdir(parents=True, exist_ok=True)
    if args.png_units > 0:
        (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    mean = np.asarray(ex.recipe.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(ex.recipe.std, dtype=np.float32)[:, None, None]

    rows: dict[str, list] = {
        k: []
        for k in (
            "id", "uri", "status", "error", "unit", "unit_index", "file", "png", "peak", "mean_abs", "value",
            "original",
        )
    }  # fmt: skip
    if args.format == "parquet":
        rows["map"], rows["map_shape"] = [], []
    labels: list[str] | None = None
    index = 0
    failed = 0
    with tqdm(total=len(source), desc=f"explain {method}", unit="img", disable=args.quiet) as bar:
        for batch in loader:
            for item, reason in batch.failures:
                failed += 1
                failure = {"id": item.id, "uri": item.uri, "status": "failed", "error": reason}
                for k, column in rows.items():
                    column.append(failure.get(k))
            if batch.items:
                x = batch.pixels.to(args.device)
                grads = grid = reduced = values = None
                if method in ("saliency", "guided"):
                    grads = explainer.attribute(x, units if units is not None else _all(explainer, x))
                    maps = grads.abs().amax(2)
                elif method == "smoothgrad":
                    grads = explainer.attribute(
                        x,
                        units if units is not None else _all(explainer, x),
                        n_samples=args.n_samples,
                        noise_level=args.noise_level,
                        seed=args.seed,
                    )
                    maps = grads.abs().amax(2)
                elif method == "occlusion":
                    res = explainer.attribute(
                        x,
                        units,
                        window=window,
                        stride=stride,
                        baseline=args.baseline,
                        statistic=args.reduce,
                        region="field",  # neuron units: windows outside their fields are skipped (exact)
                    )
                    maps, grid = res.maps, res.grid
                elif method == "actmap":
                    maps = explainer.attribute(x, units, mode=args.interp, threshold=args.threshold)
                else:
                    maps, reduced, values = _reduce_images(explainer, x, units, args)
                if labels is None:
                    shown = units if units is not None else _all(explainer, x)
                    labels = [u.label for u in shown]
                maps_np = maps.detach().float().cpu().numpy()
                for n, item in enumerate(batch.items):
                    name = f"{index:06d}"
                    file = None
                    if args.format == "npz":
                        arrays = {"maps": maps_np[n], "units": np.asarray(labels)}
                        if grads is not None:
                            arrays["gradients"] = grads[n].detach().float().cpu().numpy()
                        if grid is not None:
                            arrays["grid"] = grid[n].float().cpu().numpy()
                        if reduced is not None:
                            arrays["images"] = reduced[n].float().cpu().numpy()
                        file = f"maps/{name}.npz"
                        np.savez_compressed(out_dir / file, **arrays)
                    rgb = None
                    if args.png_units > 0:
                        pix = batch.pixels[n].numpy() * std + mean
                        rgb = np.clip(pix.transpose(1, 2, 0), 0.0, 1.0)
                    for k, label in enumerate(labels):
                        png = None
                        if rgb is not None and k < args.png_units:
                            png = f"overlays/{name}_u{k}.png"
                            if reduced is not None:  # the reduced image itself, in display colours
                                shown = reduced[n, k].float().cpu().numpy() * std + mean
                                over = np.clip(shown.transpose(1, 2, 0), 0.0, 1.0)
                            else:
                                over = _heat(_normalised(maps_np[n, k]), rgb)
                            Image.fromarray((over * 255).round().astype(np.uint8)).save(out_dir / png)
                        rows["id"].append(item.id)
                        rows["uri"].append(item.uri)
                        rows["status"].append("ok")
                        rows["error"].append(None)
                        rows["unit"].append(label)
                        rows["unit_index"].append(k)
                        rows["file"].append(file)
                        rows["png"].append(png)
                        rows["peak"].append(float(maps_np[n, k].max()))
                        rows["mean_abs"].append(float(np.abs(maps_np[n, k]).mean()))
                        rows["value"].append(None if values is None else float(values[n][k][0]))
                        rows["original"].append(None if values is None else float(values[n][k][1]))
                        if args.format == "parquet":
                            rows["map"].append(maps_np[n, k].ravel().astype(np.float32))
                            rows["map_shape"].append(list(maps_np[n, k].shape))
                    index += 1
            bar.update(len(batch.items) + len(batch.failures))
            if failed:
                bar.set_postfix(failed=failed)

    schema = {
        "id": pa.string(),
        "uri": pa.string(),
        "status": pa.string(),
        "error": pa.string(),
        "unit": pa.string(),
        "unit_index": pa.int32(),
        "file": pa.string(),
        "png": pa.string(),
        "peak": pa.float32(),
        "mean_abs": pa.float32(),
        "value": pa.float32(),
        "original": pa.float32(),
        "map": pa.list_(pa.float32()),
        "map_shape": pa.list_(pa.int32()),
    }
    table = pa.table({k: pa.array(v, type=schema[k]) for k, v in rows.items()})
    tmp = out_dir / "index.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(out_dir / "index.parquet")
    settings = {
        "neuroprint": __version__,
        "extractor": ex.name,
        "weights": ex.weights_id,
        "layer": args.layer,
        "method": method,
        "units": labels,
        "reduce": args.reduce,
        "recipe": ex.recipe.to_dict(),
        "dtype": str(next(ex.parameters()).dtype).replace("torch.", ""),
        "images": index,
        "failed": failed,
        "format": args.format,
    }
    if method == "smoothgrad":
        settings.update(
            n_samples=args.n_samples, noise_level=args.noise_level, seed=args.seed, guided=args.guided
        )
    if method == "occlusion":
        settings.update(
            window=list(window), stride=list(stride), baseline=args.baseline, statistic=args.reduce
        )
    if method == "actmap":
        settings.update(interpolation=args.interp, threshold=args.threshold)
    if method == "minimal":
        settings.update(parts=args.parts, n_parts=args.n_parts, keep=args.keep, baseline=args.baseline)
    if method == "masked":
        settings.update(
            fraction=args.fraction, blur=args.blur, stdev_thr=args.stdev_thr, baseline=args.baseline
        )
    (out_dir / "explain.json").write_text(json.dumps(settings, indent=2) + "\n")
    log.info("explained %d images (%d failed) into %s", index, failed, out_dir)
    if index == 0:
        raise ValueError(f"no image of {args.source} could be decoded ({failed} failed)")
    return 0


def _reduce_images(explainer, x, units, args):
    """Minimal or masked image of every unit on every image: (maps [N, K, H, W], images [N, K, C, H, W],
    values[n][k] = (unit value on the reduced image, on the original))."""
    import torch

    from ..explain import decompose

    shown = units if units is not None else _all(explainer, x)
    maps, images, values = [], [], []
    for n in range(x.shape[0]):
        per_map, per_image, per_value = [], [], []
        for u in shown:
            if args.method == "masked":
                r = explainer.attribute(
                    x[n],
                    u,
                    stdev_size_thr=args.stdev_thr,
                    filter_sigma=args.blur,
                    fraction=args.fraction,
                    baseline=args.baseline,
                )
                per_map.append(r.soft_mask)
                per_image.append(r.image)
                per_value.append((float(r.values[r.steps]), r.original))
                continue
            if args.parts in ("pca", "ica"):
                k = args.n_parts or 20
                r = explainer.components(x[n], u, method=args.parts, n_components=k, keep=args.keep)
                # components have no mask: the map is the kept components' magnitude over the mean row
                mean_rows, _ = decompose(x[n], args.parts, k)
                per_map.append((r.image - mean_rows.to(r.image.device)).abs().amax(0))
            else:
                params = {"n_segments": args.n_parts} if args.parts == "slic" and args.n_parts else {}
                r = explainer.parcels(
                    x[n], u, method=args.parts, keep=args.keep, baseline=args.baseline, **params
                )
                per_map.append(r.mask.to(x.dtype))
            per_image.append(r.image)
            chosen = (r.smallest or r.best) - 1
            per_value.append((float(r.cumulative_values[chosen]), r.full_value))
        maps.append(torch.stack(per_map))
        images.append(torch.stack(per_image))
        values.append(per_value)
    return torch.stack(maps), torch.stack(images), values


def _all(explainer, x):
    """Every channel of the layer, as units (for the gradient methods, which need them explicitly)."""
    from ..explain import Unit

    shape = explainer.layer_shape(x)
    return [Unit(channel=c) for c in range(shape.channels)]


def _rf_unit(text: str) -> tuple[int, int, int | None]:
    """rf's --unit: a position Y,X, or in the explain grammar C@Y,X (channel C there) or @Y,X."""
    from .common import parse_units

    word = text.strip().replace(" ", "")
    if "@" not in word:
        word = "@" + word
    unit = parse_units(word, positions=True, option="--unit")[0]
    head, _, where = unit.partition("@")
    coords = where.split(",")
    if len(coords) != 2:
        raise ValueError(f"--unit takes a position Y,X or C@Y,X, not {text!r}")
    return int(coords[0]), int(coords[1]), int(head) if head else None


def run_rf(args) -> int:
    import sys

    from ..explain import receptive_field, receptive_fields
    from ..extractors import create_extractor

    layers = [args.layer] if args.layer else None
    ex = create_extractor(args.extractor, weights="random", layers=layers)
    table = {args.layer: receptive_field(ex, args.layer)} if args.layer else receptive_fields(ex)
    size = tuple(args.input_size) if args.input_size else None
    region = None
    if args.unit is not None:
        if not args.layer:
            raise ValueError("--unit needs --layer")
        y, x, channel = _rf_unit(args.unit)
        if channel is not None:
            if args.channel is not None and args.channel != channel:
                raise ValueError(
                    f"--unit {args.unit!r} names channel {channel} but --channel is {args.channel}"
                )
            args.channel = channel
        region = table[args.layer].region(y, x, size)
    empirical = None
    if args.empirical is not None:
        if not args.layer or args.unit is None:
            raise ValueError("--empirical needs --layer and --unit Y,X")
        empirical = _empirical_rf(args, (y, x))
        if size is None:  # the theoretical region on the images' grid
            h, w = empirical["input_size"]
            region = table[args.layer].region(y, x, (h, w))
    if args.json:
        out = {
            name: {"size": rf.size, "stride": rf.stride, "start": rf.start, "global": rf.is_global}
            for name, rf in table.items()
        }
        if region is not None:
            out[args.layer]["region"] = {"unit": args.unit, "y": region[0], "x": region[1]}
        if empirical is not None:
            out[args.layer]["empirical"] = empirical
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    width = max(len(n) for n in table) if table else 5
    lines = [f"{'layer':<{width}}  {'size':>11}  {'stride':>9}  {'start':>13}"]
    for name, rf in table.items():
        if rf.is_global:
            lines.append(f"{name:<{width}}  {'global':>11}  {'-':>9}  {'-':>13}")
        else:
            s, j, c = rf.size, rf.stride, rf.start
            lines.append(f"{name:<{width}}  {s[0]:>5}x{s[1]:<5}  {j[0]:>4}x{j[1]:<4}  {c[0]:>6g},{c[1]:<6g}")
    if region is not None:
        (y0, y1), (x0, x1) = region
        lines.append(f"unit ({args.unit}) of {args.layer}: rows {y0}..{y1 - 1}, columns {x0}..{x1 - 1}")
    if empirical is not None:
        (y0, y1), (x0, x1) = empirical["y"], empirical["x"]
        lines.append(
            f"empirical field over {empirical['images']} images ({empirical['units']} unit(s), "
            f"threshold {empirical['threshold']:g}): rows {y0}..{y1 - 1}, columns {x0}..{x1 - 1}, "
            f"{empirical['area']} px"
            + (f"; {empirical['failed']} image(s) unreadable" if empirical["failed"] else "")
        )
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _empirical_rf(args, yx: tuple[int, int]) -> dict:
    """Occlusion maps of unit ``yx`` (one channel or all) over the images of ``args.empirical``."""
    import torch
    from tqdm.auto import tqdm

    from ..explain import Occlusion, Unit, empirical_field
    from ..extractors import create_extractor
    from ..io.decode import ImageLoader
    from ..io.sources import open_source

    if not 0 < args.threshold <= 1:
        raise ValueError("--threshold must be in (0, 1]")
    if args.num_images < 1 or args.batch_size < 1 or args.max_rows < 1:
        raise ValueError("--num-images, --batch-size and --max-rows must be at least 1")
    window = _parse_pair(args.window, "window")
    stride = _parse_pair(args.stride, "stride")
    from ..stats.profile import resolve_device

    args.device = str(resolve_device(args.device))  # "auto": the first CUDA device when there is one
    ex = create_extractor(args.extractor, weights=args.weights, device=args.device)
    explainer = Occlusion(ex, args.layer, max_rows=args.max_rows)
    source = open_source(args.empirical, num_images=args.num_images)
    loader = ImageLoader(source, ex.recipe, batch_size=args.batch_size, num_workers=2)
    maps, failed, units, field_box = [], 0, None, None
    with tqdm(total=len(source), desc="empirical rf", unit="img", disable=args.quiet) as bar:
        for batch in loader:
            failed += len(batch.failures)
            bar.update(len(batch.failures))
            if not batch.items:
                continue
            x = batch.pixels.to(args.device)
            if units is None:
                shape = explainer.layer_shape(x[:1])
                if shape.grid is None:
                    raise ValueError(f"layer {args.layer!r} has no spatial grid; its units have no field")
                gy, gx = shape.grid
                if not (0 <= yx[0] < gy and 0 <= yx[1] < gx):
                    raise ValueError(f"unit {yx} is outside layer {args.layer!r}'s {gy}x{gx} grid")
                if args.channel is not None and not 0 <= args.channel < shape.channels:
                    raise ValueError(f"--channel {args.channel} is outside the layer's {shape.channels}")
                channels = [args.channel] if args.channel is not None else range(shape.channels)
                units = [Unit(channel=c, position=yx) for c in channels]
            if field_box is None:
                from ..explain import receptive_field

                # Occluding outside the unit's theoretical field cannot move it: those windows are skipped.
                rf = receptive_field(ex, args.layer)
                field_box = None if rf.is_global else rf.region(yx[0], yx[1], tuple(x.shape[-2:]))
            res = explainer.attribute(
                x, units, window=window, stride=stride, progress=bar.update, region=field_box
            )
            maps.append(res.maps.flatten(0, 1).cpu())  # [N*K, H, W]
    if not maps:
        raise ValueError(f"no image of {args.empirical} could be read ({failed} failed)")
    all_maps = torch.cat(maps)
    field = empirical_field(all_maps, args.threshold)
    if args.map:
        from PIL import Image

        m = field.mean_map
        heat = (255 * (m / m.max().clamp(min=1e-12))).round().to(torch.uint8).numpy()
        Image.fromarray(heat, mode="L").save(args.map)
    return {
        "images": int(all_maps.shape[0] // len(units)),
        "failed": failed,
        "units": len(units),
        "channel": args.channel,
        "threshold": args.threshold,
        "y": list(field.region[0]),
        "x": list(field.region[1]),
        "area": field.area,
        "input_size": list(all_maps.shape[-2:]),
        "window": list(window),
        "stride": list(stride),
    }
