"""napari-meddift: training-free 3D correspondence from diffusion features (MedDIFT).

The core (volumes, backbones, descriptor stores, matching, evaluation, CLI) is plain
Python and never imports Qt; the napari layer lives in :mod:`napari_meddift._qt`.
"""

__version__ = "0.1.0"

STORE_FORMAT_VERSION = 2

__all__ = ["__version__", "STORE_FORMAT_VERSION"]
