"""What runs on a Dask worker: one scan -> one descriptor store, timed and memory-sampled."""

from __future__ import annotations

import os
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backbones.base import ExtractionSettings
from ..errors import MedDiftError

#: statuses a scan ends in
DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone by name, built on the worker (weights are read there, once per process)."""

    name: str = "mini"
    weights: str | None = None
    random_weights: bool = False
    options: tuple[tuple[str, Any], ...] = ()  # extra keyword arguments, as sorted pairs

    def build(self):
        from ..backbones import get_backbone

        return get_backbone(self.name, weights=self.weights, random_weights=self.random_weights, **dict(self.options))


_BACKBONE: dict[BackboneSpec, Any] = {}


def backbone_for(spec) -> Any:
    """The backbone of ``spec`` (built once per worker process; the last one is kept), or ``spec``
    itself when it already is a backbone object."""
    if not isinstance(spec, BackboneSpec):
        return spec
    if spec not in _BACKBONE:
        _BACKBONE.clear()  # one model in memory per worker
        _BACKBONE[spec] = spec.build()
    return _BACKBONE[spec]


@dataclass(frozen=True)
class ScanJob:
    """One scan to extract: ``store`` is the output path, or None to name it by cache key in ``cache_dir``."""

    name: str
    image: str
    store: str | None
    cache_dir: str | None = None


@dataclass
class ScanResult:
    """One row of ``extract-many.csv``."""

    name: str
    image: str
    store: str = ""
    status: str = FAILED  # done | skipped | failed
    seconds: float = 0.0
    peak_rss_mb: float = 0.0  # worker process, sampled every 50 ms during the task
    peak_gpu_mb: float = 0.0  # torch.cuda.max_memory_allocated during the task (0 on CPU)
    worker: str = ""
    threads: int = 0
    error: str = ""

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["seconds"] = round(self.seconds, 3)
        d["peak_rss_mb"] = round(self.peak_rss_mb, 1)
        d["peak_gpu_mb"] = round(self.peak_gpu_mb, 1)
        return d


COLUMNS = tuple(f for f in ScanResult.__dataclass_fields__)


@dataclass
class PeakMemory:
    """Samples this process's resident memory in a thread; ``peak_mb`` after the block."""

    interval: float = 0.05
    peak_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def _sample(self, proc) -> None:
        rss = proc.memory_info().rss / 2**20
        self.peak_mb = max(self.peak_mb, rss)

    def __enter__(self) -> "PeakMemory":
        import psutil

        proc = psutil.Process()
        self._sample(proc)

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self._sample(proc)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        self._proc = proc
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample(self._proc)


def _worker_label() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ValueError, ImportError):
        return f"local-pid{os.getpid()}"


def _gpu_peak_reset() -> bool:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
        return True
    return False


def extract_scan(
    job: ScanJob,
    backbone,
    settings: ExtractionSettings,
    overwrite: bool = False,
    threads: int | None = None,
    per_host: dict[str, int] | None = None,
) -> ScanResult:
    """Extract ``job.image`` into its store on this worker; a store with the same cache key is kept.

    A user-fixable problem (unreadable scan, a path that is not a store, ...) comes back as a
    ``failed`` result (retrying would not help); any other exception is raised so that Dask
    retries the task, with this worker's address in the message.
    """
    import torch

    from ..backbones.extraction import cached_store_path, extract_to_store
    from ..io.volume import read_volume
    from .cluster import task_threads

    res = ScanResult(name=job.name, image=job.image, store=job.store or "", worker=_worker_label())
    t0 = time.perf_counter()
    mem = PeakMemory()
    try:
        res.threads = task_threads(threads, per_host)
        with mem:
            bb = backbone_for(backbone)
            volume = read_volume(job.image)
            if job.store is None:
                path = cached_store_path(volume, bb, settings, job.cache_dir)
            else:
                path = Path(job.store)
            res.store = str(path)
            gpu = _gpu_peak_reset()
            _, reused = extract_to_store(volume, bb, settings, path, overwrite=overwrite)
            if gpu or (torch.cuda.is_available() and torch.cuda.is_initialized()):
                res.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
        res.status = SKIPPED if reused else DONE
    except MedDiftError as exc:
        res.status, res.error = FAILED, str(exc)
    except Exception as exc:  # re-raised for Dask's retries, with where it happened
        tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        raise RuntimeError(f"{job.name} on {res.worker}: {tail}") from exc
    res.seconds = time.perf_counter() - t0
    res.peak_rss_mb = mem.peak_mb
    return res


def preflight(backbone, settings: ExtractionSettings) -> dict[str, Any]:
    """On one worker: build the backbone (kept for that worker's first scan) and check the device,
    so that a missing checkpoint or GPU is one clear error before any scan is submitted."""
    from ..backbones.base import resolve_device

    bb = backbone_for(backbone)
    device = resolve_device(settings.device)
    return {"backbone": bb.name, "weights_hash": bb.weights_hash, "device": str(device), "worker": _worker_label()}


__all__ = ["BackboneSpec", "COLUMNS", "DONE", "FAILED", "PeakMemory", "SKIPPED", "ScanJob", "ScanResult",
           "backbone_for", "call_with_threads", "extract_scan", "preflight"]


def call_with_threads(fn, threads: int | None, per_host: dict[str, int] | None, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` on a worker after giving PyTorch this worker's share of the cores."""
    from .cluster import task_threads

    task_threads(threads, per_host)
    return fn(*args, **kwargs)
