"""Registration scores as the Learn2Reg challenge computes them (the ``learn2reg`` metric set).

Learn2Reg's evaluation code (``evaluation/evaluation.py`` and ``utils.py`` of github.com/MDL-UzL/L2R, checked
at commit :data:`L2R_COMMIT`) scores a submitted displacement field per pair, then aggregates over pairs. This
module gives the same numbers from our own code (checked against their code by
``benchmarks/learn2reg_official_scores.py`` and ``tests/evaluate/test_learn2reg_metrics.py``). Conventions, theirs:

- a displacement field ``disp`` has shape ``[D, H, W, 3]``, in voxels, channel k along array axis k, on the
  fixed image's grid, mapping a fixed voxel ``x`` to the moving voxel ``x + disp(x)``;
- label maps are integer (or integer-valued) arrays ``[D, H, W]``; landmarks are ``[N, 3]`` voxel coordinates
  (array axis order), the fixed ones on the fixed grid, the moving ones on the moving grid;
- the moving labels are warped by nearest neighbour (``scipy.ndimage.map_coordinates``, ``order=0``) with
  label 0 outside the volume.

Per pair (:func:`pair_scores`): Dice per label (:func:`dice_per_label`) and HD95 per label (:func:`hd95`, in
voxels, by the surface-distance method), each NaN when the label is missing from the fixed or the original
moving label map, with their NaN-ignoring mean; SDlogJ (:func:`gsmorph_tf.evaluate.metrics.sdlogj`, optionally inside
a mask); TRE (:func:`tre`, mm). Over pairs (:func:`aggregate`): mean, std and Learn2Reg's "30" column.

How this differs from our default metrics (:mod:`gsmorph_tf.evaluate.metrics`): our HD95 is medpy's (surface voxels,
both directions pooled, 95th percentile, in mm with the real spacing, NaN when a mask is empty); theirs is
the surface-distance package's (surface elements at voxel corners weighted by their area, a 95th percentile
per direction and the larger of the two, in voxels, inf when the warped label vanished). Our Dice is in %
and NaN only when a structure is absent from both maps; theirs is a fraction, NaN when the label is missing
from the fixed or the original moving map. Our labels are warped by voxelmorph's transformer (edge values
outside the volume), theirs with 0 outside. SDlogJ is the same function.

Not reproduced: their per-pair ``num_foldings`` (it counts ``clip(J + 3, 1e-9, 1e9) <= 0``, always 0). Fields
are taken in float64, as their code reads a ``.nii.gz`` submission (``get_fdata``); a ``.npz`` one they keep in
float32, so their SDlogJ of it can differ from ours in the 7th digit.
"""
import json
import os

import numpy as np
from scipy import ndimage

from gsmorph_tf.evaluate import metrics

#: The MDL-UzL/L2R commit whose ``evaluation/`` this module reproduces.
L2R_COMMIT = "88475095e35442087a24439ff34ec09f54bc7dac"

#: The percentile of Learn2Reg's HD95.
HD95_PERCENT = 95.0

#: The quantile Learn2Reg reports in its "30" column: 0.3 where higher is better (Dice) and 0.7 where lower
#: is better (SDlogJ, TRE): the score that 30 % of the pairs do worse than. HD95, lower is better, also gets
#: 0.3 in their code (so its "30" column is the score 30 % of the pairs do *better* than); reproduced as is.
AGGREGATE_QUANTILE = {"dice": 0.3, "hd95": 0.3, "sdlogj": 0.7, "tre": 0.7}

#: JSON file holding the area (in voxel faces, unit spacing) of the surface inside each of the 256
#: possible 2x2x2 neighbourhoods, indexed by :func:`_neighbour_codes`'s code. The numbers are those of the
#: surface-distance package (google-deepmind/surface-distance, Apache-2.0, as vendored by Learn2Reg):
#: ``create_table_neighbour_code_to_surface_area(np.ones(3))`` (marching-cubes triangles through the edge
#: midpoints, each counted by its area), written out by ``benchmarks/learn2reg_official_scores.py``.
SURFEL_AREAS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "learn2reg_surfel_areas.json")

_surfel_areas = None


def surfel_areas():
    """The 256 surface-element areas (float64, unit spacing) of :data:`SURFEL_AREAS_FILE`, read once."""
    global _surfel_areas
    if _surfel_areas is None:
        with open(SURFEL_AREAS_FILE, encoding="utf-8") as f:
            areas = np.asarray(json.load(f)["areas"], dtype=np.float64)
        if areas.shape != (256,):
            raise ValueError("%s: expected 256 surface-element areas, got shape %s" % (SURFEL_AREAS_FILE, areas.shape))
        _surfel_areas = areas
    return _surfel_areas


def _check_disp(disp, shape, what="disp"):
    disp = np.asarray(disp, dtype=np.float64)
    if disp.shape != tuple(shape) + (3,):
        raise ValueError("%s must be a displacement field [D, H, W, 3] on the fixed grid %s, got shape %s"
                         % (what, tuple(shape), disp.shape))
    return disp


def warp_labels(moving_labels, disp):
    """The moving label map resampled on the fixed grid, as Learn2Reg does it.

    Args:
        moving_labels: ``[D, H, W]`` label map of the moving image (any numeric dtype).
        disp: ``[D, H, W, 3]`` displacement in voxels on the fixed grid (fixed ``x`` -> moving ``x + disp(x)``).

    Returns:
        ``[D, H, W]`` labels, same dtype as ``moving_labels``: the moving label nearest to ``x + disp(x)``
        (``scipy.ndimage.map_coordinates`` with ``order=0``), 0 where that point lies outside the volume.
    """
    moving_labels = np.asarray(moving_labels)
    disp = _check_disp(disp, moving_labels.shape)
    coordinates = np.indices(moving_labels.shape, dtype=np.float64) + np.moveaxis(disp, -1, 0)
    return ndimage.map_coordinates(moving_labels, coordinates, order=0, mode="constant", cval=0)


def _scored(fixed_labels, moving_labels, label):
    """Learn2Reg scores a label only where it is in the fixed and in the original (unwarped) moving map."""
    return bool((fixed_labels == label).any()) and bool((moving_labels == label).any())


def dice_per_label(fixed_labels, moving_labels, warped_labels, labels):
    """Dice of each label between the fixed and the warped moving label map, as Learn2Reg scores it.

    Args:
        fixed_labels, moving_labels, warped_labels: ``[D, H, W]`` label maps (the moving one before warping
            decides which labels are scored).
        labels: the label values to score, in order.

    Returns:
        list of floats: ``2 |F & W| / (|F| + |W|)`` (a fraction), NaN where the label is missing from the
        fixed or the original moving map.
    """
    fixed_labels, warped_labels = np.asarray(fixed_labels), np.asarray(warped_labels)
    scores = []
    for label in labels:
        if not _scored(fixed_labels, moving_labels, label):
            scores.append(float("nan"))
            continue
        fixed_mask, warped_mask = fixed_labels == label, warped_labels == label
        scores.append(float(2 * np.logical_and(fixed_mask, warped_mask).sum()
                            / (fixed_mask.sum() + warped_mask.sum())))
    return scores


def _neighbour_codes(mask, start, stop):
    """The 8-bit code of every 2x2x2 neighbourhood (voxel corner) around ``mask[start:stop]``.

    The box is padded with one background voxel on every side, so the corners run from the one before
    ``start`` to the one after ``stop - 1``: ``stop - start + 1`` per axis. Corner ``c`` sees the voxels
    ``c - 1 + (a, b, d)`` for ``a, b, d`` in {0, 1}; voxel ``(a, b, d)`` of the cube sets bit
    ``7 - (4a + 2b + d)`` (the first voxel is the high bit, the last the low bit), the surface-distance
    package's numbering, which its area table is indexed by.
    """
    box = np.pad(mask[tuple(slice(a, b) for a, b in zip(start, stop))].astype(np.uint16), 1)
    size = tuple(n - 1 for n in box.shape)
    codes = np.zeros(size, dtype=np.uint16)
    for a in (0, 1):
        for b in (0, 1):
            for d in (0, 1):
                codes += box[a:a + size[0], b:b + size[1], d:d + size[2]] << (7 - (4 * a + 2 * b + d))
    return codes


def surface_distances(mask_fixed, mask_warped):
    """Distances between the two masks' surfaces, each surface element with its area (voxel units).

    The surface-distance package's method: a surface element sits at every voxel corner whose 2x2x2
    neighbourhood is partly inside the mask; its area is the marching-cubes surface through that
    neighbourhood (:func:`surfel_areas`); its distance is the Euclidean distance (corner to corner, unit
    spacing) to the nearest surface element of the other mask, inf when the other mask has none.

    Args:
        mask_fixed, mask_warped: boolean ``[D, H, W]`` masks of the same shape.

    Returns:
        ``(distances_fixed, areas_fixed, distances_warped, areas_warped)``, float64 1-D arrays: for every
        surface element of each mask, its distance to the other surface and its area, sorted by distance
        (ties by area). Empty arrays for an empty mask.
    """
    mask_fixed, mask_warped = np.asarray(mask_fixed, dtype=bool), np.asarray(mask_warped, dtype=bool)
    if mask_fixed.shape != mask_warped.shape or mask_fixed.ndim != 3:
        raise ValueError("masks must be two 3D arrays of the same shape, got %s and %s"
                         % (mask_fixed.shape, mask_warped.shape))
    either = np.argwhere(mask_fixed | mask_warped)
    if either.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    start, stop = either.min(axis=0), either.max(axis=0) + 1
    table = surfel_areas()
    codes = [_neighbour_codes(mask, start, stop) for mask in (mask_fixed, mask_warped)]
    surfaces = [(code != 0) & (code != 255) for code in codes]
    # Distance of every corner to the nearest surface element of each mask (zeros of the EDT's input).
    to_surface = [ndimage.distance_transform_edt(~surface, sampling=(1.0, 1.0, 1.0)) if surface.any()
                  else np.full(surface.shape, np.inf) for surface in surfaces]
    out = []
    for own, other in ((0, 1), (1, 0)):
        distances, areas = to_surface[other][surfaces[own]], table[codes[own][surfaces[own]]]
        order = np.lexsort((areas, distances))
        out += [distances[order], areas[order]]
    return tuple(out)


def _area_percentile(distances, areas, percent):
    """The distance below which ``percent`` % of the surface area lies (sorted inputs); inf when empty."""
    if distances.size == 0:
        return np.inf
    cumulative = np.cumsum(areas) / np.sum(areas)
    return float(distances[min(int(np.searchsorted(cumulative, percent / 100.0)), distances.size - 1)])


def hd95(mask_fixed, mask_warped, percent=HD95_PERCENT):
    """Learn2Reg's HD95 between two masks, in voxels (the surface-distance package's robust Hausdorff).

    For each direction (fixed surface to warped surface, and back), the distance below which ``percent`` %
    of the surface *area* lies (surface elements sorted by distance, the first whose cumulative area
    fraction reaches ``percent / 100``); the larger of the two. See :func:`surface_distances`.

    Args:
        mask_fixed, mask_warped: boolean ``[D, H, W]`` masks of the same shape.
        percent: the percentile, 95 for HD95.

    Returns:
        The distance in voxels (unit spacing, whatever the images' spacing); inf when either mask is empty
        (a label that vanished after warping).
    """
    distances_fixed, areas_fixed, distances_warped, areas_warped = surface_distances(mask_fixed, mask_warped)
    return max(_area_percentile(distances_fixed, areas_fixed, percent),
               _area_percentile(distances_warped, areas_warped, percent))


def hd95_per_label(fixed_labels, moving_labels, warped_labels, labels):
    """:func:`hd95` of each label, in voxels; NaN where the label is missing from the fixed or the original
    moving map (arguments as :func:`dice_per_label`), inf where it vanished after warping."""
    fixed_labels, warped_labels = np.asarray(fixed_labels), np.asarray(warped_labels)
    return [hd95(fixed_labels == label, warped_labels == label) if _scored(fixed_labels, moving_labels, label)
            else float("nan") for label in labels]


def tre(fixed_points, moving_points, disp, spacing_moving):
    """Target registration error of each landmark pair, in mm, as Learn2Reg computes it.

    The displacement is sampled at the fixed landmarks by cubic B-spline interpolation
    (``scipy.ndimage.map_coordinates`` defaults: ``order=3``, zero outside the volume), each component on its
    own; the error is ``|(fixed + disp(fixed) - moving) * spacing_moving|``.

    Args:
        fixed_points, moving_points: ``[N, 3]`` voxel coordinates (array axis order) of corresponding
            landmarks in the fixed and the moving image.
        disp: ``[D, H, W, 3]`` displacement in voxels on the fixed grid.
        spacing_moving: the moving image's voxel size in mm along the three array axes.

    Returns:
        ``[N]`` float64, mm.
    """
    fixed_points = np.asarray(fixed_points, dtype=np.float64)
    moving_points = np.asarray(moving_points, dtype=np.float64)
    if fixed_points.ndim != 2 or fixed_points.shape[1] != 3 or moving_points.shape != fixed_points.shape:
        raise ValueError("landmarks must be two [N, 3] arrays of voxel coordinates, got shapes %s and %s"
                         % (fixed_points.shape, moving_points.shape))
    disp = np.asarray(disp, dtype=np.float64)
    if disp.ndim != 4 or disp.shape[-1] != 3:
        raise ValueError("disp must be a displacement field [D, H, W, 3], got shape %s" % (disp.shape,))
    sampled = np.stack([ndimage.map_coordinates(disp[..., k], fixed_points.T, order=3, mode="constant")
                        for k in range(3)], axis=1)
    return np.linalg.norm((fixed_points + sampled - moving_points) * np.asarray(spacing_moving), axis=1)


def pair_scores(fixed_labels, moving_labels, disp, labels=None, mask=None, landmarks=None, spacing_moving=None):
    """All of Learn2Reg's scores of one pair: what its evaluation writes under ``cases``.

    Args:
        fixed_labels, moving_labels: ``[D, H, W]`` label maps (None when the task scores no labels).
        disp: ``[D, H, W, 3]`` displacement in voxels on the fixed grid (fixed -> moving).
        labels: label values scored by Dice and HD95 (None: no Dice, no HD95).
        mask: optional ``[D, H, W]`` mask on the fixed grid: SDlogJ then counts only voxels where it equals 1
            (Learn2Reg's masked tasks: LungCT, NLST, AbdomenMRCT).
        landmarks: optional ``(fixed_points, moving_points)``, ``[N, 3]`` voxel coordinates each, for TRE.
        spacing_moving: the moving image's spacing in mm (required with ``landmarks``).

    Returns:
        ``{"sdlogj": {"mean": s, "detailed": s}, "dice": {"mean": nanmean, "detailed": [per label]},
        "hd95": {...}, "tre": {"mean": mean, "detailed": [per landmark]}}``, the last three only when asked.
    """
    disp = np.asarray(disp, dtype=np.float64)
    value = metrics.sdlogj(disp, mask=mask)
    scores = {"sdlogj": {"mean": value, "detailed": value}}
    if labels is not None:
        fixed_labels, moving_labels = np.asarray(fixed_labels), np.asarray(moving_labels)
        if fixed_labels.shape != moving_labels.shape:
            raise ValueError("fixed and moving label maps must have the same shape, got %s and %s"
                             % (fixed_labels.shape, moving_labels.shape))
        _check_disp(disp, fixed_labels.shape)
        warped = warp_labels(moving_labels, disp)
        for name, per_label in (("dice", dice_per_label), ("hd95", hd95_per_label)):
            detailed = per_label(fixed_labels, moving_labels, warped, labels)
            scores[name] = {"mean": _nanmean(detailed), "detailed": detailed}
    if landmarks is not None:
        if spacing_moving is None:
            raise ValueError("TRE needs spacing_moving (mm per array axis of the moving image)")
        errors = tre(landmarks[0], landmarks[1], disp, spacing_moving)
        scores["tre"] = {"mean": float(errors.mean()), "detailed": errors.tolist()}
    return scores


def _nanmean(values):
    """NumPy's nanmean (NaN when all are NaN, inf when one is inf), without its all-NaN warning."""
    values = np.asarray(values, dtype=np.float64)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def aggregate(case_means, metric):
    """Learn2Reg's aggregate of one metric over pairs.

    Args:
        case_means: the pairs' ``"mean"`` values (:func:`pair_scores`); NaN and inf are kept, as theirs
            (one inf HD95 makes the mean inf).
        metric: ``dice``, ``hd95``, ``sdlogj`` or ``tre`` (chooses the quantile, :data:`AGGREGATE_QUANTILE`).

    Returns:
        ``{"mean": m, "std": s, "30": q}``: NumPy's mean, population std and linear-interpolation quantile.
    """
    if metric not in AGGREGATE_QUANTILE:
        raise ValueError("unknown Learn2Reg metric %r; valid: %s" % (metric, ", ".join(AGGREGATE_QUANTILE)))
    values = np.asarray(case_means, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf inside std and quantile gives NaN, as theirs
        return {"mean": float(values.mean()), "std": float(values.std()),
                "30": float(np.quantile(values, AGGREGATE_QUANTILE[metric]))}
