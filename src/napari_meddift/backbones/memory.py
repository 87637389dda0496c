"""Peak memory of one extraction, estimated before it runs, and the memory there is to run it.

``peak bytes = base + bytes_per_voxel * N`` where N is the number of voxels the network sees
(the scan on its extraction grid, resized to the backbone's network shape; the extraction grid
itself for MIND-SSC), plus the scan itself and its resampling copies. The
coefficients were measured with ``benchmarks/bench_memory.py`` (fresh process per run,
``ru_maxrss`` on CPU, ``torch.cuda.max_memory_allocated`` on CUDA); docs/reliability.md lists
the runs. A margin of 15% is added on top.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import MedDiftError

GB = 1024**3

#: (backbone, device type) -> (base bytes, bytes per network voxel). CPU rows: least-squares fits
#: of peak RSS measured on a 2-core CPU (mini at 64^3..160^3, its forward stopping after the last
#: level and its full-resolution upsampler in slabs: 0.56 GB + 389 B/voxel; MIND-SSC at
#: 64^3..128^3: 0.47 GB + 164 B/voxel; MAISI at random weights, one run at 128^3: 1.21 GB after
#: building the model, 4.04 GB peak). CUDA rows are NOT measured (no GPU reachable with this code):
#: half the CPU activation bytes (fp16 autocast) plus the fp32 weights, to be confirmed on a GPU.
COEFFICIENTS: dict[tuple[str, str], tuple[float, float]] = {
    ("mini", "cpu"): (0.56 * GB, 400.0),
    ("mini", "cuda"): (0.05 * GB, 500.0),
    ("maisi", "cpu"): (1.2 * GB, 1400.0),
    ("maisi", "cuda"): (0.8 * GB, 700.0),
    ("mind-ssc", "cpu"): (0.47 * GB, 170.0),
    ("mind-ssc", "cuda"): (0.05 * GB, 170.0),
}
#: network shape rule per backbone: (multiple, min_size); None means the scan's own shape
_NETWORK_RULE: dict[str, tuple[int, int] | None] = {"mini": (16, 16), "maisi": (128, 128), "mind-ssc": None}
MARGIN = 1.15


def network_voxels(backbone: str, image_shape, preprocessing=None) -> int:
    """Voxels of the network input for a scan of ``image_shape`` (z, y, x)."""
    from .preprocessing import network_shape

    shape = tuple(int(n) for n in image_shape)
    if preprocessing is not None and hasattr(preprocessing, "multiple"):
        rule: tuple[int, int] | None = (int(preprocessing.multiple), int(preprocessing.min_size))
    else:
        rule = _NETWORK_RULE.get(backbone, (16, 16))
    if rule is not None:
        shape = network_shape(shape, *rule)
    return int(math.prod(shape))


@dataclass(frozen=True)
class MemoryCheck:
    """An estimate against what is available, in bytes."""

    backbone: str
    device: str  # "cpu" | "cuda"
    estimate: int
    available: int | None  # None: unknown (no limit checked)

    @property
    def fits(self) -> bool:
        return self.available is None or self.estimate <= self.available


def estimate_peak_bytes(backbone: str, grid_shape, device: str = "cpu", preprocessing=None, samples: int = 1,
                        image_shape=None) -> int:
    """Estimated peak memory (bytes) of extracting one scan; ``samples`` adds little (sums are reused).

    ``backbone``: registry name.
    ``grid_shape``: the extraction grid (z, y, x) the backbone runs on.
    ``device``: ``cpu`` or ``cuda``.
    ``preprocessing``: the backbone's network-shape rule, if any.
    ``samples``: noise samples (not counted: sums are reused).
    ``image_shape``: the scan's own grid when it differs (it is read, and copied once to resample).
    """
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    base, per_voxel = COEFFICIENTS.get((backbone, dev), COEFFICIENTS[("mini", dev)])
    n = network_voxels(backbone, grid_shape, preprocessing)
    scan = 4 * 3 * int(math.prod(int(s) for s in image_shape or grid_shape))  # the scan and its copies on the CPU
    return int(MARGIN * (base + per_voxel * n) + (scan if dev == "cpu" else 0))


def _cgroup_limit() -> int | None:
    for path, unlimited in (
        ("/sys/fs/cgroup/memory.max", "max"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", None),
    ):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text == unlimited or not text.isdigit() or int(text) >= 1 << 60:
            return None
        usage = None
        for upath in ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
            try:
                usage = int(Path(upath).read_text().strip())
                break
            except (OSError, ValueError):
                continue
        return max(0, int(text) - (usage or 0))
    return None


def available_bytes(device: str = "cpu") -> int | None:
    """Memory this process can still use: free GPU memory for CUDA; for the CPU, MemAvailable
    (or psutil's ``available``), capped by a cgroup limit. ``$MEDDIFT_MEMORY_LIMIT_GB`` replaces
    the figure (lower to be careful, higher to overrule an estimate). None when it cannot be told."""
    env = os.environ.get("MEDDIFT_MEMORY_LIMIT_GB")
    if env:
        try:
            return int(float(env) * GB)
        except ValueError:
            raise MedDiftError(f"MEDDIFT_MEMORY_LIMIT_GB must be a number of GB, got {env!r}") from None
    if str(device).startswith("cuda"):
        try:
            import torch

            free, _total = torch.cuda.mem_get_info()
            return int(free)
        except Exception:  # noqa: BLE001 - no CUDA: resolve_device reports that
            return None
    avail: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except OSError:
        try:
            import psutil

            avail = int(psutil.virtual_memory().available)
        except Exception:  # noqa: BLE001
            avail = None
    limits = [v for v in (avail, _cgroup_limit()) if v is not None]
    return min(limits) if limits else None


def check_memory(backbone: str, grid_shape, device: str = "cpu", preprocessing=None, samples: int = 1,
                 image_shape=None) -> MemoryCheck:
    """Estimate against availability; MedDiftError with the ways out when it cannot fit.

    ``grid_shape`` is the extraction grid the backbone runs on (after its own resampling),
    ``image_shape`` the scan's own grid when it differs."""
    dev = "cuda" if str(device).startswith("cuda") else "cpu"
    check = MemoryCheck(backbone, dev, estimate_peak_bytes(backbone, grid_shape, dev, preprocessing, samples,
                                                           image_shape), available_bytes(dev))
    if not check.fits:
        shape = "x".join(str(int(n)) for n in (image_shape or grid_shape))
        if image_shape is not None and tuple(image_shape) != tuple(grid_shape):
            shape += " (z,y,x) scan, resampled to " + "x".join(str(int(n)) for n in grid_shape) + " for"
        else:
            shape += " (z,y,x) scan with"
        ways = "crop the scan to the region of interest, extract on coarser voxels (--spacing MM, e.g. --spacing 3)"
        if dev == "cpu":
            ways += ", run on a GPU with --device cuda"
        if backbone != "mini":
            ways += ", or use the smaller mini backbone (--backbone mini)"
        raise MedDiftError(
            f"extracting a {shape} {backbone} on {dev.upper()} needs about "
            f"{check.estimate / GB:.1f} GB but {check.available / GB:.1f} GB is available; {ways} "
            "(or set MEDDIFT_MEMORY_LIMIT_GB to overrule the estimate)"
        )
    return check
