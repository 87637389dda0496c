"""The Qt-free explorer model: state -> requests -> results, truth, landmarks, maps, timesteps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_meddift.errors import MedDiftError
from napari_meddift.explorer import (
    DISPLAY_MODES,
    ExplorerSession,
    FieldTruth,
    LandmarkTruth,
    display_map,
    parse_timesteps,
    peak_stats,
)
from napari_meddift.matching import Matcher

SHAPE = (20, 24, 22)


def _levels(seed):
    g = torch.Generator().manual_seed(seed)
    return {"up0": torch.randn(16, 5, 6, 6, generator=g), "up1": torch.randn(8, 10, 12, 11, generator=g),
            "up2": torch.randn(4, 20, 24, 22, generator=g)}


def _session(**state):
    s = ExplorerSession()
    s.connect(Matcher(_levels(0), _levels(1), SHAPE, SHAPE), (2.0, 1.5, 1.25), (2.0, 1.5, 1.25), timestep=20)
    for k, v in state.items():
        setattr(s.state, k, v)
    return s


def test_peak_stats_definition_by_hand():
    f = np.zeros((9, 9, 9), np.float32)
    f[4, 4, 4] = 1.0  # the peak
    f[4, 4, 5] = 0.9  # inside the exclusion sphere (r = 2): not a rival
    f[0, 0, 0] = 0.6  # the best rival outside
    pk = peak_stats(f, (4, 4, 4), exclusion=2)
    assert pk.best == 1.0 and pk.rival == pytest.approx(0.6) and pk.median == 0.0
    assert pk.rivalry == pytest.approx(1 - (1.0 - 0.6) / (1.0 - 0.0))
    side = f[np.ones_like(f, bool) & ~((np.indices(f.shape) - 4) ** 2).sum(0).__le__(4)]
    assert pk.psr == pytest.approx((1.0 - side.mean()) / side.std(), rel=1e-5)
    # unchanged when every score is scaled and shifted (mini's maps are all near 1)
    pk2 = peak_stats(0.99 + 0.01 * f, (4, 4, 4), exclusion=2)
    assert pk2.rivalry == pytest.approx(pk.rivalry, abs=1e-3)
    # an equal rival: fully ambiguous
    f[8, 8, 8] = 1.0
    assert peak_stats(f, (4, 4, 4), exclusion=2).rivalry == pytest.approx(1.0)


def test_display_modes():
    rng = np.random.default_rng(0)
    m = (0.99 + 0.01 * rng.random((5, 6, 7))).astype(np.float32)
    m[0, 0, 0] = np.nan
    raw = display_map(m, DISPLAY_MODES[0])
    np.testing.assert_array_equal(np.isnan(raw), np.isnan(m))
    mm = display_map(m, DISPLAY_MODES[1])
    assert np.nanmin(mm) == 0.0 and np.nanmax(mm) == 1.0 and np.isnan(mm[0, 0, 0])
    rk = display_map(m, DISPLAY_MODES[2])
    finite = np.isfinite(m)
    from scipy.stats import rankdata

    ref = (rankdata(m[finite]) - 1) / (finite.sum() - 1)
    np.testing.assert_allclose(rk[finite], ref, atol=1e-6)
    with pytest.raises(ValueError, match="display mode"):
        display_map(m, "log")


def test_compute_matches_the_core_and_state_changes_ask_for_a_rerun():
    s = _session(radius=8.0)  # mm: ceil(8 / (2.0, 1.5, 1.25)) = (4, 6, 7) voxels
    assert s.window_voxels() == (4, 6, 7)
    ref = Matcher(_levels(0), _levels(1), SHAPE, SHAPE)
    # windows read full-image norm maps, built in the background at connect (the reference
    # computes each window's norms from its own nodes: the maps below must agree)
    engine = s.engines[20]
    assert engine.warmed.wait(60) and engine.matcher.cache_norms
    assert all(side.level(n).inv_norm_full is not None for side in (engine.matcher._tgt, engine.matcher._src)
               for n in ("up0", "up1", "up2"))
    reruns = []
    s.events.rerun.connect(lambda: reruns.append(1))
    res = s.compute(s.request((10, 12, 11)))
    sim = ref.similarity((10, 12, 11), (4, 6, 7), per_level=True)
    m = ref.match((10, 12, 11), (4, 6, 7))
    np.testing.assert_allclose(res.fused, sim.fused, atol=1e-6)
    assert res.target_zyx == tuple(m.target_zyx) and res.offset == sim.offset
    assert 0.0 <= res.rivalry <= 1.0
    s.state.radius = 2.0
    s.state.display_mode = DISPLAY_MODES[2]
    assert len(reruns) == 2
    res = s.compute(s.request((10, 12, 11)))
    assert res.fused.shape == ref.similarity((10, 12, 11), (1, 2, 2)).fused.shape == (3, 5, 5)
    assert np.nanmax(res.display["fused"]) == 1.0
    s.state.color_range = "[0.5, 1]"  # a view setting: no new search
    assert len(reruns) == 2
    with pytest.raises(MedDiftError, match="at least one"):
        s.set_levels([])
    s.set_levels(["up1"], {"up1": 2.0})
    assert s.state.levels == ("up1",) and s.compute(s.request((3, 3, 3))).request.levels == ("up1",)


def test_field_truth_inverts_a_known_field():
    rng = np.random.default_rng(1)
    from scipy.ndimage import gaussian_filter

    u = np.stack([gaussian_filter(rng.normal(size=SHAPE), 4) * 20 for _ in range(3)])
    truth = FieldTruth(u)
    for p in [(10.0, 12.0, 11.0), (4.0, 20.0, 3.0)]:
        q = np.asarray(truth.target_of(p).target_zyx)
        from scipy.ndimage import map_coordinates

        back = q + np.array([map_coordinates(u[a], q.reshape(3, 1), order=1, mode="nearest")[0] for a in range(3)])
        np.testing.assert_allclose(back, p, atol=1e-3)
    assert truth.target_of((1, 1, 1)).describe() == "interpolated field"


def test_live_truth_and_error_in_mm():
    s = _session(radius=4)
    src = np.array([[10.0, 12.0, 11.0], [3.0, 3.0, 3.0]])
    tgt = src + [[1.0, -2.0, 0.5], [0.0, 1.0, 0.0]]
    s.set_landmarks(src, tgt)
    assert isinstance(s.truth, LandmarkTruth)
    res = s.compute(s.request((11, 12, 11)))  # 2 mm from landmark 0 along z
    assert res.truth.landmark == 0 and res.truth.distance_mm == pytest.approx(2.0)
    np.testing.assert_allclose(res.truth.target_zyx, [12.0, 10.0, 11.5])
    expect = np.linalg.norm((np.subtract(res.target_zyx, [12.0, 10.0, 11.5])) * [2.0, 1.5, 1.25])
    assert res.error_mm == pytest.approx(expect)
    assert "nearest landmark #0, 2.0 mm away" in __import__("napari_meddift.explorer", fromlist=["x"]).format_status(
        res, (0, 0, 0), (0, 0, 0))


def test_match_landmarks_gives_the_live_answer_per_landmark():
    s = _session(radius=3)
    rng = np.random.default_rng(2)
    src = np.stack([rng.integers(2, n - 2, 6) for n in SHAPE], 1).astype(float)
    s.set_landmarks(src, src + 1)
    seen = []
    lm = s.match_landmarks(progress=lambda d, n, m: seen.append(d))
    assert seen[-1] == len(src)
    for i in range(len(src)):
        live = s.compute(s.request(src[i]))
        assert tuple(lm.predicted[i]) == live.target_zyx
        assert lm.rivalry[i] == pytest.approx(live.rivalry)
    np.testing.assert_allclose(lm.errors_mm, np.linalg.norm((lm.predicted - src - 1) * [2.0, 1.5, 1.25], axis=1))
    assert lm.shown(lm.errors_mm.max()).sum() >= 1 and lm.shown(0).all()
    assert math.isfinite(lm.rivalry_error_correlation())


def test_timesteps_switch_and_compare_strip():
    s = _session(radius=3)
    other = Matcher(_levels(5), _levels(6), SHAPE, SHAPE)
    s.add_timestep(100, other)
    assert s.timesteps == [20, 100]
    s.state.timestep = 100
    res = s.compute(s.request((5, 6, 7)))
    np.testing.assert_allclose(
        res.fused, Matcher(_levels(5), _levels(6), SHAPE, SHAPE).similarity((5, 6, 7), (2, 2, 3)).fused, atol=1e-6
    )  # 3 mm on (2.0, 1.5, 1.25)
    s.state.compare_timesteps = True
    res = s.compute(s.request((5, 6, 7)))
    assert sorted(res.compare) == [20, 100]
    np.testing.assert_allclose(
        res.compare[20], Matcher(_levels(0), _levels(1), SHAPE, SHAPE).similarity((5, 6, 7), (2, 2, 3)).fused, atol=1e-6
    )
    with pytest.raises(MedDiftError, match="other images"):
        s.add_timestep(50, Matcher(_levels(0), _levels(1), SHAPE, (20, 24, 21)))


def test_parse_timesteps():
    assert parse_timesteps("200, 0,20,20") == (0, 20, 200)
    for bad in ("", "a", "1000"):
        with pytest.raises(MedDiftError):
            parse_timesteps(bad)


@pytest.mark.slow
def test_extract_timesteps_with_the_connected_stores_recipe(tmp_path):
    from napari_meddift.backbones import get_backbone
    from napari_meddift.backbones.base import ExtractionSettings
    from napari_meddift.backbones.extraction import extract_to_store
    from napari_meddift.explorer import extract_timesteps
    from napari_meddift.io.volume import Volume

    rng = np.random.default_rng(0)
    vol = Volume(array=(rng.random((24, 24, 24)) * 1400 - 1000).astype(np.float32), spacing=(2.5,) * 3,
                 origin=(0.0,) * 3, name="tiny")
    ref, _ = extract_to_store(vol, get_backbone("mini", random_weights=True),
                              ExtractionSettings(timestep=20, device="cpu"), tmp_path / "ref.zarr")
    steps = []
    pairs = extract_timesteps(vol, vol, ref, (0, 50), tmp_path / "cache", progress=lambda d, n, m: steps.append(d))
    assert sorted(pairs) == [0, 50] and steps[-1] == 4
    for t, (a, b) in pairs.items():
        assert a.attrs["timestep"] == t and a.attrs["weights_hash"] == ref.attrs["weights_hash"]
    again = extract_timesteps(vol, vol, ref, (50,), tmp_path / "cache")  # cached: the same store
    assert again[50][0].path == pairs[50][0].path
