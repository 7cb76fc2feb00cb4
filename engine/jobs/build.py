"""`run_job`: the keyword API of jobs, a thin builder of a `Job` and its parts (`neuroprint.jobs`).

This module imports no torch: a complete job asked again with the same arguments is answered from its
directory (`_reuse`, through ``call.json``) before the job, its parts or the model are imported. The
call's digest covers every argument that can change the output, with each path argument (source,
weights, ranges, references, FUNGI checkpoints) stamped by size and modification time
(`neuroprint._stamps`); ``call.json`` also names the manifest's request digest, so a later run of
another request in the same directory voids it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._stamps import complete_job, path_stamp
from ..io._limits import DEFAULT_MAX_PIXELS
from .result import JobResult, finished_result

if TYPE_CHECKING:
    import torch

__all__ = ["run_job"]

logger = logging.getLogger(__name__)

CALL = "call.json"
CALL_FORMAT = 1
# arguments that change how a job runs, not what it writes (the job's request leaves them out too)
_RUNTIME = frozenset({"batch_size", "num_workers", "device", "compile", "progress", "max_shards", "ray",
                      "num_actors", "ray_address", "command", "rebuild"})  # fmt: skip


def run_job(
    source,
    out_dir: str | os.PathLike,
    distributions: str | Sequence[str] = "histogram-1000",
    *,
    extractor: str | None = "mugs_vit_base",
    weights: str | os.PathLike = "default",
    layers: Sequence[str] | None = None,
    ranges=None,
    embeddings: bool = False,
    shard_size: int = 1024,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = "float32",
    compile: bool | None = None,
    seed: int = 0,
    crop: str = "none",
    resize_mode: str | None = None,
    progress: bool = True,
    max_shards: int | None = None,
    ray: bool = False,
    num_actors: int | None = None,
    ray_address: str | None = None,
    references: dict | None = None,
    decoder: str = "auto",
    command: dict | None = None,
    hashes: Sequence[str] = (),
    fungi: dict | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    parts: Sequence = (),
    histogram_precision: str = "fp64",
    rebuild: bool = False,
) -> JobResult:
    """Profile ``source`` into ``out_dir`` shard by shard; rerunning resumes (see the module docstring).

    embeddings: also write each image's pooled embedding (the mean over positions/tokens of the last
    tapped layer) as a fixed-size list column. max_shards: stop after computing this many shards (the
    rest are done by a later call), e.g. to spread a job over several nightly windows.
    ray: run the shards on a pool of Ray actors (``num_actors``: one per GPU, else one per CPU slot;
    ``ray_address``: an existing cluster, else a local one is started); the driver alone writes the
    output, so results equal the local runner's. references: {column name: histogram VDNA (or its
    path)}: adds each image's EMD to it (mean over its neurons) as a column ``emd:<name>``. decoder:
    "pil" (the reference), "dali" (within ``neuroprint.io.dali.MAX_ABS_TOLERANCE`` of it; files DALI cannot
    decode exactly as PIL go through PIL) or "auto" (DALI on CUDA when installed, else PIL); the choice is
    part of the job's settings. hashes: any of "phash", "dhash": each image's 64-bit perceptual hash
    (bit-exact with the imagehash package, computed in the decode threads as each image is decoded, so
    full-size images are not held per batch) as an
    int64 column, with a ``sharpness`` float32 column (how native each image's resolution looks,
    `neuroprint.dedup.sharpness`, which dedup's keep="largest" reads), for ``neuroprint dedup`` over the job
    directory; needs the PIL decoder. fungi: FUNGI
    gradient features as a ``fungi`` column, with the options of ``neuroprint features`` (a dict with any
    of ``neuroprint.fungi.build.JOB_DEFAULTS``' keys: objectives "fungi", timm "model", "weights",
    "layer", "input_dim", "negatives", "fp16", "mode", "seed"); the same numbers as that command; needs
    the PIL decoder. max_pixels: images with more pixels (read from their header) are failure rows
    without being decoded (0: no limit); part of the job's settings. command: the CLI's arguments,
    recorded in the manifest at the first run so that ``neuroprint profile --resume --out-dir DIR`` can
    rerun it. dtype: the network's dtype, a torch.dtype or its name ("float32", "bfloat16", ...). Other
    arguments as `neuroprint.profile`.

    parts: more outputs (`neuroprint.jobs.Part` instances or registered names), after the built-in ones.
    histogram_precision: the histograms' normalisation arithmetic, "fp64" (vdna's: exact parity, the
    default) or "fp32" (for bf16 / fp16 jobs; `neuroprint.kernels.histogram.PRECISIONS`), recorded in the
    settings and in the VDNAs, which refuse comparison with VDNAs of the other precision.

    A complete job asked again with the same arguments (paths identified by their size and modification
    time, folders by their own) returns its result from the directory at once, without importing torch
    when the call is plain data (paths, names, numbers; no ``parts``) and was recorded in ``call.json`` by
    the run that completed it; its ``vdnas`` are then read from the directory on first access.
    ``rebuild=True`` re-lists
    the source, checks it against the job's settings and rebuilds the outputs from the merged state.

    extractor=None with distributions=() is a signatures-only job: no network, no VDNA, only the
    hashes and/or FUNGI columns (and, with ``embeddings``, the FUNGI backbone's embeddings), with the
    same sharding, resume, Ray and failure rows (``neuroprint features`` runs this way).
    """
    call = None if rebuild else _call_digest({k: v for k, v in locals().items() if k not in _RUNTIME})
    if call is not None:
        done = _reuse(out_dir, call)
        if done is not None:
            return done
    from .builtin import Distributions, Embedding, Fungi, Hashes, References
    from .job import Backbone, Job
    from .parts import get_part

    dtype = _torch_dtype(dtype)
    names = [distributions] if isinstance(distributions, str) else list(distributions)
    if extractor is None:
        if names or references or ranges is not None:
            raise ValueError(
                "a job without an extractor makes no VDNA: pass distributions=() and no ranges/references"
            )
        if not (hashes or fungi or parts):
            raise ValueError(
                "a job without an extractor needs hashes or fungi: there is nothing else to compute"
            )
        if embeddings and not fungi:
            raise ValueError("without an extractor, embeddings come from the FUNGI backbone: pass fungi")
    elif not (names or embeddings or references or hashes or fungi or parts):
        raise ValueError("nothing to compute: give distributions, embeddings, references, hashes or fungi")
    if (hashes or fungi) and decoder == "dali":
        raise ValueError(
            "hashes and FUNGI features are computed from the PIL decoder's images: use decoder='pil'"
        )
    built = []  # in the order of the rows' columns
    if names:
        built.append(Distributions(names, ranges, histogram_precision))
    fungi_part = Fungi(fungi) if fungi is not None else None
    if embeddings:
        built.append(Embedding(fungi_part.options if extractor is None else None))
    if references:
        built.append(References(references))
    if hashes:
        built.append(Hashes(hashes))
    if fungi_part is not None:
        built.append(fungi_part)
    built.extend(get_part(p) for p in parts)
    backbone = None
    if extractor is not None:
        backbone = Backbone(extractor, weights, layers, dtype, compile, crop, resize_mode)
    job = Job(
        source,
        out_dir,
        built,
        backbone,
        shard_size=shard_size,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        decoder=decoder,
        max_pixels=max_pixels,
        seed=seed,
        progress=progress,
        max_shards=max_shards,
        ray=ray,
        num_actors=num_actors,
        ray_address=ray_address,
        command=command,
        rebuild=rebuild,
    )
    res = job.run()
    if call is not None and res.complete:
        _record_call(out_dir, call)
    return res


def _torch_dtype(dtype):
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    got = getattr(torch, str(dtype).removeprefix("torch."), None) if isinstance(dtype, str) else None
    if not isinstance(got, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype or its name (e.g. 'bfloat16'), got {dtype!r}")
    return got


def _stamped(value):
    """``value`` as JSON with every path in it stamped (a string naming an existing file or folder, or a
    VDNA without its suffix: its `path_stamp`; other strings as they are); None when
    some part of it is not plain data (in-memory sources, VDNAs, `Part` instances, callables)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, os.PathLike) or (isinstance(value, str) and "://" not in value):
        stamp = path_stamp(value)  # a file, a folder, or a VDNA named without its suffix
        if stamp is not None:
            return {"path": stamp}
        return os.fspath(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        got = [_stamped(v) for v in value]
        return None if any(g is None and v is not None for g, v in zip(got, value)) else got
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            return None
        got = {k: _stamped(v) for k, v in value.items()}
        return None if any(got[k] is None and value[k] is not None for k in value) else got
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":
        return str(value)
    return None


def _call_digest(args: dict) -> str | None:
    """The digest of a `run_job` call's output-defining arguments, without importing torch; None when
    one of them cannot be identified that way (then the job takes the full way)."""
    args = dict(args)
    out_dir = args.pop("out_dir")
    if not isinstance(out_dir, (str, os.PathLike)) or args["parts"]:
        return None  # parts given as objects or names: their request needs them imported
    if isinstance(args["dtype"], str):
        args["dtype"] = "torch." + args["dtype"].removeprefix("torch.")
    if isinstance(args["source"], str) and "://" not in args["source"] and not os.path.exists(args["source"]):
        return None  # a missing source: the full way says so
    got = _stamped(args)
    if got is None:
        return None
    try:
        text = json.dumps({"format": CALL_FORMAT, "call": got}, sort_keys=True)
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def _reuse(out_dir, call: str) -> JobResult | None:
    """The result of the complete job in ``out_dir`` when it was made by this very call, its request's
    files are unchanged, its outputs are in place and no process holds it; else None."""
    from .lock import LOCK_NAME

    out = Path(out_dir)
    try:
        recorded = json.loads((out / CALL).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.get("call_sha256") != call or (out / LOCK_NAME).exists():
        return None
    manifest = complete_job(out)
    if manifest is None or manifest.get("request_sha256") != recorded.get("request_sha256"):
        return None
    logger.info("%s: the job is complete; nothing to do (rebuild=True recomputes the outputs)", out)
    return finished_result(out, manifest)


def _record_call(out_dir, call: str) -> None:
    """Write ``call.json`` (this call's digest and the request it made) beside a complete job's manifest."""
    from .job import MANIFEST, Job

    out = Path(out_dir)
    request = json.loads((out / MANIFEST).read_text()).get("request_sha256")
    if request is not None:
        Job.write_json(out / CALL, {"format": CALL_FORMAT, "call_sha256": call, "request_sha256": request})
