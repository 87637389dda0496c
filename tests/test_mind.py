"""MIND-SSC descriptor baseline: shape, contrast invariance, shift equivariance, a hand value."""

import itertools

import numpy as np
import pytest
import torch

from napari_meddift.backbones.base import Backbone, ExtractionSettings
from napari_meddift.backbones.mind import MindSscBackbone, mind_ssc, ssc_pairs
from napari_meddift.backbones.preprocessing import window_intensity
from napari_meddift.errors import MedDiftError
from napari_meddift.io.volume import Volume


def _ct(shape=(14, 16, 18), seed=0):
    """A smooth-ish random 'CT' in [-900, 300] HU (inside the window, so windowing is affine)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    a = gaussian_filter(rng.standard_normal(shape), 1.0)
    a = (a - a.min()) / (a.max() - a.min())
    return (a * 1200 - 900).astype(np.float32)


def test_protocol_and_shape():
    bb = MindSscBackbone(weights=None, random_weights=False)
    assert isinstance(bb, Backbone)
    assert bb.name == "mind-ssc"
    assert bb.level_names == ("mind",) and bb.default_levels == ("mind",)
    assert bb.weights_hash == "mind-ssc-r2-d2"
    assert MindSscBackbone(radius=1, dilation=3).weights_hash == "mind-ssc-r1-d3"
    vol = Volume(_ct(), spacing=(2.0, 1.0, 1.0))
    calls = []
    out = bb.extract(vol, ExtractionSettings(device="cpu"), progress=lambda d, t, m: calls.append((d, t)))
    assert set(out) == {"mind"}
    m = out["mind"]
    assert m.shape == (12, *vol.shape) and m.dtype == torch.float32 and m.device.type == "cpu"
    assert torch.isfinite(m).all() and (m > 0).all() and (m <= 1 + 1e-6).all()
    # the closest pair is exactly 0 distance -> exp(0) = 1 somewhere in every voxel
    assert torch.allclose(m.max(dim=0).values, torch.ones(vol.shape))
    assert calls[-1] == (1, 1)


def test_bad_arguments():
    with pytest.raises(MedDiftError):
        MindSscBackbone(dilation=0)
    with pytest.raises(MedDiftError):
        MindSscBackbone().extract(Volume(_ct((6, 6, 6))), ExtractionSettings(levels=("up0",), device="cpu"))


def test_pairs_are_the_twelve_non_opposite_ones():
    pairs = ssc_pairs()
    assert len(pairs) == 12 and len(set(pairs)) == 12
    for a, b in pairs:
        assert np.dot(a, b) == 0  # orthogonal neighbours, never opposite


def test_invariant_to_intensity_affine():
    img = torch.from_numpy(_ct(seed=1))
    ref = mind_ssc(img)
    for scale, offset in [(3.0, 7.0), (0.01, -5.0), (-2.0, 100.0)]:
        assert torch.allclose(mind_ssc(img * scale + offset), ref, atol=2e-5)
    # through the backbone: an affine change that stays inside the HU window
    bb = MindSscBackbone()
    a = _ct(seed=2)
    s = ExtractionSettings(device="cpu")
    m1 = bb.extract(Volume(a), s)["mind"]
    m2 = bb.extract(Volume(0.6 * a + 150.0), s)["mind"]
    assert torch.allclose(m1, m2, atol=2e-5)


def test_shifted_volume_gives_shifted_descriptors():
    a = _ct((20, 22, 24), seed=3)
    shift = (2, -3, 1)
    b = np.roll(a, shift, axis=(0, 1, 2))
    # compare where neither the roll's wrap-around nor the border padding reaches
    ma = mind_ssc(torch.from_numpy(a))
    mb = mind_ssc(torch.from_numpy(b))
    m = 2 + 2 + 3  # dilation + radius + largest shift
    core = tuple(slice(m, n - m) for n in a.shape)
    core_shifted = tuple(slice(m + s, n - m + s) for s, n in zip(shift, a.shape))
    assert torch.allclose(mb[(slice(None), *core_shifted)], ma[(slice(None), *core)], atol=1e-5)


def _mind_numpy_loop(img: np.ndarray, radius: int, dilation: int) -> np.ndarray:
    """Independent reference: explicit loops, replicate borders by index clipping."""
    Z, Y, X = img.shape
    six = [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)]
    pairs = [(a, b) for a, b in itertools.combinations(six, 2) if sum((p - q) ** 2 for p, q in zip(a, b)) == 2]

    def at(arr, z, y, x):
        return arr[min(max(z, 0), Z - 1), min(max(y, 0), Y - 1), min(max(x, 0), X - 1)]

    D = np.zeros((12, Z, Y, X))
    for k, (a, b) in enumerate(pairs):
        sq = np.zeros((Z, Y, X))
        for z, y, x in itertools.product(range(Z), range(Y), range(X)):
            va = at(img, z + a[0] * dilation, y + a[1] * dilation, x + a[2] * dilation)
            vb = at(img, z + b[0] * dilation, y + b[1] * dilation, x + b[2] * dilation)
            sq[z, y, x] = (float(va) - float(vb)) ** 2
        for z, y, x in itertools.product(range(Z), range(Y), range(X)):
            acc = 0.0
            for pz, py, px in itertools.product(range(-radius, radius + 1), repeat=3):
                acc += at(sq, z + pz, y + py, x + px)
            D[k, z, y, x] = acc / (2 * radius + 1) ** 3
    D = D - D.min(axis=0, keepdims=True)
    V = D.mean(axis=0)
    V = np.clip(V, V.mean() * 1e-3, V.mean() * 1e3)
    return np.exp(-D / V), pairs


def test_hand_computed_value_against_numpy_loop():
    rng = np.random.default_rng(5)
    img = rng.uniform(-1000, 1000, size=(6, 7, 8)).astype(np.float32)
    ref, pairs = _mind_numpy_loop(np.asarray(window_intensity(img)), radius=1, dilation=2)
    assert [tuple(map(tuple, p)) for p in pairs] == ssc_pairs()  # same channel order
    got = MindSscBackbone(radius=1, dilation=2).extract(Volume(img), ExtractionSettings(device="cpu"))["mind"]
    for voxel in [(3, 3, 4), (0, 0, 0), (5, 6, 7), (2, 5, 1)]:
        np.testing.assert_allclose(got[(slice(None), *voxel)].numpy(), ref[(slice(None), *voxel)], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-5)


def test_constant_image_is_all_ones():
    out = mind_ssc(torch.full((5, 5, 5), 0.3))
    assert torch.equal(out, torch.ones(12, 5, 5, 5))
