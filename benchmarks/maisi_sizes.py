"""MAISI's descriptor levels for a 192x192x208 CT (network input 256^3, latent 64^3), as in
docs/method.md: the sizes every benchmark uses for its random descriptors."""

#: level name -> (channels, native grid edge); each level grid is a cube of that edge
MAISI_LEVELS = {"up0": (512, 16), "up1": (256, 32), "up2": (128, 64), "up3": (64, 64)}
