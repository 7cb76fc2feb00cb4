"""Argument types shared by every sub-command's parser (one definition, one error message)."""

from __future__ import annotations

import argparse

from ..io._limits import DEFAULT_MAX_PIXELS

__all__ = ["DEFAULT_MAX_PIXELS", "UNIT_FORMS", "max_pixels_arg", "num_images_arg", "parse_units"]


def num_images_arg(text: str) -> int:
    """argparse type of every --num-images: -1 (all images) or a positive count; 0 is refused, not 'all'."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n == 0 or n < -1:
        raise argparse.ArgumentTypeError(f"must be -1 (all images) or at least 1, got {n}")
    return n


def max_pixels_arg(text: str) -> int:
    """argparse type of --max-pixels: a pixel count (``100000000``, ``100M``, ``1.5G``); 0 is no limit."""
    t = text.strip().upper()
    scale = {"K": 10**3, "M": 10**6, "G": 10**9}.get(t[-1:], 1)
    try:
        n = float(t[:-1] if scale != 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a pixel count such as 100000000 or 100M, got {text!r}"
        ) from None
    if n < 0 or n != n:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0: no limit), got {text!r}")
    return int(n)


# ------------------------------------------------------------------------------------------------- units

UNIT_FORMS = (
    "'all', a channel N, a half-open range A:B (B excluded, clipped to the layer as a slice; A: to its "
    "end) or A:B:STEP, an "
    "inclusive range A-B, lists of these (0,5,8-11 or 0:4 9), and where positions are taken C@Y,X "
    "(channel C at row Y, column X), C@T (channel C of token T) and @T (token T pooled over channels)"
)


def _unit_error(option: str, piece: str) -> ValueError:
    return ValueError(f"{option}: cannot read {piece!r}; write {UNIT_FORMS}")


def _channel_range(piece: str, n: int | None, option: str) -> list[int]:
    if ":" in piece:
        bits = [b.strip() for b in piece.split(":")]
        if len(bits) > 3 or not all(b == "" or b.isdigit() for b in bits):
            raise _unit_error(option, piece)
        start = int(bits[0]) if bits[0] else 0
        if bits[1] == "" and n is None:
            raise ValueError(
                f"{option}: {piece!r} runs to the layer's end, which is not known here; give A:B"
            )
        stop = int(bits[1]) if bits[1] else n
        if n is not None:
            stop = min(stop, n)  # as a Python slice: a half-open range stops at the layer's end
        step = int(bits[2]) if len(bits) > 2 and bits[2] else 1
        if step < 1:
            raise _unit_error(option, piece)
        return list(range(start, stop, step))
    lo, sep, hi = piece.partition("-")
    if sep:
        if not (lo.strip().isdigit() and hi.strip().isdigit()) or int(lo) > int(hi):
            raise _unit_error(option, piece)
        return list(range(int(lo), int(hi) + 1))
    if not piece.isdigit():
        raise _unit_error(option, piece)
    return [int(piece)]


def parse_units(
    spec, *, n: int | None = None, positions: bool = False, option: str = "--units"
) -> list[int | str] | None:
    """The one unit grammar of explain, visualize and rf (`UNIT_FORMS`): a string or the tokens of an
    nargs="+" option -> None for 'all', else channel ints and, with ``positions``, the ``C@Y,X`` /
    ``C@T`` / ``@T`` strings (for `neuroprint.explain.Unit.parse`), in the order given. ``A:B`` and
    ``A-B+1`` select the same channels. With ``n`` (the layer's channels), every channel is checked."""
    tokens = [spec] if isinstance(spec, str) else list(spec)
    pieces: list[str] = []
    for token in tokens:
        for word in str(token).split():
            if "@" in word:  # C@Y,X holds a comma of its own: the whole word is one unit
                pieces.append(word)
            else:
                pieces.extend(p.strip() for p in word.split(",") if p.strip())
    if pieces == ["all"]:
        return None
    if not pieces:
        raise ValueError(f"{option} is empty; write {UNIT_FORMS}")
    units: list[int | str] = []
    for piece in pieces:
        if piece == "all":
            raise ValueError(f"{option}: 'all' cannot be combined with other units")
        if "@" in piece:
            if not positions:
                raise ValueError(f"{option}: {piece!r} is a position; this command takes channels only")
            head, _, where = piece.partition("@")
            coords = where.split(",")
            if not (head.strip() == "" or head.strip().isdigit()) or not (
                1 <= len(coords) <= 2 and all(c.strip().isdigit() for c in coords)
            ):
                raise _unit_error(option, piece)
            units.append(piece)
            continue
        units.extend(_channel_range(piece, n, option))
    if n is not None:
        bad = [u for u in units if isinstance(u, int) and not 0 <= u < n]
        if bad:
            raise ValueError(f"{option}: channel(s) {bad[:5]} outside the layer's {n} channels (0..{n - 1})")
    if not units:
        raise ValueError(f"{option} {' '.join(tokens)!r} selects no unit")
    return units


# The options several sub-commands take, defined once: same spelling, same meaning, same help. A command
# adds the ones it takes with `add_shared`; only the default may differ (given there), never the meaning.
_SHARED = {
    "extractor": (("--extractor",), dict(help="registered extractor or timm model name")),
    "weights": (
        ("--weights",),
        dict(
            help="'default' (published weights, downloaded once), 'random' (seeded, offline) or a checkpoint path"
        ),
    ),
    "layers": (("--layers",), dict(nargs="+", help="tap only these layers (module paths for timm models)")),
    "device": (
        ("--device",),
        dict(help="auto (the first CUDA device when there is one, else cpu), cpu, cuda:1, ..."),
    ),
    "batch_size": (("--batch-size",), dict(type=int, help="images per forward")),
    "num_workers": (
        ("--num-workers",),
        dict(type=int, help="decoding threads (none given: one per core, up to 8)"),
    ),
    "decoder": (
        ("--decoder",),
        dict(
            choices=["auto", "pil", "dali"],
            help="image decoding; auto = DALI on CUDA when installed, else PIL (the reference)",
        ),
    ),
    "ray": (("--ray",), dict(action="store_true", help="run on Ray actors (local Ray unless --ray-address)")),
    "num_actors": (
        ("--num-actors",),
        dict(type=int, help="Ray actors [default: one per GPU, else per CPU]"),
    ),
    "ray_address": (("--ray-address",), dict(help="an existing Ray cluster (e.g. auto or ray://head:10001)")),
}
SHARED_DEFAULTS = {
    "extractor": "mugs_vit_base",
    "weights": "default",
    "layers": None,
    "device": "auto",
    "batch_size": 64,
    "num_workers": None,
    "decoder": "auto",
    "ray": False,
    "num_actors": None,
    "ray_address": None,
}


def add_shared(parser, *names: str, aliases: dict | None = None, **defaults):
    """Add the shared options ``names`` (keys of ``SHARED_DEFAULTS``, e.g. "extractor", "batch_size") to
    ``parser``; ``defaults`` overrides a default (``required=True`` as ``extractor=REQUIRED``); ``aliases``
    adds old spellings ({"num_workers": "--workers"})."""
    for name in names:
        flags, kwargs = _SHARED[name]
        kwargs = dict(kwargs, dest=name)
        value = defaults.pop(name, SHARED_DEFAULTS[name])
        if value is REQUIRED:
            kwargs["required"] = True
        elif kwargs.get("action") != "store_true":
            kwargs["default"] = value
        extra = (aliases or {}).get(name)
        parser.add_argument(*flags, *([extra] if extra else []), **kwargs)
    if defaults:
        raise TypeError(f"defaults for options not added: {', '.join(defaults)}")


REQUIRED = object()
