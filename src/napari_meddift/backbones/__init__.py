"""Backbone registry. Backbones are imported lazily: naming one imports only its module, and
importing the registry imports no PyTorch (``Backbone`` and ``ExtractionSettings`` come from
:mod:`.base` on first use), so the command line lists the names without it."""

from __future__ import annotations

import importlib

from ..lazy import lazy_attributes
import inspect
from typing import TYPE_CHECKING, Any

from ..errors import MedDiftError

if TYPE_CHECKING:
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


def _key(name: str) -> str:
    """The registry's spelling of a backbone name: stripped, lower case (``MyNet`` -> ``mynet``)."""
    return str(name).strip().lower()


def register_backbone(name: str, target: str) -> None:
    """Register ``"package.module:Class"`` under ``name`` (for plugins and tests).

    Names are case-insensitive: ``register_backbone("MyNet", ...)`` is found by
    ``get_backbone("MyNet")`` and ``get_backbone("mynet")``. The class is imported, and checked
    against the :class:`Backbone` protocol, when the backbone is first built.
    """
    if not _key(name):
        raise ValueError("a backbone name must not be empty")
    if ":" not in target:
        raise ValueError("target must look like 'package.module:Class'")
    _REGISTRY[_key(name)] = target


#: what :func:`get_backbone` checks a built backbone has (``Backbone``'s members; ``scheduler`` and
#: ``default_timestep`` are optional)
_PROTOCOL_ATTRIBUTES = ("name", "level_names", "default_levels", "preprocessing", "grid_spacing",
                        "weights_hash", "config", "description")


def _check_backbone(backbone: Any, name: str) -> None:
    """MedDiftError (one line) naming what ``backbone`` lacks of the :class:`Backbone` protocol.

    Looked up statically, so a property (``weights_hash`` may hash a checkpoint) is not evaluated.
    """
    missing = object()
    lacking = [a for a in _PROTOCOL_ATTRIBUTES if inspect.getattr_static(backbone, a, missing) is missing]
    if not callable(getattr(backbone, "extract", None)):
        lacking.append("extract()")
    if lacking:
        target = _REGISTRY.get(ALIASES.get(_key(name), _key(name)), type(backbone).__qualname__)
        raise MedDiftError(f"backbone {name!r} ({target}) does not meet the Backbone protocol "
                           f"(napari_meddift.backbones.base): it lacks {', '.join(lacking)}")


def _backbone_class(name: str):
    key = _key(name)
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


def backbone_levels(name: str, weights=None, random_weights: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(every level, default fused levels) of a backbone, without building it (no weights loaded;
    mini reads its weights' JSON, as the levels depend on the weights' architecture)."""
    cls = _backbone_class(name)
    declared = getattr(cls, "declared_levels", None)
    if declared is not None:
        names, default = declared(weights, random_weights)
        return tuple(names), tuple(default)
    return tuple(cls.level_names), tuple(cls.default_levels)


def backbone_default_timestep(name: str, weights=None, random_weights: bool = False) -> int | None:
    """The timestep a backbone extracts at unless told, without building it, where its weights'
    files declare one (mini: ``default_timestep`` in the weights' JSON); None where it is the
    paper's operating point on the backbone's schedule (MAISI: known once the release is read)."""
    declared = getattr(_backbone_class(name), "declared_timestep", None)
    return None if declared is None else int(declared(weights, random_weights))


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
    """Build the backbone called ``name`` (any case); MedDiftError for an unknown name or for a
    registered class that does not meet the :class:`Backbone` protocol."""
    backbone = _backbone_class(name)(weights=weights, random_weights=random_weights, **kw)
    _check_backbone(backbone, name)
    return backbone


#: name -> the module that defines it
_LAZY = {"Backbone": ".base", "ExtractionSettings": ".base"}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = ["Backbone", "ExtractionSettings", "available_backbones", "backbone_default_timestep",
           "backbone_grid_spacing", "backbone_levels",
           "get_backbone", "register_backbone"]
