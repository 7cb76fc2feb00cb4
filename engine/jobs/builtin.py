"""The built-in parts of a job (see `neuroprint.jobs.parts`): the VDNA distributions (a dataset reducer)
and the per-image columns embedding, emd:NAME, phash/dhash + sharpness and fungi.

Each records its settings under the keys jobs have always used ("distributions", "ranges",
"embeddings", "references", "hashes", "fungi"), also when absent, so that existing job directories
resume with the same digest.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from .._errors import IncompatibleVDNAError
from ..stats.ranges import Ranges
from ..stats.reducers import ActivationRangesReducer, make_reducer, parse_distribution

# PARTS and get_part are read through this module by `neuroprint.jobs`, so that the built-in parts below
# are registered whenever the registry is used
from .parts import PARTS, Part, get_part, path_stamp, register_part  # noqa: F401

__all__ = ["Distributions", "Embedding", "Fungi", "Hashes", "References"]

HASH_KINDS = ("phash", "dhash")


def _arrow():
    import pyarrow as pa

    return pa


@register_part
class Distributions(Part):
    """The dataset's VDNAs (histogram-<bins>, gaussian, layer-gaussian, activation-ranges) from one pass:
    exact reducer states per shard, merged at the end into ``<distribution>.json/.npz``."""

    name = "distributions"
    needs = frozenset({"features"})
    absent_settings = {"distributions": [], "ranges": None}

    def __init__(self, names, ranges=None, histogram_precision: str = "fp64"):
        from ..kernels.histogram import PRECISIONS

        self.names = [names] if isinstance(names, str) else list(names)
        self.kinds = [parse_distribution(n) for n in self.names]
        if histogram_precision not in PRECISIONS:
            raise ValueError(f"histogram precision must be one of {PRECISIONS}, got {histogram_precision!r}")
        self.precision = histogram_precision
        self.ranges_arg = ranges
        self.ranges: Ranges | None = None  # histogram bin ranges, resolved by prepare()

    def configure(self, job) -> None:
        if job.ex is None:
            raise ValueError("a job without an extractor makes no VDNA: pass distributions=() and no ranges")

    def request(self):
        r = self.ranges_arg
        if r is None or r == "auto":
            ranges = r
        elif isinstance(r, Ranges):
            ranges = f"sha256:{r.digest}"
        else:
            ranges = path_stamp(r)
            if ranges is None:
                return None
        return {"names": self.names, "ranges": ranges, "precision": self.precision}

    def settings(self) -> dict:
        out = {"distributions": self.names, "ranges": _describe_ranges_arg(self.ranges_arg)}
        if (
            self.precision != "fp64"
        ):  # only then, so that the settings of fp64 (vdna-exact) jobs are as before
            out["histogram_precision"] = self.precision
        return out

    def prepare(self, job) -> None:
        self._layers = dict(job.ex.layers)
        if not any(k == "histogram" for k, _ in self.kinds):
            return
        path = job.out / "ranges.json"
        if path.is_file():  # fixed at the first run, so that a resume bins the same way
            self.ranges = Ranges.from_json(json.loads(path.read_text()))
            return
        from ..stats.profile import _resolve_ranges

        self.ranges = _resolve_ranges(self.ranges_arg, job.ex, job.weights, lambda: _auto_ranges(job))
        job.write_json(path, self.ranges.to_json())

    def bind(self, worker) -> None:
        self._dev = worker.dev

    def start_shard(self) -> None:
        self._reducers = [
            make_reducer(
                n, self._layers, ranges=self.ranges, device=self._dev, histogram_precision=self.precision
            )
            for n in self.names
        ]

    def columns(self, batch, feats) -> dict:
        for r in self._reducers:
            r.update(feats)
        return {}

    def shard_state(self) -> dict:
        return {f"{n}:{k}": a for n, r in zip(self.names, self._reducers) for k, a in r.state().items()}

    def merge_state(self, arrays: dict) -> None:
        if getattr(self, "_merged", None) is None:
            self._merged = [
                make_reducer(n, self._layers, ranges=self.ranges, histogram_precision=self.precision)
                for n in self.names
            ]
        for name, r in zip(self.names, self._merged):
            part = make_reducer(name, self._layers, ranges=self.ranges, histogram_precision=self.precision)
            prefix = f"{name}:"
            part.load_state({k[len(prefix) :]: arrays[k] for k in arrays if k.startswith(prefix)})
            r.merge(part)

    def merged_state(self) -> dict:
        merged = getattr(self, "_merged", None) or []
        return {f"{n}:{k}": a for n, r in zip(self.names, merged) for k, a in r.state().items()}

    def finish(self, job) -> dict:
        from ..stats.profile import build_vdnas

        merged, self._merged = getattr(self, "_merged", None) or [], None
        if not merged or merged[0].count == 0:
            return {}
        vdnas = build_vdnas(
            self.names,
            merged,
            job.ex,
            job.recipe,
            job.dtype,
            job.source,
            job.failures,
            self.ranges,
            job.data_settings(),
            job.extraction_settings(),
            decoder=job.decoder,
        )
        for name, v in vdnas.items():
            v.save(job.out / name)
        return vdnas


def _auto_ranges(job) -> Ranges:
    """'auto' ranges: a first pass over the whole source measuring every neuron's min and max."""
    from ..stats.profile import _empty, _run_pass

    r = ActivationRangesReducer(job.ex.layers)
    fails = _run_pass(
        job.loader(), job.driver_model(), [r], job.dev, desc=f"ranges {job.ex.name}", progress=job.progress
    )
    if r.count == 0:
        raise _empty(job.source, fails)
    return r.to_ranges(origin=f"auto:{r.count} images of {job.source.kind}")


def _describe_ranges_arg(ranges):
    if ranges is None or isinstance(ranges, str):
        return ranges
    if isinstance(ranges, os.PathLike):
        return os.fspath(ranges)
    if isinstance(ranges, Ranges):
        return f"sha256:{ranges.digest}"
    return type(ranges).__name__


def _fungi_request(options: dict | None):
    if not options:
        return options
    out = dict(options)
    for key in ("negatives", "weights"):
        value = out.get(key)
        if isinstance(value, str) and os.path.exists(value):
            out[key] = path_stamp(value)
    return out


def _negatives_from_source(options: dict | None) -> bool:
    """Whether FUNGI ``options`` draw SimCLR's negatives from the job's own source (so on the worker)."""
    return bool(options) and "simclr" in options["fungi"].split(",") and not options.get("negatives")


def fungi_wrapper(worker, options: dict):
    """The FUNGI wrapper of ``options`` on the worker's device, built once per worker and shared."""
    from types import SimpleNamespace

    from ..fungi.build import build_wrapper

    key = ("fungi", json.dumps(options, sort_keys=True))
    return worker.shared(key, lambda: build_wrapper(SimpleNamespace(**options), worker.dev, worker.source)[0])


@register_part
class Embedding(Part):
    """``embedding``: the mean over positions of the backbone's last tap; in a job without a backbone,
    the FUNGI backbone's embedding of each decoded image (timm's eval transform), with ``fungi`` options."""

    name = "embedding"
    absent_settings = {"embeddings": False}

    def __init__(self, fungi: dict | None = None):
        self.fungi = fungi
        self.needs = frozenset({"decoded"}) if fungi is not None else frozenset({"features"})

    def settings(self) -> dict:
        return {"embeddings": True}

    def request(self):
        return {"fungi": _fungi_request(self.fungi)}

    @property
    def reads_source_items(self) -> bool:
        return _negatives_from_source(self.fungi)

    def configure(self, job) -> None:
        if job.ex is None and self.fungi is None:
            raise ValueError("without an extractor, embeddings come from the FUNGI backbone: pass fungi")
        if job.ex is not None:
            self.fungi, self.needs = None, frozenset({"features"})

    def bind(self, worker) -> None:
        if self.fungi is None:
            self._layer = list(worker.ex.layers)[-1]
            self._dim = worker.ex.layers[self._layer]
        else:
            from ..fungi.build import embedding_fn

            wrapper = fungi_wrapper(worker, self.fungi)
            self._embed, self._dim = embedding_fn(wrapper), wrapper.embeddings_dim

    def fields(self) -> list:
        pa = _arrow()
        return [("embedding", pa.list_(pa.float32(), self._dim))]

    def columns(self, batch, feats) -> dict:
        if self.fungi is None:
            emb = feats[self._layer].float().mean(dim=1).cpu().numpy()
        else:
            from PIL import Image

            emb = self._embed([Image.fromarray(d) for d in batch.decoded])
        return {"embedding": [e.astype(np.float32) for e in emb]}


@register_part
class References(Part):
    """``emd:NAME`` (float64): each image's EMD to reference histogram VDNAs (`neuroprint.score_images`)."""

    name = "references"
    needs = frozenset({"features"})
    absent_settings = {"references": {}}

    def __init__(self, references: dict):
        self.refs = dict(references)

    def configure(self, job) -> None:
        if job.ex is None:
            raise ValueError("a job without an extractor makes no VDNA: pass no ranges/references")
        from ..stats.vdna import load_vdna_from_files

        refs = {}
        for name, ref in self.refs.items():
            if isinstance(ref, (str, os.PathLike)):
                ref = load_vdna_from_files(ref)
            _check_job_reference(name, ref, job.ex)
            refs[str(name)] = ref
        self.refs = refs

    def settings(self) -> dict:
        return {"references": {n: _vdna_digest(v) for n, v in self.refs.items()}}

    def request(self):
        got = {}
        for n, v in self.refs.items():
            got[str(n)] = path_stamp(v) if isinstance(v, (str, os.PathLike)) else _vdna_digest(v)
            if got[str(n)] is None:
                return None
        return got

    def bind(self, worker) -> None:
        from ..stats.scoring import ReferenceScorer

        self._scorers = {name: ReferenceScorer(v, worker.dev) for name, v in self.refs.items()}

    def fields(self) -> list:
        pa = _arrow()
        return [(f"emd:{name}", pa.float64()) for name in self.refs]

    def columns(self, batch, feats) -> dict:
        return {f"emd:{n}": [float(x) for x in s(feats)[0]] for n, s in self._scorers.items()}


def _check_job_reference(name: str, ref, ex) -> None:
    if ref.feature_extractor_name != ex.name:
        raise IncompatibleVDNAError(
            f"reference {name!r} was made with {ref.feature_extractor_name}, not {ex.name}"
        )
    wid = ref.meta.get("weights")
    if wid is not None and wid != ex.weights_id:
        raise IncompatibleVDNAError(f"reference {name!r} was made with weights {wid}, not {ex.weights_id}")
    missing = [k for k in ref.neurons_list if k not in ex.layers]
    if missing:
        raise IncompatibleVDNAError(
            f"reference {name!r} needs layers the job does not tap: {', '.join(missing)}"
        )


def _vdna_digest(vdna) -> str:
    import hashlib

    h = hashlib.sha256()
    for layer, t in vdna.data.items():
        h.update(layer.encode())
        h.update(t.cpu().numpy().tobytes())
    return h.hexdigest()


@register_part
class Hashes(Part):
    """64-bit perceptual hashes (int64 columns, packed as in `neuroprint.dedup`; bit-exact with imagehash)
    and ``sharpness`` (float32: how native each image's resolution looks, `neuroprint.dedup.sharpness`), all
    computed in the decode threads on the decoded image, which is then dropped (bounded memory)."""

    name = "hashes"
    absent_settings = {"hashes": []}

    def __init__(self, kinds=HASH_KINDS, sharpness: bool = True):
        self.kinds = tuple(dict.fromkeys([kinds] if isinstance(kinds, str) else kinds))
        bad = [h for h in self.kinds if h not in HASH_KINDS]
        if bad or not self.kinds:
            raise ValueError(f"unknown hash {bad[0] if bad else ''!r}; expected phash or dhash")
        # sharpness=False: the hashes alone (5 ms less per 640x480 image), for jobs that never choose
        # which duplicate to keep (the nightly check); recorded in the settings only then, so that the
        # settings of every earlier job are unchanged.
        self.sharpness = bool(sharpness)

    def settings(self) -> dict:
        return (
            {"hashes": list(self.kinds)}
            if self.sharpness
            else {"hashes": list(self.kinds), "sharpness": False}
        )

    def request(self):
        return self.settings()

    def per_image(self, img) -> dict:
        """In the decode threads: each hash's small gray image (Pillow) and the sharpness; the bits are
        taken for the whole batch in `columns`."""
        from ..dedup.hashes import hash_pixels
        from ..dedup.sharpness import sharpness

        out = {"pixels": hash_pixels(img, self.kinds)}
        if self.sharpness:
            out["sharpness"] = float(np.float32(sharpness(img)))
        return out

    def fields(self) -> list:
        pa = _arrow()
        return [(h, pa.int64()) for h in self.kinds] + (
            [("sharpness", pa.float32())] if self.sharpness else []
        )

    def columns(self, batch, feats) -> dict:
        from ..dedup.hashes import hashes_from_pixels

        values = batch.per_image[self.name]
        bits = hashes_from_pixels([v["pixels"] for v in values], self.kinds)
        out = {k: bits[k].tolist() for k in self.kinds}
        if self.sharpness:
            out["sharpness"] = [v["sharpness"] for v in values]
        return out


@register_part
class Fungi(Part):
    """``fungi``: FUNGI gradient features of each decoded image ([KL | DINO | SimCLR] blocks), the same
    numbers as ``neuroprint features``; each image's views come from its own generator (keyed by its id),
    so they do not depend on batches, shards or actors."""

    name = "fungi"
    needs = frozenset({"decoded"})
    absent_settings = {"fungi": None}

    def __init__(self, options: dict | None = None):
        from ..fungi.build import job_options

        self.options = job_options(options)

    def settings(self) -> dict:
        return {"fungi": self.options}

    def request(self):
        return {"fungi": _fungi_request(self.options)}

    @property
    def reads_source_items(self) -> bool:
        return _negatives_from_source(self.options)

    def bind(self, worker) -> None:
        self._wrapper = fungi_wrapper(worker, self.options)

    def fields(self) -> list:
        pa = _arrow()
        return [("fungi", pa.list_(pa.float32(), self._wrapper.feature_dim))]

    def columns(self, batch, feats) -> dict:
        from PIL import Image

        from ..fungi.build import item_generator

        images = [Image.fromarray(d) for d in batch.decoded]
        gens = [item_generator(self.options["seed"], it.id) for it in batch.items]
        with torch.inference_mode(False), torch.enable_grad():
            out = self._wrapper(images, generator=gens).float().cpu().numpy()
        return {"fungi": list(out)}
