"""What a FUNGI pass is built from, for `neuroprint features` and for jobs (``run_job(fungi=...)``): the
options and their defaults, the timm backbone (random, timm-pretrained or a local checkpoint), the
FUNGIWrapper with its SimCLR negatives, each image's own view generator and the backbone's embeddings.
A library module: the CLI (``_fungi_cli``) and the job both import it; it imports neither.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

# Names only (neuroprint._names, importable without torch; test_fungi_cli checks MODES against fungi.MODES)
from .._names import FUNGI_MODES as MODES
from .._names import FUNGI_OBJECTIVES as OBJECTIVES

__all__ = [
    "JOB_DEFAULTS",
    "MODES",
    "OBJECTIVES",
    "build_wrapper",
    "embedding_fn",
    "item_generator",
    "job_options",
]

log = logging.getLogger(__name__)


def _configs():
    from . import DINOConfig, KLConfig, SimCLRConfig

    return {"kl": KLConfig, "dino": DINOConfig, "simclr": SimCLRConfig}


def _objectives(spec: str) -> list[str]:
    names = [s.strip().lower() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in OBJECTIVES]
    if bad or not names:
        raise ValueError(f"unknown objective(s) {bad or spec!r} in --fungi; valid: {', '.join(OBJECTIVES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--fungi names an objective twice: {spec!r}")
    return names


def _build_model(args):
    import timm
    import torch

    kwargs = {"num_classes": 0}
    if args.input_dim != 224 or (args.mode == "compat" and "simclr" in args.fungi):
        kwargs |= {"img_size": args.input_dim, "dynamic_img_size": True}  # compat SimCLR views are 224 px
    # Random weights come from --seed, so that two runs (e.g. train and test splits) share one network.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        try:
            model = timm.create_model(args.model, pretrained=args.weights == "timm", **kwargs)
        except TypeError:  # not a ViT-like model: no img_size arguments
            model = timm.create_model(args.model, pretrained=args.weights == "timm", num_classes=0)
    if args.weights not in ("random", "timm"):
        path = Path(args.weights)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("head")]
        if missing:
            raise ValueError(f"{path} lacks {len(missing)} of {args.model}'s weights, e.g. {missing[:3]}")
        if unexpected:
            log.warning(
                "ignoring %d unexpected weights in %s, e.g. %s", len(unexpected), path, unexpected[:3]
            )
    return model.eval()


def _default_layer(model) -> str:
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise ValueError("this model has no `blocks`: name the target linear layer with --layer")
    return f"blocks.{len(blocks) - 1}.attn.proj"


# The options of `neuroprint features` that define the features; a job (run_job(fungi=...)) takes the same.
JOB_DEFAULTS = {
    "fungi": "kl,dino,simclr",
    "model": "vit_small_patch16_224",
    "weights": "random",
    "layer": None,
    "input_dim": 224,
    "negatives": None,
    "fp16": False,
    "mode": "compat",
    "seed": 0,
}


def job_options(options: dict | None) -> dict:
    """run_job's ``fungi`` argument completed with the defaults and checked; json-able (job settings)."""
    unknown = sorted(set(options or {}) - set(JOB_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown FUNGI option(s) {unknown}; valid: {', '.join(JOB_DEFAULTS)}")
    opts = {**JOB_DEFAULTS, **(options or {})}
    opts["fungi"] = ",".join(_objectives(opts["fungi"]))
    if opts["mode"] not in MODES:
        raise ValueError(f"unknown FUNGI mode {opts['mode']!r}; valid: {', '.join(MODES)}")
    return opts


def build_wrapper(opts, device, source):
    """(FUNGIWrapper, target layer) for options ``opts`` (a namespace with JOB_DEFAULTS' fields), its SimCLR
    negatives drawn from ``opts.negatives`` or else ``source``."""
    from ..io.sources import open_source
    from . import FUNGIWrapper

    configs = _configs()
    names = _objectives(opts.fungi)
    model = _build_model(opts)
    layer = opts.layer or _default_layer(model)
    wrapper = FUNGIWrapper(
        model, layer, device, input_dim=opts.input_dim, use_fp16=opts.fp16,
        extractor_configs=[configs[n]() for n in names], mode=opts.mode, seed=opts.seed,
    )  # fmt: skip
    if "simclr" in names:
        wrapper.setup(_Negatives(open_source(opts.negatives) if opts.negatives else source))
    return wrapper, layer


def item_generator(seed: int, item_id: str):
    """Each image's crops come from its own generator, so they do not depend on batching or sharding."""
    import torch

    digest = hashlib.blake2b(f"{seed}:{item_id}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def _pil(source, item):
    from PIL import Image

    from ..io.decode import decode_image

    return Image.fromarray(decode_image(source.read(item)))


class _Negatives:
    """A (PIL image, 0) dataset over a source, decoded on access; unreadable items are replaced by the
    next readable one."""

    def __init__(self, source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        from .._errors import DecodeError

        n = len(self.source)
        for k in range(n):
            try:
                return _pil(self.source, self.source[(i + k) % n]), 0
            except DecodeError:
                continue
        raise ValueError("no readable image for SimCLR's negatives")


def embedding_fn(wrapper):
    """``images (list of PIL) -> float32 [n, E]``: the FUNGI backbone's embeddings, with timm's eval
    transform for that model (what ``--embeddings`` writes)."""
    import timm.data
    import torch

    model = wrapper.model
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))

    def embed(images):
        with torch.no_grad():
            views = torch.stack([transform(im.convert("RGB")) for im in images]).to(wrapper.device)
            return model(views).float().cpu().numpy()

    return embed
