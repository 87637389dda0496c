"""Search windows: a half-width in millimetres (or voxels) and the box of voxels it means on a grid.

A window given in millimetres means the same anatomy on every scan: on a grid of spacing
(sz, sy, sx) mm a radius of r mm searches ``ceil(r / s)`` voxels along each axis (the smallest box
that holds every displacement of at most r mm along each axis), so on a 0.56 x 0.56 x 3 mm
scan 40 mm is (14, 72, 72) voxels, and on the demo's 2.5 mm grid (16, 16, 16).

:data:`DEFAULT_RADIUS_MM` is the default of every windowed search (``meddift match``,
``evaluate-l2r``, the explorer); docs/cli.md says why 40 mm.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import Sequence, Union

from ..errors import MedDiftError

__all__ = ["DEFAULT_RADIUS_MM", "Radius", "parse_radius", "radius_tag", "voxel_radius", "window_mm"]

#: default window half-width: the largest landmark displacement of the Learn2Reg LungCT training
#: pairs (33.0 mm, case 1; 27.5 mm along one axis at most) with room to spare, and 2.4 times the
#: demo's largest displacement (16.8 mm); 16 voxels on the demo's 2.5 mm grid, as before
DEFAULT_RADIUS_MM = 40.0

_TEXT = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(mm|vox|voxels?)?\s*$")


@dataclass(frozen=True)
class Radius:
    """A window half-width: ``value`` in ``unit`` (``"mm"`` or ``"vox"``, voxels of each grid)."""

    value: float
    unit: str = "mm"

    def __post_init__(self):
        if self.unit not in ("mm", "vox"):
            raise MedDiftError(f"a search radius is in mm or vox, not {self.unit!r}")
        if not math.isfinite(float(self.value)) or float(self.value) < 0:
            raise MedDiftError(f"search radius must be a finite number >= 0, got {self.value}")

    @classmethod
    def mm(cls, value: float) -> "Radius":
        return cls(float(value), "mm")

    def voxels(self, spacing: Sequence[float] | None) -> tuple[int, int, int]:
        """The per-axis voxel radius (z, y, x) on a grid of ``spacing`` (z, y, x) mm:
        ``ceil(r / s)`` per axis for mm, the value itself on every axis for voxels."""
        if self.unit == "vox":
            r = int(round(self.value))
            return (r, r, r)
        if spacing is None:
            raise MedDiftError(f"a {self} window needs the voxel spacing of the grid it searches; "
                               "build the matcher from stores (Matcher.from_stores) or give its spacings")
        sp = [float(s) for s in spacing]
        if len(sp) != 3 or any(not math.isfinite(s) or s <= 0 for s in sp):
            raise MedDiftError(f"voxel spacing must be three positive numbers (z, y, x) mm, got {tuple(spacing)}")
        # 1e-9: 40 mm on 2.5 mm is 16 voxels, not 17 by rounding
        return tuple(int(math.ceil(float(self.value) / s - 1e-9)) for s in sp)  # type: ignore[return-value]

    def __str__(self) -> str:
        return f"{self.value:g} mm" if self.unit == "mm" else f"{self.value:g} vox"

    @property
    def tag(self) -> str:
        """Short form for names and JSON: ``40mm``, ``16`` (voxels), as ``--radius`` takes it."""
        return f"{self.value:g}mm" if self.unit == "mm" else f"{int(self.value)}"


RadiusLike = Union[None, int, Sequence[int], Radius]


def parse_radius(text, what: str = "--radius") -> Radius:
    """``"25mm"`` / ``"25 mm"`` -> 25 mm; ``"16"`` or ``"16vox"`` -> 16 voxels (on every axis of
    each image's own grid, as before millimetres were accepted); MedDiftError otherwise."""
    if isinstance(text, Radius):
        return text
    m = _TEXT.match(str(text))
    if m is None:
        raise MedDiftError(f"{what} takes millimetres like 40mm (or voxels like 16), got {str(text)!r}")
    value, unit = float(m.group(1)), m.group(2)
    if value < 0 or not math.isfinite(value):
        raise MedDiftError(f"{what} must be >= 0, got {str(text).strip()}; write millimetres like 40mm")
    if unit in (None, "vox", "voxel", "voxels"):
        if value != int(value):
            raise MedDiftError(f"{what} {text!r}: voxels are whole numbers; for millimetres write {value:g}mm")
        return Radius(value, "vox")
    return Radius(value, "mm")


def voxel_radius(radius: RadiusLike, spacing: Sequence[float] | None = None) -> tuple[int, int, int] | None:
    """The per-axis voxel radius (z, y, x) of any radius form on a grid of ``spacing``: None (no
    window, the whole image) stays None; an int is that many voxels on every axis; a triple is
    per axis; a :class:`Radius` in mm is converted with ``spacing``."""
    if radius is None:
        return None
    if isinstance(radius, Radius):
        return radius.voxels(spacing)
    if isinstance(radius, str):
        return parse_radius(radius).voxels(spacing)
    if isinstance(radius, numbers.Integral) and not isinstance(radius, bool):
        r = int(radius)
        out = (r, r, r)
    elif isinstance(radius, numbers.Real):
        raise MedDiftError(f"a search radius of {radius} is ambiguous: give whole voxels (int) or millimetres "
                           f"(Radius.mm({radius}) in Python, {radius:g}mm on the command line)")
    else:
        vals = list(radius)  # type: ignore[arg-type]
        if len(vals) != 3 or any(float(v) != int(v) for v in vals):
            raise MedDiftError(f"a per-axis search radius is three whole numbers (z, y, x) voxels, got {radius}")
        out = tuple(int(v) for v in vals)  # type: ignore[assignment]
    if min(out) < 0:
        raise MedDiftError(f"search radius must be >= 0 voxels, got {radius}")
    return out  # type: ignore[return-value]


def radius_tag(radius: RadiusLike) -> str | int | None:
    """How a radius is written in a name or a JSON summary: ``40mm``, 16, ``2,8,8``; None stays None."""
    if radius is None or isinstance(radius, int):
        return radius
    if isinstance(radius, Radius):
        return radius.tag
    if isinstance(radius, str):
        return parse_radius(radius).tag
    return ",".join(str(int(v)) for v in radius)  # type: ignore[union-attr]


def window_mm(radius_vox: Sequence[int], spacing: Sequence[float]) -> tuple[float, float, float]:
    """Half-widths (z, y, x) in mm that a per-axis voxel radius covers on a grid of ``spacing``."""
    return tuple(float(r) * float(s) for r, s in zip(radius_vox, spacing))  # type: ignore[return-value]
