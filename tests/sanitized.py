"""Build one of the package's C extensions with AddressSanitizer and run a script against it in a child
process: any out-of-bounds read or write aborts the child and fails the test."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[1] / "kernels"


def run_sanitized(module: str, script: str, tmp_path: Path, extra_flags: tuple[str, ...] = ()) -> str:
    """Build ``kernels/{module}.c`` as ``{module}`` in ``tmp_path`` with -fsanitize=address, run ``script``
    (``sys.argv[1]`` is the folder to import it from) under libasan; return its stdout. Skips where there
    is no gcc or no libasan."""
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("no gcc to build the sanitised extension")
    libasan = subprocess.run(
        [cc, "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if not libasan or not Path(libasan).exists():
        pytest.skip("gcc has no libasan")
    so = tmp_path / f"{module}{sysconfig.get_config_var('EXT_SUFFIX')}"
    build = subprocess.run(
        [cc, "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", *extra_flags, "-fPIC", "-shared",
         f"-I{sysconfig.get_paths()['include']}", str(KERNELS / f"{module}.c"), "-o", str(so)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    env = {"ASAN_OPTIONS": "detect_leaks=0", "LD_PRELOAD": libasan, "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout
