"""Attributes of a package imported on first use (PEP 562), so that importing the package (and building
the command line's parser) does not import torch."""

from __future__ import annotations

import importlib


def lazy_attributes(package: str, names: dict, submodules=()):
    """(``__getattr__``, ``__dir__``) for ``package``: ``names`` maps each public name to the submodule
    (relative to ``package``) that defines it; ``submodules`` are importable as attributes too."""
    module = importlib.import_module(package)

    def __getattr__(name: str):
        if name in names:
            value = getattr(importlib.import_module(f"{package}.{names[name]}"), name)
            setattr(module, name, value)  # later lookups find it without this hook
            return value
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(names) | set(submodules))

    return __getattr__, __dir__
