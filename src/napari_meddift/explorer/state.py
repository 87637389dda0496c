"""The explorer's evented state: what a user (or a script) sets, one field per control.

``ExplorerState`` is a psygnal evented dataclass (psygnal is napari's own event library): every
field has a signal ``state.events.<field>``. The Qt controls are magicgui widgets bound to these
fields both ways, so ``state.radius = 25.0`` (mm) in a script moves the radius box, and moving the box
sets ``state.radius``. The session (``session.py``) listens to the same signals and asks for a
new map when a setting that changes the map moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from psygnal import evented

from ..matching.window import DEFAULT_RADIUS_MM

__all__ = ["ExplorerState", "DISPLAY_MODES", "MAP_RANGES", "MAP_SETTINGS", "VIEW_SETTINGS"]

#: how a similarity map is painted: raw cosine in a fixed range, min-max within the window,
#: or each voxel's rank (percentile) within the window
DISPLAY_MODES = ("raw cosine", "min-max in window", "rank (percentile)")

#: fixed colour ranges offered for raw cosine maps (fixed, so maps stay comparable)
MAP_RANGES = {"[-1, 1]": (-1.0, 1.0), "[0, 1]": (0.0, 1.0), "[0.5, 1]": (0.5, 1.0), "[0.8, 1]": (0.8, 1.0),
              "[0.9, 1]": (0.9, 1.0), "[0.95, 1]": (0.95, 1.0), "[0.99, 1]": (0.99, 1.0)}

#: fields whose change needs a new search (a new similarity map)
MAP_SETTINGS = ("levels", "weights", "radius", "exclusion", "timestep", "compare_timesteps")
#: fields that only change how the current result is painted
VIEW_SETTINGS = ("display_mode", "color_range", "per_level", "show_truth", "following")


@evented
@dataclass
class ExplorerState:
    """What the user set in the explorer.

    ``levels``/``weights``: descriptor levels fused (cosine per level, weighted mean);
    ``radius``: search window half-width in mm (None: the whole target): ``ceil(radius / spacing)``
    voxels along each axis of the target (the source's for the back-match), so the window holds
    the same anatomy on an anisotropic scan;
    ``exclusion``: radius (voxels) around the best voxel outside which the best rival is sought
    for the rivalry; ``timestep``: which cached extraction is searched (None: the one connected);
    ``display_mode``: one of ``DISPLAY_MODES``; ``color_range``: a key of ``MAP_RANGES`` (raw mode);
    ``min_error_mm``: landmarks with a smaller error are hidden.
    """

    levels: tuple[str, ...] = ()
    weights: dict = field(default_factory=dict)
    radius: float | None = DEFAULT_RADIUS_MM
    following: bool = True
    per_level: bool = False
    exclusion: int = 3
    display_mode: str = DISPLAY_MODES[0]
    color_range: str = "[-1, 1]"
    timestep: int | None = None
    compare_timesteps: bool = False
    show_truth: bool = True
    show_landmarks: bool = True
    min_error_mm: float = 0.0
