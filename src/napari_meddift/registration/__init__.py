"""Dense, smooth displacement fields from descriptors (ConvexAdam on MedDIFT features).

Core only: imports io/backbone/matching-level modules, never the CLI, Qt or the harnesses.
See docs/registration.md.
"""

from .api import RegistrationResult, RegistrationSettings, check_stores, register, register_stores
from .field import DisplacementField, Geometry, JacobianStats

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
