"""Nightly data-quality checks: tonight's images against a reference, as a verdict, a report and an exit code.

    ref = neuroprint.check.build_reference("s3://bucket/accepted/", "ref/", extractor="mugs_vit_base")
    res = neuroprint.check.check("s3://bucket/tonight/", "ref/", "night-2026-12-06/",
                                 history="history.parquet", fail_on=["drift:p<0.01", "dark>2%"])
    res.verdict, res.exit_code, res.drift["p"], res.counts["flags"]["dark"]

A reference directory is a job directory (`neuroprint.jobs`: histogram and layer-gaussian VDNAs, per-image
quality statistics and hashes in rows/) plus ``reference.json`` naming its current state directory
(``state-NNNN/``: the VDNAs, the null pool ``pool.npz`` and ``images.parquet``, the statistics and hashes
of every image the reference holds). ``update_reference`` folds an accepted night into a new state
directory (nothing recomputed), then points reference.json at it: a crash leaves the old state in force.

A check is one pass over tonight's pixels as a Job (local or Ray, resumable, bad files recorded) in the
night's directory, then the analysis: quality flags (`neuroprint.check.quality`) with thresholds from
the reference's own distribution, near-duplicates within the night and against the reference (64-bit
perceptual hashes), an outlier score per image, and the drift statistics with their calibrated null
(`neuroprint.check.drift`). It writes ``summary.json`` (the `CheckResult`'s fields), ``flags.parquet``
(one row per image), ``report.html`` (one self-contained file) and appends one row to the history.

Exit codes (the CLI): 0 every rule passes, 1 a rule fails, 2 a usage or input error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .._errors import NeuroprintError
from .._names import (
    CHECK_DEFAULT_BINS,
    CHECK_DEFAULT_DUP_COSINE,
    CHECK_DEFAULT_DUP_DISTANCE,
    CHECK_DEFAULT_POOL,
)
from ..jobs.job import _write_atomic
from .drift import NeuronPool, drift_statistics, load_pool, merge_pools, pool_ids, pool_view, save_pool
from .quality import FLAGS, QUALITY_COLUMNS, Quality, flag_images, thresholds_from

__all__ = [
    "DEFAULT_RULES",
    "CheckError",
    "CheckResult",
    "Reference",
    "build_reference",
    "check",
    "parse_rule",
    "update_reference",
]

logger = logging.getLogger(__name__)

REFERENCE_FORMAT = "neuroprint-check-reference/1"
SUMMARY_FORMAT = "neuroprint-check-summary/1"
DEFAULT_RULES = ("drift:p<0.01",)
# the defaults the CLI's parser reads without torch (neuroprint._names)
DEFAULT_BINS, DEFAULT_POOL = CHECK_DEFAULT_BINS, CHECK_DEFAULT_POOL
DEFAULT_DUP_DISTANCE, DEFAULT_DUP_COSINE = CHECK_DEFAULT_DUP_DISTANCE, CHECK_DEFAULT_DUP_COSINE
HASHES = ("phash", "dhash")
IMAGE_COLUMNS = ("id", "uri", "width", "height", *QUALITY_COLUMNS, *HASHES)


class CheckError(NeuroprintError, ValueError):
    """A usage or input error of a check (exit code 2): a bad reference, night, rule or history file."""


# ------------------------------------------------------------------------------------------------ rules

_RULE = re.compile(r"^\s*([a-z_]+(?::[a-z_]+)?)\s*(<=|>=|<|>)\s*([0-9.eE+-]+)\s*(%?)\s*$")
RULE_NAMES = ("drift:p", "drift:emd", "failed", "duplicates", "duplicates_reference", "outliers", *FLAGS)


def parse_rule(text: str) -> dict:
    """``NAME OP VALUE[%]``: drift:p<0.01, drift:emd>0.5, failed>1%, dark>2%, duplicates>5%, blurry>=10.

    Flags, duplicates and failures compare a count, or with % a share (of the processed images; failed: of
    the images in); drift:p and drift:emd compare the value. The rule fails when the comparison is true.
    """
    m = _RULE.match(str(text))
    if not m or m.group(1) not in RULE_NAMES:
        raise CheckError(
            f"bad --fail-on rule {text!r}: expected NAME OP VALUE[%], NAME one of {', '.join(RULE_NAMES)}, "
            "OP one of < <= > >= (e.g. drift:p<0.01, dark>2%, duplicates>5%)"
        )
    name, op, value, pct = m.groups()
    try:
        v = float(value)
    except ValueError as err:
        raise CheckError(f"bad --fail-on rule {text!r}: {value!r} is not a number") from err
    if pct and name.startswith("drift:"):
        raise CheckError(f"bad --fail-on rule {text!r}: {name} takes a value, not a percentage")
    return {"rule": f"{name}{op}{value}{pct}", "name": name, "op": op, "value": v, "percent": bool(pct)}


_OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal}


def _evaluate(rule: dict, counts: dict, drift: dict) -> dict:
    name = rule["name"]
    if name == "drift:p":
        got = drift["p"]
    elif name == "drift:emd":
        got = drift["emd"]
    else:
        count = {
            "failed": counts["failed"],
            "duplicates": counts["duplicates"],
            "duplicates_reference": counts["duplicates_reference"],
            "outliers": counts["outliers"],
        }.get(name, counts["flags"].get(name))
        base = counts["images_in"] if name == "failed" else counts["processed"]
        got = 100.0 * count / max(base, 1) if rule["percent"] else count
    fails = bool(_OPS[rule["op"]](got, rule["value"]))
    return {"rule": rule["rule"], "value": float(got), "fails": fails}


# -------------------------------------------------------------------------------------------- reference


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class Reference:
    """An opened reference directory (`build_reference`); validated on open."""

    path: Path
    meta: dict

    @classmethod
    def open(cls, path) -> Reference:
        path = Path(path)
        meta_path = path / "reference.json"
        if not path.is_dir():
            raise CheckError(f"reference {path} does not exist or is not a directory")
        if not meta_path.is_file():
            raise CheckError(
                f"{path} is not a finished check reference (no reference.json): build it with "
                "neuroprint check --build-reference SRC --out-dir REF, or rerun that command to finish it"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except ValueError as err:
            raise CheckError(f"{meta_path} is not readable JSON ({err})") from err
        if not isinstance(meta, dict) or meta.get("format") != REFERENCE_FORMAT:
            raise CheckError(f"{meta_path}: not a {REFERENCE_FORMAT} record (format {meta.get('format')!r})")
        for key in (
            "state",
            "bins",
            "extractor",
            "weights",
            "weights_id",
            "layers",
            "dtype",
            "images",
            "files",
        ):
            if key not in meta:
                raise CheckError(f"{meta_path}: field {key!r} is missing")
        ref = cls(path, meta)
        for name, digest in meta["files"].items():
            f = ref.state / name
            if not f.is_file():
                raise CheckError(
                    f"reference {path}: {meta['state']}/{name} is missing (half-written reference?)"
                )
            if _sha256_file(f) != digest:
                raise CheckError(
                    f"reference {path}: {meta['state']}/{name} does not match its sha256 (altered)"
                )
        if not (path / "ranges.json").is_file():
            raise CheckError(f"reference {path}: ranges.json is missing")
        return ref

    @property
    def state(self) -> Path:
        return self.path / self.meta["state"]

    @property
    def hist_name(self) -> str:
        return f"histogram-{int(self.meta['bins'])}"

    def vdna(self, name: str):
        from ..stats.vdna import load_vdna_from_files

        return load_vdna_from_files(self.state / name)

    def pool(self) -> dict:
        return load_pool(self.state / "pool.npz")

    def images(self):
        import pyarrow.parquet as pq

        return pq.read_table(self.state / "images.parquet")

    @property
    def digest(self) -> str:
        """Identifies the reference's current content (its state's files)."""
        return hashlib.sha256(json.dumps(self.meta["files"], sort_keys=True).encode()).hexdigest()


def _job_kwargs(**kw) -> dict:
    keys = (
        "batch_size",
        "num_workers",
        "device",
        "progress",
        "max_shards",
        "ray",
        "num_actors",
        "ray_address",
    )
    return {k: kw[k] for k in keys if k in kw}


def _run(source, out_dir, parts, extractor, weights, layers, dtype, shard_size, seed, command, **kw):
    import torch

    from ..jobs import Backbone, Job

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    backbone = Backbone(extractor, weights, layers, dtype)
    job = Job(
        source,
        out_dir,
        parts,
        backbone,
        shard_size=shard_size,
        seed=seed,
        command=command,
        decoder="pil",
        **kw,
    )
    return job.run()


def _write_state(ref_dir: Path, index: int, hist, gauss, pool: dict, images) -> tuple[str, dict]:
    """A new state directory; returns its name and the sha256 of each file."""
    import pyarrow.parquet as pq

    name = f"state-{index:04d}"
    tmp = ref_dir / (name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    hist.save(tmp / hist.name)
    gauss.save(tmp / gauss.name)
    save_pool(tmp / "pool.npz", pool)
    pq.write_table(images, tmp / "images.parquet")
    final = ref_dir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    files = {p.name: _sha256_file(p) for p in sorted(final.iterdir())}
    return name, files


def _ok_images(rows_dir: Path, origin: str):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    names = pq.read_schema(next(iter(sorted(rows_dir.glob("*.parquet"))))).names
    columns = [*IMAGE_COLUMNS, *(["embedding"] if "embedding" in names else [])]
    rows = pq.read_table(rows_dir, columns=["status", *columns])
    ok = rows.filter(pc.equal(rows["status"], "ok")).select(columns)
    return ok.append_column("origin", pa.array([origin] * ok.num_rows, pa.string()))


def _write_json(path: Path, obj) -> None:
    _write_atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2, default=_json_default)))


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def build_reference(
    source,
    out_dir,
    *,
    extractor: str = "mugs_vit_base",
    weights="default",
    layers=None,
    ranges="auto",
    bins: int = DEFAULT_BINS,
    pool_size: int = DEFAULT_POOL,
    dtype="float32",
    shard_size: int = 1024,
    seed: int = 0,
    embeddings: bool = False,
    command: dict | None = None,
    **job,
) -> Reference | None:
    """Profile ``source`` into the reference directory ``out_dir`` (resumable: rerun to continue).

    bins: histogram bins of the drift statistics; pool_size: reference images whose per-image histograms
    and means are kept for the drift null (memory: pool_size x neurons x bins x 2 bytes); ranges:
    "auto" (a first pass measures every neuron's range), a ranges file, or None (the extractor's
    published ranges). embeddings: also keep each image's embedding (the mean of the last tap), so that
    every night checked against this reference finds near-duplicates by embedding cosine as well as by
    pHash. job: batch_size, num_workers, device, progress, max_shards, ray, num_actors, ray_address.
    Returns None while shards are left (max_shards).
    """
    from ..io.sources import open_source
    from ..jobs.builtin import Distributions, Embedding, Hashes

    if int(bins) < 2:
        raise CheckError(f"bins must be >= 2, got {bins}")
    if int(pool_size) < 2:
        raise CheckError(f"the null pool needs at least 2 images, got pool_size={pool_size}")
    out = Path(out_dir)
    src = open_source(source)
    pool = pool_ids([it.id for it in src], pool_size)
    hist_name = f"histogram-{int(bins)}"
    parts = [
        Distributions([hist_name, "layer-gaussian"], ranges),
        Hashes(HASHES, sharpness=False),  # the check never chooses which duplicate to keep
        Quality(),
        NeuronPool(pool, means="pool", bins=int(bins), file="pool.npz"),
    ]
    if embeddings:
        parts.append(Embedding())
    res = _run(
        src, out, parts, extractor, weights, layers, dtype, shard_size, seed, command, **_job_kwargs(**job)
    )
    if not res.complete:
        return None
    if (out / "reference.json").is_file():  # finished earlier: a rerun changes nothing
        return Reference.open(out)
    from ..stats.vdna import load_vdna_from_files

    hist = load_vdna_from_files(out / hist_name)
    gauss = load_vdna_from_files(out / "layer-gaussian")
    pool_arrays = load_pool(out / "pool.npz")
    if pool_view(pool_arrays)["ids"].size < 2:
        raise CheckError(f"only {res.processed} readable image(s): a reference needs at least 2")
    state, files = _write_state(out, 0, hist, gauss, pool_arrays, _ok_images(out / "rows", "reference"))
    manifest = json.loads((out / "manifest.json").read_text())
    meta = {
        "format": REFERENCE_FORMAT,
        "state": state,
        "files": files,
        "bins": int(bins),
        "pool_size": int(pool_size),
        "extractor": hist.feature_extractor_name,
        "weights": os.fspath(weights) if isinstance(weights, os.PathLike) else weights,
        "weights_id": manifest["settings"]["weights"],
        "layers": list(manifest["settings"]["layers"]),
        "dtype": manifest["settings"]["dtype"],
        "ranges_sha256": hist.meta.get("ranges", {}).get("sha256"),
        "images": int(res.processed),
        "embeddings": bool(embeddings),
        "built": {"source": manifest["settings"]["source"], "images_in": res.images_in, "failed": res.failed},
        "nights": [],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(out / "reference.json", meta)
    return Reference.open(out)


# ---------------------------------------------------------------------------------------------- check


@dataclass
class CheckResult:
    """What a check found; ``to_dict()`` is summary.json."""

    verdict: str  # "pass" or "fail"
    exit_code: int  # 0 pass, 1 a rule fails
    counts: dict  # images_in = processed + failed; flags, duplicates, outliers
    rules: list  # [{rule, value, fails}]
    drift: dict  # overall / per-layer EMD and FD with p-values and null bands; p: the family's p
    top_neurons: list  # the most drifting neurons, each with its driving images
    thresholds: dict  # the quality flags' thresholds (from the reference)
    outliers: list  # the top outliers
    driving: list  # the images that drive the drift most (mean contribution over the top neurons)
    duplicates: dict  # within the night (groups) and against the reference (pairs)
    settings: dict
    out_dir: str = ""
    format: str = SUMMARY_FORMAT
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def to_dict(self) -> dict:
        return asdict(self)


def _settings_mismatch(ref: Reference, extractor, weights, layers, dtype) -> None:
    given = {"extractor": extractor, "weights": weights, "layers": layers, "dtype": dtype}
    for key, value in given.items():
        if value is None:
            continue
        want = ref.meta[key]
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        if key == "layers":
            value = list(value)
        if value != want:
            raise CheckError(
                f"the night's {key} {value!r} differs from the reference's {want!r}: a night is compared "
                "with the network, weights, layers and precision of its reference"
            )


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[len(a), len(b)] Hamming distances of 64-bit hashes (int64)."""
    import torch

    from ..dedup.bits import hamming_distance

    return hamming_distance(torch.from_numpy(a)[:, None], torch.from_numpy(b)[None, :]).numpy()


def _nearest_reference(night: np.ndarray, ref: np.ndarray, block: int = 1024):
    """For each night hash: the index of the nearest reference hash and its distance (blocked scan)."""
    best = np.full(len(night), -1, dtype=np.int64)
    dist = np.full(len(night), 65, dtype=np.int64)
    for r0 in range(0, len(ref), 1 << 14):
        rb = ref[r0 : r0 + (1 << 14)]
        for q0 in range(0, len(night), block):
            d = _hamming(night[q0 : q0 + block], rb)
            j = d.argmin(1)
            dj = d[np.arange(len(j)), j]
            better = dj < dist[q0 : q0 + block]
            best[q0 : q0 + block][better] = j[better] + r0
            dist[q0 : q0 + block][better] = dj[better]
    return best, dist


def _history_schema():
    import pyarrow as pa

    return pa.schema(
        [
            ("time", pa.string()),
            ("night", pa.string()),
            ("night_sha256", pa.string()),
            ("reference", pa.string()),
            ("reference_sha256", pa.string()),
            ("verdict", pa.string()),
            ("images_in", pa.int64()),
            ("processed", pa.int64()),
            ("failed", pa.int64()),
            ("drift_p", pa.float64()),
            ("emd", pa.float64()),
            ("emd_p", pa.float64()),
            ("layer_emd", pa.string()),  # JSON {layer: value}
            ("layer_fd", pa.string()),
            *((f, pa.int64()) for f in FLAGS),
            ("duplicates", pa.int64()),
            ("duplicates_reference", pa.int64()),
            ("outliers", pa.int64()),
        ]
    )


def read_history(path):
    """The history table (one row per night), or None when the file does not exist; refuses another schema."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except Exception as err:
        raise CheckError(
            f"history {path} is not a readable Parquet file ({type(err).__name__}: {err})"
        ) from err
    want = _history_schema()
    if table.schema.remove_metadata() != want:
        raise CheckError(
            f"history {path} has another schema (columns {', '.join(table.schema.names)}); "
            "give a new history file or the one neuroprint check wrote"
        )
    return table


def _append_history(path: Path, row: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = read_history(path)
    new = pa.Table.from_pylist([row], schema=_history_schema())
    if old is not None:  # a rerun of the same night replaces its row
        keep = [i for i, s in enumerate(old["night_sha256"].to_pylist()) if s != row["night_sha256"]]
        new = pa.concat_tables([old.take(keep), new])
    _write_atomic(path, lambda tmp: pq.write_table(new, tmp))


def check(
    source,
    reference,
    out_dir,
    *,
    history=None,
    fail_on=DEFAULT_RULES,
    percentile: float = 1.0,
    resamples: int = 500,
    dup_distance: int = DEFAULT_DUP_DISTANCE,
    dup_cosine: float = DEFAULT_DUP_COSINE,
    top_neurons: int = 8,
    top_images: int = 12,
    outlier_percentile: float = 99.0,
    extractor=None,
    weights=None,
    layers=None,
    dtype=None,
    shard_size: int = 1024,
    seed: int = 0,
    report: bool = True,
    update: bool = False,
    command: dict | None = None,
    **job,
) -> CheckResult | None:
    """Check the night ``source`` against ``reference`` into ``out_dir`` (see the module docstring).

    fail_on: rules (`parse_rule`); percentile: the flags' reference percentile; resamples: draws of the
    drift null; dup_distance: the largest phash Hamming distance of a near-duplicate; dup_cosine: the
    smallest embedding cosine of a near-duplicate (used when the reference keeps embeddings: the night
    computes them too); outlier_percentile:
    images whose outlier score is above this percentile of the reference pool's scores count as
    outliers; extractor/weights/layers/dtype: when given, must equal the reference's (the night always
    runs the reference's network). update: when the verdict is pass, fold the night into the reference
    (`update_reference`). job: batch_size, num_workers, device, progress, max_shards, ray, num_actors,
    ray_address. Returns None while shards are left (max_shards).
    """
    from ..io.sources import open_source
    from ..jobs.builtin import Distributions, Embedding, Hashes

    rules = [parse_rule(r) for r in (DEFAULT_RULES if fail_on is None else fail_on)]
    if not 0 < float(percentile) < 50:
        raise CheckError(f"--percentile must be in (0, 50), got {percentile}")
    if not 0 <= int(dup_distance) <= 64:
        raise CheckError(f"--dup-distance must be within 0..64, got {dup_distance}")
    if not -1 < float(dup_cosine) <= 1:
        raise CheckError(f"--dup-cosine must be in (-1, 1], got {dup_cosine}")
    if int(resamples) < 19:
        raise CheckError(f"--resamples must be >= 19 (p-values of at least 0.05), got {resamples}")
    ref = Reference.open(reference)
    _settings_mismatch(ref, extractor, weights, layers, dtype)
    if history is not None:
        read_history(history)  # refuse another schema before any work
    out = Path(out_dir)
    if out.resolve() == ref.path.resolve():
        raise CheckError("the night's --out-dir is the reference directory; give another one")
    src = open_source(source)
    ids = [it.id for it in src]
    ref_hist = ref.vdna(ref.hist_name)
    bins = int(ref.meta["bins"])
    parts = [
        # the night's histogram VDNA comes from NeuronPool (the sum of the per-image histograms it bins
        # for emd:reference), so that no activation is binned twice
        Distributions(["layer-gaussian"], ref.path / "ranges.json"),
        Hashes(HASHES, sharpness=False),  # the check never chooses which duplicate to keep
        Quality(),
        NeuronPool(
            pool_ids(ids, int(ref.meta.get("pool_size", DEFAULT_POOL))),
            means="all",
            bins=bins,
            file="neurons.npz",
            reference={k: ref_hist.data[k].numpy() for k in ref.meta["layers"]},
            histogram=ref.hist_name,
            ranges=ref.path / "ranges.json",
        ),
    ]
    if ref.meta.get("embeddings"):
        parts.append(Embedding())
    m = ref.meta
    res = _run(
        src,
        out,
        parts,
        m["extractor"],
        m["weights"],
        m["layers"],
        m["dtype"],
        shard_size,
        seed,
        command,
        **_job_kwargs(**job),
    )
    if not res.complete:
        return None
    result = _analyse(
        ref,
        out,
        res,
        rules,
        float(percentile),
        int(resamples),
        int(dup_distance),
        float(dup_cosine),
        int(top_neurons),
        int(top_images),
        float(outlier_percentile),
        seed,
    )
    _write_json(out / "summary.json", result.to_dict())
    if history is not None:
        _append_history(Path(history), _history_row(result, out, ref))
    if report:
        from .report import write_report

        hist_table = read_history(history) if history is not None else None
        write_report(out / "report.html", result, ref, out, hist_table, source=src)
    if update and result.verdict == "pass":
        update_reference(ref.path, out)
    return result


def _history_row(result: CheckResult, out: Path, ref: Reference) -> dict:
    d, c = result.drift, result.counts
    return {
        "time": result.created,
        "night": str(out),
        "night_sha256": result.settings["night_sha256"],
        "reference": str(ref.path),
        "reference_sha256": ref.digest,
        "verdict": result.verdict,
        "images_in": c["images_in"],
        "processed": c["processed"],
        "failed": c["failed"],
        "drift_p": d["p"],
        "emd": d["emd"],
        "emd_p": d["emd_p"],
        "layer_emd": json.dumps({x["layer"]: x["emd"] for x in d["layers"]}),
        "layer_fd": json.dumps({x["layer"]: x["fd"] for x in d["layers"]}),
        **{f: c["flags"][f] for f in FLAGS},
        "duplicates": c["duplicates"],
        "duplicates_reference": c["duplicates_reference"],
        "outliers": c["outliers"],
    }


def _column(table, name):
    return np.asarray(table[name].to_numpy(zero_copy_only=False))


def _outlier_scores(means: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Mean over neurons of the squared z-score of each image's spatial means against the reference."""
    return (((means - mu) ** 2) / np.maximum(var, 1e-12)).mean(axis=1)


def _duplicates(ok, ref_images, dup_distance: int, dup_cosine: float) -> dict:
    """Near-duplicates of the night's readable images: within the night (groups of phash distance <=
    dup_distance, or embedding cosine >= dup_cosine when both sides have embeddings; the first image in
    source order is kept) and against every reference image (the nearest by phash; else by embedding)."""
    from ..dedup.search import connected_components, hash_pairs

    n = ok.num_rows
    ph = _column(ok, "phash").astype(np.int64)
    a, b, _ = hash_pairs(ph, dup_distance)
    ref_ph = _column(ref_images, "phash").astype(np.int64)
    near, near_d = (
        _nearest_reference(ph, ref_ph) if len(ref_ph) and n else (np.zeros(n, np.int64), np.full(n, 65))
    )
    by_hash = near_d <= dup_distance
    cos_near, cos = np.zeros(n, np.int64), np.full(n, np.nan)
    embedded = "embedding" in ok.column_names and "embedding" in ref_images.column_names
    if embedded and n:
        import torch

        from ..kernels.cosine_topk import cosine_topk

        e = torch.as_tensor(np.asarray(ok["embedding"].to_pylist(), dtype=np.float32))
        if n > 1:
            sims, idx = cosine_topk(e, k=min(8, n - 1))
            hit = (sims >= dup_cosine) & (idx >= 0)
            qi = torch.arange(n)[:, None].expand_as(idx)[hit].numpy()
            a, b = np.concatenate([a, qi]), np.concatenate([b, idx[hit].numpy()])
        re = torch.as_tensor(np.asarray(ref_images["embedding"].to_pylist(), dtype=np.float32))
        if len(re):
            s1, i1 = cosine_topk(e, re, k=1)
            cos_near, cos = i1[:, 0].numpy(), s1[:, 0].double().numpy()
    comp = connected_components(n, a, b)
    first, groups = {}, {}
    dup_of = np.full(n, -1, dtype=np.int64)
    for i, c in enumerate(comp.tolist()):
        if c in first:
            dup_of[i] = first[c]
        else:
            first[c] = i
        groups.setdefault(c, []).append(i)
    by_cos = ~by_hash & (cos >= dup_cosine)  # NaN (no embeddings) compares False
    return {
        "dup_of": dup_of,
        "groups": [g for g in groups.values() if len(g) > 1],
        "ref_index": np.where(by_hash, near, cos_near),
        "ref_dup": by_hash | by_cos,
        "ref_distance": near_d,
        "ref_cosine": cos,
        "embeddings": bool(embedded),
    }


def _outliers(means: np.ndarray, pool_means: np.ndarray, mu, var, pct: float) -> dict:
    """Outlier scores of the night's images, their rank, their percentile among the reference pool's
    scores, and the threshold (the pool's ``pct`` percentile)."""
    n = len(means)
    scores = _outlier_scores(means, mu, var)
    pool_scores = _outlier_scores(pool_means, mu, var)
    rank = np.empty(n, dtype=np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(1, n + 1)
    threshold = float(np.percentile(pool_scores, pct))
    return {
        "scores": scores,
        "rank": rank,
        "percentile": np.searchsorted(np.sort(pool_scores), scores, side="right") / len(pool_scores),
        "threshold": threshold,
        "is_outlier": scores > threshold,
    }


def _top_neurons(stats, means, mu, var, ref_hist, night_hist, ok_ids, ok_uris, k_neurons, k_images):
    """The most drifting neurons (by z against their null) and, for each, the night images that push it
    furthest in the direction it moved; also each image's mean push over those neurons."""
    n = len(means)
    bounds = np.cumsum([0, *stats["channels"]])
    z = stats["neuron_z"]
    top = np.argsort(-z, kind="stable")[:k_neurons]
    night_mean = means.mean(axis=0) if n else mu
    sd = np.sqrt(np.maximum(var, 0.0))
    sd = np.maximum(sd, 1e-6 + 1e-3 * float(np.median(sd)))  # dead units: no division by ~0
    contrib = np.sign(night_mean - mu)[None, :] * (means - mu[None, :]) / sd[None, :]
    top_list = []
    for j in top.tolist():
        li = int(np.searchsorted(bounds, j, side="right") - 1)
        layer, ch = stats["layers"][li], j - int(bounds[li])
        order = np.argsort(-contrib[:, j], kind="stable")[:k_images]
        top_list.append(
            {
                "layer": layer,
                "channel": int(ch),
                "neuron": int(j),
                "emd": float(stats["neuron_emd"][j]),
                "p": float(stats["neuron_p"][j]),
                "z": float(z[j]),
                "null_mean": float(stats["neuron_null_mean"][j]),
                "direction": "up" if night_mean[j] > mu[j] else "down",
                "reference_hist": ref_hist.data[layer][ch].tolist(),
                "night_hist": night_hist.data[layer][ch].tolist(),
                "driving": [
                    {"id": ok_ids[i], "uri": ok_uris[i], "contribution": float(contrib[i, j])} for i in order
                ],
            }
        )
    driving_score = contrib[:, top].mean(axis=1) if len(top) else np.zeros(n)
    return top_list, driving_score


def _drift_summary(stats: dict) -> dict:
    return {
        **{k: stats[k] for k in ("p", "z_max", "emd", "emd_p", "emd_null", "resamples", "pool", "n", "N")},
        "layers": [
            {
                "layer": layer,
                "channels": stats["channels"][i],
                "emd": stats["layer_emd"][i],
                "emd_p": stats["layer_emd_p"][i],
                "emd_null": stats["layer_emd_null"][i],
                "fd": stats["layer_fd"][i],
                "fd_p": stats["layer_fd_p"][i],
                "fd_null": stats["layer_fd_null"][i],
            }
            for i, layer in enumerate(stats["layers"])
        ],
        "neurons_p_below_0.01": int((stats["neuron_p"] < 0.01).sum()),
        "neurons": int(stats["neuron_p"].size),
    }


def _flags_table(rows, ok_mask, flags, dup, outl, driving_score, ok_ids, ref_ids):
    """flags.parquet: one row per input item (failures included, with null scores)."""
    import pyarrow as pa

    n, n_all = int(ok_mask.sum()), rows.num_rows
    pos = np.cumsum(ok_mask) - 1

    def per_row(values):
        out_ = [None] * n_all
        for r in np.nonzero(ok_mask)[0].tolist():
            out_[r] = values[pos[r]]
        return out_

    flag_lists = [[f for f in FLAGS if flags[f][i]] for i in range(n)]
    for i in range(n):
        if dup["dup_of"][i] >= 0:
            flag_lists[i].append("duplicate")
        if dup["ref_dup"][i]:
            flag_lists[i].append("duplicate_of_reference")
        if outl["is_outlier"][i]:
            flag_lists[i].append("outlier")
    cols = {
        c: rows[c]
        for c in ("id", "uri", "status", "error", "width", "height", *QUALITY_COLUMNS, "emd:reference")
    }
    cols["emd_reference"] = cols.pop("emd:reference")
    cols["flags"] = pa.array(per_row(flag_lists), pa.list_(pa.string()))
    cols["outlier_score"] = pa.array(per_row(outl["scores"].tolist()), pa.float64())
    cols["outlier_percentile"] = pa.array(per_row(outl["percentile"].tolist()), pa.float64())
    cols["outlier_rank"] = pa.array(per_row(outl["rank"].tolist()), pa.int64())
    cols["driving_score"] = pa.array(per_row(driving_score.tolist()), pa.float64())
    dup_of = dup["dup_of"].tolist()
    cols["duplicate_of"] = pa.array(per_row([ok_ids[d] if d >= 0 else None for d in dup_of]), pa.string())
    ref_of = [ref_ids[dup["ref_index"][i]] if dup["ref_dup"][i] else None for i in range(n)]
    cols["duplicate_of_reference"] = pa.array(per_row(ref_of), pa.string())
    dist = [int(x) if x <= 64 else None for x in dup["ref_distance"].tolist()]
    cols["reference_distance"] = pa.array(per_row(dist), pa.int64())
    if dup["embeddings"]:
        cos = [None if np.isnan(c) else float(c) for c in dup["ref_cosine"].tolist()]
        cols["reference_cosine"] = pa.array(per_row(cos), pa.float64())
    return pa.table(cols)


def _analyse(
    ref,
    out,
    res,
    rules,
    percentile,
    resamples,
    dup_distance,
    dup_cosine,
    k_neurons,
    k_images,
    outlier_pct,
    seed,
):
    """The night's verdict from its finished job directory ``out``: flags, duplicates, drift with its
    null, outliers, driving images; writes flags.parquet and returns the `CheckResult`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..stats.vdna import load_vdna_from_files

    manifest = json.loads((out / "manifest.json").read_text())
    night_sha = hashlib.sha256(
        (
            manifest["settings"]["item_ids_sha256"]
            + json.dumps(manifest["settings"]["source"], sort_keys=True)
        ).encode()
    ).hexdigest()
    rows = pq.read_table(out / "rows")
    ok_mask = _column(rows, "status") == "ok"
    ok = rows.filter(pa.array(ok_mask))
    n = ok.num_rows
    ref_images = ref.images()
    th = thresholds_from(
        {c: _column(ref_images, c) for c in (*QUALITY_COLUMNS, "width", "height")}, percentile
    )
    flags = flag_images({c: _column(ok, c) for c in (*QUALITY_COLUMNS, "width", "height")}, th)
    ok_ids, ok_uris = ok["id"].to_pylist(), ok["uri"].to_pylist()
    ref_ids, ref_uris = ref_images["id"].to_pylist(), ref_images["uri"].to_pylist()
    dup = _duplicates(ok, ref_images, dup_distance, dup_cosine)
    # drift
    night_hist = load_vdna_from_files(out / ref.hist_name)
    night_gauss = load_vdna_from_files(out / "layer-gaussian")
    ref_hist, ref_gauss = ref.vdna(ref.hist_name), ref.vdna("layer-gaussian")
    layers = list(ref.meta["layers"])
    pool = pool_view(ref.pool())
    stats = drift_statistics(
        {k: night_hist.data[k].numpy() for k in layers},
        {k: ref_hist.data[k].numpy() for k in layers},
        {k: (night_gauss.data[k]["mu"].numpy(), night_gauss.data[k]["sigma"].numpy()) for k in layers},
        {k: (ref_gauss.data[k]["mu"].numpy(), ref_gauss.data[k]["sigma"].numpy()) for k in layers},
        pool,
        n,
        int(ref.meta["images"]),
        resamples=resamples,
        seed=seed,
    )
    # per-image neuron means of the night, in the order of the ok rows
    neurons = load_pool(out / "neurons.npz")
    where = {i: k for k, i in enumerate(neurons["ids"].tolist())}
    means = neurons["means"][[where[i] for i in ok_ids]].astype(np.float64).reshape(n, -1)
    mu = np.concatenate([ref_gauss.data[k]["mu"].numpy() for k in layers])
    var = np.concatenate([np.diagonal(ref_gauss.data[k]["sigma"].numpy()) for k in layers])
    outl = _outliers(means, pool["means"].astype(np.float64), mu, var, outlier_pct)
    top_list, driving_score = _top_neurons(
        stats, means, mu, var, ref_hist, night_hist, ok_ids, ok_uris, k_neurons, k_images
    )
    table = _flags_table(rows, ok_mask, flags, dup, outl, driving_score, ok_ids, ref_ids)
    _write_atomic(out / "flags.parquet", lambda tmp: pq.write_table(table, tmp))
    n_all = rows.num_rows
    counts = {
        "images_in": int(res.images_in),
        "processed": int(n),
        "failed": int(n_all - n),
        "flags": {f: int(flags[f].sum()) for f in FLAGS},
        "duplicates": int((dup["dup_of"] >= 0).sum()),
        "duplicate_groups": len(dup["groups"]),
        "duplicates_reference": int(dup["ref_dup"].sum()),
        "outliers": int(outl["is_outlier"].sum()),
    }
    assert counts["images_in"] == counts["processed"] + counts["failed"] == n_all
    drift = _drift_summary(stats)
    evaluated = [_evaluate(r, counts, drift) for r in rules]
    verdict = "fail" if any(e["fails"] for e in evaluated) else "pass"
    scores = outl["scores"]
    outliers = [
        {
            "id": ok_ids[i],
            "uri": ok_uris[i],
            "score": float(scores[i]),
            "percentile": float(outl["percentile"][i]),
            "rank": int(outl["rank"][i]),
        }
        for i in np.argsort(-scores, kind="stable")[:k_images].tolist()
    ]
    drive_order = np.argsort(-driving_score, kind="stable")[:k_images]
    driving = [
        {"id": ok_ids[i], "uri": ok_uris[i], "score": float(driving_score[i])} for i in drive_order.tolist()
    ]

    def ref_match(i):
        j = int(dup["ref_index"][i])
        d, c = int(dup["ref_distance"][i]), dup["ref_cosine"][i]
        m = {"id": ok_ids[i], "uri": ok_uris[i], "reference_id": ref_ids[j], "reference_uri": ref_uris[j]}
        m["distance"] = d if d <= 64 else None
        if dup["embeddings"]:
            m["cosine"] = float(c)
        return m

    duplicates = {
        "within": [[{"id": ok_ids[i], "uri": ok_uris[i]} for i in g] for g in dup["groups"][:50]],
        "reference": [ref_match(i) for i in np.nonzero(dup["ref_dup"])[0].tolist()[:50]],
    }
    flagged = {
        f: [{"id": ok_ids[i], "uri": ok_uris[i]} for i in np.nonzero(flags[f])[0].tolist()[:k_images]]
        for f in FLAGS
    }
    settings = {
        "reference": str(ref.path),
        "reference_sha256": ref.digest,
        "reference_images": int(ref.meta["images"]),
        "extractor": ref.meta["extractor"],
        "weights": ref.meta["weights_id"],
        "layers": layers,
        "bins": int(ref.meta["bins"]),
        "percentile": percentile,
        "resamples": resamples,
        "dup_distance": dup_distance,
        "dup_cosine": dup_cosine if dup["embeddings"] else None,
        "outlier_percentile": outlier_pct,
        "outlier_threshold": outl["threshold"],
        "seed": seed,
        "night_sha256": night_sha,
        "flagged_examples": flagged,
    }
    return CheckResult(
        verdict=verdict,
        exit_code=0 if verdict == "pass" else 1,
        counts=counts,
        rules=evaluated,
        drift=drift,
        top_neurons=top_list,
        thresholds=th,
        outliers=outliers,
        driving=driving,
        duplicates=duplicates,
        settings=settings,
        out_dir=str(out),
    )


# ------------------------------------------------------------------------------------ update reference


def update_reference(reference, night_dir) -> Reference:
    """Fold a checked night (its directory) into the reference: VDNAs merged, pool and images extended,
    recorded in reference.json's ``nights``; the same night twice is refused."""
    from ..stats.vdna import load_vdna_from_files

    ref = Reference.open(reference)
    night = Path(night_dir)
    summary_path = night / "summary.json"
    if not summary_path.is_file():
        raise CheckError(f"{night} holds no finished check (no summary.json): run the check first")
    summary = json.loads(summary_path.read_text())
    if summary.get("settings", {}).get("reference_sha256") not in (
        ref.digest,
        *[n.get("reference_sha256") for n in ref.meta["nights"]],
    ):
        logger.warning("%s was checked against another state of this reference", night)
    sha = summary["settings"]["night_sha256"]
    if any(x["night_sha256"] == sha for x in ref.meta["nights"]):
        raise CheckError(
            f"this night ({night}) is already merged into {ref.path}: refusing to count it twice"
        )
    manifest = json.loads((night / "manifest.json").read_text())
    night_settings = dict(manifest["settings"], layers=list(manifest["settings"]["layers"] or []))
    for key in ("extractor", "layers", "dtype"):
        if night_settings[key] != ref.meta[key]:
            raise CheckError(
                f"the night's {key} {night_settings[key]!r} differs from the reference's {ref.meta[key]!r}"
            )
    if manifest["settings"]["weights"] != ref.meta["weights_id"]:
        raise CheckError("the night was made with other weights than the reference")
    hist = ref.vdna(ref.hist_name).merge(load_vdna_from_files(night / ref.hist_name))
    gauss = ref.vdna("layer-gaussian").merge(load_vdna_from_files(night / "layer-gaussian"))
    pool = merge_pools(
        pool_view(ref.pool()), pool_view(load_pool(night / "neurons.npz")), int(ref.meta["pool_size"])
    )
    import pyarrow as pa

    images = pa.concat_tables([ref.images(), _ok_images(night / "rows", f"night:{sha[:12]}")])
    old_state = ref.meta["state"]
    index = int(old_state.split("-")[1]) + 1
    state, files = _write_state(ref.path, index, hist, gauss, pool, images)
    meta = dict(ref.meta)
    meta.update(state=state, files=files, images=int(images.num_rows))
    meta["nights"] = [
        *ref.meta["nights"],
        {
            "night": str(night),
            "night_sha256": sha,
            "images": int(summary["counts"]["processed"]),
            "verdict": summary["verdict"],
            "reference_sha256": ref.digest,
            "merged": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    ]
    _write_json(ref.path / "reference.json", meta)
    shutil.rmtree(ref.path / old_state, ignore_errors=True)
    return Reference.open(ref.path)
