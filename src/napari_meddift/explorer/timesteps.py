"""Several timesteps of one pair: extract them into cached stores, one matcher per timestep.

The diffusion timestep t sets how much noise is added before the features are read (MedDIFT's
main knob). To compare timesteps for the same voxel, the explorer extracts a chosen set (for
example 0, 20, 50, 100, 200) once, with the backbone and settings of the connected stores,
into the cache folder (one store per image, backbone, weights and settings; an identical store
is reused at once), and keeps one matcher per timestep, so switching is a search, not an
extraction.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from ..errors import MedDiftError

__all__ = ["parse_timesteps", "store_recipe", "extract_timesteps", "store_noise", "timestep_text"]


def store_noise(store) -> tuple[str | None, float | None]:
    """(schedule ``ddpm``/``rflow`` or None, noise/signal or None) of a store's timestep: the
    recorded ``noise_signal``, or for a store written before it was recorded, computed from its
    backbone, variant and timestep (``backbones/noise.py``)."""
    from ..backbones.noise import noise_signal, schedule_name, schedule_scheduler

    attrs = dict(getattr(store, "attrs", None) or {})
    schedule = schedule_name(attrs.get("backbone"), attrs.get("backbone_config"))
    ns = attrs.get("noise_signal")
    if ns is None and schedule is not None and attrs.get("timestep") is not None:
        ns = noise_signal(schedule_scheduler(schedule), int(attrs["timestep"]))
    return schedule, (None if ns is None else float(ns))


def timestep_text(t, schedule: str | None = None, noise_signal: float | None = None, by_noise: bool = False,
                  short: bool = False) -> str:
    """How a timestep is labelled: ``t = 20 (noise/signal 0.184)``; with ``by_noise`` (variants
    mixed) the ratio first, ``noise/signal 0.184 (DDPM t = 20)``; ``short`` for map labels
    (``t=20``, ``n/s 0.184 (DDPM t=20)``)."""
    from ..backbones.noise import SCHEDULE_TITLES

    eq = "=" if short else " = "
    if t is None:
        return f"t{eq}(connected stores)"
    if noise_signal is None:
        return f"t{eq}{t}"
    ns = f"n/s {noise_signal:.3f}" if short else f"noise/signal {noise_signal:.3f}"
    if by_noise:
        title = SCHEDULE_TITLES.get(schedule or "", schedule or "")
        return f"{ns} ({title + ' ' if title else ''}t{eq}{t})"
    return f"t{eq}{t}" if short else f"t{eq}{t} ({ns})"


def parse_timesteps(text: str) -> tuple[int, ...]:
    """'0, 20,50' -> (0, 20, 50): sorted, unique, each in 0..999; MedDiftError otherwise."""
    out = set()
    for part in str(text).replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            t = int(part)
        except ValueError:
            raise MedDiftError(f"timestep {part!r} is not a whole number; give e.g. 0,20,50,100,200") from None
        if not 0 <= t <= 999:
            raise MedDiftError(f"timestep {t} is outside 0..999 (the diffusion schedule has 1000 steps)")
        out.add(t)
    if not out:
        raise MedDiftError("give at least one timestep, e.g. 0,20,50,100,200")
    return tuple(sorted(out))


def store_recipe(store):
    """(backbone, ExtractionSettings) that made ``store``: the same backbone, weights and
    settings re-extract other timesteps. MedDiftError when the weights cannot be found again."""
    from ..backbones import get_backbone
    from ..backbones.base import ExtractionSettings

    attrs = dict(store.attrs)
    name = attrs.get("backbone")
    if not name:
        raise MedDiftError(f"store {store.path} does not name its backbone; extract timesteps in 'Extract descriptors'")
    fields = {f.name for f in dataclasses.fields(ExtractionSettings)}
    raw = {k: v for k, v in dict(attrs.get("settings") or {}).items() if k in fields}
    if raw.get("levels") is not None:
        raw["levels"] = tuple(raw["levels"])
    settings = ExtractionSettings(**raw)
    want = attrs.get("weights_hash")
    for random_weights in (False, True):
        backbone = get_backbone(name, random_weights=random_weights)
        if not want or backbone.weights_hash == want:
            return backbone, settings
    raise MedDiftError(f"store {store.path} was made with other {name} weights than the packaged ones; "
                       "extract the other timesteps in 'Extract descriptors' with those weights")


def extract_timesteps(source_volume, target_volume, reference_store, timesteps: Sequence[int], cache_dir,
                      progress: Callable[[int, int, str], None] | None = None) -> dict[int, tuple]:
    """Extract ``timesteps`` for both volumes (settings of ``reference_store`` but the timestep)
    into ``cache_dir``; returns {t: (source_store, target_store)}. ``progress(done, total,
    message)`` counts (timestep, image) pairs and may raise CancelledError to stop between them."""
    from ..backbones.extraction import cached_store_path, extract_to_store

    backbone, settings = store_recipe(reference_store)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    ts = tuple(int(t) for t in timesteps)
    total = 2 * len(ts)
    out: dict[int, tuple] = {}
    done = 0
    for t in ts:
        s = dataclasses.replace(settings, timestep=t)
        pair = []
        for label, vol in (("source", source_volume), ("target", target_volume)):
            if progress is not None:
                progress(done, total, f"t={t}: {label}")
            path = cached_store_path(vol, backbone, s, cache_dir)
            inner = None
            if progress is not None:
                def inner(d, n, m, _done=done, _t=t, _label=label):  # cancel can stop mid-extraction
                    progress(_done, total, f"t={_t}: {_label} ({m})" if m else f"t={_t}: {_label}")
            store, _ = extract_to_store(vol, backbone, s, path, progress=inner)
            pair.append(store)
            done += 1
        out[t] = tuple(pair)
    if progress is not None:
        progress(total, total, "done")
    return out
