"""Classical registration baselines that the benchmarks compare MedDIFT against.

* :mod:`napari_meddift.baselines.elastix` - intensity-based affine + B-spline registration
  through itk-elastix (optional: ``pip install itk-elastix``).

The hand-crafted MIND-SSC descriptor lives with the other descriptor sources, in
:mod:`napari_meddift.backbones.mind`.
"""
