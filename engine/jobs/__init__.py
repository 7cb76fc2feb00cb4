"""Sharded, resumable jobs over image sources (see `neuroprint.jobs.job` for the output directory).

``run_job(...)`` is the keyword API; `Job` takes a list of parts (`Part`: per-image columns and dataset
reducers, registered with `register_part`), a backbone and the runner's options.
"""

from .build import run_job
from .builtin import Distributions, Embedding, Fungi, Hashes, References
from .job import MANIFEST, Backbone, Job, JobError, JobResult, read_manifest
from .parts import PARTS, Part, get_part, register_part
from .worker import DECODERS, ShardSpec, ShardWorker, make_loader, resolve_decoder

__all__ = [
    "DECODERS",
    "MANIFEST",
    "read_manifest",
    "PARTS",
    "Backbone",
    "Distributions",
    "Embedding",
    "Fungi",
    "Hashes",
    "Job",
    "JobError",
    "JobResult",
    "Part",
    "References",
    "ShardSpec",
    "ShardWorker",
    "get_part",
    "make_loader",
    "register_part",
    "resolve_decoder",
    "run_job",
]
