"""Reading a pair of NIfTI files for a model (validated before anything runs) and writing its outputs.

See :mod:`gsmorph_tf.register` for the files written and their layout.
"""
import dataclasses
import os

import nibabel as nib
import numpy as np

from gsmorph_tf.data.nifti import DatasetError, load_nifti


#: Output files of one pair: key -> (file-name suffix, NIfTI description, at most 80 characters).
OUTPUTS = {
    "moved": ("_moved.nii.gz", "moved image, [0,1] units (moving/fixed scaled jointly)"),
    "flow_vox": ("_flow_vox.nii.gz", "displacement u, voxels, last axis: voxel axes i,j,k; moved(x)=moving(x+u(x))"),
    "flow_mm": ("_flow_mm.nii.gz", "displacement u, mm, last axis: voxel axes i,j,k (not world axes)"),
    "moved_labels": ("_moved_labels.nii.gz", "moving labels warped (nearest neighbour)"),
}


NIFTI_SUFFIXES = (".nii.gz", ".nii")


@dataclasses.dataclass
class PairInputs:
    """A validated pair as read from disk: arrays ``[X, Y, Z]``, the fixed image's geometry, the centre given
    (voxels, or None: placed by a rule when registering)."""
    moving: np.ndarray
    fixed: np.ndarray
    moving_labels: np.ndarray | None
    zooms: tuple
    affine: np.ndarray
    header: nib.Nifti1Header
    center: tuple


def nifti_stem(path):
    """File name without ``.nii.gz`` / ``.nii``: ``case01_ES.nii.gz`` -> ``case01_ES``."""
    name = os.path.basename(path)
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[:-len(suffix)]
    return name


def load_pair(model, moving_path, fixed_path, moving_labels_path=None, center=None):
    """Read and validate one pair for ``model`` before anything is registered or written.

    Args:
        model: :class:`RegistrationModel` (its dimension decides what a valid image is).
        moving_path, fixed_path: NIfTI files, ``X x Y x Z``, one shape and voxel size.
        moving_labels_path: optional integer label map of the moving image, same shape.
        center: window centre in voxels, ``ndim`` values inside the image; None: placed when registering.

    Returns:
        :class:`PairInputs`.

    Raises:
        DatasetError: naming the file, if it is missing, corrupt, holds NaN/inf voxels, is not 3-D (e.g. a
            4-D cine), has a singleton axis for a 3D model, differs from its partner in shape or voxel
            size, holds non-integer labels, or ``center`` does not fit the image.
    """
    kind = ("X x Y x Z short-axis stack (slices along the last axis) for this 2D model"
            if model.ndim == 2 else "X x Y x Z volume for this 3D model")
    arrays = {}
    for role, path in (("moving", moving_path), ("fixed", fixed_path), ("labels", moving_labels_path)):
        if path is None:
            continue
        array, zooms, affine = load_nifti(path)
        if array.ndim != 3:
            raise DatasetError("%s: expected a 3-D %s (%s, input %s), got shape %s"
                               % (path, kind, model.path, model.inshape, array.shape))
        if model.ndim == 3 and min(array.shape) == 1:
            raise DatasetError("%s: shape %s has a single slice; the 3D model %s needs a volume (use a 2D "
                               "model for slices)" % (path, array.shape, model.path))
        arrays[role] = (path, array, zooms, affine)
    fixed_path, fixed, fixed_zooms, fixed_affine = arrays["fixed"]
    for role in ("moving", "labels"):
        if role not in arrays:
            continue
        path, array, zooms, _ = arrays[role]
        if array.shape != fixed.shape:
            raise DatasetError("%s: shape %s differs from the fixed image %s %s; expected one grid"
                               % (path, array.shape, fixed_path, fixed.shape))
        if role == "moving" and not np.allclose(zooms, fixed_zooms, atol=1e-3):
            raise DatasetError("%s: voxel size %s mm differs from the fixed image %s (%s mm); expected one grid"
                               % (path, zooms, fixed_path, fixed_zooms))
    labels = None
    if "labels" in arrays:
        path, labels, _, _ = arrays["labels"]
        if np.issubdtype(labels.dtype, np.floating):
            if not np.all(labels == np.rint(labels)):
                raise DatasetError("%s: label map holds non-integer values; expected integer labels" % path)
            labels = labels.astype(np.int32)
    if center is not None:
        center = tuple(float(c) for c in center)
    if center is not None and (len(center) != model.ndim
                               or not all(0 <= c <= s - 1 for c, s in zip(center, fixed.shape))):
        raise DatasetError("center %s does not fit %s of shape %s: expected %d voxel coordinates inside the "
                           "image for this %dD model" % (center, fixed_path, fixed.shape, model.ndim, model.ndim))
    return PairInputs(moving=arrays["moving"][1], fixed=fixed, moving_labels=labels, zooms=fixed_zooms,
                      affine=fixed_affine, header=nib.load(str(fixed_path)).header, center=center)


def output_paths(output_dir, stem, with_labels):
    """``{key: path}`` of the files one pair writes (keys of :data:`OUTPUTS`)."""
    keys = [key for key in OUTPUTS if with_labels or key != "moved_labels"]
    return {key: os.path.join(output_dir, stem + OUTPUTS[key][0]) for key in keys}


def _nifti(data, inputs, key, dtype):
    image = nib.Nifti1Image(data, inputs.affine, header=inputs.header.copy())
    image.set_data_dtype(dtype)  # not the fixed image's type: a float field in int16 would be quantised
    image.header["descrip"] = OUTPUTS[key][1]
    return image


def write_registration(result, inputs, output_dir, stem):
    """Write one pair's outputs on the fixed grid (see the module docstring); returns ``{key: path}``.

    All files go to temp names first and are renamed only once every one is written.
    """
    paths = output_paths(output_dir, stem, result.moved_labels is not None)
    flow_mm = result.flow_voxels * np.asarray(inputs.zooms[:3], np.float32)
    images = {"moved": _nifti(result.moved, inputs, "moved", np.float32),
              "flow_vox": _nifti(result.flow_voxels, inputs, "flow_vox", np.float32),
              "flow_mm": _nifti(flow_mm.astype(np.float32), inputs, "flow_mm", np.float32)}
    if result.moved_labels is not None:
        images["moved_labels"] = _nifti(result.moved_labels, inputs, "moved_labels", result.moved_labels.dtype)
    os.makedirs(output_dir, exist_ok=True)
    temps = {key: os.path.join(output_dir, ".%s.tmp-%d.nii.gz" % (os.path.basename(path), os.getpid()))
             for key, path in paths.items()}
    try:
        for key, image in images.items():
            nib.save(image, temps[key])
        for key, path in paths.items():
            os.replace(temps[key], path)
    finally:
        for temp in temps.values():
            if os.path.exists(temp):
                os.remove(temp)
    return paths
