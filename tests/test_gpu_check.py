"""bench/gpu_check.sh in its smoke mode (CPU, tiny shapes): the GPU hour's script keeps working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_runs_every_step(tmp_path):
    # GPU_CHECK_LINKS: import this checkout through the links, as on a GPU machine without an install.
    env = dict(os.environ, PYTHON=sys.executable, TRITON_INTERPRET="1", GPU_CHECK_LINKS="1")
    res = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    out = json.loads((tmp_path / "gpu_check.json").read_text())
    assert out["smoke"] is True
    for step in ("env", "tests", "kernels", "e2e", "fungi", "explain", "visualize"):
        assert "error" not in out[step], (step, out[step].get("error"))
    kernels = out["kernels"]["value"]
    assert {"batched emd int32", "per-image emd bf16", "grad projection bf16"} <= set(kernels)
    assert any(k.startswith("histogram") and k.endswith("fp32") for k in kernels)
    assert all(v["agree"] for v in kernels.values()), kernels  # Triton (interpreted) equals the references
    assert out["fungi"]["value"]["images_per_s"] > 0 and out["visualize"]["value"]["units_per_s"] > 0
    rows = (tmp_path / "RESULTS_rows.md").read_text()
    assert "| batched emd int32 |" in rows and "CPU (smoke)" in rows
    assert "site-packages" not in out["env"]["value"]["neuroprint"]
    assert out["env"]["value"]["neuroprint_source"] == str(ROOT / "engine")
