"""Dask clusters for batch work: a local cluster of worker processes, or any scheduler by address.

A worker runs one scan at a time (one Dask thread) and gives PyTorch the CPU cores it owns:
``cores // workers`` on a local cluster, set through the OpenMP/MKL environment before the
worker process starts and again with ``torch.set_num_threads`` in every task. Where several
GPUs are visible, the local cluster starts one worker per GPU, each seeing only its own
(``CUDA_VISIBLE_DEVICES``), so ``--device auto`` / ``cuda`` lands on a different card per worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Sequence

from ..errors import MedDiftError

#: environment variable a local worker reads for its PyTorch thread count
THREADS_ENV = "MEDDIFT_THREADS"


def require_distributed() -> None:
    """MedDiftError (one line) unless Dask's ``distributed`` can be imported: it comes with the
    ``batch`` extra, which only ``extract-many`` and ``--workers``/``--scheduler`` need."""
    try:
        import distributed  # noqa: F401
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("dask", "distributed"):
            raise  # a broken install of something else: its own message is the useful one
        raise MedDiftError("Dask is not installed: extract-many and --workers/--scheduler need it; "
                           "install it from the clone with `pip install -e \".[batch]\"`") from None


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def visible_gpus() -> list[str]:
    """CUDA device ids this process can see ('0', '1', ... or the ids in CUDA_VISIBLE_DEVICES)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no torch/CUDA means no GPU
        return []


def threads_per_worker(n_workers: int, cores: int | None = None) -> int:
    """PyTorch threads for each of ``n_workers`` processes sharing ``cores`` (at least 1)."""
    cores = usable_cores() if cores is None else int(cores)
    return max(1, cores // max(1, int(n_workers)))


def thread_env(threads: int) -> dict[str, str]:
    """Environment that caps OpenMP, MKL, OpenBLAS and numba pools (read once, at process start)."""
    t = str(int(threads))
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "NUMBA_NUM_THREADS": t,
            THREADS_ENV: t}


def default_workers(device: str = "auto", gpus: Sequence[str] | None = None) -> int:
    """One worker per visible GPU when extraction may use CUDA, else one worker per 4 cores."""
    gpus = visible_gpus() if gpus is None else list(gpus)
    if device != "cpu" and len(gpus) > 0:
        return len(gpus)
    return max(1, usable_cores() // 4)


def worker_specs(
    n_workers: int,
    threads: int,
    gpus: Sequence[str] = (),
    memory_limit: int | None = None,
    silence_logs: int | bool = logging.CRITICAL,
) -> dict[str, dict]:
    """``SpecCluster`` worker specs: ``n_workers`` Nanny processes on 127.0.0.1, one task at a
    time, ``threads`` OpenMP/PyTorch threads each; with ``gpus``, worker ``i`` sees only
    ``gpus[i % len(gpus)]`` (``CUDA_VISIBLE_DEVICES``) and advertises the resource ``GPU=1``."""
    from distributed import Nanny

    workers = {}
    for i in range(int(n_workers)):
        env = thread_env(threads)
        opts: dict = {
            "nthreads": 1,
            "host": "127.0.0.1",
            "env": env,
            "memory_limit": memory_limit,
            "silence_logs": silence_logs,
            "dashboard": False,
        }
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(gpus[i % len(gpus)])
            opts["resources"] = {"GPU": 1}
        workers[f"meddift-{i}"] = {"cls": Nanny, "options": opts}
    return workers


def local_cluster(
    n_workers: int | None = None,
    *,
    threads: int | None = None,
    device: str = "auto",
    gpus: Sequence[str] | None = None,
    memory_limit: str | int | None = "auto",
    silence_logs: int | bool = logging.CRITICAL,
):
    """A ``distributed.SpecCluster`` of ``n_workers`` worker processes on 127.0.0.1 (see
    :func:`worker_specs`); the scheduler listens on a free loopback port, without dashboard.

    ``threads`` defaults to ``cores // n_workers``; with ``device`` other than 'cpu', the visible
    GPUs (or ``gpus``) are dealt out one per worker. ``memory_limit``: per worker ('auto': the
    machine's memory split between the workers; None: no limit). A worker process that dies is
    restarted by its nanny and its task is run again by the scheduler.
    """
    require_distributed()
    from distributed import Scheduler, SpecCluster
    from distributed.worker_memory import parse_memory_limit

    gpus = visible_gpus() if gpus is None else list(gpus)
    use = gpus if device != "cpu" else []
    n = default_workers(device, gpus) if n_workers is None else int(n_workers)
    if n < 1:
        raise MedDiftError(f"--workers must be at least 1, got {n}")
    t = threads_per_worker(n) if threads is None else int(threads)
    if t < 1:
        raise MedDiftError(f"--threads must be at least 1, got {t}")
    limit = None
    if memory_limit is not None:
        limit = parse_memory_limit(memory_limit, 1, n, logger=logging.getLogger("distributed.nanny"))
    scheduler = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "port": 0, "dashboard": False, "dashboard_address": None},
    }
    return SpecCluster(workers=worker_specs(n, t, use, limit, silence_logs), scheduler=scheduler,
                       silence_logs=silence_logs, name="meddift")


_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss")


def check_scheduler_address(address: object) -> str:
    """``address`` if it reads as a Dask scheduler address (``[scheme://]host:port``), else one
    MedDiftError line -- before any cluster is started or contacted."""
    text = str(address if address is not None else "").strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "tcp", text
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")
    if scheme == "inproc" and rest or (scheme in _SCHEMES and colon and host and "/" not in host
                                        and port.isdigit() and 1 <= int(port) <= 65535):
        return text
    raise MedDiftError(f"--scheduler {text!r} is not a Dask scheduler address; give one like tcp://10.0.0.5:8786 "
                       f"(scheme {', '.join(_SCHEMES)}; a host; a port 1-65535), or leave it out for a local cluster")


@contextlib.contextmanager
def connect(
    workers: int | None = None,
    scheduler: str | None = None,
    *,
    threads: int | None = None,
    device: str = "auto",
    timeout: float = 30.0,
) -> Iterator:
    """A ``distributed.Client``: to ``scheduler`` (``tcp://host:port``) if given, else to a new
    local cluster of ``workers`` processes, closed again on exit.

    MedDiftError when the scheduler cannot be reached or has no worker within ``timeout`` s, or
    when Dask is not installed (:func:`require_distributed`).
    """
    require_distributed()
    from distributed import Client

    if scheduler is not None and workers is not None:
        raise MedDiftError("give either --workers (a local cluster) or --scheduler (an existing one), not both")
    if scheduler is not None:
        check_scheduler_address(scheduler)
        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError, TypeError) as exc:
            raise MedDiftError(
                f"cannot reach the Dask scheduler at {scheduler} ({exc}); start one with `dask scheduler` "
                "and workers with `dask worker ADDRESS`, or leave out --scheduler for a local cluster"
            ) from None
        try:
            try:
                client.wait_for_workers(1, timeout=timeout)
            except TimeoutError:
                raise MedDiftError(
                    f"the Dask scheduler at {scheduler} has no workers after {timeout:g} s; "
                    f"start some with `dask worker {scheduler}`"
                ) from None
            yield client
        finally:
            client.close()
        return
    cluster = local_cluster(workers, threads=threads, device=device)
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def workers_per_host(client) -> dict[str, int]:
    """{host: number of worker processes there}, to split each host's cores between them."""
    from distributed.comm import get_address_host

    counts: dict[str, int] = {}
    for addr in client.scheduler_info(n_workers=-1)["workers"]:
        host = get_address_host(addr)
        counts[host] = counts.get(host, 0) + 1
    return counts


def task_threads(threads: int | None = None, per_host: dict[str, int] | None = None) -> int:
    """Inside a task: the PyTorch threads this worker should use, and set them.

    ``threads`` if given; else $MEDDIFT_THREADS (set by :func:`local_cluster`); else this host's
    cores split between the worker processes on it (``per_host``) and their Dask threads.
    """
    import torch

    n = threads
    if n is None and os.environ.get(THREADS_ENV, "").isdigit():
        n = int(os.environ[THREADS_ENV])
    if n is None:
        sharing, nthreads = 1, 1
        try:
            from distributed import get_worker
            from distributed.comm import get_address_host

            w = get_worker()
            nthreads = max(1, int(w.state.nthreads))
            sharing = (per_host or {}).get(get_address_host(w.address), 1)
        except (ValueError, ImportError):  # not inside a Dask worker
            pass
        n = max(1, usable_cores() // (sharing * nthreads))
    n = max(1, int(n))
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


__all__ = [
    "THREADS_ENV",
    "connect",
    "default_workers",
    "local_cluster",
    "task_threads",
    "thread_env",
    "threads_per_worker",
    "usable_cores",
    "visible_gpus",
    "worker_specs",
    "workers_per_host",
]
