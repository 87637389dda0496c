"""The layers a result is drawn into: maps, strips, markers, crosshairs and the search window.

Created once per connected pair and then updated *in place* on every result (new layers or new
arrays per mouse event would cost napari a full re-layout). In the target viewer:

* the target image;
* ``maps``: the fused similarity map at its window, with the per-level maps to its right on
  screen when asked (one image layer: napari slices and draws each layer on every move of the
  slice, so the live path keeps the layer count low);
* ``compare``: the timestep compare strip below the fused map (its own layer: it is drawn a step
  later than the main map);
* ``markers``: the match (yellow disc), the true point (green ring) and the maps' labels, rows of
  one points layer;
* ``aids``: crosshairs through the match and the search window's outline.

In the source viewer: the query and crosshairs. All derived layers share the target (or source)
layer's geometry, so they sit in world mm.
"""

from __future__ import annotations

import contextlib

import numpy as np

from ...explorer import MAP_RANGES, display_limits
from .._layers import box_translate, same_geometry  # the scan's full geometry (direction in the affine)
from .._napari_private import layer_ranges, layers_change_callback
from .in_place_updates import box_outline, crosshair, no_refresh, set_points, set_vectors, set_visible

__all__ = ["MapLayers", "SIM_COLORMAP"]

SIM_COLORMAP = "coolwarm"
#: voxels between the maps of a strip
STRIP_GAP = 2
#: rows of the markers layer before the map labels
MATCH_ROW, TRUTH_ROW = 0, 1
_MARKER_STYLE = {  # symbol, size (vox), face colour, border colour
    "match": ("disc", 3.0, (1.0, 1.0, 0.0, 1.0), (0.0, 0.0, 0.0, 1.0)),
    "truth": ("ring", 4.0, (0.0, 1.0, 0.0, 1.0), (0.0, 1.0, 0.0, 1.0)),
    "label": ("disc", 0.01, (0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),
}


def _marker_style(kinds) -> dict:
    """Per-point napari Points properties for marker rows of the given kinds."""
    symbol, size, face, border = zip(*(_MARKER_STYLE[k] for k in kinds))
    return {"symbol": list(symbol), "size": np.array(size), "face_color": np.array(face),
            "border_color": np.array(border)}


class MapLayers:
    """Owns and updates the explorer's layers (see the module docstring)."""

    def __init__(self, source_viewer, target_viewer, source_layer, target_layer):
        self.source_viewer, self.target_viewer = source_viewer, target_viewer
        self.source_layer, self.target_layer = source_layer, target_layer
        self.layers: dict[str, object] = {}
        self.strip_names: list[str] = []  # per-level maps beside the fused one, in order
        self.compare_names: list[int] = []  # compare strip order (timesteps)
        #: a compare map's label (the explorer sets its session's: noise/signal when variants mix)
        self.timestep_label = lambda t: f"t={t}"
        self._inner: dict[str, list[int]] = {}  # strip key -> start of each map inside the strip array
        self._width: dict[str, int] = {}  # strip key -> width of each of its maps along the strip
        self._signs: dict[int, int] = {}  # axis -> screen sign, for the result being drawn
        self._pending: list | None = None  # target layers changed in place, not yet redrawn (deferred)
        self._moved: list | None = None  # inside :meth:`_moves`: the map layers moved so far
        self._build()

    # ------------------------------------------------------------------ creation

    def _build(self) -> None:
        tv, tgt, src = self.target_viewer, self.target_layer, self.source_layer
        tv.layers.clear()
        geo = same_geometry(tgt)
        sgeo = same_geometry(src)
        tv.add_image(tgt.data, name=tgt.name, colormap=tgt.colormap.name,
                     contrast_limits=tuple(tgt.contrast_limits), **geo)
        empty = np.zeros((1, 1, 1), np.float32)
        L = self.layers
        for key, name, opacity in (("maps", "similarity (fused, per level)", 0.75),
                                   ("compare", "similarity per timestep", 0.9)):
            L[key] = tv.add_image(empty, name=name, colormap=SIM_COLORMAP, opacity=opacity, visible=False,
                                  contrast_limits=(-1.0, 1.0), **geo)
        # crosshair (3 lines, yellow) and search window (12 edges, white) in one layer: one refresh
        colors = np.array([[1.0, 1.0, 0.0, 0.6]] * 3 + [[1.0, 1.0, 1.0, 0.9]] * 12)
        L["aids"] = tv.add_vectors(np.zeros((15, 2, 3)), name="crosshair and search window", edge_color=colors,
                                   edge_width=0.3, vector_style="line", **geo)
        L["markers"] = tv.add_points(
            np.zeros((2, 3)), name="match, truth and labels", features={"label": ["", ""]},
            **_marker_style(["match", "truth"]),
            text={"string": "{label}", "color": "white", "size": 10, "anchor": "lower_left"},
            shown=np.zeros(2, bool), **geo)
        # the source viewer: query marker and crosshair (reuse ours from an earlier connection)
        sv = self.source_viewer
        for key, name, make in (
            ("query", "query", lambda n: sv.add_points(np.zeros((0, 3)), name=n, size=3, symbol="disc",
                                                      face_color="yellow", border_color="black", **sgeo)),
            ("cross_s", "crosshair (source)", lambda n: sv.add_vectors(np.zeros((3, 2, 3)), name=n,
                                                                      edge_color="yellow", edge_width=0.25,
                                                                      vector_style="line", opacity=0.5, **sgeo)),
        ):
            old = sv.layers[name] if name in sv.layers else None
            if old is not None and old.metadata.get("meddift_marker"):
                old.data = np.zeros((0, 3)) if key == "query" else np.zeros((3, 2, 3))
                L[key] = old
            else:
                L[key] = make(name)
                L[key].metadata["meddift_marker"] = True
        sv.layers.selection.active = src
        tv.reset_view()

    # ------------------------------------------------------------------ updates

    def _refresh(self, layer) -> None:
        """Redraw ``layer`` after an in-place change, or note it while :meth:`deferred` is open."""
        if self._pending is not None and layer in self.target_viewer.layers:
            # the slice when it changed: a later slice move re-slices it with the new data
            clear = getattr(layer, "_clear_extent", None)
            if callable(clear):  # what its refresh would do first: the viewer's ranges see the new extent
                clear()
            self._pending = [(p, pt) for p, pt in self._pending if p is not layer]
            self._pending.append((layer, tuple(self.target_viewer.dims.point)))
        else:
            layer.refresh()

    @contextlib.contextmanager
    def deferred(self):
        """Hold back the target layers' in-place redraws until the block ends. When the target
        viewer's slice moved after a layer changed (the view follows the match), napari has
        already re-sliced that layer with its new data, so redrawing it again is skipped; the
        other held-back layers are redrawn once each."""
        self._pending = []
        try:
            yield
        finally:
            pending, self._pending = self._pending, None
            point = tuple(self.target_viewer.dims.point)
            for layer, noted in pending:
                if noted == point:
                    layer.refresh()

    @contextlib.contextmanager
    def _moves(self):
        """Move maps (``translate``) inside; the target viewer's dims ranges are checked once at
        the end instead of recomputed once per moved layer (each recomputation walks every
        layer's extent and re-validates the dims: a few ms each on a small CPU)."""
        outer = self._moved is None
        if outer:
            self._moved = []
        try:
            yield
        finally:
            if outer:
                moved, self._moved = self._moved, None
                if moved:
                    self._sync_ranges(moved)

    def _sync_ranges(self, moved) -> None:
        """What the viewer does on a layer's ``translate`` event, when it matters: the dims
        ranges take the new extent of all layers once a ``moved`` layer reaches outside them. A
        map moving inside the ranges leaves them as they are (a strip that moved back in leaves
        the ranges a little wider than the layers until the next growth: nothing is sliced or
        drawn differently for it). A move changes nothing else the viewer derives from its
        layers (number of dims, units, axis labels), so only ``dims.range`` is set."""
        viewer = self.target_viewer
        dims = viewer.dims
        lo = np.array([r.start for r in dims.range], float)
        hi = np.array([r.stop for r in dims.range], float)
        inside = True
        for layer in moved:
            ext = np.asarray(layer.extent.world, float)
            if ext.shape[1] != lo.size or (ext[0] < lo - 1e-9).any() or (ext[1] > hi + 1e-9).any():
                inside = False
                break
        if inside:
            return
        ranges = layer_ranges(viewer)
        if ranges is None or len(ranges) != dims.ndim:  # pragma: no cover - the full update
            layers_change_callback(viewer)()
        elif tuple(map(tuple, ranges)) != tuple(map(tuple, dims.range)):
            dims.range = ranges

    def _set_translate(self, layer, translate) -> None:
        """Move ``layer`` without redrawing it (the caller redraws it once with its new data)."""
        sync = layers_change_callback(self.target_viewer)
        with no_refresh(layer):
            if self._moved is not None and sync is not None:
                with layer.events.translate.blocker(sync):  # only the viewer's ranges wait; vispy moves
                    layer.translate = translate
                self._moved.append(layer)
            else:
                layer.translate = translate

    def limits(self, state) -> tuple[float, float]:
        return display_limits(state.display_mode, MAP_RANGES.get(state.color_range, (-1.0, 1.0)))

    def apply_limits(self, state) -> None:
        lim = self.limits(state)
        for key in ("maps", "compare"):
            layer = self.layers.get(key)
            if layer is not None and tuple(layer.contrast_limits) != lim:
                layer.contrast_limits = lim

    def _place(self, layer, data, offset_zyx, lim) -> None:
        """Show a map whose voxel 0 is target voxel ``offset_zyx``: in place when the shape is unchanged."""
        translate = box_translate(self.target_layer, offset_zyx)
        old = layer.data
        moved = not np.allclose(layer.translate, translate)
        if isinstance(old, np.ndarray) and old.shape == data.shape and old.dtype == data.dtype:
            if moved:
                self._set_translate(layer, translate)
            old[...] = data
            self._refresh(layer)
        else:
            self._set_translate(layer, translate)
            layer.data = np.array(data, dtype=np.float32, copy=True)  # a buffer we own and update in place
        if tuple(layer.contrast_limits) != lim:
            layer.contrast_limits = lim

    def _screen_sign(self, axis: int) -> int:
        """+1 when the target's voxel index along ``axis`` grows with world (screen) y or x, else -1
        (a scan stored anterior-down or right-to-left: the direction flips that axis). Worked out
        once per drawn result (``show`` / ``show_compare`` clear ``_signs``), not once per map."""
        if axis in self._signs:
            return self._signs[axis]
        e = np.zeros(3)
        e[axis] = 1.0
        d = np.asarray(self.target_layer.data_to_world(e), float) - np.asarray(
            self.target_layer.data_to_world(np.zeros(3)), float
        )
        self._signs[axis] = 1 if d[axis] >= 0 else -1
        return self._signs[axis]

    def _label_anchor(self, start, shape) -> np.ndarray:
        """The voxel of a map at the top-left of the screen (smallest world y and x)."""
        p = np.asarray(start, float).copy()
        for axis in (1, 2):
            if self._screen_sign(axis) < 0:
                p[axis] += shape[axis] - 1
        return p

    def _strip(self, layer, maps, offset, shift_axis: int, show: bool, lim, key: str, lead: int = 1) -> list:
        """Maps side by side along ``shift_axis`` in the screen's direction (right for x, down for
        y), map ``k`` at ``k + lead`` map widths from ``offset`` (``lead=0``: the first one at
        ``offset``); returns their label positions."""
        if not show or not maps:
            set_visible(layer, False)
            return []
        shape = maps[0].shape
        w = shape[shift_axis]
        n = len(maps)
        sign = self._screen_sign(shift_axis)
        starts = [int(offset[shift_axis]) + sign * (k + lead) * (w + STRIP_GAP) for k in range(n)]
        first = min(starts)
        full = list(shape)
        full[shift_axis] = n * (w + STRIP_GAP) - STRIP_GAP
        strip = np.full(full, np.nan, np.float32) if n > 1 else None  # NaN: the gaps stay empty
        inner, pos = [], []
        for m, st in zip(maps, starts):
            if strip is not None:
                sl = [slice(None)] * 3
                sl[shift_axis] = slice(st - first, st - first + w)
                strip[tuple(sl)] = m
            inner.append(st - first)
            p = np.asarray(offset, float).copy()
            p[shift_axis] = st
            pos.append(self._label_anchor(p, shape))
        self._inner[key] = inner
        self._width[key] = w
        origin = np.asarray(offset, float).copy()
        origin[shift_axis] = first
        self._place(layer, strip if strip is not None else maps[0], origin, lim)
        set_visible(layer, True)
        return pos

    def show(self, result, state, level_names) -> None:
        """Draw ``result`` (a QueryResult) under ``state``'s view settings. The compare strip is
        drawn when ``result.compare`` is filled (else it stays as it was until ``show_compare``)."""
        L = self.layers
        self._signs = {}
        lim = self.limits(state)
        disp = result.display
        names = [n for n in level_names if n in result.per_level] if state.per_level else []
        self.strip_names = names
        with self._moves():
            maps = [disp.get("fused", result.fused)] + [disp.get(n, result.per_level[n]) for n in names]
            pos = self._strip(L["maps"], maps, result.offset, 2, True, lim, "maps", lead=0)
            self._level_pos = pos[1:]
            if result.compare or not result.request.compare:
                self.show_compare(result, state)
            else:
                self._draw_markers(result, state)
        set_points(L["query"], [result.request.query_zyx])
        hi = np.asarray(result.offset) + np.asarray(result.fused.shape)
        set_vectors(L["aids"], np.concatenate([crosshair(result.target_zyx, np.shape(self.target_layer.data)[-3:]),
                                               box_outline(result.target_zyx, result.offset, hi)]), self._refresh)
        set_vectors(L["cross_s"], crosshair(result.request.query_zyx, np.shape(self.source_layer.data)[-3:]))

    def show_compare(self, result, state) -> None:
        """Draw the timestep compare strip of ``result`` below its fused map (hidden when empty)."""
        # the request's order: the session's (t, or noise/signal when variants are mixed)
        ts = [t for t in result.request.compare if t in result.compare] + sorted(
            t for t in result.compare if t not in result.request.compare)
        self._signs = {}
        self.compare_names = ts
        with self._moves():
            self._compare_pos = self._strip(self.layers["compare"], [result.display.get(f"t={t}", result.compare[t])
                                                                     for t in ts], result.offset, 1, bool(ts),
                                            self.limits(state), "compare")
        self._draw_markers(result, state)

    def _draw_markers(self, result, state) -> None:
        """The match, the true point (when shown) and a label at each map, in one points layer:
        moved in place while the labels stay the same (one redraw), rebuilt when they change."""
        labels, pos = ["fused"], [self._label_anchor(result.offset, result.fused.shape)]
        for n, p in zip(self.strip_names, getattr(self, "_level_pos", [])):
            labels.append(n if n in result.request.levels else f"{n} (off)")
            pos.append(p)
        for t, p in zip(self.compare_names, getattr(self, "_compare_pos", [])):
            labels.append(self.timestep_label(t) + (" (shown)" if t == result.request.timestep else ""))
            pos.append(p)
        truth = result.truth if state.show_truth else None
        rows = np.empty((2 + len(labels), 3))
        rows[MATCH_ROW] = result.target_zyx
        rows[TRUTH_ROW] = truth.target_zyx if truth is not None else result.target_zyx
        rows[2:] = np.stack(pos)
        rows[2:, 0] = result.target_zyx[0]  # the labels sit on the match's slice
        shown = np.array([True, truth is not None] + [len(labels) > 1] * len(labels))
        names = ["", ""] + labels
        layer = self.layers["markers"]
        if layer.data.shape == rows.shape and list(layer.features["label"]) == names:
            if not (np.array_equal(layer.data, rows) and np.array_equal(layer.shown, shown)):
                layer.data[...] = rows  # same rows: move them in place
                layer.shown[...] = shown
                self._refresh(layer)
        else:
            kinds = ["match", "truth"] + ["label"] * len(labels)
            layer.data = rows  # re-sliced now: the text of the new features is drawn for these rows
            layer.features = {"label": np.asarray(names, dtype=object)}
            with no_refresh(layer):
                for prop, value in _marker_style(kinds).items():
                    setattr(layer, prop, value)
                layer.shown = shown
            layer.refresh()
        set_visible(layer, True)

    def marker(self, row: str) -> np.ndarray | None:
        """The drawn ``'match'`` or ``'truth'`` point (z, y, x voxels), None when not shown."""
        i = {"match": MATCH_ROW, "truth": TRUTH_ROW}[row]
        layer = self.layers["markers"]
        if len(layer.data) <= i or not layer.shown[i] or not layer.visible:
            return None
        return np.asarray(layer.data[i], float)

    @property
    def map_labels(self) -> list[str]:
        """The labels drawn at the maps (fused, per level, per timestep), in order."""
        layer = self.layers["markers"]
        return [str(v) for v, on in zip(layer.features["label"][2:], layer.shown[2:]) if on]

    def strip_map(self, key: str, index: int) -> np.ndarray:
        """Map ``index`` cut from strip ``key``, as shown: 'maps' (0 the fused map, then the
        per-level maps) or 'compare' (one per timestep)."""
        layer = self.layers[key]
        axis = 2 if key == "maps" else 1
        st = self._inner[key][index]
        w = self._width[key]
        sl = [slice(None)] * 3
        sl[axis] = slice(st, st + w)
        return layer.data[tuple(sl)]

    def fused_map(self) -> np.ndarray:
        """The fused map as shown (cut from the ``maps`` layer)."""
        return self.strip_map("maps", 0)
