"""Store metadata checked like data: a checksum over the attributes, geometry that makes sense,
level names and values that can be stored, and stores that may be compared with each other.

* :func:`metadata_digest` is a sha256 over every group attribute except :data:`NOT_COVERED`
  (so an attribute added later is covered without a change here) and over each level array's
  own ``zarr.json`` (shape, chunks, data type, codecs). ``write_store`` records it as
  ``metadata_checksum`` just before ``complete``; ``open_store`` (and so ``meddift check``)
  recomputes it: an edited ``image_shape``, a retyped level, a level copied in from another
  store with its checksum are all refused as damage.
* :func:`geometry_problems` -- image shape, spacing, origin and direction as numbers that can
  place a voxel: positive integer shape, finite positive spacing, finite origin, an orthonormal
  direction matrix (a rotation, possibly with a flip: det +-1).
* :func:`check_new_store` -- what ``write_store`` refuses before it touches anything.
* :func:`check_same_extraction` -- two stores of different backbones, weights, timesteps,
  backbone configurations or preprocessing are not compared unless the caller allows it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import MedDiftError

#: the attribute holding the metadata checksum
METADATA_CHECKSUM = "metadata_checksum"
#: attributes that may legitimately differ from what was checksummed: the checksum itself,
#: ``complete`` (false while writing), and the writer's bookkeeping (``write_id``, ``created``)
NOT_COVERED = frozenset({METADATA_CHECKSUM, "complete", "write_id", "created"})

#: a level name: a plain file name (it is a folder in the store), no path separators or dots alone
LEVEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

#: attributes two stores must share to be matched or registered with each other
SAME_EXTRACTION = ("backbone", "weights_hash", "timestep", "backbone_config", "preprocessing")


def _numbers_as_floats(obj: Any) -> Any:
    """Whole numbers as floats, so values Python calls equal (1 and 1.0) hash equal."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, (int, float)):
        return float(obj)
    if isinstance(obj, dict):
        return {str(k): _numbers_as_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_numbers_as_floats(v) for v in obj]
    return obj


def _canonical(obj: Any) -> bytes:
    return json.dumps(_numbers_as_floats(obj), sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def level_array_document(store: Path, name: str) -> Any:
    """The parsed ``levels/<name>/zarr.json`` of a store (None when missing or unreadable)."""
    try:
        return json.loads((Path(store) / "levels" / name / "zarr.json").read_text())
    except (OSError, ValueError):
        return None


def metadata_digest(store: Path, attrs: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` over the covered attributes and each listed level's array metadata.

    ``attrs`` are the group attributes as read back from the store's ``zarr.json``."""
    covered = {k: v for k, v in attrs.items() if k not in NOT_COVERED}
    levels = attrs.get("levels") if isinstance(attrs.get("levels"), list) else []
    arrays = {str(n): level_array_document(store, str(n)) for n in levels}
    return "sha256:" + hashlib.sha256(_canonical({"attributes": covered, "level_arrays": arrays})).hexdigest()


def stored_attributes(store: Path) -> dict[str, Any]:
    """The group attributes exactly as the store's ``zarr.json`` holds them."""
    return dict(json.loads((Path(store) / "zarr.json").read_text()).get("attributes", {}))


def metadata_problem(store: Path, attrs: Mapping[str, Any]) -> str | None:
    """Why the store's metadata cannot be believed, or None."""
    recorded = attrs.get(METADATA_CHECKSUM)
    if not isinstance(recorded, str):
        return "its metadata has no checksum (written by an older napari-meddift, or edited)"
    if metadata_digest(store, attrs) != recorded:
        return ("its metadata (attributes or level array descriptions) differ from the checksum recorded "
                "when it was written")
    return None


def _numbers(value: Any, n: int) -> list[float] | None:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n else None


def geometry_problems(attrs: Mapping[str, Any]) -> list[str]:
    """What is wrong with a store's (or a volume's) geometry attributes; empty when sound."""
    problems = []
    shape = _numbers(attrs.get("image_shape"), 3)
    if shape is None or not all(math.isfinite(s) and s >= 1 and s == int(s) for s in shape):
        problems.append(f"image_shape {attrs.get('image_shape')!r} is not three positive whole numbers")
    spacing = _numbers(attrs.get("spacing"), 3)
    if spacing is None or not all(math.isfinite(s) and s > 0 for s in spacing):
        problems.append(f"spacing {attrs.get('spacing')!r} is not three finite positive sizes in mm")
    if attrs.get("origin") is not None:
        origin = _numbers(attrs.get("origin"), 3)
        if origin is None or not all(math.isfinite(o) for o in origin):
            problems.append(f"origin {attrs.get('origin')!r} is not three finite numbers in mm")
    if attrs.get("direction") is not None:
        d = direction_problem(attrs.get("direction"))
        if d:
            problems.append(d)
    return problems


def direction_problem(direction: Any) -> str | None:
    """None for a 3x3 orthonormal direction matrix (det +-1), else why not."""
    try:
        m = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    except (TypeError, ValueError):
        return f"direction {str(direction)[:60]!r} is not a 3x3 matrix of numbers"
    if not np.isfinite(m).all():
        return "direction holds NaN/inf"
    if not np.allclose(m.T @ m, np.eye(3), atol=1e-4):
        return "direction is not a rotation (its columns are not orthonormal unit vectors)"
    return None


def check_level_name(name: Any) -> str:
    """``name`` if it can be a level (a folder in the store), else MedDiftError."""
    if not isinstance(name, str) or not LEVEL_NAME.match(name) or ".." in name:
        raise MedDiftError(f"level name {name!r} is not allowed; use letters, digits, '_', '-' or '.' (like up0), "
                           "at most 64, starting with a letter or digit")
    return name


def check_level_shape(name: str, shape: tuple[int, ...]) -> None:
    if len(shape) != 4 or min(shape) < 1:
        raise MedDiftError(f"level {name!r} must be an array (C, z, y, x) with every size at least 1, got shape "
                           f"{tuple(shape)}")


def check_level_values(name: str, values: np.ndarray) -> None:
    """MedDiftError for NaN/inf (after the cast to the store's dtype: float16 overflows count)."""
    finite = np.isfinite(values)
    if not finite.all():
        bad = int(finite.size - np.count_nonzero(finite))
        raise MedDiftError(f"level {name!r} holds {bad} NaN/inf value(s) (in the store's dtype); descriptors must be "
                           "finite: check the extraction (or write float32 if the values exceed float16's range)")


def check_new_store(levels: Mapping[Any, Any], attrs: Mapping[str, Any]) -> None:
    """What ``write_store`` refuses before it touches anything: bad level names and shapes, and
    geometry that cannot place a voxel."""
    if not isinstance(attrs, Mapping):
        raise MedDiftError(f"store attributes must be a mapping, got {type(attrs).__name__}")
    for key in ("image_shape", "spacing"):
        if key not in attrs:
            raise MedDiftError(f"store attributes need {key!r} (z, y, x)")
    problems = geometry_problems(attrs)
    if problems:
        raise MedDiftError("cannot write the store: " + "; ".join(problems))
    for name, data in levels.items():
        check_level_name(name)
        check_level_shape(name, tuple(int(n) for n in getattr(data, "shape", np.shape(data))))


def check_same_extraction(source: Any, target: Any, allow_mixed: bool = False) -> None:
    """Two stores whose descriptors can be compared: same backbone, weights, timestep, backbone
    configuration and preprocessing. One line naming the difference, unless ``allow_mixed``.

    Anything without ``attrs`` (an in-memory level source) is not checked."""
    a, b = getattr(source, "attrs", None), getattr(target, "attrs", None)
    if allow_mixed or not isinstance(a, Mapping) or not isinstance(b, Mapping):
        return
    for key in SAME_EXTRACTION:
        va, vb = a.get(key), b.get(key)
        if va is not None and vb is not None and va != vb:
            show = (lambda v: str(v)[:16] + "...") if key == "weights_hash" else (lambda v: str(v)[:80])
            raise MedDiftError(
                f"the stores were extracted with different {key.replace('_', ' ')} (source {show(va)}, target "
                f"{show(vb)}), so their descriptors are not comparable: extract both with the same backbone, "
                "weights and settings, or pass --allow-mixed (allow_mixed=True) to compare them anyway"
            )
