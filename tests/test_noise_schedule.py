"""One meaning for "t = 20": noise/signal per schedule, each backbone's default timestep, and what
a store records (issue 19, part 4)."""

import math

import numpy as np
import pytest

from napari_meddift.backbones import maisi as M
from napari_meddift.backbones.base import ExtractionSettings
from napari_meddift.backbones.extraction import cached_store_path, extract_to_store
from napari_meddift.backbones.mini import MiniBackbone
from napari_meddift.backbones.noise import (
    PAPER_TIMESTEP,
    make_rflow_scheduler,
    make_scheduler,
    noise_signal,
    noise_signal_table,
    operating_timestep,
)
from napari_meddift.backbones.preprocessing import PreprocessSettings
from napari_meddift.cli import main
from napari_meddift.io.volume import Volume

WIDTH = 0.125
SMALL = PreprocessSettings(multiple=32, min_size=32)


def _ddpm_reference(t: int) -> float:
    """sqrt(1 - abar) / sqrt(abar) from the betas written out (scaled_linear_beta 0.0015..0.0195)."""
    betas = np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, 1000, dtype=np.float64) ** 2
    abar = np.cumprod(1.0 - betas)[t]
    return math.sqrt(1.0 - abar) / math.sqrt(abar)


@pytest.mark.parametrize("t", [0, 20, 155, 500, 999])
def test_noise_signal_is_read_from_each_schedulers_add_noise(t):
    assert noise_signal(make_scheduler(), t) == pytest.approx(_ddpm_reference(t), rel=1e-5)
    assert noise_signal(make_rflow_scheduler(), t) == pytest.approx(
        (t / 1000) / (1 - t / 1000), rel=1e-4
    )  # float32 inside
    table = noise_signal_table(make_rflow_scheduler())
    assert float(table[t]) == pytest.approx(noise_signal(make_rflow_scheduler(), t), rel=1e-12)


def test_rflow_operating_point_matches_ddpm_t20_to_one_percent():
    ddpm, rflow = make_scheduler(), make_rflow_scheduler()
    assert operating_timestep(ddpm) == PAPER_TIMESTEP == 20
    target = noise_signal(ddpm, 20)
    assert target == pytest.approx(0.1837, abs=1e-4)
    t_star = operating_timestep(rflow)
    # the closed form t/(1000-t) = target gives 155.2; the integer of nearest noise/signal
    assert t_star == round(1000 * target / (1 + target)) == 155
    got = noise_signal(rflow, t_star)
    assert abs(got / target - 1) < 0.01
    for other in (t_star - 1, t_star + 1):  # and it is the nearest one
        assert abs(math.log(noise_signal(rflow, other) / target)) > abs(math.log(got / target))
    # t = 20 on rectified flow is another operating point altogether
    assert noise_signal(rflow, 20) < target / 8


def _volume():
    rng = np.random.default_rng(0)
    arr = rng.uniform(-1000, 1000, (32, 32, 32)).astype(np.float32)
    return Volume(arr, spacing=(2.0, 1.0, 0.5), name="rand")


def test_rflow_store_with_default_settings_records_the_equivalent_timestep(tmp_path):
    b = M.MaisiBackbone(random_weights=True, width=WIDTH, variant="rflow", preprocessing=SMALL)
    assert b.default_timestep == 155
    vol = _volume()
    store, reused = extract_to_store(vol, b, ExtractionSettings(levels=("up3",)), tmp_path / "r.zarr")
    assert not reused
    assert store.attrs["timestep"] == 155 and store.attrs["settings"]["timestep"] == 155
    assert abs(store.attrs["noise_signal"] / noise_signal(make_scheduler(), 20) - 1) < 0.01
    # the default and an explicit 155 are one store (one cache key)
    again, reused = extract_to_store(vol, b, ExtractionSettings(timestep=155, levels=("up3",)), tmp_path / "r.zarr")
    assert reused and again.cache_key == store.cache_key
    # an explicit timestep is honoured as given
    t20, _ = extract_to_store(vol, b, ExtractionSettings(timestep=20, levels=("up3",)), tmp_path / "r20.zarr")
    assert t20.attrs["timestep"] == 20
    assert t20.attrs["noise_signal"] == pytest.approx(20 / 980, rel=1e-6)
    # and gives other features than the default (the noise really differs)
    a = store.load_levels(["up3"])["up3"]
    c = t20.load_levels(["up3"])["up3"]
    assert not np.allclose(a, c)


def test_ddpm_defaults_keep_t20_and_its_cache_keys(tmp_path):
    """MAISI DDPM and mini_v1 (weights that record no timestep of their own) keep the paper's t = 20;
    the default mini_v2 records t = 0. Either way the default is resolved before the cache key."""
    vol = _volume()
    ddpm = M.MaisiBackbone(random_weights=True, width=WIDTH, variant="ddpm", preprocessing=SMALL)
    v1 = MiniBackbone(weights="mini_v1")
    v2 = MiniBackbone(random_weights=True)  # built, and defaulting, like the default weights
    for b, t in ((ddpm, 20), (v1, 20), (v2, 0)):
        assert b.default_timestep == t
        assert cached_store_path(vol, b, ExtractionSettings(), tmp_path) == cached_store_path(
            vol, b, ExtractionSettings(timestep=t), tmp_path
        )
    store, _ = extract_to_store(vol, v1, ExtractionSettings(), tmp_path / "m.zarr")
    assert store.attrs["timestep"] == 20
    assert store.attrs["noise_signal"] == pytest.approx(_ddpm_reference(20), rel=1e-5)


def test_extract_prints_the_timestep_and_its_noise_signal(small_data, tmp_path, capsys):
    ct = small_data / "ct" / "lung_elastix_small.nii.gz"
    assert main(["extract", str(ct), "-o", str(tmp_path / "a.zarr"), "--random-weights"]) == 0
    out = capsys.readouterr().out
    assert f"t=0 noise/signal {_ddpm_reference(0):.3f} (the backbone's default)" in out  # mini_v2's own t
    assert main(["extract", str(ct), "-o", str(tmp_path / "b.zarr"), "--random-weights", "--timestep", "50"]) == 0
    want = f"t=50 noise/signal {_ddpm_reference(50):.3f} (given)"
    assert want in capsys.readouterr().out


def test_mind_records_no_noise_signal(tmp_path):
    from napari_meddift.backbones import get_backbone

    b = get_backbone("mind")
    store, _ = extract_to_store(_volume(), b, ExtractionSettings(), tmp_path / "mind.zarr")
    assert store.attrs["noise_signal"] is None
    assert store.attrs["timestep"] == 20  # ignored by MIND-SSC; kept so its cache keys stay


def test_explorer_orders_and_labels_timesteps_by_noise_signal_when_schedules_mix():
    from types import SimpleNamespace

    import torch

    from napari_meddift.errors import MedDiftError
    from napari_meddift.explorer import ExplorerSession
    from napari_meddift.matching import Matcher

    shape, sp = (8, 9, 10), (2.0, 1.5, 1.25)

    def matcher(seed):
        g = torch.Generator().manual_seed(seed)
        return Matcher({"up0": torch.randn(4, 4, 5, 5, generator=g)}, {"up0": torch.randn(4, 4, 5, 5, generator=g)},
                       shape, shape)

    def stores(backbone, t, variant=None, recorded=True):
        attrs = {"backbone": backbone, "timestep": t, "backbone_config": {"variant": variant} if variant else {}}
        if recorded:
            sched = make_rflow_scheduler() if variant == "rflow" else make_scheduler()
            attrs["noise_signal"] = noise_signal(sched, t)
        st = SimpleNamespace(attrs=attrs)
        return st, st

    s = ExplorerSession()
    s.connect(matcher(0), sp, sp, stores=stores("mini", 20))
    assert s.timestep_label(20) == "t = 20 (noise/signal 0.184)"
    s.add_timestep(100, matcher(1), stores=stores("mini", 100, recorded=False))  # an older store: computed
    assert s.timesteps == [20, 100] and not s.mixed_schedules
    assert s.timestep_label(100) == f"t = 100 (noise/signal {_ddpm_reference(100):.3f})"
    # rectified flow joins: t means other noise there, so noise/signal orders and labels them
    s.add_timestep(155, matcher(2), stores=stores("maisi", 155, "rflow"))
    s.add_timestep(50, matcher(3), stores=stores("maisi", 50, "rflow"))
    assert s.mixed_schedules
    assert s.timesteps == [50, 155, 20, 100]  # 0.053, 0.183, 0.184, 0.464
    assert s.timestep_label(155) == "noise/signal 0.183 (rectified flow t = 155)"
    assert s.timestep_label(20, short=True) == "n/s 0.184 (DDPM t=20)"
    s.state.compare_timesteps = True
    assert s.request((1, 2, 3)).compare == (50, 155, 20, 100)  # the compare strip's order
    with pytest.raises(MedDiftError, match="another noise level"):
        s.add_timestep(20, matcher(4), stores=stores("maisi", 20, "rflow"))
