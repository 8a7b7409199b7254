"""The files Learn2Reg's evaluation reads beside a pair's images: the fixed image's mask and the pair's
corresponding points.

Learn2Reg (MDL-UzL/L2R ``evaluation/evaluation.py``) finds them by replacing ``images`` in an image's path:
``./imagesTr/NLST_0101_0000.nii.gz`` has its mask in ``./masksTr/NLST_0101_0000.nii.gz`` (masked tasks: LungCT,
NLST, AbdomenMRCT; SDlogJ then counts the voxels equal to 1) and its points in
``./keypointsTr/NLST_0101_0000.csv`` (or ``landmarksTr/``, the folder an evaluation method names): one point a
line, ``x,y,z`` voxel coordinates along the array axes, the i-th line of the fixed file corresponding to the
i-th of the moving file. For a pair of two modalities other than ``_0000`` (fixed) and ``_0001`` (moving) the
folder gets both modality numbers, low first (``keypoints00000002Tr/``).

NumPy and nibabel only.
"""
import pathlib

import numpy as np

from gsmorph_tf.data.nifti import load_nifti, read_nifti_header
from gsmorph_tf.errors import DatasetError


def companion_path(image, folder, suffix=None):
    """The file of ``folder`` that goes with ``image``: ``images`` in the image's folder name replaced by
    ``folder`` (``imagesTr`` -> ``masksTr``), the name kept, or its ``.nii.gz`` / ``.nii`` replaced by ``suffix``.

    Raises:
        DatasetError: naming ``image``, when its folder name has no ``images`` in it.
    """
    image = pathlib.Path(image)
    if "images" not in image.parent.name:
        raise DatasetError(f"{image}: not in an images folder (imagesTr/, imagesTs/), so Learn2Reg's {folder} "
                           f"file for it cannot be named")
    name = image.name
    if suffix is not None:
        for extension in (".nii.gz", ".nii"):
            if name.endswith(extension):
                name = name[:-len(extension)] + suffix
                break
    return image.parent.parent / image.parent.name.replace("images", folder) / name


def read_fixed_mask(fixed_scan):
    """The fixed image's mask (``masksTr/``) as Learn2Reg's SDlogJ uses it.

    Returns:
        ``[D, H, W]`` bool, True where the stored value is 1.

    Raises:
        DatasetError: naming the mask file: missing (Learn2Reg would print a note and score without a mask;
            here it stops before any registration), unreadable, or not shaped like the image.
    """
    path = companion_path(fixed_scan.image, "masks")
    if not path.exists():
        raise DatasetError(f"{path}: no mask for the fixed image {fixed_scan.image} (expected beside imagesTr/ in "
                           f"masksTr/, as Learn2Reg's masked tasks ship them)")
    mask, _, _ = load_nifti(path, expected_ndim=3)
    shape, _ = read_nifti_header(fixed_scan.image)
    if mask.shape != tuple(shape[:3]):
        raise DatasetError(f"{path}: mask has shape {mask.shape}, expected the shape of {fixed_scan.image} "
                           f"{tuple(shape[:3])}")
    return mask == 1


def points_folder(fixed_stem, moving_stem, kind="keypoints"):
    """Learn2Reg's folder prefix for a pair's points: ``kind``, followed by both modality numbers (low first)
    unless the two scans share one or are ``_0000`` (fixed) and ``_0001`` (moving)."""
    fixed_modality, moving_modality = fixed_stem[-4:], moving_stem[-4:]
    if fixed_modality == moving_modality or (fixed_modality, moving_modality) == ("0000", "0001"):
        return kind
    return kind + min(fixed_modality, moving_modality) + max(fixed_modality, moving_modality)


def _read_points(path):
    if not path.exists():
        raise DatasetError(f"{path}: missing (expected a CSV of x,y,z voxel coordinates, one point a line)")
    try:
        points = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError as error:
        raise DatasetError(f"{path}: not a CSV of numbers ({error})") from None
    if points.shape[1] != 3 or not np.isfinite(points).all():
        raise DatasetError(f"{path}: expected finite x,y,z voxel coordinates (3 columns), got shape {points.shape}")
    return points


def read_pair_points(moving_scan, fixed_scan, kind="keypoints"):
    """A pair's corresponding points and the moving image's spacing, for Learn2Reg's TRE.

    Args:
        moving_scan, fixed_scan: :class:`~gsmorph_tf.data.learn2reg.Scan` of the pair.
        kind: ``keypoints`` or ``landmarks`` (the folder an evaluation method names, ``dest`` in its config).

    Returns:
        ``(fixed_points [N, 3], moving_points [N, 3], spacing_moving)``: voxel coordinates (float64) and the moving
        image's voxel size in mm from its header.

    Raises:
        DatasetError: naming the file: missing, not a 3-column CSV, or the two files of unequal length.
    """
    prefix = points_folder(fixed_scan.stem, moving_scan.stem, kind)
    paths = [companion_path(scan.image, prefix, ".csv") for scan in (fixed_scan, moving_scan)]
    fixed_points, moving_points = (_read_points(path) for path in paths)
    if fixed_points.shape != moving_points.shape:
        raise DatasetError(f"{paths[0]} has {len(fixed_points)} points but {paths[1]} has {len(moving_points)}: "
                           f"the i-th lines must correspond")
    _, zooms = read_nifti_header(moving_scan.image)
    return fixed_points, moving_points, tuple(float(z) for z in zooms[:3])
