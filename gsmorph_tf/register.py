"""Register NIfTI images with an exported registration SavedModel (signatures: :mod:`gsmorph_tf.export`).

Preprocessing is training's (:func:`gsmorph_tf.data.pairs.make_pairs`): the whole moving and fixed volumes
are scaled to [0, 1] with one shared range (:func:`~gsmorph_tf.data.pairs.scale_to_unit`), then a window of
the model's input size is cut around a centre (given in voxels, or the image centre ``(X // 2, Y // 2[,
Z // 2])``) with :func:`~gsmorph_tf.data.pairs.crop_or_pad`, zero-padded where it leaves the image.

- 2D models (signature input ``[None, H, W, 1]``, rank read from the SavedModel) register ``X x Y x Z``
  short-axis stacks slice by slice, slices along the last axis: slice z of the moving stack to slice z of
  the fixed stack, the same ``H x W`` window in every slice.
- 3D models (``[None, H, W, D, 1]``) register ``X x Y x Z`` volumes through one ``H x W x D`` window.

Moving and fixed images must have the same shape and voxel size (the network works in voxels). Outputs
cover the fixed image's whole grid, with its affine and header: inside the window the model's result,
outside it the identity (zero displacement, moved = moving, labels unchanged). Files per pair, named after
the moving file's ``<stem>`` (its name without ``.nii``/``.nii.gz``):

``<stem>_moved.nii.gz``
    ``[X, Y, Z]`` float32: the moved image, in the model's [0, 1] units (the pair's shared scaling).
``<stem>_flow_vox.nii.gz``
    ``[X, Y, Z, 3]`` float32: the displacement ``u`` in voxels, components on the last axis along the
    voxel axes i, j, k, such that ``moved(x) = moving(x + u(x))`` (x in voxel indices). 2D models give
    ``u_k = 0`` along the slice axis.
``<stem>_flow_mm.nii.gz``
    the same field in mm: component k times the fixed image's voxel size along axis k. Components follow
    the voxel axes, not world (scanner RAS) axes; rotate by the affine for world coordinates.
``<stem>_moved_labels.nii.gz``
    ``[X, Y, Z]``: the moving label map warped with nearest neighbour (only input values occur), in the
    label file's integer type; written only when moving labels are given.

Each NIfTI header's description states its content. Every input is validated before anything is written
(in folder mode: every pair, before the first registration); each file is written to a temp name and
renamed, so an output is either whole or absent.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses
import os

import nibabel as nib
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from gsmorph_tf.data.nifti import DatasetError, load_nifti
from gsmorph_tf.data.pairs import crop_or_pad, scale_to_unit
from gsmorph_tf.export import SERVING_SIGNATURE, WARP_SIGNATURE, existing_versions

#: Output files of one pair: key -> (file-name suffix, NIfTI description, at most 80 characters).
OUTPUTS = {
    "moved": ("_moved.nii.gz", "moved image, [0,1] units (moving/fixed scaled jointly)"),
    "flow_vox": ("_flow_vox.nii.gz", "displacement u, voxels, last axis: voxel axes i,j,k; moved(x)=moving(x+u(x))"),
    "flow_mm": ("_flow_mm.nii.gz", "displacement u, mm, last axis: voxel axes i,j,k (not world axes)"),
    "moved_labels": ("_moved_labels.nii.gz", "moving labels warped (nearest neighbour)"),
}
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class SavedModelError(ValueError):
    """A SavedModel that is missing, unreadable, or not a registration model; the message names it."""


class RegistrationModel:
    """An exported registration SavedModel, called through its ``serving_default`` and ``warp`` signatures.

    Args:
        export_dir: a version folder (holding ``saved_model.pb``) or a model's base path (its highest
            integer version is used, as TF Serving does).

    Attributes:
        path: the version folder loaded.
        inshape: spatial input shape, e.g. ``(128, 128)``; ndim: 2 or 3.

    Raises:
        SavedModelError: naming ``export_dir``, if no SavedModel is there, it cannot be loaded, or it lacks
            the two signatures with a fixed 2D/3D input shape.
    """

    def __init__(self, export_dir):
        self.path = _resolve_version(export_dir)
        try:
            loaded = tf.saved_model.load(self.path)
        except (OSError, ValueError, DecodeError, tf.errors.OpError) as error:
            raise SavedModelError("%s: cannot load the SavedModel (%s: %s)"
                                  % (self.path, type(error).__name__, error)) from error
        missing = [name for name in (SERVING_SIGNATURE, WARP_SIGNATURE) if name not in loaded.signatures]
        if missing:
            raise SavedModelError("%s: no signature %s; expected a registration model written by "
                                  "run_export.py / gsmorph_tf.export" % (self.path, ", ".join(missing)))
        self._loaded = loaded  # the signatures need their module alive
        self._serve = loaded.signatures[SERVING_SIGNATURE]
        self._warp = loaded.signatures[WARP_SIGNATURE]
        inputs = self._serve.structured_input_signature[1]
        if "moving" not in inputs or "fixed" not in inputs:
            raise SavedModelError("%s: serving_default takes %s; expected inputs moving and fixed"
                                  % (self.path, sorted(inputs)))
        shape = inputs["moving"].shape
        self.inshape = tuple(shape[1:-1])
        self.ndim = len(self.inshape)
        if self.ndim not in (2, 3) or None in self.inshape:
            raise SavedModelError("%s: serving_default input moving has shape %s; expected [None, H, W, 1] "
                                  "or [None, H, W, D, 1] with fixed sizes" % (self.path, shape))

    def register(self, moving, fixed, batch_size=32):
        """Run ``serving_default`` on ``[B, *inshape, 1]`` float32 pairs in [0, 1], ``batch_size`` at a time.

        Returns:
            ``(moved [B, *inshape, 1], flow [B, *inshape, ndim])``, flow in voxels ('ij').
        """
        out = _call_in_batches(self._serve, batch_size, moving=moving, fixed=fixed)
        return out["moved"], out["flow"]

    def warp(self, image, flow, batch_size=32):
        """Run ``warp`` on ``image [B, *inshape, 1]`` and ``flow [B, *inshape, ndim]`` (voxels).

        Returns:
            ``(warped_linear, warped_nearest)``, each ``[B, *inshape, 1]`` float32.
        """
        out = _call_in_batches(self._warp, batch_size, image=image, flow=flow)
        return out["warped_linear"], out["warped_nearest"]


def _call_in_batches(signature, batch_size, **inputs):
    """Call ``signature`` on ``batch_size`` items of every input at a time; ``{output: concatenated array}``."""
    parts = {}
    for start in range(0, len(next(iter(inputs.values()))), batch_size):
        out = signature(**{name: tf.constant(value[start:start + batch_size], tf.float32)
                           for name, value in inputs.items()})
        for name, value in out.items():
            parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def _resolve_version(export_dir):
    """The folder holding ``saved_model.pb``: ``export_dir`` itself, or its highest integer version."""
    if not os.path.isdir(export_dir):
        raise SavedModelError("%s: SavedModel folder not found" % export_dir)
    if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    versions = existing_versions(export_dir)
    if not versions:
        raise SavedModelError("%s: no saved_model.pb and no integer version folder; expected an export "
                              "version (<base>/<model>/<N>) or a model base path" % export_dir)
    path = os.path.join(export_dir, str(versions[-1]))
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise SavedModelError("%s: no saved_model.pb in the highest version folder" % path)
    return path


def crop_indices(shape, center, size):
    """Where the model's window takes its voxels from: flat indices into an ``[X, Y, Z]`` volume.

    The window is :func:`~gsmorph_tf.data.pairs.crop_or_pad`'s, applied to an array of voxel indices, so
    cropping and pasting back use exactly training's crop (and its rounding).

    Args:
        shape: ``(X, Y, Z)`` volume shape.
        center: ``(x, y)`` for a 2D model (in-plane, every slice) or ``(x, y, z)`` for a 3D one, in voxels.
        size: the model's input shape, ``(H, W)`` or ``(H, W, D)``.

    Returns:
        int64 ``[Z, H, W]`` (2D: slices first, as the model's batch) or ``[H, W, D]`` (3D); -1 marks
        padding outside the volume.
    """
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    window = crop_or_pad(np.transpose(index, (2, 0, 1)), center[:2], size[:2], fill=-1)  # [Z, H, W]
    if len(size) == 2:
        return window
    # Cut along Z with the same function: put Z in-plane next to W, whose second cut (size W around
    # W // 2) keeps it as it is.
    return crop_or_pad(np.transpose(window, (1, 2, 0)), (size[1] // 2, center[2]), size[1:], fill=-1)


def _take(volume, index, fill=0):
    """``volume``'s voxels at ``index`` (from :func:`crop_indices`), ``fill`` where index is -1."""
    return np.where(index >= 0, volume.reshape(-1)[np.maximum(index, 0)], fill).astype(volume.dtype)


def _paste(volume, index, values):
    """Copy of ``volume`` with ``values`` (shaped like ``index``) written back where index is not -1."""
    out = np.array(volume, copy=True, order="C")  # nibabel arrays are Fortran-ordered: C makes reshape a view
    inside = index >= 0
    out.reshape(-1)[index[inside]] = values[inside]
    return out


def default_center(shape, ndim):
    """The image centre ``(X // 2, Y // 2)`` (2D models) or ``(X // 2, Y // 2, Z // 2)`` (3D), voxels."""
    return tuple(float(s // 2) for s in shape[:ndim])


@dataclasses.dataclass
class Registration:
    """One registered pair on the fixed grid ``[X, Y, Z]`` (see the module docstring for the layout).

    Attributes:
        moved: ``[X, Y, Z]`` float32 in [0, 1] units.
        flow_voxels: ``[X, Y, Z, 3]`` float32, displacement in voxels along the voxel axes i, j, k.
        moved_labels: ``[X, Y, Z]`` warped label map, or None.
    """
    moved: np.ndarray
    flow_voxels: np.ndarray
    moved_labels: np.ndarray | None = None


def register_volumes(model, moving, fixed, center=None, moving_labels=None, batch_size=32):
    """Register ``moving`` to ``fixed`` (both ``[X, Y, Z]``, scanner intensities) with ``model``.

    Args:
        model: :class:`RegistrationModel`.
        moving, fixed: ``[X, Y, Z]`` arrays of one shape (short-axis stacks for 2D models).
        center: window centre in voxels (see :func:`crop_indices`); None takes :func:`default_center`.
        moving_labels: optional ``[X, Y, Z]`` integer label map of ``moving``.
        batch_size: slices per call for 2D models.

    Returns:
        :class:`Registration`; inside the window the model's outputs, outside it the identity.
    """
    moving, fixed = scale_to_unit(moving, fixed)
    if center is None:
        center = default_center(fixed.shape, model.ndim)
    index = crop_indices(fixed.shape, center, model.inshape)
    batch_shape = (-1, *model.inshape, 1)
    moved_crop, flow_crop = model.register(_take(moving, index).reshape(batch_shape),
                                           _take(fixed, index).reshape(batch_shape), batch_size)
    moved = _paste(moving, index, moved_crop.reshape(index.shape))
    components = [_paste(np.zeros(fixed.shape, np.float32), index, flow_crop[..., k].reshape(index.shape))
                  for k in range(model.ndim)]
    components += [np.zeros(fixed.shape, np.float32)] * (3 - model.ndim)  # no motion across slices (2D)
    result = Registration(moved=moved, flow_voxels=np.stack(components, axis=-1))
    if moving_labels is not None:
        labels_crop = _take(np.asarray(moving_labels), index).astype(np.float32).reshape(batch_shape)
        _, nearest = model.warp(labels_crop, flow_crop, batch_size)
        warped = np.rint(nearest.reshape(index.shape)).astype(moving_labels.dtype)
        result.moved_labels = _paste(moving_labels, index, warped)
    return result


@dataclasses.dataclass
class PairInputs:
    """A validated pair as read from disk: arrays ``[X, Y, Z]``, the fixed image's geometry, the centre."""
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
        center: window centre in voxels, ``ndim`` values inside the image; None for the image centre.

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
    if center is None:
        center = default_center(fixed.shape, model.ndim)
    center = tuple(float(c) for c in center)
    if len(center) != model.ndim or not all(0 <= c <= s - 1 for c, s in zip(center, fixed.shape)):
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


def register_files(model, moving_path, fixed_path, output_dir, moving_labels_path=None, center=None):
    """Register one NIfTI pair and write its outputs to ``output_dir`` (named after the moving file).

    Returns:
        ``{key: path}`` of the written files.

    Raises:
        DatasetError: see :func:`load_pair`; raised before anything is written.
    """
    inputs = load_pair(model, moving_path, fixed_path, moving_labels_path, center)
    result = register_volumes(model, inputs.moving, inputs.fixed, inputs.center, inputs.moving_labels)
    return write_registration(result, inputs, output_dir, nifti_stem(moving_path))


def find_pairs(moving_dir, fixed_dir, moving_labels_dir=None):
    """Match NIfTI files of ``moving_dir`` and ``fixed_dir`` (and ``moving_labels_dir``) by file name.

    Returns:
        Sorted list of ``(moving_path, fixed_path, labels_path or None)``.

    Raises:
        DatasetError: naming the folder, if it is missing or has no NIfTI file, a file has no partner of
            the same name in another folder, or two names share a stem (``a.nii`` and ``a.nii.gz``).
    """
    folders = {"moving": moving_dir, "fixed": fixed_dir}
    if moving_labels_dir is not None:
        folders["labels"] = moving_labels_dir
    names = {}
    for role, folder in folders.items():
        if not os.path.isdir(folder):
            raise DatasetError("%s: %s folder not found" % (folder, role))
        names[role] = sorted(name for name in os.listdir(folder) if name.endswith(NIFTI_SUFFIXES))
    if not names["moving"]:
        raise DatasetError("%s: no .nii or .nii.gz file in the moving folder" % moving_dir)
    for role, folder in folders.items():
        unmatched = sorted(set(names["moving"]) ^ set(names[role]))
        if unmatched:
            raise DatasetError("%s and %s: files without a partner of the same name: %s"
                               % (moving_dir, folder, ", ".join(unmatched)))
    stems = [nifti_stem(name) for name in names["moving"]]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise DatasetError("%s: several files for %s; expected one NIfTI file per name"
                           % (moving_dir, ", ".join(clashes)))
    return [(os.path.join(moving_dir, name), os.path.join(fixed_dir, name),
             os.path.join(moving_labels_dir, name) if moving_labels_dir is not None else None)
            for name in names["moving"]]


def register_folder(model, moving_dir, fixed_dir, output_dir, moving_labels_dir=None, center=None,
                    show_progress=True):
    """Register every pair of :func:`find_pairs` into ``output_dir``, with a Keras progress bar.

    Every pair is read and validated first (:func:`load_pair`); one bad file stops the run before any
    output is written. ``center`` applies to every pair.

    Returns:
        List of ``{key: path}``, one per pair, in file-name order.
    """
    pairs = find_pairs(moving_dir, fixed_dir, moving_labels_dir)
    for moving_path, fixed_path, labels_path in pairs:
        load_pair(model, moving_path, fixed_path, labels_path, center)  # validate only; re-read below
    bar = tf.keras.utils.Progbar(len(pairs), unit_name="pair") if show_progress else None
    written = []
    for done, (moving_path, fixed_path, labels_path) in enumerate(pairs, 1):
        written.append(register_files(model, moving_path, fixed_path, output_dir, labels_path, center))
        if bar is not None:
            bar.update(done)
    return written
