"""Loading PyTorch checkpoints safely: tensors only, and one clear line when a file is refused."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from ..errors import MedDiftError, is_out_of_memory


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU.

    A file holding Python objects beyond tensors and plain containers (a pickle that could run
    code) is refused with one line; it is never loaded with ``weights_only=False``. Other
    unreadable files (truncated, not a checkpoint) are MedDiftErrors too.
    """
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # no foreign object: garbage or a damaged file
            raise MedDiftError(f"cannot read {what} {path} (it is truncated or not a PyTorch checkpoint); "
                               "copy or download it again") from None
        raise MedDiftError(
            f"{what} {path} holds Python objects besides tensors, which could run code when loaded; "
            "refusing it: use the checkpoint files from their original source"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a user-fixable problem
        if is_out_of_memory(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise MedDiftError(f"cannot read {what} {path} ({first}); it is truncated or not a PyTorch checkpoint: "
                           "copy or download it again") from None
