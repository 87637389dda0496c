"""Learn2Reg results: per case and pooled TRE, and the markdown table the CLI and docs print."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

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


def _pm(s: dict | None) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['mean']:.2f} ± {s['std']:.2f}"


def format_l2r_table(result_cases: Sequence[L2RCaseResult], method: str, overall=None, overall_initial=None,
                     overall_kp=None, overall_kp_initial=None) -> str:
    """A Markdown table of the results: identity and predicted TRE per case and pooled.

    ``result_cases``: per-case results.
    ``method``: the method's label in the column names.
    ``overall``, ``overall_initial``: pooled landmark summaries (predicted, identity); a pooled row is
    added when there is more than one case.
    ``overall_kp``, ``overall_kp_initial``: the same for keypoints.

    Returns the table (mean ± std, median and p95 in mm), ending in a newline.
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
