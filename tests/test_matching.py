"""The exact native-resolution search equals the dense reference (upsample, normalise, cosine)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dense_reference import DenseMatcher, dense_level
from napari_meddift.errors import MedDiftError
from napari_meddift.matching import Matcher, MatchTable, axis_taps

SRC_SHAPE = (13, 11, 17)
TGT_SHAPE = (12, 14, 15)
# odd native grids, non-integer scale factors, one level at image size, one finer than the image
SRC_NATIVE = {"a": (5, 3, 4, 5), "b": (4, 7, 6, 9), "same": (3, 13, 11, 17), "fine": (2, 15, 12, 19)}
TGT_NATIVE = {"a": (5, 4, 5, 4), "b": (4, 6, 8, 7), "same": (3, 12, 14, 15), "fine": (2, 14, 16, 16)}
ATOL = 2e-5


def _levels(native, seed, dtype=np.float32):
    rng = np.random.default_rng(seed)
    # a shared offset makes cosines large and argmaxes meaningful; fp16 exercises the upcast
    return {n: (rng.standard_normal(s) + 0.5).astype(dtype) for n, s in native.items()}


def _corner_points(shape):
    z, y, x = (s - 1 for s in shape)
    return [(0, 0, 0), (z, y, x), (0, y, x), (z, 0, 0), (0, y // 2, x), (z // 2, y, 0), (z // 2, y // 2, x // 2),
            (3, 7, 11)]


@pytest.fixture(scope="module")
def pair():
    return _levels(SRC_NATIVE, 1), _levels(TGT_NATIVE, 2)


@pytest.fixture(scope="module")
def dense(pair):
    return DenseMatcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)


def _close(a, b, atol=ATOL):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=atol, rtol=0)


def test_axis_taps_are_pytorchs():
    # interpolate a ramp: the result must be (1 - lam) * i0 + lam * min(i0 + 1, n - 1)
    for n, out in [(3, 13), (7, 11), (13, 13), (15, 13), (16, 208)]:
        ramp = torch.arange(n, dtype=torch.float32)[None, None]
        ref = torch.nn.functional.interpolate(ramp, size=out, mode="linear", align_corners=False)[0, 0].numpy()
        i0, lam = axis_taps(n, out)
        ours = (1 - lam) * i0 + lam * np.minimum(i0 + 1, n - 1)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=n * 1e-7)
        assert np.all((lam >= 0) & (lam <= 1)) and np.all((i0 >= 0) & (i0 < n))


def test_query_is_dense_descriptor(pair):
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    for p in _corner_points(SRC_SHAPE):
        q = m.query(p)
        for n in SRC_NATIVE:
            ref = dense_level(pair[0][n], SRC_SHAPE)[(slice(None),) + tuple(p)].numpy()
            _close(q[n], ref, 1e-6)
            assert abs(np.linalg.norm(q[n]) - 1) < 1e-5


@pytest.mark.parametrize("radius", [0, 1, 3, 6, None])
def test_similarity_equals_dense(pair, dense, radius):
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    for p in _corner_points(SRC_SHAPE):
        res = m.similarity(p, radius, per_level=True)
        box, fused, per = dense.similarity(p, radius)
        assert res.box == box
        assert res.fused.dtype == np.float32 and res.fused.shape == fused.shape
        _close(res.fused, fused)
        assert set(res.per_level) == set(per)
        for n in per:
            _close(res.per_level[n], per[n])


def test_similarity_with_cached_norms_equals_dense(pair, dense):
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    m.similarity((0, 0, 0), None)  # builds the full norm maps; windows then slice them
    for p in _corner_points(SRC_SHAPE):
        res = m.similarity(p, 4)
        _close(res.fused, dense.similarity(p, 4)[1])


def test_cache_norms_windows_read_the_full_maps(pair, dense):
    """``cache_norms``: the first window builds both sides' maps (or ``warm_norms`` does), and
    windows and consistency checks then agree with the dense reference and the uncached matcher."""
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    m.cache_norms = True
    assert m._tgt.level("a").inv_norm_full is None
    plain = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    for p in _corner_points(SRC_SHAPE):
        _close(m.similarity(p, 3).fused, dense.similarity(p, 3)[1])
        a, b = m.match(p, 3), plain.match(p, 3)
        assert (a.target_zyx, a.fb_distance) == (b.target_zyx, b.fb_distance)
        _close(a.score, b.score, 1e-6)
    assert all(m._tgt.level(n).inv_norm_full is not None for n in m.levels)
    assert all(plain._tgt.level(n).inv_norm_full is None for n in plain.levels)
    fresh = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    fresh.warm_norms(["a"])
    assert fresh._tgt.level("a").inv_norm_full is not None and fresh._src.level("a").inv_norm_full is not None
    assert fresh._tgt.level("b").inv_norm_full is None


def test_window_centre_mapping(pair):
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    res = m.similarity((12, 0, 8), 2)
    # round((u + 0.5) * T / S - 0.5): 12 -> 11.04 -> 11 ; 0 -> 0.136 -> 0 ; 8 -> 7.44 -> 7
    assert res.center_zyx == (11, 0, 7)
    assert res.box == (slice(9, 12), slice(0, 3), slice(5, 10))
    same = Matcher(pair[0], pair[0], SRC_SHAPE, SRC_SHAPE)
    assert same.similarity((12, 0, 8), 2).center_zyx == (12, 0, 8)


@pytest.mark.parametrize("radius", [2, 5, None])
def test_match_argmax_equals_dense(pair, dense, radius):
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    for p in _corner_points(SRC_SHAPE):
        got = m.match(p, radius, check_consistency=False)
        want, want_score = dense.match(p, radius)
        _close(got.score, want_score)
        if got.target_zyx != want:  # a float tie: both voxels must score the same
            box, fused, _ = dense.similarity(p, radius)
            at = tuple(g - b.start for g, b in zip(got.target_zyx, box))
            _close(fused[at], want_score, 1e-6)
        assert got.consistent is None and math.isnan(got.fb_distance)


def test_ambiguity_definition(pair, dense):
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    for p in [(6, 5, 8), (0, 0, 0)]:
        for radius, excl in [(4, 2), (None, 1), (None, 3)]:
            got = m.match(p, radius, exclusion=excl, check_consistency=False)
            box, fused, _ = dense.similarity(p, radius)
            idx = np.unravel_index(int(np.argmax(fused)), fused.shape)
            rest = fused.copy()
            rest[tuple(slice(max(0, i - excl), i + excl + 1) for i in idx)] = -np.inf
            _close(got.ambiguity, rest.max() / fused.max(), 1e-5)
    # window no larger than the exclusion zone: no rival, nan
    assert math.isnan(m.match((6, 5, 8), 1, exclusion=2, check_consistency=False).ambiguity)


def test_best_of_a_shown_map_is_the_match(pair, dense):
    """A viewer reusing the map it displays gets exactly what match() would report."""
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    for p in [(6, 5, 8), (0, 0, 0), (12, 10, 16)]:
        for radius in (3, None):
            sim = m.similarity(p, radius)
            got = m.match(p, radius, exclusion=2, check_consistency=False)
            target, score, ambiguity = sim.best(exclusion=2)
            assert target == tuple(got.target_zyx)
            _close(score, got.score, 1e-6)
            _close(ambiguity, got.ambiguity, 1e-6)
            box, fused, _ = dense.similarity(p, radius)
            _close(score, fused.max())


def test_weights_and_level_subsets(pair):
    names = ["b", "same"]
    w = {"b": 3.0, "same": 0.5}
    ref = DenseMatcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE, names=names, weights=w)
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE, levels=names, weights=w)
    for p in _corner_points(SRC_SHAPE)[:4]:
        for radius in (3, None):
            res = m.similarity(p, radius, per_level=True)
            _, fused, per = ref.similarity(p, radius)
            _close(res.fused, fused)
            assert set(res.per_level) == set(names)
            _close(res.fused, (3.0 * per["b"] + 0.5 * per["same"]) / 3.5)
    # live change of fusion on the same matcher
    m.set_levels(["a"])
    ref_a = DenseMatcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE, names=["a"])
    _close(m.similarity((4, 4, 4), None).fused, ref_a.similarity((4, 4, 4), None)[1])
    m.set_levels(None, {"a": 1.0, "fine": 2.0})
    ref_all = DenseMatcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE, weights={"a": 1.0, "fine": 2.0})
    _close(m.similarity((4, 4, 4), 5).fused, ref_all.similarity((4, 4, 4), 5)[1])


def test_bad_levels_and_weights(pair):
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    with pytest.raises(MedDiftError, match="not held"):
        m.set_levels(["nope"])
    with pytest.raises(MedDiftError, match="at least one"):
        m.set_levels([])
    with pytest.raises(MedDiftError, match="non-negative"):
        m.set_levels(["a"], {"a": 0.0})
    with pytest.raises(MedDiftError, match="outside"):
        m.similarity((13, 0, 0), 3)
    bad = dict(pair[1])
    bad["a"] = bad["a"][:3]
    with pytest.raises(MedDiftError, match="channels"):
        Matcher(pair[0], bad, SRC_SHAPE, TGT_SHAPE)


def test_identity_is_consistent(pair):
    src = pair[0]
    m = Matcher(src, src, SRC_SHAPE, SRC_SHAPE)
    for p in _corner_points(SRC_SHAPE):
        for radius in (3, None):
            got = m.match(p, radius)
            assert got.target_zyx == tuple(p)
            assert abs(got.score - 1.0) < 1e-5
            assert got.fb_distance == 0.0 and got.consistent is True


def test_match_points_equals_single_matches(pair):
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    pts = np.array(_corner_points(SRC_SHAPE))
    calls = []
    for radius in (3, None):
        table = m.match_points(pts, radius, progress=lambda d, t, msg: calls.append((d, t)))
        assert isinstance(table, MatchTable) and len(table) == len(pts)
        assert calls[-1] == (2 * len(pts), 2 * len(pts))
        for i, p in enumerate(pts):
            one = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE).match(tuple(p), radius)
            assert tuple(table.target_zyx[i]) == one.target_zyx
            _close(table.score[i], one.score)
            _close(table.fb_distance[i], one.fb_distance, 1e-6)
            assert bool(table.consistent[i]) == one.consistent
            _close(table.ambiguity[i], one.ambiguity, 1e-5)
        rows = table.to_rows()
        assert rows[0]["source_z"] == 0
        assert set(rows[0]) >= {"target_x", "score", "ambiguity", "fb_distance", "consistent"}


def test_forward_backward_distance(pair):
    # consistency is the back-match of the target point, computed with roles swapped
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    back = DenseMatcher(pair[1], pair[0], TGT_SHAPE, SRC_SHAPE)
    fwd = DenseMatcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    for p in _corner_points(SRC_SHAPE):
        got = m.match(p, 4)
        t, _ = fwd.match(p, 4)
        b, _ = back.match(t, 4)
        if got.target_zyx == t:
            _close(got.fb_distance, np.linalg.norm(np.subtract(b, p)), 1e-6)
            assert got.consistent == (got.fb_distance <= 1.5)


def test_backward_follows_every_search_setting(pair):
    """The backward matcher of a consistency check searches as its forward one: every knob of
    SearchSettings is handed over, also when it changes after the first back-match."""
    from dataclasses import fields

    from napari_meddift.matching.matcher import SearchSettings

    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    assert SearchSettings.of(m) == SearchSettings() == SearchSettings.of(m.backward)
    changed = SearchSettings(cpu_threads=None, global_search="dense", global_batch=3, global_threads=2,
                             cache_norms=True)
    assert all(getattr(changed, f.name) != f.default for f in fields(SearchSettings))
    changed.apply(m)
    assert SearchSettings.of(m.backward) == changed


def test_float16_and_torch_inputs(pair):
    s16 = {n: v.astype(np.float16) for n, v in pair[0].items()}
    t16 = {n: torch.from_numpy(v.astype(np.float16)) for n, v in pair[1].items()}
    ref = DenseMatcher({n: v.astype(np.float32) for n, v in s16.items()},
                       {n: v.float() for n, v in t16.items()}, SRC_SHAPE, TGT_SHAPE)
    m = Matcher(s16, t16, SRC_SHAPE, TGT_SHAPE)
    for p in _corner_points(SRC_SHAPE)[:3]:
        res = m.similarity(p, None)
        assert res.fused.dtype == np.float32
        _close(res.fused, ref.similarity(p, None)[1])


def test_zero_feature_region():
    # an all-zero block (e.g. padding outside the body): cosines there are 0, never nan
    src = _levels({"a": (4, 5, 6, 7), "b": (3, 13, 11, 17)}, 5)
    tgt = _levels({"a": (4, 5, 6, 7), "b": (3, 13, 11, 17)}, 6)
    for lv in (src, tgt):
        lv["a"][:, :2] = 0
        lv["b"][:, :6] = 0
    m = Matcher(src, tgt, SRC_SHAPE, SRC_SHAPE)
    ref = DenseMatcher(src, tgt, SRC_SHAPE, SRC_SHAPE)
    for p in [(0, 0, 0), (1, 5, 5), (6, 5, 8), (12, 10, 16)]:
        for radius in (4, None):
            res = m.similarity(p, radius, per_level=True)
            assert np.all(np.isfinite(res.fused))
            _, fused, per = ref.similarity(p, radius)
            _close(res.fused, fused)
            for n in per:
                _close(res.per_level[n], per[n])
    # a zero query gives an all-zero map
    assert np.all(m.similarity((0, 0, 0), None, per_level=True).per_level["b"] == 0)


def test_from_stores_duck_type(pair):
    class FakeStore:
        def __init__(self, levels, shape):
            self.levels, self.image_shape = levels, shape
            self.level_names = list(levels)

        def load_levels(self, names=None):
            names = self.level_names if names is None else names
            return {n: self.levels[n].astype(np.float32) for n in names}

    m = Matcher.from_stores(FakeStore(pair[0], SRC_SHAPE), FakeStore(pair[1], TGT_SHAPE), levels=["a", "b"])
    assert m.levels == ["a", "b"] and m.target_shape == TGT_SHAPE
    ref = DenseMatcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE, names=["a", "b"])
    _close(m.similarity((5, 5, 5), 3).fused, ref.similarity((5, 5, 5), 3)[1])
    with pytest.raises(MedDiftError, match="lacks level"):
        Matcher.from_stores(FakeStore(pair[0], SRC_SHAPE), FakeStore(pair[1], TGT_SHAPE), levels=["zz"])


# ---- batch global search (slab-streamed, "stream") ---------------------------------------

from napari_meddift.matching import global_kernel as _global_kernel  # noqa: E402
from napari_meddift.matching.global_search import GlobalSearch  # noqa: E402


@pytest.fixture(params=["fused", "tensor"])
def cpu_kernel(request, monkeypatch):
    """Both CPU paths of the batch search: the fused numba kernel (default) and the tensor slabs
    (the path a GPU takes)."""
    monkeypatch.setattr(GlobalSearch, "cpu_kernel", request.param)
    return request.param


def _smooth_levels(native, seed, sigma=1.5):
    """Spatially correlated random features (like real decoder features)."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, (c, *shape) in native.items():
        x = torch.from_numpy(rng.standard_normal((c, *shape)).astype(np.float32))
        k = torch.arange(-3, 4, dtype=torch.float32)
        k = torch.exp(-(k**2) / (2 * sigma**2))
        k = k / k.sum()
        for d in range(3):
            shp = [1, 1, 1]
            shp[d] = 7
            pad = [3 if i == d else 0 for i in range(3)]
            x = torch.nn.functional.conv3d(x[:, None], k.view(1, 1, *shp), padding=pad)[:, 0]
        out[n] = (x / x.std() + 0.3).numpy()
    return out


def _same_match(a: MatchTable, b: MatchTable, fused_of=None):
    """Equal matches up to float ties: a differing target must score the same (within 1e-6)."""
    _close(a.score, b.score, 1e-6)
    for i in np.flatnonzero(np.any(a.target_zyx != b.target_zyx, axis=1)):
        if fused_of is None:
            raise AssertionError(f"point {i}: {a.target_zyx[i]} != {b.target_zyx[i]}")
        fused = fused_of(i)
        _close(fused[tuple(a.target_zyx[i])], fused[tuple(b.target_zyx[i])], 1e-6)
    _close(a.ambiguity, b.ambiguity, 1e-5)
    assert np.array_equal(np.isnan(a.ambiguity), np.isnan(b.ambiguity))


@pytest.mark.parametrize("block", [2, 3, 4])
def test_batch_global_equals_dense_reference(pair, dense, monkeypatch, block, cpu_kernel):
    """Argmax, score and ambiguity (exclusion 1 and 3) against the dense reference's whole maps."""
    monkeypatch.setattr(GlobalSearch, "block", block)
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    assert m.global_search == "stream"
    pts = np.array(_corner_points(SRC_SHAPE))
    for excl in (1, 3):
        table = m.match_points(pts, None, check_consistency=False, exclusion=excl)
        for i, p in enumerate(pts):
            want, want_score = dense.match(tuple(p), None)
            _, fused, _ = dense.similarity(tuple(p), None)
            _close(table.score[i], want_score)
            if tuple(table.target_zyx[i]) != want:  # a float tie
                _close(fused[tuple(table.target_zyx[i])], want_score, 1e-6)
            idx = np.unravel_index(int(np.argmax(fused)), fused.shape)
            rest = fused.copy()
            rest[tuple(slice(max(0, j - excl), j + excl + 1) for j in idx)] = -np.inf
            _close(table.ambiguity[i], rest.max() / fused.max(), 1e-5)


@pytest.mark.parametrize("block", [3, 4])
def test_batch_global_rival_when_the_last_slab_ends_inside_a_block_row(pair, monkeypatch, block, cpu_kernel):
    """Target depth 13: with blocks of 4 the tensor path's last slab (planes 8-12) spans two block
    rows (blocks of 3: slabs of 6, the last one a single plane). Every block maximum must be the
    map's, so the ambiguity is the dense reference's."""
    monkeypatch.setattr(GlobalSearch, "block", block)
    tgt, src = pair  # the 13-deep source volume becomes the target
    dense = DenseMatcher(tgt, src, TGT_SHAPE, SRC_SHAPE)
    m = Matcher(tgt, src, TGT_SHAPE, SRC_SHAPE)
    pts = np.array(_corner_points(TGT_SHAPE))
    table = m.match_points(pts, None, check_consistency=False, exclusion=1)
    for i, p in enumerate(pts):
        _, fused, _ = dense.similarity(tuple(p), None)
        idx = tuple(table.target_zyx[i])
        _close(fused[idx], fused.max(), 1e-6)
        rest = fused.copy()
        rest[tuple(slice(max(0, j - 1), j + 2) for j in idx)] = -np.inf
        _close(table.ambiguity[i], rest.max() / fused[idx], 1e-5)
    if cpu_kernel == "tensor":  # every block maximum, not only those the rival happened to use
        search = GlobalSearch({k: m._tgt.level(k) for k in m.levels}, m.weights, m._tgt.shape)
        with torch.no_grad():
            _, _, bmax = search._maps_tensor(search.node_dots(m._queries(pts[:2])), 8)
        for i in range(2):
            fused = dense.similarity(tuple(pts[i]), None)[1]
            pad = [(0, -s % block) for s in fused.shape]
            f = np.pad(fused, pad, constant_values=-np.inf)
            nb = [s // block for s in f.shape]
            want = f.reshape(nb[0], block, nb[1], block, nb[2], block).max(axis=(1, 3, 5))
            _close(bmax[i].numpy(), want, 1e-5)


@pytest.mark.parametrize("smooth", [False, True])
def test_batch_global_equals_old_search_randomized(monkeypatch, smooth, cpu_kernel):
    """Random points, odd shapes, weights, forward-backward: the batch path equals the per-point
    whole-map search point for point, with several batch and block sizes."""
    make = _smooth_levels if smooth else _levels
    src, tgt = make(SRC_NATIVE, 11), make(TGT_NATIVE, 12)
    w = {"a": 0.5, "b": 1.0, "same": 2.0, "fine": 1.0}
    rng = np.random.default_rng(5)
    pts = np.stack([rng.integers(0, s, 60) for s in SRC_SHAPE], 1)
    old = Matcher(src, tgt, SRC_SHAPE, TGT_SHAPE, weights=w)
    old.global_search = "dense"
    want = old.match_points(pts, None)
    for block, batch in [(4, None), (3, 7), (2, 1)]:
        monkeypatch.setattr(GlobalSearch, "block", block)
        m = Matcher(src, tgt, SRC_SHAPE, TGT_SHAPE, weights=w)
        m.global_batch = batch
        got = m.match_points(pts, None)
        _same_match(got, want, lambda i: old.similarity(tuple(pts[i]), None).fused)
        np.testing.assert_array_equal(got.consistent, want.consistent)


def test_batch_global_on_tiny_volume(cpu_kernel):
    """No voxel outside the exclusion cube: no rival, nan ambiguity, as the whole-map search."""
    native = {"a": (4, 2, 3, 2)}
    shape = (3, 3, 2)
    m = Matcher(_levels(native, 1), _levels(native, 2), shape, shape)
    pts = np.array([(0, 0, 0), (2, 2, 1), (1, 2, 0)])
    got = m.match_points(pts, None, exclusion=2)
    assert np.all(np.isnan(got.ambiguity))
    m.global_search = "dense"
    _same_match(got, m.match_points(pts, None, exclusion=2))


def test_batch_global_ties_take_first_voxel(cpu_kernel):
    """Every target voxel holds the same feature (image = native grid, so no interpolation
    rounding): all scores tie exactly and the first voxel in C order wins, as in np.argmax."""
    shape = (7, 9, 8)
    src = _levels({"a": (6, *shape)}, 3)
    tgt = {"a": np.broadcast_to(src["a"][:, 2:3, 4:5, 1:2], src["a"].shape).copy()}
    m = Matcher(src, tgt, shape, shape)
    pts = np.array([(0, 0, 0), (3, 4, 5), (6, 8, 7)])
    got = m.match_points(pts, None, check_consistency=False)
    assert np.all(got.target_zyx == 0)
    m.global_search = "dense"
    want = m.match_points(pts, None, check_consistency=False)
    np.testing.assert_array_equal(want.target_zyx, got.target_zyx)
    _close(got.score, want.score, 1e-6)


def test_fused_kernel_runs_by_default_on_the_cpu(pair, monkeypatch):
    """numba is a dependency: the CPU batch search goes through the fused kernel, once per batch,
    on every thread it is given, and falls back to the tensor path only where asked."""
    assert _global_kernel.available()
    calls = []
    search = _global_kernel.FusedPlanes.search
    monkeypatch.setattr(_global_kernel.FusedPlanes, "search",
                        lambda self, q, excl, threads: calls.append(threads) or search(self, q, excl, threads))
    m = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    m.global_batch, m.global_threads = 4, 2
    pts = np.array(_corner_points(SRC_SHAPE))
    got = m.match_points(pts, None)
    assert calls == [2] * (2 * -(-len(pts) // 4))  # forward and backward batches
    monkeypatch.setattr(GlobalSearch, "cpu_kernel", "tensor")
    calls.clear()
    _same_match(got, m.match_points(pts, None))
    assert calls == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_global_on_cuda_equals_cpu(pair):
    """The same code on a GPU gives the CPU's matches (float ties aside)."""
    rng = np.random.default_rng(9)
    pts = np.stack([rng.integers(0, s, 40) for s in SRC_SHAPE], 1)
    cpu = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE)
    cpu.global_search = "dense"
    want = cpu.match_points(pts, None)
    gpu = Matcher(pair[0], pair[1], SRC_SHAPE, TGT_SHAPE, device="cuda")
    got = gpu.match_points(pts, None)
    _same_match(got, want, lambda i: cpu.similarity(tuple(pts[i]), None).fused)
