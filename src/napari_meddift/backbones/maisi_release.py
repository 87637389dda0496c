"""MAISI checkpoints as users get them: the public releases, their files, and safe loading.

Five public releases ship the same two networks under different names (docs/backbones.md):

=================================  =======================  ======================================  =======
release                            autoencoder              diffusion UNet                          variant
=================================  =======================  ======================================  =======
bundle maisi_ct_generative 0.4.x   autoencoder_epoch273.pt  input_unet3d_data-all_steps1000size512  ddpm
                                                            ddpm_random_current_inputx_v1.pt
MAISI tutorials, early 2025        autoencoder_epoch273.pt  diff_unet_3d_ddpm.pt                    ddpm
NV-Generate-CT / tutorials, DDPM   autoencoder_v1.pt        diff_unet_3d_ddpm-ct.pt                 ddpm
bundle maisi_ct_generative 1.0.x   autoencoder.pt           diffusion_unet.pt                       rflow
NV-Generate-CT / tutorials, rflow  autoencoder_v1.pt        diff_unet_3d_rflow-ct.pt                rflow
=================================  =======================  ======================================  =======

(plus the early-2025 tutorials' rectified-flow file ``diff_unet_3d_rflow.pt``). The variant is
decided by the UNet's state-dict keys, not by its file name. The autoencoder file is a raw state
dict; the UNet file is a dict with ``unet_state_dict`` and ``scale_factor`` (a tensor, possibly a
MONAI ``MetaTensor``) and maybe ``epoch``, ``loss``, ``num_train_timesteps``. Everything is
loaded with ``weights_only=True``; the MetaTensor and the plain numpy types its metadata holds are
allowed explicitly, nothing that can run code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import MedDiftError
from .checkpoint import enum_members_by_getattr
from .checkpoint import load_checkpoint as _load_checkpoint

BUNDLE = "maisi_ct_generative"
_NVIDIA = "https://developer.download.nvidia.com/assets/Clara/monai/tutorials"


@dataclass(frozen=True)
class Release:
    """One public MAISI release: its file names, its variant and how to get it."""

    key: str
    title: str
    autoencoder: str
    unet: str
    variant: str  # "ddpm" | "rflow"
    get: str  # exact commands, DIR being the folder to pass as --weights

    def how_to_get(self) -> str:
        return f"get {self.title} with: {self.get}"


RELEASES: tuple[Release, ...] = (
    Release(
        "tutorials-2025",
        "the MAISI tutorials' DDPM release of early 2025 (what the MedDIFT reference uses)",
        "autoencoder_epoch273.pt",
        "diff_unet_3d_ddpm.pt",
        "ddpm",
        f"curl -L -o DIR/autoencoder_epoch273.pt {_NVIDIA}/model_zoo/model_maisi_autoencoder_epoch273_alternative.pt"
        f" && curl -L -o DIR/diff_unet_3d_ddpm.pt {_NVIDIA}/model_zoo/"
        "model_maisi_input_unet3d_data-all_steps1000size512ddpm_random_current_inputx_v1_alternative.pt",
    ),
    Release(
        "bundle-0.4",
        f"the model-zoo bundle {BUNDLE} 0.4.x (DDPM)",
        "autoencoder_epoch273.pt",
        "input_unet3d_data-all_steps1000size512ddpm_random_current_inputx_v1.pt",
        "ddpm",
        f"python -m monai.bundle download {BUNDLE} --version 0.4.5 --bundle_dir DIR"
        f" (then pass DIR/{BUNDLE})",
    ),
    Release(
        "nv-generate-ddpm",
        "NV-Generate-CT / the current MAISI tutorials, DDPM",
        "autoencoder_v1.pt",
        "diff_unet_3d_ddpm-ct.pt",
        "ddpm",
        "huggingface-cli download nvidia/NV-Generate-CT models/autoencoder_v1.pt models/diff_unet_3d_ddpm-ct.pt"
        " --local-dir DIR (then pass DIR/models)",
    ),
    Release(
        "bundle-1.0",
        f"the model-zoo bundle {BUNDLE} 1.0.x (rectified flow)",
        "autoencoder.pt",
        "diffusion_unet.pt",
        "rflow",
        f"python -m monai.bundle download {BUNDLE} --version 1.0.0 --bundle_dir DIR (then pass DIR/{BUNDLE})",
    ),
    Release(
        "nv-generate-rflow",
        "NV-Generate-CT / the current MAISI tutorials, rectified flow",
        "autoencoder_v1.pt",
        "diff_unet_3d_rflow-ct.pt",
        "rflow",
        "huggingface-cli download nvidia/NV-Generate-CT models/autoencoder_v1.pt models/diff_unet_3d_rflow-ct.pt"
        " --local-dir DIR (then pass DIR/models)",
    ),
    Release(
        "tutorials-2025-rflow",
        "the MAISI tutorials' rectified-flow release of early 2025",
        "autoencoder_epoch273.pt",
        "diff_unet_3d_rflow.pt",
        "rflow",
        f"curl -L -o DIR/autoencoder_epoch273.pt {_NVIDIA}/model_zoo/model_maisi_autoencoder_epoch273_alternative.pt"
        f" && curl -L -o DIR/diff_unet_3d_rflow.pt {_NVIDIA}/diff_unet_ckpt_rflow_epoch19350.pt",
    ),
)

VARIANTS = ("ddpm", "rflow")
AUTOENCODER_NAMES = tuple(dict.fromkeys(r.autoencoder for r in RELEASES))
UNET_NAMES = tuple(r.unet for r in RELEASES)

HOW_TO_GET = (
    "MAISI checkpoints are downloaded once, on a machine with internet; the MedDIFT reference "
    f"release: {RELEASES[0].get}; the current model-zoo bundle (rectified flow): {RELEASES[3].get}; "
    "all releases and their commands: docs/backbones.md. Or use --random-weights for an untrained control"
)

#: keys that only MONAI 1.4 registers when include_fc is false (never used in the forward pass)
_UNUSED_OUT_PROJ = re.compile(r"^(?:.+\.)?attn\.out_proj\.(?:weight|bias)$")


# ---------------------------------------------------------------- safe loading


def _safe_globals() -> list:
    """The only non-tensor types a MAISI checkpoint may hold: MONAI's MetaTensor (the
    ``scale_factor``), the enums its metadata uses as keys and values, and the plain numpy values
    of its image metadata. None can run code. Enum members pickled as ``getattr(Enum, "NAME")``
    (early Python 3.11 releases such as Debian's 3.11.2, and 3.12) resolve through
    :func:`checkpoint.enum_members_by_getattr`, which accepts nothing but a member of these enums."""
    import numpy as np
    import numpy.dtypes as npd
    from monai.data import MetaTensor
    from monai.utils.enums import MetaKeys, SpaceKeys, TraceKeys

    enums = [MetaKeys, SpaceKeys, TraceKeys]
    allowed: list = [MetaTensor, *enums, enum_members_by_getattr(enums), np.ndarray, np.dtype]
    try:
        from numpy._core import multiarray as ma
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
    for fn in (ma._reconstruct, ma.scalar):
        # files written under numpy 1 name numpy.core.multiarray, under numpy 2 numpy._core.multiarray
        allowed += [(fn, f"numpy.core.multiarray.{fn.__name__}"), (fn, f"numpy._core.multiarray.{fn.__name__}")]
    for name in dir(npd):
        if name.endswith("DType") and name not in ("ObjectDType", "VoidDType"):
            allowed.append(getattr(npd, name))
    return allowed


def load_checkpoint(path: Path) -> Any:
    """A MAISI checkpoint with its metadata types allowed (see :func:`checkpoint.load_checkpoint`)."""
    return _load_checkpoint(path, "MAISI checkpoint", allowed=_safe_globals())


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def unet_variant(state: dict[str, torch.Tensor]) -> str | None:
    """'ddpm' (top/bottom body-region layers), 'rflow' (class embedding, no region layers) or None."""
    if "top_region_index_layer.0.weight" in state:
        return "ddpm"
    if "class_embedding.weight" in state:
        return "rflow"
    return None


def _looks_like_unet(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(("time_embed.", "up_blocks.", "down_blocks.")) for k in state)


def autoencoder_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The autoencoder state dict of a loaded autoencoder file (raw, or under a known key)."""
    if isinstance(obj, dict) and not _is_state_dict(obj):
        for key in ("unet_state_dict", "autoencoder_state_dict", "state_dict", "model_state_dict", "model"):
            if _is_state_dict(obj.get(key)):
                obj = obj[key]
                break
    if not _is_state_dict(obj):
        raise MedDiftError(f"{path} does not hold an autoencoder state dict")
    state = _strip_module(obj)
    if _looks_like_unet(state):
        raise MedDiftError(f"{path} holds a diffusion UNet, not the MAISI autoencoder (are the two files swapped?)")
    return state


@dataclass
class UnetCheckpoint:
    state: dict[str, torch.Tensor]
    scale_factor: float
    variant: str  # from the keys


def unet_checkpoint(obj: Any, path: Path) -> UnetCheckpoint:
    """State dict, scale factor and variant (from the keys) of a loaded UNet file."""
    if not isinstance(obj, dict) or "unet_state_dict" not in obj:
        kind = "an autoencoder state dict" if _is_state_dict(obj) and not _looks_like_unet(obj) else "something else"
        raise MedDiftError(
            f"{path} must be a MAISI diffusion UNet checkpoint (a dict with 'unet_state_dict' and "
            f"'scale_factor'); it holds {kind}"
        )
    if not _is_state_dict(obj["unet_state_dict"]):
        raise MedDiftError(f"{path}: 'unet_state_dict' is not a state dict of tensors")
    state = _strip_module(dict(obj["unet_state_dict"]))
    sf = obj.get("scale_factor")
    if sf is None:
        raise MedDiftError(f"{path} has no 'scale_factor' (the latent scale the UNet was trained with)")
    sf_t = torch.as_tensor(sf)
    sf_t = sf_t.as_tensor() if hasattr(sf_t, "as_tensor") else sf_t  # MetaTensor -> plain tensor
    variant = unet_variant(state)
    if variant is None:
        raise MedDiftError(
            f"{path} holds a UNet that is neither MAISI's DDPM UNet (top/bottom body-region layers) nor its "
            "rectified-flow UNet (class embedding); " + HOW_TO_GET
        )
    return UnetCheckpoint(state, float(sf_t.float().reshape(-1)[0]), variant)


def drop_unused_out_proj(state: dict[str, torch.Tensor], model: torch.nn.Module) -> tuple[dict, tuple[str, ...]]:
    """Without ``include_fc`` MONAI >= 1.5 registers no ``attn.out_proj`` in MAISI's attention
    blocks, while checkpoints written under MONAI 1.4 carry those 22 never-used keys: drop exactly
    the ``*.attn.out_proj.weight/.bias`` keys of attention blocks that ``model`` has but whose
    ``out_proj`` it does not register, nothing else (any other extra key stays an error)."""
    own = model.state_dict()
    dropped = tuple(
        k
        for k in state
        if k not in own and _UNUSED_OUT_PROJ.match(k) and k.rsplit(".out_proj.", 1)[0] + ".to_q.weight" in own
    )
    return {k: v for k, v in state.items() if k not in dropped}, dropped


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, what: str = "") -> None:
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
            f"checkpoint {path} does not fit the MAISI {what or type(model).__name__} configuration; "
            + "; ".join(parts)
            + " (a checkpoint of another network, or a reduced-width test checkpoint?)"
        )
    model.load_state_dict(state, strict=True)


# ---------------------------------------------------------------- finding the files


@dataclass(frozen=True)
class Found:
    folder: Path
    release: Release
    autoencoder: Path
    unet: Path


def _candidate_folders(root: Path) -> list[Path]:
    return [c for c in (root, root / "models", root / BUNDLE / "models") if c.is_dir()]


def find_release(weights: str | os.PathLike, variant: str = "auto") -> Found:
    """The release files under ``weights``: the folder itself, its ``models/`` or
    ``maisi_ct_generative/models/``. ``variant`` ('auto', 'ddpm', 'rflow') picks among several
    UNet files by name (auto: the first of :data:`RELEASES` present; the MedDIFT reference first).
    MedDiftError naming the release found and what is missing otherwise."""
    if variant not in ("auto",) + VARIANTS:
        raise MedDiftError(f"unknown MAISI variant {variant!r}; use auto, ddpm or rflow")
    root = Path(weights).expanduser()
    if not root.exists():
        raise MedDiftError(f"MAISI weights folder {root} does not exist; " + HOW_TO_GET)
    if root.is_file():
        raise MedDiftError(
            f"--weights must be the folder holding a MAISI release's autoencoder and diffusion UNet, "
            f"not the file {root}"
        )
    folders = _candidate_folders(root)
    wanted = [r for r in RELEASES if variant in ("auto", r.variant)]
    for folder in folders:
        present = [r for r in wanted if (folder / r.unet).is_file()]
        if not present:
            continue
        rel = present[0]
        if (folder / rel.autoencoder).is_file():
            return Found(folder, rel, folder / rel.autoencoder, folder / rel.unet)
        others = [n for n in AUTOENCODER_NAMES if (folder / n).is_file()]
        also = f" (found {', '.join(others)}, which belongs to another release)" if others else ""
        raise MedDiftError(
            f"found the diffusion UNet {rel.unet} of {rel.title} in {folder}, but its autoencoder "
            f"{rel.autoencoder} is missing{also}; {rel.how_to_get()}"
        )
    looked = ", ".join(str(f) for f in folders) or str(root)
    aes = [(f, n) for f in folders for n in AUTOENCODER_NAMES if (f / n).is_file()]
    pts = sorted({p.name for f in folders for p in f.glob("*.pt")})
    if aes:
        folder, name = aes[0]
        rels = [r for r in wanted if r.autoencoder == name]
        need = " or ".join(r.unet for r in rels) or " or ".join(r.unet for r in wanted)
        tips = "; ".join(r.how_to_get() for r in rels[:2])
        raise MedDiftError(
            f"found the MAISI autoencoder {name} in {folder}, but no {'' if variant == 'auto' else variant + ' '}"
            f"diffusion UNet ({need}) beside it; {tips or HOW_TO_GET}"
        )
    found = f" (it holds {', '.join(pts[:6])})" if pts else ""
    raise MedDiftError(
        f"no MAISI checkpoint in {looked}{found}: expected one release's autoencoder "
        f"({' / '.join(AUTOENCODER_NAMES)}) and diffusion UNet ({' / '.join(UNET_NAMES)}); " + HOW_TO_GET
    )


def release_for(unet_name: str, variant: str) -> Release | None:
    """The release a UNet file name belongs to, if its variant agrees with the keys'."""
    for r in RELEASES:
        if r.unet == unet_name and r.variant == variant:
            return r
    return None
