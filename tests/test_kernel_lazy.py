"""Triton loads on first use: a CPU job never imports it, and the host-side helpers equal Triton's."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from neuroprint.kernels import _jit


def test_host_helpers_equal_tritons():
    triton = pytest.importorskip("triton")
    for n in [*range(0, 2100), 2**31 - 1, 2**31, 2**31 + 1, 2**40 + 3]:
        assert _jit.next_power_of_2(n) == triton.next_power_of_2(n), n
    for a in range(0, 300):
        for b in (1, 2, 3, 7, 16, 128):
            assert _jit.cdiv(a, b) == triton.cdiv(a, b)


def test_kernel_modules_expose_triton_and_their_kernels_on_first_read():
    pytest.importorskip("triton")
    from neuroprint.kernels import cosine_topk, emd, grad_projection, histogram, image_emd

    assert histogram.triton is not None
    for mod, name in ((histogram, "_neuron_histogram_kernel"), (histogram, "bin_tile"),
                      (emd, "_batched_emd_kernel"), (image_emd, "_per_image_emd_kernel"),
                      (cosine_topk, "_cosine_topk_kernel"), (grad_projection, "_grad_projection_kernel")):  # fmt: skip
        assert type(getattr(mod, name)).__name__ in ("JITFunction", "InterpretedFunction"), name
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        histogram.nothing_here  # noqa: B018


def test_a_model_free_job_and_the_kernel_modules_never_import_triton(image_sets, tmp_path):
    """A fresh process importing every kernel module and running a model-free job ends without Triton in
    sys.modules: the 76 MiB it costs stay out of model-free workers and of Ray drivers, which never call a
    kernel. (Calling a torch custom op imports torch._dynamo, which imports Triton: a process that bins
    activations, or builds a timm model through torchvision, loads it anyway.)"""
    src = image_sets["good"]
    code = f"""
import sys
import neuroprint.kernels.cosine_topk, neuroprint.kernels.emd, neuroprint.kernels.grad_projection
import neuroprint.kernels.histogram, neuroprint.kernels.image_emd
from neuroprint.jobs import run_job
res = run_job({str(src)!r}, {str(tmp_path / "job")!r}, [], extractor=None, hashes=["dhash"], decoder="pil",
              device="cpu", progress=False, batch_size=2, num_workers=1)
assert res.processed > 0, res
print("TRITON", "triton" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TRITON False" in proc.stdout, proc.stdout
