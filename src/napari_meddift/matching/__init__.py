"""Exact correspondence search from native-resolution descriptor levels.

The method (``docs/method.md``) defines a voxel's descriptor at image resolution as the
trilinear upsampling (``align_corners=False``) of each native level, L2-normalised over
channels. Holding that for a 192x192x208 scan costs ~29 GB, so we never build it. Instead we
use that trilinear interpolation is linear:

* the dot product of a unit query ``q`` with the interpolated target feature ``f(v)`` is the
  trilinear interpolation of ``P[n] = q . F[n]`` taken on the native nodes;
* ``||f(v)||^2 = sum_{a,b} w_a w_b F[a].F[b]`` over the 8 corners, i.e. a separable weighting of
  banded Gram arrays ``K_d[n] = F[n].F[n+d]`` for ``d`` in ``{-1,0,1}^3``; it depends on the
  target only, so full-image maps are cached per level once they are worth having.

Both are evaluated with small separable matrix products, in float32, on only the native nodes
that support the window; the result equals the dense reference to float precision (see
``tests/test_matching.py`` against ``tests/dense_reference.py``).

Index conventions follow PyTorch: for output index ``o`` of an axis with ``n`` native nodes and
``N`` image voxels, ``src = max((o + 0.5) * n / N - 0.5, 0)``, ``i0 = floor(src)``,
``lam = src - i0``; the native grid is edge-padded by one node at the high end of every axis so
the second tap ``i0 + 1`` always exists (it equals PyTorch's clamped ``min(i0 + 1, n - 1)``).

Names are imported on first use (PEP 562): ``matching.window`` (what the command line's
``--radius`` parses with) does not import PyTorch or numba.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_attributes
from .window import DEFAULT_RADIUS_MM, Radius, parse_radius, voxel_radius

if TYPE_CHECKING:
    from .grid import EPS, axis_taps
    from .matcher import Matcher
    from .results import Match, MatchTable, SimilarityResult

#: name -> the module that defines it
_LAZY = {"EPS": ".grid", "axis_taps": ".grid", "Matcher": ".matcher", "Match": ".results",
         "MatchTable": ".results", "SimilarityResult": ".results"}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = ["DEFAULT_RADIUS_MM", "EPS", "Matcher", "Match", "MatchTable", "Radius", "SimilarityResult", "axis_taps",
           "parse_radius", "voxel_radius"]
