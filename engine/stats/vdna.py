"""VDNA objects with vdna 0.1.1's names, semantics and file layout (NAME.json + NAME.npz).

Files written here load in the ``vdna`` package and files written by ``vdna`` load here. neuroprint's
own metadata (weights, layers, recipe, ranges, dtype, failures, version) goes under a top-level
"neuroprint" key of the JSON, which vdna ignores; vdna's own keys keep exactly vdna's fields, because
vdna rebuilds its settings dataclasses from them and fails on unknown fields. The npz holds only what
vdna expects (vdna treats every array of a histogram npz as a layer). No pickle is ever loaded.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from .._errors import IncompatibleVDNAError, VDNAFileError, WeightsError
from .ranges import Ranges
from .reducers import parse_distribution

__all__ = [
    "VDNA",
    "VDNAActivationRanges",
    "VDNAGauss",
    "VDNAHist",
    "VDNALayerGauss",
    "get_vdna",
    "load_vdna_from_files",
    "load_vdna_from_hub",
]

logger = logging.getLogger(__name__)

# The version of vdna whose layout and settings fields these files follow.
VDNA_FORMAT_VERSION = "0.1.1"

# vdna's DataSettings and ExtractionSettings fields with their defaults, in vdna's order.
DATA_SETTINGS_DEFAULTS = {
    "source": "NotFilled",
    "crop_to_square_pre_resize": "none",
    "resize_mode": "clean",
    "custom_fn_resize": None,
    "custom_np_image_tranform": None,
    "custom_pil_image_tranform": None,
    "shuffle_files": True,
    "num_images": -1,
}
EXTRACTION_SETTINGS_DEFAULTS = {
    "average_feats_spatially": False,
    "accumulate_spatial_feats_in_hist": False,
    "accumulate_sample_feats_in_hist": False,
    "keep_only_min_max": False,
    "normalise_feats": False,
    "range_scale_for_norm_params": 1.2,
    "hist_range": [-1.0, 1.0],
    "hist_nb_bins": 0,
    "hist_channel_batch_size": 10,
    "num_workers": 12,
    "batch_size": 64,
    "device": "cuda:0",
    "description": "",
    "verbose": True,
    "n_sample_images": 10,
    "sample_images_folder": "sample_images",
    "seed": 0,
    "hub_repo": "bramtoula/visual-dna-models",
}


def _npz_path(file_path) -> Path:
    return Path(file_path).with_suffix(".npz")


def _json_path(file_path) -> Path:
    return Path(file_path).with_suffix(".json")


class _NpzReader:
    """Lazy, pickle-free access to the arrays of a VDNA npz.

    Only the arrays a VDNA kind needs are read: vdna 0.1.1 also writes one empty pickled object array
    per layer into gaussian, layer-gaussian and activation-ranges files (a side effect of its saving
    code), which must be skipped, never unpickled.
    """

    def __init__(self, file_path):
        self.path = _npz_path(file_path)
        if not self.path.is_file():
            raise VDNAFileError(f"VDNA data file not found: {self.path}")
        try:
            self._z = np.load(self.path, allow_pickle=False)
            self.files = list(self._z.files)
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise VDNAFileError(f"cannot read VDNA data {self.path}: {type(err).__name__}: {err}") from err

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def __iter__(self):
        return iter(self.files)

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._z[key]
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            raise VDNAFileError(f"cannot read {key!r} from {self.path}: {type(err).__name__}: {err}") from err

    def close(self) -> None:
        self._z.close()


class VDNA:
    """Base class of the four VDNA kinds. Attribute names are vdna's."""

    type = "NotImplemented"

    def __init__(self):
        self.name = self.type
        self.data: dict = {}
        self.num_images = 0
        self.data_settings_used: dict = dict(DATA_SETTINGS_DEFAULTS)
        self.extraction_settings_used: dict = dict(EXTRACTION_SETTINGS_DEFAULTS)
        self.feature_extractor_name = "NotFilled"
        self.loaded_from_path = "NotLoaded"
        self.neurons_list: dict[str, int] = {}
        self.device = "cpu"
        # neuroprint's own record: weights, layers, recipe, dtype, ranges, failures, version. Empty for
        # files written by vdna, whose settings are then only known through vdna's keys.
        self.meta: dict = {}

    # ------------------------------------------------------------------------------------ vdna's API
    def get_neuron_dist(self, layer_name: str, neuron_idx: int):
        raise NotImplementedError  # pragma: no cover

    def get_all_neurons_in_layer_dist(self, layer_name: str):
        raise NotImplementedError  # pragma: no cover

    def get_all_neurons_dists(self):
        raise NotImplementedError  # pragma: no cover

    def save(self, file_path: str | os.PathLike) -> None:
        """Write NAME.json + NAME.npz (any suffix of ``file_path`` is replaced), each atomically."""
        path = Path(file_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = self._arrays()
        npz, tmp_npz = _npz_path(path), path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp_npz, **arrays)
        meta = self._metadata()
        js, tmp_js = _json_path(path), path.with_name(path.name + ".tmp.json")
        with open(tmp_js, "w") as f:
            json.dump(meta, f, indent=4)
        os.replace(tmp_npz, npz)
        os.replace(tmp_js, js)

    def load(self, file_path: str | os.PathLike, device: str = "cpu") -> None:
        meta = _read_json(file_path)
        self._load_metadata(meta, file_path)
        arrays = _NpzReader(file_path)
        try:
            self._load_arrays(arrays, meta.get("distribution", {}), file_path)
        finally:
            arrays.close()
        self._validate(file_path)
        self.to(device)
        self.loaded_from_path = str(file_path)

    # ------------------------------------------------------------------------------ neuroprint's own
    @property
    def ranges(self) -> Ranges | None:
        rec = self.meta.get("ranges")
        return Ranges.from_json(rec) if rec else None

    @property
    def failures(self) -> list[dict]:
        """Images that could not be read: [{"id", "uri", "reason"}]."""
        return list(self.meta.get("failures", []))

    @property
    def num_failed(self) -> int:
        return int(self.meta.get("num_failed", 0))

    def to(self, device) -> VDNA:
        self.data = _map_tensors(self.data, lambda t: t.to(device))
        self.device = str(device)
        return self

    def merge(self, other: VDNA) -> VDNA:
        """A new VDNA over the images of both (neither input changes); settings must match."""
        check_compatible(self, other, action="merge")
        out = copy.deepcopy(self)
        out.data = self._merged_data(other)
        out.num_images = self.num_images + other.num_images
        out.meta = dict(self.meta)
        if self.meta or other.meta:
            fails = self.failures + other.failures
            out.meta["failures"] = fails
            out.meta["num_failed"] = self.num_failed + other.num_failed
            out.meta["merged_from"] = [str(v.data_settings_used.get("source")) for v in (self, other)]
        out.data_settings_used = dict(self.data_settings_used)
        out.data_settings_used["source"] = f"merge of {self.num_images} + {other.num_images} images"
        out.loaded_from_path = "NotLoaded"
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, extractor={self.feature_extractor_name!r}, "
            f"images={self.num_images}, layers={len(self.neurons_list)}, "
            f"neurons={sum(self.neurons_list.values())})"
        )

    # ----------------------------------------------------------------------------------- internals
    def _dist_metadata(self) -> dict:
        return {}

    def _metadata(self) -> dict:
        data_settings = {k: self.data_settings_used.get(k, v) for k, v in DATA_SETTINGS_DEFAULTS.items()}
        if not isinstance(data_settings["source"], (str, int, float, bool, type(None))):
            data_settings["source"] = _describe_source(data_settings["source"])
        for k in ("custom_fn_resize", "custom_np_image_tranform", "custom_pil_image_tranform"):
            if data_settings[k] is not None and not isinstance(data_settings[k], str):
                data_settings[k] = repr(data_settings[k])
        extraction = {
            k: self.extraction_settings_used.get(k, v) for k, v in EXTRACTION_SETTINGS_DEFAULTS.items()
        }
        return {
            "time_of_compute": datetime.datetime.now().strftime("%I:%M%p on %B %d, %Y"),
            "vdna_version": VDNA_FORMAT_VERSION,
            "distribution": self._dist_metadata(),
            "type": self.type,
            "name": self.name,
            "data_settings": data_settings,
            "extraction_settings": extraction,
            "num_images": int(self.num_images),
            "feature_extractor_name": self.feature_extractor_name,
            "neurons_list": {k: int(v) for k, v in self.neurons_list.items()},
            "neuroprint": self.meta,
        }

    def _load_metadata(self, meta: dict, file_path) -> None:
        try:
            if meta["type"] != self.type:
                raise VDNAFileError(
                    f"{_json_path(file_path)} holds a {meta['type']!r} VDNA, not {self.type!r}"
                )
            self.name = str(meta["name"])
            self.num_images = int(meta["num_images"])
            self.feature_extractor_name = str(meta["feature_extractor_name"])
            self.neurons_list = {str(k): int(v) for k, v in meta["neurons_list"].items()}
            self.data_settings_used = {**DATA_SETTINGS_DEFAULTS, **dict(meta.get("data_settings", {}))}
            self.extraction_settings_used = {
                **EXTRACTION_SETTINGS_DEFAULTS,
                **dict(meta.get("extraction_settings", {})),
            }
            self.meta = dict(meta.get("neuroprint") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            if isinstance(err, VDNAFileError):
                raise
            raise VDNAFileError(
                f"malformed VDNA metadata {_json_path(file_path)}: missing or bad {err}"
            ) from err

    def _validate(self, file_path) -> None:
        """Refuse a loaded VDNA whose numbers or metadata would give silent wrong answers (NaN distances,
        EMD of empty histograms); the message names the file and the field."""
        js, npz = _json_path(file_path), _npz_path(file_path)
        if self.num_images < 0:
            raise VDNAFileError(f"{js}: field 'num_images' is negative ({self.num_images})")
        rec = self.meta.get("ranges")
        if rec is not None:
            if not isinstance(rec, dict):
                raise VDNAFileError(
                    f"{js}: field 'neuroprint.ranges' must be an object, got {type(rec).__name__}"
                )
            try:
                Ranges.from_json(rec)
            except VDNAFileError as err:
                raise VDNAFileError(f"{js}: field 'neuroprint.ranges': {err}") from err
        failures = self.meta.get("failures", [])
        if not isinstance(failures, list) or not all(isinstance(f, dict) for f in failures):
            raise VDNAFileError(f"{js}: field 'neuroprint.failures' must be a list of objects")
        for layer, d in self.data.items():
            for key, t in d.items() if isinstance(d, dict) else [("counts", d)]:
                if t.is_floating_point():
                    bad = ~torch.isfinite(t)
                    if bool(bad.any()):
                        where = tuple(int(i) for i in torch.nonzero(bad)[0])
                        raise VDNAFileError(
                            f"{npz}: field {key!r} of layer {layer!r} holds NaN or inf (first at index {where})"
                        )
            self._validate_layer(layer, d, npz)

    def _validate_layer(self, layer: str, d, npz) -> None:
        """Kind-specific checks of one loaded layer (finite values are checked already)."""

    # Kinds whose data is {layer: {field: tensor}} list their fields: (name, npz dtype, is a matrix).
    # vdna's npz keys are "<field>-<layer>".
    _fields: tuple[tuple[str, type, bool], ...] = ()

    def _arrays(self) -> dict[str, np.ndarray]:
        return {
            f"{name}-{layer}": d[name].cpu().numpy().astype(dtype)
            for layer, d in self.data.items()
            for name, dtype, _ in self._fields
        }

    def _load_arrays(self, arrays, dist_meta: dict, file_path) -> None:
        self.data = {
            layer: {
                name: self._need(arrays, f"{name}-{layer}", (n, n) if matrix else (n,), file_path)
                for name, dtype, matrix in self._fields
            }
            for layer, n in self.neurons_list.items()
        }

    def _merged_data(self, other: VDNA) -> dict:
        raise NotImplementedError  # pragma: no cover

    def _need(self, arrays: dict, key: str, shape: tuple, file_path) -> torch.Tensor:
        if key not in arrays:
            raise VDNAFileError(f"{_npz_path(file_path)} has no array {key!r}")
        a = arrays[key]
        if a.shape != shape:
            raise VDNAFileError(f"{_npz_path(file_path)}: {key!r} has shape {a.shape}, expected {shape}")
        if a.dtype.kind not in "fiu":
            raise VDNAFileError(f"{_npz_path(file_path)}: {key!r} has dtype {a.dtype}, expected numbers")
        return torch.from_numpy(np.ascontiguousarray(a))


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _describe_source(source) -> str:
    if isinstance(source, (list, tuple)):
        if source and isinstance(source[0], np.ndarray):
            return "Provided NumPy Arrays - not saved in metadata"  # vdna's wording
        return f"list of {len(source)} paths"
    return str(source)


def _read_json(file_path) -> dict:
    path = _json_path(file_path)
    if not path.is_file():
        raise VDNAFileError(f"VDNA metadata file not found: {path}")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise VDNAFileError(f"cannot read VDNA metadata {path}: {type(err).__name__}: {err}") from err
    if not isinstance(meta, dict) or "name" not in meta or "type" not in meta:
        raise VDNAFileError(f"{path} is not VDNA metadata (no 'name'/'type' keys)")
    return meta


class VDNAHist(VDNA):
    """Per-neuron histograms: ``data[layer]`` is an integer tensor [neurons, bins]."""

    type = "histogram"

    def __init__(self, hist_nb_bins: int = 2000):
        super().__init__()
        self.hist_nb_bins = int(hist_nb_bins)
        self.name = f"histogram-{self.hist_nb_bins}"

    def get_neuron_dist(self, layer_name: str, neuron_idx: int) -> torch.Tensor:
        return self.data[layer_name][neuron_idx].reshape(1, -1)

    def get_all_neurons_in_layer_dist(self, layer_name: str) -> torch.Tensor:
        return self.data[layer_name]

    def get_all_neurons_dists(self) -> torch.Tensor:
        return torch.cat([self.data[layer] for layer in self.data])

    def _dist_metadata(self) -> dict:
        return {"hist_nb_bins": self.hist_nb_bins}

    def _arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for layer, counts in self.data.items():
            a = counts.cpu().numpy()
            # vdna writes int32; counts past 2**31 (billions of activations in one bin) stay int64,
            # which vdna also reads.
            out[layer] = a.astype(np.int32) if a.size == 0 or a.max() < 2**31 else a.astype(np.int64)
        return out

    def _load_arrays(self, arrays, dist_meta, file_path) -> None:
        try:
            self.hist_nb_bins = int(dist_meta["hist_nb_bins"])
        except (KeyError, TypeError, ValueError) as err:
            raise VDNAFileError(f"{_json_path(file_path)}: histogram VDNA without hist_nb_bins") from err
        if set(arrays) != set(self.neurons_list):
            raise VDNAFileError(
                f"{_npz_path(file_path)} holds layers {sorted(arrays)} but its metadata lists "
                f"{sorted(self.neurons_list)}"
            )
        self.data = {}
        for layer, n in self.neurons_list.items():
            t = self._need(arrays, layer, (n, self.hist_nb_bins), file_path)
            if t.is_floating_point():
                raise VDNAFileError(f"{_npz_path(file_path)}: histogram {layer!r} is not integer counts")
            self.data[layer] = t

    def _validate_layer(self, layer, d, npz) -> None:
        if bool((d < 0).any()):
            i = int(torch.nonzero((d < 0).any(dim=1))[0])
            raise VDNAFileError(f"{npz}: histogram {layer!r} has negative counts (neuron {i})")
        empty = d.sum(dim=1) == 0
        if self.num_images > 0 and bool(empty.any()):
            i = int(torch.nonzero(empty)[0])
            raise VDNAFileError(
                f"{npz}: histogram {layer!r} is empty for {int(empty.sum())} neuron(s) (first: {i}) of a "
                f"VDNA of {self.num_images} images; EMD is undefined there"
            )

    def _merged_data(self, other: VDNA) -> dict:
        return {
            k: self.data[k].to(torch.int64) + other.data[k].to(torch.int64).to(self.data[k].device)
            for k in self.data
        }


class VDNAGauss(VDNA):
    """Per-neuron Gaussians: ``data[layer] = {"mu": [n], "var": [n]}``."""

    type = "gaussian"
    _fields = (("mu", np.float32, False), ("var", np.float32, False))

    def get_neuron_dist(self, layer_name: str, neuron_idx: int) -> dict[str, torch.Tensor]:
        d = self.data[layer_name]
        return {"mu": d["mu"][neuron_idx], "var": d["var"][neuron_idx]}

    def get_all_neurons_in_layer_dist(self, layer_name: str) -> dict[str, torch.Tensor]:
        return {"mu": self.data[layer_name]["mu"], "var": self.data[layer_name]["var"]}

    def get_all_neurons_dists(self) -> dict[str, torch.Tensor]:
        return {
            "mu": torch.cat([d["mu"] for d in self.data.values()]),
            "var": torch.cat([d["var"] for d in self.data.values()]),
        }

    def _validate_layer(self, layer, d, npz) -> None:
        if bool((d["var"] < 0).any()):
            i = int(torch.nonzero(d["var"] < 0)[0])
            raise VDNAFileError(f"{npz}: field 'var' of layer {layer!r} is negative (neuron {i})")

    def _merged_data(self, other: VDNA) -> dict:
        out = {}
        na, nb = self.num_images, other.num_images
        n = na + nb
        for layer in self.data:
            ma, va = self.data[layer]["mu"].double(), self.data[layer]["var"].double()
            mb, vb = other.data[layer]["mu"].double(), other.data[layer]["var"].double()
            delta = mb - ma
            m2 = va * max(na - 1, 0) + vb * max(nb - 1, 0) + delta * delta * (na * nb / n)
            out[layer] = {"mu": ma + delta * (nb / n), "var": m2 / (n - 1) if n > 1 else torch.zeros_like(ma)}
        return out


class VDNALayerGauss(VDNA):
    """One Gaussian per layer: ``data[layer] = {"mu": [n], "sigma": [n, n]}`` (float64)."""

    type = "layer-gaussian"
    _fields = (("mu", np.float64, False), ("sigma", np.float64, True))

    def get_neuron_dist(self, layer_name: str, neuron_idx: int):
        d = self.data[layer_name]
        return {"mu": d["mu"][neuron_idx], "sigma": d["sigma"][neuron_idx][neuron_idx]}

    def get_all_neurons_in_layer_dist(self, layer_name: str):
        return {"mu": self.data[layer_name]["mu"], "sigma": self.data[layer_name]["sigma"]}

    def get_all_neurons_dists(self):
        return self.data

    def _validate_layer(self, layer, d, npz) -> None:
        diag = torch.diagonal(d["sigma"])
        if bool((diag < 0).any()):
            i = int(torch.nonzero(diag < 0)[0])
            raise VDNAFileError(
                f"{npz}: field 'sigma' of layer {layer!r} has a negative variance (neuron {i})"
            )

    def _merged_data(self, other: VDNA) -> dict:
        out = {}
        na, nb = self.num_images, other.num_images
        n = na + nb
        for layer in self.data:
            ma, sa = self.data[layer]["mu"].double(), self.data[layer]["sigma"].double()
            mb, sb = other.data[layer]["mu"].double(), other.data[layer]["sigma"].double()
            delta = mb - ma
            m2 = sa * max(na - 1, 0) + sb * max(nb - 1, 0) + torch.outer(delta, delta) * (na * nb / n)
            out[layer] = {
                "mu": ma + delta * (nb / n),
                "sigma": m2 / (n - 1) if n > 1 else torch.zeros_like(sa),
            }
        return out


class VDNAActivationRanges(VDNA):
    """Per-neuron activation ranges: ``data[layer] = {"min": [n], "max": [n]}``."""

    type = "activation-ranges"
    _fields = (("min", np.float32, False), ("max", np.float32, False))

    def get_neuron_dist(self, layer_name: str, neuron_idx: int):
        d = self.data[layer_name]
        return {"min": d["min"][neuron_idx], "max": d["max"][neuron_idx]}

    def get_all_neurons_in_layer_dist(self, layer_name: str):
        return {"min": self.data[layer_name]["min"], "max": self.data[layer_name]["max"]}

    def get_all_neurons_dists(self):
        return {
            "min": torch.cat([d["min"] for d in self.data.values()]),
            "max": torch.cat([d["max"] for d in self.data.values()]),
        }

    def to_ranges(self, origin: str | None = None) -> Ranges:
        """These ranges as histogram bin ranges (see `Ranges`)."""
        return Ranges(
            {k: d["min"].double().cpu().numpy() for k, d in self.data.items()},
            {k: d["max"].double().cpu().numpy() for k, d in self.data.items()},
            origin or f"vdna:{self.loaded_from_path}",
        )

    def _validate_layer(self, layer, d, npz) -> None:
        if bool((d["min"] > d["max"]).any()):
            i = int(torch.nonzero(d["min"] > d["max"])[0])
            raise VDNAFileError(f"{npz}: layer {layer!r} has min > max (neuron {i})")

    def _merged_data(self, other: VDNA) -> dict:
        return {
            k: {
                "min": torch.minimum(
                    self.data[k]["min"], other.data[k]["min"].to(self.data[k]["min"].device)
                ),
                "max": torch.maximum(
                    self.data[k]["max"], other.data[k]["max"].to(self.data[k]["max"].device)
                ),
            }
            for k in self.data
        }


def get_vdna(dist_name: str) -> VDNA:
    """An empty VDNA for a distribution name ("histogram-1000", "gaussian", ...)."""
    kind, bins = parse_distribution(dist_name)
    if kind == "histogram":
        return VDNAHist(hist_nb_bins=bins)
    return {
        "gaussian": VDNAGauss,
        "layer-gaussian": VDNALayerGauss,
        "activation-ranges": VDNAActivationRanges,
    }[kind]()


def load_vdna_from_files(file_path: str | os.PathLike, device: str = "cpu") -> VDNA:
    """Load NAME.json + NAME.npz (``file_path`` is NAME, with or without a suffix)."""
    meta = _read_json(file_path)
    try:
        vdna = get_vdna(str(meta["name"]))
    except (ValueError, TypeError) as err:
        raise VDNAFileError(f"{_json_path(file_path)}: {err}") from err
    vdna.load(file_path, device=device)
    return vdna


def load_vdna_from_hub(repo_id: str, file_path: str, device: str = "cpu", repo_type: str = "dataset") -> VDNA:
    """Download NAME.json + NAME.npz from a Hugging Face repo (vdna's default: a dataset repo) and load them."""
    from huggingface_hub import hf_hub_download

    from .._errors import WeightsError

    try:
        js = hf_hub_download(repo_id=repo_id, filename=file_path + ".json", repo_type=repo_type)
        hf_hub_download(repo_id=repo_id, filename=file_path + ".npz", repo_type=repo_type)
    except Exception as err:  # the hub client raises many types; all mean "not available"
        raise WeightsError(
            f"cannot fetch {file_path}.json/.npz from the {repo_type} repo {repo_id} "
            f"({type(err).__name__}: {' '.join(str(err).split())[:200]}); download them and use "
            f"load_vdna_from_files"
        ) from err
    return load_vdna_from_files(js[: -len(".json")], device=device)


# ------------------------------------------------------------------------------------------- checks

# Settings that change the numbers; two VDNAs must agree on each one both of them record.
_META_KEYS = ("weights", "recipe", "dtype", "layers")


def check_compatible(a: VDNA, b: VDNA, *, action: str = "compare") -> None:
    """Raise IncompatibleVDNAError unless ``a`` and ``b`` measure the same thing the same way."""
    if a.type != b.type or a.name != b.name:
        raise IncompatibleVDNAError(f"cannot {action} a {a.name} VDNA with a {b.name} VDNA")
    if a.feature_extractor_name != b.feature_extractor_name:
        raise IncompatibleVDNAError(
            f"cannot {action} VDNAs of different extractors: {a.feature_extractor_name} vs {b.feature_extractor_name}"
        )
    if dict(a.neurons_list) != dict(b.neurons_list):
        raise IncompatibleVDNAError(f"cannot {action} VDNAs with different layers or neuron counts")
    for key in _META_KEYS:
        va, vb = a.meta.get(key), b.meta.get(key)
        if va is not None and vb is not None and va != vb:
            raise IncompatibleVDNAError(f"cannot {action} VDNAs made with different {key}: {va} vs {vb}")
    if a.type == "histogram":
        pa_, pb_ = a.meta.get("histogram_precision", "fp64"), b.meta.get("histogram_precision", "fp64")
        if pa_ != pb_:
            raise IncompatibleVDNAError(
                f"cannot {action} histogram VDNAs binned with different precision: {pa_} vs {pb_} "
                "(values near bin edges land in other bins)"
            )
        ra, rb = a.meta.get("ranges"), b.meta.get("ranges")
        if ra and rb and ra.get("sha256") != rb.get("sha256"):
            raise IncompatibleVDNAError(
                f"cannot {action} histogram VDNAs made with different activation ranges "
                f"({ra.get('origin')} vs {rb.get('origin')}): their bins do not line up"
            )
        if bool(ra) != bool(rb):
            logger.warning(
                "one VDNA does not record its activation ranges (written by vdna?); assuming both used "
                "the extractor's published ranges"
            )


def load_ranges(path: str | os.PathLike) -> Ranges:
    """Ranges from a vdna activation_ranges.json, a job directory's ranges.json (neuroprint's record: origin,
    mins, maxs), or an activation-ranges VDNA (NAME.json + NAME.npz)."""
    path = Path(path)
    json_path = path if path.suffix == ".json" else path.with_suffix(".json")
    if not json_path.is_file():
        raise WeightsError(f"ranges file not found: {path} (expected a .json file or a VDNA name)")
    try:
        with open(json_path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as err:
        raise VDNAFileError(f"cannot read ranges from {json_path}: {type(err).__name__}: {err}") from err
    if not isinstance(raw, dict):
        raise VDNAFileError(f"{json_path} is not a ranges file (top level is not an object)")
    if "mins_per_neuron" in raw:
        try:
            return Ranges.from_vdna_json(raw, origin=f"file:{json_path.name}")
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise VDNAFileError(f"malformed ranges file {json_path}: {type(err).__name__}: {err}") from err
    if "mins" in raw and "maxs" in raw and "type" not in raw:
        # neuroprint's own record: a job's ranges.json, or the "ranges" entry of a VDNA's metadata.
        try:
            return Ranges.from_json(raw)
        except VDNAFileError as err:
            raise VDNAFileError(f"{json_path}: {err}") from err
    if raw.get("type") == "activation-ranges":
        vdna = load_vdna_from_files(json_path)
        return vdna.to_ranges(origin=f"vdna:{json_path.stem}")
    raise VDNAFileError(
        f"{json_path} is neither an activation_ranges.json, a job's ranges.json nor an activation-ranges "
        f"VDNA (type {raw.get('type')!r})"
    )
