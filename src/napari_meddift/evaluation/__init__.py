"""Harnesses that measure correspondence quality.

* :mod:`napari_meddift.evaluation.metrics` - target registration error (mm) and summaries.
* :mod:`napari_meddift.evaluation.l2r` - the Learn2Reg LungCT protocol on a data folder.
* :mod:`napari_meddift.evaluation.l2r_config` - the Learn2Reg config and case ids in file names.
* :mod:`napari_meddift.evaluation.elastix` - intensity-based affine + B-spline registration
  through itk-elastix (optional: ``pip install itk-elastix``), the classical baseline.

The hand-crafted MIND-SSC descriptor lives with the other descriptor sources, in
:mod:`napari_meddift.backbones.mind`.
"""
