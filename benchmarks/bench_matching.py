"""Benchmark the exact native-resolution matcher at MAISI's sizes, beside the dense reference.

    nice python benchmarks/bench_matching.py            # full run, writes docs/performance.md
    nice python benchmarks/bench_matching.py --quick    # fewer repetitions, no doc update

Descriptors are random float16 at the sizes MAISI gives a 192x192x208 scan (network input
256^3): up0 512x16^3, up1 256x32^3, up2 128x64^3, up3 64x64^3. Timing does not depend on the
values. The dense reference (upsample every level to the image, normalise, cosine) would need
29.4 GB per volume at fp32 for this image, so it is measured on the same image with one level
(up3, 64 channels, 2 GB per volume) and reported as such.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from dense_reference import dense_level  # noqa: E402
from maisi_sizes import MAISI_LEVELS  # noqa: E402
from napari_meddift.matching.global_search import GlobalSearch  # noqa: E402
from napari_meddift.matching import Matcher  # noqa: E402

SIZES = {name: (c, n, n, n) for name, (c, n) in MAISI_LEVELS.items()}  # (C, z, y, x)
IMAGE = (192, 192, 208)
DOC = REPO / "docs" / "performance.md"
START, END = "<!-- bench_matching:start -->", "<!-- bench_matching:end -->"


def levels(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g).add_(0.3).half() for n, s in SIZES.items()}


def points(n: int, shape, seed: int, margin: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(margin, s - margin, n) for s in shape], axis=1)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def med_ms(fn, pts) -> tuple[float, float]:
    ts = [timed(lambda p=p: fn(tuple(int(v) for v in p)))[0] for p in pts]
    return 1e3 * float(np.median(ts)), 1e3 * float(np.percentile(ts, 90))


def load_avg() -> str:
    try:
        return " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--keypoints", type=int, default=2000)
    ap.add_argument("--global-keypoints", type=int, default=16)
    ap.add_argument("--dense-keypoints", type=int, default=16,
                    help="points timed with the old per-point whole-map search, for comparison")
    ap.add_argument("--device", default="cpu", help="torch device of the matcher (cpu, cuda)")
    ap.add_argument("--only-global", action="store_true", help="time global keypoints only (no doc update)")
    ap.add_argument("--batch", type=int, default=None, help="Matcher.global_batch (default: 16 CPU, 64 GPU)")
    ap.add_argument("--threads", type=int, default=None, help="Matcher.global_threads (default: one per core)")
    ap.add_argument("--kernel", choices=["fused", "tensor"], default="fused",
                    help="GlobalSearch.cpu_kernel on the CPU: the numba kernel or the tensor slabs")
    args = ap.parse_args()
    if args.only_global:
        only_global(args)
        return
    nq = 40 if args.quick else 200
    rows: list[tuple[str, str, str, str]] = []  # (what, ours, dense, note)
    load0 = load_avg()

    src, tgt = levels(1), levels(2)
    t_build, m = timed(lambda: Matcher(src, tgt, IMAGE, IMAGE))
    t_lv, _ = timed(lambda: [(m._src.level(n), m._tgt.level(n)) for n in SIZES])
    native_gb = sum(np.prod(s) for s in SIZES.values()) * 2 / 1e9
    dense_gb = sum(s[0] for s in SIZES.values()) * np.prod(IMAGE) * 4 / 1e9
    rows.append(("descriptor memory per volume", f"{native_gb:.2f} GB (fp16 store), "
                 f"{sum(m._tgt.level(n).f.numel() for n in SIZES) * 4 / 1e9:.2f} GB in the matcher (fp32, padded)",
                 f"{dense_gb:.1f} GB (fp32, upsampled)", "192x192x208, all four levels"))
    rows.append(("matcher setup (upcast + pad, both volumes)", f"{t_build + t_lv:.2f} s", "", ""))

    # windowed queries: a mouse event, cold (norms from the window's own nodes)
    pts = points(nq, IMAGE, 0)
    md, p90 = med_ms(lambda p: m.similarity(p, 16), pts)
    rows.append(("windowed similarity R=16, 4 levels (map over 33^3)", f"median {md:.1f} ms (p90 {p90:.1f})", "",
                 f"{nq} random voxels"))
    md, p90 = med_ms(lambda p: m.match(p, 16, check_consistency=False), pts[: nq // 2])
    rows.append(("windowed match R=16 (argmax + ambiguity)", f"median {md:.1f} ms (p90 {p90:.1f})", "", ""))
    md, p90 = med_ms(lambda p: m.match(p, 16), pts[: nq // 2])
    rows.append(("windowed match R=16 + forward-backward check", f"median {md:.1f} ms (p90 {p90:.1f})", "", ""))

    # full-image norm maps (once per volume, lazily)
    with m._compute():  # the matcher's own thread setting, as match_points uses it
        t_norm_tgt, _ = timed(lambda: [m._tgt.level(n).full_inv_norm() for n in SIZES])
    rows.append(
        ("full-image norm maps, one volume (cached once)", f"{t_norm_tgt:.1f} s", "", "exact Gram method, 4 levels")
    )

    # global exact query
    gp = points(3 if args.quick else 7, IMAGE, 1)
    md, _ = med_ms(lambda p: m.match(p, None, check_consistency=False), gp)
    rows.append(("global exact match, one point (7.7 M voxels)", f"median {md:.0f} ms", "", "norm maps cached"))
    md, _ = med_ms(lambda p: m.similarity(p, None), gp[:3])
    rows.append(("global similarity map, one point", f"median {md:.0f} ms", "", "returns the 30 MB map"))

    # batch: keypoints windowed (the backward norm maps are built inside and counted)
    kp = points(args.keypoints, IMAGE, 2, margin=8)
    t_kp, table = timed(lambda: m.match_points(kp, 16))
    rows.append((f"{args.keypoints} keypoints, R=16, with forward-backward check", f"{t_kp:.1f} s",
                 "", f"includes source norm maps; {int(table.consistent.sum())} consistent"))
    t_kp1, _ = timed(lambda: m.match_points(kp, 16, check_consistency=False))
    rows.append((f"{args.keypoints} keypoints, R=16, forward only", f"{t_kp1:.1f} s", "", "norm maps cached"))

    rows += global_rows(m, args)
    m = None  # frees the matcher (not `del`: the lambdas above close over it)

    # dense reference vs ours: the full image with one level (up3, 64 channels: 2 GB dense per
    # volume); all four levels would need 29.4 GB per volume.
    lv = "up3"
    t_dsrc, dsrc = timed(lambda: dense_level(src[lv], IMAGE))
    sp = points(30 if args.quick else 100, IMAGE, 4)
    qs = dsrc[:, sp[:, 0], sp[:, 1], sp[:, 2]].T.contiguous()  # the reference's query vectors
    del dsrc
    t_dtgt, dt = timed(lambda: dense_level(tgt[lv], IMAGE))
    ms_ = Matcher(src, tgt, IMAGE, IMAGE, levels=[lv])
    index = {tuple(int(v) for v in p): i for i, p in enumerate(sp)}

    def dense_window(p, r=16):
        box = tuple(slice(max(0, c - r), min(s, c + r + 1)) for c, s in zip(p, IMAGE))
        f = torch.einsum("c,czyx->zyx", qs[index[p]], dt[(slice(None),) + box])
        return box, int(f.argmax())

    def dense_global(p):
        s = (qs[index[p]] @ dt.reshape(dt.shape[0], -1)).reshape(IMAGE)
        return s, int(s.argmax())

    with torch.no_grad():
        md_o, _ = med_ms(lambda p: ms_.match(p, 16, check_consistency=False), sp)
        md_d, _ = med_ms(dense_window, sp)
        g_o, _ = med_ms(lambda p: ms_.match(p, None, check_consistency=False), sp[:10])
        g_d, _ = med_ms(dense_global, sp[:10])
    err, agree, nchk = 0.0, 0, 10
    for p in sp[:nchk]:
        p = tuple(int(v) for v in p)
        ours = ms_.similarity(p, None).fused
        ref = dense_global(p)[0].numpy()
        err = max(err, float(np.abs(ours - ref).max()))
        agree += int(np.argmax(ours) == np.argmax(ref) or abs(ours.max() - ref.max()) < 1e-6)
    dt = None  # frees the dense target (not `del`: dense_window/dense_global close over it)
    tag = "192x192x208, level up3 only (64 ch)"
    gb = SIZES[lv][0] * np.prod(IMAGE) * 4 / 1e9
    rows.append(("dense reference: upsample + normalise one level", "not needed",
                 f"{t_dsrc:.1f} s + {t_dtgt:.1f} s (source, target), {gb:.1f} GB each", tag))
    rows.append(("windowed match R=16, one level", f"median {md_o:.1f} ms", f"median {md_d:.1f} ms", tag))
    rows.append(("global match, one level, one point", f"median {g_o:.0f} ms", f"median {g_d:.0f} ms", tag))
    rows.append((f"agreement with dense ({nchk} global maps)", f"max abs diff {err:.1e}",
                 f"argmax equal {agree}/{nchk}", tag))

    load1 = load_avg()
    table_md = ["| measurement | exact native (ours) | dense reference | note |", "|---|---|---|---|"]
    table_md += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    text = "\n".join(table_md)
    print(text)
    stamp = _dt.date.today().isoformat()
    cpu = platform.processor() or platform.machine()
    header = (
        f"Measured {stamp} with "
        f"`nice python benchmarks/bench_matching.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` "
        f"on a {os.cpu_count()}-core CPU "
        f"({cpu}), torch {torch.__version__}. The matcher runs on 1 intra-op thread (`Matcher.cpu_threads`, "
        f"its default) except the batch global search (`Matcher.global_threads`, default {torch.get_num_threads()}, "
        f"the fused CPU kernel); the dense reference on torch's default ({torch.get_num_threads()}). Load average "
        f"before/after: {load0} and {load1}: other jobs shared the two cores, so the figures are "
        f"pessimistic and noisy. Descriptors are random, so few matches are consistent."
    )
    if not (args.quick or args.no_doc):
        write_doc(header + "\n\n" + text)


def global_rows(m: Matcher, args) -> list[tuple[str, str, str, str]]:
    """Global keypoints with forward-backward: the batch path (all --global-keypoints) and the old
    per-point whole-map search (--dense-keypoints of the same points, extrapolated to as many)."""
    ng = args.global_keypoints
    pts = points(ng, IMAGE, 3)
    m.global_search, m.global_batch, m.global_threads = "stream", args.batch, args.threads
    GlobalSearch.cpu_kernel = args.kernel
    t_g, fast = timed(lambda: m.match_points(pts, None))
    rows = [(f"{ng} global keypoints with forward-backward, batch path", f"{t_g:.1f} s ({t_g / 60:.2f} min)",
             "", f"{1e3 * t_g / (2 * ng):.1f} ms per global query; {int(fast.consistent.sum())} consistent")]
    nd = min(args.dense_keypoints, ng)
    if nd:
        m.global_search = "dense"
        t_d, old = timed(lambda: m.match_points(pts[:nd], None))
        m.global_search = "stream"
        same = int(
            np.sum(np.all(old.target_zyx == fast.target_zyx[:nd], axis=1) & (old.fb_distance == fast.fb_distance[:nd]))
        )
        rows.append((f"same, old per-point whole-map search ({nd} points)", f"{t_d / nd:.2f} s/point",
                     "", f"2000 points ~ {2000 * t_d / nd / 60:.1f} min; {same}/{nd} matches and fb identical"))
    return rows


def only_global(args) -> None:
    dev = torch.device(args.device)
    src, tgt = levels(1), levels(2)
    m = Matcher(src, tgt, IMAGE, IMAGE, device=dev)
    t0 = time.perf_counter()
    with m._compute():
        for side in (m._src, m._tgt):
            for n in SIZES:
                side.level(n).full_inv_norm()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    print(f"device {dev} ({torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor()}), "
          f"setup + norm maps {time.perf_counter() - t0:.1f} s, load {load_avg()}, kernel {args.kernel}, "
          f"threads {args.threads or torch.get_num_threads()}, batch {args.batch or 'default'}")
    for a, b, c, d in global_rows(m, args):
        print(f"{a}: {b} {c} {d}")
    if dev.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")


def write_doc(block: str) -> None:
    body = f"{START}\n{block}\n{END}"
    if DOC.exists():
        old = DOC.read_text()
        if START in old and END in old:
            new = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: body, old, flags=re.S)
            DOC.write_text(new)
            return
        DOC.write_text(old.rstrip() + "\n\n## Matching\n\n" + body + "\n")
    else:
        DOC.write_text("# Performance\n\n## Matching\n\n" + body + "\n")


if __name__ == "__main__":
    main()
