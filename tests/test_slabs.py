"""mini's full-resolution upsamplers evaluated in z-slabs give the module's own numbers."""

from __future__ import annotations

import pytest
import torch

from napari_meddift.backbones.mini import build_unet
from napari_meddift.backbones.slabs import slabwise_upsampling, upsample_in_slabs


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return build_unet().eval()


@pytest.mark.parametrize("shape", [(1, 32, 7, 9, 5), (1, 32, 8, 4, 4), (1, 32, 1, 3, 3), (2, 32, 17, 6, 5)])
@pytest.mark.parametrize("slab", [1, 2, 3, 16])
def test_slabs_equal_the_module(unet, shape, slab):
    up = unet.up_blocks[1].upsampler
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(upsample_in_slabs(x, up.postconv.conv, slab), up(x))


def test_context_patches_only_upsamplers_and_restores_them(unet):
    ups = [b.upsampler for b in unet.up_blocks if b.upsampler is not None]
    others = [unet.up_blocks[2].resnets[0]]
    x = torch.randn((1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(2))
    t = torch.tensor([20])
    with torch.no_grad():
        want = unet(x, t)
        with slabwise_upsampling(ups + others, slab=3):
            assert all("forward" in vars(m) for m in ups) and "forward" not in vars(others[0])
            got = unet(x, t)
    assert torch.equal(got, want)
    assert not any("forward" in vars(m) for m in ups)
