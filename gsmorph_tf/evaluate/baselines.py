"""Classical deformable registration baselines of the GSMorph paper (Table 1): Demons and SyN.

Each method registers one 2-D pair (or one 3-D pair: the same calls in 3-D) with the implementation its users trust -- SimpleITK's diffeomorphic
Demons (Vercauteren et al. 2009) and ANTsPy's SyN (Avants et al. 2008) -- and returns the result in this
project's convention, so the learned and classical methods are scored by the same code
(:func:`gsmorph_tf.evaluate.evaluation.subject_metrics`, labels warped by
:func:`gsmorph_tf.evaluate.evaluation.warp_labels`):

- images: ``[H, W]`` (or ``[D, H, W]``) float32 in [0, 1] (the scaled slices or volumes of
  :class:`~gsmorph_tf.data.subjects.SubjectPairs`);
- ``flow``: ``[H, W, 2]`` (``[D, H, W, 3]``) float32 displacement in PIXELS (voxels) along the array axes
  (row, col[, ...]), such that ``moved(x) = moving(x + flow(x))`` -- voxelmorph's ``SpatialTransformer`` with
  ``indexing='ij'``.

The libraries see the arrays as images with spacing 1, origin 0 and identity direction, so their physical
units are pixels; only the axis order differs. SimpleITK's ``GetImageFromArray`` makes the LAST array axis
its x, so its displacement components are (col, row) and are reversed here; ANTsPy's ``from_numpy`` makes
the FIRST array axis its x, so its components are already (row, col). Both libraries' forward transforms map
a fixed-image point to the moving-image point it samples, the same direction as ``flow``.

SimpleITK and antspyx are the optional ``baselines`` extra (``pip install -e ".[baselines]"`` in the source
checkout), imported only when a method runs (:func:`gsmorph_tf.extras.import_extra`).
"""
import os
import tempfile

import numpy as np

from gsmorph_tf.extras import import_extra

#: Demons defaults: iterations (single resolution; SimpleITK's default is 10, too few for cardiac motion of
#: several pixels) and the std in pixels of the Gaussian that smooths the whole displacement field after
#: every iteration, the diffeomorphic-demons regulariser (SimpleITK's default, 1.0; 1.5 was slightly less
#: accurate on the phantom, and both gave no folding).
DEMONS_ITERATIONS = 100
DEMONS_SMOOTHING_SIGMA = 1.0

#: SyN defaults: ANTsPy's own -- iterations per level at shrink factors 4, 2, 1 (none at full resolution),
#: Mattes mutual information with 32 bins, gradient step 0.2, update-field smoothing 3 (voxel units).
SYN_ITERATIONS = (40, 20, 0)


#: Python module and package of the library behind each method.
LIBRARIES = {"demons": ("SimpleITK", "SimpleITK"), "syn": ("ants", "antspyx")}


def require(method):
    """Import the library ``method`` needs, or raise :class:`~gsmorph_tf.extras.MissingExtraError` (an
    ImportError) naming the package and the install command. Call it before long work so a missing extra
    fails at once."""
    if method not in LIBRARIES:
        raise ValueError(f"unknown baseline method {method!r}; expected one of {sorted(LIBRARIES)}")
    module, package = LIBRARIES[method]
    return import_extra(module, "baselines", package, "the classical baselines")


def _check_pair(moving, fixed):
    """Both images as float32 ``[H, W]`` (or ``[D, H, W]``) arrays of one shape with finite values."""
    moving = np.asarray(moving, dtype=np.float32)
    fixed = np.asarray(fixed, dtype=np.float32)
    if moving.ndim not in (2, 3) or moving.shape != fixed.shape or min(moving.shape) < 2:
        raise ValueError(f"expected one 2-D or 3-D pair of equal images (every size >= 2), got moving "
                         f"{moving.shape} and fixed {fixed.shape}")
    for name, image in (("moving", moving), ("fixed", fixed)):
        if not np.all(np.isfinite(image)):
            raise ValueError(f"{name} image holds NaN or infinite values; expected finite intensities")
    return moving, fixed


def register_demons(moving, fixed, iterations=DEMONS_ITERATIONS, smoothing_sigma=DEMONS_SMOOTHING_SIGMA):
    """Register one 2-D pair with SimpleITK's ``DiffeomorphicDemonsRegistrationFilter``.

    No histogram matching (both images are already scaled to one [0, 1] range). The filter's other settings
    are SimpleITK's defaults: symmetric gradient forces, maximum update step 0.5 pixel, no smoothing of the
    update field, stop early when the RMS change of the field falls below 0.02 pixel. The field starts at 0.

    Args:
        moving, fixed: ``[H, W]`` images, intensities in [0, 1].
        iterations: number of demons iterations.
        smoothing_sigma: std in pixels of the Gaussian applied to the displacement field each iteration.

    Returns:
        ``(moved, flow)``: ``moved`` ``[H, W]`` float32, SimpleITK's linear resampling of ``moving`` (0 where
        the sampled point leaves the image); ``flow`` ``[H, W, 2]`` float32 in pixels along (row, col), with
        ``moved(x) = moving(x + flow(x))``.
    """
    sitk = require("demons")
    moving, fixed = _check_pair(moving, fixed)
    # GetImageFromArray gives spacing 1, origin 0, identity direction: physical units are pixels.
    moving_image, fixed_image = sitk.GetImageFromArray(moving), sitk.GetImageFromArray(fixed)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(int(iterations))
    demons.SetStandardDeviations(float(smoothing_sigma))
    demons.SetSmoothDisplacementField(True)
    field = demons.Execute(fixed_image, moving_image)
    # Components are (x, y) = (col, row); reverse them to the array order.
    flow = sitk.GetArrayFromImage(field)[..., ::-1].astype(np.float32)
    # DisplacementFieldTransform takes the field over (empties it), so the array is read first.
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    moved = sitk.GetArrayFromImage(sitk.Resample(moving_image, fixed_image, transform, sitk.sitkLinear, 0.0))
    return moved.astype(np.float32), np.ascontiguousarray(flow)


def register_syn(moving, fixed, iterations=SYN_ITERATIONS):
    """Register one 2-D pair with ANTsPy's SyN, ``type_of_transform="SyNOnly"``.

    "SyNOnly" (SyN without the rigid/affine stages of "SyN"): the ES and ED frames come from one cine
    acquisition, so they share position and orientation and a global stage has nothing to correct; "SyN"'s
    affine stage also starts from a centre-of-mass translation and samples 20 % of pixels at random, which
    makes results run-dependent. In 3-D (Learn2Reg tasks such as OASIS, whose volumes are distributed affinely
    aligned to one space) there is likewise no global stage to add. All other settings are ANTsPy's defaults (see :data:`SYN_ITERATIONS`). Every
    forward transform ANTs writes is composed into one displacement field, so the flow is the whole map.

    Args:
        moving, fixed: ``[H, W]`` images, intensities in [0, 1].
        iterations: SyN iterations per resolution level, coarse to fine (shrink factors 2^(n-1) .. 1).

    Returns:
        ``(moved, flow)``: ``moved`` ``[H, W]`` float32, ANTs's linear warp of ``moving``; ``flow``
        ``[H, W, 2]`` float32 in pixels along (row, col), with ``moved(x) = moving(x + flow(x))``.
    """
    ants = require("syn")
    moving, fixed = _check_pair(moving, fixed)
    # from_numpy: array axis 0 is ANTs's x; spacing 1, origin 0, identity direction make units pixels.
    geometry = {"origin": (0.0,) * moving.ndim, "spacing": (1.0,) * moving.ndim, "direction": np.eye(moving.ndim)}
    moving_image, fixed_image = ants.from_numpy(moving, **geometry), ants.from_numpy(fixed, **geometry)
    # ANTs writes its transforms to files; keep them in a folder that is removed afterwards.
    with tempfile.TemporaryDirectory(prefix="gsmorph_syn_") as folder:
        result = ants.registration(fixed_image, moving_image, type_of_transform="SyNOnly",
                                   reg_iterations=tuple(int(i) for i in iterations),
                                   outprefix=os.path.join(folder, "syn_"))
        transforms = list(result["fwdtransforms"])
        composite = ants.apply_transforms(fixed_image, moving_image, transforms,
                                          whichtoinvert=[False] * len(transforms),
                                          compose=os.path.join(folder, "forward_"))
        flow = ants.image_read(composite).numpy()
        moved = result["warpedmovout"].numpy()
    return moved.astype(np.float32), flow.astype(np.float32)


#: Method name -> function of one 2-D or 3-D pair; the names ``register_stack`` and the tables use.
METHODS = {"demons": register_demons, "syn": register_syn}


def register_stack(method, moving, fixed, **options):
    """Register every slice pair of a stack (or every volume pair of a 3-D task) with one classical method.

    Args:
        method: ``"demons"`` or ``"syn"`` (see :data:`METHODS`).
        moving, fixed: ``[S, H, W]`` images in [0, 1] (e.g. a subject's ES and ED stacks), registered slice by
            slice, or ``[N, D, H, W]`` volumes (3-D tasks), registered volume by volume in 3-D.
        **options: keyword arguments of the method (``iterations``, ``smoothing_sigma`` for demons).

    Returns:
        ``(moved [S, H, W] float32, flow [S, H, W, 2] float32)``, flow in pixels along (row, col) (3-D:
        ``[N, D, H, W]`` and ``[N, D, H, W, 3]``), the arrays a network's predictor returns.
    """
    if method not in METHODS:
        raise ValueError(f"unknown baseline method {method!r}; expected one of {sorted(METHODS)}")
    moving, fixed = np.asarray(moving), np.asarray(fixed)
    if moving.ndim not in (3, 4) or moving.shape != fixed.shape:
        raise ValueError(f"expected moving and fixed stacks [S, H, W] (or volumes [N, D, H, W]) of one shape, got "
                         f"{moving.shape} and {fixed.shape}")
    results = [METHODS[method](m, f, **options) for m, f in zip(moving, fixed)]
    return (np.stack([moved for moved, _ in results]).astype(np.float32),
            np.stack([flow for _, flow in results]).astype(np.float32))
