"""A job takes its outputs as parts: a new per-image column (with a dataset state) is one class and its
registration, defined here, and flows through the local runner, Ray actors and a resume unchanged."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY

from neuroprint.jobs import PARTS, Job, JobError, Part, register_part, run_job

KW = dict(weights="random", batch_size=2, num_workers=1, progress=False, device="cpu", shard_size=3)


@register_part
class Brightness(Part):
    """Dummy part: each image's mean brightness (in the decode threads) and, with ``extra``, its value
    plus a constant; the dataset's total of them (an exact state merged over shards) in brightness.json."""

    name = "brightness"

    def __init__(self, extra: float = 0.0):
        self.extra = float(extra)

    def settings(self) -> dict:
        return {"brightness": {"extra": self.extra}}

    def per_image(self, img) -> dict:
        return {"mean": float(np.asarray(img, dtype=np.float64).mean())}

    def fields(self) -> list:
        return [("brightness", pa.float64())]

    def start_shard(self) -> None:
        self._sum, self._n = 0.0, 0

    def columns(self, batch, feats) -> dict:
        values = [v["mean"] + self.extra for v in batch.per_image[self.name]]
        self._sum += float(np.sum(values))
        self._n += len(values)
        return {"brightness": values}

    def shard_state(self) -> dict:
        return {"brightness:sum": np.array(self._sum), "brightness:n": np.array(self._n, dtype=np.int64)}

    def merge_state(self, arrays: dict) -> None:
        self._total = getattr(self, "_total", 0.0) + float(arrays["brightness:sum"])
        self._count = getattr(self, "_count", 0) + int(arrays["brightness:n"])

    def finish(self, job) -> dict:
        (job.out / "brightness.json").write_text(json.dumps({"sum": self._total, "images": self._count}))
        return {}


def _expected(src) -> dict:
    """Each readable file's mean, decoded here by the reference decoder (one file at a time)."""
    from neuroprint.io.decode import DecodeError, decode_image

    out = {}
    for p in sorted(src.rglob("*")):
        if p.is_file():
            try:
                out[p.name] = float(decode_image(p).astype(np.float64).mean())
            except DecodeError:
                pass
    return out


def _rows(d):
    return pq.read_table(d / "rows").sort_by("id")


def test_the_new_column_is_computed_and_failure_rows_hold_none(image_sets, tmp_path):
    src = image_sets["mixed"]
    res = run_job(src, tmp_path / "j", (), extractor=TINY, parts=[Brightness()], **KW)
    rows = _rows(tmp_path / "j").to_pylist()
    assert len(rows) == res.images_in and res.failed > 0
    expected = _expected(src)
    ok = [r for r in rows if r["status"] == "ok"]
    for r in ok:
        name = r["uri"].rsplit("/", 1)[-1]
        # the same uint8 pixels: their float64 mean differs at most by summation order
        assert r["brightness"] == pytest.approx(expected[name], rel=1e-12)
    assert all(r["brightness"] is None for r in rows if r["status"] == "failed")
    total = json.loads((tmp_path / "j" / "brightness.json").read_text())
    assert total["images"] == len(ok)
    assert total["sum"] == pytest.approx(sum(r["brightness"] for r in ok), rel=1e-12)
    assert json.loads((tmp_path / "j" / "manifest.json").read_text())["settings"]["brightness"] == {
        "extra": 0.0
    }


def test_by_its_registered_name_without_a_backbone(image_sets, tmp_path):
    assert PARTS["brightness"] is Brightness
    res = run_job(image_sets["good"], tmp_path / "j", (), extractor=None, parts=["brightness"], **KW)
    assert res.processed == 6
    assert _rows(tmp_path / "j").column_names[-1] == "brightness"


def test_resume_after_a_partial_run_equals_a_clean_run_and_other_settings_are_refused(image_sets, tmp_path):
    src = image_sets["mixed"]
    kw = dict(extractor=TINY, embeddings=True, **KW)
    clean = run_job(src, tmp_path / "clean", (), parts=[Brightness(1.5)], **kw)
    part = run_job(src, tmp_path / "resumed", (), parts=[Brightness(1.5)], max_shards=1, **kw)
    assert not part.complete and part.shards_run == 1
    done = run_job(src, tmp_path / "resumed", (), parts=[Brightness(1.5)], **kw)
    assert done.complete and done.shards_run == clean.shards_total - 1
    assert _rows(tmp_path / "clean").equals(_rows(tmp_path / "resumed"))
    with pytest.raises(JobError, match="differs in: brightness"):
        run_job(src, tmp_path / "resumed", (), parts=[Brightness(2.0)], **kw)


def test_on_ray_actors_equals_local(image_sets, tmp_path):
    ray = pytest.importorskip("ray")
    cloudpickle = ray.cloudpickle  # Ray pickles the actors' arguments with its own copy of cloudpickle

    # the part's class lives in this test module, which Ray's workers cannot import: ship it by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        src = image_sets["mixed"]
        run_job(
            src,
            tmp_path / "local",
            ("histogram-16",),
            ranges="auto",
            extractor=TINY,
            parts=[Brightness()],
            **KW,
        )
        run_job(
            src,
            tmp_path / "ray",
            ("histogram-16",),
            ranges="auto",
            extractor=TINY,
            parts=[Brightness()],
            ray=True,
            num_actors=2,
            **KW,
        )
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    local, remote = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert local.column("brightness").equals(remote.column("brightness"))
    assert local.select(["id", "status", "error"]).equals(remote.select(["id", "status", "error"]))
    a = json.loads((tmp_path / "local" / "brightness.json").read_text())
    b = json.loads((tmp_path / "ray" / "brightness.json").read_text())
    assert a["images"] == b["images"] and a["sum"] == pytest.approx(b["sum"], rel=1e-12)


class BrokenBind(Brightness):
    name = "broken_bind"

    def settings(self):
        return {"broken_bind": {}}

    def bind(self, worker):
        raise RuntimeError("this part cannot be built here")


def test_a_worker_that_cannot_be_built_on_ray_fails_at_once_with_its_reason(image_sets, tmp_path):
    ray = pytest.importorskip("ray")
    from neuroprint._errors import RayJobError

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        with pytest.raises(RayJobError, match="could not start the job: .*this part cannot be built here"):
            run_job(
                image_sets["good"], tmp_path / "j", (), extractor=None, parts=[BrokenBind()], ray=True, **KW
            )
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_a_part_that_reads_features_needs_a_backbone_and_columns_cannot_clash(image_sets, tmp_path):
    class Feat(Brightness):
        name = "feat"
        needs = frozenset({"features"})

        def settings(self):
            return {"feat": {}}

    with pytest.raises(ValueError, match="feat read the backbone's features"):
        Job(image_sets["good"], tmp_path / "a", [Feat()], batch_size=2, progress=False, device="cpu").run()

    class Clash(Brightness):
        name = "clash"

        def settings(self):
            return {"clash": {}}

    with pytest.raises(ValueError, match="same column twice"):
        run_job(image_sets["good"], tmp_path / "b", (), extractor=None, parts=[Brightness(), Clash()], **KW)


def test_register_part_checks_its_class():
    class NoName(Part):
        pass

    with pytest.raises(ValueError, match="no name"):
        register_part(NoName)

    class BadNeeds(Part):
        name = "bad_needs"
        needs = frozenset({"pixels_of_the_moon"})

    with pytest.raises(ValueError, match="unknown needs"):
        register_part(BadNeeds)


def test_a_worker_streaming_its_shards_equals_it_shard_by_shard(image_sets):
    """The local runner streams its shards through one loader (the next shard decodes while one is
    committed): each shard's rows, state and failure count equal the shard computed alone, bad files
    included, whatever the shard boundaries do to the batches."""
    import torch

    from neuroprint.io.sources import open_source
    from neuroprint.jobs.worker import ShardSpec, ShardWorker

    src = open_source(image_sets["mixed"])
    items = src.item_list()
    cuts = [0, 3, 4, 9, len(items)]
    shards = [(k, items[a:b]) for k, (a, b) in enumerate(zip(cuts, cuts[1:]))]
    part = Brightness(extra=0.5)
    spec = ShardSpec(source=src.for_workers(), extractor=None, weights=None, layers=[], device="cpu",
                     dtype=torch.float32, compile=False, seed=0, recipe=None, parts=[part], batch_size=2,
                     num_workers=2)  # fmt: skip
    worker = ShardWorker(spec)
    alone = [worker.run(k, shard) for k, shard in shards]
    streamed = list(worker.run_stream(shards))
    assert [k for k, *_ in streamed] == [k for k, _ in shards]
    assert sum(f for *_, f in streamed) > 0  # the set's bad files are failure rows in their shards
    for (_, table, state, failed), (table1, state1, failed1) in zip(streamed, alone):
        assert table.equals(table1) and failed == failed1
        assert state.keys() == state1.keys() and all(np.array_equal(state[k], state1[k]) for k in state)
