"""Reading a pair of NIfTI files for a model (validated before anything runs, the moving image resampled into
the fixed image's space when it lies on another grid) and writing its outputs.

See :mod:`gsmorph_tf.register` for the files written and their layout.
"""
import dataclasses
import os

import nibabel as nib
import numpy as np

from gsmorph_tf.data.nifti import DatasetError, load_nifti
from gsmorph_tf.register.world import (Grid, displacement_field_transform, itk_field_nifti, resample_to,
                                      save_transform)


#: NIfTI output files of one pair: key -> (file-name suffix, NIfTI description, at most 80 characters).
OUTPUTS = {
    "moved": ("_moved.nii.gz", "moved image, [0,1] units (moving/fixed scaled jointly)"),
    "flow_vox": ("_flow_vox.nii.gz", "displacement u, voxels, last axis: voxel axes i,j,k; moved(x)=moving(x+u(x))"),
    "flow_mm": ("_flow_mm.nii.gz", "displacement u, mm, last axis: voxel axes i,j,k (not world axes)"),
    "flow_itk": ("_flow_itk.nii.gz", "ITK/ANTs displacement field: mm, LPS world vectors, fixed->moving"),
    "moved_labels": ("_moved_labels.nii.gz", "moving labels warped (nearest neighbour)"),
}

#: File-name suffix of the ITK transform file (HDF5, a DisplacementFieldTransform), written on request.
TRANSFORM_SUFFIX = "_transform.h5"

NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclasses.dataclass
class PairInputs:
    """A validated pair as read from disk, on the fixed grid: arrays ``[X, Y, Z]`` (the moving image and labels
    resampled there if they were on another grid), the fixed image's geometry, the centre given (voxels, or
    None: placed by a rule when registering), and ``resampled``: the line saying how the moving image was
    resampled (None when it was already on the fixed grid)."""
    moving: np.ndarray
    fixed: np.ndarray
    moving_labels: np.ndarray | None
    zooms: tuple
    affine: np.ndarray
    header: nib.Nifti1Header
    center: tuple
    resampled: str | None = None


def nifti_stem(path):
    """File name without ``.nii.gz`` / ``.nii``: ``case01_ES.nii.gz`` -> ``case01_ES``."""
    name = os.path.basename(path)
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def check_pair(model, moving_path, fixed_path, moving_labels_path=None, center=None):
    """Read and validate one pair for ``model``, leaving every array on its own grid (see :func:`load_pair`).

    Returns:
        ``(arrays, center)``: ``arrays`` maps ``moving``, ``fixed`` and (if given) ``labels`` to ``(path, array,
        grid)`` (:class:`~gsmorph_tf.register.world.Grid`), labels as integers; ``center`` as floats or None.

    Raises:
        DatasetError: as :func:`load_pair`.
    """
    kind = ("X x Y x Z short-axis stack (slices along the last axis) for this 2D model"
            if model.ndim == 2 else "X x Y x Z volume for this 3D model")
    arrays = {}
    for role, path in (("moving", moving_path), ("fixed", fixed_path), ("labels", moving_labels_path)):
        if path is None:
            continue
        array, _, affine = load_nifti(path)
        if array.ndim != 3:
            raise DatasetError("%s: expected a 3-D %s (%s, input %s), got shape %s"
                               % (path, kind, model.path, model.inshape, array.shape))
        if model.ndim == 3 and min(array.shape) == 1:
            raise DatasetError("%s: shape %s has a single slice; the 3D model %s needs a volume (use a 2D "
                               "model for slices)" % (path, array.shape, model.path))
        arrays[role] = (path, array, Grid(array.shape, affine))
    (fixed_path, fixed, fixed_grid), (moving_path, _, moving_grid) = arrays["fixed"], arrays["moving"]
    if not moving_grid.overlaps(fixed_grid):
        raise DatasetError("%s (%s) and the fixed image %s (%s) do not overlap in world space; expected two images "
                           "of the same anatomy (check their affines)"
                           % (moving_path, moving_grid.describe(box=True), fixed_path, fixed_grid.describe(box=True)))
    if "labels" in arrays:
        path, labels, grid = arrays["labels"]
        if not grid.same_as(moving_grid):
            raise DatasetError("%s: label map grid (%s) differs from the moving image %s (%s); expected the moving "
                               "image's grid" % (path, grid.describe(), moving_path, moving_grid.describe()))
        if np.issubdtype(labels.dtype, np.floating):
            if not np.all(labels == np.rint(labels)):
                raise DatasetError("%s: label map holds non-integer values; expected integer labels" % path)
            arrays["labels"] = (path, labels.astype(np.int32), grid)
    if center is not None:
        center = tuple(float(c) for c in center)
    if center is not None and (len(center) != model.ndim
                               or not all(0 <= c <= s - 1 for c, s in zip(center, fixed.shape))):
        raise DatasetError("center %s does not fit %s of shape %s: expected %d voxel coordinates inside the "
                           "image for this %dD model" % (center, fixed_path, fixed.shape, model.ndim, model.ndim))
    return arrays, center


def load_pair(model, moving_path, fixed_path, moving_labels_path=None, center=None):
    """Read and validate one pair for ``model`` before anything is registered or written, and bring the moving
    image onto the fixed grid.

    A moving image on another grid than the fixed one (other shape, voxel size, orientation or position) is
    resampled into the fixed image's space by the two affines (:func:`~gsmorph_tf.register.world.resample_to`):
    linearly, with the moving image's minimum where the fixed grid leaves it; its labels by nearest neighbour,
    0 outside. :attr:`PairInputs.resampled` then says so, naming both geometries.

    Args:
        model: :class:`RegistrationModel` (its dimension decides what a valid image is).
        moving_path, fixed_path: NIfTI files, ``X x Y x Z``, grids whose world bounding boxes overlap.
        moving_labels_path: optional integer label map of the moving image, on the moving image's grid.
        center: window centre in voxels of the fixed grid, ``ndim`` values inside the image; None: placed when
            registering.

    Returns:
        :class:`PairInputs`.

    Raises:
        DatasetError: naming the file, if it is missing, corrupt, holds NaN/inf voxels, is not 3-D (e.g. a
            4-D cine), has a singleton axis for a 3D model, holds non-integer labels or labels on another
            grid than the moving image; naming both files and geometries if the moving and fixed images do
            not overlap in world space; or if ``center`` does not fit the image.
    """
    arrays, center = check_pair(model, moving_path, fixed_path, moving_labels_path, center)
    fixed_path, fixed, fixed_grid = arrays["fixed"]
    moving_path, moving, moving_grid = arrays["moving"]
    labels = arrays["labels"][1] if "labels" in arrays else None
    resampled = None
    if not moving_grid.same_as(fixed_grid):
        moving = resample_to(moving, moving_grid, fixed_grid, order=1, cval=float(moving.min()))
        if labels is not None:
            labels = resample_to(labels, moving_grid, fixed_grid, order=0)
        resampled = ("%s (%s) resampled into the space of the fixed image %s (%s): linear%s"
                     % (moving_path, moving_grid.describe(), fixed_path, fixed_grid.describe(),
                        ", labels nearest neighbour" if labels is not None else ""))
    image = nib.load(str(fixed_path))
    zooms = tuple(float(z) for z in image.header.get_zooms()[:3])  # the header's voxel size, as before
    return PairInputs(moving=moving, fixed=fixed, moving_labels=labels, zooms=zooms,
                      affine=fixed_grid.affine, header=image.header, center=center, resampled=resampled)


def output_paths(output_dir, stem, with_labels, with_transform=False):
    """``{key: path}`` of the files one pair writes (keys of :data:`OUTPUTS`, and ``transform``)."""
    keys = [key for key in OUTPUTS if with_labels or key != "moved_labels"]
    paths = {key: os.path.join(output_dir, stem + OUTPUTS[key][0]) for key in keys}
    if with_transform:
        paths["transform"] = os.path.join(output_dir, stem + TRANSFORM_SUFFIX)
    return paths


def _nifti(data, inputs, key, dtype):
    image = nib.Nifti1Image(data, inputs.affine, header=inputs.header.copy())
    image.set_data_dtype(dtype)  # not the fixed image's type: a float field in int16 would be quantised
    image.header["descrip"] = OUTPUTS[key][1]
    return image


def write_registration(result, inputs, output_dir, stem, itk_transform=False):
    """Write one pair's outputs on the fixed grid (see the module docstring); returns ``{key: path}``.

    ``itk_transform``: also write ``<stem>_transform.h5``, the field as an ITK ``DisplacementFieldTransform``
    (needs SimpleITK, the ``baselines`` extra). All files go to temp names first (ending like the file, as
    SimpleITK picks the format by extension) and are renamed only once every one is written.
    """
    paths = output_paths(output_dir, stem, result.moved_labels is not None, itk_transform)
    flow_mm = result.flow_voxels * np.asarray(inputs.zooms[:3], np.float32)
    flow_itk = itk_field_nifti(result.flow_voxels, inputs.affine, inputs.header)
    flow_itk.header["descrip"] = OUTPUTS["flow_itk"][1]
    images = {"moved": _nifti(result.moved, inputs, "moved", np.float32),
              "flow_vox": _nifti(result.flow_voxels, inputs, "flow_vox", np.float32),
              "flow_mm": _nifti(flow_mm.astype(np.float32), inputs, "flow_mm", np.float32),
              "flow_itk": flow_itk}
    if result.moved_labels is not None:
        images["moved_labels"] = _nifti(result.moved_labels, inputs, "moved_labels", result.moved_labels.dtype)
    transform = displacement_field_transform(result.flow_voxels, inputs.affine) if itk_transform else None
    os.makedirs(output_dir, exist_ok=True)
    temps = {key: os.path.join(output_dir, ".%s.tmp-%d%s" % (os.path.basename(path), os.getpid(),
                                                             ".h5" if key == "transform" else ".nii.gz"))
             for key, path in paths.items()}
    try:
        for key, image in images.items():
            nib.save(image, temps[key])
        if transform is not None:
            save_transform(transform, temps["transform"])
        for key, path in paths.items():
            os.replace(temps[key], path)
    finally:
        for temp in temps.values():
            if os.path.exists(temp):
                os.remove(temp)
    return paths
