"""`run_job`: the keyword API of jobs, a thin builder of a `Job` and its parts (`neuroprint.jobs`)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..io.decode import DEFAULT_MAX_PIXELS
from .builtin import Distributions, Embedding, Fungi, Hashes, References
from .job import Backbone, Job, JobResult
from .parts import get_part

__all__ = ["run_job"]


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
    dtype: torch.dtype = torch.float32,
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
    without being decoded (0: no limit); part of the job's settings. command: the CLI's arguments, recorded in the manifest at the first run
    so that ``neuroprint profile --resume --out-dir DIR`` can rerun it. Other arguments as
    `neuroprint.profile`.

    parts: more outputs (`neuroprint.jobs.Part` instances or registered names), after the built-in ones.
    histogram_precision: the histograms' normalisation arithmetic, "fp64" (vdna's: exact parity, the
    default) or "fp32" (for bf16 / fp16 jobs; `neuroprint.kernels.histogram.PRECISIONS`), recorded in the
    settings and in the VDNAs, which refuse comparison with VDNAs of the other precision.

    A complete job asked again with the same arguments (paths identified by their size and modification
    time, folders by their own) returns its result from the directory at once; ``rebuild=True`` re-lists
    the source, checks it against the job's settings and rebuilds the outputs from the merged state.

    extractor=None with distributions=() is a signatures-only job: no network, no VDNA, only the
    hashes and/or FUNGI columns (and, with ``embeddings``, the FUNGI backbone's embeddings), with the
    same sharding, resume, Ray and failure rows (``neuroprint features`` runs this way).
    """
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
    return job.run()
