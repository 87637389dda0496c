"""Dense, smooth displacement fields from descriptors (ConvexAdam on MedDIFT features).

Core only: imports io/backbone/matching-level modules, never the CLI, Qt or the harnesses.
See docs/registration.md. Names are imported on first use (PyTorch only then): the command line
reads ``RegistrationSettings``' defaults for its ``--help`` without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes

from .settings import RegistrationSettings

if TYPE_CHECKING:
    from .api import RegistrationResult, check_stores, register, register_stores
    from .field import DisplacementField, Geometry, JacobianStats

#: name -> the module that defines it
_LAZY = {
    "RegistrationResult": ".api", "check_stores": ".api", "register": ".api", "register_stores": ".api",
    "DisplacementField": ".field", "Geometry": ".field", "JacobianStats": ".field",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

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
