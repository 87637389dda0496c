"""Volume + backbone + settings -> descriptor store, reusing a store that already holds the answer.

The backbone runs on its own grid (:func:`extraction_grid`: mini at the spacing it was trained at,
MAISI and MIND-SSC on the scan's grid); the store records that grid and where each level's nodes
sit (docs/store-format.md), and keeps positions in the scan's own voxels.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MedDiftError
from ..io.cache import safe_filename
from ..io.geometry import Grid
from ..io.store import (
    DescriptorStore,
    ReplacedMeanwhile,
    cache_key,
    check_store_destination,
    open_store,
    store_token,
    write_store,
)
from ..io.volume import Volume
from ..progress import ProgressCallback
from .base import Backbone, ExtractionSettings, backbone_noise_signal
from .preprocessing import PreprocessSettings


def _takes_preprocessing(backbone: Backbone) -> bool:
    """A backbone whose ``preprocessing`` is None runs on a fixed input and takes no settings."""
    return getattr(backbone, "preprocessing", None) is not None


def _backbone_config(backbone: Backbone) -> dict[str, Any]:
    return dict(getattr(backbone, "config", None) or {})


def find_reusable(path: str | os.PathLike, key: str) -> DescriptorStore | None:
    """The complete store at ``path`` if its cache_key is ``key``; None otherwise."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        store = open_store(path)
    except MedDiftError:
        return None
    return store if store.cache_key == key else None


def _preprocessing_dict(backbone: Backbone, preprocessing: Any = None) -> dict:
    prep = preprocessing if preprocessing is not None else getattr(backbone, "preprocessing", None)
    return prep.to_dict() if hasattr(prep, "to_dict") else (dict(prep) if prep else {})


def extraction_grid(volume: Volume, backbone: Backbone, spacing: float | str | None = None) -> Grid:
    """The grid ``backbone`` runs on for ``volume``: the scan's field of view at the backbone's spacing.

    ``volume``: the scan.
    ``backbone``: its ``grid_spacing`` (mm, or None for the scan's own grid) is the default.
    ``spacing``: ``ExtractionSettings.spacing``: None (the backbone's), ``"native"`` or mm.

    Returns :func:`grid_at` the spacing asked for, or the backbone's.
    """
    return grid_at(volume, getattr(backbone, "grid_spacing", None) if spacing is None else spacing)


def grid_at(volume: Volume, spacing: float | str | None) -> Grid:
    """:meth:`Grid.at_spacing` of the scan's grid, or the scan's own grid when that is what ``spacing``
    comes to (None or ``"native"``, or a scan already at that spacing)."""
    own = Grid.of(volume)
    if spacing is None or spacing == "native":
        return own
    grid = own.at_spacing(float(spacing))
    return own if grid.same_as(own) else grid


def _store_key(
    volume: Volume, backbone: Backbone, settings: ExtractionSettings, preprocessing: PreprocessSettings | None = None
) -> str:
    settings = settings.resolved(backbone)  # None -> the backbone's default timestep, in the key
    prep = _preprocessing_dict(backbone, preprocessing)
    keyed: dict[str, Any] = settings.to_dict()
    # the grid it resolves to is the identity, not how it was asked for (default, 2.5, 2.5mm)
    keyed.pop("spacing", None)
    keyed["extraction_grid"] = extraction_grid(volume, backbone, settings.spacing).to_dict()
    # a backbone's config (e.g. MAISI's variant, body region, latent choice) changes its features
    config = _backbone_config(backbone)
    if config:
        keyed["backbone_config"] = config
    return cache_key(volume, backbone.name, backbone.weights_hash, keyed, prep)


def cached_store_path(
    volume: Volume,
    backbone: Backbone,
    settings: ExtractionSettings,
    cache_dir: str | os.PathLike,
    preprocessing: PreprocessSettings | None = None,
) -> Path:
    """One store per (image, backbone, weights, settings) in a cache folder, named by its cache key.

    ``volume``: the CT the store describes; its name starts the file name.
    ``backbone``: the descriptor source (name and weights hash enter the key).
    ``settings``: timestep, levels, seed, samples: they enter the key.
    ``cache_dir``: the folder, e.g. :func:`napari_meddift.io.cache.default_cache_dir`.
    ``preprocessing``: preprocessing settings of backbones that take them (None: the backbone's own).

    Returns ``cache_dir / "<image>-<backbone>-<key[:12]>.zarr"``; the path may not exist yet.
    """
    stem = safe_filename(volume.name, "volume").strip("._") or "volume"
    key = _store_key(volume, backbone, settings, preprocessing)
    return Path(cache_dir) / f"{stem[:40]}-{backbone.name}-{key[:12]}.zarr"


def extract_to_store(
    volume: Volume,
    backbone: Backbone,
    settings: ExtractionSettings,
    path: str | os.PathLike,
    preprocessing: PreprocessSettings | None = None,
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    dtype: str = "float16",
) -> tuple[DescriptorStore, bool]:
    """Extract descriptors of ``volume`` into the store at ``path``.

    A complete store at ``path`` with the same cache key (same voxels, geometry, backbone,
    weights and settings) is returned at once unless ``overwrite``. Otherwise the backbone runs
    and the store is written atomically, replacing an older store only once the new one is whole.

    ``volume``: the CT, array (z, y, x) in HU with spacing and origin in mm.
    ``backbone``: the descriptor source; each level comes back as (C, z', y', x') on its own grid.
    ``settings``: timestep, levels, seed, samples, device and dtype of the extraction.
    ``path``: the store to write (``STORE.zarr``).
    ``preprocessing``: preprocessing settings for backbones that take them (None: the backbone's own).
    ``progress``: ``progress(done, total, message)``; raising
    :class:`~napari_meddift.errors.CancelledError` in it stops the run and leaves nothing behind.
    ``overwrite``: extract again even if ``path`` holds a matching store.
    ``dtype``: the stored precision, ``"float16"`` or ``"float32"``.

    Returns ``(store, reused)``: the opened store and whether it was already there.
    """
    path = Path(path)
    settings = settings.resolved(backbone)  # the timestep the store records and the key holds
    if preprocessing is not None and not _takes_preprocessing(backbone):
        raise MedDiftError(f"backbone {backbone.name!r} does not take preprocessing settings")
    key = _store_key(volume, backbone, settings, preprocessing)

    if not overwrite:
        store = find_reusable(path, key)
        if store is not None:
            return store, True

    if int(settings.samples) < 1:
        raise MedDiftError(f"samples (noise samples averaged) must be at least 1, got {settings.samples}")
    check_store_destination(path)
    from .base import resolve_device
    from .memory import check_memory
    from .preprocessing import resample_volume

    grid = extraction_grid(volume, backbone, settings.spacing)
    check_memory(backbone.name, grid.shape, resolve_device(settings.device).type,
                 getattr(backbone, "preprocessing", None), settings.samples, image_shape=volume.shape)
    token = store_token(path)  # what is there now: a store written meanwhile is not overwritten
    last_total = [1]

    def relay(done: int, total: int, message: str) -> None:
        last_total[0] = total
        if progress is not None:
            progress(done, total, message)

    image_grid = Grid.of(volume)
    seen = volume
    if not grid.same_as(image_grid):
        if progress is not None:
            progress(0, 1, "resampling to " + "x".join(f"{s:.2f}" for s in grid.spacing) + " mm")
        seen = resample_volume(volume, grid)
    if preprocessing is not None:
        levels = backbone.extract(seen, settings, progress=relay, preprocessing=preprocessing)
    else:
        levels = backbone.extract(seen, settings, progress=relay)
    del seen
    order = [n for n in backbone.level_names if n in levels] + [n for n in levels if n not in backbone.level_names]
    levels = {n: levels[n] for n in order}
    if progress is not None:
        progress(last_total[0], last_total[0], "writing store")

    attrs = {
        "image_shape": list(volume.shape),
        "spacing": [float(s) for s in volume.spacing],
        "origin": [float(s) for s in volume.origin],
        "direction": np.asarray(volume.direction, dtype=float).reshape(3, 3).tolist(),
        "extraction_grid": grid.to_dict(),
        # every level spans the extraction grid, which spans the scan: its nodes in the scan's space
        "level_geometry": {n: image_grid.spanning(tuple(lv.shape[1:])).to_dict() for n, lv in levels.items()},
        "source": volume.name or "",
        "backbone": backbone.name,
        "weights_hash": backbone.weights_hash,
        "timestep": int(settings.timestep),
        "noise_signal": backbone_noise_signal(backbone, settings.timestep),
        "seed": int(settings.seed),
        "samples": int(settings.samples),
        "settings": settings.to_dict(),
        "preprocessing": _preprocessing_dict(backbone, preprocessing),
        "backbone_config": _backbone_config(backbone),
        "backbone_description": str(getattr(backbone, "description", "") or ""),
        "cache_key": key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        return write_store(path, levels, attrs, dtype=dtype, replaces=token), False
    except ReplacedMeanwhile:
        store = find_reusable(path, key)
        if store is not None:  # another process wrote exactly this store meanwhile
            return store, True
        raise
