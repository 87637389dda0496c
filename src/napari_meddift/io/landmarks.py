"""Landmark and keypoint files: readers and a writer.

Inside the project every point array is float64, shape (N, 3), in VOXEL (z, y, x) order,
0-based, on the image grid (numpy indexing). Files keep their own conventions and are
converted here, at the boundary:

=========  =====================================  ===================  ========
format     layout                                 units                base
=========  =====================================  ===================  ========
``l2r``    Learn2Reg CSV ``x,y,z`` per row        voxel (NIfTI i,j,k)  0-based
``dirlab`` DIR-Lab text, whitespace ``x y z``      voxel                1-based
``elastix`` ``point``/``index`` header, count,    ``point``: world mm  0-based
           then ``x y z`` per row                 ``index``: voxel
``csv``    plain CSV ``x,y,z[,...]``, optional    voxel or mm          0-based
           header line ``x,y,z,...``               (``units=``)
=========  =====================================  ===================  ========

See ``docs/landmarks.md`` for details and examples.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from ..errors import MedDiftError
from .volume import Volume, world_to_voxel

FORMATS = ("auto", "l2r", "dirlab", "elastix", "csv")
UNITS = ("voxel", "mm")

_NUM = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf)$", re.IGNORECASE)


def _is_number(token: str) -> bool:
    return bool(_NUM.match(token.strip()))


def _read_text(path: Path) -> str:
    if not path.exists():
        raise MedDiftError(f"{path}: no such landmark file; check the path")
    if path.is_dir():
        raise MedDiftError(f"{path}: is a folder; give a landmark file (.csv, .txt, .pts)")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MedDiftError(f"{path}: is not a text file; give a landmark file (CSV, DIR-Lab or elastix text)") from None


def _lines(text: str) -> list[tuple[int, str]]:
    """Non-empty lines with their 1-based line numbers (lines starting with # dropped)."""
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            out.append((i, line))
    return out


def detect_format(path: str | os.PathLike) -> str:
    """Guess the format of a landmark file from its first line.

    ``path``: the landmark file.

    Returns ``"elastix"`` (first line 'point'/'index'), ``"csv"`` (commas; Learn2Reg included) or
    ``"dirlab"`` (whitespace-separated numbers).

    Raises MedDiftError: an empty or unreadable file.
    """
    path = Path(path)
    lines = _lines(_read_text(path))
    if not lines:
        raise MedDiftError(f"{path}: is empty; a landmark file needs at least one point")
    first = lines[0][1].lower()
    if first in ("point", "index"):
        return "elastix"
    if "," in first or ";" in first:
        return "csv"
    tokens = first.split()
    if len(tokens) >= 3 and all(_is_number(t) for t in tokens[:3]):
        return "dirlab"
    raise MedDiftError(
        f"{path}: unknown landmark format (first line '{lines[0][1][:40]}'); "
        "pass fmt='l2r', 'dirlab', 'elastix' or 'csv'"
    )


def _to_array(rows: list[list[float]], path: Path) -> np.ndarray:
    pts = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    if pts.shape[0] == 0:
        raise MedDiftError(f"{path}: holds no points; a landmark file needs at least one x,y,z row")
    if not np.isfinite(pts).all():
        raise MedDiftError(f"{path}: holds NaN/inf coordinates; fix or remove those rows")
    return pts


def _parse_xyz(tokens: list[str], lineno: int, path: Path) -> list[float]:
    try:
        return [float(t) for t in tokens[:3]]
    except ValueError:
        raise MedDiftError(
            f"{path}, line {lineno}: '{' '.join(tokens)[:60]}' is not three numbers x y z; fix that row"
        ) from None


def _read_csv_table(path: Path) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header or None, [(line number, cells)]) of a comma- or semicolon-separated file."""
    lines = _lines(_read_text(path))
    if not lines:
        raise MedDiftError(f"{path}: is empty; a landmark file needs at least one point")
    delim = ";" if ";" in lines[0][1] and "," not in lines[0][1] else ","
    rows = []
    for lineno, line in lines:
        cells = [c.strip() for c in next(csv.reader(io.StringIO(line), delimiter=delim))]
        rows.append((lineno, cells))
    header = None
    if not all(_is_number(c) for c in rows[0][1][:3]):
        header = [c.lower() for c in rows[0][1]]
        rows = rows[1:]
    return header, rows


def _read_csv_xyz(path: Path) -> np.ndarray:
    """x,y,z values (file order, file units) of a CSV with or without a header."""
    header, rows = _read_csv_table(path)
    if header is not None:
        missing = [c for c in ("x", "y", "z") if c not in header]
        if missing:
            raise MedDiftError(
                f"{path}: header '{','.join(header)[:60]}' has no column(s) {', '.join(missing)}; "
                "name the columns x,y,z"
            )
        cols = [header.index(c) for c in ("x", "y", "z")]
    else:
        cols = [0, 1, 2]
    out = []
    for lineno, cells in rows:
        if len(cells) <= max(cols):
            raise MedDiftError(f"{path}, line {lineno}: has {len(cells)} value(s), needs x,y,z; fix that row")
        out.append(_parse_xyz([cells[c] for c in cols], lineno, path))
    return _to_array(out, path)


def _read_whitespace_xyz(path: Path, skip: int = 0) -> tuple[np.ndarray, list[tuple[int, str]]]:
    lines = _lines(_read_text(path))
    out = []
    for lineno, line in lines[skip:]:
        tokens = line.replace(",", " ").split()
        if len(tokens) < 3:
            raise MedDiftError(f"{path}, line {lineno}: has {len(tokens)} value(s), needs x y z; fix that row")
        out.append(_parse_xyz(tokens, lineno, path))
    return _to_array(out, path), lines


def _mm_to_voxel_zyx(xyz_mm: np.ndarray, path: Path, volume, spacing, origin, what: str) -> np.ndarray:
    """World mm (file x,y,z order) to voxel zyx using a Volume or spacing/origin (zyx)."""
    zyx_mm = xyz_mm[:, ::-1]
    if volume is not None:
        return world_to_voxel(volume, zyx_mm)
    if spacing is None:
        raise MedDiftError(
            f"{path}: {what} are in mm; pass volume= (the image they belong to) or spacing= (z,y,x mm) "
            "to convert them to voxels"
        )
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    org = np.zeros(3) if origin is None else np.asarray(origin, dtype=np.float64).reshape(-1)
    if sp.shape != (3,) or org.shape != (3,) or np.any(sp <= 0):
        raise MedDiftError(
            f"spacing/origin must be three numbers in (z, y, x) order with spacing > 0, got {spacing}, {origin}"
        )
    return (zyx_mm - org) / sp


def read_points(
    path,
    fmt: str = "auto",
    volume: Volume | None = None,
    spacing=None,
    origin=None,
    units: str = "voxel",
) -> np.ndarray:
    """Read landmarks as voxel indices.

    ``path``: the landmark file.
    ``fmt``: ``"auto"`` (detect: a first line 'point'/'index' is elastix; commas make a CSV,
    Learn2Reg is a header-less CSV; whitespace-separated numbers are DIR-Lab, 1-based, 1 is
    subtracted), ``"l2r"``, ``"dirlab"``, ``"elastix"`` or ``"csv"``.
    ``volume``: the image geometry, needed for coordinates in mm (csv with ``units="mm"``, elastix
    'point'); direction honoured.
    ``spacing``, ``origin``: the geometry without a volume, (z, y, x) in mm (axis-aligned image assumed).
    ``units``: for ``"csv"`` only: ``"voxel"`` (default) or ``"mm"`` (world coordinates).

    Returns points, shape (N, 3), float64, 0-based voxel indices in (z, y, x) order.

    Raises MedDiftError: an unknown format or unit, a malformed file (with the line), or mm
    coordinates without a geometry.
    """
    from .paths import check_not_special

    path = check_not_special(path, "points file")
    if fmt not in FORMATS:
        raise MedDiftError(f"unknown landmark format '{fmt}'; use one of {', '.join(FORMATS)}")
    if units not in UNITS:
        raise MedDiftError(f"unknown units '{units}'; use 'voxel' or 'mm'")
    if fmt == "auto":
        fmt = detect_format(path)
    if units == "mm" and fmt != "csv":
        raise MedDiftError(f"{path}: units='mm' applies to plain CSV only; {fmt} files carry their own units")

    if fmt in ("l2r", "csv"):
        xyz = _read_csv_xyz(path)
        if units == "mm":
            return _mm_to_voxel_zyx(xyz, path, volume, spacing, origin, "points (units='mm')")
        return xyz[:, ::-1].copy()

    if fmt == "dirlab":
        xyz, _ = _read_whitespace_xyz(path)
        return xyz[:, ::-1] - 1.0

    # elastix
    lines = _lines(_read_text(path))
    if len(lines) < 2 or lines[0][1].lower() not in ("point", "index"):
        raise MedDiftError(
            f"{path}: is not an elastix point file (first line must be 'point' or 'index', then the count)"
        )
    kind = lines[0][1].lower()
    try:
        count = int(lines[1][1])
    except ValueError:
        raise MedDiftError(
            f"{path}, line {lines[1][0]}: expected the number of points, got '{lines[1][1][:40]}'"
        ) from None
    xyz, _ = _read_whitespace_xyz(path, skip=2)
    if xyz.shape[0] != count:
        raise MedDiftError(f"{path}: header says {count} points but the file holds {xyz.shape[0]}; fix the count line")
    if kind == "index":
        return xyz[:, ::-1].copy()
    return _mm_to_voxel_zyx(xyz, path, volume, spacing, origin, "elastix 'point' coordinates")


def read_point_pairs(
    fixed,
    moving,
    fmt: str = "auto",
    volume: Volume | None = None,
    moving_volume: Volume | None = None,
    spacing=None,
    origin=None,
    units: str = "voxel",
) -> tuple[np.ndarray, np.ndarray]:
    """Read corresponding fixed and moving landmarks.

    ``fixed``, ``moving``: the two landmark files of one pair.
    ``fmt``, ``units``: as in :func:`read_points`.
    ``volume``: the fixed image's geometry.
    ``moving_volume``: the moving image's geometry (default: ``volume``).
    ``spacing``, ``origin``: serve both when no volume is given, (z, y, x) in mm.

    Returns ``(fixed, moving)`` voxel points, each shape (N, 3), (z, y, x), float64.

    Raises MedDiftError: what :func:`read_points` raises, or different point counts.
    """
    mv = moving_volume if moving_volume is not None else volume
    a = read_points(fixed, fmt=fmt, volume=volume, spacing=spacing, origin=origin, units=units)
    b = read_points(moving, fmt=fmt, volume=mv, spacing=spacing, origin=origin, units=units)
    if a.shape[0] != b.shape[0]:
        raise MedDiftError(
            f"landmark counts differ: {a.shape[0]} in {fixed} but {b.shape[0]} in {moving}; "
            "give the two files of one pair"
        )
    return a, b


def read_point_columns(path) -> dict[str, np.ndarray]:
    """All columns of a CSV with a header (as written by :func:`write_points_csv`).

    ``path``: the CSV file.

    Returns ``{column: array (N,)}``: numeric columns as float64, others as str. x, y, z stay in
    file order and units; use :func:`read_points` for (z, y, x) voxel points.

    Raises MedDiftError: no such file, no header, or rows of different lengths.
    """
    path = Path(path).expanduser()
    header, rows = _read_csv_table(path)
    if header is None:
        raise MedDiftError(f"{path}: has no header line; read_point_columns needs named columns (x,y,z,...)")
    cols: dict[str, list[str]] = {name: [] for name in header}
    for lineno, cells in rows:
        if len(cells) != len(header):
            raise MedDiftError(
                f"{path}, line {lineno}: has {len(cells)} values for {len(header)} columns; fix that row"
            )
        for name, cell in zip(header, cells):
            cols[name].append(cell)
    out = {}
    for name, vals in cols.items():
        if all(_is_number(v) for v in vals):
            out[name] = np.asarray([float(v) for v in vals], dtype=np.float64)
        else:
            out[name] = np.asarray(vals, dtype=str)
    return out


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    return str(v)


def write_points_csv(
    path: str | os.PathLike, points_zyx: ArrayLike, columns: dict[str, np.ndarray] | None = None, header: bool = True
) -> None:
    """Write voxel points as CSV: header ``x,y,z[,extra...]``, then one row per point.

    ``path``: the CSV file; missing folders are created.
    ``points_zyx``: voxel points, shape (N, 3), (z, y, x); the file holds X, Y, Z order
    (0-based voxels).
    ``columns``: extra columns after x, y, z, each a length-N array (numbers, bools or strings).
    ``header``: ``False`` writes the bare Learn2Reg layout (only x, y, z, no header line).

    Raises MedDiftError: points not of shape (N, 3); extra columns without a header, named x/y/z or
    of another length; a file that cannot be written.
    """
    path = Path(path).expanduser()
    pts = np.asarray(points_zyx, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise MedDiftError(f"points must be an (N, 3) array in (z, y, x) order, got shape {pts.shape}")
    columns = dict(columns or {})
    names = list(columns)
    if names and not header:
        raise MedDiftError("extra columns need a header line; write with header=True")
    for name in names:
        if name.strip().lower() in ("x", "y", "z") or not name.strip():
            raise MedDiftError(f"extra column name '{name}' is empty or clashes with x,y,z; rename it")
        if len(np.asarray(columns[name]).reshape(-1)) != pts.shape[0]:
            raise MedDiftError(
                f"column '{name}' has {len(np.asarray(columns[name]).reshape(-1))} values for {pts.shape[0]} points"
            )
    extra = [np.asarray(columns[n]).reshape(-1) for n in names]
    from .outputs import replacing

    with replacing(path, "points file") as tmp:  # whole or not at all; the old file stays on failure
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            if header:
                w.writerow(["x", "y", "z", *names])
            for i, (z, y, x) in enumerate(pts):
                w.writerow([_cell(x), _cell(y), _cell(z), *(_cell(c[i]) for c in extra)])


def write_points_elastix(path, points_zyx, volume: Volume | None = None, units: str = "voxel") -> None:
    """Write an elastix/transformix point file (``point`` or ``index`` header, count, ``x y z`` rows).

    ``units='voxel'``: ``points_zyx`` are voxel indices (z, y, x); with ``volume`` they are
    written as physical ``point`` coordinates (ITK LPS mm, direction honoured), without it as
    ``index``. ``units='mm'``: ``points_zyx`` are already physical points (z, y, x) mm, written
    as ``point``. :func:`read_points` reads the file back.
    """
    path = Path(path).expanduser()
    if units not in UNITS:
        raise MedDiftError(f"unknown units '{units}'; use 'voxel' or 'mm'")
    pts = np.asarray(points_zyx, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise MedDiftError(f"points must be an (N, 3) array in (z, y, x) order, got shape {pts.shape}")
    if units == "voxel" and volume is not None:
        pts, kind = volume.index_to_physical(pts), "point"
    else:
        kind = "point" if units == "mm" else "index"
    lines = [kind, str(pts.shape[0])] + [" ".join(repr(float(c)) for c in row[::-1]) for row in pts]
    from .outputs import write_text

    write_text(path, "\n".join(lines) + "\n", "points file")
