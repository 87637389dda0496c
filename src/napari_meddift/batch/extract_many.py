"""Extract many scans on a Dask cluster: one task per scan, a resumable output folder, a CSV report.

``extract_many(images, outdir)`` writes ``outdir/<name>.zarr`` per image through the atomic
store writer and ``outdir/extract-many.csv`` (one row per scan, rewritten as each one ends).
A store whose cache key matches is kept (a rerun resumes); a scan that fails is reported and
the others go on; a task whose worker dies is run again on another worker by the scheduler.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..backbones.base import ExtractionSettings, ProgressCallback
from ..errors import MedDiftError
from .tasks import COLUMNS, DONE, FAILED, SKIPPED, BackboneSpec, ScanJob, ScanResult, extract_scan, preflight

REPORT_NAME = "extract-many.csv"
_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")


def scan_name(image: str | os.PathLike) -> str:
    """Store name of an image: its file name without the image suffix (a DICOM folder: its name)."""
    name = Path(image).name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "scan"


def plan_jobs(images: Sequence[str | os.PathLike], outdir: str | os.PathLike) -> list[ScanJob]:
    """One job per image with output ``outdir/<name>.zarr``; MedDiftError for missing images or
    two images that would share a store name."""
    if not images:
        raise MedDiftError("no images given; name one or more scans (NIfTI, MHA, NRRD files or DICOM folders)")
    missing = [str(p) for p in images if not Path(p).exists()]
    if missing:
        raise MedDiftError(f"no such image(s): {', '.join(missing)}; check the paths")
    jobs: dict[str, ScanJob] = {}
    for image in images:
        name = scan_name(image)
        if name in jobs:
            raise MedDiftError(
                f"{jobs[name].image} and {image} would both be written to {name}.zarr; rename one of them"
            )
        jobs[name] = ScanJob(name=name, image=str(Path(image).resolve()),
                             store=str(Path(outdir).resolve() / f"{name}.zarr"))
    return list(jobs.values())


def write_report(path: str | os.PathLike, results: Sequence[ScanResult]) -> Path:
    """``extract-many.csv``: one row per scan (columns :data:`COLUMNS`), replaced atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in results:
            w.writerow(r.row())
    os.replace(tmp, path)
    return path


def remove_leftovers(store: str | os.PathLike) -> list[Path]:
    """Delete ``<store>.partial-*`` folders (writes a dead worker never finished) and ``<store>.old-*``
    copies once ``store`` itself is whole. Call only when no task writes this store any more."""
    from ..io.store import open_store

    store = Path(store)
    removed = []
    whole = True
    try:
        open_store(store)
    except MedDiftError:
        whole = False
    for p in store.parent.glob(f"{store.name}.partial-*"):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    if whole:
        for p in store.parent.glob(f"{store.name}.old-*"):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@dataclass
class BatchReport:
    """The outcome of :func:`extract_many`: per-scan results in input order and the CSV path."""

    results: list[ScanResult]
    csv_path: Path | None

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def ok(self) -> bool:
        return self.count(FAILED) == 0

    def summary(self) -> str:
        return f"{self.count(DONE)} extracted, {self.count(SKIPPED)} already complete, {self.count(FAILED)} failed"


def _as_backbone(backbone, weights, random_weights):
    if isinstance(backbone, str):
        from ..backbones import backbone_levels

        backbone_levels(backbone)  # unknown name -> MedDiftError now
        return BackboneSpec(backbone.lower(), str(weights) if weights is not None else None, bool(random_weights))
    return backbone  # a BackboneSpec or a Backbone object (pickled to the workers)


def _failure(job: ScanJob, exc: BaseException) -> ScanResult:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        msg = "every worker that ran this scan died (out of memory? see the worker logs)"
    else:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ScanResult(name=job.name, image=job.image, store=job.store or "", status=FAILED, error=msg)


def run_jobs(
    client,
    jobs: Sequence[ScanJob],
    backbone,
    settings: ExtractionSettings,
    *,
    overwrite: bool = False,
    threads: int | None = None,
    retries: int = 1,
    progress: ProgressCallback | None = None,
    report: str | os.PathLike | None = None,
) -> list[ScanResult]:
    """Submit one :func:`extract_scan` task per job to ``client``; results in job order.

    The backbone is built on one worker first (:func:`preflight`): a missing checkpoint or GPU
    raises MedDiftError before any scan starts. ``report``: CSV rewritten after every scan.
    """
    from distributed import as_completed

    from .cluster import workers_per_host

    try:
        client.submit(preflight, backbone, settings, pure=False).result()
    except ImportError as exc:  # unpickling our task needs the package on the worker
        raise MedDiftError(
            f"the Dask workers cannot run napari-meddift ({exc}); install the same version on every worker"
        ) from None
    per_host = workers_per_host(client)
    results: list[ScanResult | None] = [None] * len(jobs)
    futures = {
        client.submit(extract_scan, job, backbone, settings, overwrite, threads, per_host,
                      key=f"meddift-extract-{job.name}-{os.urandom(4).hex()}", retries=retries, pure=False): i
        for i, job in enumerate(jobs)
    }
    total = len(jobs)
    if progress is not None:
        progress(0, total, "")
    done = 0
    finished: set[int] = set()
    try:
        for fut in as_completed(futures):
            i = futures[fut]
            finished.add(i)
            try:
                results[i] = fut.result()
            except Exception as exc:  # noqa: BLE001 - one scan's failure is reported, the rest go on
                results[i] = _failure(jobs[i], exc)
            fut.release()
            done += 1
            if report is not None:
                write_report(report, [r for r in results if r is not None])
            if progress is not None:
                counts = [r.status for r in results if r is not None]
                progress(done, total, f"{counts.count(DONE)} done, {counts.count(SKIPPED)} kept, "
                                      f"{counts.count(FAILED)} failed")
    finally:
        for fut in futures:
            fut.cancel()
        for i in finished:  # a cancelled task may still be writing: its folder is left alone
            store = jobs[i].store or (results[i].store if results[i] is not None else None)
            if store:
                remove_leftovers(store)
    return [r for r in results if r is not None]


def extract_many(
    images: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    backbone: Any = "mini",
    settings: ExtractionSettings | None = None,
    *,
    weights: str | os.PathLike | None = None,
    random_weights: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    threads: int | None = None,
    overwrite: bool = False,
    retries: int = 1,
    progress: ProgressCallback | None = None,
) -> BatchReport:
    """Extract a descriptor store ``outdir/<name>.zarr`` for every image, in parallel on Dask.

    ``backbone``: a registered name (built on each worker from ``weights`` /
    ``random_weights``), a :class:`BackboneSpec` or a backbone object. Where it runs: ``client``
    (an existing ``distributed.Client``), else ``scheduler`` (``tcp://host:port`` of a running
    cluster), else a local cluster of ``workers`` processes (default: one per GPU, or one per 4
    cores) that is shut down afterwards. ``threads``: PyTorch threads per worker (default: the
    host's cores split between its workers). ``retries``: extra attempts after an unexpected
    error (a worker that dies is handled by the scheduler: its task runs again elsewhere, up to
    ``distributed.scheduler.allowed-failures`` times). ``progress(done, total, message)`` after
    each scan. Returns the per-scan results; ``outdir/extract-many.csv`` holds the same rows.
    """
    settings = settings or ExtractionSettings()
    outdir = Path(outdir).expanduser()
    jobs = plan_jobs(images, outdir)
    spec = _as_backbone(backbone, weights, random_weights)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MedDiftError(f"cannot create the output folder {outdir}: {exc.strerror}") from None
    report = outdir / REPORT_NAME
    kw = dict(overwrite=overwrite, threads=threads, retries=retries, progress=progress, report=report)
    if client is not None:
        results = run_jobs(client, jobs, spec, settings, **kw)
    else:
        from .cluster import connect

        n = min(workers, len(jobs)) if workers is not None else None
        if scheduler is None and n is None:
            from .cluster import default_workers

            n = min(default_workers(settings.device), len(jobs))
        with connect(n, scheduler, threads=threads, device=settings.device) as c:
            results = run_jobs(c, jobs, spec, settings, **kw)
    write_report(report, results)
    return BatchReport(results, report)


__all__ = ["REPORT_NAME", "BatchReport", "extract_many", "plan_jobs", "remove_leftovers", "run_jobs", "scan_name",
           "write_report"]
