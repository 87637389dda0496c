"""extract-many on real Dask processes: a local cluster, and a scheduler + workers started here.

Stores written by workers must be exactly those of a single-process extraction at the same
PyTorch thread count (1 here; float results depend on the thread count in the last bit).
"""

import csv
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_meddift.backbones import get_backbone
from napari_meddift.backbones.base import ExtractionSettings
from napari_meddift.batch import extract_many, scan_name
from napari_meddift.batch.cluster import thread_env, threads_per_worker, worker_specs
from napari_meddift.batch.extract_many import plan_jobs
from napari_meddift.cli import main
from napari_meddift.errors import MedDiftError
from napari_meddift.backbones.extraction import extract_to_store
from napari_meddift.io.store import open_store
from napari_meddift.io.volume import Volume, read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]
CTS = ("chest_cip_ct64", "lung_elastix_small")
# only the creation time may differ between two extractions of the same scan
VOLATILE = {"created", "write_id"}  # when, and a random id per write (io/store.py)


@pytest.fixture(scope="module")
def scans(shared_data, tmp_path_factory):
    """32^3 crops of two real CTs (seconds to extract with mini) and a corrupt 'scan'."""
    d = tmp_path_factory.mktemp("scans")
    paths = []
    for name in CTS:
        v = read_volume(shared_data / "ct" / f"{name}.nii.gz")
        crop = np.ascontiguousarray(v.array[8:40, 10:42, 12:44])
        p = d / f"{name}.nii.gz"
        write_volume(Volume(crop, spacing=v.spacing, origin=v.origin, direction=v.direction, name=name), p)
        paths.append(p)
    broken = d / "broken.nii.gz"
    broken.write_bytes(b"this is not a NIfTI file" * 8)
    return paths, broken


@pytest.fixture(scope="module")
def reference(scans, tmp_path_factory):
    """{name: (levels, attrs)} from extract_to_store in this process, at 1 PyTorch thread."""
    out = tmp_path_factory.mktemp("ref")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bb = get_backbone("mini")
        ref = {}
        for p in scans[0]:
            st, _ = extract_to_store(read_volume(p), bb, ExtractionSettings(), out / f"{scan_name(p)}.zarr")
            ref[scan_name(p)] = (st.load_levels(), st.attrs)
    finally:
        torch.set_num_threads(before)
    return ref


def assert_identical(store_path, ref, volatile=VOLATILE):
    levels, attrs = ref
    st = open_store(store_path)  # complete, valid
    got = st.load_levels()
    assert list(got) == list(levels)
    for name in levels:
        assert np.array_equal(got[name], levels[name]), f"{store_path}: level {name} differs"
    a = {k: v for k, v in st.attrs.items() if k not in volatile}
    b = {k: v for k, v in attrs.items() if k not in volatile}
    assert a == b


def read_csv(path):
    with open(path, newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def no_leftovers(folder):
    return [p.name for p in Path(folder).iterdir() if ".partial-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------ no processes


def test_names_and_plan(tmp_path):
    assert scan_name("/a/LungCT_0001_0000.nii.gz") == "LungCT_0001_0000"
    assert scan_name("/a/case 7.mha") == "case_7" and scan_name("/dicom/series1") == "series1"
    a, b = tmp_path / "x" / "s.nii.gz", tmp_path / "y" / "s.nii.gz"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"")
    jobs = plan_jobs([a], tmp_path / "out")
    assert jobs[0].store == str((tmp_path / "out" / "s.zarr").resolve())
    with pytest.raises(MedDiftError, match="both be written to s.zarr"):
        plan_jobs([a, b], tmp_path / "out")
    with pytest.raises(MedDiftError, match="no such image"):
        plan_jobs([a, tmp_path / "missing.nii.gz"], tmp_path / "out")
    with pytest.raises(MedDiftError, match="unknown backbone"):
        extract_many([a], tmp_path / "out", "nonesuch")


def test_workers_split_cores_and_gpus():
    assert threads_per_worker(2, cores=16) == 8 and threads_per_worker(3, cores=2) == 1
    assert thread_env(4)["OMP_NUM_THREADS"] == "4" and thread_env(4)["MEDDIFT_THREADS"] == "4"
    specs = worker_specs(3, 5, gpus=["0", "1"])
    envs = [s["options"]["env"] for s in specs.values()]
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0"]
    assert all(s["options"]["nthreads"] == 1 and s["options"]["resources"] == {"GPU": 1} for s in specs.values())
    assert all(e["OMP_NUM_THREADS"] == "5" for e in envs)
    cpu = worker_specs(2, 1)
    assert all("CUDA_VISIBLE_DEVICES" not in s["options"]["env"] for s in cpu.values())


def test_unreachable_scheduler_is_one_clear_error():
    from napari_meddift.batch import connect

    with pytest.raises(MedDiftError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:1 .*dask scheduler"):
        with connect(scheduler="tcp://127.0.0.1:1", timeout=1):
            pass
    with pytest.raises(MedDiftError, match="not both"):
        with connect(2, "tcp://127.0.0.1:1"):
            pass


# ------------------------------------------------------------------ a local cluster


@pytest.mark.slow
def test_local_cluster_reports_failures_and_resumes(scans, reference, tmp_path, capsys):
    paths, broken = scans
    out = tmp_path / "out"
    argv = ["extract-many", *map(str, paths), str(broken), "-o", str(out), "--workers", "2", "--threads", "1"]
    assert main(argv) == 1  # one scan failed, the others are done
    err = capsys.readouterr().err
    assert "broken" in err and "corrupt" in err
    rows = read_csv(out / "extract-many.csv")
    assert set(rows) == {*CTS, "broken"}
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["error"]
    assert not (out / "broken.zarr").exists()
    for name in CTS:
        r = rows[name]
        assert r["status"] == "done" and r["error"] == "" and r["threads"] == "1"
        assert float(r["seconds"]) > 0 and float(r["peak_rss_mb"]) > 100 and r["worker"].startswith("tcp://127.0.0.1:")
        assert_identical(out / f"{name}.zarr", reference[name])
    assert len({rows[n]["worker"] for n in CTS} | {rows["broken"]["worker"]}) == 2  # both workers took scans
    assert no_leftovers(out) == []

    created = {n: open_store(out / f"{n}.zarr").attrs["created"] for n in CTS}
    report = extract_many(paths, out, workers=1, threads=1)  # a rerun resumes: nothing to extract
    assert [r.status for r in report.results] == ["skipped", "skipped"] and report.ok
    assert {n: open_store(out / f"{n}.zarr").attrs["created"] for n in CTS} == created
    assert set(read_csv(out / "extract-many.csv")) == set(CTS)


# ------------------------------------------------------------------ a scheduler and workers by address


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _start_worker(address, log):
    cmd = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1", "--no-nanny",
           "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60", "--memory-limit", "0"]
    return subprocess.Popen(cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def cluster_address(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1, stopped afterwards."""
    pytest.importorskip("distributed")
    d = tmp_path_factory.mktemp("cluster")
    sched_file = d / "scheduler.json"
    log = open(d / "cluster.log", "w")
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", str(sched_file)],
        env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.2)
        import json

        address = json.loads(sched_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        procs += [_start_worker(address, log) for _ in range(2)]
        yield address, procs, log
    finally:
        for p in reversed(procs):  # nothing to save: a graceful close only waits on timeouts
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait(20)
        log.close()


@pytest.mark.slow
def test_existing_scheduler_by_address(cluster_address, scans, reference, tmp_path):
    address, _, _ = cluster_address
    paths, _ = scans
    seen = []
    report = extract_many(paths, tmp_path / "out", scheduler=address, threads=1, progress=lambda *a: seen.append(a))
    assert report.ok and [r.status for r in report.results] == ["done", "done"]
    assert seen[-1][:2] == (2, 2)
    for name in CTS:
        assert_identical(tmp_path / "out" / f"{name}.zarr", reference[name])


@pytest.mark.slow
def test_killed_worker_leaves_every_store_complete(cluster_address, scans, reference, tmp_path):
    """A third worker joins and is SIGKILLed while it extracts; its scan runs again elsewhere."""
    from distributed import Client

    address, procs, log = cluster_address
    paths, _ = scans
    images = []
    for k in range(3):  # six scans: each crop three times under other names
        for p in paths:
            q = tmp_path / "in" / f"{scan_name(p)}-{k}.nii.gz"
            q.parent.mkdir(exist_ok=True)
            shutil.copy(p, q)
            images.append(q)
    victim = _start_worker(address, log)
    procs.append(victim)
    with Client(address, timeout=30) as watcher:
        watcher.wait_for_workers(3, timeout=60)
        pids = watcher.run(os.getpid)
        victim_addr = next(a for a, pid in pids.items() if pid == victim.pid)

        result = {}
        runner = threading.Thread(
            target=lambda: result.setdefault("report", extract_many(images, tmp_path / "out", scheduler=address,
                                                                    threads=1)))
        runner.start()
        killed_while = None
        deadline = time.time() + 120
        while time.time() < deadline and runner.is_alive():
            busy = [k for k in watcher.processing().get(victim_addr, ()) if "meddift-extract" in str(k)]
            if busy:
                time.sleep(0.3)  # well inside the task: reading, extracting or writing
                killed_while = busy
                os.kill(victim.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        runner.join(300)
    print("killed", victim_addr, "while it ran", killed_while)
    assert killed_while, "the extra worker never got a scan"
    assert victim.wait(10) == -signal.SIGKILL
    report = result["report"]
    assert report.ok, report.results
    assert all(r.worker != victim_addr for r in report.results)
    for img in images:
        original = scan_name(img).rsplit("-", 1)[0]  # the copy's name is its only difference
        # the metadata checksum covers the source name too
        assert_identical(tmp_path / "out" / f"{scan_name(img)}.zarr", reference[original],
                         VOLATILE | {"source", "metadata_checksum"})
    assert no_leftovers(tmp_path / "out") == []
