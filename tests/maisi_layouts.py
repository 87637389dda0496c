"""MAISI release folders as the public releases ship them, for tests (written apart from the backbone).

Networks come from the releases' own configs (``config_maisi3d-ddpm.json`` /
``config_maisi3d-rflow.json`` of the MAISI tutorials, the bundles' configs), copied here as data.
Files carry the releases' names and dict structure: the autoencoder file a raw state dict, the UNet
file ``{"epoch", "loss", "num_train_timesteps", "scale_factor", "unet_state_dict"}`` as the
tutorials' ``diff_model_train.py`` saves it, with ``scale_factor`` a MONAI MetaTensor (it is
``1 / std`` of a loaded latent). DDPM UNets saved under MONAI 1.4 (the 0.4.x bundle pins 1.4.0)
carry the 22 ``attn.out_proj`` keys listed in :data:`MONAI14_OUT_PROJ`, read from MONAI 1.4.0's
``DiffusionModelUNetMaisi`` with the DDPM config.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

AE_DEF = dict(
    spatial_dims=3,
    in_channels=1,
    out_channels=1,
    latent_channels=4,
    num_channels=[64, 128, 256],
    num_res_blocks=[2, 2, 2],
    norm_num_groups=32,
    norm_eps=1e-06,
    attention_levels=[False, False, False],
    with_encoder_nonlocal_attn=False,
    with_decoder_nonlocal_attn=False,
    use_checkpointing=False,
    use_convtranspose=False,
    norm_float16=True,
    num_splits=8,
    dim_split=1,
)
_UNET_COMMON = dict(
    spatial_dims=3,
    in_channels=4,
    out_channels=4,
    num_channels=[64, 128, 256, 512],
    attention_levels=[False, False, True, True],
    num_head_channels=[0, 0, 32, 32],
    num_res_blocks=2,
    use_flash_attention=True,
    include_spacing_input=True,
)
UNET_DEF = {
    "ddpm": dict(_UNET_COMMON, include_top_region_index_input=True, include_bottom_region_index_input=True),
    "rflow": dict(
        _UNET_COMMON,
        include_top_region_index_input=False,
        include_bottom_region_index_input=False,
        num_class_embeds=128,
        resblock_updown=True,
        include_fc=True,
    ),
}

MONAI14_OUT_PROJ = tuple(
    f"{block}.attn.out_proj.{p}"
    for block in (
        "down_blocks.2.attentions.0",
        "down_blocks.2.attentions.1",
        "down_blocks.3.attentions.0",
        "down_blocks.3.attentions.1",
        "middle_block.attention",
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1",
        "up_blocks.0.attentions.2",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.2",
    )
    for p in ("weight", "bias")
)

#: key -> (folder under DIR, autoencoder file, UNet file, variant, saved under MONAI 1.4)
RELEASE_FILES = {
    "bundle-0.4": (
        "maisi_ct_generative/models",
        "autoencoder_epoch273.pt",
        "input_unet3d_data-all_steps1000size512ddpm_random_current_inputx_v1.pt",
        "ddpm",
        True,
    ),
    "tutorials-2025": ("models", "autoencoder_epoch273.pt", "diff_unet_3d_ddpm.pt", "ddpm", True),
    "nv-generate-ddpm": ("models", "autoencoder_v1.pt", "diff_unet_3d_ddpm-ct.pt", "ddpm", False),
    "bundle-1.0": ("maisi_ct_generative/models", "autoencoder.pt", "diffusion_unet.pt", "rflow", False),
    "nv-generate-rflow": ("models", "autoencoder_v1.pt", "diff_unet_3d_rflow-ct.pt", "rflow", False),
}


def autoencoder(cpu: bool = True) -> torch.nn.Module:
    """The release's autoencoder; on the CPU group norms cannot emit float16 (a runtime flag)."""
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    return AutoencoderKlMaisi(**dict(AE_DEF, norm_float16=not cpu))


def unet(variant: str) -> torch.nn.Module:
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

    return DiffusionModelUNetMaisi(**dict(UNET_DEF[variant], use_flash_attention=False))


def _shapes(model_fn) -> dict[str, torch.Size]:
    with torch.device("meta"):
        return {k: v.shape for k, v in model_fn().state_dict().items()}


def cheap_state(shapes: dict[str, torch.Size], seed: int) -> dict[str, torch.Tensor]:
    """Full-size tensors, one seeded random value each, stored as one element (files stay small)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(1, generator=gen).reshape([1] * len(s)).expand(s) for k, s in shapes.items()}


def metatensor_scale_factor(value: float = 1.0):
    """A scale factor as the tutorials' training computes it: 1 / std of a loaded latent (MetaTensor)."""
    from monai.data import MetaTensor

    z = torch.randn(1, 4, 4, 4, 4, generator=torch.Generator().manual_seed(7))
    meta = {
        "filename_or_obj": "case_0001_emb.nii.gz",
        "pixdim": np.array([1.0, 1.5, 1.5, 2.0, 1, 1, 1, 1], dtype=np.float32),
        "dim": np.array([4, 4, 4, 4, 4, 1, 1, 1], dtype=np.int16),
        "descrip": np.array(b"MAISI latent", dtype="|S80"),
        "spatial_shape": np.array([4, 4, 4], dtype=np.int64),
    }
    mt = MetaTensor(z, affine=torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0], dtype=torch.float64)), meta=meta)
    sf = 1.0 / torch.std(mt)
    return sf * (value / float(sf))


def write_release(
    root: Path,
    key: str,
    autoencoder_state: dict | None = None,
    unet_state: dict | None = None,
    scale_factor: float = 1.0,
    seed: int = 0,
) -> Path:
    """Write release ``key`` under ``root`` (``root/<its folder>/<its files>``); returns the folder.

    Without states, full-size cheap tensors (:func:`cheap_state`) with the release's exact keys."""
    sub, ae_name, unet_name, variant, monai14 = RELEASE_FILES[key]
    folder = Path(root) / sub
    folder.mkdir(parents=True, exist_ok=True)
    ae = autoencoder_state if autoencoder_state is not None else cheap_state(_shapes(autoencoder), seed)
    un = dict(unet_state) if unet_state is not None else cheap_state(_shapes(lambda: unet(variant)), seed + 1)
    if monai14:
        gen = torch.Generator().manual_seed(seed + 2)
        for k in MONAI14_OUT_PROJ:  # out_proj is a (C, C) Linear like to_q in MONAI 1.4
            un[k] = torch.randn(un[k.replace(".out_proj.", ".to_q.")].shape, generator=gen)
    torch.save(ae, folder / ae_name)
    torch.save(
        {
            "epoch": 273,
            "loss": torch.tensor(0.01),
            "num_train_timesteps": 1000,
            "scale_factor": metatensor_scale_factor(scale_factor),
            "unet_state_dict": un,
        },
        folder / unet_name,
    )
    return folder
