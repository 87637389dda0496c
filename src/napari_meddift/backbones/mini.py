"""``mini``: the project's own small 3D diffusion UNet, trained on CPU on the shared real CTs.

It works in image space (no autoencoder): the HU-windowed image, scaled to [-1, 1], is noised
with the same DDPM schedule as MAISI (scaled_linear_beta 0.0015..0.0195, 1000 steps) and passed
once through a MONAI ``DiffusionModelUNet``; the outputs of its decoder blocks are the
descriptor levels, one per block, coarse to fine (``up0`` ...). MONAI's up blocks end with their
upsampler (all but the last). The default weights, ``mini_v2`` (channels 16 .. 128), have MAISI's
four levels ``up0..up3``: 128 channels at 1/4 of the network grid, 64 at 1/2, 32 and 16 at full
resolution; the earlier ``mini_v1`` (``--weights mini_v1``, channels 16, 32, 64) has three. The
levels of an instance, and the timestep it extracts at unless told, are those of the weights it
loaded (their JSON).

The network was trained around one isotropic voxel spacing (``spacing_mm`` in the weights' JSON,
2.5 mm for both shipped weights; mini_v2 saw 2.0-3.0 mm): that is its ``grid_spacing``, and
extraction resamples every scan to it over the scan's own field of view (``backbones/extraction.py``),
so a 0.6 mm scan is seen at the scale the network learned, at a fraction of the cost.
``--spacing native`` runs on the scan's own grid instead (see docs/model-card.md).

Weights are stored as a float16 state dict (``mini_v2.pt``) with a JSON beside it
(``mini_v2.json``) that holds the architecture, the training spacing and the file's sha256,
which is checked at load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MedDiftError
from ..io.hashing import file_sha256
from ..io.volume import Volume
from .noise import NUM_TRAIN_TIMESTEPS, PAPER_TIMESTEP, make_scheduler
from .preprocessing import PreprocessSettings, window_intensity
from .preprocessing import network_shape as _network_shape
from .base import ExtractionSettings, ProgressCallback, resolve_device, resolve_dtype
from .capture import capture_levels, check_request, seeded
from .slabs import slabwise_upsampling

#: Architecture of mini_v1, for weights whose JSON has no ``arch`` (every shipped JSON has one).
MINI_ARCH: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 1,
    "channels": [16, 32, 64],
    "attention_levels": [False, False, False],
    "num_res_blocks": 1,
    "norm_num_groups": 8,
    # the middle block always has self-attention in MONAI; 2 heads and PyTorch's fused SDPA kernel
    # make it ~10x cheaper on CPU than the default 8 heads with explicit attention matrices
    "num_head_channels": 32,
    "use_flash_attention": True,
}

#: Architecture of mini_v2, the default weights: four levels, so the coarsest descriptor sees 1/4 of
#: the grid.
MINI_V2_ARCH: dict[str, Any] = {**MINI_ARCH, "channels": [16, 32, 64, 128], "attention_levels": [False] * 4}

#: The spacing both shipped weights were trained around; random-weight controls run on the same grid.
TRAINING_SPACING_MM = 2.5

#: Network input sizes are multiples of this (MAISI-like "nearest multiple, at least one").
SIZE_MULTIPLE = 16

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
#: The default weights: mini_v2 (four levels, chosen over mini_v1 on validation pairs,
#: docs/model-card.md). mini_v1 ships beside it and loads by name, ``--weights mini_v1``.
DEFAULT_WEIGHTS = DATA_DIR / "mini_v2.pt"

#: Default levels of weights whose JSON names none (mini_v1: up2 is dominated by the noise it
#: predicts, so up0 + up1; docs/model-card.md).
V1_DEFAULT_LEVELS = ("up0", "up1")


def resolve_weights(weights: str | Path | None) -> Path:
    """A weight file: ``None`` is the shipped default, a bare name of a shipped file (``mini_v1``)
    is that file, anything else a path."""
    if weights is None:
        return DEFAULT_WEIGHTS
    shipped = DATA_DIR / f"{weights}.pt"
    if not Path(weights).exists() and "/" not in str(weights) and shipped.is_file():
        return shipped
    return Path(weights)


def metadata_path(weights: str | Path) -> Path:
    """The JSON that describes a weight file: same name, ``.json`` suffix."""
    return Path(weights).with_suffix(".json")


def levels_of(meta: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(level names, default levels) of weights described by ``meta``: one ``up<i>`` per decoder
    block (as many as the architecture has channels), defaults from ``default_levels``."""
    arch = meta.get("arch") if isinstance(meta.get("arch"), dict) else MINI_ARCH
    names = tuple(f"up{i}" for i in range(len(arch.get("channels", MINI_ARCH["channels"]))))
    default = tuple(meta.get("default_levels") or V1_DEFAULT_LEVELS)
    return names, tuple(n for n in default if n in names) or names[:1]


def timestep_of(meta: dict[str, Any]) -> int:
    """The default timestep of weights described by ``meta``: their ``default_timestep`` if it is
    one (an integer in 0..999), else the paper's operating point, which is a timestep of mini's own
    DDPM schedule (``PAPER_TIMESTEP``, t = 20): nothing to solve."""
    t = meta.get("default_timestep")
    if isinstance(t, int) and not isinstance(t, bool) and 0 <= t < NUM_TRAIN_TIMESTEPS:
        return t
    return PAPER_TIMESTEP


def _declared_metadata(weights: str | Path | None) -> dict[str, Any]:
    try:
        meta = json.loads(metadata_path(resolve_weights(weights)).read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}  # loading the weights reports what is wrong with them


def build_unet(arch: dict[str, Any] | None = None) -> torch.nn.Module:
    """The MONAI DiffusionModelUNet of the given (or the default) architecture."""
    from monai.networks.nets import DiffusionModelUNet

    a = dict(MINI_ARCH if arch is None else arch)
    a["channels"] = tuple(a["channels"])
    a["attention_levels"] = tuple(bool(x) for x in a["attention_levels"])
    try:
        return DiffusionModelUNet(**a)
    except ImportError as exc:  # monai's OptionalImportError (einops) subclasses ImportError
        raise MedDiftError(f"the mini backbone needs an optional MONAI dependency: {exc}; pip install einops") from exc


def network_shape(shape: tuple[int, ...], multiple: int = SIZE_MULTIPLE) -> tuple[int, ...]:
    """Each axis to the nearest multiple of ``multiple`` (ties up, as in training), at least ``multiple``."""
    return _network_shape(shape, multiple=multiple, min_size=multiple, ties="up")


def network_input(
    hu: np.ndarray | torch.Tensor, scaling: str = "minus1_1", prep: PreprocessSettings | None = None
) -> torch.Tensor:
    """HU windowed to [-1000, 1000] as MAISI does (or ``prep``'s window), then scaled as the
    network was trained (training and extraction both call this, so they cannot drift apart)."""
    x = window_intensity(np.asarray(hu, dtype=np.float32) if isinstance(hu, np.ndarray) else hu, prep)
    if scaling == "minus1_1":
        return x * 2.0 - 1.0
    if scaling == "0_1":
        return x
    raise MedDiftError(f"unknown input_scaling {scaling!r} in the mini weights' JSON")


class MiniBackbone:
    """Small image-space diffusion UNet; one level per decoder block, coarse to fine.

    mini_v2 (the default): up0 (128 ch, 1/4), up1 (64 ch, 1/2), up2 (32 ch, full), up3 (16 ch,
    full); mini_v1 (``weights="mini_v1"``): up0 (64 ch, 1/2), up1 (32 ch, full), up2 (16 ch, full).
    The class attributes describe the shipped default weights; an instance, the weights it loaded.

    Validation, noising, capture and sample averaging are the shared ones of
    :mod:`napari_meddift.backbones.capture`; this class is the network, its levels and its input.
    """

    name = "mini"
    level_names, default_levels = levels_of(_declared_metadata(None))

    def __init__(self, weights: str | Path | None = None, random_weights: bool = False, seed: int = 0):
        self.seed = int(seed)
        self.random_weights = bool(random_weights)
        self.metadata: dict[str, Any] = {}
        if random_weights:
            with seeded(self.seed):
                arch = self.default_arch()
                self.unet = build_unet(arch)
            self.metadata = {"arch": arch, "spacing_mm": None, "input_scaling": "minus1_1",
                             "default_levels": list(type(self).default_levels),
                             "default_timestep": self.declared_timestep(None)}
            self._hash = f"random-{self.seed}"
            self.weights_path: Path | None = None
        else:
            path = resolve_weights(weights)
            self.unet, self.metadata, self._hash = load_mini_weights(path)
            self.weights_path = path
        self.level_names, self.default_levels = levels_of(self.metadata)
        self.unet.eval()
        for p in self.unet.parameters():
            p.requires_grad_(False)
        self.input_scaling = self.metadata.get("input_scaling", "minus1_1")
        self.training_spacing = self.metadata.get("spacing_mm")
        #: the grid extraction resamples to (a random-weight control: that of the shipped weights)
        self.grid_spacing = float(self.training_spacing or TRAINING_SPACING_MM)
        self._scheduler = make_scheduler()
        #: what extract does before the UNet (recorded in stores through extraction.py); ties
        #: round up as in training
        self.preprocessing = PreprocessSettings(multiple=SIZE_MULTIPLE, min_size=SIZE_MULTIPLE, ties="up")

    @staticmethod
    def declared_grid_spacing(weights: str | Path | None = None, random_weights: bool = False) -> float:
        """``grid_spacing`` without loading the network: the weights' JSON ``spacing_mm`` (cheap)."""
        if not random_weights:
            spacing = _declared_metadata(weights).get("spacing_mm")
            if isinstance(spacing, (int, float)) and spacing > 0:
                return float(spacing)
        return TRAINING_SPACING_MM

    @staticmethod
    def default_arch() -> dict[str, Any]:
        """The default weights' architecture: random-weight controls are built like them."""
        arch = _declared_metadata(None).get("arch")
        return dict(arch) if isinstance(arch, dict) else dict(MINI_ARCH)

    @classmethod
    def declared_levels(cls, weights: str | Path | None = None,
                        random_weights: bool = False) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(level names, default levels) without loading the network: from the weights' JSON."""
        if random_weights:
            return cls.level_names, cls.default_levels
        return levels_of(_declared_metadata(weights))

    @property
    def weights_hash(self) -> str:
        return self._hash

    @property
    def scheduler(self):
        """Its noise scheduler (the DDPM schedule of ``backbones/noise.py``)."""
        return self._scheduler

    @property
    def default_timestep(self) -> int:
        """The timestep chosen for these weights on validation pairs (``default_timestep`` in their
        JSON, ``benchmarks/select_mini_levels.py``); weights that record none: the paper's operating
        point, t = 20 (``noise.PAPER_TIMESTEP``). Random weights: that of the default weights."""
        return timestep_of(self.metadata)

    @staticmethod
    def declared_timestep(weights: str | Path | None = None, random_weights: bool = False) -> int:
        """``default_timestep`` without loading the network: from the weights' JSON (cheap)."""
        return timestep_of(_declared_metadata(None if random_weights else weights))

    @property
    def config(self) -> dict[str, Any]:
        return {}  # everything that changes the features is in the weights and the settings

    @property
    def description(self) -> str:
        if self.weights_path is None:
            return f"mini at seeded random weights (seed {self.seed})"
        return f"mini weights {self.weights_path.name}"

    def _prepare(self, volume: Volume, prep: PreprocessSettings) -> torch.Tensor:
        from .preprocessing import resize

        x = network_input(volume.array, self.input_scaling, prep)
        shape = _network_shape(tuple(x.shape), prep.multiple, prep.min_size, prep.ties)
        return resize(x, shape)[None, None].contiguous()

    def extract(
        self,
        volume: Volume,
        settings: ExtractionSettings,
        progress: ProgressCallback | None = None,
        preprocessing: PreprocessSettings | None = None,
    ) -> dict[str, torch.Tensor]:
        settings = settings.resolved(self)
        levels = check_request(settings, self.level_names, self.default_levels, self._scheduler, "mini")
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        unet = self.unet.to(device)
        x0 = self._prepare(volume, preprocessing or self.preprocessing).to(device)
        if progress is not None:
            progress(0, settings.samples, f"mini: noising at t={settings.timestep}")
        # the full-resolution upsamplers run in z-slabs (the same numbers, without a level-sized temporary)
        with slabwise_upsampling([b.upsampler for b in unet.up_blocks if b.upsampler is not None]):
            out = capture_levels(
                lambda xt, t: unet(xt, t),
                {name: unet.up_blocks[i] for i, name in enumerate(self.level_names)},
                levels,
                x0,
                self._scheduler,
                settings,
                dtype=dtype,
                progress=progress,
                label="mini",
            )
        return {name: f.cpu().contiguous() for name, f in out.items()}


def load_mini_weights(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """UNet + metadata + sha256 from a weight file and its JSON; clear errors for every failure."""
    path = Path(path)
    meta_path = metadata_path(path)
    if not path.is_file():
        raise MedDiftError(
            f"mini backbone weights not found: {path} (the package ships data/mini_v1.pt and mini_v2.pt, "
            "also by name: --weights mini_v2; reinstall napari-meddift, pass --weights, or use random "
            "weights for testing)"
        )
    if not meta_path.is_file():
        raise MedDiftError(f"mini weights {path.name} have no metadata file {meta_path} beside them")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise MedDiftError(f"cannot read mini weights metadata {meta_path}: {exc}") from exc
    if not isinstance(meta, dict):
        raise MedDiftError(f"mini weights metadata {meta_path} is not a JSON object; restore it from the package")
    arch = meta.get("arch", MINI_ARCH)
    unknown = sorted(set(arch) - set(MINI_ARCH)) if isinstance(arch, dict) else ["(not an object)"]
    if unknown:
        raise MedDiftError(f"{meta_path}: unknown key(s) {', '.join(map(str, unknown))} in 'arch'; it holds only "
                           f"{', '.join(MINI_ARCH)}: restore the file written with the weights")
    t = meta.get("default_timestep")
    if t is not None and timestep_of(meta) != t:
        raise MedDiftError(f"{meta_path}: 'default_timestep' is {t!r}, not a timestep in "
                           f"0..{NUM_TRAIN_TIMESTEPS - 1}; restore the file written with the weights or rerun "
                           "benchmarks/select_mini_levels.py --write")
    digest = file_sha256(path)
    expected = meta.get("sha256")
    if expected is None:
        raise MedDiftError(f"{meta_path} has no 'sha256' entry; cannot verify {path.name}")
    if digest != expected:
        raise MedDiftError(
            f"mini weights {path} are corrupt or were replaced: sha256 {digest[:16]}... "
            f"does not match {expected[:16]}... recorded in {meta_path.name}"
        )
    try:
        unet = build_unet(arch)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise MedDiftError(f"{meta_path}: its 'arch' does not describe a network ({exc}); restore the file written "
                           "with the weights") from None
    from .checkpoint import load_checkpoint  # tensors only; one clear line for a refused pickle

    state = load_checkpoint(path, "mini weights")
    try:
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        unet.load_state_dict({k: v.float() for k, v in state.items()})
    except Exception as exc:  # any unreadable checkpoint is a user-fixable problem
        raise MedDiftError(f"cannot load mini weights {path}: {exc}") from exc
    return unet, meta, digest
