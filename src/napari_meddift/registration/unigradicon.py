"""uniGradICON (Tian et al. 2024), the paper's learned comparison, behind the same field interface.

The ``unigradicon`` package builds the network; its published weights are downloaded from the web
at run time, which cannot happen on an offline machine, so this wrapper never downloads: it runs
when the user gives the weight file (``Step_2_final.trch``) and says so in one line otherwise.
``random_seed`` builds the same network at seeded random weights (tests, timing).

Geometry: both CTs are windowed to [-1000, 1000] HU -> [0, 1] (the package's CT preprocessing),
resized to the network's input grid (175^3, trilinear, ``align_corners=False``), and the network's
map ``phi_AB`` (A = target/moving, B = source/fixed; values in [0, 1] per axis, ``align_corners=True``
on the network grid) is read back at every source voxel and converted to target voxel positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MedDiftError
from .field import DisplacementField, Geometry

#: the network's input grid (z, y, x), as the published model
INPUT_SHAPE = (175, 175, 175)
HU_WINDOW = (-1000.0, 1000.0)


def load_unigradicon(weights: str | Path | None = None, random_seed: int | None = None,
                     input_shape: tuple[int, int, int] = INPUT_SHAPE):
    """The uniGradICON network (eval mode, CPU) from a weight file, or at seeded random weights."""
    if weights is None and random_seed is None:
        raise MedDiftError("uniGradICON needs its weight file (Step_2_final.trch), which cannot be downloaded here: "
                           "pass --unigradicon-weights FILE or set MEDDIFT_UNIGRADICON_WEIGHTS")
    if weights is not None and not Path(weights).expanduser().is_file():
        raise MedDiftError(f"{weights}: no such uniGradICON weight file; give the path of Step_2_final.trch")
    try:
        import unigradicon
    except Exception as exc:  # noqa: BLE001
        raise MedDiftError("uniGradICON is not installed: pip install --no-deps unigradicon icon_registration "
                           f"(or the 'unigradicon' extra of napari-meddift) ({type(exc).__name__})") from None
    if random_seed is not None:
        torch.manual_seed(int(random_seed))
    net = unigradicon.make_network([1, 1, *input_shape], include_last_step=True)
    if weights is not None:
        try:
            state = torch.load(str(Path(weights).expanduser()), map_location="cpu", weights_only=True)
            net.regis_net.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001
            raise MedDiftError(f"{weights}: is not a uniGradICON weight file ({type(exc).__name__}); "
                               "give Step_2_final.trch of the published model") from None
    return net.eval()


def _network_input(volume, shape) -> torch.Tensor:
    lo, hi = HU_WINDOW
    x = torch.as_tensor(np.clip(np.asarray(volume.array, np.float32), lo, hi) - lo) / (hi - lo)
    return F.interpolate(x[None, None], size=tuple(shape), mode="trilinear", align_corners=False)


def field_from_phi(phi: torch.Tensor, source_shape, target_shape) -> np.ndarray:
    """Target voxel position (3, Z, Y, X) of every source voxel from a network map phi (1, 3, *net).

    Source voxel p -> network index (p + 0.5) * n / N - 0.5 (the align_corners=False resize)
    -> phi (trilinear, align_corners=True in [0, 1]) -> network index of the target -> target voxel.
    """
    net = phi.shape[2:]
    axes = []
    for n, s in zip(net, source_shape):
        j = (torch.arange(s, dtype=torch.float32) + 0.5) * n / s - 0.5
        axes.append(2.0 * j / (n - 1) - 1.0)
    gz, gy, gx = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([gx, gy, gz], -1)[None]  # x, y, z
    w = F.grid_sample(phi.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]
    out = torch.empty_like(w)
    for a, (n, t) in enumerate(zip(net, target_shape)):
        out[a] = (w[a] * (n - 1) + 0.5) * t / n - 0.5
    return out.numpy()


def register_unigradicon(source, target, weights: str | Path | None = None, device: str = "cpu",
                         source_geometry: Geometry | None = None, net=None, random_seed: int | None = None):
    """uniGradICON field from ``source`` to ``target`` (Volumes); returns a RegistrationResult."""
    import time

    from .api import RegistrationResult, RegistrationSettings, _device

    t0 = time.perf_counter()
    if net is None:
        net = load_unigradicon(weights, random_seed)
    dev = _device(device)
    shape = tuple(int(s) for s in net.identity_map.shape[2:])
    net = net.to(dev)
    a = _network_input(target, shape).to(dev)  # A: moving = target
    b = _network_input(source, shape).to(dev)  # B: fixed = source
    with torch.no_grad():
        net.identity_map.isIdentity = True
        phi_ab = net.regis_net(a, b)
        phi = phi_ab(net.identity_map).cpu()
    pos = field_from_phi(phi, source.shape, target.shape)
    src_geom = source_geometry or Geometry.of(source)
    fld = DisplacementField(pos, src_geom, Geometry.of(target), info={"method": "unigradicon"})
    total = time.perf_counter() - t0
    return RegistrationResult(fld, fld.jacobian_stats(), {"network": total, "total": total}, RegistrationSettings(),
                              ["unigradicon"])
