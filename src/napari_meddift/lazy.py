"""Lazy package attributes (PEP 562): a package names what lives where, and each name is imported on first use.

``napari_meddift.backbones``, ``matching`` and ``registration`` use it so that importing them (as the
command line does to build ``--help``) loads neither PyTorch nor numba.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_attributes(package: str, where: Mapping[str, str], namespace: dict) -> tuple[Callable[[str], Any],
                                                                                   Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``where`` maps a name to the (relative) module that
    defines it; a looked-up value is cached in the package's ``namespace`` (its ``globals()``)."""

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(where[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
