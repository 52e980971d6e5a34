"""Lazy package exports: ``cnnlab.training.fine_tune`` imports ``training.fine_tuning`` on use.

A subpackage's ``__init__`` lists which module holds each public name; the module is imported
the first time the name is read (PEP 562 module ``__getattr__``, the pattern of SciPy's and
scikit-image's ``lazy_loader``). ``cnnlab --help`` and the registries stay free of TensorFlow,
and a notebook can still write ``from cnnlab import training`` then ``training.fine_tune``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for a package exporting ``exports``.

    Args:
        package: The package's ``__name__``.
        exports: ``{public name: submodule}``, e.g. ``{"fine_tune": "fine_tuning"}``.

    Returns:
        ``(__getattr__, __dir__, __all__)`` to assign in the package's ``__init__``.
    """
    names = sorted(exports)

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
