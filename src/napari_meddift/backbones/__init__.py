"""Backbone registry. Backbones are imported lazily: naming one imports only its module."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import MedDiftError
from .base import Backbone, ExtractionSettings

#: name -> "module:Class"; every class takes (weights=None, random_weights=False, **kw)
_REGISTRY: dict[str, str] = {
    "maisi": "napari_meddift.backbones.maisi:MaisiBackbone",
    "mini": "napari_meddift.backbones.mini:MiniBackbone",
    "mind-ssc": "napari_meddift.backbones.mind:MindSscBackbone",  # hand-crafted baseline
}
#: short names accepted wherever a backbone is named
ALIASES: dict[str, str] = {"mind": "mind-ssc"}


def available_backbones() -> list[str]:
    """Registered backbone names (registration does not import them)."""
    return sorted(_REGISTRY)


def register_backbone(name: str, target: str) -> None:
    """Register ``"package.module:Class"`` under ``name`` (for plugins and tests)."""
    if ":" not in target:
        raise ValueError("target must look like 'package.module:Class'")
    _REGISTRY[name] = target


def _backbone_class(name: str):
    key = str(name).lower()
    key = ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise MedDiftError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")
    module_name, cls_name = _REGISTRY[key].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise MedDiftError(f"backbone {name!r} is not installed in this build ({module_name})") from exc
        raise
    return getattr(module, cls_name)


def backbone_levels(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every level, default fused levels) of a backbone, without building it (no weights loaded)."""
    cls = _backbone_class(name)
    return tuple(cls.level_names), tuple(cls.default_levels)


def backbone_grid_spacing(name: str, weights=None, random_weights: bool = False) -> float | None:
    """The spacing (mm) a backbone runs at, without building it (mini reads its weights' JSON);
    None for the scan's own grid. Lets the CLI check memory before a model is loaded."""
    cls = _backbone_class(name)
    declared = getattr(cls, "declared_grid_spacing", None)
    if declared is not None:
        return declared(weights, random_weights)
    value = getattr(cls, "grid_spacing", None)
    return value if isinstance(value, (int, float)) or value is None else None


def get_backbone(name: str, weights=None, random_weights: bool = False, **kw: Any) -> Backbone:
    """Build the backbone called ``name``; MedDiftError for an unknown name."""
    return _backbone_class(name)(weights=weights, random_weights=random_weights, **kw)


__all__ = ["Backbone", "ExtractionSettings", "available_backbones", "backbone_grid_spacing", "backbone_levels",
           "get_backbone", "register_backbone"]
