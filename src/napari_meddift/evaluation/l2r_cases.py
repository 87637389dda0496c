"""The Learn2Reg LungCT data: where each pair's files are, and checking them before any work.

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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import MedDiftError
from .l2r_config import l2r_case_id, read_l2r_config

CONFIG_NAME = "LungCT_VAL_evaluation_config.json"
L2R_SOURCE = (
    "the Learn2Reg challenge, task LungCT (https://learn2reg.grand-challenge.org, Datasets; "
    "Hering et al., IEEE TMI 2022): download the LungCT data set and unpack it so that "
    "ROOT/imagesTr holds LungCT_XXXX_0000.nii.gz (inspiration) and LungCT_XXXX_0001.nii.gz (expiration)"
)


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

    ``root``: the unpacked Learn2Reg LungCT folder (imagesTr/, landmarksTr/, ...).
    ``labels_root``: a second folder for the config and annotations, if not in ``root``.
    ``cases``: only these cases: numbers (``3``) or ids (``"0003"``); None for all.

    Returns ``(config, cases)``: the config dict and one :class:`L2RCase` per pair, in config order.

    Raises MedDiftError: no such folder, no config, a malformed image name, or unknown cases.
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

    ``root``: the Learn2Reg folder (named in the message).
    ``cases``: the pairs from :func:`l2r_cases`.
    ``keypoints``: also require keypoints and lung masks.

    Raises MedDiftError: naming every missing image and annotation file, and where they come from.
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
            f"{len(missing_images)} Learn2Reg LungCT image file(s) missing: "
            + ", ".join(missing_images)
            + ". The images are not shipped with napari-meddift; "
            + f"they come from {L2R_SOURCE.replace('ROOT', str(root))}"
        )
    if missing_labels:
        parts.append(
            f"{len(missing_labels)} annotation file(s) missing: " + ", ".join(missing_labels)
            + " (landmarksTr/keypointsTr/masksTr come with the same data set; pass --labels DIR if they live elsewhere)"
        )
    if parts:
        raise MedDiftError("; ".join(parts))
