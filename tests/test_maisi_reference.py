"""Full-size MAISI features against a reference forward pass written apart from the backbone class.

The reference follows the MAISI tutorials' ``diff_model_create_training_data.py`` and the bundle's
inference config: MONAI transforms (LoadImage, RAS orientation, HU window, resize to multiples
of 128 rounded with Python's ``round``), the networks built from the release config and loaded as
the release's code loads them, the latent ``z_mu * scale_factor``, the release's MONAI scheduler
``add_noise`` and forward hooks on ``unet.up_blocks``. Releases are written at seeded random
weights (tests/maisi_layouts.py); DDPM as the early-2025 tutorials (with the MONAI-1.4 keys),
rectified flow as the 1.0.x bundle. Smallest input: 128^3 network input, 32^3 latent. On a 2-core
CPU one encode takes 75-190 s, so both variants share one reference latent, and the rectified-flow
backbone reuses the autoencoder run of the DDPM one (same autoencoder bytes).
"""

import numpy as np
import pytest
import torch

from maisi_layouts import MONAI14_OUT_PROJ, RELEASE_FILES, autoencoder, unet, write_release

pytestmark = pytest.mark.slow

TIMESTEP = 50
SEED = 11
ARRAY_SHAPE = (120, 136, 128)  # (z, y, x); RAS network order (x, y, z) = (128, 136, 120) -> 128^3
SPACING = (2.0, 1.5, 1.25)  # (z, y, x) mm


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A smooth synthetic CT (HU) written as NIfTI with SimpleITK (LPS identity direction)."""
    import SimpleITK as sitk
    from scipy import ndimage as ndi

    rng = np.random.default_rng(0)
    hu = ndi.gaussian_filter(rng.normal(0, 1, ARRAY_SHAPE), 4)
    hu = (hu / hu.std() * 500 - 300).astype(np.float32)
    img = sitk.GetImageFromArray(hu)
    img.SetSpacing(SPACING[::-1])
    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """DDPM (tutorials, early 2025) and rectified-flow (bundle 1.0.x) folders at seeded random weights."""
    root = tmp_path_factory.mktemp("releases")
    torch.manual_seed(0)
    ae = autoencoder().state_dict()
    states = {}
    for variant in ("ddpm", "rflow"):
        torch.manual_seed(1)
        states[variant] = unet(variant).state_dict()
    ddpm = write_release(root / "ddpm", "tutorials-2025", ae, states["ddpm"], scale_factor=0.9)
    rflow = write_release(root / "rflow", "bundle-1.0", ae, states["rflow"], scale_factor=1.1)
    # the same autoencoder bytes in both folders (only the name differs), as a user who has both has
    (rflow / "autoencoder.pt").write_bytes((ddpm / "autoencoder_epoch273.pt").read_bytes())
    return {"ddpm": (ddpm, RELEASE_FILES["tutorials-2025"]), "rflow": (root / "rflow", RELEASE_FILES["bundle-1.0"])}


def _load_like_the_release(folder, files):
    """Networks from the release config, weights loaded as the tutorials' scripts do."""
    sub, ae_name, unet_name, variant, _ = files
    folder = folder if (folder / unet_name).exists() else folder / sub
    ae = autoencoder(cpu=True).eval()
    ae.load_state_dict(torch.load(folder / ae_name, weights_only=True))
    net = unet(variant).eval()
    ckpt = torch.load(folder / unet_name, weights_only=False)
    missing, unexpected = net.load_state_dict(ckpt["unet_state_dict"], strict=False)
    assert not missing  # MONAI >= 1.5 without include_fc leaves out exactly the MONAI-1.4 out_proj keys
    assert set(unexpected) == (set(MONAI14_OUT_PROJ) if variant == "ddpm" else set())
    return ae, net, float(ckpt["scale_factor"])


def _scheduler(variant):
    from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

    if variant == "ddpm":  # config_maisi3d-ddpm.json
        return DDPMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195,
                             schedule="scaled_linear_beta", clip_sample=False)
    return RFlowScheduler(  # config_maisi3d-rflow.json
        num_train_timesteps=1000, use_discrete_timesteps=False, use_timestep_transform=True, sample_method="uniform",
        scale=1.4,
    )


@pytest.fixture(scope="module")
def reference_input(scan):
    """Network input (1, 1, X, Y, Z) and its spacing (mm, RAS), as diff_model_create_training_data.py."""
    from monai.data.utils import affine_to_spacing
    from monai.transforms import (
        Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, Orientationd, Resized, ScaleIntensityRanged,
    )

    plain = Compose(
        [LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS")]
    )
    dim = plain({"image": str(scan)})["image"].shape[1:]
    new_dim = tuple(int(max(round(float(n) / 128.0), 1.0) * 128) for n in dim)
    full = Compose(
        [
            LoadImaged(keys="image"),
            EnsureChannelFirstd(keys="image"),
            Orientationd(keys="image", axcodes="RAS"),
            EnsureTyped(keys="image", dtype=torch.float32),
            ScaleIntensityRanged(keys="image", a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True),
            Resized(keys="image", spatial_size=new_dim, mode="trilinear"),
        ]
    )
    img = full({"image": str(scan)})["image"]
    spacing = affine_to_spacing(img.affine, r=3).float()
    return img.as_tensor()[None], spacing


@pytest.fixture(scope="module")
def reference_z_mu(releases, reference_input):
    ae, _, _ = _load_like_the_release(*releases["ddpm"])
    with torch.inference_mode():
        z_mu, _ = ae.encode(reference_input[0])
    return z_mu.float()


def reference_levels(releases, reference_input, z_mu, variant):
    """{up_i: (C, X', Y', Z')} in RAS order, one noise draw at TIMESTEP from a generator seeded SEED."""
    _, net, scale_factor = _load_like_the_release(*releases[variant])
    latent = z_mu * scale_factor
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(SEED))
    t = torch.tensor([TIMESTEP])
    noisy = _scheduler(variant).add_noise(original_samples=latent, noise=noise, timesteps=t)
    kwargs = {"spacing_tensor": reference_input[1][None] * 1e2}
    if variant == "ddpm":
        chest = torch.tensor([[0.0, 1.0, 0.0, 0.0]]) * 1e2  # body region one-hot (head, chest, abdomen, lower)
        kwargs.update(top_region_index_tensor=chest, bottom_region_index_tensor=chest)
    else:
        kwargs.update(class_labels=torch.tensor([1]))  # modality CT
    out = {}
    hooks = [
        net.up_blocks[i].register_forward_hook(lambda m, a, o, i=i: out.__setitem__(f"up{i}", o[0].float()))
        for i in range(4)
    ]
    with torch.inference_mode():
        net(noisy, t, **kwargs)
    for h in hooks:
        h.remove()
    return out


def _ras_to_array(f):
    """(C, X, Y, Z) RAS -> (C, z, y, x) of the array SimpleITK reads (LPS identity: x and y flipped)."""
    return f.flip(1, 2).permute(0, 3, 2, 1)


@pytest.mark.parametrize("variant", ["ddpm", "rflow"])
def test_features_match_the_reference(variant, releases, scan, reference_input, reference_z_mu):
    from napari_meddift.backbones.base import ExtractionSettings
    from napari_meddift.backbones.maisi import MaisiBackbone
    from napari_meddift.io.volume import read_volume

    folder = releases[variant][0]
    b = MaisiBackbone(weights=folder)
    assert b.variant == variant
    got = b.extract(read_volume(scan), ExtractionSettings(timestep=TIMESTEP, seed=SEED, device="cpu"))
    ref = reference_levels(releases, reference_input, reference_z_mu, variant)
    assert tuple(reference_input[0].shape[-3:]) == (128, 128, 128)
    for name in ("up0", "up1", "up2", "up3"):
        r = _ras_to_array(ref[name])
        assert got[name].shape == r.shape, name
        scale = float(r.abs().max())
        torch.testing.assert_close(got[name], r, rtol=1e-3, atol=1e-3 * scale, msg=f"{variant} {name}")
