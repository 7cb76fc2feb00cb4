"""Sharded, resumable jobs over image sources (see `neuroprint.jobs.job` for the output directory).

``run_job(...)`` is the keyword API; `Job` takes a list of parts (`Part`: per-image columns and dataset
reducers, registered with `register_part`), a backbone and the runner's options.

Names are imported on first use (PEP 562): ``from neuroprint.jobs import run_job`` does not import torch,
so that asking again for a complete job (`run_job` with the same arguments) answers from its directory
in a new process without loading torch; torch is loaded when the job has work to do, or when one of the
result's VDNAs is read.
"""

from .._lazy import lazy_attributes

_LAZY = {
    "DECODERS": "worker",
    "MANIFEST": "result",
    "read_manifest": "job",
    "PARTS": "builtin",
    "Backbone": "job",
    "Distributions": "builtin",
    "Embedding": "builtin",
    "Fungi": "builtin",
    "Hashes": "builtin",
    "Job": "job",
    "JobError": "result",
    "JobResult": "result",
    "Part": "parts",
    "References": "builtin",
    "SavedVDNAs": "result",
    "ShardSpec": "worker",
    "ShardWorker": "worker",
    "get_part": "builtin",
    "make_loader": "worker",
    "register_part": "parts",
    "resolve_decoder": "worker",
    "run_job": "build",
}

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)

__all__ = sorted(_LAZY)
