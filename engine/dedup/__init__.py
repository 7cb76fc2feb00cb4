"""Near-duplicate detection: signatures, search, groups, and a keep/drop list.

One call does everything::

    from neuroprint.dedup import find_duplicates

    result = find_duplicates("photos/", "photos_dedup", method="both", keep="largest")
    result.groups  # pyarrow tables; the same as the Parquet files in the output directory

Pipeline: `compute_signatures` decodes each image once and computes the perceptual hashes on the decoded
pixels (batched torch, bit-exact with the ``imagehash`` package) and/or the backbone embedding; or
`load_signatures` reads the ``embedding`` / ``phash`` / ``dhash`` columns of a job directory
(``neuroprint profile --out-dir DIR --embeddings --hashes phash,dhash``: the signatures then come from the
same pass as the job's VDNAs, locally or on Ray actors). `find_pairs` finds candidate pairs per method: embeddings by exact cosine top-k (the
``neuroprint::cosine_topk`` op: blocked torch on CPU, a fused Triton kernel on CUDA) kept when the
similarity reaches ``threshold``, or approximately (`approximate_topk`: faiss IVF or k-means); hashes by
exact blocked Hamming search within ``max_distance`` bits. Pairs of all methods are joined into groups
without chaining (each image joins the first kept image, in the keep policy's order, that it is paired
with; or connected components), and each group keeps one member by a stated policy.

Output directory (all Parquet, plus ``dedup.json`` with every setting and the counts)::

    pairs.parquet     id_a, id_b, similarity (cosine, or 1 - bits/64 for hashes), method, distance (bits)
    groups.parquet    group, size, keep_id, members, policy
    keep.parquet      id, uri, keep, group (null if in no group), reason    (one row per readable image)
    failures.parquet  id, uri, error                                         (images that could not be read)
    signatures.parquet id, uri, width, height[, phash, dhash], sharpness    (reusable hashes)
    contact_sheet.png the largest groups, kept image first (with contact_sheet=True)
"""

from __future__ import annotations

from .._lazy import lazy_attributes

# Imported on first use (PEP 562), so that the command line builds its parser without torch.
__all__ = [
    "DEFAULT_MAX_DISTANCE",
    "DEFAULT_THRESHOLD",
    "KEEP_POLICIES",
    "METHODS",
    "DedupError",
    "DedupResult",
    "GROUPINGS",
    "Signatures",
    "approximate_topk",
    "choose_keep",
    "compute_signatures",
    "connected_components",
    "dhash",
    "embedding_pairs",
    "find_duplicates",
    "find_pairs",
    "hamming_pairs",
    "hash_pairs",
    "image_hashes",
    "keep_ranking",
    "kept_groups",
    "load_signatures",
    "phash",
    "recall_at_k",
    "resolve_methods",
    "sharded_topk",
    "write_contact_sheet",
]

_SUBMODULES = ("bits", "hashes", "mih", "search", "settings", "sharpness", "signatures")


# where each public name is defined: the entry points in _api, the rest in their submodules
_HOME = {n: "_api" for n in (*__all__, "OUTPUT_FILES", "logger")}
_HOME.update(dict.fromkeys(("dhash", "hamming_pairs", "image_hashes", "phash"), "hashes"))
_HOME.update(dict.fromkeys(("approximate_topk", "choose_keep", "connected_components", "embedding_pairs",
                            "hash_pairs", "keep_ranking", "kept_groups", "recall_at_k", "sharded_topk"), "search"))  # fmt: skip
_HOME.update(dict.fromkeys(("DEFAULT_MAX_DISTANCE", "DEFAULT_THRESHOLD", "GROUPINGS", "KEEP_POLICIES", "METHODS"), "settings"))  # fmt: skip
_HOME.update(dict.fromkeys(("Signatures", "compute_signatures", "load_signatures"), "signatures"))
__getattr__, __dir__ = lazy_attributes(__name__, _HOME, _SUBMODULES)
