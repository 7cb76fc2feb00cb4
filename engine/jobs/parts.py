"""The parts of a job: everything one pass over the pixels produces.

A `Part` is a per-image column (the pooled embedding, perceptual hashes, FUNGI features, the EMD to a
reference) or a dataset reducer (the VDNA distributions), or both. The job, its shard worker and its
runners (local, Ray) know parts only through this protocol, so a new output is one class and its
registration (`register_part`), with no change to the job:

driver, once per job
    ``configure(job)``   check the part against the job (its backbone, decoder); load what it needs
    ``settings()``       JSON-able options: part of the job's settings, so of its digest; a resume with
                         other settings is refused
    ``prepare(job)``     one-off work once the output directory is claimed (the histogram ranges' pass)

worker, once per worker (a copy of the part: parts are pickled to Ray actors, so hold options, not models)
    ``bind(worker)``     build models on the worker's device (``worker.shared(key, build)`` shares one
                         between parts); after it ``fields()`` gives the Arrow columns, in order
    ``per_image(img)``   optional: runs in the decode threads on each decoded image (uint8 RGB, before any
                         resize), returning a dict; the batch carries the dicts in ``batch.per_image[name]``

worker, per shard
    ``start_shard()``                  reset the shard's state
    ``columns(batch, feats) -> dict``  column -> one value per readable item of the batch; ``feats`` are
                                       the backbone's taps on the model input (None without a backbone)
    ``shard_state() -> dict``          the shard's exact state (numpy arrays; keys unique to the part),
                                       folded into the merged state on the driver (or, for a part
                                       without ``merged_state``, saved in ``partials/shard-K.npz``)

driver, as shards arrive and at the end
    ``merge_state(arrays)``  fold one shard's state in (each shard once; the local runner in shard order)
    ``merged_state()``       the merged state so far, as arrays that ``merge_state`` takes back (the job's
                             checkpoint, ``partials/merged.npz``); None: the part has no merged state, so
                             the job keeps one partial file per shard and merges them at the end. The
                             default is {} for a part without state and None otherwise
    ``finish(job) -> dict``  write the dataset outputs into the job directory; return {name: VDNA}

driver, before anything (optional)
    ``request()``            JSON-able options as given (paths as `path_stamp`), computed
                             without the model: a complete job asked again with the same request returns its
                             result without running; None (the default): no such shortcut

``reads_source_items`` (default False): the part reads items of the whole source on the worker (FUNGI's
SimCLR negatives drawn from the source); otherwise workers get the source without its item list.

``needs`` says what a part reads: "features" (the backbone's taps; the job must have an extractor),
"decoded" (each image as decoded; the PIL decoder). ``per_image`` (when defined) needs the PIL
decoder as well. Failure rows hold None in every part's columns.
"""

from __future__ import annotations

from typing import ClassVar

from .._stamps import path_stamp

__all__ = ["PARTS", "Part", "get_part", "path_stamp", "register_part"]

NEEDS = ("features", "decoded")


class Part:
    """Base class of job parts; every hook has a do-nothing default (see the module docstring)."""

    #: unique name of the part in a job; also the key of its per-image values in ``batch.per_image``
    name: str = ""
    #: what the part reads: a subset of ("features", "decoded")
    needs: frozenset = frozenset()
    #: settings recorded when a job does not have this part at all (None: nothing recorded). The built-in
    #: parts record theirs, so that job directories written before parts existed keep their digest.
    absent_settings: ClassVar[dict | None] = None
    #: True when the part reads items of the whole source on the worker (else workers get none)
    reads_source_items: bool = False
    #: define ``per_image(self, img) -> dict`` to compute per-image values in the decode threads
    per_image = None

    def configure(self, job) -> None:
        pass

    def settings(self) -> dict:
        return {}

    def prepare(self, job) -> None:
        pass

    def bind(self, worker) -> None:
        pass

    def fields(self) -> list:
        return []

    def start_shard(self) -> None:
        pass

    def columns(self, batch, feats) -> dict:
        return {}

    def shard_state(self) -> dict:
        return {}

    def merge_state(self, arrays: dict) -> None:
        pass

    def merged_state(self) -> dict | None:
        return {} if type(self).shard_state is Part.shard_state else None

    def request(self) -> dict | list | str | None:
        return None

    def finish(self, job) -> dict:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


PARTS: dict[str, type[Part]] = {}


def register_part(cls: type[Part]) -> type[Part]:
    """Class decorator: make ``cls`` known to jobs by its ``name`` (``run_job(parts=[name])``)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    bad = set(cls.needs) - set(NEEDS)
    if bad:
        raise ValueError(f"{cls.__name__}: unknown needs {sorted(bad)}; expected some of {', '.join(NEEDS)}")
    if PARTS.get(cls.name, cls) is not cls and PARTS[cls.name].__qualname__ != cls.__qualname__:
        raise ValueError(f"a part named {cls.name!r} is already registered ({PARTS[cls.name].__qualname__})")
    PARTS[cls.name] = cls
    return cls


def get_part(spec) -> Part:
    """A part from an instance (as is) or a registered name (built with its defaults)."""
    if isinstance(spec, Part):
        return spec
    if isinstance(spec, str) and spec in PARTS:
        return PARTS[spec]()
    raise ValueError(f"unknown job part {spec!r}; registered: {', '.join(sorted(PARTS)) or 'none'}")


def union_of_states(parts, method: str) -> dict:
    """One dict of the arrays that ``part.<method>()`` returns for every part (``shard_state`` or
    ``merged_state``); a key two parts both use is an error, not an overwrite."""
    out: dict = {}
    for part in parts:
        got = getattr(part, method)()
        clash = sorted(set(got) & set(out))
        if clash:
            raise ValueError(f"part {part.name!r}: state keys {clash} are another part's")
        out.update(got)
    return out
