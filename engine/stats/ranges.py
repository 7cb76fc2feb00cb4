"""Per-neuron activation ranges: the bin ranges of histogram VDNAs.

A histogram VDNA is only comparable with another made with the same ranges, so the ranges travel with
it: their values go into the output's metadata with a digest, and the digest is checked before any
comparison or merge.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from .._errors import VDNAFileError

__all__ = ["Ranges"]


@dataclass(frozen=True, eq=False)
class Ranges:
    """Per-layer min and max activation of every neuron (float64), plus where they came from."""

    mins: dict[str, np.ndarray]
    maxs: dict[str, np.ndarray]
    origin: str = "given"  # "published:<repo>/<file>", "file:<name>", "auto:<n> images", ...
    digest: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if list(self.mins) != list(self.maxs):
            raise ValueError("mins and maxs must cover the same layers in the same order")
        mins = {k: np.ascontiguousarray(v, dtype=np.float64).reshape(-1) for k, v in self.mins.items()}
        maxs = {k: np.ascontiguousarray(v, dtype=np.float64).reshape(-1) for k, v in self.maxs.items()}
        for layer in mins:
            if mins[layer].shape != maxs[layer].shape:
                raise ValueError(f"layer {layer}: {mins[layer].size} mins but {maxs[layer].size} maxs")
        object.__setattr__(self, "mins", mins)
        object.__setattr__(self, "maxs", maxs)
        h = hashlib.sha256()
        for layer in mins:
            h.update(layer.encode() + b"\0")
            h.update(mins[layer].tobytes())
            h.update(maxs[layer].tobytes())
        object.__setattr__(self, "digest", h.hexdigest())

    @property
    def layers(self) -> dict[str, int]:
        return {layer: int(v.size) for layer, v in self.mins.items()}

    def check_covers(self, layers: dict[str, int], what: str = "the extractor") -> None:
        """Raise unless these ranges give exactly one range per neuron of every layer in ``layers``."""
        for layer, count in layers.items():
            if layer not in self.mins:
                raise VDNAFileError(
                    f"activation ranges ({self.origin}) have no layer {layer!r} of {what}; "
                    f"they cover {', '.join(self.mins) or 'nothing'}"
                )
            if self.mins[layer].size != count:
                raise VDNAFileError(
                    f"activation ranges ({self.origin}) give {self.mins[layer].size} neurons for layer "
                    f"{layer!r} but {what} has {count}"
                )

    def subset(self, layers) -> Ranges:
        r = Ranges({k: self.mins[k] for k in layers}, {k: self.maxs[k] for k in layers}, self.origin)
        return r

    def to_json(self) -> dict:
        return {
            "origin": self.origin,
            "sha256": self.digest,
            "range_scale": 1.2,
            "mins": {k: v.tolist() for k, v in self.mins.items()},
            "maxs": {k: v.tolist() for k, v in self.maxs.items()},
        }

    @classmethod
    def from_json(cls, d: dict) -> Ranges:
        try:
            r = cls(
                {k: np.asarray(v, dtype=np.float64) for k, v in d["mins"].items()},
                {k: np.asarray(v, dtype=np.float64) for k, v in d["maxs"].items()},
                str(d.get("origin", "given")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise VDNAFileError(f"malformed ranges record ({type(err).__name__}: {err})") from err
        if d.get("sha256") and d["sha256"] != r.digest:
            raise VDNAFileError("ranges record does not match its sha256: the file was altered")
        return r

    @classmethod
    def from_vdna_json(cls, raw: dict, origin: str) -> Ranges:
        """vdna's activation_ranges.json layout: {"mins_per_neuron": {layer: {"0": v, ...}}, "maxs_per_neuron": ...}."""
        mins, maxs = {}, {}
        for layer, neurons in raw["mins_per_neuron"].items():
            lo = {int(i): float(v) for i, v in neurons.items()}
            hi = {int(i): float(v) for i, v in raw["maxs_per_neuron"][layer].items()}
            if sorted(lo) != list(range(len(lo))) or sorted(hi) != sorted(lo):
                raise ValueError(f"layer {layer}: neuron indices must be 0..n-1 in mins and maxs")
            mins[layer] = np.array([lo[i] for i in range(len(lo))])
            maxs[layer] = np.array([hi[i] for i in range(len(hi))])
        return cls(mins, maxs, origin)

    def to_vdna_json(self) -> dict:
        return {
            "mins_per_neuron": {k: {str(i): float(x) for i, x in enumerate(v)} for k, v in self.mins.items()},
            "maxs_per_neuron": {k: {str(i): float(x) for i, x in enumerate(v)} for k, v in self.maxs.items()},
        }
