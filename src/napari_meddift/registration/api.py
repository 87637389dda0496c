"""Dense registration from descriptor stores: cost volume -> coupled convex -> Adam -> field.

    from napari_meddift.registration import RegistrationSettings, register_stores
    result = register_stores(open_store("src.zarr"), open_store("tgt.zarr"), RegistrationSettings())
    result.field.write("field.nii.gz"); result.field.map_points(points_zyx)
"""

from __future__ import annotations


import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import MedDiftError
from ..progress import ProgressCallback
from .cost import check_pair, cost_volume, displacement_offsets, lattice
from .field import DisplacementField, Geometry, JacobianStats
from .optimise import coupled_convex, instance_optimise, inverse_consistency, lattice_positions, sample_lattice
from .settings import RegistrationSettings


@dataclass
class RegistrationResult:
    field: DisplacementField
    jacobian: JacobianStats
    seconds: dict[str, float]
    settings: RegistrationSettings
    levels: list[str] = field(default_factory=list)


def _device(name: str) -> torch.device:
    from ..backbones.base import resolve_device

    return resolve_device(name)


def _base(nodes_src: Sequence[np.ndarray], sshape, tshape) -> list[np.ndarray]:
    """Continuous target voxel of each source index: itself for equal shapes, else scaled."""
    out = []
    for n, s, t in zip(nodes_src, sshape, tshape):
        n = np.asarray(n, np.float64)
        out.append(n.copy() if s == t else (n + 0.5) * t / s - 0.5)
    return out


def _stages(progress: ProgressCallback | None, plan: list[tuple[str, int]]):
    """Map each stage's own (done, total) onto one overall (done, total) for the caller."""
    total = sum(w for _, w in plan)
    start = {}
    acc = 0
    for name, w in plan:
        start[name] = acc
        acc += w
    weight = dict(plan)

    def make(name: str) -> ProgressCallback | None:
        if progress is None:
            return None

        def cb(done: int, tot: int, msg: str) -> None:
            progress(start[name] + int(round(weight[name] * done / max(1, tot))), total, msg)
        return cb

    return make, total


@contextmanager
def _threads(n: int | None, device: torch.device):
    old = torch.get_num_threads()
    if n is None or device.type != "cpu" or n == old:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def register(
    source_levels: Mapping,
    target_levels: Mapping,
    source: Geometry,
    target: Geometry,
    settings: RegistrationSettings | None = None,
    progress: ProgressCallback | None = None,
) -> RegistrationResult:
    """Dense, smooth source -> target field from native descriptor levels {name: (C, z, y, x)}.

    ``source``/``target`` are the image grids (the levels span them as the matcher assumes).
    ``progress(done, total, message)`` may raise CancelledError to stop between steps.
    """
    s = settings or RegistrationSettings()
    s.check()
    levels, weights = check_pair(source_levels, target_levels, s.levels, s.weights)
    if s.inverse_consistent and tuple(source.shape) != tuple(target.shape):
        raise MedDiftError("inverse consistency needs source and target of the same shape; "
                           f"got {tuple(source.shape)} and {tuple(target.shape)} (turn it off)")
    dev = _device(s.device)
    with _threads(s.cpu_threads, dev):
        return _register(source_levels, target_levels, source, target, s, levels, weights, dev, progress)


def _register(source_levels, target_levels, source: Geometry, target: Geometry, s: RegistrationSettings,
              levels: list[str], weights: dict[str, float], dev: torch.device,
              progress: ProgressCallback | None) -> RegistrationResult:
    sshape, tshape = tuple(source.shape), tuple(target.shape)
    src = {n: torch.as_tensor(np.asarray(source_levels[n]), dtype=torch.float32).to(dev) for n in levels}
    tgt = {n: torch.as_tensor(np.asarray(target_levels[n]), dtype=torch.float32).to(dev) for n in levels}
    plan = [("cost", 4 if s.inverse_consistent else 2), ("convex", 1), ("adam", 4 if s.iterations else 0)]
    make, _ = _stages(progress, plan)
    times: dict[str, float] = {}
    g, ga = int(s.grid_spacing), int(s.adam_spacing)
    offsets = displacement_offsets(s.search_radius, s.search_step)

    t0 = time.perf_counter()
    with torch.no_grad():
        nodes = [lattice(n, g) for n in sshape]
        bases = [np.clip(np.rint(b), 0, t - 1).astype(np.int64) for b, t in zip(_base(nodes, sshape, tshape), tshape)]
        sim, bases = cost_volume(src, tgt, weights, sshape, tshape, nodes, bases, s.search_radius, s.search_step,
                                 progress=make("cost"))
        times["cost_volume"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        u = coupled_convex(sim, offsets, s.search_step, progress=make("convex"))
        # the rounded bases are part of the convex result: express it against the continuous base
        base_c = lattice_positions(_base(nodes, sshape, tshape), dev)
        u = u + lattice_positions(bases, dev) - base_c
        del sim
        if s.inverse_consistent:
            nodes_t = [lattice(n, g) for n in tshape]
            simb, nodes_tb = cost_volume(tgt, src, weights, tshape, sshape, nodes_t, nodes_t, s.search_radius,
                                         s.search_step)
            ub = coupled_convex(simb, offsets, s.search_step) + lattice_positions(nodes_tb, dev) \
                - lattice_positions(nodes_t, dev)
            del simb
            u, _ = inverse_consistency(u, ub, g, nodes, nodes_t)
        times["convex"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    nodes_a = [lattice(n, ga) for n in sshape]
    pos_a = lattice_positions(nodes_a, dev)
    base_a = lattice_positions(_base(nodes_a, sshape, tshape), dev)
    with torch.no_grad():
        init = sample_lattice(u, g, pos_a)
    if s.iterations:
        with torch.enable_grad():
            ua = instance_optimise(src, tgt, weights, sshape, tshape, nodes_a, base_a, init, ga, s.iterations,
                                   s.smoothness, s.regulariser, s.learning_rate, s.adam_smoothing,
                                   progress=make("adam"))
    else:
        ua = init
    times["adam"] = time.perf_counter() - t2

    with torch.no_grad():
        full = lattice_positions([np.arange(n) for n in sshape], dev)
        base_f = lattice_positions(_base([np.arange(n) for n in sshape], sshape, tshape), dev)
        positions = (base_f + sample_lattice(ua, ga, full)).cpu().numpy()
    fld = DisplacementField(positions, source, target, info={"levels": levels, "settings": s.to_dict()})
    stats = fld.jacobian_stats()
    times["total"] = time.perf_counter() - t0
    return RegistrationResult(fld, stats, times, s, levels)


def check_stores(src_store, tgt_store, allow_mixed: bool = False) -> None:
    """Two stores registrable with each other: same backbone, weights, timestep, backbone
    configuration and preprocessing (one clear line otherwise, unless ``allow_mixed``)."""
    from ..io.metadata import check_same_extraction

    check_same_extraction(src_store, tgt_store, allow_mixed)


def register_stores(src_store, tgt_store, settings: RegistrationSettings | None = None,
                    progress: ProgressCallback | None = None, allow_mixed: bool = False) -> RegistrationResult:
    """:func:`register` on two descriptor stores (geometry from their attributes); stores of
    different extractions are refused unless ``allow_mixed`` (:func:`check_stores`)."""
    s = settings or RegistrationSettings()
    check_stores(src_store, tgt_store, allow_mixed)
    names = list(s.levels) if s.levels is not None else None
    if names is None:
        # the backbone's default fusion when the stores hold it, else every common level
        names = [n for n in src_store.level_names if n in tgt_store.level_names]
    for which, st in (("source", src_store), ("target", tgt_store)):
        missing = [n for n in names if n not in st.level_names]
        if missing:
            raise MedDiftError(f"{which} store lacks level(s) {', '.join(missing)}; it has {', '.join(st.level_names)}")
    s = replace(s, levels=tuple(names))
    return register(src_store.load_levels(names), tgt_store.load_levels(names), Geometry.of(src_store),
                    Geometry.of(tgt_store), s, progress)
