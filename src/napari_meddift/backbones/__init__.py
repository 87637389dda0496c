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


def available_backbones() -> list[str]:
    """Registered backbone names (registration does not import them)."""
    return sorted(_REGISTRY)


def register_backbone(name: str, target: str) -> None:
    """Register ``"package.module:Class"`` under ``name`` (for plugins and tests)."""
    if ":" not in target:
        raise ValueError("target must look like 'package.module:Class'")
    _REGISTRY[name] = target


def get_backbone(name: str, weights=None, random_weights: bool = False, **kw: Any) -> Backbone:
    """Build the backbone called ``name``; MedDiftError for an unknown name."""
    key = str(name).lower()
    if key not in _REGISTRY:
        raise MedDiftError(f"unknown backbone {name!r}; available: {', '.join(available_backbones())}")
    module_name, cls_name = _REGISTRY[key].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise MedDiftError(f"backbone {name!r} is not installed in this build ({module_name})") from exc
        raise
    cls = getattr(module, cls_name)
    return cls(weights=weights, random_weights=random_weights, **kw)


__all__ = ["Backbone", "ExtractionSettings", "available_backbones", "get_backbone", "register_backbone"]
