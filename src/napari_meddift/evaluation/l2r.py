"""Learn2Reg LungCT evaluation harness: descriptor stores, matching, TRE per case and overall.

Layout (as the challenge distributes it; ``root`` is the unpacked LungCT folder)::

    root/LungCT_VAL_evaluation_config.json   eval_pairs: fixed/moving image paths
    root/imagesTr/LungCT_0001_0000.nii.gz     fixed  = inspiration (_0000)
    root/imagesTr/LungCT_0001_0001.nii.gz     moving = expiration  (_0001)
    root/landmarksTr/LungCT_0001_0000.csv     manual landmarks, x,y,z 0-based voxel indices
    root/keypointsTr/LungCT_0001_0000.csv     corrField keypoints, same convention
    root/masksTr/LungCT_0001_0000.nii.gz      lung mask of the fixed image

Images are 192 x 192 x 208 (x, y, z) at 1.75 x 1.25 x 1.75 mm. The config, landmarks,
keypoints and masks may live in a second folder (``labels_root``); every file is looked up in
``root`` first, then there.

For each pair the harness extracts a descriptor store per image (reused when it exists),
matches the fixed landmarks (and the fixed keypoints inside the fixed mask) into the moving
image and reports TRE = ||(predicted - true) * spacing|| in mm against the moving points:
per case and pooled over all cases, next to the identity (no registration) TRE.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..errors import MedDiftError
from ..io.cache import safe_filename
from .l2r_config import l2r_case_id, read_l2r_config

if TYPE_CHECKING:
    from ..backbones.base import Backbone

CONFIG_NAME = "LungCT_VAL_evaluation_config.json"
L2R_SOURCE = (
    "the Learn2Reg challenge, task LungCT (https://learn2reg.grand-challenge.org, Datasets; "
    "Hering et al., IEEE TMI 2022): download the LungCT data set and unpack it so that "
    "ROOT/imagesTr holds LungCT_XXXX_0000.nii.gz (inspiration) and LungCT_XXXX_0001.nii.gz (expiration)"
)
IDENTITY = "identity"


# ------------------------------------------------------------------------------ layout


@dataclass
class L2RCase:
    """One fixed/moving pair and its annotation files (paths may not exist yet)."""

    case_id: str  # "0001"
    fixed_image: Path
    moving_image: Path
    fixed_landmarks: Path
    moving_landmarks: Path
    fixed_keypoints: Path
    moving_keypoints: Path
    fixed_mask: Path

    @property
    def number(self) -> int:
        return int(self.case_id)


def _find_config(root: Path, labels_root: Path | None) -> Path:
    for folder in (root, labels_root):
        if folder is None:
            continue
        p = folder / CONFIG_NAME
        if p.is_file():
            return p
        found = sorted(folder.glob("*_evaluation_config.json"))
        if found:
            return found[0]
    where = " or ".join(str(f) for f in (root, labels_root) if f is not None)
    raise MedDiftError(
        f"no Learn2Reg evaluation config ({CONFIG_NAME}) in {where}; it comes with the LungCT data of {L2R_SOURCE}"
    )


def _pick(rel: str, root: Path, labels_root: Path | None) -> Path:
    """``rel`` under root if it exists there, else under labels_root (else the root path)."""
    p = root / rel
    if p.exists() or labels_root is None:
        return p
    q = labels_root / rel
    return q if q.exists() else p


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def l2r_cases(
    root: str | os.PathLike,
    labels_root: str | os.PathLike | None = None,
    cases: Sequence[int | str] | None = None,
) -> tuple[dict, list[L2RCase]]:
    """The evaluation config and its pairs, with every file path resolved.

    Args:
        root: the unpacked Learn2Reg LungCT folder (imagesTr/, landmarksTr/, ...).
        labels_root: a second folder for the config and annotations, if not in ``root``.
        cases: only these cases: numbers (``3``) or ids (``"0003"``); None for all.

    Returns:
        ``(config, cases)``: the config dict and one :class:`L2RCase` per pair, in config order.

    Raises:
        MedDiftError: no such folder, no config, a malformed image name, or unknown cases.
    """

    root = Path(root).expanduser()
    labels_root = Path(labels_root).expanduser() if labels_root is not None else None
    if not root.is_dir():
        raise MedDiftError(f"{root}: no such folder; give the unpacked Learn2Reg LungCT folder as --root")
    cfg = read_l2r_config(_find_config(root, labels_root))
    out = []
    for pair in cfg["eval_pairs"]:
        f_rel, m_rel = Path(pair["fixed"]).as_posix(), Path(pair["moving"]).as_posix()  # drops "./"
        cid = l2r_case_id(f_rel)
        fs, ms = _stem(f_rel), _stem(m_rel)
        out.append(
            L2RCase(
                case_id=cid,
                fixed_image=root / f_rel,
                moving_image=root / m_rel,
                fixed_landmarks=_pick(f"landmarksTr/{fs}.csv", root, labels_root),
                moving_landmarks=_pick(f"landmarksTr/{ms}.csv", root, labels_root),
                fixed_keypoints=_pick(f"keypointsTr/{fs}.csv", root, labels_root),
                moving_keypoints=_pick(f"keypointsTr/{ms}.csv", root, labels_root),
                fixed_mask=_pick(f"masksTr/{fs}.nii.gz", root, labels_root),
            )
        )
    if cases is not None:
        want = {f"{int(c):04d}" for c in cases}
        have = {c.case_id for c in out}
        unknown = sorted(want - have)
        if unknown:
            raise MedDiftError(
                f"case(s) {', '.join(unknown)} are not in the evaluation config; it has {', '.join(sorted(have))}"
            )
        out = [c for c in out if c.case_id in want]
    return cfg, out


def check_files(root: str | os.PathLike, cases: Sequence[L2RCase], keypoints: bool = True) -> None:
    """Check that every file the protocol reads is there, before any long work.

    Args:
        root: the Learn2Reg folder (named in the message).
        cases: the pairs from :func:`l2r_cases`.
        keypoints: also require keypoints and lung masks.

    Raises:
        MedDiftError: naming every missing image and annotation file, and where they come from.
    """
    root = Path(root).expanduser()
    missing_images: list[str] = []
    missing_labels: list[str] = []
    for c in cases:
        for p in (c.fixed_image, c.moving_image):
            if not p.is_file():
                missing_images.append(str(p))
        label_files = [c.fixed_landmarks, c.moving_landmarks]
        if keypoints:
            label_files += [c.fixed_keypoints, c.moving_keypoints, c.fixed_mask]
        for p in label_files:
            if not p.is_file():
                missing_labels.append(str(p))
    parts = []
    if missing_images:
        parts.append(
            f"{len(missing_images)} Learn2Reg LungCT image file(s) missing: " + ", ".join(missing_images)
            + f". The images are not shipped with napari-meddift; they come from {L2R_SOURCE.replace('ROOT', str(root))}"
        )
    if missing_labels:
        parts.append(
            f"{len(missing_labels)} annotation file(s) missing: " + ", ".join(missing_labels)
            + " (landmarksTr/keypointsTr/masksTr come with the same data set; pass --labels DIR if they live elsewhere)"
        )
    if parts:
        raise MedDiftError("; ".join(parts))


# ------------------------------------------------------------------------------ running


@dataclass
class L2RCaseResult:
    case_id: str
    spacing_zyx: tuple[float, float, float]
    landmarks: dict  # summarize() of predicted TRE
    landmarks_initial: dict  # identity TRE
    keypoints: dict | None = None
    keypoints_initial: dict | None = None
    extract_seconds: float = 0.0
    match_seconds: float = 0.0
    landmark_tre: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    landmark_tre_initial: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    keypoint_tre: np.ndarray | None = field(default=None, repr=False)
    keypoint_tre_initial: np.ndarray | None = field(default=None, repr=False)


@dataclass
class L2RResult:
    method: str
    cases: list[L2RCaseResult]
    overall: dict
    overall_initial: dict
    overall_keypoints: dict | None
    overall_keypoints_initial: dict | None
    table: str
    out_dir: Path | None = None

    def to_dict(self) -> dict:
        def case(c: L2RCaseResult) -> dict:
            return {
                "case": c.case_id,
                "spacing_zyx": list(c.spacing_zyx),
                "landmarks": c.landmarks,
                "landmarks_initial": c.landmarks_initial,
                "keypoints": c.keypoints,
                "keypoints_initial": c.keypoints_initial,
                "extract_seconds": c.extract_seconds,
                "match_seconds": c.match_seconds,
            }

        return {
            "method": self.method,
            "cases": [case(c) for c in self.cases],
            "overall": self.overall,
            "overall_initial": self.overall_initial,
            "overall_keypoints": self.overall_keypoints,
            "overall_keypoints_initial": self.overall_keypoints_initial,
        }


def _image_spacing_shape(path: Path) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Spacing (z, y, x) mm and shape (z, y, x) from an image header, without reading voxels."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise MedDiftError(f"{path}: cannot be read as an image; replace it with the Learn2Reg file") from None
    return tuple(float(s) for s in reader.GetSpacing()[::-1]), tuple(int(s) for s in reader.GetSize()[::-1])  # type: ignore[return-value]


def _pm(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def format_l2r_table(result_cases: Sequence[L2RCaseResult], method: str, overall=None, overall_initial=None,
                     overall_kp=None, overall_kp_initial=None) -> str:
    """A Markdown table of the results: identity and predicted TRE per case and pooled.

    Args:
        result_cases: per-case results.
        method: the method's label in the column names.
        overall, overall_initial: pooled landmark summaries (predicted, identity); a pooled row is
            added when there is more than one case.
        overall_kp, overall_kp_initial: the same for keypoints.

    Returns:
        The table (mean ± std, median and p95 in mm), ending in a newline.
    """
    kp = any(c.keypoints is not None for c in result_cases)
    head = "| case | landmarks | initial TRE (mm) | " + f"{method} TRE (mm) | median (mm) | p95 (mm) |"
    sep = "|---|---:|---:|---:|---:|---:|"
    if kp:
        head += " keypoints | initial kp TRE (mm) | " + f"{method} kp TRE (mm) |"
        sep += "---:|---:|---:|"
    lines = [head, sep]

    def row(name, lm, lm0, k, k0):
        line = f"| {name} | {lm['n']} | {_pm(lm0)} | {_pm(lm)} | {lm['median']:.2f} | {lm['p95']:.2f} |"
        if kp:
            line += f" {k['n'] if k else 0} | {_pm(k0)} | {_pm(k)} |"
        return line

    for c in result_cases:
        lines.append(row(c.case_id, c.landmarks, c.landmarks_initial, c.keypoints, c.keypoints_initial))
    if overall is not None and len(result_cases) > 1:
        lines.append(row("**all**", overall, overall_initial, overall_kp, overall_kp_initial))
    return "\n".join(lines) + "\n"


def method_name(bb, radius: int | None) -> str:
    """The method's name in tables and file names: 'identity', or the backbone's name and radius ('mini r16')."""
    return IDENTITY if bb is None else f"{bb.name}" + ("" if radius is None else f" r{radius}")


def output_folder(root, out_dir=None) -> Path:
    """``out_dir``, or ``root/meddift_l2r`` by default."""
    return Path(out_dir).expanduser() if out_dir is not None else Path(root).expanduser() / "meddift_l2r"


def is_identity(backbone) -> bool:
    """Whether ``backbone`` means no matching (None or ``"identity"``)."""
    return backbone is None or (isinstance(backbone, str) and backbone.lower() == IDENTITY)


def resolve_backbone(
    backbone: Backbone | str | None, weights: str | os.PathLike | None = None, random_weights: bool = False
) -> Backbone | None:
    """The descriptor source a run names.

    Args:
        backbone: a Backbone, a registered name (``"mini"``, ``"maisi"``, ``"mind-ssc"``, ...), or
            ``"identity"`` / None for no matching.
        weights, random_weights: passed to :func:`napari_meddift.backbones.get_backbone` for a name.

    Returns:
        The backbone, or None for identity.
    """
    if is_identity(backbone):
        return None
    if isinstance(backbone, str):
        from ..backbones import get_backbone

        return get_backbone(backbone, weights=weights, random_weights=random_weights)
    return backbone


def evaluate_case(
    case: L2RCase,
    bb: Backbone | None,
    settings,
    out: Path,
    method: str,
    *,
    radius: int | None,
    levels: Sequence[str] | None,
    keypoints: bool,
    device: str,
    stores: Sequence[str | os.PathLike] | None = None,
) -> L2RCaseResult:
    """TRE of one pair, and its predicted points written to ``out``.

    Args:
        case: the pair and its annotation files.
        bb: the backbone that extracts (unless ``stores`` are given); None and no ``stores``:
            identity (the fixed points are the prediction).
        settings: extraction settings for ``bb``.
        out: output folder (stores go to ``out/stores``, named by cache key).
        method: the method's name in the output file names.
        radius, levels, keypoints, device: as in :func:`evaluate_l2r`.
        stores: (fixed, moving) store paths extracted beforehand, e.g. on a Dask cluster.

    Returns:
        The case's TRE summaries (mm) and timings.
    """
    from ..io.landmarks import read_points, write_points_csv
    from .metrics import summarize, tre_mm

    f_lm = read_points(case.fixed_landmarks, fmt="l2r")
    m_lm = read_points(case.moving_landmarks, fmt="l2r")
    if f_lm.shape != m_lm.shape:
        raise MedDiftError(
            f"{case.fixed_landmarks} has {len(f_lm)} landmarks but {case.moving_landmarks} has {len(m_lm)}"
        )
    f_kp = m_kp = None
    if keypoints:
        f_kp = read_points(case.fixed_keypoints, fmt="l2r")
        m_kp = read_points(case.moving_keypoints, fmt="l2r")
        if f_kp.shape != m_kp.shape:
            raise MedDiftError(
                f"{case.fixed_keypoints} has {len(f_kp)} keypoints but {case.moving_keypoints} has {len(m_kp)}"
            )
        from ..io.volume import read_volume

        mask = read_volume(case.fixed_mask).array > 0
        idx = np.rint(f_kp).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(mask.shape)), axis=1)
        inside[inside] = mask[tuple(idx[inside].T)]
        f_kp, m_kp = f_kp[inside], m_kp[inside]

    spacing, shape = _image_spacing_shape(case.fixed_image)
    m_spacing, m_shape = _image_spacing_shape(case.moving_image)
    if m_shape != shape:
        raise MedDiftError(f"{case.moving_image} has shape {m_shape[::-1]} (x,y,z) but {case.fixed_image} has {shape[::-1]}")
    for name, pts in (("landmarks", f_lm), ("keypoints", f_kp)):
        if pts is not None and len(pts) and (np.any(pts < 0) or np.any(pts > np.asarray(shape) - 1)):
            raise MedDiftError(
                f"case {case.case_id}: fixed {name} fall outside the image of shape {shape[::-1]} (x,y,z); "
                "are these the right images for these annotation files?"
            )

    t_ext = t_match = 0.0
    if bb is None and stores is None:
        pred_lm = f_lm.copy()
        pred_kp = f_kp.copy() if f_kp is not None else None
    else:
        from ..backbones.extraction import cached_store_path, extract_to_store
        from ..matching import Matcher
        from ..io.volume import read_volume

        from ..io.store import open_store

        t0 = time.perf_counter()
        if stores is None:
            stores = []
            for img in (case.fixed_image, case.moving_image):
                vol = read_volume(img)
                store, _ = extract_to_store(vol, bb, settings, cached_store_path(vol, bb, settings, out / "stores"))
                stores.append(store)
                del vol
            t_ext = time.perf_counter() - t0
        else:  # extracted beforehand (on a cluster)
            stores = [open_store(p) for p in stores]
        t0 = time.perf_counter()
        matcher = Matcher.from_stores(stores[0], stores[1], levels=levels, device=device)
        pts = np.rint(f_lm).astype(np.int64)
        table = matcher.match_points(pts, radius, check_consistency=False)
        pred_lm = table.target_zyx.astype(np.float64)
        pred_kp = None
        if f_kp is not None and len(f_kp):
            table_kp = matcher.match_points(np.rint(f_kp).astype(np.int64), radius, check_consistency=False)
            pred_kp = table_kp.target_zyx.astype(np.float64)
        elif f_kp is not None:
            pred_kp = np.zeros((0, 3))
        t_match = time.perf_counter() - t0
        del matcher

    e_lm, e_lm0 = tre_mm(pred_lm, m_lm, spacing), tre_mm(f_lm, m_lm, spacing)
    res = L2RCaseResult(
        case_id=case.case_id,
        spacing_zyx=spacing,
        landmarks=summarize(e_lm),
        landmarks_initial=summarize(e_lm0),
        extract_seconds=t_ext,
        match_seconds=t_match,
        landmark_tre=e_lm,
        landmark_tre_initial=e_lm0,
    )
    tag = safe_filename(method, "method")
    write_points_csv(out / f"LungCT_{case.case_id}_landmarks_{tag}.csv", pred_lm, {"tre_mm": e_lm})
    if f_kp is not None:
        e_kp = tre_mm(pred_kp, m_kp, spacing) if len(f_kp) else np.zeros(0)
        e_kp0 = tre_mm(f_kp, m_kp, spacing) if len(f_kp) else np.zeros(0)
        res.keypoints, res.keypoints_initial = summarize(e_kp), summarize(e_kp0)
        res.keypoint_tre, res.keypoint_tre_initial = e_kp, e_kp0
        write_points_csv(out / f"LungCT_{case.case_id}_keypoints_{tag}.csv", pred_kp, {"tre_mm": e_kp})
    return res


def evaluate_l2r(
    root,
    backbone="mini",
    settings=None,
    radius: int | None = 16,
    cases: Sequence[int | str] | None = None,
    out_dir=None,
    *,
    labels_root=None,
    levels: Sequence[str] | None = None,
    keypoints: bool = True,
    device: str = "cpu",
    weights=None,
    random_weights: bool = False,
    progress=None,
    log=None,
    done: Mapping[str, L2RCaseResult] | None = None,
) -> L2RResult:
    """Evaluate a descriptor source on Learn2Reg LungCT pairs.

    Args:
        root: the unpacked Learn2Reg LungCT folder.
        backbone: a Backbone, a registered name ('mini', 'maisi', 'mind-ssc', ...), or
            'identity' / None (no matching: the fixed points are the prediction; images are then
            only checked, not read).
        settings: :class:`~napari_meddift.backbones.base.ExtractionSettings` (default: its defaults).
        radius: search window half-width in voxels, None for a global search.
        cases: only these cases (numbers or ids); None for all.
        out_dir: stores, predicted points (x,y,z voxel CSV with ``tre_mm``), the table and a JSON
            summary go there (default ``root/meddift_l2r``).
        labels_root: a second folder for the config and annotations.
        levels: the levels to fuse (default: all in the stores).
        keypoints: also evaluate the corrField keypoints inside the fixed lung mask.
        device: ``"cpu"`` or ``"cuda"`` for matching.
        weights, random_weights: for a backbone given by name.
        progress: ``progress(done, total, message)``, called per case.
        log: gets one line per case.
        done: {case id: result} of cases evaluated elsewhere (by
            :func:`napari_meddift.batch.l2r.evaluate_l2r_on_cluster`, on a Dask cluster); they are
            gathered into the table instead of being extracted and matched here.

    Returns:
        Per-case and pooled TRE summaries (mm) of landmarks and keypoints, next to identity, with
        the Markdown table and the output folder.

    Raises:
        MedDiftError: missing or malformed files, point counts that differ, points outside the
            image, and whatever extraction or matching raises; all before the long work where
            they can be checked first.
    """
    from ..backbones.base import ExtractionSettings
    from .metrics import summarize

    cfg, case_list = l2r_cases(root, labels_root, cases)
    check_files(root, case_list, keypoints=keypoints)
    bb = resolve_backbone(backbone, weights, random_weights)
    settings = settings or ExtractionSettings(device=device)
    method = method_name(bb, radius)
    out = output_folder(root, out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = len(case_list)
    results: list[L2RCaseResult] = []
    done = done or {}

    for k, case in enumerate(case_list):
        if progress is not None and not done:
            progress(k, total, f"case {case.case_id}")
        res = done.get(case.case_id) or evaluate_case(
            case, bb, settings, out, method, radius=radius, levels=levels, keypoints=keypoints, device=device
        )
        results.append(res)
        if log is not None:
            line = (f"case {case.case_id}: landmarks {_pm(res.landmarks)} mm (initial {_pm(res.landmarks_initial)})")
            if res.keypoints is not None:
                line += f", keypoints {_pm(res.keypoints)} mm (initial {_pm(res.keypoints_initial)})"
            if bb is not None:
                line += f"; extract {res.extract_seconds:.1f} s, match {res.match_seconds:.1f} s"
            log(line)

    if progress is not None:
        progress(total, total, "done")
    overall = summarize(np.concatenate([r.landmark_tre for r in results]))
    overall0 = summarize(np.concatenate([r.landmark_tre_initial for r in results]))
    okp = okp0 = None
    if keypoints:
        okp = summarize(np.concatenate([r.keypoint_tre for r in results]))
        okp0 = summarize(np.concatenate([r.keypoint_tre_initial for r in results]))
    table = format_l2r_table(results, method, overall, overall0, okp, okp0)
    result = L2RResult(method, results, overall, overall0, okp, okp0, table, out)
    tag = safe_filename(method, "method")
    (out / f"l2r_{tag}.md").write_text(table, encoding="utf-8")
    summary = result.to_dict()
    summary["settings"] = settings.to_dict() if bb is not None else None
    summary["radius"] = radius
    summary["levels"] = list(levels) if levels is not None else None
    (out / f"l2r_{tag}.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return result


__all__ = [
    "L2RCase",
    "L2RCaseResult",
    "L2RResult",
    "check_files",
    "evaluate_case",
    "evaluate_l2r",
    "format_l2r_table",
    "is_identity",
    "l2r_cases",
    "method_name",
    "output_folder",
    "resolve_backbone",
]
