"""Loading PyTorch checkpoints safely: tensors only, and one clear line when a file is refused."""

from __future__ import annotations

import enum
import pickle
import re
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import MedDiftError, is_out_of_memory


def _unsafe_global(message: str) -> str | None:
    """The Python object a refused pickle names, from torch's weights-only error text."""
    m = (re.search(r"(getattr\([^)]{0,120}\))", message) or re.search(r"GLOBAL ([\w.]+)", message)
         or re.search(r"got <class '([\w.]+)'>", message))
    return m.group(1) if m else None


def enum_members_by_getattr(enums: Sequence[type[enum.Enum]]) -> tuple[Callable[..., Any], str]:
    """A stand-in for ``builtins.getattr`` that only looks up a member of one of ``enums``.

    Early Python 3.11 releases (Debian's 3.11.2) and 3.12 pickle an enum member as
    ``getattr(EnumClass, "NAME")``, so a checkpoint saved there holds ``builtins.getattr``.
    Allowing the real ``getattr`` would let a pickle fetch any attribute of any allowed object;
    this resolver, registered under the name ``builtins.getattr`` (an entry for
    ``torch.serialization.safe_globals``), accepts exactly ``(one of enums, a member name)`` and
    refuses anything else with an ``UnpicklingError``. It reads the class's member table; it
    never calls ``getattr`` or any other code of the object it is given.
    """
    allowed = tuple(enums)

    def getattr_enum_member(obj: Any, name: Any = None, *default: Any) -> Any:
        cls = obj if any(obj is e for e in allowed) else None
        if cls is not None and not default and type(name) is str and name in cls.__members__:
            return cls.__members__[name]
        what = f"{obj.__module__}.{obj.__qualname__}" if isinstance(obj, type) else f"a {type(obj).__name__}"
        shown = name if type(name) is str else type(name).__name__
        raise pickle.UnpicklingError(f"Unsupported global: getattr({what}, {shown!r:.60}) is not a member of an "
                                     "allowed enum")

    return getattr_enum_member, "builtins.getattr"


def load_checkpoint(path: str | Path, what: str = "checkpoint", allowed: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU.

    ``path``: the checkpoint file.
    ``what``: how messages name it ("mini weights", "MAISI checkpoint").
    ``allowed``: extra types the file may hold beside tensors and plain containers (for
    MAISI: MONAI's MetaTensor and plain numpy values), given to
    ``torch.serialization.safe_globals``.

    Raises MedDiftError: one line, for a file holding any other Python object (a pickle that could
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
    except Exception as exc:  # any unreadable checkpoint is a user-fixable problem
        if is_out_of_memory(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise MedDiftError(f"cannot read {what} {path} ({first}); it is truncated or not a PyTorch checkpoint: "
                           "copy or download it again") from None
