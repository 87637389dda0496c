"""The Learn2Reg data conventions: the evaluation config and the case ids in file names."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import MedDiftError

#: TASK_CASE_PHASE with a NIfTI or CSV ending, e.g. LungCT_0001_0000.nii.gz (fixed = _0000)
_CASE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*_(\d{4})_(\d{4})(?:\.nii\.gz|\.nii|\.csv)")


def read_l2r_config(path: str | os.PathLike) -> dict:
    """Read a Learn2Reg evaluation config (``*_evaluation_config.json``).

    It holds ``expected_shape`` (displacement field, NIfTI x,y,z then 3), ``eval_pairs``
    (fixed/moving image paths) and ``evaluation_methods``. It carries no spacing: Learn2Reg
    LungCT is 1.75 x 1.25 x 1.75 mm (x, y, z), read it from the images or masks.

    ``path``: the JSON file.

    Returns the config as a dict.

    Raises MedDiftError: no such file, not JSON, no ``eval_pairs``, pairs without text ``fixed``
    and ``moving`` entries, or an ``expected_shape`` that is not positive integers.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MedDiftError(f"{path}: no such Learn2Reg config file; check the path")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MedDiftError(f"{path}: is not valid JSON ({exc}); use the challenge's *_evaluation_config.json") from None
    if not isinstance(cfg, dict) or "eval_pairs" not in cfg:
        raise MedDiftError(
            f"{path}: is not a Learn2Reg evaluation config (no 'eval_pairs'); "
            "use the challenge's *_evaluation_config.json"
        )
    pairs = cfg["eval_pairs"]
    if not isinstance(pairs, list) or not pairs:
        raise MedDiftError(
            f'{path}: \'eval_pairs\' must be a non-empty list of {{"fixed": ..., "moving": ...}} entries'
        )
    for i, pair in enumerate(pairs):
        if not isinstance(pair, dict) or not all(
            isinstance(pair.get(k), str) and pair.get(k) for k in ("fixed", "moving")
        ):
            raise MedDiftError(
                f"{path}: eval_pairs[{i}] needs text entries 'fixed' and 'moving' (image paths), got {str(pair)[:80]}"
            )
    shape = cfg.get("expected_shape")
    if shape is not None and (
        not isinstance(shape, list) or len(shape) < 3
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape[:3])
    ):
        raise MedDiftError(
            f"{path}: 'expected_shape' must be a list [x, y, z, 3] of positive integers, got {str(shape)[:80]}"
        )
    return cfg


def l2r_shape_zyx(cfg: dict) -> tuple[int, int, int]:
    """The image shape of a config.

    ``cfg``: a config from :func:`read_l2r_config`.

    Returns the shape (z, y, x) in voxels, from ``expected_shape`` (x, y, z, 3).

    Raises MedDiftError: the config has no usable ``expected_shape``.
    """
    shape = cfg.get("expected_shape")
    if not shape or len(shape) < 3:
        raise MedDiftError("the Learn2Reg config has no 'expected_shape' [x, y, z, 3]")
    x, y, z = (int(v) for v in shape[:3])
    return (z, y, x)


def l2r_case_id(name: str) -> str:
    """The case id of a Learn2Reg file name.

    ``name``: a file name (or path) such as ``LungCT_0001_0000.nii.gz``: task, 4-digit case, 4-digit
    modality/phase, then ``.nii.gz``, ``.nii`` or ``.csv``.

    Returns the case id, ``"0001"``.

    Raises MedDiftError: the name does not follow the pattern; nothing is guessed.
    """
    base = Path(str(name)).name
    m = _CASE_NAME.fullmatch(base)
    if not m:
        raise MedDiftError(f"unexpected Learn2Reg file name {base!r}; expected TASK_XXXX_0000.nii.gz "
                           "like LungCT_0001_0000.nii.gz")
    return m.group(1)


def l2r_case_ids(cfg: dict) -> list[str]:
    """Case ids (``"0001"``, ...) of the config's ``eval_pairs``, from the fixed image names.

    ``cfg``: a config from :func:`read_l2r_config`.

    Returns one id per pair, in the config's order.

    Raises MedDiftError: a fixed image name that is not ``TASK_XXXX_XXXX.nii.gz``.
    """
    return [l2r_case_id(pair["fixed"]) for pair in cfg.get("eval_pairs", [])]
