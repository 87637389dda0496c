"""MIND-SSC: a hand-crafted, training-free descriptor baseline.

Modality Independent Neighbourhood Descriptor with Self-Similarity Context (Heinrich et al.,
"MIND: Modality independent neighbourhood descriptor for multi-modal deformable registration",
MedIA 2012; "Towards realtime multimodal fusion for image-guided interventions using
self-similarity context", MICCAI 2013). Written here from the published definition:

* Take the six face neighbours of a voxel, offset by ``dilation`` voxels along +-z, +-y, +-x.
* Every pair of those neighbours that are not opposite each other (12 pairs, each pair at
  distance ``sqrt(2) * dilation``) gives one channel: the patch distance
  ``D_k(x) = mean over a (2r+1)^3 box around x of (I(x + a_k + p) - I(x + b_k + p))^2``.
* ``D'_k = D_k - min_k D_k`` (the closest pair becomes 0), the local variance estimate
  ``V(x) = mean_k D'_k(x)`` is clamped to [1e-3, 1e3] x its mean over the volume, and
  ``MIND_k(x) = exp(-D'_k(x) / V(x))``.

An affine intensity change ``a*I + b`` scales every D and V by ``a^2``, so MIND is invariant to
it (up to the clamp, which scales the same way). Borders use replicate padding.

The descriptor is one level, ``"mind"``, 12 channels at the image's own grid (so matching needs
no interpolation). It is computed on the HU-windowed image ([-1000, 1000] HU -> [0, 1]).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from .preprocessing import window_intensity
from ..io.volume import Volume
from .base import ExtractionSettings, ProgressCallback

#: the six face neighbours, (dz, dy, dx)
SIX_NEIGHBOURHOOD: tuple[tuple[int, int, int], ...] = (
    (-1, 0, 0),
    (1, 0, 0),
    (0, -1, 0),
    (0, 1, 0),
    (0, 0, -1),
    (0, 0, 1),
)


def ssc_pairs() -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    """The 12 neighbour pairs of the self-similarity context: every pair of six-neighbourhood
    offsets at squared distance 2 (i.e. all pairs except the three opposite ones)."""
    pairs = []
    for a, b in itertools.combinations(SIX_NEIGHBOURHOOD, 2):
        if sum((p - q) ** 2 for p, q in zip(a, b)) == 2:
            pairs.append((a, b))
    assert len(pairs) == 12
    return pairs


def mind_ssc(image: torch.Tensor, radius: int = 2, dilation: int = 2, eps_rel: float = 1e-3) -> torch.Tensor:
    """MIND-SSC of a 3D image (z, y, x) -> (12, z, y, x) float32, same device as ``image``.

    ``radius``: half-width of the box patch over which squared differences are averaged.
    ``dilation``: distance in voxels of the six neighbours from the centre.
    """
    if image.ndim != 3:
        raise ValueError(f"mind_ssc expects a 3D (z, y, x) image, got shape {tuple(image.shape)}")
    img = image.to(torch.float32)[None, None]
    d, r = int(dilation), int(radius)
    Z, Y, X = img.shape[-3:]
    padded = F.pad(img, (d, d, d, d, d, d), mode="replicate") if d > 0 else img

    def shifted(off: tuple[int, int, int]) -> torch.Tensor:
        dz, dy, dx = (o * d for o in off)
        return padded[..., d + dz : d + dz + Z, d + dy : d + dy + Y, d + dx : d + dx + X]

    channels = []
    for a, b in ssc_pairs():
        sq = (shifted(a) - shifted(b)) ** 2
        if r > 0:
            sq = F.avg_pool3d(F.pad(sq, (r,) * 6, mode="replicate"), kernel_size=2 * r + 1, stride=1)
        channels.append(sq[0, 0])
    dist = torch.stack(channels)  # (12, Z, Y, X)
    del channels
    dist = dist - dist.min(dim=0, keepdim=True).values
    var = dist.mean(dim=0, keepdim=True)
    vmean = var.mean()
    if float(vmean) <= 0:  # a constant image: every distance is 0, MIND is 1 everywhere
        return torch.ones_like(dist)
    var = var.clamp(min=float(vmean) * eps_rel, max=float(vmean) / eps_rel)
    return torch.exp(-dist / var)


class MindSscBackbone:
    """MIND-SSC as a descriptor source (Backbone protocol): one level ``"mind"``, 12 channels,
    at image resolution. Deterministic; timestep, seed and samples in the settings are ignored."""

    name = "mind-ssc"
    #: a hand-crafted descriptor works on any grid: the scan's own
    grid_spacing = None
    level_names: tuple[str, ...] = ("mind",)
    default_levels: tuple[str, ...] = ("mind",)
    #: runs on the image's own grid with the fixed HU window: takes no preprocessing settings
    preprocessing = None

    def __init__(self, radius: int = 2, dilation: int = 2, weights=None, random_weights: bool = False, **_ignored):
        from ..errors import MedDiftError

        if int(radius) < 0 or int(dilation) < 1:
            raise MedDiftError(
                f"MIND-SSC needs radius >= 0 and dilation >= 1, got radius={radius}, dilation={dilation}"
            )
        self.radius = int(radius)
        self.dilation = int(dilation)

    @property
    def weights_hash(self) -> str:
        return f"mind-ssc-r{self.radius}-d{self.dilation}"

    @property
    def config(self) -> dict:
        return {}  # radius and dilation are in weights_hash

    @property
    def description(self) -> str:
        return f"MIND-SSC (radius {self.radius}, dilation {self.dilation})"

    def __repr__(self) -> str:
        return f"MindSscBackbone(radius={self.radius}, dilation={self.dilation})"

    def extract(
        self,
        volume: Volume,
        settings: ExtractionSettings | None = None,
        progress: ProgressCallback | None = None,
        preprocessing=None,
    ) -> dict[str, torch.Tensor]:
        from ..errors import MedDiftError
        from .base import resolve_device

        if preprocessing is not None:
            raise MedDiftError("MIND-SSC takes no preprocessing settings (it runs on the image's own grid)")
        settings = settings or ExtractionSettings()
        if settings.levels is not None:
            unknown = [lv for lv in settings.levels if lv not in self.level_names]
            if unknown:
                raise MedDiftError(f"MIND-SSC has only the level 'mind'; unknown level(s) {', '.join(unknown)}")
        device = resolve_device(settings.device)
        if progress is not None:
            progress(0, 1, "MIND-SSC")
        img = window_intensity(volume.array).to(device)
        with torch.no_grad():
            desc = mind_ssc(img, self.radius, self.dilation)
        if progress is not None:
            progress(1, 1, "MIND-SSC done")
        return {"mind": desc.cpu().contiguous()}
