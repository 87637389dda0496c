"""Stores whose levels were computed on another grid than the scan's: the geometry they record, and
matching that stays exact with respect to the descriptor field those levels define in the scan.

The reference here works in physical space only: every scan voxel is placed in mm by the scan's own
geometry, then located in each level by that level's recorded geometry (origin, spacing,
direction), and the level is sampled there (trilinear, edge values outside the nodes) with
``grid_sample`` in float64. Nothing is shared with the matcher's per-axis tap tables.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_meddift.backbones import get_backbone
from napari_meddift.backbones.base import ExtractionSettings
from napari_meddift.backbones.extraction import cached_store_path, extract_to_store, extraction_grid
from napari_meddift.errors import MedDiftError
from napari_meddift.io.geometry import Grid
from napari_meddift.io.store import write_store
from napari_meddift.io.volume import Volume
from napari_meddift.matching import Matcher


def _rotation(axis, degrees) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


OBLIQUE = _rotation((1.0, 2.0, 0.5), 17.0)  # ITK (x, y, z) direction cosines, no axis aligned


def _ct(seed: int, shape=(14, 44, 40), spacing=(2.8, 0.7, 0.75)) -> Volume:
    """A smooth anisotropic, oblique 'CT': blobs of tissue in air, int-like HU."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    hu = np.full(shape, -900.0)
    for _ in range(12):
        c = [rng.uniform(0, n * s) for n, s in zip(shape, spacing)]
        r = rng.uniform(4, 10)
        hu += rng.uniform(300, 1200) * np.exp(-((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) / (2 * r * r))
    return Volume(hu.astype(np.float32), spacing, (-31.0, 12.5, 7.25), OBLIQUE, name=f"oblique{seed}")


# ---------------------------------------------------------------- the grids themselves


def test_at_spacing_keeps_the_field_of_view_and_direction():
    image = Grid.of(_ct(0))
    grid = image.at_spacing(2.5)
    assert grid.shape == (16, 12, 12)  # round(39.2 / 2.5), round(30.8 / 2.5), round(30 / 2.5)
    np.testing.assert_allclose(grid.field_of_view, image.field_of_view, rtol=1e-12)
    np.testing.assert_allclose(grid.direction, image.direction, atol=0)
    # the outer voxel edges coincide physically: corner -0.5 of both grids is one point, so is the far one
    for a, b in ((-0.5, -0.5), (np.array(image.shape) - 0.5, np.array(grid.shape) - 0.5)):
        np.testing.assert_allclose(image.index_to_physical(np.broadcast_to(a, 3)),
                                   grid.index_to_physical(np.broadcast_to(b, 3)), atol=1e-9)


def test_spanning_is_where_interpolate_samples():
    """Node i of a spanning grid sits at the image index F.interpolate(align_corners=False) reads."""
    image = Grid.of(_ct(0))
    level = image.spanning((5, 11, 9))
    for axis, (n_img, n_lvl) in enumerate(zip(image.shape, level.shape)):
        nodes = np.zeros((n_lvl, 3))
        nodes[:, axis] = np.arange(n_lvl)
        at = image.physical_to_index(level.index_to_physical(nodes))[:, axis]
        np.testing.assert_allclose(at, (np.arange(n_lvl) + 0.5) * n_img / n_lvl - 0.5, atol=1e-9)


def test_grid_refuses_impossible_geometry():
    with pytest.raises(MedDiftError, match="rotation"):
        Grid((2, 2, 2), (1, 1, 1), (0, 0, 0), np.zeros(9))
    with pytest.raises(MedDiftError, match="spacing"):
        Grid((2, 2, 2), (1, 0, 1))
    with pytest.raises(MedDiftError, match="origin"):
        Grid((2, 2, 2), (1, 1, 1), (0, float("nan"), 0))


# ---------------------------------------------------------------- stores on another grid


@pytest.fixture(scope="module")
def oblique_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("oblique")
    bb = get_backbone("mini", random_weights=True)
    out = []
    for seed in (0, 1):
        vol = _ct(seed)
        store, _ = extract_to_store(vol, bb, ExtractionSettings(levels=("up0", "up1")), root / f"{seed}.zarr",
                                    dtype="float32")
        out.append((vol, store))
    return out


def test_store_records_the_grid_it_was_extracted_on(oblique_stores):
    vol, store = oblique_stores[0]
    assert store.attrs["format_version"] == 2
    image = Grid.of(vol)
    assert store.image_grid.same_as(image) and store.image_shape == vol.shape
    assert store.extraction_grid.same_as(image.at_spacing(2.5))  # mini's training spacing
    assert store.extraction_grid.shape != vol.shape
    for name in store.level_names:
        grid = store.level_grid(name)
        assert grid.shape == tuple(store.level(name).shape[1:])
        assert grid.same_as(image.spanning(grid.shape))
    # the network grid is the 2.5 mm grid rounded up to multiples of 16, 16^3; mini_v2's up0 sits at
    # 1/4 of it, up1 at 1/2
    assert store.level_grid("up0").shape == (4, 4, 4) and store.level_grid("up1").shape == (8, 8, 8)


def test_native_spacing_runs_on_the_scans_grid(tmp_path):
    vol = _ct(0)
    bb = get_backbone("mini", random_weights=True)
    assert extraction_grid(vol, bb, "native").same_as(Grid.of(vol))
    store, _ = extract_to_store(vol, bb, ExtractionSettings(spacing="native"), tmp_path / "n.zarr")
    assert store.extraction_grid.same_as(Grid.of(vol))
    assert extraction_grid(vol, bb).shape == (16, 12, 12)
    # the grid is part of the store's identity; how it was asked for (default, 2.5, "2.5mm") is not
    paths = {
        s: cached_store_path(vol, bb, ExtractionSettings(spacing=s), tmp_path) for s in (None, 2.5, "2.5mm", "native")
    }
    assert paths[None] == paths[2.5] == paths["2.5mm"] != paths["native"]


def _physical_reference(vol: Volume, store, names) -> torch.Tensor:
    """Fused unit descriptors at every scan voxel, sampled through the recorded level geometry."""
    image = Grid.of(vol)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), -1).reshape(-1, 3)
    mm = image.index_to_physical(idx)
    parts = []
    for name in names:
        level = torch.from_numpy(np.asarray(store.level(name)[...], np.float64))
        grid = store.level_grid(name)
        c = grid.physical_to_index(mm)
        n = np.array(grid.shape, float)
        norm = np.clip(c, 0, n - 1) / np.maximum(n - 1, 1) * 2 - 1  # edge values beyond the outer nodes
        g = torch.from_numpy(norm[:, ::-1].copy()).view(1, -1, 1, 1, 3)  # grid_sample wants (x, y, z)
        d = F.grid_sample(level[None], g, mode="bilinear", padding_mode="border", align_corners=True)
        d = F.normalize(d[0, :, :, 0, 0], dim=0, eps=1e-12)
        parts.append(d / np.sqrt(len(names)))
    return torch.cat(parts, 0).reshape(-1, *vol.shape)


@pytest.mark.parametrize("radius", [2, 5])
def test_windowed_search_is_exact_on_the_recorded_geometry(oblique_stores, radius):
    (src_vol, src), (tgt_vol, tgt) = oblique_stores
    names = ["up0", "up1"]
    ref_src = _physical_reference(src_vol, src, names)
    ref_tgt = _physical_reference(tgt_vol, tgt, names)
    m = Matcher.from_stores(src, tgt, levels=names)
    rng = np.random.default_rng(3)
    points = [tuple(int(rng.integers(0, n)) for n in src_vol.shape) for _ in range(12)] + [(0, 0, 0), (13, 43, 39)]
    for p in points:
        res = m.similarity(p, radius)
        want = torch.einsum("c,czyx->zyx", ref_src[(slice(None),) + p], ref_tgt[(slice(None),) + res.box]).numpy()
        np.testing.assert_allclose(res.fused, want, atol=2e-5)
        got = m.match(p, radius, check_consistency=False)
        at = tuple(g - b.start for g, b in zip(got.target_zyx, res.box))
        assert want[at] >= want.max() - 2e-5  # the matcher's best is the reference's best (up to float ties)


def test_a_level_that_does_not_span_the_scan_is_refused(tmp_path):
    vol = _ct(0)
    image = Grid.of(vol)
    level = np.zeros((4, 5, 6, 7), np.float32)
    attrs = {"image_shape": list(vol.shape), "spacing": list(vol.spacing), "origin": list(vol.origin),
             "direction": OBLIQUE.tolist()}
    shifted = image.spanning((5, 6, 7))
    shifted = Grid(shifted.shape, shifted.spacing, tuple(np.add(shifted.origin, 3.0)), shifted.direction)
    with pytest.raises(MedDiftError, match="do not span"):
        write_store(tmp_path / "bad.zarr", {"up0": level}, dict(attrs, level_geometry={"up0": shifted.to_dict()}))
    assert not (tmp_path / "bad.zarr").exists()
    store = write_store(tmp_path / "ok.zarr", {"up0": level}, attrs)  # no geometry given: spanning, recorded
    assert store.level_grid("up0").same_as(image.spanning((5, 6, 7)))
