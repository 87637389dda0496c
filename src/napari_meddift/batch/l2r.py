"""Learn2Reg evaluation on a Dask cluster: every image extracted as one task, then every case matched as one."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

from ..errors import MedDiftError
from .tasks import ScanJob


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
    radius: int | None,
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


__all__ = ["evaluate_cases_on_cluster"]
