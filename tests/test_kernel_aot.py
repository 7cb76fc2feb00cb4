"""GPU readiness without a GPU: every kernel compiled ahead of time for sm_90 and sm_80, with the plans its
launcher really uses, without spills; 64-bit offsets and CUDA's grid limits at sizes above 2**31; the
launchers that split or copy (histogram rows, strided top-k inputs) give the reference's answer.

The compiles run in a subprocess with TRITON_INTERPRET=0 (this suite interprets the kernels on the CPU,
and an interpreted kernel cannot be compiled); they need Triton's bundled ptxas, not a GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from neuroprint.kernels import aot, cosine_topk, emd, grad_projection, histogram, image_emd
from neuroprint.kernels._launch import GRID_LIMITS, INT32_MAX, Launch, LaunchError

pytestmark = pytest.mark.skipif(aot.ptxas_path() is None, reason="this Triton install ships no ptxas")

# Spill stores allowed per kernel (bytes per thread) at the production shapes: none.
SPILL_BUDGET = {
    "_neuron_histogram_kernel": 0,
    "_batched_emd_kernel": 0,
    "_cosine_topk_kernel": 0,
    "_grad_projection_kernel": 0,
    "_per_image_emd_kernel": 0,
}
# Static shared memory per program Triton may ask for (the smallest of sm_80's and sm_90's 227 KB).
SHARED_BUDGET = 160 * 1024


def _compiled_env() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="0")
    env.pop("TORCHDYNAMO_DISABLE", None)
    return env


@pytest.fixture(scope="module")
def aot_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    res = subprocess.run(
        [sys.executable, "-m", "neuroprint.kernels.aot", "--arch", "90", "80", "--json", str(out)],
        env=_compiled_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    print(res.stdout)  # the registers / spills table (pytest -s shows it)
    return json.loads(out.read_text())


def test_every_kernel_compiles_for_sm90_and_sm80_without_spills(aot_rows):
    kernels = {r["kernel"] for r in aot_rows}
    assert kernels == set(SPILL_BUDGET), kernels
    assert {r["arch"] for r in aot_rows} == {90, 80}
    # Every dtype and block choice the launchers take is among the plans.
    labels = " ".join(r["label"] for r in aot_rows)
    for dt in ("float32", "bfloat16", "float16"):
        assert dt in labels
    for r in aot_rows:
        assert r["registers"] > 0, r
        assert r["spill_stores"] <= SPILL_BUDGET[r["kernel"]], r
        assert r["spill_loads"] <= SPILL_BUDGET[r["kernel"]], r
        assert r["shared"] <= SHARED_BUDGET, r


def test_offsets_are_64_bit_where_buffers_exceed_2_31(aot_rows):
    big = [r for r in aot_rows if r["largest_buffer"] > INT32_MAX]
    # The plans reach past 2**31 elements for each kernel that indexes large inputs.
    assert {r["kernel"] for r in big} >= {
        "_neuron_histogram_kernel",
        "_batched_emd_kernel",
        "_cosine_topk_kernel",
        "_grad_projection_kernel",
    }
    for r in aot_rows:
        assert r["narrow_offsets"] == [], (r["kernel"], r["label"], r["narrow_offsets"])
        assert r["max_index"] <= INT32_MAX, r


def test_the_offset_check_finds_a_32_bit_index_times_a_stride(tmp_path):
    """A negative control: the checker must flag the classic overflow (i32 row index times a runtime
    stride) and accept the same kernel with the index widened first."""
    script = tmp_path / "narrow.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys, torch, triton, triton.language as tl
            from neuroprint.kernels import aot
            from neuroprint.kernels._launch import Launch

            @triton.jit
            def narrow(x_ptr, out_ptr, n, stride, BLOCK: tl.constexpr):
                rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
                tl.store(out_ptr + rows, tl.load(x_ptr + rows * stride, mask=rows < n), mask=rows < n)

            @triton.jit
            def wide(x_ptr, out_ptr, n, stride, BLOCK: tl.constexpr):
                rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
                x = tl.load(x_ptr + rows.to(tl.int64) * stride, mask=rows < n)
                tl.store(out_ptr + rows, x, mask=rows < n)

            out = {}
            for fn in (narrow, wide):
                n, stride = 1 << 20, 4096
                plan = Launch(fn, grid=(n // 256,), pointers={"x_ptr": torch.float32, "out_ptr": torch.float32},
                              extents={"x_ptr": n * stride, "out_ptr": n}, scalars={"n": n, "stride": stride},
                              constexprs={"BLOCK": 256})
                r = aot.compile_launch(plan, 90)
                out[fn.__name__] = aot.narrow_offsets(r.ttir, plan.extents)
            json.dump(out, open(sys.argv[1], "w"))
            """
        )
    )
    res = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "out.json")],
        env=_compiled_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    found = json.loads((tmp_path / "out.json").read_text())
    assert len(found["narrow"]) == 1 and "x_ptr" in found["narrow"][0], found
    assert found["wide"] == []


# ------------------------------------------------------------------------- launch plans, no allocation


def test_launch_plans_at_sizes_above_2_31_need_no_memory_and_fit_cudas_grid():
    vgg = (256, 224 * 224, 64)  # relu_1_1 of VGG at batch 256: 822M values per layer (x 13 layers)
    plans = [
        histogram.plan_neuron_histogram(vgg, (64 * 224 * 224, 1, 224 * 224), torch.float32, 1000),
        histogram.plan_neuron_histogram((1024, 50176, 64), (64 * 50176, 1, 50176), torch.bfloat16, 1000),
        emd.plan_batched_emd(65536, 9984, 1000, torch.int32, 256, 256),
        cosine_topk.plan_cosine_topk(1 << 20, 1 << 20, 768, 10, torch.float32),
        cosine_topk.plan_cosine_topk(1 << 20, 1 << 21, 2048, 256, torch.bfloat16),
        grad_projection.plan_grad_projection(4096, 3152, 768, 768, 1024, torch.bfloat16, torch.int8),
        image_emd.plan_per_image_emd(vgg, (64 * 224 * 224, 1, 224 * 224), torch.float16, 1000),
    ]
    for p in plans:
        p.check_grid()
        assert all(g <= lim for g, lim in zip(p.grid, GRID_LIMITS))
        assert p.max_index() <= INT32_MAX
        sig = p.signature()
        for name, value in p.scalars.items():
            if value != 1:
                assert sig[name] == ("i32" if abs(value) <= INT32_MAX else "i64"), (name, value)
    assert plans[0].extents["x_ptr"] == 256 * 64 * 224 * 224
    assert plans[1].extents["x_ptr"] > 2**31 and plans[2].extents["a_ptr"] > 2**31
    assert plans[4].extents["d_ptr"] == (1 << 21) * 2048


def test_a_grid_beyond_cuda_limits_is_refused_before_launch():
    plan = Launch(
        emd._batched_emd_kernel,
        grid=(4, 70000),
        pointers={},
        extents={},
        scalars={},
        constexprs={},
    )
    with pytest.raises(LaunchError, match="grid axis 1"):
        plan.check_grid()
    with pytest.raises(LaunchError, match="rows in one histogram launch"):
        histogram.plan_neuron_histogram((2**16, 2**16, 8), (2**19, 8, 1), torch.float32, 10)


def test_histogram_launcher_splits_batches_above_its_row_limit(monkeypatch):
    """triton_neuron_histogram launches at most _MAX_ROWS rows at a time (2**31 - 1 in production); with
    a tiny limit the split batches add up to the reference's counts."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, 6, generator=g)
    mean, std = histogram.norm_params(x.amin((0, 1)) - 0.1, x.amax((0, 1)) + 0.1)
    monkeypatch.setattr(histogram, "_MAX_ROWS", 15)  # 2 images (14 rows) per launch
    got = histogram.triton_neuron_histogram(x, mean, std, 9)
    assert torch.equal(got, histogram.reference_neuron_histogram(x, mean, std, 9))


def test_cosine_topk_copies_strided_inner_dimensions_and_agrees():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(24, 40, generator=g)
    q = base.T[:, :18]  # [40, 18] with strides (1, 40): a column-major view
    db = torch.randn(18, 33, generator=g).T  # [33, 18] column-major
    got = cosine_topk.keys_to_topk(cosine_topk.triton_cosine_topk(q, db, 5))
    ref = cosine_topk.keys_to_topk(cosine_topk.reference_cosine_topk(q.contiguous(), db.contiguous(), 5))
    assert torch.equal(got[1], ref[1])
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-6)
