"""Memory-lean evaluation of a decoder's upsampler: nearest x2 then a 3x3x3 convolution, in z-slabs.

MONAI's ``WrappedUpsample`` (``DiffusionModelUNet`` up blocks) first builds the whole nearest-neighbour
upsampled tensor (8x the input), then convolves it. For a full-resolution level that temporary is as
large as the level itself (620 MB for 32 channels of a 208 x 208 x 112 grid). :func:`slabwise_upsampling`
computes the same output slab by slab along z, each slab from its input rows plus a one-row halo, so
the temporary is a slab. The numbers are those of the module (the same convolution on the same values;
tests compare them).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

#: output planes per slab
SLAB = 16


def _conv(module: torch.nn.Module) -> torch.nn.Conv3d | None:
    """The 3x3x3, stride 1, padding 1 convolution after a nearest x2 upsample, or None for other layouts."""
    up = getattr(module, "upsample_non_trainable", None)
    post = getattr(module, "postconv", None)
    conv = getattr(post, "conv", None)
    names = [n for n, _ in module.named_children()]
    if names != ["upsample_non_trainable", "postconv"] or not isinstance(conv, torch.nn.Conv3d):
        return None
    if getattr(up, "mode", None) != "nearest" or tuple(getattr(up, "scale_factor", ()) or ()) != (2.0, 2.0, 2.0):
        return None
    if conv.kernel_size != (3, 3, 3) or conv.stride != (1, 1, 1) or conv.padding != (1, 1, 1) or conv.groups != 1:
        return None
    if conv.dilation != (1, 1, 1) or conv.padding_mode != "zeros" or len(list(post.children())) != 1:
        return None
    return conv


def upsample_in_slabs(x: torch.Tensor, conv: torch.nn.Conv3d, slab: int = SLAB) -> torch.Tensor:
    """``conv(nearest_x2(x))`` for x (N, C, d, h, w) -> (N, C', 2d, 2h, 2w), one z-slab at a time."""
    n, _, d, h, w = x.shape
    depth = 2 * d
    out = None
    for a in range(0, depth, slab):
        b = min(depth, a + slab)
        lo, hi = max(a - 1, 0), min(b + 1, depth)  # upsampled planes the slab's 3x3x3 taps read
        first = lo // 2
        up = F.interpolate(x[:, :, first : (hi - 1) // 2 + 1], scale_factor=2.0, mode="nearest")
        up = up[:, :, lo - 2 * first : lo - 2 * first + (hi - lo)]
        up = F.pad(up, (1, 1, 1, 1, 1 if a == 0 else 0, 1 if b == depth else 0))  # zero padding at true edges
        part = F.conv3d(up, conv.weight, conv.bias)
        if out is None:
            out = part.new_empty((n, part.shape[1], depth, part.shape[3], part.shape[4]))
        out[:, :, a:b] = part
    assert out is not None
    return out


@contextlib.contextmanager
def slabwise_upsampling(modules: Sequence[torch.nn.Module], slab: int = SLAB) -> Iterator[None]:
    """Within the block, each module of ``modules`` that is a nearest x2 + 3x3x3 convolution
    upsampler runs :func:`upsample_in_slabs` instead of its own forward (hooks still fire); other
    modules are left alone. The modules' own forward is back afterwards."""
    patched = []
    for m in modules:
        conv = _conv(m)
        if conv is None:
            continue

        def forward(x, emb=None, _conv=conv):
            return upsample_in_slabs(x, _conv, slab)

        m.forward = forward  # an instance attribute: nn.Module.__call__ (and its hooks) use it
        patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
