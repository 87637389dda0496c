"""Full-size MAISI on a CUDA GPU: extraction with the store write, and batch matching.

One prepared script for a lent GPU (run by hand; nothing in the tests depends on it):

    python benchmarks/bench_gpu_maisi.py --out /tmp/gpu [--size 256] [--points 2000]

What it measures, on a 256^3 network input (MAISI's size for a 192x192x208 lung CT):
1. the autoencoder encode and one diffusion-UNet pass on their own (fp16 and bf16 autocast),
2. ``extract_to_store`` end to end (preprocessing, encode, noise, UNet with hooks, descriptors
   back to the host, atomic zarr write), median of ``--repeats`` after a warm-up,
3. 2,000 keypoints matched globally (whole target) with the forward-backward check, and the
   same points in a window of radius 16, with the peak GPU memory of each.

MAISI runs at seeded random weights: timing does not depend on weight values. The scan is a
smooth synthetic HU phantom (no data travels with the script); the target is the same phantom
shifted by a few voxels. Results are printed as a markdown table and written to OUT/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from napari_meddift.backbones import get_backbone  # noqa: E402
from napari_meddift.backbones import maisi as maisi_module  # noqa: E402
from napari_meddift.backbones.base import ExtractionSettings  # noqa: E402
from napari_meddift.backbones.extraction import extract_to_store  # noqa: E402
from napari_meddift.matching import Matcher  # noqa: E402
from napari_meddift.io.store import open_store  # noqa: E402
from napari_meddift.io.volume import Volume  # noqa: E402


def phantom(size: int, shift: int = 0, seed: int = 0) -> Volume:
    """A size^3 body-like HU phantom: smooth noise in [-1000, 1000], optionally rolled."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 1, 12, 12, 12, generator=g)
    arr = F.interpolate(coarse, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]
    arr = (arr / arr.abs().max() * 1000.0).numpy().astype(np.float32)
    if shift:
        arr = np.roll(arr, (shift, -shift, shift // 2), axis=(0, 1, 2))
    return Volume(arr, spacing=(1.0, 1.0, 1.0), name=f"phantom{size}-s{shift}")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def components(bb, size: int, dtype: torch.dtype, repeats: int, device: str) -> dict:
    """Encode and one UNet pass alone, autocast ``dtype``, inputs already on the GPU."""
    dev = torch.device(device)
    bb._configure(dev, dtype, (size,) * 3)
    x = torch.rand(1, 1, size, size, size, device=dev)
    lat = torch.randn(1, 4, size // 4, size // 4, size // 4, device=dev)
    top = torch.tensor([[0.0, 100.0, 0.0, 0.0]], device=dev)
    sp = torch.tensor([[100.0, 100.0, 100.0]], device=dev)
    t = torch.tensor([20], device=dev)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype):
        enc = lambda: bb.autoencoder.encode(x)  # noqa: E731
        unet = lambda: bb.unet(lat, t, top_region_index_tensor=top, bottom_region_index_tensor=top,  # noqa: E731
                               spacing_tensor=sp)
        enc(), unet()  # warm-up (kernel selection)
        reset_peak()
        te = timed(enc, repeats)
        peak_e = peak_gb()
        reset_peak()
        tu = timed(unet, repeats)
        peak_u = peak_gb()
    return {"encode_s": float(np.median(te)), "unet_s": float(np.median(tu)),
            "encode_peak_gb": peak_e, "unet_peak_gb": peak_u}


def cold(fn):
    """``fn`` with MAISI's cache of recent latents emptied first, so the encoder runs every time."""
    def run():
        maisi_module._LATENTS.clear()
        return fn()

    return run


def extraction(bb, vol: Volume, out: Path, dtype: str, repeats: int, device: str) -> dict:
    settings = ExtractionSettings(timestep=20, device=device, dtype=dtype)
    extract_to_store(vol, bb, settings, out / f"warm-{dtype}.zarr", overwrite=True)  # warm-up
    reset_peak()
    path = out / f"{vol.name}-{dtype}.zarr"
    ts = timed(cold(lambda: extract_to_store(vol, bb, settings, path, overwrite=True)), repeats)
    peak = peak_gb()
    te = timed(cold(lambda: bb.extract(vol, settings)), repeats)  # the same without the store write
    warm = timed(lambda: bb.extract(vol, settings), repeats)  # latent kept: another timestep or variant
    size_gb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9
    return {"extract_store_s": float(np.median(ts)), "extract_only_s": float(np.median(te)),
            "extract_latent_kept_s": float(np.median(warm)), "all_s": ts, "peak_gb": peak, "store_gb": size_gb,
            "path": str(path)}


def matching(src_path: str, tgt_path: str, n: int, radius: int | None, probe: int, budget_s: float,
             device: str) -> dict:
    src, tgt = open_store(src_path), open_store(tgt_path)
    reset_peak()
    m = Matcher.from_stores(src, tgt, device=device)
    rng = np.random.default_rng(0)
    pts = np.stack([rng.integers(0, s, n) for s in src.image_shape], axis=1)
    m.match_points(pts[:4], radius)  # warm-up
    sync()
    t = time.perf_counter()
    m.match_points(pts[:probe], radius)
    sync()
    probe_s = time.perf_counter() - t
    projected = probe_s * n / probe
    res = {"radius": radius, "points": n, "probe_points": probe, "probe_s": probe_s, "projected_s": projected}
    if projected <= budget_s:
        t = time.perf_counter()
        table = m.match_points(pts, radius)
        sync()
        res["all_s"] = time.perf_counter() - t
        res["consistent_fraction"] = float(np.mean(table.consistent))
    res["peak_gb"] = peak_gb()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--points", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--match-budget", type=float, default=120.0, help="skip a full matching run projected longer")
    p.add_argument("--dtypes", default="float16,bfloat16", help="autocast dtypes to time")
    p.add_argument("--skip-extraction-components", action="store_true")
    p.add_argument("--width", type=float, default=1.0, help="channel scale; below 1 only to try the script")
    p.add_argument("--device", default="cuda", help="cpu only to try the script itself at a small --size")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_gpu_maisi: no CUDA GPU visible; this script is for a GPU machine")
    args.out.mkdir(parents=True, exist_ok=True)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else f"{platform.machine()} CPU"
    res: dict = {"gpu": gpu, "torch": torch.__version__, "size": args.size,
                 "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(res), flush=True)

    bb = get_backbone("maisi", random_weights=True, width=args.width)
    vol, moved = phantom(args.size), phantom(args.size, shift=4)
    if not args.skip_extraction_components:
        for name in dtypes:
            res[f"components_{name}"] = components(bb, args.size, getattr(torch, name), args.repeats, args.device)
            print(name, res[f"components_{name}"], flush=True)
    for dt in dtypes:
        res[f"extract_{dt}"] = extraction(bb, vol, args.out, dt, args.repeats, args.device)
        print(dt, res[f"extract_{dt}"], flush=True)
    tgt = extraction(bb, moved, args.out, dtypes[0], 1, args.device)
    src_path = res[f"extract_{dtypes[0]}"]["path"]
    del bb
    if args.device == "cuda":
        torch.cuda.empty_cache()
    for radius, probe in ((16, 200), (None, 50)):
        key = f"match_r{radius}" if radius else "match_global"
        res[key] = matching(src_path, tgt["path"], args.points, radius, probe, args.match_budget, args.device)
        print(key, res[key], flush=True)
    (args.out / "gpu.json").write_text(json.dumps(res, indent=2))

    print(f"\n{res['gpu']}, torch {res['torch']}, {args.size}^3 image, MAISI at random weights\n")
    print("| step | " + " | ".join(dtypes) + " |\n|---|" + "---:|" * len(dtypes))
    rows = [("components", "encode_s", "autoencoder encode (s)"), ("components", "unet_s", "one UNet pass (s)"),
            ("extract", "extract_only_s", "extraction, descriptors on the host (s)"),
            ("extract", "extract_latent_kept_s", "extraction, latent kept (another timestep) (s)"),
            ("extract", "extract_store_s", "extraction + store write (s)"),
            ("extract", "peak_gb", "peak GPU memory (GB)")]
    for kind, k, label in rows:
        if f"{kind}_{dtypes[0]}" in res:
            print(f"| {label} | " + " | ".join(f"{res[f'{kind}_{d}'][k]:.3f}" for d in dtypes) + " |")
    for key in ("match_r16", "match_global"):
        r = res[key]
        took = f"{r['all_s']:.2f} s" if "all_s" in r else f"projected {r['projected_s']:.1f} s"
        print(f"| {args.points} points, {key}, forward-backward | {took}, peak {r['peak_gb']:.2f} GB | |")


if __name__ == "__main__":
    main()
