"""The explorer's long jobs: loading a pair's stores, extracting timesteps, matching all
landmarks. Each runs on a napari worker (:class:`~napari_meddift._qt._long_task.LongTask`:
progress in the activity dock, a working Cancel, errors as napari notifications), one at a time,
and hands its result to the shared session. Uses only the explorer's public surface
(``session``, ``controls``, ``connect_pair``, ``show_error``, ...).

Not the mouse path: a search per pointer position runs on the explorer's
:class:`~napari_meddift._qt.explorer.latest_request_worker.LatestRequestWorker` instead.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QObject

from ...errors import MedDiftError
from .._layers import layer_to_volume
from .._long_task import LongTask, error_text

__all__ = ["ExplorerJobs"]


class ExplorerJobs(QObject):
    """Long jobs of one ExplorerWidget; one at a time (``task``)."""

    def __init__(self, explorer):
        super().__init__(explorer)
        self.explorer = explorer
        self.task: LongTask | None = None

    def start(self, desc, fn, on_done, on_error=None, on_finished=None) -> LongTask | None:
        """Run ``fn(progress)`` as a LongTask unless another one is running (a red line then)."""
        ex = self.explorer
        if self.task is not None and self.task.running:
            ex.show_error(MedDiftError(f"'{self.task.desc}' is still running; wait for it or cancel it"))
            return None

        def failed(exc):
            ex.error_label.setText(error_text(exc))
            if on_error is not None:
                on_error(exc)

        self.task = LongTask(desc, fn, on_done, failed, on_finished, parent=self).start()
        return self.task

    def connect_from_controls(self) -> LongTask | None:
        """The Connect button: open the chosen stores in the background, then connect the pair."""
        ex = self.explorer
        ex.error_label.setText("")
        c = ex.controls
        src_layer, tgt_layer = c.source.value, c.target.value
        if src_layer is None or tgt_layer is None:
            return ex.show_error(MedDiftError("open the source and target images first (two 3D image layers)"))
        paths = [str(v) if v is not None else "" for v in (c.source_store.value, c.target_store.value)]
        if any(p in ("", ".") for p in paths):
            return ex.show_error(
                MedDiftError("give a descriptor store for both images (run 'Extract descriptors' first)")
            )

        def load(progress):
            from ...io.store import open_store
            from ...matching import Matcher

            progress(0, 2, "opening stores")
            s, t = open_store(paths[0]), open_store(paths[1])
            progress(1, 2, "loading descriptors")
            return s, t, Matcher.from_stores(s, t)

        def done(res):
            s, t, m = res
            try:
                ex.connect_pair(src_layer, tgt_layer, s, t, matcher=m)
            except (MedDiftError, ValueError, OSError) as exc:
                ex.show_error(exc)

        c.connect_button.enabled = False
        ex.status_label.setText("loading descriptor stores...")
        return self.start("Loading descriptor stores", load, done,
                          on_finished=lambda: setattr(c.connect_button, "enabled", True))

    def match_landmarks(self, run_async: bool = True, on_error=None):
        """Match every landmark with the current settings; the session shows them when done."""
        session = self.explorer.session
        if not run_async:
            lm = session.match_landmarks()
            session.apply_landmarks(lm)
            return lm
        return self.start("Matching landmarks", session.match_landmarks, session.apply_landmarks, on_error)

    def extract_timesteps(self, timesteps=None, cache_dir=None, run_async: bool = True):
        """Extract ``timesteps`` (default: the controls' list) for the pair into cached stores
        (backbone and settings of the connected stores); each becomes a slider choice."""
        from ...explorer import extract_timesteps, parse_timesteps
        from ...io.cache import default_cache_dir

        ex = self.explorer
        session = ex.session
        try:
            ts = parse_timesteps(ex.controls.timesteps_text.value if timesteps is None
                                 else ",".join(str(t) for t in timesteps))
            if session.stores is None:
                raise MedDiftError("connect the pair from descriptor stores first (their settings are reused)")
            vols = layer_to_volume(ex.source_layer), layer_to_volume(ex.target_layer)
        except MedDiftError as exc:
            ex.show_error(exc)
            return None
        ref = session.stores[0]
        cache = Path(cache_dir) if cache_dir else default_cache_dir()

        def work(progress=None):
            from ...matching import Matcher

            pairs = extract_timesteps(vols[0], vols[1], ref, ts, cache, progress=progress)
            return {t: (Matcher.from_stores(s, g), (s, g)) for t, (s, g) in pairs.items()}

        def done(matchers):
            for t, (m, stores) in matchers.items():
                session.add_timestep(t, m, stores=stores)
            ex.timesteps_ready.emit(sorted(matchers))

        if not run_async:
            done(work())
            return None
        ex.controls.cancel_timesteps.enabled = True
        return self.start(f"Extracting timesteps {','.join(map(str, ts))}", work, done, None,
                          lambda: setattr(ex.controls.cancel_timesteps, "enabled", False))
