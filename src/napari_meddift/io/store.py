"""Descriptor stores: one zarr v3 group per volume holding native-resolution feature levels.

The public format is documented in ``docs/store-format.md``. Writes are atomic: a store is
built in a sibling ``<name>.partial-<pid>-<hex>`` folder, marked ``complete`` last, then renamed
into place, so a store that opens is always whole. Writers of one path are serialised by
``<name>.lock`` and clean up after killed writers (an interrupted replace is rolled back, see
:mod:`.locking`); every open checks that each chunk file a level needs is there, and
:func:`verify_store` decodes them all (:mod:`.integrity`). docs/reliability.md lists the promises.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .. import STORE_FORMAT_VERSION, __version__
from ..errors import MedDiftError
from .geometry import Grid
from .integrity import level_digest, missing_chunk_files, verify_level
from .locking import StoreLock, recover, sibling_path, siblings
from .metadata import METADATA_CHECKSUM, check_level_values, check_new_store, geometry_problems, metadata_digest
from .metadata import metadata_problem, stored_attributes
from .paths import check_can_create_in, check_not_special, nearest_existing

if TYPE_CHECKING:
    from .volume import Volume

FORMAT = "napari-meddift-descriptors"
#: spatial chunk edge; every chunk holds all channels of up to CHUNK^3 grid nodes
CHUNK = 16
_DTYPES = ("float16", "float32")


# ---------------------------------------------------------------- helpers


def _jsonable(obj: Any) -> Any:
    """Attributes as plain JSON types (tuples -> lists, numpy scalars -> Python)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        obj = obj.to_dict() if hasattr(obj, "to_dict") else asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _to_numpy(a: Any, dtype: str) -> np.ndarray:
    """``a`` as a C-contiguous numpy array of ``dtype``. A torch tensor is cast by torch
    (vectorised and multi-threaded: several times faster than numpy's float16 cast)."""
    if hasattr(a, "detach"):  # torch.Tensor, without importing torch for numpy input
        import torch

        return a.detach().to("cpu", getattr(torch, dtype)).contiguous().numpy()
    return np.ascontiguousarray(np.asarray(a).astype(dtype, copy=False))


def level_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The chunk shape of a level array: all channels, up to 16 nodes per spatial axis.

    ``shape``: the level's shape (C, z, y, x).

    Returns ``(C, min(16, z), min(16, y), min(16, x))``: a windowed query touches only the chunks
    around it.
    """
    c, *spatial = (int(n) for n in shape)
    return (c, *(max(1, min(CHUNK, n)) for n in spatial))


def _is_our_group(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return doc.get("node_type") == "group" and doc.get("attributes", {}).get("format") == FORMAT


def is_store(path) -> bool:
    """True when ``path`` is a napari-meddift descriptor store (cheap: reads ``zarr.json`` only).

    OME-Zarr and other zarr groups give False; use :func:`open_store` for full validation.
    """
    path = Path(path)
    return path.is_dir() and _is_our_group(path)


def _store_path(path: Any) -> Path:
    """``path`` as a Path; MedDiftError for None, an empty string or a non-path."""
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise MedDiftError(f"a descriptor store path must be a folder name like scan.zarr, got {path!r}")
    return Path(path).expanduser()


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------- cache key


def cache_key(volume: Volume, backbone_name: str, weights_hash: str, settings: Any, preprocessing: Any = None) -> str:
    """The identity of an extraction: sha256 over voxels, geometry, backbone and settings.

    ``volume``: the CT (array (z, y, x), spacing/origin in mm, direction).
    ``backbone_name``: the backbone's registry name.
    ``weights_hash``: sha256 of its weights (or of its definition, for weight-free sources).
    ``settings``: the extraction settings (a dataclass or dict); ``device`` is left out, as where
    it ran does not change what was asked for.
    ``preprocessing``: the backbone's preprocessing settings, if it has any.

    Returns 64 hexadecimal digits; equal keys mean the stored descriptors can be reused.
    """
    arr = np.ascontiguousarray(np.asarray(volume.array, dtype=np.float32))
    h = hashlib.sha256()
    h.update(json.dumps(list(arr.shape)).encode())
    h.update(memoryview(arr).cast("B"))
    s = _jsonable(settings) if settings is not None else {}
    if isinstance(s, dict):
        s = {k: v for k, v in s.items() if k != "device"}
    doc = {
        "spacing": [float(x) for x in volume.spacing],
        "origin": [float(x) for x in getattr(volume, "origin", (0, 0, 0))],
        "direction": _jsonable(np.asarray(getattr(volume, "direction", np.eye(3)), dtype=float)),
        "backbone": str(backbone_name),
        "weights_hash": str(weights_hash),
        "settings": s,
        "preprocessing": _jsonable(preprocessing) if preprocessing is not None else None,
        "format_version": STORE_FORMAT_VERSION,
    }
    h.update(json.dumps(doc, sort_keys=True).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- reading


@runtime_checkable
class LevelSource(Protocol):
    """What matching needs from descriptors: the image grid and named levels.

    :class:`DescriptorStore` is one; an in-memory stand-in only needs these three members.
    """

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The image grid (z, y, x) in voxels the levels span."""
        ...

    @property
    def level_names(self) -> tuple[str, ...]:
        """Every level held, in fusion order."""
        ...

    def load_levels(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """{name: float32 array (C, z', y', x')} at each level's native resolution."""
        ...


class DescriptorStore:
    """A complete, validated store opened read-only. Use :func:`open_store`."""

    def __init__(self, path: Path, group) -> None:
        self.path = Path(path)
        self._group = group
        self.attrs: dict[str, Any] = dict(group.attrs)

    def __repr__(self) -> str:
        return f"DescriptorStore({str(self.path)!r}, levels={list(self.level_names)})"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.attrs["image_shape"])  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.attrs["spacing"])  # type: ignore[return-value]

    @property
    def origin(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.attrs.get("origin", (0.0, 0.0, 0.0)))  # type: ignore[return-value]

    @property
    def direction(self) -> np.ndarray:
        return np.asarray(self.attrs.get("direction", np.eye(3).tolist()), dtype=float)

    @property
    def level_names(self) -> tuple[str, ...]:
        return tuple(self.attrs["levels"])

    @property
    def image_grid(self) -> Grid:
        """The scan's own grid: positions in matching, registration and evaluation are its voxels."""
        return _image_grid(self.attrs)

    @property
    def extraction_grid(self) -> Grid:
        """The grid the backbone ran on (the scan resampled to the backbone's spacing, or its own grid)."""
        return Grid.from_dict(self.attrs["extraction_grid"])

    def level_grid(self, name: str) -> Grid:
        """Where the nodes of level ``name`` sit in physical space (they span the scan's field of view)."""
        if name not in self.level_names:
            raise MedDiftError(f"store {self.path} has no level {name!r}; it has {', '.join(self.level_names)}")
        return Grid.from_dict(self.attrs["level_geometry"][name])

    @property
    def cache_key(self) -> str | None:
        return self.attrs.get("cache_key")

    def level(self, name: str):
        """The zarr array ``levels/<name>`` (C, z, y, x); reads are lazy, by chunk."""
        if name not in self.level_names:
            raise MedDiftError(f"store {self.path} has no level {name!r}; it has {', '.join(self.level_names)}")
        return self._group[f"levels/{name}"]

    def load_levels(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """{name: float32 array (C, z, y, x)} for ``names`` (default: all, in fusion order)."""
        names = self.level_names if names is None else tuple(names)
        return {n: self._read(n, ...) for n in names}

    def _read(self, name: str, selection) -> np.ndarray:
        """float32 values of ``level[selection]``; a chunk that does not decode is a MedDiftError."""
        arr = self.level(name)
        try:
            return np.asarray(arr[selection], dtype=np.float32)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - zstd/codec errors from damaged chunk files
            raise MedDiftError(
                f"{self.path} is damaged: level {name} has chunk data that does not decode "
                f"({type(exc).__name__}); extract it again (`meddift check {self.path}` lists every problem)"
            ) from None

    def read_box(self, name: str, slices) -> np.ndarray:
        """float32 ``level[:, z0:z1, y0:y1, x0:x1]`` for spatial ``slices`` (reads touched chunks only)."""
        slices = tuple(slices)
        if len(slices) != 3:
            raise ValueError("read_box needs three spatial slices (z, y, x)")
        return self._read(name, (slice(None), *slices))


def _is_complete_store(path: Path) -> bool:
    return _is_our_group(path) and json.loads((path / "zarr.json").read_text())["attributes"].get("complete") is True


def _roll_back_if_interrupted(path: Path) -> None:
    """A missing store beside a complete ``.old-*`` copy: a replace was killed between its two
    renames. Put the old store back (under the writers' lock, so never in a live writer's way)."""
    if path.exists() or not any(kind == "old" for _, kind, _ in siblings(path)):
        return
    try:
        with StoreLock(path, timeout=30.0):
            recover(path, _is_complete_store)
    except MedDiftError as exc:
        olds = ", ".join(p.name for p, kind, _ in siblings(path) if kind == "old")
        raise MedDiftError(f"{path} is missing after an interrupted replace and cannot be restored ({exc}); "
                           f"the previous store is in {olds}: rename it to {path.name}") from None


def _damaged(path: Path, what: str) -> MedDiftError:
    return MedDiftError(f"{path} is damaged: {what}; extract it again (`meddift check` lists every problem)")


def open_store(path: str | os.PathLike) -> DescriptorStore:
    """Open and validate a descriptor store.

    Cheap integrity check on every open: every chunk file each level needs is present and each
    level has the shape it was written with (:mod:`.integrity`); :func:`verify_store` decodes them
    all. A store left missing by a killed replace is restored first (:mod:`.locking`).

    ``path``: the store folder (``STORE.zarr``).

    Returns the store, read-only; level arrays are read lazily by chunk.

    Raises MedDiftError: no such path, not a zarr v3 group or not ours, another format version, an
    incomplete (interrupted) write, missing level arrays or chunk files, or bad
    geometry attributes; the message says what to do.
    """
    import zarr

    path = _store_path(path)
    for part in (path, path / "zarr.json"):
        check_not_special(part, "descriptor store")  # a FIFO as the store or its metadata: never read
    _roll_back_if_interrupted(path)
    if not path.exists():
        raise MedDiftError(f"no descriptor store at {path}; run `meddift extract` first")
    try:
        group = zarr.open_group(str(path), mode="r", zarr_format=3)
    except Exception as exc:  # any zarr failure means "not a store"
        raise MedDiftError(f"{path} is not a zarr v3 group, so not a napari-meddift descriptor store") from exc
    attrs = dict(group.attrs)
    if attrs.get("format") != FORMAT:
        raise MedDiftError(f"{path} is a zarr group but not a napari-meddift descriptor store")
    version = attrs.get("format_version")
    if version != STORE_FORMAT_VERSION:
        older = isinstance(version, int) and version < STORE_FORMAT_VERSION
        raise MedDiftError(
            f"{path} has descriptor store format version {version}; this napari-meddift "
            f"({__version__}) reads version {STORE_FORMAT_VERSION}"
            + (" (stores now record where each level sits in the scan)" if older else "")
            + ": run `meddift extract` on the scan again to redo it"
        )
    if attrs.get("complete") is not True:
        raise MedDiftError(f"{path} is an incomplete descriptor store (an interrupted write); extract again")
    levels = attrs.get("levels")
    if not isinstance(levels, list) or not levels or not all(isinstance(n, str) for n in levels):
        raise MedDiftError(f"{path} lists no feature levels; extract again")
    for key in ("image_shape", "spacing"):
        if key not in attrs:
            raise MedDiftError(f"{path} lacks the '{key}' attribute; extract again")
    sizes = geometry_problems({"image_shape": attrs["image_shape"], "spacing": attrs["spacing"]})  # io/metadata.py
    if sizes:
        raise _damaged(path, "; ".join(sizes))
    missing, incomplete = [], []
    for name in levels:
        try:
            arr = group[f"levels/{name}"]
        except Exception:  # noqa: BLE001
            missing.append(name)
            continue
        if not isinstance(arr, zarr.Array) or arr.ndim != 4:
            missing.append(name)
            continue
        recorded = (attrs.get("level_shapes") or {}).get(name)
        if recorded is not None and list(recorded) != list(arr.shape):
            incomplete.append(f"{name} has shape {list(arr.shape)} but was written as {list(recorded)}")
            continue
        gone = missing_chunk_files(path / "levels" / name, arr)
        if gone:
            incomplete.append(f"{name} lacks {len(gone)} of its chunk files (e.g. {gone[0]})")
    if missing:
        raise _damaged(path, f"level array(s) {', '.join(missing)} missing")
    if incomplete:
        raise _damaged(path, "; ".join(incomplete))
    problem = metadata_problem(path, attrs) or "; ".join(geometry_problems(attrs))  # io/metadata.py
    if problem:
        raise _damaged(path, problem)
    try:
        check_level_geometry(attrs, {n: tuple(group[f"levels/{n}"].shape) for n in levels})
    except MedDiftError as exc:
        raise _damaged(path, str(exc)) from None
    return DescriptorStore(path, group)


def _image_grid(attrs: Mapping[str, Any]) -> Grid:
    return Grid(tuple(attrs["image_shape"]), tuple(attrs["spacing"]), tuple(attrs.get("origin", (0.0, 0.0, 0.0))),
                tuple(np.asarray(attrs.get("direction", np.eye(3).tolist()), dtype=float).reshape(-1)))


def check_level_geometry(attrs: Mapping[str, Any], level_shapes: Mapping[str, tuple[int, ...]]) -> None:
    """The recorded grids agree with the levels and the scan: MedDiftError naming the first that does not.

    Every level must have a ``level_geometry`` entry of its array's spatial shape that spans the scan's
    field of view in the scan's direction (what matching's per-axis taps assume), and the
    ``extraction_grid`` must be a grid over the same field of view.
    """
    image = _image_grid(attrs)
    geometry = attrs.get("level_geometry")
    if not isinstance(geometry, Mapping):
        raise MedDiftError("it records no level_geometry")
    extraction = Grid.from_dict(attrs.get("extraction_grid") or {})
    if not extraction.same_as(image.spanning(extraction.shape), tolerance=1e-4):
        raise MedDiftError("its extraction_grid does not cover the scan's field of view")
    for name, shape in level_shapes.items():
        if name not in geometry:
            raise MedDiftError(f"level {name} has no level_geometry entry")
        grid = Grid.from_dict(geometry[name])
        if grid.shape != tuple(int(n) for n in shape[1:]):
            raise MedDiftError(
                f"level {name}'s geometry is for {list(grid.shape)} nodes but it holds {list(shape[1:])}"
            )
        if not grid.same_as(image.spanning(grid.shape), tolerance=1e-4):
            raise MedDiftError(f"level {name}'s nodes do not span the scan's field of view")


def verify_store(path: str | os.PathLike) -> dict[str, Any]:
    """Full integrity check: open (cheap check), then decode every chunk of every level.

    Returns ``{"path", "levels": {name: {"chunks": n, "problems": [...]}}, "ok": bool}``;
    a store that does not even open raises MedDiftError.
    """
    store = open_store(path)
    digests = store.attrs.get("checksums") or {}
    out: dict[str, Any] = {"path": str(store.path), "levels": {}, "ok": True}
    for name in store.level_names:
        rep = verify_level(name, store.level(name), digests.get(name))
        out["levels"][name] = {"chunks": rep.chunks, "problems": rep.problems}
        out["ok"] = out["ok"] and not rep.problems
    return out


def store_token(path: str | os.PathLike) -> str | None:
    """What is at ``path`` now: None (no store), or the write id of the store there.

    :func:`write_store` compares it with the token taken before a long extraction, so a store
    another process wrote meanwhile is never silently replaced."""
    path = Path(path)
    if not _is_our_group(path):
        return None if not path.exists() else "not-a-store"
    a = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    return str(a.get("write_id") or f"{a.get('created')}/{a.get('cache_key')}")


#: ``write_store(replaces=ANY)``: replace whatever store is there (the default)
ANY = object()


class ReplacedMeanwhile(MedDiftError):
    """Another process wrote a store at the same path while this one was extracting."""


# ---------------------------------------------------------------- writing


def _check_writable_target(path: Path) -> None:
    if path.exists() and not _is_our_group(path):
        what = "a file" if path.is_file() else "a folder that is not a napari-meddift descriptor store"
        raise MedDiftError(f"{path} exists and is {what}; refusing to replace it: choose another output path")


def check_store_destination(path: str | os.PathLike) -> Path:
    """Fail now, not after an extraction, if a store cannot be written at ``path``.

    Refuses a path that is a file or someone else's folder, a parent that is a file, and a
    folder this user cannot write in (the nearest existing ancestor is checked when the parent
    does not exist yet). Returns the path.
    """
    path = Path(path).expanduser()
    if str(path).strip() in ("", "."):
        raise MedDiftError("the output store path is empty; give a name like scan.zarr")
    _check_writable_target(path)
    check_can_create_in(nearest_existing(path.parent), path, "cannot write the store")
    return path


def _default_geometry(attrs: Mapping[str, Any], levels: Mapping[str, Any]) -> dict[str, Any]:
    """``extraction_grid`` (the scan's own) and ``level_geometry`` (spanning it) where the writer gave none,
    checked against the levels either way."""
    image = _image_grid(attrs)
    out: dict[str, Any] = {}
    if "extraction_grid" not in attrs:
        out["extraction_grid"] = image.to_dict()
    given = dict(attrs.get("level_geometry") or {})
    out["level_geometry"] = {str(n): given.get(str(n)) or image.spanning(tuple(a.shape[1:])).to_dict()
                             for n, a in levels.items()}
    check_level_geometry(dict(attrs, **out), {str(n): tuple(a.shape) for n, a in levels.items()})
    return out


def write_store(
    path: str | os.PathLike,
    levels: Mapping[str, Any],
    attrs: Mapping[str, Any],
    dtype: str = "float16",
    replaces: Any = ANY,
) -> DescriptorStore:
    """Write a descriptor store atomically.

    An existing store at ``path`` is replaced only once the new one is complete; anything
    that is not a napari-meddift store is never replaced. Writers of one path are serialised by
    ``<path>.lock`` and debris of killed writers is cleaned first (docs/store-format.md).

    ``path``: the store folder to write (``STORE.zarr``).
    ``levels``: ``{name: array (C, z', y', x')}`` (numpy or torch) at each level's native
    resolution, in fusion order.
    ``attrs``: must hold ``image_shape`` (z, y, x voxels) and ``spacing`` (z, y, x mm); format,
    format_version, levels, level_shapes, level_dtype, checksums, write_id, package_version, created
    and complete are filled in here, and so are
    ``extraction_grid`` (the scan's own grid) and ``level_geometry`` (each level spanning the
    scan) when not given; given ones are checked against the levels.
    ``dtype``: ``"float16"`` or ``"float32"``.
    ``replaces``: ``store_token(path)`` taken before a long computation: a store another process
    wrote meanwhile raises :class:`ReplacedMeanwhile` instead of being overwritten.
    Default: replace whatever store is there.

    Returns the written store, opened.

    Raises MedDiftError: an unknown dtype, no levels, a level name that is not a plain name, a level
    not (C, z, y, x) with every size >= 1 or holding NaN/inf, ``attrs`` without a sound
    ``image_shape``/``spacing``/``origin``/``direction``, ``path`` holding something
    that is not a descriptor store, another writer holding the lock past its timeout, or
    a failed write (disk full, permissions); nothing is left behind then, and a store
    that was at ``path`` is kept.
    """
    import zarr
    from zarr.codecs import ZstdCodec

    path = _store_path(path)
    if dtype not in _DTYPES:
        raise MedDiftError(f"store dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if not levels:
        raise MedDiftError("no feature levels to write")
    check_new_store(levels, attrs)  # names, shapes, geometry: before anything is touched
    geometry = _default_geometry(_jsonable(dict(attrs)), levels)  # recorded level grids, checked
    _check_writable_target(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedDiftError(
            f"cannot create the folder {path.parent} ({exc.strerror}); choose another output path"
        ) from None

    with StoreLock(path):
        recover(path, _is_complete_store)
        _check_writable_target(path)
        if replaces is not ANY and store_token(path) != replaces:
            raise ReplacedMeanwhile(
                f"{path} was written by another process while this one was working; "
                "not overwriting it: choose another output path, or run again to replace it"
            )
        partial = sibling_path(path, "partial")
        old: Path | None = None
        try:
            group = zarr.open_group(str(partial), mode="w", zarr_format=3)
            meta = _jsonable(dict(attrs))
            meta.update(geometry)
            meta.update(
                format=FORMAT,
                format_version=STORE_FORMAT_VERSION,
                package_version=__version__,
                levels=[str(n) for n in levels],
                level_dtype=dtype,
                write_id=secrets.token_hex(8),
                complete=False,
            )
            meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            group.attrs.update(meta)  # the format is recognisable (and replaceable) from the start
            lv = group.create_group("levels")
            shapes, digests = {}, {}
            for name, data in levels.items():
                values = _to_numpy(data, dtype)
                check_level_values(str(name), values)
                z = lv.create_array(
                    str(name), shape=values.shape, chunks=level_chunks(values.shape), dtype=dtype,
                    compressors=ZstdCodec(level=0, checksum=True), config={"write_empty_chunks": True},
                )
                z[...] = values
                shapes[str(name)] = [int(n) for n in values.shape]
                digests[str(name)] = level_digest(values)
            group.attrs.update({"level_shapes": shapes, "checksums": digests})
            # the metadata as written, checksummed like the levels (io/metadata.py), then complete
            group.attrs.update({METADATA_CHECKSUM: metadata_digest(partial, stored_attributes(partial)),
                                "complete": True})  # last: only now is the store whole

            if path.exists():
                old = sibling_path(path, "old")
                os.replace(path, old)
            try:
                os.replace(partial, path)
            except BaseException:
                if old is not None:
                    os.replace(old, path)
                    old = None
                raise
        except OSError as exc:
            _rmtree(partial)
            raise MedDiftError(
                f"cannot write the store {path} ({exc.strerror or exc}); check free disk space and permissions"
            ) from None
        except BaseException:
            _rmtree(partial)
            raise
        if old is not None:
            _rmtree(old)
    return open_store(path)
