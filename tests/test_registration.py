"""Dense registration: exact cost volume, recovery of known smooth deformations, the ITK field file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from napari_meddift.errors import MedDiftError
from napari_meddift.matching import Matcher
from napari_meddift.registration import DisplacementField, Geometry, RegistrationSettings, register
from napari_meddift.registration.cost import cost_volume, lattice


def _levels(rng, shape, spec):
    return {n: torch.as_tensor(rng.standard_normal((c, *s)).astype(np.float32)) for n, (c, s) in spec.items()}


@pytest.mark.parametrize("tshape", [(12, 14, 16), (11, 15, 17)])
def test_cost_volume_equals_matcher_windows(tshape):
    """Every entry is the matcher's exact fused cosine at that target voxel (0 outside the image)."""
    rng = np.random.default_rng(0)
    sshape = (12, 14, 16)
    spec_s = {"a": (5, (6, 7, 8)), "b": (3, (12, 14, 16))}
    spec_t = {"a": (5, (5, 8, 9)), "b": (3, tshape)}
    src, tgt = _levels(rng, sshape, spec_s), _levels(rng, tshape, spec_t)
    weights = {"a": 1.0, "b": 3.0}
    nodes = [lattice(n, 4) for n in sshape]
    bases = [
        np.clip(np.rint((n + 0.5) * t / s - 0.5), 0, t - 1).astype(np.int64) for n, s, t in zip(nodes, sshape, tshape)
    ]
    sim, used = cost_volume(src, tgt, weights, sshape, tshape, nodes, bases, radius=4, step=2, budget_floats=5000)
    matcher = Matcher({k: v.numpy() for k, v in src.items()}, {k: v.numpy() for k, v in tgt.items()}, sshape, tshape,
                      weights=weights)
    offs = np.arange(-4, 5, 2)
    checked = 0
    for kz, ky, kx in [(0, 0, 0), (1, 2, 3), (2, 2, 1), (2, 1, 3)]:
        p = (nodes[0][kz], nodes[1][ky], nodes[2][kx])
        res = matcher.similarity(p, radius=None)  # the whole target map
        for a, b, c in [(0, 0, 0), (2, 2, 2), (4, 1, 3), (1, 4, 0), (3, 3, 4)]:
            t = (used[0][kz] + offs[a], used[1][ky] + offs[b], used[2][kx] + offs[c])
            inside = all(0 <= v < n for v, n in zip(t, tshape))
            want = float(res.fused[t]) if inside else 0.0
            assert float(sim[kz, ky, kx, a, b, c]) == pytest.approx(want, abs=2e-5)
            checked += inside
    assert checked >= 10


def _smooth_texture(rng, shape, sigma=1.2):
    t = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    return (t / t.std() * 300.0).astype(np.float32)


def _known_field(shape, amp=2.0):
    """A smooth, invertible displacement (3, Z, Y, X) in voxels (sines, a few voxels)."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    u = np.stack([amp * np.sin(2 * np.pi * y / shape[1]) * np.cos(np.pi * x / shape[2]),
                  0.8 * amp * np.sin(2 * np.pi * z / shape[0]),
                  0.6 * amp * np.cos(2 * np.pi * (y + z) / (shape[1] + shape[0]))])
    return u


def test_known_smooth_deformation_recovered_from_descriptors():
    """source(x) = target(x + u(x)): the field must put source voxel x at x + u(x)."""
    from napari_meddift.backbones import get_backbone
    from napari_meddift.io.volume import Volume

    rng = np.random.default_rng(3)
    shape = (36, 40, 44)
    target = _smooth_texture(rng, shape)
    u = _known_field(shape)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    source = ndi.map_coordinates(target, grid + u, order=3, mode="nearest").astype(np.float32)
    mind = get_backbone("mind-ssc")
    ls = mind.extract(Volume(source, (2.0, 2.0, 2.0)))
    lt = mind.extract(Volume(target, (2.0, 2.0, 2.0)))
    geo = Geometry(shape, (2.0, 2.0, 2.0))
    s = RegistrationSettings(grid_spacing=2, search_radius=4, search_step=1, iterations=40, adam_spacing=2,
                             smoothness=0.05, device="cpu")
    res = register(ls, lt, geo, geo, s)
    inner = (slice(6, -6),) * 3
    err = np.linalg.norm(res.field.positions - (grid + u), axis=0)[inner]
    ident = np.linalg.norm(u, axis=0)[inner]
    assert err.mean() < 0.35 * ident.mean(), (err.mean(), ident.mean())
    assert err.mean() < 0.6
    assert res.jacobian.folding_percent < 1.0
    # points through the field agree with the dense positions
    pts = np.array([[10.0, 12.0, 20.0], [18.5, 20.25, 22.0]])
    want = np.stack(
        [ndi.map_coordinates(res.field.positions[a].astype(np.float64), pts.T, order=1) for a in range(3)], 1
    )
    assert np.allclose(res.field.map_points(pts), want, atol=1e-4)


@pytest.mark.slow
def test_demo_pair_recovered_with_mind(shared_data):
    """The demo generator's breathing deformation: MIND-SSC + field beats identity by far, no folding."""
    from napari_meddift.backbones import get_backbone
    from napari_meddift.evaluation.metrics import tre_mm
    from napari_meddift.synthetic.demo import load_demo_pair

    inh, exh, src, tgt = load_demo_pair()
    mind = get_backbone("mind-ssc")
    res = register(mind.extract(inh), mind.extract(exh), Geometry.of(inh), Geometry.of(exh),
                   RegistrationSettings(device="cpu", iterations=40))
    tre = tre_mm(res.field.map_points(src), tgt, exh.spacing).mean()
    ident = tre_mm(src, tgt, exh.spacing).mean()
    assert tre < 0.3 * ident
    assert res.jacobian.folding_percent < 1.0


def _rotated_geometry(shape):
    c, s = np.cos(0.3), np.sin(0.3)
    d = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([-1.0, -1.0, 1.0])  # a rotation (det +1)
    return Geometry(shape, (2.5, 1.5, 2.0), (-30.0, 12.0, 5.0), tuple(d.reshape(-1)))


def test_field_file_round_trips_and_warps_like_sitk_resample(tmp_path):
    import SimpleITK as sitk

    from napari_meddift.io.volume import Volume

    shape = (10, 12, 14)
    src, tgt = _rotated_geometry(shape), Geometry((11, 12, 13), (2.0, 1.6, 2.1), (-28.0, 10.0, 6.0),
                                                  _rotated_geometry(shape).direction)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    pos = grid * 0.95 + 0.3 + 0.5 * _known_field(shape, 1.0)
    fld = DisplacementField(pos.astype(np.float32), src, tgt)
    path = fld.write(tmp_path / "field.nii.gz")
    back = DisplacementField.read(path, tgt, source=src)
    assert np.allclose(back.positions, fld.positions, atol=2e-3)

    rng = np.random.default_rng(1)
    moving = Volume(ndi.gaussian_filter(rng.standard_normal(tgt.shape), 1.5).astype(np.float32) * 100,
                    tgt.spacing, tgt.origin, np.reshape(tgt.direction, (3, 3)))
    warped = fld.warp(moving, default_value=0.0)
    # reference 1: SimpleITK on the file as written
    tx = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    from napari_meddift.io.volume import volume_to_sitk

    ref = sitk.GetArrayFromImage(sitk.Resample(volume_to_sitk(moving), src.reference_image(), tx, sitk.sitkLinear, 0.0))
    assert np.allclose(warped.array, ref, atol=1e-3)
    # reference 2: trilinear interpolation at the field's target voxels (direction/LPS handled right)
    inside = np.all((pos > 0.5) & (pos < np.array(tgt.shape)[:, None, None, None] - 1.5), axis=0)
    direct = ndi.map_coordinates(moving.array.astype(np.float64), pos, order=1)
    assert inside.sum() > 200
    assert np.allclose(warped.array[inside], direct[inside], atol=1e-2)
    # the physical displacement is world(target position) - world(source voxel), x, y, z order
    p = np.array([3, 4, 5])
    want = tgt.to_world(pos[:, 3, 4, 5]) - src.to_world(p)
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[3, 4, 5]
    assert np.allclose(got, want[::-1], atol=1e-4)
    assert np.allclose(
        tx.TransformPoint(tuple(src.to_world(p)[::-1].tolist())), tgt.to_world(pos[:, 3, 4, 5])[::-1], atol=1e-3
    )


def test_wrong_shape_field_is_one_clear_error(tmp_path):
    geo = Geometry((4, 5, 6))
    with pytest.raises(MedDiftError, match="must have shape"):
        DisplacementField(np.zeros((3, 4, 5, 7), np.float32), geo, geo)
    f = DisplacementField(np.zeros((3, 4, 5, 6), np.float32), geo, geo)
    path = f.write(tmp_path / "f.mha")
    with pytest.raises(MedDiftError, match="give the field made for this source"):
        DisplacementField.read(path, geo, source=Geometry((4, 5, 7)))
    with pytest.raises(MedDiftError, match="3 components"):
        import SimpleITK as sitk

        sitk.WriteImage(sitk.Image([6, 5, 4], sitk.sitkFloat32), str(tmp_path / "scalar.mha"))
        DisplacementField.read(tmp_path / "scalar.mha", geo)


def test_mismatched_levels_and_settings_are_clear_errors():
    rng = np.random.default_rng(0)
    geo = Geometry((8, 8, 8))
    a = _levels(rng, geo.shape, {"a": (4, (8, 8, 8))})
    b = _levels(rng, geo.shape, {"a": (5, (8, 8, 8))})
    with pytest.raises(MedDiftError, match="channels"):
        register(a, b, geo, geo, RegistrationSettings(device="cpu"))
    with pytest.raises(MedDiftError, match="no common descriptor level"):
        register(a, {"z": b["a"]}, geo, geo, RegistrationSettings(device="cpu"))
    with pytest.raises(MedDiftError, match="search radius"):
        register(a, a, geo, geo, RegistrationSettings(search_radius=1, search_step=2, device="cpu"))
    with pytest.raises(MedDiftError, match="same shape"):
        register(a, a, geo, Geometry((8, 8, 9)), RegistrationSettings(inverse_consistent=True, device="cpu"))


def test_identical_descriptors_give_identity_and_inverse_consistency_runs():
    rng = np.random.default_rng(2)
    shape = (16, 18, 20)
    lv = {"m": torch.as_tensor(ndi.gaussian_filter(rng.standard_normal((6, *shape)), (0, 1, 1, 1)).astype(np.float32))}
    geo = Geometry(shape)
    for ic in (False, True):
        res = register(lv, lv, geo, geo, RegistrationSettings(grid_spacing=2, search_radius=4, iterations=10,
                                                              inverse_consistent=ic, device="cpu"))
        assert np.abs(res.field.displacement_voxels).max() < 0.25
        assert res.jacobian.folding_percent == 0.0


# ---------------------------------------------------------------- uniGradICON wrapper


def test_unigradicon_field_from_phi_against_a_known_map():
    """A known map on the network grid comes back on the source grid in target voxels."""
    from napari_meddift.registration.unigradicon import field_from_phi

    net = (20, 22, 24)
    sshape, tshape = (10, 11, 13), (14, 12, 9)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) / (n - 1) for n in net], indexing="ij"))
    a = np.array([0.9, 1.05, 0.95])[:, None, None, None]
    phi = torch.as_tensor((a * idx + 0.03)[None], dtype=torch.float32)  # affine in [0, 1] coordinates
    pos = field_from_phi(phi, sshape, tshape)
    p = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in sshape], indexing="ij"))
    # independent chain: source voxel -> network index -> [0, 1] -> phi -> network index -> target voxel
    n = np.array(net, float)[:, None, None, None]
    v = ((p + 0.5) * n / np.array(sshape, float)[:, None, None, None] - 0.5) / (n - 1)
    v = np.clip(v, 0, 1)  # the network grid's edge (border padding)
    w = a * v + 0.03
    want = (w * (n - 1) + 0.5) * np.array(tshape, float)[:, None, None, None] / n - 0.5
    assert np.allclose(pos, want, atol=1e-4)


def test_unigradicon_without_weights_is_one_clear_line(tmp_path):
    from napari_meddift.registration.unigradicon import load_unigradicon

    with pytest.raises(MedDiftError, match="cannot be downloaded here"):
        load_unigradicon(None)
    with pytest.raises(MedDiftError, match="no such uniGradICON weight file"):
        load_unigradicon(tmp_path / "Step_2_final.trch")


@pytest.mark.slow
def test_unigradicon_network_at_random_weights_maps_points():
    """The real network (seeded random weights, a small input grid): geometry, field, points."""
    pytest.importorskip("unigradicon")
    from napari_meddift.io.volume import Volume
    from napari_meddift.registration.unigradicon import field_from_phi, load_unigradicon, register_unigradicon

    net = load_unigradicon(random_seed=0, input_shape=(96, 96, 96))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # random weights leave the last layers at zero: perturb them all
        for prm in net.parameters():
            prm.add_(torch.randn(prm.shape, generator=g) * 0.02)
    rng = np.random.default_rng(0)
    src = Volume(ndi.gaussian_filter(rng.standard_normal((20, 24, 28)), 2).astype(np.float32) * 800, (2.0, 1.5, 1.5))
    tgt = Volume(ndi.gaussian_filter(rng.standard_normal((22, 24, 26)), 2).astype(np.float32) * 800, (2.0, 1.5, 1.5))
    res = register_unigradicon(src, tgt, net=net)
    f = res.field
    assert f.positions.shape == (3, 20, 24, 28) and np.isfinite(f.positions).all()
    assert np.abs(f.displacement_voxels).max() > 1e-3  # a non-trivial map came back
    # same numbers as sampling the network's own map directly
    from napari_meddift.registration.unigradicon import _network_input

    with torch.no_grad():
        phi = net.regis_net(_network_input(tgt, (96, 96, 96)), _network_input(src, (96, 96, 96)))(net.identity_map)
    assert np.allclose(f.positions, field_from_phi(phi, src.shape, tgt.shape), atol=1e-4)
    pts = np.array([[5.0, 6.0, 7.0], [10.0, 12.0, 20.0]])
    assert np.allclose(f.map_points(pts), f.positions[:, [5, 10], [6, 12], [7, 20]].T, atol=1e-4)


def test_progress_reaches_the_end_and_cancel_stops():
    from napari_meddift.errors import CancelledError

    rng = np.random.default_rng(4)
    geo = Geometry((12, 12, 12))
    lv = {"m": torch.as_tensor(rng.standard_normal((4, 12, 12, 12)).astype(np.float32))}
    seen = []
    register(lv, lv, geo, geo, RegistrationSettings(grid_spacing=2, search_radius=2, iterations=3, device="cpu"),
             progress=lambda d, t, m: seen.append((d, t, m)))
    assert seen[-1][0] == seen[-1][1] and all(d <= t for d, t, _ in seen)
    assert any("cost volume" in m for *_, m in seen) and any("instance optimisation" in m for *_, m in seen)

    def stop(d, t, m):
        raise CancelledError("stop")

    with pytest.raises(CancelledError):
        register(lv, lv, geo, geo, RegistrationSettings(grid_spacing=2, search_radius=2, device="cpu"), progress=stop)
