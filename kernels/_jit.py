"""Triton, loaded on first use.

Each kernel module keeps its ``@triton.jit`` code in a sibling ``_<module>_jit.py`` that imports Triton;
the module itself (its torch reference, launch plans, launcher and custom op) does not, and exposes
``triton`` (the module, or None when Triton is not installed) and its kernels as attributes loaded when
first read. Importing Triton costs about 76 MiB of resident memory (Triton 3.8) and some import time.
torch imports it too, when a custom op is first called (through torch._dynamo) or torchvision is
imported, so this spares the processes that do neither: model-free hash jobs and Ray drivers,
which never run a kernel.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util

__all__ = ["cdiv", "lazy_jit", "next_power_of_2", "triton_available", "triton_module"]


@functools.cache
def triton_available() -> bool:
    """Whether Triton is installed (found on the path; not imported)."""
    return importlib.util.find_spec("triton") is not None


def triton_module():
    """The triton module (imported now), or None when it is not installed or does not import."""
    if not triton_available():
        return None
    try:
        import triton
    except ImportError:  # pragma: no cover - a broken install
        return None
    return triton


def cdiv(a: int, b: int) -> int:
    """``triton.cdiv``: ceil(a / b) for integers."""
    return (a + b - 1) // b


def next_power_of_2(n: int) -> int:
    """``triton.next_power_of_2``: the smallest power of 2 >= n (0 for 0)."""
    n = int(n)
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def lazy_jit(module_name: str, jit_name: str):
    """(loader, module ``__getattr__``) of a kernel module whose ``@triton.jit`` code is ``jit_name``: the
    loader imports that sibling on first call; ``__getattr__`` answers ``triton`` (the module or None) and
    the sibling's names. Usage: ``_jit, __getattr__ = lazy_jit(__name__, "_histogram_jit")``."""
    package = module_name.rpartition(".")[0]

    def load():
        return importlib.import_module(f"{package}.{jit_name}")

    def module_getattr(attr: str):
        if attr == "triton":
            return triton_module()
        if not attr.startswith("__") and triton_module() is not None:
            jit = load()
            if hasattr(jit, attr):
                return getattr(jit, attr)
        raise AttributeError(f"module {module_name!r} has no attribute {attr!r}")

    return load, module_getattr
