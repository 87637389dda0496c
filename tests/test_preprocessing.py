import itertools

import numpy as np
import pytest
import torch

from napari_meddift.errors import MedDiftError
from napari_meddift.backbones.noise import add_noise, make_scheduler, noise_level
from napari_meddift.backbones.preprocessing import (
    PreprocessSettings,
    canonical_axes,
    canonical_spacing,
    from_canonical,
    network_shape,
    prepare,
    resize,
    to_canonical,
    window_intensity,
)
from napari_meddift.io.volume import Volume


def test_settings_defaults_and_dict():
    s = PreprocessSettings()
    assert s.to_dict() == {"hu_min": -1000.0, "hu_max": 1000.0, "multiple": 128, "min_size": 128, "ties": "even"}
    with pytest.raises(MedDiftError):
        PreprocessSettings(hu_min=10, hu_max=0)
    with pytest.raises(MedDiftError, match="ties"):
        PreprocessSettings(ties="down")


def test_window_clips_and_scales():
    a = np.array([-3000, -1000, 0, 500, 1000, 4000], dtype=np.float32)
    out = window_intensity(a)
    assert isinstance(out, torch.Tensor) and type(out) is torch.Tensor and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), [0, 0, 0.5, 0.75, 1, 1], atol=1e-7)
    out = window_intensity(a, PreprocessSettings(hu_min=0, hu_max=500))
    np.testing.assert_allclose(out.numpy(), [0, 0, 0, 1, 1, 1], atol=1e-7)


def test_network_shape_docs_example_and_rounding():
    assert network_shape((192, 192, 208)) == (256, 256, 256)  # docs/method.md; 1.5 rounds to 2 (even)
    assert network_shape((63, 191, 193)) == (128, 128, 256)
    assert network_shape((320, 319, 448)) == (256, 256, 512)  # ties to even, as the MAISI tutorials round
    assert network_shape((320, 319, 448), ties="up") == (384, 256, 512)
    assert network_shape((10, 40, 47), multiple=32, min_size=32) == (32, 32, 32)
    assert network_shape((48, 80, 100), multiple=32, min_size=32) == (64, 64, 96)  # 2.5 -> 2
    assert network_shape((10,), multiple=32, min_size=40) == (64,)  # min_size rounds up to a multiple


def test_resize_shapes_and_constants():
    a = torch.full((5, 7, 9), 3.0)
    assert resize(a, (5, 7, 9)) is a
    out = resize(a, (8, 8, 16))
    assert out.shape == (8, 8, 16)
    torch.testing.assert_close(out, torch.full((8, 8, 16), 3.0))
    c = resize(torch.rand(4, 5, 6, 7), (10, 12, 14))
    assert c.shape == (4, 10, 12, 14)


def _signed_perm_directions():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            for j, (p, s) in enumerate(zip(perm, signs)):
                d[p, j] = s
            yield d


def test_canonical_axes_common_cases():
    # NIfTI in RAS as SimpleITK reports it (LPS): diag(-1, -1, 1) -> pure transpose
    ax = canonical_axes(np.diag([-1.0, -1.0, 1.0]))
    assert ax.perm == (2, 1, 0) and ax.flips == (False, False, False)
    ax = canonical_axes(np.eye(3))  # DICOM-like LPS: x and y reversed
    assert ax.perm == (2, 1, 0) and ax.flips == (True, True, False)
    assert canonical_spacing((3.0, 2.0, 1.0), ax) == (1.0, 2.0, 3.0)


@pytest.mark.parametrize("d", list(_signed_perm_directions()))
def test_canonical_orientation_is_ras_and_invertible(d):
    ax = canonical_axes(d)
    shape = (3, 4, 5)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    idx_xyz = np.stack([i, j, k], 0).reshape(3, -1).astype(float)
    lps = d @ idx_xyz
    ras = (np.diag([-1.0, -1.0, 1.0]) @ lps).reshape(3, *shape)
    for w in range(3):
        world = to_canonical(torch.from_numpy(ras[w]), ax).numpy()
        step = np.diff(world, axis=w)
        assert np.all(step > 0), (d, w)
    x = torch.rand(2, *shape)
    y = to_canonical(x, ax)
    torch.testing.assert_close(from_canonical(y, ax), x, rtol=0, atol=0)


def test_prepare_network_input_and_spacing():
    v = Volume(np.zeros((20, 30, 40), np.float32), spacing=(2.0, 1.0, 0.5), direction=np.diag([-1.0, -1.0, 1.0]))
    p = prepare(v, PreprocessSettings(multiple=32, min_size=32))
    assert p.tensor.shape == (1, 1, 32, 32, 32)  # canonical (x, y, z) = (40, 30, 20) -> 32^3
    assert p.original_shape == (20, 30, 40)
    np.testing.assert_allclose(p.spacing, (0.5 * 40 / 32, 1.0 * 30 / 32, 2.0 * 20 / 32))
    torch.testing.assert_close(p.tensor, torch.full_like(p.tensor, 0.5))


def test_noise_schedule_matches_method():
    ab, std = noise_level(20)
    assert ab == pytest.approx(0.967, abs=5e-4)
    assert std == pytest.approx(0.18, abs=5e-3)
    sch = make_scheduler()
    assert sch.num_train_timesteps == 1000
    assert float(sch.betas[0]) == pytest.approx(0.0015) and float(sch.betas[-1]) == pytest.approx(0.0195)
    with pytest.raises(MedDiftError):
        noise_level(1000)


def test_add_noise_seeded():
    x = torch.ones(1, 4, 4, 4, 4)
    a = add_noise(x, 20, torch.Generator().manual_seed(1))
    b = add_noise(x, 20, torch.Generator().manual_seed(1))
    c = add_noise(x, 20, torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    ab, std = noise_level(20)
    g = torch.Generator().manual_seed(1)
    expected = ab**0.5 * x + (1 - ab) ** 0.5 * torch.randn(x.shape, generator=g)
    torch.testing.assert_close(a, expected)
