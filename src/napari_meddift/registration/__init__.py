"""Dense, smooth displacement fields from descriptors (ConvexAdam on MedDIFT features).

Core only: imports io/backbone/matching-level modules, never the CLI, Qt or the harnesses.
See docs/registration.md. Names are imported on first use (PyTorch only then): the command line
reads ``RegistrationSettings``' defaults for its ``--help`` without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .settings import RegistrationSettings

if TYPE_CHECKING:
    from .api import RegistrationResult, check_stores, register, register_stores
    from .field import DisplacementField, Geometry, JacobianStats

#: name -> the module that defines it
_LAZY = {
    "RegistrationResult": ".api", "check_stores": ".api", "register": ".api", "register_stores": ".api",
    "DisplacementField": ".field", "Geometry": ".field", "JacobianStats": ".field",
}


def __getattr__(name: str):
    """Import what ``name`` lives in on first use (PEP 562), so importing the package stays light."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "DisplacementField",
    "Geometry",
    "JacobianStats",
    "RegistrationResult",
    "RegistrationSettings",
    "check_stores",
    "register",
    "register_stores",
]
