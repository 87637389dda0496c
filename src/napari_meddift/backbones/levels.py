"""Choosing feature levels by index or by name, the way every command line and widget spells them."""

from __future__ import annotations

from typing import Sequence

from ..errors import MedDiftError


def resolve_levels(spec: str | None, level_names: Sequence[str]) -> tuple[str, ...] | None:
    """Turn a level specification into level names.

    ``spec``: comma-separated indices into ``level_names`` (``"0,2,3"``), names (``"up0,up2"``)
    or a mix; ``None`` or blank means "all levels" (the caller's default).
    ``level_names``: the levels the backbone or store has, in order.

    Returns the named levels without duplicates, in the order given, or ``None`` for "all".

    Raises MedDiftError: an index out of range or an unknown name; the message lists the choices.
    """
    if spec is None or spec.strip() == "":
        return None
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.isdigit():
            i = int(item)
            if i >= len(level_names):
                raise MedDiftError(
                    f"level index {i} is out of range; this source has levels "
                    + ", ".join(f"{k}={n}" for k, n in enumerate(level_names))
                )
            out.append(level_names[i])
        elif item in level_names:
            out.append(item)
        else:
            raise MedDiftError(f"unknown level {item!r}; choose from {', '.join(level_names)} or their indices")
    return tuple(dict.fromkeys(out))
