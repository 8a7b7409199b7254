"""Registration evaluation metrics of GSMorph (Dou et al., MICCAI 2023, Table 1): Dice, HD95, MSE, NJD; and
Learn2Reg's smoothness measure SDlogJ.

Plain NumPy/SciPy functions; each docstring states its reduction. Conventions:

- label maps are integer arrays of any spatial rank (a 2D slice [H, W] or a stack/volume [S, H, W]);
- a displacement field ``flow`` has shape [*vol, ndim] in voxels, channel k being the displacement along
  array axis k (voxelmorph's 'ij' indexing), for the transform x -> x + u(x);
- ``spacing`` is a tuple of mm per array axis.

Scores that are undefined for a pair (Dice of two empty structures, HD95 with an empty mask) are NaN so
that :func:`mean_std` can leave them out of the mean over subjects.
"""
import numpy as np
from scipy import ndimage


def _check_same_shape(array_a, array_b, what):
    if array_a.shape != array_b.shape:
        raise ValueError("%s must have the same shape, got %s and %s" % (what, array_a.shape, array_b.shape))


def _as_mask(mask, name):
    """``mask`` as a bool array; accepts bool or 0/1 arrays, refuses anything that would silently merge labels."""
    mask = np.asarray(mask)
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError(
                "%s must be a boolean mask (or 0/1), got values %s; pass `labels == value`"
                % (name, np.unique(mask)[:10]))
        mask = mask.astype(bool)
    return mask


def dice(labels_a, labels_b, value):
    """Dice overlap of one structure in two label maps.

    Args:
        labels_a, labels_b: integer label maps of the same shape, any rank.
        value: the structure's integer label.

    Returns:
        ``2 |A & B| / (|A| + |B|)`` with ``A = labels_a == value``, ``B = labels_b == value``, a fraction in
        [0, 1] over all voxels of the map; NaN when the structure is absent from both maps (undefined).
    """
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    _check_same_shape(labels_a, labels_b, "label maps")
    mask_a, mask_b = labels_a == value, labels_b == value
    total = int(mask_a.sum()) + int(mask_b.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(mask_a, mask_b).sum()) / total


def dice_per_structure(labels_a, labels_b, label_values):
    """Dice of each named structure (see :func:`dice`).

    Args:
        labels_a, labels_b: integer label maps of the same shape, any rank.
        label_values: structure name -> integer label, e.g. ``{"LV": 3, "Myo": 2, "RV": 1}`` for ACDC.

    Returns:
        ``{name: dice fraction in [0, 1] or NaN}``, keys in the order of ``label_values``.
    """
    return {name: dice(labels_a, labels_b, value) for name, value in label_values.items()}


def _surface(mask):
    # medpy's border: the mask minus its erosion by the connectivity-1 (face-neighbour) element; voxels on
    # the image edge count as surface (erosion treats outside the array as background).
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return np.logical_and(mask, np.logical_not(ndimage.binary_erosion(mask, structure=structure)))


def hd95(mask_a, mask_b, spacing):
    """95th-percentile symmetric Hausdorff distance between the surfaces of two masks, in mm.

    Surface = mask minus its binary erosion (face connectivity). For every surface voxel of one mask, the
    Euclidean distance (``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``) to the nearest
    surface voxel of the other; the directed distances a->b and b->a are pooled and their 95th percentile
    (linear interpolation) is returned. This is medpy's ``hd95``.

    Args:
        mask_a, mask_b: boolean (or 0/1) masks of the same shape, any rank.
        spacing: voxel size in mm along each array axis, ``len(spacing) == mask_a.ndim``.

    Returns:
        The distance in mm; NaN if either mask is empty (undefined).
    """
    mask_a, mask_b = _as_mask(mask_a, "mask_a"), _as_mask(mask_b, "mask_b")
    _check_same_shape(mask_a, mask_b, "masks")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != mask_a.ndim:
        raise ValueError("spacing %s has %d values but the masks have rank %d (shape %s)"
                         % (spacing, len(spacing), mask_a.ndim, mask_a.shape))
    if min(spacing) <= 0:
        raise ValueError("spacing must be positive mm per axis, got %s" % (spacing,))
    if not mask_a.any() or not mask_b.any():
        return float("nan")
    surface_a, surface_b = _surface(mask_a), _surface(mask_b)
    # distance_transform_edt measures the distance to the nearest zero, so the other surface is the zeros.
    distance_to_b = ndimage.distance_transform_edt(np.logical_not(surface_b), sampling=spacing)
    distance_to_a = ndimage.distance_transform_edt(np.logical_not(surface_a), sampling=spacing)
    pooled = np.concatenate([distance_to_b[surface_a], distance_to_a[surface_b]])
    return float(np.percentile(pooled, 95))


def hd95_per_structure(labels_a, labels_b, label_values, spacing):
    """HD95 in mm of each named structure (see :func:`hd95`).

    Args:
        labels_a, labels_b: integer label maps of the same shape, any rank.
        label_values: structure name -> integer label, e.g. ``{"LV": 3, "Myo": 2, "RV": 1}`` for ACDC.
        spacing: voxel size in mm along each array axis.

    Returns:
        ``{name: distance in mm or NaN}``, keys in the order of ``label_values``.
    """
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    _check_same_shape(labels_a, labels_b, "label maps")
    return {name: hd95(labels_a == value, labels_b == value, spacing) for name, value in label_values.items()}


def jacobian_determinant(flow):
    """Determinant of the Jacobian of x -> x + u(x) at every voxel.

    Computed by voxelmorph's ``voxelmorph.py.utils.jacobian_determinant`` (``np.gradient``: central
    differences inside, one-sided on the edges of the array).

    Args:
        flow: one 2D or 3D displacement field [*vol, ndim] in voxels, ``ndim == len(vol)``, 'ij' channels,
            at least 2 voxels along each axis.

    Returns:
        float64 array [*vol], unitless (1 = volume preserved, <= 0 = folding).
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim not in (3, 4) or flow.shape[-1] != flow.ndim - 1:
        raise ValueError("flow must be one 2D [H, W, 2] or 3D [D, H, W, 3] displacement field, got shape %s"
                         % (flow.shape,))
    if min(flow.shape[:-1]) < 2:
        raise ValueError("flow needs at least 2 voxels along each spatial axis for finite differences, "
                         "got shape %s" % (flow.shape,))
    # Imported here, not at the top: voxelmorph starts TensorFlow (seconds), which the other metrics never need.
    from voxelmorph.py.utils import jacobian_determinant as vxm_jacobian_determinant
    return vxm_jacobian_determinant(flow)


def negative_jacobian_percent(flow, include_zero=True):
    """NJD: percentage of voxels where the Jacobian determinant of x -> x + u(x) is <= 0 (or < 0).

    Args:
        flow: one field [*vol, ndim] or a batch/stack of fields [N, *vol, ndim] (2D or 3D, in voxels); a
            batch is recognised by ``flow.ndim == flow.shape[-1] + 2``. Each field is differentiated on its
            own (never across the batch axis).
        include_zero: count det <= 0 (True: a collapsed voxel folds too) or only det < 0 (False: the GSMorph
            reference code's count, SimpleITK's determinant below zero).

    Returns:
        ``100 * (#voxels with det <= 0, or < 0) / (#voxels)``, pooled over all voxels of all fields, in
        [0, 100].
    """
    flow = np.asarray(flow)
    if flow.ndim < 3:
        raise ValueError("flow must be [*vol, ndim] or [N, *vol, ndim], got shape %s" % (flow.shape,))
    if flow.ndim == flow.shape[-1] + 2:
        fields = list(flow)
    elif flow.ndim == flow.shape[-1] + 1:
        fields = [flow]
    else:
        raise ValueError("flow must be [*vol, ndim] or [N, *vol, ndim] with ndim = 2 or 3 spatial axes, got "
                         "shape %s (last axis %d does not match the rank)" % (flow.shape, flow.shape[-1]))
    folds = np.less_equal if include_zero else np.less
    folded = sum(int(folds(jacobian_determinant(field), 0).sum()) for field in fields)
    total = sum(int(np.prod(field.shape[:-1])) for field in fields)
    return 100.0 * folded / total


def mse(image_a, image_b):
    """Mean squared intensity difference, averaged over all voxels (and channels) of the two images.

    Args:
        image_a, image_b: intensity arrays of the same shape (e.g. warped moving and fixed, scaled to [0, 1]).

    Returns:
        ``mean((image_a - image_b) ** 2)`` in squared intensity units, computed in float64.
    """
    image_a, image_b = np.asarray(image_a, dtype=np.float64), np.asarray(image_b, dtype=np.float64)
    _check_same_shape(image_a, image_b, "images")
    return float(np.mean((image_a - image_b) ** 2))


def mean_std(values):
    """Mean and population standard deviation (ddof=0) over subjects, ignoring NaNs.

    Args:
        values: a sequence of per-subject scores; NaN marks an undefined score.

    Returns:
        ``(mean, std)`` of the non-NaN values; ``(nan, nan)`` if there are none.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    with np.errstate(invalid="ignore"):  # an inf score (Learn2Reg's HD95 of a vanished label): std NaN
        return float(values.mean()), float(values.std())


#: What Learn2Reg's evaluation adds to every Jacobian determinant before the log (see :func:`sdlogj`).
SDLOGJ_OFFSET = 3.0
#: The range Learn2Reg's evaluation clips the shifted determinant to, so that its log is finite.
SDLOGJ_CLIP = (1e-9, 1e9)
#: Voxels Learn2Reg's evaluation leaves out at each border of every axis (where its finite differences pad).
SDLOGJ_BORDER = 2


def sdlogj(flow, mask=None):
    """SDlogJ: standard deviation of the log Jacobian determinant of x -> x + u(x), as Learn2Reg scores it.

    Learn2Reg's evaluation (``evaluation/evaluation.py`` and ``utils.py`` of github.com/MDL-UzL/L2R, the same
    from 2022 to the 2025 head) computes the determinant ``J`` by central differences, drops
    :data:`SDLOGJ_BORDER` = 2 voxels at each border of every axis, and returns
    ``std(log(clip(J + 3, 1e-9, 1e9)))`` (NumPy's population std) over the voxels left. This function gives
    the same number: ``J`` is :func:`jacobian_determinant` (``np.gradient``, central differences inside the
    volume; on the voxels kept they equal Learn2Reg's, which differ only on the dropped border, zero-padded
    there, one-sided here).

    What is clipped and why: a folding voxel has ``J <= 0`` and its log is undefined. Learn2Reg first adds 3
    (:data:`SDLOGJ_OFFSET`), so folds with ``-3 < J <= 0`` stay finite unclipped; only ``J + 3 <= 1e-9``
    (a voxel turned inside out, ``J <= -3``) is clipped up to ``1e-9`` (log = -20.7): a large but finite
    contribution instead of NaN. The upper clip (``1e9``) only guards against overflow. The shift also
    compresses the scale: near ``J = 1``, ``d log(J + 3) = dJ / 4``, so for smooth fields this SDlogJ is about a
    quarter of ``std(log J)``. The numbers are comparable with Learn2Reg's leaderboards, not with papers that
    report ``std(log J)`` without the shift.

    Args:
        flow: one 2D ``[H, W, 2]`` or 3D ``[D, H, W, 3]`` displacement field in voxels ('ij' channels), at least
            5 voxels along each axis.
        mask: optional array ``[*vol]`` on the field's grid (Learn2Reg's ``masksTr`` of the fixed image): only
            the interior voxels where it equals 1 count, Learn2Reg's rule for its masked tasks (LungCT, NLST,
            AbdomenMRCT); any other value (0, or a label other than 1) leaves the voxel out.

    Returns:
        SDlogJ (unitless, >= 0; 0 for any affine map, whose determinant is constant).

    Raises:
        ValueError: the mask is not shaped like the field's grid, or keeps no interior voxel.
    """
    flow = np.asarray(flow, dtype=np.float64)
    if flow.ndim not in (3, 4) or flow.shape[-1] != flow.ndim - 1:
        raise ValueError("flow must be one 2D [H, W, 2] or 3D [D, H, W, 3] displacement field, got shape %s"
                         % (flow.shape,))
    if min(flow.shape[:-1]) <= 2 * SDLOGJ_BORDER:
        raise ValueError("flow needs more than %d voxels along each axis (SDlogJ drops %d at each border), got "
                         "shape %s" % (2 * SDLOGJ_BORDER, SDLOGJ_BORDER, flow.shape))
    interior = (slice(SDLOGJ_BORDER, -SDLOGJ_BORDER),) * (flow.ndim - 1)
    determinant = jacobian_determinant(flow)[interior]
    if mask is not None:
        mask = np.asarray(mask)
        _check_same_shape(mask, flow[..., 0], "mask and the field's grid")
        determinant = determinant[mask[interior] == 1]
        if determinant.size == 0:
            raise ValueError("the SDlogJ mask keeps no voxel of the interior (values equal to 1, %d voxels in "
                             "from each border)" % SDLOGJ_BORDER)
    return float(np.std(np.log(np.clip(determinant + SDLOGJ_OFFSET, *SDLOGJ_CLIP))))
