"""Applying a saved displacement field to other images and label maps on the same grid (``run_apply.py``).

The field is the one :mod:`gsmorph_tf.register` writes, ``<stem>_flow_vox.nii.gz``: ``[X, Y, Z, 3]`` float,
the displacement ``u`` in voxels along the voxel axes i, j, k of the fixed image's grid (the file's affine), such
that ``warped(x) = input(x + u(x))`` (x in voxel indices), as voxelmorph's transformer and a Learn2Reg
``disp_*.nii.gz``; a 2D model's field has ``u_k = 0``. The input is ``[X, Y, Z]`` on that same grid (the
fixed image's: same shape, affine equal within :data:`AFFINE_TOLERANCE`), e.g. another sequence of the moving
subject resampled to it, or its label map. Interpolation:

``image``
    linear, :func:`gsmorph_tf.core.flows.warp` (voxelmorph's transform); a location outside the volume reads the
    nearest border voxel (``border``, as the networks' moved image). Written as float32.
``labels``, ``onehot`` (the default)
    each label value of the map (background 0 included, a label like any other) becomes a one-hot channel,
    warped with that same linear interpolation; each voxel takes the value whose channel has the largest
    weight (the share of the 2^3 neighbours around ``x + u(x)`` carrying it, by their linear weights), exact
    ties going to the lowest value (background before structures). Only input values occur.
``labels``, ``nearest``
    the value of the voxel nearest ``x + u(x)`` (voxelmorph's nearest: ``tf.round``, halves to even; border).
    This is what ``run_register.py`` writes as ``<stem>_moved_labels.nii.gz``.

Label maps are written in their file's data type. README "Applying a field to other images" has the measured
difference between the two label rules on the phantom.

Against ``run_register.py``'s own outputs: applying a pair's ``flow_vox`` to its moving image scaled as
registration scales it (jointly with the fixed image, :func:`gsmorph_tf.data.preprocessing.scale_to_unit`)
gives its ``moved`` image, and ``--label_interpolation=nearest`` its ``moved_labels``, exactly where the
model's window covers the image. Where the window is smaller, the model warped its crop, whose edge voxel a
location beyond the window reads; here the whole image is read, so the two differ only within ``|u|`` voxels
inside the window's edge.

Every input (field, images, output names) is checked before the first warp; each output is written to a temp
file and renamed (an existing file is replaced), with its header's description set (:data:`DESCRIPTIONS`).
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses
import os

import nibabel as nib
import numpy as np

from gsmorph_tf.core.flows import warp
from gsmorph_tf.data.nifti import DatasetError, load_nifti
from gsmorph_tf.evaluate.evaluation import warp_labels
from gsmorph_tf.fileio import atomic_save_nifti
from gsmorph_tf.register.files import NIFTI_SUFFIXES, OUTPUTS, nifti_stem

__all__ = ["APPLY_KINDS", "Field", "LABEL_INTERPOLATIONS", "apply_field", "load_field", "warp_image",
           "warp_label_map", "warped_path"]

#: What an input is (the caller says; it is never guessed from the file).
APPLY_KINDS = ("image", "labels")
#: Label map interpolation rules (see the module docstring); the first is the default.
LABEL_INTERPOLATIONS = ("onehot", "nearest")
#: Largest difference (per entry, mm) between an input's affine and the field's for one grid.
AFFINE_TOLERANCE = 1e-3
#: Suffix of the output named after an input (:func:`warped_path`).
WARPED_SUFFIX = "_warped.nii.gz"
#: NIfTI description of each output (at most 80 characters), by kind or label rule.
DESCRIPTIONS = {"image": "image warped by a displacement field (linear interpolation, border)",
                "onehot": "labels warped by a displacement field (one-hot linear, argmax)",
                "nearest": "labels warped by a displacement field (nearest neighbour)"}
#: Label channels warped at once by the one-hot rule (memory: this many float32 copies of the volume).
ONEHOT_CHANNELS = 8


@dataclasses.dataclass
class Field:
    """A displacement field read from disk: ``flow [X, Y, Z, 3]`` float32 (voxels along i, j, k), the grid's
    ``affine`` (4 x 4, voxel to world mm) and the file it came from."""
    path: str
    flow: np.ndarray
    affine: np.ndarray


def load_field(path):
    """Read and check a displacement field written by ``run_register.py`` (``<stem>_flow_vox.nii.gz``).

    Raises:
        DatasetError: naming ``path``, if it is missing, corrupt, holds NaN/inf, is not ``[X, Y, Z, 3]``
            (a 5-D ITK/ANTs field in mm is refused with that reason), is stored as integers, or is the same
            field in mm (``<stem>_flow_mm.nii.gz``, recognised by its description).
    """
    flow, _, affine = load_nifti(path)
    expected = "expected a displacement field [X, Y, Z, 3] in voxels (run_register.py's <stem>_flow_vox.nii.gz)"
    if flow.ndim == 5 and flow.shape[3:] == (1, 3):
        raise DatasetError("%s: shape %s is an ITK/ANTs displacement field (physical mm, LPS); %s"
                           % (path, flow.shape, expected))
    if flow.ndim != 4 or flow.shape[-1] != 3:
        raise DatasetError("%s: shape %s; %s" % (path, flow.shape, expected))
    if not np.issubdtype(flow.dtype, np.floating):
        raise DatasetError("%s: stored as %s; %s stored as floating point" % (path, flow.dtype, expected))
    if _description(nib.load(str(path)).header) == OUTPUTS["flow_mm"][1]:
        raise DatasetError("%s: this is the field in mm; %s" % (path, expected))
    return Field(path=str(path), flow=flow, affine=affine)


def _description(header):
    return header["descrip"].item().decode("latin-1").strip()


def _geometry(shape, affine):
    rows = "; ".join(" ".join("%.4g" % value for value in row) for row in np.asarray(affine)[:3])
    return "shape %s, affine [%s]" % (tuple(shape), rows)


def load_on_grid(path, field, kind):
    """Read one input to warp by ``field`` and check it: ``(array [X, Y, Z], header)``.

    Args:
        path: NIfTI file; kind: ``image`` or ``labels`` (see :data:`APPLY_KINDS`).

    Returns:
        The array as :func:`~gsmorph_tf.data.nifti.load_nifti` reads it (float32 images; labels in their
        stored integer type, or float with integer values) and the file's header.

    Raises:
        DatasetError: naming ``path``, if it is missing, corrupt, holds NaN/inf, is not 3-D, is not on the
            field's grid (both geometries named), or is a label map with non-integer values.
    """
    array, _, affine = load_nifti(path)
    if array.ndim != 3:
        raise DatasetError("%s: shape %s; expected a 3-D %s [X, Y, Z] on the grid of the field %s"
                           % (path, array.shape, "label map" if kind == "labels" else "image", field.path))
    if array.shape != field.flow.shape[:3] or not np.allclose(affine, field.affine, rtol=0, atol=AFFINE_TOLERANCE):
        raise DatasetError("%s: %s is not the grid of the field %s (%s); expected the same shape and affine "
                           "(within %g mm): resample the image to the fixed image's grid first"
                           % (path, _geometry(array.shape, affine), field.path,
                              _geometry(field.flow.shape[:3], field.affine), AFFINE_TOLERANCE))
    if kind == "labels" and np.issubdtype(array.dtype, np.floating) and not np.all(array == np.rint(array)):
        raise DatasetError("%s: label map holds non-integer values; expected integer labels (warp an image "
                           "with kind image)" % path)
    return array, nib.load(str(path)).header


def warp_image(image, flow):
    """``image [*vol]`` warped by ``flow [*vol, ndim]`` (voxels): linear, border; float32 ``[*vol]``."""
    image = np.asarray(image, np.float32)[None, ..., None]
    return warp(image, np.asarray(flow, np.float32)[None]).numpy()[0, ..., 0]


def warp_label_map(labels, flow, interpolation="onehot"):
    """Integer label map ``labels [*vol]`` warped by ``flow [*vol, ndim]`` (voxels), by ``interpolation``
    (``onehot`` or ``nearest``, see the module docstring). Returns ``[*vol]`` in the dtype of ``labels``,
    holding only values of ``labels``."""
    if interpolation not in LABEL_INTERPOLATIONS:
        raise ValueError("unknown label interpolation %r; valid: %s" % (interpolation, ", ".join(LABEL_INTERPOLATIONS)))
    labels = np.asarray(labels)
    values, index = np.unique(labels, return_inverse=True)  # warp indices into values: exact for any integer
    index = index.reshape(labels.shape).astype(np.int32)
    flow = np.asarray(flow, np.float32)
    if interpolation == "nearest":
        return values[warp_labels(index[None], flow[None])[0]]
    best = np.full(labels.shape, -1.0, np.float32)
    chosen = np.zeros(labels.shape, np.int64)
    for start in range(0, len(values), ONEHOT_CHANNELS):
        channels = np.arange(start, min(start + ONEHOT_CHANNELS, len(values)))
        weights = warp((index[..., None] == channels).astype(np.float32)[None], flow[None]).numpy()[0]
        top = np.argmax(weights, axis=-1)  # the first of equal weights: the lower value
        weight = np.take_along_axis(weights, top[..., None], axis=-1)[..., 0]
        better = weight > best  # strictly: an earlier (lower) value keeps a tie
        chosen[better] = channels[top[better]]
        best[better] = weight[better]
    return values[chosen]


def warped_path(output_dir, input_path):
    """``<output_dir>/<stem>_warped.nii.gz`` for ``input_path`` (stem: its name without ``.nii[.gz]``)."""
    return os.path.join(output_dir, nifti_stem(input_path) + WARPED_SUFFIX)


def _check_outputs(field_path, input_paths, output_paths):
    if len(output_paths) != len(input_paths):
        raise ValueError("%d output paths for %d inputs" % (len(output_paths), len(input_paths)))
    read = {os.path.realpath(path): path for path in [field_path, *input_paths]}
    seen = {}
    for source, path in zip(input_paths, output_paths):
        if not str(path).endswith(NIFTI_SUFFIXES):
            raise DatasetError("%s: output name must end with .nii.gz or .nii" % path)
        real = os.path.realpath(path)
        if real in read:
            raise DatasetError("%s: output would overwrite the input %s; choose another output" % (path, read[real]))
        if real in seen:
            raise DatasetError("%s: output of both %s and %s; expected one output per input (inputs with one "
                               "file name need separate output folders)" % (path, seen[real], source))
        seen[real] = source


def apply_field(field_path, input_paths, output_paths, kind, label_interpolation="onehot"):
    """Warp each of ``input_paths`` by the field in ``field_path`` and write it to the matching output path.

    Args:
        field_path: a displacement field, :func:`load_field`.
        input_paths: NIfTI files on the field's grid, all of ``kind`` (``image`` or ``labels``).
        output_paths: one ``.nii.gz``/``.nii`` path per input (e.g. :func:`warped_path`); an existing file is
            replaced, its folder created if needed.
        label_interpolation: ``onehot`` or ``nearest``, for labels.

    Returns:
        The output paths written, in order.

    Raises:
        DatasetError: naming the file, for a bad field or input (:func:`load_field`, :func:`load_on_grid`), or
            an output that is an input, is shared by two inputs or is not NIfTI; raised before anything is
            written.
    """
    if kind not in APPLY_KINDS:
        raise ValueError("unknown kind %r; valid: %s" % (kind, ", ".join(APPLY_KINDS)))
    if label_interpolation not in LABEL_INTERPOLATIONS:
        raise ValueError("unknown label interpolation %r; valid: %s"
                         % (label_interpolation, ", ".join(LABEL_INTERPOLATIONS)))
    field = load_field(field_path)
    _check_outputs(field_path, input_paths, output_paths)
    for path in input_paths:
        load_on_grid(path, field, kind)  # validate only; read again below, one input in memory at a time
    for path, output in zip(input_paths, output_paths):
        array, header = load_on_grid(path, field, kind)
        if kind == "image":
            data, dtype, description = warp_image(array, field.flow), np.float32, DESCRIPTIONS["image"]
        else:
            dtype = header.get_data_dtype()
            data = warp_label_map(array, field.flow, label_interpolation).astype(dtype)
            description = DESCRIPTIONS[label_interpolation]
        image = nib.Nifti1Image(data, field.affine, header=header.copy())
        image.set_data_dtype(dtype)
        image.header.set_slope_inter(None, None)  # the values are written as they are
        image.header["descrip"] = description
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        atomic_save_nifti(image, output)
    return list(output_paths)
