"""Learn2Reg evaluation on a Dask cluster: every image extracted as one task, then every case matched as one."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

from ..errors import MedDiftError
from ..evaluation.l2r import DEFAULT_WINDOW
from .tasks import BackboneSpec, ScanJob


def _match_case(case, out: Path, method: str, stores, *, radius, levels, keypoints, device):
    """On a worker: TRE of one case from its two stores ('auto' device resolved here)."""
    from ..evaluation.l2r import evaluate_case

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return evaluate_case(case, None, None, out, method, radius=radius, levels=levels, keypoints=keypoints,
                         device=device, stores=stores)


def evaluate_cases_on_cluster(
    cases: Sequence,
    backbone,
    settings,
    out: Path,
    method: str,
    *,
    radius,
    levels: Sequence[str] | None,
    keypoints: bool,
    device: str,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    threads: int | None = None,
    progress=None,
) -> dict:
    """{case_id: L2RCaseResult}: the images of ``cases`` extracted into ``out/stores`` (named by
    cache key, so the serial harness reuses them), then each case matched, all as Dask tasks.

    MedDiftError naming every image that could not be extracted (no case is matched then).
    """
    from .cluster import connect
    from .extract_many import run_jobs
    from .run import map_tasks

    images: dict[str, ScanJob] = {}
    for case in cases:
        for img in (case.fixed_image, case.moving_image):
            key = str(Path(img).resolve())
            images.setdefault(key, ScanJob(name=Path(img).name, image=key, store=None, cache_dir=str(out / "stores")))
    jobs = list(images.values())
    n_tasks = len(jobs) + len(cases)

    def relay(offset: int, what: str):
        if progress is None:
            return None
        return lambda done, total, msg="": progress(offset + done, n_tasks, f"{what} {done}/{total}")

    if client is not None:
        ctx = contextlib.nullcontext(client)
    else:
        n = None if scheduler is not None else min(workers or 1, max(len(jobs), 1))
        ctx = connect(n, scheduler, threads=threads, device=settings.device)
    with ctx as c:
        scans = run_jobs(c, jobs, backbone, settings, threads=threads, progress=relay(0, "extract"))
        failed = [r for r in scans if r.status == "failed"]
        if failed:
            raise MedDiftError(
                f"{len(failed)} image(s) could not be extracted: "
                + "; ".join(f"{Path(r.image).name}: {r.error}" for r in failed)
            )
        by_image = {r.image: r for r in scans}
        calls = []
        for case in cases:
            f, m = by_image[str(Path(case.fixed_image).resolve())], by_image[str(Path(case.moving_image).resolve())]
            calls.append(((case, out, method, (f.store, m.store)),
                          dict(radius=radius, levels=levels, keypoints=keypoints, device=device)))
        results = map_tasks(c, _match_case, calls, threads=threads, progress=relay(len(jobs), "match"),
                            label="case")
    out_map = {}
    for case, res in zip(cases, results):
        f, m = by_image[str(Path(case.fixed_image).resolve())], by_image[str(Path(case.moving_image).resolve())]
        res.extract_seconds = f.seconds + m.seconds
        out_map[case.case_id] = res
    return out_map


def evaluate_l2r_on_cluster(
    root,
    backbone="mini",
    settings=None,
    radius=DEFAULT_WINDOW,
    cases: Sequence[int | str] | None = None,
    out_dir=None,
    *,
    labels_root=None,
    levels: Sequence[str] | None = None,
    keypoints: bool = True,
    device: str = "auto",
    weights=None,
    random_weights: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    threads: int | None = None,
    progress=None,
    log=None,
):
    """:func:`napari_meddift.evaluation.l2r.evaluate_l2r` with extraction and matching as Dask tasks.

    ``root``, ``backbone``, ``settings``, ``radius``, ``cases``, ``out_dir``, ``labels_root``,
    ``levels``, ``keypoints``, ``weights``, ``random_weights``, ``log``: as for ``evaluate_l2r``; a
    backbone given by name is built on the workers (its ``weights`` must be readable there).
    ``device``: matching device; ``"auto"`` is resolved on each worker.
    ``workers``, ``scheduler``, ``client``: a local cluster of that many processes (default 1), the
    running scheduler at that address (``tcp://host:port``), or that ``distributed.Client``.
    ``threads``: PyTorch threads per worker (default: the cores split between workers).
    ``progress``: ``progress(done, total, message)`` per extracted image and per matched case.

    Returns the same ``L2RResult`` as the serial harness (table and JSON written to the output folder).
    """
    from ..backbones.base import ExtractionSettings
    from ..evaluation.l2r import check_files, evaluate_l2r, is_identity, l2r_cases, method_name, output_folder

    if is_identity(backbone):  # nothing to extract or match
        return evaluate_l2r(root, None, settings, radius, cases, out_dir, labels_root=labels_root, keypoints=keypoints,
                            log=log)
    _, case_list = l2r_cases(root, labels_root, cases)
    check_files(root, case_list, keypoints=keypoints)
    if isinstance(backbone, str):
        from ..backbones import backbone_levels

        backbone_levels(backbone)  # an unknown name fails here, before any worker starts
        backbone = BackboneSpec(backbone.lower(), str(weights) if weights is not None else None, bool(random_weights))
    settings = settings or ExtractionSettings(device=device)
    out = output_folder(root, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = evaluate_cases_on_cluster(
        case_list, backbone, settings, out, method_name(backbone, radius), radius=radius, levels=levels,
        keypoints=keypoints, device=device, workers=workers, scheduler=scheduler, client=client, threads=threads,
        progress=progress,
    )
    return evaluate_l2r(root, backbone, settings, radius, [c.case_id for c in case_list], out, labels_root=labels_root,
                        levels=levels, keypoints=keypoints, device=device, log=log, done=done)


__all__ = ["evaluate_cases_on_cluster", "evaluate_l2r_on_cluster"]
