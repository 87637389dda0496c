"""Run any function over many inputs on a Dask client, each task with its share of the CPU cores."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..backbones.base import ProgressCallback
from .tasks import call_with_threads


def map_tasks(
    client,
    fn: Callable[..., Any],
    calls: Sequence[tuple[tuple, dict]],
    *,
    threads: int | None = None,
    retries: int = 1,
    progress: ProgressCallback | None = None,
    label: str = "task",
) -> list[Any]:
    """``[fn(*args, **kwargs) for args, kwargs in calls]``, one Dask task each; results in order.

    The first exception (a MedDiftError as it was raised on the worker) cancels the rest and is
    raised here. ``progress(done, total, label)`` after each task.
    """
    from distributed import as_completed

    from .cluster import workers_per_host

    per_host = workers_per_host(client)
    futures = [client.submit(call_with_threads, fn, threads, per_host, *args, pure=False, retries=retries, **kwargs)
               for args, kwargs in calls]
    index = {f: i for i, f in enumerate(futures)}
    out: list[Any] = [None] * len(futures)
    try:
        for done, fut in enumerate(as_completed(futures), 1):
            out[index[fut]] = fut.result()
            if progress is not None:
                progress(done, len(futures), label)
    finally:
        for fut in futures:
            fut.cancel()
    return out


__all__ = ["map_tasks"]
