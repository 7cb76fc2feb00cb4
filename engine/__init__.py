"""neuroprint: neuron-level fingerprints (Visual DNA) of image collections, and their comparison.

A drop-in for the ``vdna`` package's API (same names, same numbers, same files)::

    from neuroprint import VDNAProcessor, EMD, load_vdna_from_files

    vdna1 = VDNAProcessor().make_vdna(source="/data/set_a", feat_extractor_name="dino_vit_base")
    vdna1.save("set_a")
    vdna2 = load_vdna_from_files("set_b")
    EMD(vdna1, vdna2)

plus the engine's own entry points: `profile` (several distributions from one pass), `run_job` (a sharded,
resumable job writing Parquet rows and VDNAs, locally or on Ray actors), `open_source`,
`Ranges`, and the extractor registry (`create_extractor`, `list_extractors`); and the submodules
`neuroprint.fungi` (FUNGI gradient features), `neuroprint.dedup` (near-duplicates), `neuroprint.explain`
(saliency, occlusion, receptive fields, minimal images), `neuroprint.visualize` (feature visualisation),
`neuroprint.check` (nightly data-quality checks) and `neuroprint.kernels`.
"""

from ._errors import (
    DecodeError,
    EmptySourceError,
    IncompatibleVDNAError,
    NeuroprintError,
    SourceError,
    VDNAFileError,
    WeightsError,
)
from ._lazy import lazy_attributes
from ._version import __version__

# Everything else is imported on first use (PEP 562), so that ``import neuroprint`` and the command line
# start without torch: ``neuroprint profile --resume`` on a complete job answers before torch is loaded.
_LAZY = {
    "create_extractor": "extractors",
    "list_extractors": "extractors",
    "Recipe": "io.recipe",
    "Item": "io.sources",
    "Source": "io.sources",
    "open_source": "io.sources",
    "JobError": "jobs",
    "JobResult": "jobs",
    "run_job": "jobs",
    "EMD": "stats.distances",
    "FD": "stats.distances",
    "NFD": "stats.distances",
    "earth_movers_distance": "stats.distances",
    "frechet_distance": "stats.distances",
    "frechet_distance_1d": "stats.distances",
    "VDNAProcessor": "stats.profile",
    "profile": "stats.profile",
    "Ranges": "stats.ranges",
    "emd_matrix": "stats.scoring",
    "score_images": "stats.scoring",
    "VDNA": "stats.vdna",
    "VDNAActivationRanges": "stats.vdna",
    "VDNAGauss": "stats.vdna",
    "VDNAHist": "stats.vdna",
    "VDNALayerGauss": "stats.vdna",
    "get_vdna": "stats.vdna",
    "load_ranges": "stats.vdna",
    "load_vdna_from_files": "stats.vdna",
    "load_vdna_from_hub": "stats.vdna",
}

# The engine's other capabilities are submodules, imported on first use (``neuroprint.dedup`` etc.).
_SUBMODULES = ("check", "dedup", "explain", "fungi", "kernels", "visualize")


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, _SUBMODULES)


__all__ = [
    "EMD",
    "FD",
    "NFD",
    "VDNA",
    "DecodeError",
    "EmptySourceError",
    "IncompatibleVDNAError",
    "Item",
    "JobError",
    "JobResult",
    "NeuroprintError",
    "Ranges",
    "Recipe",
    "Source",
    "SourceError",
    "VDNAActivationRanges",
    "VDNAFileError",
    "VDNAGauss",
    "VDNAHist",
    "VDNALayerGauss",
    "VDNAProcessor",
    "WeightsError",
    "__version__",
    "check",
    "create_extractor",
    "dedup",
    "earth_movers_distance",
    "emd_matrix",
    "explain",
    "frechet_distance",
    "frechet_distance_1d",
    "fungi",
    "get_vdna",
    "kernels",
    "list_extractors",
    "load_ranges",
    "load_vdna_from_files",
    "load_vdna_from_hub",
    "open_source",
    "profile",
    "run_job",
    "score_images",
    "visualize",
]
