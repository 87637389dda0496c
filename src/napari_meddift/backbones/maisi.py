"""MAISI (MONAI's 3D latent diffusion model for CT) as a descriptor source.

The autoencoder and the diffusion UNet are MONAI's own classes built with the lung DDPM
configuration of the reference (``docs/backbones.md``). Feature levels are the outputs of
``unet.up_blocks[0..3]`` (and optionally ``unet.middle_block``), captured with forward hooks.
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

from ..io.hashing import file_sha256
from ..errors import MedDiftError
from .noise import add_noise, noise_level
from .preprocessing import PreprocessSettings, from_canonical, prepare
from ..io.volume import Volume
from .base import ExtractionSettings, ProgressCallback, resolve_device, resolve_dtype

AUTOENCODER_FILE = "autoencoder_epoch273.pt"
UNET_FILE = "diff_unet_3d_ddpm.pt"
BUNDLE = "maisi_ct_generative"

#: body regions of MAISI's conditioning, in one-hot order
BODY_REGIONS = ("head", "chest", "abdomen", "lower")

AE_CHANNELS = (64, 128, 256)
UNET_CHANNELS = (64, 128, 256, 512)
NORM_GROUPS = 32
HEAD_CHANNELS = (0, 0, 32, 32)
#: total spatial down-sampling from image to the UNet's deepest level (4 autoencoder x 8 UNet)
DIVISOR = 32

HOW_TO_GET = (
    f"download the MONAI bundle '{BUNDLE}' once on a machine with internet "
    f"(python -m monai.bundle download {BUNDLE} --bundle_dir DIR) and pass "
    f"--weights DIR/{BUNDLE}/models, or use --random-weights for an untrained control"
)


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


def unet_config(width: float = 1.0) -> dict[str, Any]:
    """DiffusionModelUNetMaisi kwargs (the bundle's config at width 1; flash attention on CUDA only)."""
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
        include_top_region_index_input=True,
        include_bottom_region_index_input=True,
        include_spacing_input=True,
    )


def build_autoencoder(width: float = 1.0) -> torch.nn.Module:
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    return AutoencoderKlMaisi(**autoencoder_config(width))


def build_unet(width: float = 1.0) -> torch.nn.Module:
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

    return DiffusionModelUNetMaisi(**unet_config(width))


# ---------------------------------------------------------------- checkpoints

def find_weights(weights: str | os.PathLike) -> Path:
    """The folder holding both checkpoints: ``weights`` itself, ``weights/models`` or
    ``weights/maisi_ct_generative/models``; MedDiftError naming what is missing otherwise."""
    root = Path(weights).expanduser()
    if not root.exists():
        raise MedDiftError(
            f"MAISI weights folder {root} does not exist (it must hold {AUTOENCODER_FILE} and {UNET_FILE}); "
            + HOW_TO_GET
        )
    if root.is_file():
        raise MedDiftError(
            f"--weights must be the folder holding {AUTOENCODER_FILE} and {UNET_FILE}, not the file {root}"
        )
    for cand in (root, root / "models", root / BUNDLE / "models"):
        if (cand / AUTOENCODER_FILE).is_file() and (cand / UNET_FILE).is_file():
            return cand
    missing = [f for f in (AUTOENCODER_FILE, UNET_FILE) if not (root / f).is_file()]
    raise MedDiftError(f"MAISI weights incomplete: {', '.join(missing)} missing in {root}; " + HOW_TO_GET)


def _load(path: Path) -> Any:
    from .checkpoint import load_checkpoint  # tensors only; one clear line for a refused pickle

    return load_checkpoint(path, "MAISI checkpoint")


def _state_dict(obj: Any, path: Path, keys: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for k in keys:
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MedDiftError(f"{path} does not hold a state dict (looked for {', '.join(keys)} or a plain one)")
    if all(k.startswith("module.") for k in obj):  # saved from DistributedDataParallel
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """load_state_dict(strict) with a MedDiftError that lists a few mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:4])}{more}")
        raise MedDiftError(
            f"checkpoint {path} does not fit the MAISI {type(model).__name__} configuration; "
            + "; ".join(parts)
            + " (is it the DDPM release of the maisi_ct_generative bundle, at full width?)"
        )
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- backbone


def _region_onehot(region: str) -> list[float]:
    if region not in BODY_REGIONS:
        raise MedDiftError(f"unknown body region {region!r}; use one of {', '.join(BODY_REGIONS)}")
    return [1.0 if r == region else 0.0 for r in BODY_REGIONS]


class MaisiBackbone:
    """MAISI autoencoder + diffusion UNet; levels up0..up3 (+ mid), native resolution.

    ``weights``: folder with ``autoencoder_epoch273.pt`` and ``diff_unet_3d_ddpm.pt``.
    ``random_weights``: untrained control (seeded by ``seed``); ``width`` scales every channel
    count (tests use small widths; checkpoints fit width 1 only). ``body_region``: one of
    head/chest/abdomen/lower, or a (top, bottom) pair.
    """

    name = "maisi"
    level_names: tuple[str, ...] = ("up0", "up1", "up2", "up3")  # + "mid" with include_mid
    default_levels: tuple[str, ...] = ("up0", "up1", "up2", "up3")

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        random_weights: bool = False,
        width: float = 1.0,
        seed: int = 0,
        body_region: str | tuple[str, str] = "chest",
        include_mid: bool = False,
        preprocessing: PreprocessSettings | None = None,
    ) -> None:
        if weights is not None and random_weights:
            raise MedDiftError("give either --weights or --random-weights, not both")
        if weights is None and not random_weights:
            raise MedDiftError(
                f"the MAISI backbone needs its weights ({AUTOENCODER_FILE}, {UNET_FILE}); " + HOW_TO_GET
            )
        top, bottom = (body_region, body_region) if isinstance(body_region, str) else tuple(body_region)
        self.top_region = _region_onehot(top)
        self.bottom_region = _region_onehot(bottom)
        self.body_region = (top, bottom)
        self.width = float(width)
        self.seed = int(seed)
        self.include_mid = bool(include_mid)
        self.preprocessing = preprocessing or PreprocessSettings()
        self.level_names = self.default_levels + (("mid",) if include_mid else ())
        self._files: list[Path] = []

        if random_weights:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.autoencoder = build_autoencoder(self.width)
                self.unet = build_unet(self.width)
            self.scale_factor = 1.0
        else:
            folder = find_weights(weights)  # type: ignore[arg-type]
            ae_path, unet_path = folder / AUTOENCODER_FILE, folder / UNET_FILE
            self._files = [ae_path, unet_path]
            self.autoencoder = build_autoencoder(self.width)
            self.unet = build_unet(self.width)
            ae_obj = _load(ae_path)
            load_state(
                self.autoencoder,
                _state_dict(ae_obj, ae_path, ("autoencoder_state_dict", "state_dict", "model_state_dict", "model")),
                ae_path,
            )
            unet_obj = _load(unet_path)
            if not isinstance(unet_obj, dict) or "unet_state_dict" not in unet_obj:
                raise MedDiftError(f"{unet_path} must be a dict with 'unet_state_dict' and 'scale_factor'")
            load_state(self.unet, _state_dict(unet_obj["unet_state_dict"], unet_path, ()), unet_path)
            sf = unet_obj.get("scale_factor", None)
            if sf is None:
                raise MedDiftError(f"{unet_path} has no 'scale_factor'")
            self.scale_factor = float(torch.as_tensor(sf).float().reshape(-1)[0])
        self.autoencoder.eval().requires_grad_(False)
        self.unet.eval().requires_grad_(False)
        self._hash: str | None = None

    # ------------------------------------------------------------ identity

    @property
    def weights_hash(self) -> str:
        if not self._files:
            return f"random-{self.seed}-w{self.width:g}"
        if self._hash is None:
            h = hashlib.sha256()
            for f in self._files:
                h.update(f.name.encode())
                h.update(file_sha256(f).encode())
            self._hash = h.hexdigest()
        return self._hash

    def level_channels(self) -> dict[str, int]:
        ch = list(reversed(unet_config(self.width)["num_channels"]))
        out = {f"up{i}": c for i, c in enumerate(ch)}
        if self.include_mid:
            out["mid"] = ch[0]
        return out

    # ------------------------------------------------------------ extraction

    def _levels(self, settings: ExtractionSettings) -> tuple[str, ...]:
        levels = tuple(settings.levels) if settings.levels is not None else self.default_levels
        bad = [lv for lv in levels if lv not in self.level_names]
        if bad or not levels:
            raise MedDiftError(
                f"unknown MAISI level(s) {', '.join(bad) or '(none given)'}; available: {', '.join(self.level_names)}"
            )
        return levels

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

    def extract(
        self,
        volume: Volume,
        settings: ExtractionSettings,
        progress: ProgressCallback | None = None,
        preprocessing: PreprocessSettings | None = None,
    ) -> dict[str, torch.Tensor]:
        levels = self._levels(settings)
        if settings.samples < 1:
            raise MedDiftError(f"samples must be at least 1, got {settings.samples}")
        noise_level(settings.timestep)  # validates the timestep
        device = resolve_device(settings.device)
        dtype = resolve_dtype(settings.dtype, device)
        total = 1 + settings.samples

        def report(done: int, msg: str) -> None:
            if progress is not None:
                progress(done, total, msg)

        report(0, "encoding")
        prep = prepare(volume, preprocessing or self.preprocessing)
        net_shape = tuple(prep.tensor.shape[-3:])
        if any(n % DIVISOR for n in net_shape):
            raise MedDiftError(
                f"MAISI needs every network axis divisible by {DIVISOR}; got {net_shape} "
                f"(set the preprocessing multiple to a multiple of {DIVISOR})"
            )
        self._configure(device, dtype, net_shape)
        autocast = (
            torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        )

        captured: dict[str, torch.Tensor] = {}
        sums: dict[str, torch.Tensor] = {}

        def hook_for(name: str):
            def hook(_module, _inputs, output):
                captured[name] = output.detach()

            return hook

        mods = self._modules()
        handles = [mods[name].register_forward_hook(hook_for(name)) for name in levels]
        try:
            with torch.inference_mode(), autocast:
                x = prep.tensor.to(device)
                z_mu, _ = self.autoencoder.encode(x)  # posterior mean: deterministic
                latent = z_mu.float() * self.scale_factor
                del x, z_mu
                report(1, "encoded")

                top = torch.tensor([self.top_region], device=device) * 100.0
                bottom = torch.tensor([self.bottom_region], device=device) * 100.0
                spacing = torch.tensor([list(prep.spacing)], dtype=torch.float32, device=device) * 100.0
                timesteps = torch.tensor([int(settings.timestep)], dtype=torch.long, device=device)
                gen = torch.Generator(device="cpu").manual_seed(int(settings.seed))
                for i in range(settings.samples):
                    noisy = add_noise(latent, settings.timestep, gen)
                    captured.clear()
                    self.unet(
                        noisy,
                        timesteps,
                        top_region_index_tensor=top,
                        bottom_region_index_tensor=bottom,
                        spacing_tensor=spacing,
                    )
                    for name in levels:
                        f = captured[name].float()
                        sums[name] = f if name not in sums else sums[name] + f
                    captured.clear()
                    report(2 + i, f"sample {i + 1}/{settings.samples}")
        finally:
            for h in handles:
                h.remove()
            captured.clear()

        out: dict[str, torch.Tensor] = {}
        for name in levels:
            mean = (sums.pop(name) / settings.samples)[0].to("cpu", torch.float32)
            out[name] = from_canonical(mean, prep.axes)
        return out


def count_parameters(module: torch.nn.Module) -> int:
    return int(sum(np.prod(p.shape) for p in module.parameters()))
