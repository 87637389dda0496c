"""Loading PyTorch checkpoints safely: tensors only, and one clear line when a file is refused."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Sequence

from ..errors import MedDiftError, is_out_of_memory


def _unsafe_global(message: str) -> str | None:
    """The Python object a refused pickle names, from torch's weights-only error text."""
    m = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"got <class '([\w.]+)'>", message)
    return m.group(1) if m else None


def load_checkpoint(path: str | Path, what: str = "checkpoint", allowed: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU.

    Args:
        path: the checkpoint file.
        what: how messages name it ("mini weights", "MAISI checkpoint").
        allowed: extra types the file may hold beside tensors and plain containers (for
            MAISI: MONAI's MetaTensor and plain numpy values), given to
            ``torch.serialization.safe_globals``.

    Raises:
        MedDiftError: one line, for a file holding any other Python object (a pickle that could
            run code: it is never loaded with ``weights_only=False``), or one that is truncated or
            not a checkpoint. Out-of-memory errors pass through unchanged.
    """
    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower() or _unsafe_global(str(exc)):
            found = _unsafe_global(str(exc))
            raise MedDiftError(
                f"{what} {path} holds a Python object ({found or 'not a tensor'}) besides tensors, which could "
                "run code when loaded; refusing it: use the checkpoint files from their original source "
                "(docs/backbones.md)"
            ) from None
        raise MedDiftError(f"cannot read {what} {path} (it is truncated or not a PyTorch checkpoint); "
                           "copy or download it again") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is a user-fixable problem
        if is_out_of_memory(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise MedDiftError(f"cannot read {what} {path} ({first}); it is truncated or not a PyTorch checkpoint: "
                           "copy or download it again") from None
