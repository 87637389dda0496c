"""What ``train-mini --resume`` continues from: the full training state beside the weights.

``<out>.state.pt`` holds the fp32 network, the optimizer, the step, the training seconds spent and
the random generators, written atomically with every checkpoint. The recipe it was written with is
stored too, and a resume with another recipe is refused (the run would be neither one nor the other).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import MedDiftError


def state_path(out_path: Path) -> Path:
    """``W.pt`` -> ``W.state.pt``."""
    return out_path.with_suffix(".state.pt")


@dataclass
class TrainingState:
    """One point of a run: ``step`` optimizer steps done in ``elapsed_s`` training seconds."""

    recipe: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    step: int
    elapsed_s: float
    numpy_rng: dict[str, Any] = field(default_factory=dict)
    torch_rng: torch.Tensor | None = None


def save_state(path: Path, state: TrainingState) -> None:
    """Atomically (``.partial`` then rename): a killed run leaves the previous state intact."""
    tmp = path.with_name(path.name + ".partial")
    torch.save({
        "recipe_json": json.dumps(state.recipe, sort_keys=True),
        "model": state.model,
        "optimizer": state.optimizer,
        "step": int(state.step),
        "elapsed_s": float(state.elapsed_s),
        "numpy_rng_json": json.dumps(state.numpy_rng),
        "torch_rng": state.torch_rng,
    }, tmp)
    os.replace(tmp, path)


def load_state(path: Path, recipe: dict[str, Any]) -> TrainingState:
    """The state at ``path``; MedDiftError when it is unreadable or was written with another recipe."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        saved = json.loads(raw["recipe_json"])
    except Exception as exc:  # noqa: BLE001 - any unreadable state file gets the same way out
        raise MedDiftError(f"cannot resume from {path}: {exc}; delete it to start anew") from None
    wanted = json.loads(json.dumps(recipe, sort_keys=True))
    changed = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
    if changed:
        raise MedDiftError(f"cannot resume from {path}: it was trained with other {', '.join(changed)}; "
                           "give the same options, or delete it to start anew")
    return TrainingState(recipe=saved, model=raw["model"], optimizer=raw["optimizer"], step=int(raw["step"]),
                         elapsed_s=float(raw["elapsed_s"]), numpy_rng=json.loads(raw["numpy_rng_json"]),
                         torch_rng=raw["torch_rng"])

