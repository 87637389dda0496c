"""Learn2Reg LungCT evaluation harness: descriptor stores, matching, TRE per case and overall.

For each pair the harness extracts a descriptor store per image (reused when it exists),
matches the fixed landmarks (and the fixed keypoints inside the fixed mask) into the moving
image and reports TRE = ||(predicted - true) * spacing|| in mm against the moving points:
per case and pooled over all cases, next to the identity (no registration) TRE. The data layout
and its checks are in ``l2r_cases``, the result types and table in ``l2r_results``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from ..errors import MedDiftError
from ..io.cache import safe_filename
from ..io.outputs import write_text
from ..matching.window import DEFAULT_RADIUS_MM, Radius, radius_tag
# the case layout and the results live apart; their names stay importable from here
from .l2r_cases import CONFIG_NAME, L2R_SOURCE, L2RCase, check_files, l2r_cases  # noqa: F401
from .l2r_results import L2RCaseResult, L2RResult, _pm, format_l2r_table

if TYPE_CHECKING:
    from ..backbones.base import Backbone

IDENTITY = "identity"


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



#: the default search window of the protocol (matching/window.py says why 40 mm)
DEFAULT_WINDOW = Radius.mm(DEFAULT_RADIUS_MM)


def method_name(bb, radius) -> str:
    """The method's name in tables and file names: 'identity', or the backbone's name and radius
    ('mini r40mm'; voxels 'mini r16')."""
    return IDENTITY if bb is None else f"{bb.name}" + ("" if radius is None else f" r{radius_tag(radius)}")


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

    ``backbone``: a Backbone, a registered name (``"mini"``, ``"maisi"``, ``"mind-ssc"``, ...), or
    ``"identity"`` / None for no matching.
    ``weights``, ``random_weights``: passed to :func:`napari_meddift.backbones.get_backbone` for a name.

    Returns the backbone, or None for identity.
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

    ``case``: the pair and its annotation files.
    ``bb``: the backbone that extracts (unless ``stores`` are given); None and no ``stores``:
    identity (the fixed points are the prediction).
    ``settings``: extraction settings for ``bb``.
    ``out``: output folder (stores go to ``out/stores``, named by cache key).
    ``method``: the method's name in the output file names.
    ``radius``, ``levels``, ``keypoints``, ``device``: as in :func:`evaluate_l2r`.
    ``stores``: (fixed, moving) store paths extracted beforehand, e.g. on a Dask cluster.

    Returns the case's TRE summaries (mm) and timings.
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
        fixed_shape = _image_spacing_shape(case.fixed_image)[1]
        if tuple(mask.shape) != tuple(fixed_shape):
            raise MedDiftError(f"the mask {case.fixed_mask} is {'x'.join(map(str, mask.shape[::-1]))} (x,y,z) but "
                               f"{case.fixed_image} is {'x'.join(map(str, fixed_shape[::-1]))}; give the mask of the "
                               "fixed image")
        idx = np.rint(f_kp).astype(np.int64)
        inside = np.all((idx >= 0) & (idx < np.asarray(mask.shape)), axis=1)
        inside[inside] = mask[tuple(idx[inside].T)]
        f_kp, m_kp = f_kp[inside], m_kp[inside]
        if not len(f_kp):
            raise MedDiftError(f"no keypoint of {case.fixed_keypoints} lies inside the mask {case.fixed_mask} "
                               f"({'x'.join(map(str, mask.shape[::-1]))} x,y,z); check that the mask belongs to "
                               f"{case.fixed_image}, or use --no-keypoints")

    spacing, shape = _image_spacing_shape(case.fixed_image)
    m_spacing, m_shape = _image_spacing_shape(case.moving_image)
    if m_shape != shape:
        raise MedDiftError(
            f"{case.moving_image} has shape {m_shape[::-1]} (x,y,z) but {case.fixed_image} has {shape[::-1]}"
        )
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
    radius=DEFAULT_WINDOW,
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

    ``root``: the unpacked Learn2Reg LungCT folder.
    ``backbone``: a Backbone, a registered name ('mini', 'maisi', 'mind-ssc', ...), or
    'identity' / None (no matching: the fixed points are the prediction; images are then
    only checked, not read).
    ``settings``: :class:`~napari_meddift.backbones.base.ExtractionSettings` (default: its defaults).
    ``radius``: search window half-width: a ``Radius`` (mm; default ``DEFAULT_RADIUS_MM``), voxels
    (int or per-axis triple), or None for a global search.
    ``cases``: only these cases (numbers or ids); None for all.
    ``out_dir``: stores, predicted points (x,y,z voxel CSV with ``tre_mm``), the table and a JSON
    summary go there (default ``root/meddift_l2r``).
    ``labels_root``: a second folder for the config and annotations.
    ``levels``: the levels to fuse (default: all in the stores).
    ``keypoints``: also evaluate the corrField keypoints inside the fixed lung mask.
    ``device``: ``"cpu"`` or ``"cuda"`` for matching.
    ``weights``, ``random_weights``: for a backbone given by name.
    ``progress``: ``progress(done, total, message)``, called per case.
    ``log``: gets one line per case.
    ``done``: {case id: result} of cases evaluated elsewhere (by
    :func:`napari_meddift.batch.l2r.evaluate_l2r_on_cluster`, on a Dask cluster); they are
    gathered into the table instead of being extracted and matched here.

    Returns per-case and pooled TRE summaries (mm) of landmarks and keypoints, next to identity, with
    the Markdown table and the output folder.

    Raises MedDiftError: missing or malformed files, point counts that differ, points outside the
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
    write_text(out / f"l2r_{tag}.md", table, "report")
    summary = result.to_dict()
    summary["settings"] = settings.resolved(bb).to_dict() if bb is not None else None
    summary["radius"] = radius_tag(radius)
    summary["levels"] = list(levels) if levels is not None else None
    from .metrics import json_ready

    write_text(out / f"l2r_{tag}.json", json.dumps(json_ready(summary), indent=2, allow_nan=False), "report")
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
