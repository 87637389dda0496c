"""Extract descriptors (magicgui): image layers + backbone + settings -> cached descriptor stores.

The work runs off the GUI thread on a napari worker (the shared ``TaskPanel``: progress in the
dock and napari's activity dock, Cancel, one red line per problem); the core's
``extract_to_store`` does everything (reuse of an identical store, atomic write). Cancel makes
the progress callback raise :class:`~napari_meddift.errors.CancelledError` inside the core,
which then leaves no store behind.
"""

from __future__ import annotations

import time
from pathlib import Path

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    Slider,
    SpinBox,
)

from ..backbones import backbone_default_timestep, backbone_levels
from ..errors import CancelledError, MedDiftError, is_out_of_memory, out_of_memory_message
from ..backbones.extraction import cached_store_path
from ._layers import STORE_KEY, layer_to_volume
from ._task_panel import TaskPanel

__all__ = ["ExtractWidget"]

NONE = "(none)"


#: the Grid choices and what ExtractionSettings.spacing they mean
SPACING_CHOICES: dict[str, float | str | None] = {
    "backbone's own": None, "native": "native", "1.5 mm": 1.5, "2.0 mm": 2.0, "2.5 mm": 2.5, "3.0 mm": 3.0,
}


def _noise_text(t: int, variant: str = "ddpm") -> str:
    """What timestep ``t`` does on a schedule (``ddpm`` or ``rflow``): x_t = a x_0 + b eps, with
    noise/signal b/a from the scheduler itself (0.184 at the paper's DDPM t = 20)."""
    from ..backbones.noise import SCHEDULE_TITLES, noise_coefficients, schedule_scheduler

    a, b = noise_coefficients(schedule_scheduler(variant), int(t))
    return (f"t={int(t)} ({SCHEDULE_TITLES[variant]}): noise/signal {b / a:.3f} "
            f"(signal {a:.3f}, noise std {b:.3f})")


def _operating_t(variant: str) -> int:
    """The schedule's timestep with DDPM t = 20's noise/signal (what a backbone extracts unless told)."""
    from ..backbones.noise import operating_timestep, schedule_scheduler

    return operating_timestep(schedule_scheduler(variant))


class ExtractWidget(Container):
    """The "Extract descriptors" dock widget (a magicgui Container)."""

    def __init__(self, napari_viewer):
        from ..io.cache import default_cache_dir

        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.source = ComboBox(label="Source image", choices=self._layer_choices, nullable=False)
        self.target = ComboBox(label="Target image", choices=self._target_choices)
        try:
            from ..backbones import available_backbones

            names = available_backbones()
        except Exception:  # pragma: no cover
            names = ["mini", "maisi"]
        self.backbone = ComboBox(label="Backbone", choices=names, value="mini" if "mini" in names else names[0])
        self.random_weights = CheckBox(text="random weights (control)", value=False)
        self.weights = FileEdit(label="Weights", mode="r", value="", nullable=True,
                                tooltip="mini: a .pt file (empty = packaged weights); MAISI: the folder holding "
                                "autoencoder_epoch273.pt and diff_unet_3d_ddpm.pt")
        # MAISI only: conditioning, UNet variant and latent (docs/backbones.md)
        self.region = ComboBox(label="Body region", choices=["head", "chest", "abdomen", "lower"], value="chest",
                               tooltip="MAISI DDPM conditioning (top and bottom region)")
        self.variant = ComboBox(label="MAISI variant", choices=["auto", "ddpm", "rflow"], value="auto",
                                tooltip="auto: recognised from the checkpoint; with random weights auto = ddpm")
        self.latent = ComboBox(label="Latent", choices=["mean", "sample"], value="mean",
                               tooltip="posterior mean (deterministic) or mean + sigma * noise")
        self.default_timestep = CheckBox(text="the backbone's default timestep", value=True,
                                         tooltip="mini: the one chosen for its weights on validation pairs; "
                                         "MAISI: the noise/signal of DDPM t = 20 on the release's schedule")
        self.timestep = Slider(label="Timestep", min=0, max=999, value=20, tracking=True,
                               tooltip="moving it extracts at exactly this t (the default box unticks)")
        self.noise_label = Label(value=_noise_text(20))
        self.levels_box = Container(label="Levels", layout="vertical", labels=False)
        self.samples = SpinBox(label="Noise samples", min=1, max=32, value=1)
        self.seed = SpinBox(label="Seed", min=0, max=2**31 - 1, value=0)
        self.spacing = ComboBox(label="Grid", choices=list(SPACING_CHOICES), value="backbone's own",
                                tooltip="the grid the backbone runs on: its own (mini: the 2.5 mm it was trained at; "
                                "MAISI, MIND-SSC: the scan's), the scan's own (native), or the scan resampled to "
                                "about this spacing. Positions stay on the scan's grid")
        self.device = ComboBox(label="Device", choices=["auto", "cpu", "cuda"], value="auto")
        self.cache_dir = FileEdit(label="Cache folder", mode="d", value=str(default_cache_dir()))
        self.open_explorer = CheckBox(text="open both in the explorer when done", value=True)
        self.panel = TaskPanel("Extracting descriptors", "Extract", cancel_note="no store was written",
                               watch_stall=True)
        p = self.panel
        self.run_button, self.cancel_button, self.progress, self.message, self.error = p.widgets
        self.noise_label.native.setWordWrap(True)
        self.extend([
            self.source, self.target, self.backbone, self.random_weights, self.weights,
            self.region, self.variant, self.latent, self.default_timestep, self.timestep,
            self.noise_label, self.levels_box, self.samples, self.seed, self.spacing, self.device, self.cache_dir,
            self.open_explorer, *self.panel.widgets,
        ])
        self._level_widgets: dict[str, tuple[CheckBox, FloatSpinBox]] = {}
        self._rebuild_levels()
        self.timestep.changed.connect(self._on_timestep)
        self.variant.changed.connect(self._update_noise)
        self.default_timestep.changed.connect(self._update_noise)
        self._show_maisi_options(self.backbone.value == "maisi")
        self.backbone.changed.connect(self._on_backbone)
        # mini_v1 and mini_v2 have different levels: the checkboxes follow the weights
        self.weights.changed.connect(self._on_weights)
        self.random_weights.changed.connect(self._on_weights)
        self.run_button.changed.connect(self.start)
        self.last_result: dict | None = None
        self.viewer.layers.events.inserted.connect(self._reset_choices)
        self.viewer.layers.events.removed.connect(self._reset_choices)
        self._reset_choices()

    # ------------------------------------------------------------------ choices

    def _image_layers(self):
        from napari.layers import Image

        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and not ly.rgb and ly.ndim == 3]

    def _layer_choices(self, *_):
        return [ly.name for ly in self._image_layers()]

    def _target_choices(self, *_):
        return [NONE] + [ly.name for ly in self._image_layers()]

    def _reset_choices(self, *_):
        self.source.reset_choices()
        self.target.reset_choices()
        names = self._layer_choices()
        if len(names) >= 2 and self.target.value in (None, NONE) and self.source.value != names[1]:
            self.target.value = names[1]

    def _rebuild_levels(self) -> None:
        self.levels_box.clear()
        self._level_widgets = {}
        every, default = backbone_levels(self.backbone.value, self._weights_path(), self.random_weights.value)
        for name in every:
            box = CheckBox(text=name, value=name in default)
            w = FloatSpinBox(value=1.0, min=0.0, max=10.0, step=0.25, tooltip=f"fusion weight of {name}")
            row = Container(layout="horizontal", labels=False, widgets=[box, w])
            row.margins = (0, 0, 0, 0)
            self.levels_box.append(row)
            self._level_widgets[name] = (box, w)

    def _on_weights(self, *_):
        """Other weights: their levels and, mini, their default timestep."""
        self._rebuild_levels()
        self._update_noise()

    def _on_backbone(self, name):
        self._rebuild_levels()
        self.weights.mode = "d" if name == "maisi" else "r"
        self._show_maisi_options(name == "maisi")

    def _show_maisi_options(self, show: bool) -> None:
        for w in (self.region, self.variant, self.latent):
            w.visible = show
        self._update_noise()

    def _schedule(self) -> str:
        """The noise schedule of the chosen backbone (MAISI ``auto`` counts as DDPM until loaded)."""
        return "rflow" if self.backbone.value == "maisi" and self.variant.value == "rflow" else "ddpm"

    def _default_t(self) -> int:
        """What the chosen backbone and weights extract at unless told: the timestep their files
        declare (mini), else the schedule's operating point."""
        declared = backbone_default_timestep(self.backbone.value, self._weights_path(), self.random_weights.value)
        return _operating_t(self._schedule()) if declared is None else declared

    def _on_timestep(self, *_):
        """The user moved the slider: that exact t from now on."""
        if self.default_timestep.value and int(self.timestep.value) != self._default_t():
            with self.default_timestep.changed.blocked():
                self.default_timestep.value = False
        self._update_noise()

    def _update_noise(self, *_):
        schedule = self._schedule()
        if self.default_timestep.value:  # the slider shows the default of the chosen variant
            with self.timestep.changed.blocked():
                self.timestep.value = self._default_t()
        text = _noise_text(self.timestep.value, schedule)
        if self.default_timestep.value and self.backbone.value == "maisi" and self.variant.value == "auto":
            text += f"; a rectified-flow release takes its own default (t={_operating_t('rflow')})"
        self.noise_label.value = text

    # ------------------------------------------------------------------ settings

    def chosen_levels(self) -> tuple[str, ...]:
        return tuple(n for n, (box, _) in self._level_widgets.items() if box.value)

    def level_weights(self) -> dict[str, float]:
        return {n: float(w.value) for n, (box, w) in self._level_widgets.items() if box.value}

    def settings(self):
        from ..backbones.base import ExtractionSettings

        levels = self.chosen_levels()
        if not levels:
            raise MedDiftError("choose at least one level to extract")
        timestep = None if self.default_timestep.value else int(self.timestep.value)  # None: the backbone's
        return ExtractionSettings(timestep=timestep, levels=levels, seed=int(self.seed.value),
                                  samples=int(self.samples.value), device=str(self.device.value),
                                  spacing=SPACING_CHOICES[self.spacing.value])

    def _weights_path(self):
        v = self.weights.value
        if v is None or str(v) in ("", "."):
            return None
        return Path(v)

    def make_backbone(self):
        """Build the chosen backbone (in the worker thread: loading weights takes time)."""
        from ..backbones import get_backbone

        name = self.backbone.value
        kw = {}
        if name == "maisi":
            kw.update(include_mid="mid" in self.chosen_levels(), latent=self.latent.value, variant=self.variant.value)
            # chest is the default; another region on a rectified-flow release is refused in one line
            if self.variant.value != "rflow" and self.region.value != "chest":
                kw["body_region"] = self.region.value
        if self.random_weights.value:
            return get_backbone(name, random_weights=True, **kw)
        return get_backbone(name, weights=self._weights_path(), **kw)

    # ------------------------------------------------------------------ run

    def _jobs(self):
        src_name = self.source.value
        if not src_name or src_name not in self.viewer.layers:
            raise MedDiftError("choose a source image layer (open a CT volume first)")
        names = [src_name]
        if self.target.value not in (None, NONE) and self.target.value != src_name:
            names.append(self.target.value)
        layers = [self.viewer.layers[n] for n in names]
        return [(ly, layer_to_volume(ly)) for ly in layers]

    @property
    def running(self) -> bool:
        return self.panel.running

    @property
    def max_stall_ms(self) -> float:
        """Longest GUI event-loop stall during the last extraction (ms)."""
        return self.panel.max_stall_ms

    def start(self, *_):
        """Extract (or reuse) the store of the source and, if chosen, the target; the LongTask,
        or None when the inputs are wrong (the red line says why) or a job is running."""
        if self.running:
            return None
        try:
            jobs = self._jobs()
            settings = self.settings()
            cache = Path(self.cache_dir.value).expanduser()
        except MedDiftError as exc:
            self.panel.refuse(str(exc))
            return None
        levels, weights = self.chosen_levels(), self.level_weights()

        def work(progress):
            from ..backbones.extraction import extract_to_store

            t0 = time.perf_counter()
            try:
                progress(0, 1, f"loading the {self.backbone.value} backbone...")
                backbone = self.make_backbone()
                out = []
                for i, (layer, volume) in enumerate(jobs):
                    path = cached_store_path(volume, backbone, settings, cache)
                    prefix = f"[{i + 1}/{len(jobs)}] {layer.name}: "

                    def step(done, total, message, _p=prefix):
                        progress(done, max(total, 1), _p + str(message))

                    step(0, 1, "starting")
                    store, reused = extract_to_store(volume, backbone, settings, path, progress=step)
                    out.append((layer, store, reused))
                return {"stores": out, "seconds": time.perf_counter() - t0}
            except (MedDiftError, CancelledError):
                raise
            except Exception as exc:  # CPU and CUDA out-of-memory, as the CLI recognises them
                if is_out_of_memory(exc):
                    raise MedDiftError(out_of_memory_message(exc, "extracting")) from exc
                raise

        return self.panel.start(work, lambda res: self._done(res, levels, weights))

    def cancel(self, *_):
        """Stop at the next progress step; the core leaves no store behind."""
        self.panel.cancel()

    def _done(self, res, levels, weights):
        lines = []
        for layer, store, reused in res["stores"]:
            if isinstance(layer.metadata, dict):
                layer.metadata[STORE_KEY] = str(store.path)
                layer.metadata["meddift_levels"] = list(levels)
                layer.metadata["meddift_weights"] = dict(weights)
            lines.append(f"{layer.name}: {'reused existing store' if reused else 'extracted'} -> {store.path}")
        if res["stores"]:
            from ..explorer.timesteps import store_noise, timestep_text

            store = res["stores"][0][1]
            schedule, ns = store_noise(store)
            lines.append(f"at {timestep_text(store.attrs.get('timestep'), schedule, ns)}")
        self.last_result = res
        self.panel.done("\n".join(lines) + f"\n({res['seconds']:.1f} s; GUI stall at most {self.max_stall_ms:.0f} ms)")
        if self.open_explorer.value and len(res["stores"]) == 2:
            self._open_in_explorer(res["stores"], levels, weights)

    def _open_in_explorer(self, stores, levels, weights):
        from .explorer import ExplorerWidget, explorer_in

        explorer = explorer_in(self.viewer)
        try:
            if explorer is None:
                explorer = ExplorerWidget(self.viewer)
                self.viewer.window.add_dock_widget(explorer, name="Correspondence explorer", area="right")
            (sl, ss, _), (tl, ts, _) = stores
            explorer.connect_pair(sl, tl, ss, ts)
            explorer.set_levels(levels, weights)
        except MedDiftError as exc:
            self.error.value = str(exc)
