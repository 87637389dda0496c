"""Intensity-based B-spline registration with elastix (itk-elastix): the classical baseline.

A standard lung-CT recipe (after the elastix model zoo's lung parameter files, e.g. Par0011 /
Par0016, scaled down so a demo-size pair runs in well under a minute on two CPU cores):

1. affine, AdvancedMattesMutualInformation, 3 resolutions (smoothing pyramid), adaptive
   stochastic gradient descent, random-coordinate sampling;
2. B-spline, same metric (or AdvancedNormalizedCorrelation) with a small bending-energy penalty,
   3 resolutions, final control-point grid ``grid_spacing_mm`` (default 12 mm).

elastix's transform maps a point of the FIXED image to the corresponding point of the MOVING
image (it is the pull-back used to resample the moving image onto the fixed grid). So
``map_points(transform, points_in_fixed)`` returns where those anatomical points lie in the moving
image, which is exactly what landmark TRE needs.

Points are voxel indices in numpy (z, y, x) order, floats allowed, as everywhere in the project.
itk-elastix is optional: ``pip install itk-elastix`` (or, from the clone, ``pip install -e ".[elastix]"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import MedDiftError
from ..io.geometry import Grid
from ..io.volume import Volume

INSTALL_HINT = "the elastix baseline needs itk-elastix: pip install itk-elastix"


def _itk():
    """Import itk with elastix support, or say exactly how to get it."""
    try:
        import itk

        itk.ElastixRegistrationMethod  # lazy attribute: raises if itk-elastix is absent
    except (ImportError, AttributeError) as exc:
        raise MedDiftError(f"{INSTALL_HINT} (import failed: {exc})") from None
    return itk


def elastix_available() -> bool:
    """Whether itk-elastix can be imported (the baseline is optional)."""
    try:
        _itk()
    except MedDiftError:
        return False
    return True


@dataclass
class ElastixTransform:
    """The result of :func:`register_bspline`: elastix's fixed->moving transform.

    ``parameter_maps``: elastix transform parameter maps (affine, B-spline) as plain dicts of
    string tuples, enough to rebuild the transform or write elastix's TransformParameters files.
    ``fixed_geometry``, ``moving_geometry``: the two images' voxel grids (:class:`Grid`).
    """

    parameter_maps: list[dict[str, tuple[str, ...]]]
    fixed_geometry: Grid
    moving_geometry: Grid
    seconds: float = 0.0
    _itk_transform: Any = field(default=None, repr=False, compare=False)
    _keepalive: Any = field(default=None, repr=False, compare=False)

    def write(self, folder) -> list[str]:
        """Write elastix TransformParameters.<i>.txt files (chained) into ``folder``."""
        itk = _itk()
        from pathlib import Path

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, pmap in enumerate(self.parameter_maps):
            pobj = itk.ParameterObject.New()
            pmap = dict(pmap)
            if i > 0:
                pmap["InitialTransformParameterFileName"] = (str(folder / f"TransformParameters.{i - 1}.txt"),)
            pobj.AddParameterMap(pmap)
            path = folder / f"TransformParameters.{i}.txt"
            pobj.WriteParameterFile(str(path))
            paths.append(str(path))
        return paths


def _index_to_physical(points_zyx: np.ndarray, grid: Grid) -> np.ndarray:
    """Continuous voxel indices (z, y, x), (N, 3) -> ITK physical points (x, y, z) in mm, (N, 3)."""
    return grid.index_to_physical(np.asarray(points_zyx, dtype=np.float64))[:, ::-1]


def _physical_to_index(points_xyz: np.ndarray, grid: Grid) -> np.ndarray:
    """ITK physical points (x, y, z) in mm, (N, 3) -> continuous voxel indices (z, y, x), (N, 3)."""
    return grid.physical_to_index(np.asarray(points_xyz, dtype=np.float64)[:, ::-1])


def _to_itk_image(itk, array: np.ndarray, grid: Grid, pixel=np.float32):
    image = itk.image_from_array(np.ascontiguousarray(array, dtype=pixel))
    image.SetSpacing([float(s) for s in grid.spacing[::-1]])
    image.SetOrigin([float(s) for s in grid.origin[::-1]])
    image.SetDirection(
        itk.matrix_from_array(np.ascontiguousarray(np.reshape(grid.direction, (3, 3)), dtype=np.float64))
    )
    return image


def lung_parameter_maps(
    iterations: int = 250,
    affine_iterations: int | None = None,
    grid_spacing_mm: float = 12.0,
    metric: str = "mi",
    resolutions: int = 3,
    samples: int = 2048,
    bending_weight: float = 0.05,
) -> list[dict[str, list[str]]]:
    """The affine + B-spline parameter maps used by :func:`register_bspline`.

    ``iterations``: maximum iterations per resolution of the B-spline stage.
    ``affine_iterations``: the same for the affine stage (default: ``iterations``).
    ``grid_spacing_mm``: final B-spline control-point spacing in mm.
    ``metric``: ``"mi"`` (Mattes mutual information) or ``"ncc"`` (normalised correlation).
    ``resolutions``: pyramid levels (smoothing, no downsampling).
    ``samples``: random spatial samples per iteration.
    ``bending_weight``: weight of the bending-energy penalty of the B-spline stage.

    Returns ``[affine, bspline]`` parameter maps, ``{name: [str, ...]}`` as elastix takes them.

    Raises MedDiftError: an unknown metric or fewer than one iteration.
    """
    metrics = {"mi": "AdvancedMattesMutualInformation", "ncc": "AdvancedNormalizedCorrelation"}
    if metric not in metrics:
        raise MedDiftError(f"unknown elastix metric {metric!r}; use one of {', '.join(metrics)}")
    if iterations < 1:
        raise MedDiftError(f"iterations must be at least 1, got {iterations}")
    affine_iterations = iterations if affine_iterations is None else affine_iterations
    common = {
        "FixedImagePyramid": ["FixedSmoothingImagePyramid"],
        "MovingImagePyramid": ["MovingSmoothingImagePyramid"],
        "NumberOfResolutions": [str(resolutions)],
        "Optimizer": ["AdaptiveStochasticGradientDescent"],
        "AutomaticParameterEstimation": ["true"],
        "ImageSampler": ["RandomCoordinate"],
        "NewSamplesEveryIteration": ["true"],
        "NumberOfSpatialSamples": [str(samples)],
        "MaximumNumberOfSamplingAttempts": ["8"],
        "CheckNumberOfSamples": ["false"],
        "Interpolator": ["LinearInterpolator"],
        "ResampleInterpolator": ["FinalBSplineInterpolator"],
        "FinalBSplineInterpolationOrder": ["1"],
        "Resampler": ["DefaultResampler"],
        "DefaultPixelValue": ["-1000"],
        "NumberOfHistogramBins": ["32"],
        "ErodeMask": ["false"],
        "WriteResultImage": ["false"],
        "ResultImageFormat": ["nii"],
        "WriteIterationInfo": ["false"],
        "HowToCombineTransforms": ["Compose"],
    }
    affine = dict(common)
    affine.update(
        {
            "Registration": ["MultiResolutionRegistration"],
            "Transform": ["AffineTransform"],
            "AutomaticScalesEstimation": ["true"],
            "AutomaticTransformInitialization": ["true"],
            "AutomaticTransformInitializationMethod": ["GeometricalCenter"],
            "Metric": [metrics[metric]],
            "MaximumNumberOfIterations": [str(affine_iterations)],
        }
    )
    bspline = dict(common)
    schedule = [str(2 ** (resolutions - 1 - r)) for r in range(resolutions)]
    bspline.update(
        {
            "Registration": ["MultiMetricMultiResolutionRegistration"],
            "Transform": ["BSplineTransform"],
            "FinalGridSpacingInPhysicalUnits": [f"{grid_spacing_mm:g}"],
            "GridSpacingSchedule": schedule,
            "Metric": [metrics[metric], "TransformBendingEnergyPenalty"],
            "Metric0Weight": ["1.0"],
            "Metric1Weight": [f"{bending_weight:g}"],
            "MaximumNumberOfIterations": [str(iterations)],
        }
    )
    return [affine, bspline]


def register_bspline(
    fixed: Volume,
    moving: Volume,
    mask: np.ndarray | Volume | None = None,
    iterations: int = 250,
    *,
    affine_iterations: int | None = None,
    grid_spacing_mm: float = 12.0,
    metric: str = "mi",
    resolutions: int = 3,
    samples: int = 2048,
    bending_weight: float = 0.05,
    affine: bool = True,
    threads: int | None = None,
    log_to_console: bool = False,
) -> ElastixTransform:
    """Affine + B-spline registration of ``moving`` onto ``fixed``.

    ``fixed``: the fixed CT, array (z, y, x) in HU, spacing/origin in mm.
    ``moving``: the moving CT, same conventions (its own grid).
    ``mask``: optional fixed-image mask, shape (z, y, x) of ``fixed`` (nonzero = use), e.g. the lungs.
    ``iterations``: maximum iterations per resolution of the B-spline stage (and of the affine
    stage unless ``affine_iterations`` is given).
    ``affine_iterations``, ``grid_spacing_mm``, ``metric``, ``resolutions``, ``samples``, ``bending_weight``: see
    :func:`lung_parameter_maps`.
    ``affine``: run the affine stage first.
    ``threads``: ITK's global thread count (None: ITK's default).
    ``log_to_console``: let elastix print its log.

    Returns the fixed->moving transform; map points with :func:`map_points`.

    Raises MedDiftError: itk-elastix is missing, the mask is empty or mis-shaped, or elastix fails.
    """
    import time

    itk = _itk()
    fgeom, mgeom = Grid.of(fixed), Grid.of(moving)  # io.geometry: the one home of index <-> physical maps
    # the CT window the other methods see; elastix samples inside it
    f_img = _to_itk_image(itk, np.clip(fixed.array, -1000, 1000), fgeom)
    m_img = _to_itk_image(itk, np.clip(moving.array, -1000, 1000), mgeom)

    maps = lung_parameter_maps(
        iterations, affine_iterations, grid_spacing_mm, metric, resolutions, samples, bending_weight
    )
    if not affine:
        maps = maps[1:]
    pobj = itk.ParameterObject.New()
    for pm in maps:
        pobj.AddParameterMap(pm)

    reg = itk.ElastixRegistrationMethod.New(f_img, m_img)
    reg.SetParameterObject(pobj)
    reg.SetLogToConsole(bool(log_to_console))
    reg.SetLogToFile(False)
    if threads:  # reg.SetNumberOfThreads crashes itk-elastix 0.25; set the global default instead
        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(threads))
    if mask is not None:
        m = mask.array if isinstance(mask, Volume) else np.asarray(mask)
        if tuple(m.shape) != fixed.shape:
            raise MedDiftError(f"the elastix mask has shape {tuple(m.shape)} but the fixed image has {fixed.shape}")
        if not np.any(m):
            raise MedDiftError("the elastix mask is empty; pass a mask with the region to register, or none")
        reg.SetFixedMask(_to_itk_image(itk, (m != 0).astype(np.uint8), fgeom, pixel=np.uint8))
    t0 = time.perf_counter()
    try:
        reg.UpdateLargestPossibleRegion()
    except RuntimeError as exc:  # elastix reports its problems as ITK exceptions
        raise MedDiftError(f"elastix registration failed: {str(exc).strip().splitlines()[-1]}") from None
    seconds = time.perf_counter() - t0

    tpo = reg.GetTransformParameterObject()
    out_maps = [
        {k: tuple(v) for k, v in dict(tpo.GetParameterMap(i)).items()} for i in range(tpo.GetNumberOfParameterMaps())
    ]
    return ElastixTransform(
        parameter_maps=out_maps,
        fixed_geometry=fgeom,
        moving_geometry=mgeom,
        seconds=seconds,
        _itk_transform=reg.GetCombinationTransform(),
        _keepalive=reg,
    )


def map_points(transform: ElastixTransform, points_zyx_in_fixed: ArrayLike) -> np.ndarray:
    """Carry fixed-image points into the moving image.

    ``transform``: the result of :func:`register_bspline`.
    ``points_zyx_in_fixed``: voxel points of the fixed image, shape (N, 3), (z, y, x), floats allowed.

    Returns the corresponding moving-image voxel points, shape (N, 3), (z, y, x), float64.

    Raises MedDiftError: points not of shape (N, 3), or a transform without its ITK object.
    """
    pts = np.asarray(points_zyx_in_fixed, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise MedDiftError(f"points must be an (N, 3) array of z, y, x voxel indices, got shape {pts.shape}")
    if len(pts) == 0:
        return np.zeros((0, 3))
    tx = transform._itk_transform
    if tx is None:
        raise MedDiftError("this elastix transform holds no ITK transform; rebuild it with register_bspline")
    phys = _index_to_physical(pts, transform.fixed_geometry)
    out = np.array([tuple(tx.TransformPoint([float(c) for c in p])) for p in phys], dtype=np.float64)
    return _physical_to_index(out, transform.moving_geometry)
