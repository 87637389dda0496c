"""The explorer session: one pair, its settings, its truth and landmarks, and the compute step.

``ExplorerSession`` is the model every explorer widget shares (no Qt, no napari: it is tested
without a display). It owns:

* ``state`` (``ExplorerState``, evented): the session listens to it itself and emits
  ``events.rerun`` when a setting that changes the map moves, so views only redraw;
* one ``ExplorerEngine`` per cached timestep (``add_timestep``), the current one chosen by
  ``state.timestep``;
* a truth (``FieldTruth`` or ``LandmarkTruth``) and a ``LandmarkSet``.

The views call ``request`` (GUI thread) and ``compute`` (any thread; pure function of the
request), then show the result. ``events`` (a psygnal ``SignalGroup``): ``connected``,
``rerun``, ``landmarks_changed``, ``timesteps_changed``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable, Sequence

import numpy as np
from psygnal import Signal, SignalGroup

from ..errors import MedDiftError
from ..matching.window import Radius
from .engine import ExplorerEngine, QueryRequest, QueryResult
from .landmarks import LandmarkSet
from .maps import display_map, peak_stats
from .state import MAP_SETTINGS, ExplorerState
from .timesteps import store_noise, timestep_text
from .truth import LandmarkTruth

__all__ = ["ExplorerSession", "SessionEvents", "format_status"]


class SessionEvents(SignalGroup):
    connected = Signal()
    rerun = Signal()  # a map setting changed: search the current voxel again
    landmarks_changed = Signal()
    timesteps_changed = Signal()


class _Warmer:
    """One background thread that warms engines (their norm maps) in the order given, so a pair
    with several timesteps takes one core for a few seconds, not one per timestep."""

    def __init__(self):
        self._jobs: deque[tuple[ExplorerEngine, bool]] = deque()
        self._lock = threading.Lock()  # guards _jobs and _thread
        self._thread: threading.Thread | None = None

    def submit(self, engine: ExplorerEngine, source: bool = True) -> None:
        with self._lock:
            self._jobs.append((engine, source))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="meddift-norm-maps", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    self._thread = None
                    return
                engine, source = self._jobs.popleft()
            engine.warm(source)


class ExplorerSession:
    """One source/target pair being explored (see the module docstring)."""

    def __init__(self, state: ExplorerState | None = None):
        self.state = state if state is not None else ExplorerState()
        self.events = SessionEvents()
        self.engines: dict[int | None, ExplorerEngine] = {}
        #: timestep -> (schedule ``ddpm``/``rflow`` or None, noise/signal or None) of its stores
        self.timestep_noise: dict[int | None, tuple[str | None, float | None]] = {}
        self.connected_timestep: int | None = None
        self.source_spacing = (1.0, 1.0, 1.0)
        self.target_spacing = (1.0, 1.0, 1.0)
        self.stores: tuple | None = None
        self.truth = None
        self.landmarks: LandmarkSet | None = None
        self.last_query: tuple[int, int, int] | None = None
        self.state.events.connect(self._on_state)
        self._warmer = _Warmer()

    # ------------------------------------------------------------------ pair and timesteps

    def connect(self, matcher, source_spacing=(1.0, 1.0, 1.0), target_spacing=(1.0, 1.0, 1.0),
                timestep: int | None = None, stores: tuple | None = None) -> None:
        """Explore with ``matcher`` (a core Matcher); spacings (z, y, x) mm give errors in mm.
        ``timestep``: the timestep its stores were extracted at (from the store attributes)."""
        if timestep is None and stores is not None:
            ts = stores[0].attrs.get("timestep") if hasattr(stores[0], "attrs") else None
            timestep = int(ts) if ts is not None else None
        self.source_spacing = tuple(float(s) for s in source_spacing)
        self.target_spacing = tuple(float(s) for s in target_spacing)
        self._give_spacing(matcher)
        self.timestep_noise = {timestep: store_noise(stores[0]) if stores is not None else (None, None)}
        self.engines = {timestep: ExplorerEngine(matcher)}
        self._warmer.submit(self.engines[timestep])
        self.connected_timestep = timestep
        self.stores = stores
        self.last_query = None
        with self.state.events.blocked():
            self.state.levels = tuple(matcher.levels)
            self.state.weights = {n: float(w) for n, w in matcher.weights.items()}
            self.state.timestep = timestep
        self.events.connected.emit()

    def _give_spacing(self, matcher) -> None:
        """A matcher built without spacings (a script's) searches mm windows on the pair's."""
        if getattr(matcher, "target_spacing", None) is None:
            matcher.source_spacing, matcher.target_spacing = self.source_spacing, self.target_spacing

    @property
    def search_radius(self):
        """``state.radius`` (mm) as the matcher takes it: a ``Radius``, or None (whole target)."""
        r = self.state.radius
        return None if r is None else Radius.mm(float(r))

    def window_voxels(self) -> tuple[int, int, int] | None:
        """The per-axis voxel radius (z, y, x) the window searches in the target (None: all)."""
        engine = self.engine
        if engine is None or self.state.radius is None:
            return None
        return engine.matcher.voxel_radius(self.search_radius)

    @property
    def engine(self) -> ExplorerEngine | None:
        """The engine of ``state.timestep`` (the connected one when that is not cached)."""
        if not self.engines:
            return None
        return self.engines.get(self.state.timestep, self.engines.get(self.connected_timestep))

    @property
    def mixed_schedules(self) -> bool:
        """Whether the cached timesteps come from more than one noise schedule (DDPM and
        rectified flow): their t then mean different noise, and noise/signal orders them."""
        return len({s for s, _ in self.timestep_noise.values() if s is not None}) > 1

    @property
    def timesteps(self) -> list[int]:
        """Cached timesteps (the connected one included when known), ascending in t, or in
        noise/signal when the schedules are mixed."""
        ts = [t for t in self.engines if t is not None]
        if self.mixed_schedules:
            def key(t):
                ns = self.timestep_noise.get(t, (None, None))[1]
                return (math.inf if ns is None else ns, t)

            return sorted(ts, key=key)
        return sorted(ts)

    def timestep_label(self, t, short: bool = False) -> str:
        """``t = 20 (noise/signal 0.184)``; with mixed schedules ``noise/signal 0.184 (DDPM t = 20)``."""
        schedule, ns = self.timestep_noise.get(t, (None, None))
        return timestep_text(t, schedule, ns, by_noise=self.mixed_schedules, short=short)

    def add_timestep(self, timestep: int, matcher, stores: tuple | None = None) -> None:
        """Make ``matcher`` (same pair, another timestep) available to ``state.timestep``;
        ``stores``: its (source, target) stores, for the timestep's noise/signal."""
        if not self.engines:
            raise MedDiftError("connect a pair before adding timesteps")
        info = store_noise(stores[0]) if stores is not None else (None, None)
        have = self.timestep_noise.get(int(timestep), (None, None))[0]
        if int(timestep) in self.engines and None not in (have, info[0]) and have != info[0]:
            raise MedDiftError(f"t = {timestep} is already cached from a {have} store; t = {timestep} of a {info[0]} "
                               "store is another noise level: explore it in its own session")
        ref = next(iter(self.engines.values())).matcher
        if tuple(matcher.source_shape) != tuple(ref.source_shape) or tuple(matcher.target_shape) != tuple(
            ref.target_shape
        ):
            raise MedDiftError(f"the timestep {timestep} stores are for other images (shapes {matcher.source_shape}, "
                               f"{matcher.target_shape}); extract them from this pair")
        self._give_spacing(matcher)
        self.timestep_noise[int(timestep)] = info
        self.engines[int(timestep)] = ExplorerEngine(matcher)
        self._warmer.submit(self.engines[int(timestep)], source=False)  # compare strips: windows only
        self.events.timesteps_changed.emit()

    @property
    def available_levels(self) -> list[str]:
        return self.engine.available_levels if self.engine is not None else []

    def set_levels(self, levels: Sequence[str], weights=None) -> None:
        """Fuse ``levels`` (weights by name) from now on; MedDiftError (state unchanged) if invalid."""
        levels = tuple(levels)
        weights = {n: float(v) for n, v in dict(weights or {}).items()}
        if self.engine is not None:
            self.engine.set_levels(levels, weights)  # validates
        self.state.weights = weights  # (a rerun per field: the views' latest-request slot drops the first)
        self.state.levels = levels

    # ------------------------------------------------------------------ truth and landmarks

    def set_truth(self, truth) -> None:
        """A ``FieldTruth`` or ``LandmarkTruth`` (None: no truth)."""
        self.truth = truth
        self.events.rerun.emit()

    def set_landmarks(self, source_zyx, target_zyx) -> LandmarkSet:
        """Landmark pairs (voxel z, y, x); also the truth when no field is known."""
        self.landmarks = LandmarkSet(source_zyx, target_zyx, self.target_spacing)
        if self.truth is None or isinstance(self.truth, LandmarkTruth):
            self.truth = LandmarkTruth(self.landmarks.source_zyx, self.landmarks.target_zyx, self.source_spacing)
        self.events.landmarks_changed.emit()
        return self.landmarks

    def match_landmarks(self, progress: Callable[[int, int, str], None] | None = None) -> LandmarkSet:
        """Predict every source landmark with the current settings (any thread): best voxel,
        score, rivalry and PSR per pair, exactly as the live view computes them. Returns a new
        ``LandmarkSet``; ``apply_landmarks`` shows it. ``progress`` may raise CancelledError."""
        lm, engine = self.landmarks, self.engine
        if lm is None:
            raise MedDiftError("load landmark pairs first")
        if engine is None:
            raise MedDiftError("connect a pair in the explorer first")
        shape = np.asarray(engine.matcher.source_shape)
        q = np.clip(np.rint(lm.source_zyx), 0, shape - 1).astype(np.int64)
        st = self.state
        levels = tuple(st.levels) or tuple(engine.available_levels)
        weights = {n: float(st.weights.get(n, 1.0)) for n in levels}
        n = len(q)
        pred = np.zeros((n, 3), np.float64)
        score, amb, psr = (np.full(n, np.nan) for _ in range(3))
        for i, p in enumerate(q):
            if progress is not None:
                progress(i, n, f"landmark {i + 1} of {n}")
            sim = engine.similarity(p, self.search_radius, levels, weights)
            t, s, _ = sim.best(2)
            pk = peak_stats(sim.fused, np.subtract(t, sim.offset), st.exclusion)
            pred[i], score[i], amb[i], psr[i] = t, s, pk.rivalry, pk.psr
        if progress is not None:
            progress(n, n, "done")
        out = LandmarkSet(lm.source_zyx, lm.target_zyx, lm.spacing_zyx, pred, score, amb, psr,
                          settings={"levels": list(levels), "radius": st.radius, "timestep": st.timestep})
        return out

    def apply_landmarks(self, landmarks: LandmarkSet) -> None:
        self.landmarks = landmarks
        self.events.landmarks_changed.emit()

    # ------------------------------------------------------------------ queries

    def request(self, query_zyx, tag: str = "mouse", t_event: float | None = None) -> QueryRequest:
        """Freeze the current settings for a search from source voxel ``query_zyx``."""
        st = self.state
        engine = self.engine
        levels = tuple(st.levels) or tuple(engine.available_levels if engine else ())
        weights = tuple((n, float(st.weights.get(n, 1.0))) for n in levels)
        compare = tuple(self.timesteps) if st.compare_timesteps and len(self.engines) > 1 else ()
        self.last_query = tuple(int(v) for v in query_zyx)  # type: ignore[assignment]
        timestep = st.timestep if st.timestep in self.engines else self.connected_timestep
        return QueryRequest(query_zyx=self.last_query, levels=levels, weights=weights, radius=self.search_radius,
                            exclusion=int(st.exclusion), timestep=timestep, display_mode=st.display_mode,
                            compare=compare, tag=tag,
                            t_event=time.perf_counter() if t_event is None else t_event)

    def compute(self, req: QueryRequest, compare: bool = True) -> QueryResult | None:
        """Everything the views show for ``req`` (thread-safe; None when disconnected).
        ``compare=False`` leaves the timestep compare strip to ``compute_compare`` (a second step,
        so the main map is not held up by one extra search per cached timestep)."""
        engine = self.engines.get(req.timestep)
        if engine is None:
            return None
        t0 = time.perf_counter()
        res = engine.compute(req)
        mode = req.display_mode
        res.display["fused"] = display_map(res.fused, mode)
        for name, m in res.per_level.items():
            res.display[name] = display_map(m, mode)
        truth = self.truth
        if truth is not None:
            ans = truth.target_of(req.query_zyx)
            res.truth = ans
            res.error_mm = float(np.linalg.norm((np.subtract(res.target_zyx, ans.target_zyx))
                                                * np.asarray(self.target_spacing)))
        if compare:
            self.compute_compare(res)
        res.compute_ms = (time.perf_counter() - t0) * 1e3
        return res

    def compute_compare(self, res: QueryResult) -> QueryResult:
        """Fill ``res.compare`` (timestep -> fused map at the same voxel, settings and window) for
        the request's compare timesteps; thread-safe. Returns ``res``."""
        req = res.request
        for t in req.compare:
            e = self.engines.get(t)
            if e is None or t in res.compare:
                continue
            m = res.fused if t == req.timestep else e.similarity(req.query_zyx, req.radius, req.levels,
                                                                 dict(req.weights)).fused
            res.compare[t] = m
            res.display[f"t={t}"] = display_map(m, req.display_mode)
        return res

    def consistency(self, result: QueryResult) -> tuple[float, bool]:
        engine = self.engines.get(result.request.timestep)
        if engine is None:
            raise MedDiftError("the pair was disconnected")
        return engine.consistency(result)

    # ------------------------------------------------------------------ callbacks it owns

    def _on_state(self, info) -> None:
        name = getattr(info.signal, "name", "")
        if name in MAP_SETTINGS or name == "display_mode":
            if self.last_query is not None and self.engines:
                self.events.rerun.emit()

    def close(self) -> None:
        """Drop the pair and stop listening to the state."""
        try:
            self.state.events.disconnect(self._on_state)
        except Exception:  # noqa: BLE001  # pragma: no cover - already disconnected
            pass
        self.engines = {}
        self.timestep_noise = {}
        self.truth = None
        self.landmarks = None


def _fmt_mm(v) -> str:
    return "(" + ", ".join(f"{x:.1f}" for x in v) + ") mm"


def format_status(result: QueryResult, src_mm, tgt_mm, pending_fb: bool = False) -> str:
    """The explorer's status text (voxels z, y, x; mm in world z, y, x), three lines."""
    q, t = result.request.query_zyx, result.target_zyx
    pk = result.peak
    amb = "n/a" if not math.isfinite(pk.rivalry) else f"{pk.rivalry:.2f}"
    psr = "n/a" if not math.isfinite(pk.psr) else f"{pk.psr:.1f}"
    if pending_fb:
        fb = "checking..."
    elif result.consistent is None:
        fb = "not checked"
    else:
        fb = f"{'consistent' if result.consistent else 'INCONSISTENT'} (back-match {result.fb_distance:.1f} vox)"
    ts = "" if result.request.timestep is None else f"   t={result.request.timestep}"
    lines = [
        f"query {tuple(q)} vox {_fmt_mm(src_mm)}  ->  match {tuple(t)} vox {_fmt_mm(tgt_mm)}",
        f"score {result.score:.4f}   rivalry {amb}   PSR {psr}{ts}   forward-backward: {fb}",
    ]
    if result.truth is not None:
        tz = ", ".join(f"{v:.1f}" for v in result.truth.target_zyx)
        lines.append(f"error {result.error_mm:.1f} mm from the truth ({tz}) vox  [{result.truth.describe()}]")
    return "\n".join(lines)
