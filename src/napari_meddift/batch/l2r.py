"""Learn2Reg evaluation on a Dask cluster: every image extracted as one task, then every case matched as one."""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import Sequence

from ..errors import MedDiftError
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


#: where the cluster run's defaults differ from :func:`~napari_meddift.evaluation.l2r.evaluate_l2r`'s
CLUSTER_DEFAULTS = {"device": "auto"}  # resolved on each worker, which may hold its own GPU


def evaluate_l2r_on_cluster(root, *args, workers: int | None = None, scheduler: str | None = None, client=None,
                            threads: int | None = None, progress=None, **kwargs):
    """:func:`napari_meddift.evaluation.l2r.evaluate_l2r` with extraction and matching as Dask tasks.

    Takes ``evaluate_l2r``'s arguments (its signature is the one source of them; only ``device``
    defaults differently, :data:`CLUSTER_DEFAULTS`) and the cluster's own keywords.

    ``root``, ``*args``, ``**kwargs``: as for ``evaluate_l2r`` (``done`` aside); a backbone given by
    name is built on the workers (its ``weights`` must be readable there). ``device``: the matching
    device, ``"auto"`` by default, resolved on each worker.
    ``workers``, ``scheduler``, ``client``: a local cluster of that many processes (default 1), the
    running scheduler at that address (``tcp://host:port``), or that ``distributed.Client``.
    ``threads``: PyTorch threads per worker (default: the cores split between workers).
    ``progress``: ``progress(done, total, message)`` per extracted image and per matched case.

    Returns the same ``L2RResult`` as the serial harness (table and JSON written to the output folder).
    """
    from ..backbones.base import ExtractionSettings
    from ..evaluation.l2r import check_files, evaluate_l2r, is_identity, l2r_cases, method_name, output_folder

    if "done" in kwargs:
        raise TypeError("evaluate_l2r_on_cluster() got an unexpected keyword argument 'done'")
    call = inspect.signature(evaluate_l2r).bind(root, *args, **{**CLUSTER_DEFAULTS, **kwargs})
    call.apply_defaults()
    run = dict(call.arguments)  # every argument of evaluate_l2r, by name
    backbone, radius = run["backbone"], run["radius"]
    if is_identity(backbone):  # nothing to extract or match
        return evaluate_l2r(root, None, run["settings"], radius, run["cases"], run["out_dir"],
                            labels_root=run["labels_root"], keypoints=run["keypoints"], log=run["log"])
    _, case_list = l2r_cases(root, run["labels_root"], run["cases"])
    check_files(root, case_list, keypoints=run["keypoints"])
    if isinstance(backbone, str):
        from ..backbones import backbone_levels

        backbone_levels(backbone)  # an unknown name fails here, before any worker starts
        weights = run["weights"]
        backbone = BackboneSpec(backbone.lower(), str(weights) if weights is not None else None,
                                bool(run["random_weights"]))
    settings = run["settings"] or ExtractionSettings(device=run["device"])
    out = output_folder(root, run["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    done = evaluate_cases_on_cluster(
        case_list, backbone, settings, out, method_name(backbone, radius), radius=radius, levels=run["levels"],
        keypoints=run["keypoints"], device=run["device"], workers=workers, scheduler=scheduler, client=client,
        threads=threads, progress=progress,
    )
    return evaluate_l2r(**{**run, "backbone": backbone, "settings": settings,
                           "cases": [c.case_id for c in case_list], "out_dir": out, "done": done})


def _cluster_signature() -> inspect.Signature:
    """``evaluate_l2r``'s signature with :data:`CLUSTER_DEFAULTS`, less ``done`` and its per-case
    ``progress``, plus the cluster's keywords: what ``help(evaluate_l2r_on_cluster)`` shows."""
    from ..evaluation.l2r import evaluate_l2r

    shared = [p.replace(default=CLUSTER_DEFAULTS.get(p.name, p.default))
              for p in inspect.signature(evaluate_l2r).parameters.values() if p.name not in ("done", "progress")]
    own = [p for p in inspect.signature(evaluate_l2r_on_cluster).parameters.values()
           if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return inspect.signature(evaluate_l2r).replace(parameters=shared + own)


evaluate_l2r_on_cluster.__signature__ = _cluster_signature()  # type: ignore[attr-defined]


__all__ = ["evaluate_cases_on_cluster", "evaluate_l2r_on_cluster"]
