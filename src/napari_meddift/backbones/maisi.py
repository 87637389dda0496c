"""MAISI (MONAI's 3D latent diffusion model for CT) as a descriptor source.

The autoencoder and the diffusion UNet are MONAI's own classes built with the configuration of
the release found (``maisi_release.py``, ``docs/backbones.md``): the DDPM UNet (top/bottom body
region and spacing conditioning) or the rectified-flow UNet (modality class label CT = 1 and
spacing; ``resblock_updown`` and ``include_fc``). Feature levels are the outputs of
``unet.up_blocks[0..3]`` (and optionally ``unet.middle_block``), captured with forward hooks by
the shared :func:`~napari_meddift.backbones.capture.capture_levels`.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MedDiftError
from ..io.hashing import file_sha256
from ..io.volume import Volume
from .noise import make_rflow_scheduler, make_scheduler, operating_timestep
from .preprocessing import Prepared, PreprocessSettings, from_canonical, prepare
from .base import ExtractionSettings, ProgressCallback, resolve_device, resolve_dtype
from .capture import capture_levels, check_request, noise_generator, seeded
from .maisi_release import (
    HOW_TO_GET,
    RELEASES,
    VARIANTS,
    autoencoder_state,
    drop_unused_out_proj,
    find_release,
    load_checkpoint,
    load_state,
    release_for,
    unet_checkpoint,
)

#: the MedDIFT reference's file names (early-2025 tutorials); every release's names: maisi_release.RELEASES
AUTOENCODER_FILE = RELEASES[0].autoencoder
UNET_FILE = RELEASES[0].unet
#: modality class label of CT in the rectified-flow releases' modality mapping
MODALITY_CT = 1
LATENT_MODES = ("mean", "sample")

#: body regions of MAISI's conditioning, in one-hot order
BODY_REGIONS = ("head", "chest", "abdomen", "lower")

AE_CHANNELS = (64, 128, 256)
UNET_CHANNELS = (64, 128, 256, 512)
NORM_GROUPS = 32
HEAD_CHANNELS = (0, 0, 32, 32)
#: total spatial down-sampling from image to the UNet's deepest level (4 autoencoder x 8 UNet)
DIVISOR = 32

#: UNet arguments that differ between the variants (the releases' network configs)
VARIANT_UNET: dict[str, dict[str, Any]] = {
    "ddpm": dict(
        include_top_region_index_input=True,
        include_bottom_region_index_input=True,
        include_fc=False,
        resblock_updown=False,
    ),
    "rflow": dict(
        include_top_region_index_input=False,
        include_bottom_region_index_input=False,
        num_class_embeds=128,
        include_fc=True,
        resblock_updown=True,
    ),
}


# ---------------------------------------------------------------- architecture


def _widths(base: tuple[int, ...], width: float) -> list[int]:
    if width == 1.0:
        return list(base)
    if not width > 0:
        raise MedDiftError(f"width must be positive, got {width}")
    return [max(8, int(round(c * width / 8)) * 8) for c in base]


def _groups(channels: list[int]) -> int:
    g = 0
    for c in channels:
        g = math.gcd(g, c)
    return min(NORM_GROUPS, g)


def autoencoder_config(width: float = 1.0) -> dict[str, Any]:
    """AutoencoderKlMaisi kwargs (the bundle's config at width 1)."""
    ch = _widths(AE_CHANNELS, width)
    return dict(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        latent_channels=4,
        num_channels=ch,
        num_res_blocks=[2, 2, 2],
        norm_num_groups=_groups(ch),
        norm_eps=1e-6,
        attention_levels=[False, False, False],
        with_encoder_nonlocal_attn=False,
        with_decoder_nonlocal_attn=False,
        use_checkpointing=False,
        use_convtranspose=False,
        norm_float16=True,
        num_splits=4,
        dim_split=1,
        save_mem=False,  # only empties the CUDA cache after every layer; numbers are unchanged
    )


def unet_config(width: float = 1.0, variant: str = "ddpm") -> dict[str, Any]:
    """DiffusionModelUNetMaisi kwargs of a variant (the releases' config at width 1; flash
    attention on CUDA only)."""
    if variant not in VARIANTS:
        raise MedDiftError(f"unknown MAISI variant {variant!r}; use ddpm or rflow")
    ch = _widths(UNET_CHANNELS, width)
    heads = [0 if h == 0 else math.gcd(h, c) for h, c in zip(HEAD_CHANNELS, ch)]
    return dict(
        spatial_dims=3,
        in_channels=4,
        out_channels=4,
        num_channels=ch,
        attention_levels=[False, False, True, True],
        num_head_channels=heads,
        num_res_blocks=2,
        norm_num_groups=_groups(ch),
        norm_eps=1e-6,
        use_flash_attention=torch.cuda.is_available(),
        include_spacing_input=True,
        **VARIANT_UNET[variant],
    )


def build_autoencoder(width: float = 1.0) -> torch.nn.Module:
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    return AutoencoderKlMaisi(**autoencoder_config(width))


def build_unet(width: float = 1.0, variant: str = "ddpm") -> torch.nn.Module:
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

    return DiffusionModelUNetMaisi(**unet_config(width, variant))


def make_variant_scheduler(variant: str):
    """The noise scheduler a variant was trained with (MONAI DDPMScheduler or RFlowScheduler)."""
    return make_rflow_scheduler() if variant == "rflow" else make_scheduler()


# ---------------------------------------------------------------- conditioning and latents


def _region_onehot(region: str) -> list[float]:
    if region not in BODY_REGIONS:
        raise MedDiftError(f"unknown body region {region!r}; use one of {', '.join(BODY_REGIONS)}")
    return [1.0 if r == region else 0.0 for r in BODY_REGIONS]


#: encoded latents of recent extractions: (autoencoder identity, input digest, mode, ...) -> latent
_LATENTS: dict[tuple, torch.Tensor] = {}
_LATENTS_KEEP = 2


def _digest(t: torch.Tensor) -> str:
    a = t.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(memoryview(a).cast("B")).hexdigest() + str(tuple(a.shape))


# ---------------------------------------------------------------- backbone


class MaisiBackbone:
    """MAISI autoencoder + diffusion UNet; levels up0..up3 (+ mid), native resolution.

    ``weights``: folder of one MAISI release (the folder itself, its ``models/`` or
    ``maisi_ct_generative/models/``); the release and its variant are recognised from the
    checkpoints (``maisi_release.py``).
    ``random_weights``: untrained control, seeded by ``seed`` (the global RNG is left alone).
    ``width``: scales every channel count (tests; checkpoints fit width 1 only).
    ``seed``: seed of the random weights.
    ``body_region``: DDPM conditioning, one of head/chest/abdomen/lower or a (top, bottom) pair;
    None means chest. Rectified-flow releases take none (they are conditioned on the
    modality, CT).
    ``include_mid``: also offer the middle block as level ``mid``.
    ``preprocessing``: HU window and network-shape rule (default: the tutorials').
    ``variant``: ``auto`` (from the checkpoint), ``ddpm`` or ``rflow``; with several UNet files in
    the folder it picks one; with random weights it picks the architecture (auto: ddpm).
    ``latent``: ``mean`` (the posterior mean, deterministic; default) or ``sample`` (mean + sigma
    * eps, eps seeded by the extraction seed, as the tutorials' training data were made).
    """

    name = "maisi"
    #: MAISI runs on the scan's own grid: it resizes to its network shape and conditions on spacing
    grid_spacing = None
    level_names: tuple[str, ...] = ("up0", "up1", "up2", "up3")  # + "mid" with include_mid
    default_levels: tuple[str, ...] = ("up0", "up1", "up2", "up3")

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        random_weights: bool = False,
        width: float = 1.0,
        seed: int = 0,
        body_region: str | tuple[str, str] | None = None,
        include_mid: bool = False,
        preprocessing: PreprocessSettings | None = None,
        variant: str = "auto",
        latent: str = "mean",
    ) -> None:
        if weights is not None and random_weights:
            raise MedDiftError("give either --weights or --random-weights, not both")
        if weights is None and not random_weights:
            raise MedDiftError("the MAISI backbone needs its checkpoints (--weights DIR); " + HOW_TO_GET)
        if latent not in LATENT_MODES:
            raise MedDiftError(f"unknown latent choice {latent!r}; use mean or sample")
        if variant not in ("auto",) + VARIANTS:
            raise MedDiftError(f"unknown MAISI variant {variant!r}; use auto, ddpm or rflow")
        self.width = float(width)
        self.seed = int(seed)
        self.include_mid = bool(include_mid)
        self.latent = latent
        self.preprocessing = preprocessing or PreprocessSettings()
        self.level_names = self.default_levels + (("mid",) if include_mid else ())
        self._files: list[Path] = []
        self.release = None
        self.dropped_keys: tuple[str, ...] = ()

        if random_weights:
            self.variant = "ddpm" if variant == "auto" else variant
            with seeded(self.seed):
                self.autoencoder = build_autoencoder(self.width)
                self.unet = build_unet(self.width, self.variant)
            self.scale_factor = 1.0
        else:
            self._load(weights, variant)  # type: ignore[arg-type]
        self._set_region(body_region)
        self.scheduler = make_variant_scheduler(self.variant)
        self._default_t: int | None = None
        self.autoencoder.eval().requires_grad_(False)
        self.unet.eval().requires_grad_(False)
        self._hash: str | None = None

    def _load(self, weights: str | os.PathLike, variant: str) -> None:
        found = find_release(weights, variant)
        ae_path, unet_path = found.autoencoder, found.unet
        self._files = [ae_path, unet_path]
        ckpt = unet_checkpoint(load_checkpoint(unet_path), unet_path)
        if variant != "auto" and ckpt.variant != variant:
            raise MedDiftError(
                f"{unet_path} holds a {ckpt.variant} UNet (by its keys), not the {variant} one asked for"
            )
        self.variant = ckpt.variant
        self.release = release_for(unet_path.name, ckpt.variant)
        self.autoencoder = build_autoencoder(self.width)
        load_state(self.autoencoder, autoencoder_state(load_checkpoint(ae_path), ae_path), ae_path, "autoencoder")
        self.unet = build_unet(self.width, self.variant)
        state = ckpt.state
        if not unet_config(self.width, self.variant)["include_fc"]:
            state, self.dropped_keys = drop_unused_out_proj(state, self.unet)
        load_state(self.unet, state, unet_path, f"{self.variant} diffusion UNet")
        self.scale_factor = ckpt.scale_factor

    def _set_region(self, body_region: str | tuple[str, str] | None) -> None:
        if self.variant == "rflow":
            if body_region is not None:
                raise MedDiftError(
                    "rectified-flow MAISI releases are not conditioned on a body region (only on modality and "
                    "spacing); leave --region out or use a DDPM release"
                )
            self.body_region = None
            return
        region = body_region or "chest"
        top, bottom = (region, region) if isinstance(region, str) else tuple(region)
        self.top_region, self.bottom_region = _region_onehot(top), _region_onehot(bottom)
        self.body_region = (top, bottom)

    # ------------------------------------------------------------ identity

    @property
    def weights_hash(self) -> str:
        """sha256 over the two files' contents (names play no part); random-<seed>-w<width> otherwise."""
        if not self._files:
            return f"random-{self.seed}-w{self.width:g}"
        if self._hash is None:
            h = hashlib.sha256()
            for f in self._files:
                h.update(file_sha256(f).encode())
            self._hash = h.hexdigest()
        return self._hash

    @property
    def config(self) -> dict[str, Any]:
        """What besides weights and settings changes the features (in the cache key and the store)."""
        cond: dict[str, Any] = (
            {"modality": "ct", "class_label": MODALITY_CT}
            if self.variant == "rflow"
            else {"body_region": list(self.body_region)}
        )
        return {"variant": self.variant, **cond, "latent": self.latent}

    @property
    def default_timestep(self) -> int:
        """The timestep with DDPM t = 20's noise/signal on this variant's scheduler: 20 for DDPM,
        155 for rectified flow (solved from the scheduler, ``noise.operating_timestep``). The
        extraction passes integer timesteps to both schedulers (``capture.py``), so rectified
        flow's continuous solution (155.2) is taken to the integer of nearest noise/signal."""
        if self._default_t is None:
            self._default_t = operating_timestep(self.scheduler)
        return self._default_t

    @property
    def description(self) -> str:
        if not self._files:
            return f"MAISI {self.variant} at seeded random weights (seed {self.seed}, width {self.width:g})"
        what = self.release.title if self.release is not None else f"an unnamed {self.variant} release"
        note = f"; {len(self.dropped_keys)} unused MONAI-1.4 out_proj keys dropped" if self.dropped_keys else ""
        return f"MAISI {self.variant} from {what} ({self._files[0].name}, {self._files[1].name}){note}"

    def level_channels(self) -> dict[str, int]:
        ch = list(reversed(unet_config(self.width, self.variant)["num_channels"]))
        out = {f"up{i}": c for i, c in enumerate(ch)}
        if self.include_mid:
            out["mid"] = ch[0]
        return out

    # ------------------------------------------------------------ extraction

    def _modules(self) -> dict[str, torch.nn.Module]:
        mods = {f"up{i}": self.unet.up_blocks[i] for i in range(4)}
        mods["mid"] = self.unet.middle_block
        return mods

    def _configure(self, device: torch.device, dtype: torch.dtype, net_shape: tuple[int, ...]) -> None:
        """Runtime-only knobs that do not change the numbers the reference computes:
        float16 group-norm output (CUDA half precision only) and the autoencoder's memory splits
        (the split convolutions need at least 64 voxels along the split axis)."""
        from monai.apps.generation.maisi.networks.autoencoderkl_maisi import MaisiConvolution, MaisiGroupNorm3D

        self.autoencoder.to(device)
        self.unet.to(device)
        half = device.type == "cuda" and dtype == torch.float16
        splits = 4 if net_shape[1] >= 64 else 1
        for m in self.autoencoder.modules():
            if isinstance(m, MaisiGroupNorm3D):
                m.norm_float16 = half
            elif isinstance(m, MaisiConvolution):
                m.num_splits = splits

    def _ae_identity(self) -> str:
        return file_sha256(self._files[0]) if self._files else f"random-{self.seed}-w{self.width:g}"

    def encode(self, prep: Prepared, device: torch.device, dtype: torch.dtype, seed: int) -> torch.Tensor:
        """Latent (1, 4, a/4, b/4, c/4) float32 x scale_factor on ``device``: the posterior mean,
        or with ``latent='sample'`` mean + sigma * eps (eps from a generator seeded by ``seed``).
        The last two latents are kept, so re-extracting a scan at another timestep or with the
        other variant (same autoencoder bytes) does not encode again."""
        key = (self._ae_identity(), _digest(prep.tensor), self.latent, seed if self.latent == "sample" else None,
               device.type, str(dtype))
        if key not in _LATENTS:
            autocast = (
                torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
            )
            with torch.inference_mode(), autocast:
                z_mu, z_sigma = self.autoencoder.encode(prep.tensor.to(device))
            z = z_mu.float()
            if self.latent == "sample":
                gen = noise_generator(int(seed) + 2**31)  # a stream apart from the diffusion noise
                z = z + z_sigma.float() * torch.randn(z.shape, generator=gen).to(device)
            _LATENTS[key] = z.to("cpu")
            while len(_LATENTS) > _LATENTS_KEEP:
                _LATENTS.pop(next(iter(_LATENTS)))
        return _LATENTS[key].to(device) * self.scale_factor

    def _conditioning(self, prep: Prepared, device: torch.device) -> dict[str, torch.Tensor]:
        spacing = torch.tensor([list(prep.spacing)], dtype=torch.float32, device=device) * 100.0
        if self.variant == "rflow":
            return {"spacing_tensor": spacing, "class_labels": torch.tensor([MODALITY_CT], device=device)}
        return {
            "top_region_index_tensor": torch.tensor([self.top_region], device=device) * 100.0,
            "bottom_region_index_tensor": torch.tensor([self.bottom_region], device=device) * 100.0,
            "spacing_tensor": spacing,
        }

    def extract(
        self,
        volume: Volume,
        settings: ExtractionSettings,
        progress: ProgressCallback | None = None,
        preprocessing: PreprocessSettings | None = None,
    ) -> dict[str, torch.Tensor]:
        """{level: (C, z', y', x') float32 CPU} of ``volume`` (see docs/backbones.md for the steps)."""
        settings = settings.resolved(self)
        levels = check_request(settings, self.level_names, self.default_levels, self.scheduler, "MAISI")
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        total = 1 + settings.samples
        if progress is not None:
            progress(0, total, "encoding")
        prep = prepare(volume, preprocessing or self.preprocessing)
        net_shape = tuple(prep.tensor.shape[-3:])
        if any(n % DIVISOR for n in net_shape):
            raise MedDiftError(
                f"MAISI needs every network axis divisible by {DIVISOR}; got {net_shape} "
                f"(set the preprocessing multiple to a multiple of {DIVISOR})"
            )
        self._configure(device, dtype, net_shape)
        latent = self.encode(prep, device, dtype, settings.seed)
        if progress is not None:
            progress(1, total, "encoded")
        cond = self._conditioning(prep, device)
        feats = capture_levels(
            lambda xt, t: self.unet(xt, t, **cond),
            self._modules(),
            levels,
            latent,
            self.scheduler,
            settings,
            dtype=dtype,
            progress=progress,
            done=1,
            total=total,
            label="MAISI",
        )
        return {name: from_canonical(f.to("cpu", torch.float32), prep.axes) for name, f in feats.items()}


def count_parameters(module: torch.nn.Module) -> int:
    return int(sum(np.prod(p.shape) for p in module.parameters()))
