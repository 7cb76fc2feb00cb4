"""`neuroprint visualize`: a preferred image for every unit of a layer, all units in batched jobs.

Hooked into the main CLI with ``add_parser(subparsers)``; ``run(args)`` returns the exit code. Output:

    OUT_DIR/units/unit_NNNNN.png   one image per unit (RGBA with --param alpha)
    OUT_DIR/contact_sheet.png      every unit on one grid (alpha composited over white), in unit order
    OUT_DIR/index.parquet          one row per unit: unit, file, objective (final, without random
                                   transforms), initial_objective, steps, settings (JSON); the table's
                                   metadata holds the same settings plus the extractor and its weights;
                                   with --param dgn also code (the final generator code, float32 list)
    OUT_DIR/visualize.json         the settings, for people
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

from .common import REQUIRED, add_shared
from .common import parse_units as _parse_units

__all__ = ["add_parser", "parse_units", "run"]

log = logging.getLogger(__name__)

# Names only: torch is imported when the command runs, so `neuroprint --help` stays fast.
_PARAMS = ("fft", "pixel", "alpha", "dgn")
_OPTIMIZERS = ("adam", "sgd", "gd", "lbfgs", "lbfgs-joint")
_BACKGROUNDS = ("random", "noise", "adversarial")


def add_parser(subparsers) -> argparse.ArgumentParser:
    vp = subparsers.add_parser(
        "visualize",
        help="preferred image (feature visualisation) of every unit of a layer, units batched",
        description=(
            "Optimise one image per unit (channel) of LAYER so that the unit responds strongly, all units "
            "of a batch at once with independent random transforms. Parameterisations: fft (Lucid's "
            "decorrelated Fourier image), pixel, alpha (RGBA over random / noise / adversarial backgrounds) "
            "and dgn (cnnpref's fc6 generator prior; weights from --generator-weights). Writes one PNG per "
            "unit, a contact sheet and index.parquet to OUT_DIR. Example: neuroprint visualize --extractor "
            "timm:resnet18 --weights random --layer layer3 --units 0:64 --steps 256 --out-dir vis/"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_shared(vp, "extractor", "weights", "device", extractor=REQUIRED)
    vp.add_argument(
        "--layer",
        required=True,
        help="module path in the extractor's network (e.g. layer3, layer3.1.conv2); "
        "suffix ':pre' reads the module's input (pre-activation when it names an activation)",
    )
    vp.add_argument(
        "--units",
        default="all",
        help="channels: 'all', N, A:B (B excluded, clipped to the layer), A:B:STEP, A-B (B included), "
        "or lists of these (0:4,9 or 0-3,9)",
    )
    vp.add_argument("--param", choices=_PARAMS, default="fft", help="image parameterisation")
    vp.add_argument("--steps", type=int, default=256, help="optimisation steps")
    vp.add_argument("--size", type=int, default=128, help="image height and width in pixels")
    vp.add_argument(
        "--optimizer",
        choices=_OPTIMIZERS,
        default="adam",
        help="gd = cnnpref's scheduled GD; lbfgs = bounded L-BFGS per unit; lbfgs-joint = torch's L-BFGS "
        "over the whole batch",
    )
    vp.add_argument("--lr", type=float, default=0.05, help="learning rate (gd: start of its linear schedule)")
    vp.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: the network runs under bf16 autocast (about 2x on AVX512-BF16 CPUs and GPUs)",
    )
    vp.add_argument(
        "--transforms", choices=("standard", "none"), default="standard", help="random transforms per item"
    )
    vp.add_argument("--background", choices=_BACKGROUNDS, default="random", help="with --param alpha")
    vp.add_argument("--alpha-penalty", type=float, default=1.0, help="weight of (mean alpha - 0.25)^2")
    vp.add_argument("--generator-weights", default=None, help="fc6 generator weights for --param dgn")
    vp.add_argument("--code-upper", type=float, default=None, help="--param dgn: upper bound of the code")
    vp.add_argument("--batch-size", type=int, default=None, help="units optimised together (default: all)")
    vp.add_argument("--seed", type=int, default=0)
    vp.add_argument("--out-dir", required=True, help="output folder (created)")
    vp.add_argument("--no-progress", action="store_true", help="no progress bar")
    return vp


def parse_units(spec: str, n: int) -> list[int]:
    """Channels of a layer with ``n`` of them, in the one unit grammar (`neuroprint.cli.common.UNIT_FORMS`;
    channels only)."""
    units = _parse_units(spec, n=n)
    return list(range(n)) if units is None else units


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device: CUDA is not available on this machine")
    return dev


def _to_uint8(img):
    import numpy as np

    return (img.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def contact_sheet(images, pad: int = 2):
    """[K, C, H, W] in [0, 1] -> one uint8 HxWx3 grid, ceil(sqrt(K)) columns, alpha over white."""
    import numpy as np

    k, c, h, w = images.shape
    if c == 4:
        images = images[:, :3] * images[:, 3:] + (1 - images[:, 3:])
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    sheet = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(k):
        r, q = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        sheet[y : y + h, x : x + w] = _to_uint8(images[i])
    return sheet


def run(args) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from .._version import __version__
    from ..extractors import create_extractor
    from ..visualize import layer_channels, render

    if args.steps < 1 or args.size < 8:
        raise ValueError("--steps must be at least 1 and --size at least 8")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    device = _device(args.device)
    tap = args.layer.partition(":")[0]
    try:
        ex = create_extractor(args.extractor, weights=args.weights, layers=[tap], device=device)
    except (ValueError, KeyError):
        # Not a tap: a module path inside the network, hooked directly.
        ex = create_extractor(args.extractor, weights=args.weights, device=device)
    n = layer_channels(ex, args.layer, args.size)
    units = parse_units(args.units, n)
    param_options: dict = {}
    if args.param == "dgn":
        param_options["generator_weights"] = args.generator_weights
        param_options["code_bounds"] = (0.0, args.code_upper)
    res = render(
        ex,
        args.layer,
        units,
        param=args.param,
        param_options=param_options,
        size=args.size,
        steps=args.steps,
        optimizer=args.optimizer,
        lr=args.lr,
        transforms=args.transforms,
        background=args.background,
        alpha_penalty=args.alpha_penalty,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
        precision=args.precision,
    )
    out = Path(args.out_dir)
    (out / "units").mkdir(parents=True, exist_ok=True)
    settings = {
        **res.settings,
        "extractor": ex.name,
        "weights": ex.weights_id,
        "generator_weights": args.generator_weights if args.param == "dgn" else None,
        "code_upper": args.code_upper if args.param == "dgn" else None,
        "device": str(device),
        "neuroprint": __version__,
    }
    settings_json = json.dumps(settings, sort_keys=True)
    files = []
    for u, img in zip(res.units, res.images):
        name = f"units/unit_{u:05d}.png"
        arr = _to_uint8(img)
        Image.fromarray(arr, "RGBA" if arr.shape[2] == 4 else "RGB").save(out / name)
        files.append(name)
    Image.fromarray(contact_sheet(res.images)).save(out / "contact_sheet.png")
    columns = {
        "unit": pa.array(res.units, pa.int64()),
        "file": pa.array(files, pa.string()),
        "objective": pa.array(res.objective.double().tolist(), pa.float64()),
        "initial_objective": pa.array(res.initial.double().tolist(), pa.float64()),
        "steps": pa.array([args.steps] * len(files), pa.int64()),
        "settings": pa.array([settings_json] * len(files), pa.string()),
    }
    if res.codes is not None:
        columns["code"] = pa.array(res.codes.float().numpy().tolist(), pa.list_(pa.float32()))
    table = pa.table(columns).replace_schema_metadata({"neuroprint.visualize": settings_json})
    tmp = out / "index.parquet.tmp"
    pq.write_table(table, tmp)
    tmp.replace(out / "index.parquet")
    (out / "visualize.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    log.info("wrote %d unit images, contact_sheet.png and index.parquet to %s", len(files), out)
    return 0
