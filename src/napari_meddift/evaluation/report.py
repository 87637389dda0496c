"""The feature-quality report: which levels, which fusion and which timestep work on this pair.

``feature_report(pairs, source_points, target_points)`` runs the matcher once per
configuration (each single level, the fused default, every pair of levels, any fusion the user
lists: :func:`configurations`, the one home of that list), at every cached timestep (``pairs``:
``{timestep: (source_store, target_store)}``), windowed and/or global, and summarises each run:

* with truth (``target_points``): TRE mean / median / p95 (mm) and the share within 2 mm
  (:mod:`~napari_meddift.evaluation.metrics`);
* always: forward-backward consistency (share of landmarks whose back-match lands within
  ``fb_threshold`` voxels, mean back-match distance) and the mean ambiguity (``Matcher``);
* per region of a mask on the source grid (inside/outside, or one region per label value).

Every row is one cell of a tidy table and holds what reproduces it: configuration, levels,
weights, timestep, noise/signal ratio, search radius, exclusion, backbone and weights hash.
Each cell equals an independent ``Matcher.from_stores(..., levels, weights).match_points(...)``
run followed by ``tre_mm``/``summarize`` (the tests recompute cells that way).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import MedDiftError
from ..matching import Matcher
from ..matching.results import MatchTable
from ..progress import ProgressCallback
from .metrics import summarize, tre_mm

__all__ = [
    "Configuration", "FeatureReport", "configurations", "parse_fusion", "noise_signal", "feature_report",
    "METRICS", "COLUMNS", "pairs_by_timestep", "extract_pairs", "check_points",
]

#: the metric columns of a row: (column, label, True when lower is better)
METRICS = {
    "tre_mean_mm": ("TRE mean (mm)", True),
    "tre_median_mm": ("TRE median (mm)", True),
    "tre_p95_mm": ("TRE p95 (mm)", True),
    "within_2mm_pct": ("% within 2 mm", False),
    "fb_consistent_pct": ("% forward-backward consistent", False),
    "fb_mean_vox": ("back-match distance (vox)", True),
    "ambiguity_mean": ("mean ambiguity", True),
}

#: the columns of the CSV, in order
COLUMNS = (
    "configuration", "kind", "levels", "weights", "timestep", "noise_signal", "search", "radius", "region", "n",
    *METRICS, "exclusion", "fb_threshold", "backbone", "weights_hash", "source_store", "target_store",
)

FUSED = "fused (default)"


# ----------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Configuration:
    """Levels fused with weights (missing weights count 1, as the Matcher takes them).

    ``kind``: ``level`` (one level), ``fused`` (every level, equal weights: the matcher's
    default), ``pair`` (two levels, equal weights) or ``user`` (a fusion the user listed).
    """

    name: str
    levels: tuple[str, ...]
    weights: tuple[tuple[str, float], ...] = ()
    kind: str = "user"

    @property
    def weight_map(self) -> dict[str, float]:
        w = dict(self.weights)
        return {n: float(w.get(n, 1.0)) for n in self.levels}

    @property
    def levels_text(self) -> str:
        return "+".join(self.levels)

    @property
    def weights_text(self) -> str:
        return ",".join(f"{n}:{w:g}" for n, w in self.weight_map.items())

    def _identity(self) -> tuple:
        w = self.weight_map
        total = sum(w.values())
        return tuple(sorted((n, round(v / total, 12)) for n, v in w.items() if v > 0))


def parse_fusion(text: str, level_names: Sequence[str]) -> Configuration:
    """``"up0+up2"`` or ``"up0:2+up2:1"`` (or level indices, ``"0+2"``) -> a user Configuration."""
    from ..backbones.levels import resolve_levels

    parts = [p.strip() for p in str(text).replace(" ", "").split("+") if p.strip()]
    if not parts:
        raise MedDiftError(f"fusion {text!r} names no level; write it as up0+up2 or up0:2+up2:1")
    levels, weights, label = [], [], []
    for p in parts:
        name, _, w = p.partition(":")
        resolved = resolve_levels(name, level_names)
        if not resolved or len(resolved) != 1:
            raise MedDiftError(f"fusion {text!r}: {name!r} is not one level; write it as up0+up2 or up0:2+up2:1")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise MedDiftError(f"fusion {text!r}: weight {w!r} is not a number; write it as up0:2+up2:1") from None
        if not math.isfinite(weight) or weight < 0:
            raise MedDiftError(f"fusion {text!r}: weights must be non-negative numbers, got {w}")
        levels.append(resolved[0])
        weights.append((resolved[0], weight))
        label.append(f"{resolved[0]}:{weight:g}" if w else resolved[0])
    if len(set(levels)) != len(levels):
        raise MedDiftError(f"fusion {text!r} names a level twice")
    if sum(w for _, w in weights) <= 0:
        raise MedDiftError(f"fusion {text!r}: the weights must have a positive sum")
    return Configuration("+".join(label), tuple(levels), tuple(weights), "user")


def configurations(level_names: Sequence[str], fusions: Sequence[str | Configuration] = ()) -> list[Configuration]:
    """The report's configurations over ``level_names`` (the levels both stores hold, or the
    user's choice), in this order: each single level, the fused default (all of them, equal
    weights), every pair (equal weights), then ``fusions`` (strings as :func:`parse_fusion`
    takes them). A configuration equal to an earlier one (same levels, same relative weights)
    is listed once, under its first name."""
    names = tuple(level_names)
    if not names:
        raise MedDiftError("no descriptor levels to report on")
    out = [Configuration(n, (n,), (), "level") for n in names]
    if len(names) > 1:
        out.append(Configuration(FUSED, names, (), "fused"))
    out += [Configuration(f"{a}+{b}", (a, b), (), "pair") for a, b in itertools.combinations(names, 2)]
    out += [f if isinstance(f, Configuration) else parse_fusion(f, names) for f in fusions]
    seen, unique = set(), []
    for c in out:
        key = c._identity()
        if key not in seen:
            seen.add(key)
            unique.append(c)
    return unique


# ----------------------------------------------------------------------------- noise level


def noise_signal(attrs: Mapping[str, Any]) -> float:
    """Noise/signal ratio of a store's extraction: its ``noise_signal`` attribute when it has one,
    else, for a DDPM backbone, ``sqrt(1 - alpha_bar(t)) / sqrt(alpha_bar(t))`` at its timestep.
    NaN where neither is known (no timestep, a rectified-flow MAISI store without the attribute)."""
    if attrs.get("noise_signal") is not None:
        return float(attrs["noise_signal"])
    t = attrs.get("timestep")
    variant = str(dict(attrs.get("backbone_config") or {}).get("variant", "")).lower()
    if t is None or str(attrs.get("backbone", "")).lower() == "mind" or variant == "rflow":
        return math.nan
    from ..backbones.noise import noise_level

    alpha_bar, std = noise_level(int(t))
    return float(std / math.sqrt(alpha_bar))


# ----------------------------------------------------------------------------- the report


def pairs_by_timestep(pairs: Sequence[tuple[Any, Any]]) -> dict[int | None, tuple[Any, Any]]:
    """``[(source_store, target_store), ...]`` -> ``{timestep: pair}`` from the stores' attributes;
    MedDiftError when a pair mixes timesteps or two pairs share one."""
    out: dict[int | None, tuple[Any, Any]] = {}
    for src, tgt in pairs:
        ts = [dict(getattr(s, "attrs", {}) or {}).get("timestep") for s in (src, tgt)]
        if ts[0] != ts[1]:
            raise MedDiftError(f"{getattr(src, 'path', 'source')} is at t={ts[0]} but {getattr(tgt, 'path', 'target')} "
                               f"at t={ts[1]}; pair stores of the same timestep")
        t = None if ts[0] is None else int(ts[0])
        if t in out:
            raise MedDiftError(f"two store pairs at t={t}; give one pair per timestep")
        out[t] = (src, tgt)
    return out


@dataclass
class FeatureReport:
    """The report: ``rows`` (tidy, one per configuration x timestep x search x region, columns
    :data:`COLUMNS`), ``matches`` ``{(configuration, timestep, radius): MatchTable}`` (the
    per-landmark predictions behind each cell) and what was run."""

    rows: list[dict]
    matches: dict[tuple[str, int | None, Any], MatchTable]
    configurations: list[Configuration]
    timesteps: list[int | None]
    radii: list[Any]
    regions: list[str]
    source_points: np.ndarray
    target_points: np.ndarray | None
    spacing_zyx: tuple[float, float, float]
    meta: dict = field(default_factory=dict)

    @property
    def has_truth(self) -> bool:
        return self.target_points is not None

    def configuration(self, name: str) -> Configuration:
        for c in self.configurations:
            if c.name == name:
                return c
        raise MedDiftError(
            f"no configuration {name!r} in the report; it has {', '.join(c.name for c in self.configurations)}"
        )

    def _radius(self, radius):
        return self.radii[0] if radius is ... else radius

    def cell(self, configuration: str, timestep, radius=..., region: str = "all") -> dict:
        """The row of one cell (``radius``: None is the global search; not given: the report's first)."""
        radius = self._radius(radius)
        for r in self.rows:
            if (r["configuration"] == configuration and r["timestep"] == timestep
                    and r["radius"] == _radius_cell(radius) and r["region"] == region):
                return r
        raise MedDiftError(
            f"no cell {configuration!r} at t={timestep}, radius {radius}, region {region!r} in the report"
        )

    def grid(self, metric: str, radius=..., region: str = "all") -> np.ndarray:
        """(configurations, timesteps) array of ``metric`` (NaN where undefined)."""
        out = np.full((len(self.configurations), len(self.timesteps)), np.nan)
        for i, c in enumerate(self.configurations):
            for j, t in enumerate(self.timesteps):
                v = self.cell(c.name, t, radius, region).get(metric)
                out[i, j] = np.nan if v is None or v == "" else float(v)
        return out

    def errors_mm(self, configuration: str, timestep, radius=...) -> np.ndarray:
        """Per-landmark TRE (mm) of one cell (NaN without truth)."""
        table = self.matches[(configuration, timestep, self._radius(radius))]
        if self.target_points is None:
            return np.full(len(table), np.nan)
        return tre_mm(table.target_zyx, self.target_points, self.spacing_zyx)

    def best(self, metric: str = "tre_mean_mm", radius=..., region: str = "all") -> dict:
        """The row with the best ``metric`` (lowest or highest, as :data:`METRICS` says)."""
        lower = METRICS[metric][1]
        rows = [r for r in self.rows if r["radius"] == _radius_cell(self._radius(radius))
                and r["region"] == region and _finite(r.get(metric))]
        if not rows:
            raise MedDiftError(
                f"no cell has a value for {metric}" + ("" if self.has_truth else " (no truth was given)")
            )
        return (min if lower else max)(rows, key=lambda r: float(r[metric]))

    def write_csv(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(COLUMNS))
            w.writeheader()
            for r in self.rows:
                w.writerow({k: _csv_value(r.get(k)) for k in COLUMNS})
        os.replace(tmp, path)
        return path

    def write_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        doc = {"meta": self.meta, "columns": list(COLUMNS),
               "rows": [{k: _json_value(r.get(k)) for k in COLUMNS} for r in self.rows]}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


def _finite(v) -> bool:
    return v is not None and v != "" and math.isfinite(float(v))


def _csv_value(v):
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    return "" if v is None else v


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _radius_cell(radius):
    """The radius as a row holds it: as ``--radius`` takes it (``40mm``, ``16`` voxels), or
    ``"global"`` for a whole-target search."""
    from ..matching.window import radius_tag

    return "global" if radius is None else radius_tag(radius)


def _regions(mask, points: np.ndarray) -> dict[str, np.ndarray]:
    """``all`` plus, with a mask on the source grid, ``inside mask``/``outside mask`` (a binary
    mask) or ``label K`` per label value at the points (a label image)."""
    n = len(points)
    out = {"all": np.ones(n, bool)}
    if mask is None:
        return out
    m = np.asarray(mask)
    vals = m[points[:, 0], points[:, 1], points[:, 2]]
    if m.dtype == bool or set(np.unique(m).tolist()) <= {0, 1}:
        inside = vals.astype(bool)
        out["inside mask"], out["outside mask"] = inside, ~inside
    else:
        for v in np.unique(vals):
            out[f"label {int(v) if float(v).is_integer() else float(v)}"] = vals == v
    return out


def _summarise(table: MatchTable, sel: np.ndarray, errors: np.ndarray | None, within_mm: float) -> dict:
    n = int(sel.sum())
    row: dict[str, Any] = {"n": n}
    if errors is not None and n:
        s = summarize(errors[sel])
        row.update(tre_mean_mm=s["mean"], tre_median_mm=s["median"], tre_p95_mm=s["p95"],
                   within_2mm_pct=100.0 * float(np.mean(errors[sel] <= within_mm)))
    else:
        row.update(tre_mean_mm=math.nan, tre_median_mm=math.nan, tre_p95_mm=math.nan, within_2mm_pct=math.nan)
    if n and table.checked:
        row["fb_consistent_pct"] = 100.0 * float(np.mean(table.consistent[sel]))
        row["fb_mean_vox"] = float(np.mean(table.fb_distance[sel].astype(np.float64)))
    else:
        row["fb_consistent_pct"] = row["fb_mean_vox"] = math.nan
    amb = table.ambiguity[sel].astype(np.float64)
    amb = amb[np.isfinite(amb)]
    row["ambiguity_mean"] = float(amb.mean()) if amb.size else math.nan
    return row


def check_points(points, shape, what: str) -> np.ndarray:
    """(N, 3) voxel points (z, y, x) -> whole voxels inside ``shape``; MedDiftError otherwise."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
        raise MedDiftError(f"{what} must be one or more (z, y, x) voxel points, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise MedDiftError(f"{what} hold NaN or infinite coordinates")
    q = np.rint(p).astype(np.int64)
    bad = np.flatnonzero(((q < 0) | (q >= np.asarray(shape))).any(axis=1))
    if bad.size:
        z, y, x = q[bad[0]]
        raise MedDiftError(f"{what}: point {int(bad[0]) + 1} at x,y,z = ({x}, {y}, {z}) lies outside the image "
                           f"of x,y,z size {shape[2]}x{shape[1]}x{shape[0]}; {bad.size} point(s) in all")
    return q


def feature_report(
    pairs: Mapping[int | None, tuple[Any, Any]],
    source_points,
    target_points=None,
    *,
    levels: Sequence[str] | None = None,
    fusions: Sequence[str | Configuration] = (),
    radii: Sequence[Any] = (8,),
    mask=None,
    exclusion: int = 2,
    fb_threshold: float = 1.5,
    within_mm: float = 2.0,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> FeatureReport:
    """Run the report (module docstring).

    ``pairs``: ``{timestep: (source_store, target_store)}`` (see :func:`pairs_by_timestep`); all
    pairs describe the same two images.
    ``source_points``: (N, 3) source voxels (z, y, x), rounded to whole voxels.
    ``target_points``: (N, 3) their true target positions (z, y, x voxels) or None (no TRE).
    ``levels``: the levels to combine (default: every level both stores hold).
    ``fusions``: extra fusions, as :func:`parse_fusion` takes them.
    ``radii``: the searches: window radii as the Matcher takes them (passed through unchanged), None
    for the global search.
    ``mask``: a mask or label image on the source grid (per-region rows), or None.
    ``exclusion``, ``fb_threshold``: the Matcher's ambiguity exclusion and consistency threshold.
    ``within_mm``: the TRE of "within" (the column says 2 mm).
    ``progress``: ``progress(done, total, message)``; raise CancelledError in it to stop.
    """
    if not pairs:
        raise MedDiftError("no store pairs to report on; give a source and a target store per timestep")
    timesteps = sorted(pairs, key=lambda t: -1 if t is None else t)
    first_src, first_tgt = pairs[timesteps[0]]
    src_shape, tgt_shape = tuple(first_src.image_shape), tuple(first_tgt.image_shape)
    for t in timesteps:
        s, g = pairs[t]
        if tuple(s.image_shape) != src_shape or tuple(g.image_shape) != tgt_shape:
            raise MedDiftError(
                f"the t={t} stores describe images of other shapes ({tuple(s.image_shape)}, "
                f"{tuple(g.image_shape)}) than the t={timesteps[0]} stores; extract them from the same pair"
            )
    common = [n for n in first_src.level_names if all(n in s.level_names and n in g.level_names
                                                       for s, g in pairs.values())]
    if levels is not None:
        missing = [n for n in levels if n not in common]
        if missing:
            raise MedDiftError(
                f"level(s) {', '.join(missing)} are not in every store; they all hold {', '.join(common)}"
            )
        common = list(levels)
    configs = configurations(common, fusions)
    src_q = check_points(source_points, src_shape, "source points")
    truth = None
    if target_points is not None:
        truth = np.asarray(target_points, dtype=np.float64)
        if truth.shape != src_q.shape:
            raise MedDiftError(f"{len(src_q)} source points but {len(truth)} true target points; give them in pairs")
    if mask is not None and tuple(np.shape(mask)) != src_shape:
        raise MedDiftError(f"the mask has shape {tuple(np.shape(mask))} but the source image {src_shape}; "
                           "give a mask on the source image's grid")
    regions = _regions(mask, src_q)
    spacing = tuple(float(v) for v in first_tgt.spacing)
    radii = list(radii)
    need = sorted({n for c in configs for n in c.levels}, key=common.index)

    n = len(src_q)
    runs = len(timesteps) * len(radii) * len(configs)
    total = runs * 2 * n
    rows: list[dict] = []
    matches: dict = {}
    done = 0
    for t in timesteps:
        src, tgt = pairs[t]
        attrs = dict(getattr(src, "attrs", {}) or {})
        ns = noise_signal(attrs)
        matcher = Matcher.from_stores(src, tgt, levels=need, device=device)
        for radius in radii:
            for c in configs:
                matcher.set_levels(c.levels, c.weight_map)
                label = f"t={t} {c.name} " + ("global" if radius is None else f"radius {radius}")

                def inner(d, tot, msg, _done=done, _label=label):
                    if progress is not None:
                        progress(_done + d, total, _label)

                table = matcher.match_points(src_q, radius, progress=inner, exclusion=exclusion,
                                             fb_threshold=fb_threshold)
                done += 2 * n
                matches[(c.name, t, radius)] = table
                errors = tre_mm(table.target_zyx, truth, spacing) if truth is not None else None
                for region, sel in regions.items():
                    row = {
                        "configuration": c.name, "kind": c.kind, "levels": c.levels_text, "weights": c.weights_text,
                        "timestep": t, "noise_signal": ns, "search": "global" if radius is None else "window",
                        "radius": _radius_cell(radius), "region": region,
                    }
                    row.update(_summarise(table, sel, errors, within_mm))
                    row.update(exclusion=int(exclusion), fb_threshold=float(fb_threshold),
                               backbone=attrs.get("backbone", ""), weights_hash=attrs.get("weights_hash", ""),
                               source_store=str(getattr(src, "path", "")), target_store=str(getattr(tgt, "path", "")))
                    rows.append(row)
        del matcher
    if progress is not None:
        progress(total, total, "done")
    meta = {"n_points": n, "truth": truth is not None, "levels": list(common),
            "configurations": [{"name": c.name, "kind": c.kind, "levels": list(c.levels), "weights": c.weight_map}
                               for c in configs],
            "timesteps": timesteps, "radii": [_radius_cell(r) for r in radii], "regions": list(regions),
            "spacing_zyx_mm": list(spacing), "within_mm": within_mm, "exclusion": int(exclusion),
            "fb_threshold": float(fb_threshold)}
    return FeatureReport(rows, matches, configs, timesteps, radii, list(regions), src_q, truth, spacing, meta)


def extract_pairs(source_volume, target_volume, backbone, settings, timesteps: Sequence[int], cache_dir,
                  progress: ProgressCallback | None = None) -> dict[int, tuple[Any, Any]]:
    """The report's stores: ``{t: (source_store, target_store)}`` for ``timesteps``, each extracted
    with ``backbone`` and ``settings`` (but the timestep) into ``cache_dir`` under its cache key;
    a store already there is reused at once, so an interrupted run resumes where it stopped.
    ``progress`` counts images and may raise CancelledError between (and inside) extractions."""
    import dataclasses

    from ..backbones.extraction import cached_store_path, extract_to_store

    out: dict[int, tuple[Any, Any]] = {}
    total = 2 * len(timesteps)
    done = 0
    for t in timesteps:
        s = dataclasses.replace(settings, timestep=int(t))
        pair = []
        for label, vol in (("source", source_volume), ("target", target_volume)):
            def inner(d, n, m, _done=done, _msg=f"t={t}: extracting the {label}"):
                if progress is not None:
                    progress(_done, total, _msg)
            inner(0, 1, "")
            store, _ = extract_to_store(
                vol, backbone, s, cached_store_path(vol, backbone, s, cache_dir), progress=inner
            )
            pair.append(store)
            done += 1
        out[int(t)] = (pair[0], pair[1])
    if progress is not None:
        progress(total, total, "stores ready")
    return out
