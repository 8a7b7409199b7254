"""Register NIfTI images with an exported registration SavedModel (signatures: :mod:`gsmorph_tf.serve.export`).

Geometry first: a moving image (and its label map, which must share the moving image's grid) on another grid
than the fixed image (other shape, voxel size, orientation or position) is resampled into the fixed image's
physical space by the two NIfTI affines before anything else (:func:`load_pair`; linear for the image, nearest
neighbour for labels; one printed line names both geometries). Images whose world bounding boxes do not
overlap are refused. From then on everything happens on the fixed grid.

Preprocessing is training's (:func:`gsmorph_tf.data.preprocessing.make_pairs`): the whole moving and fixed volumes
are scaled to [0, 1] with one shared range (:func:`~gsmorph_tf.data.preprocessing.scale_to_unit`), then a window of
the model's input size is cut around a centre with :func:`~gsmorph_tf.data.preprocessing.crop_or_pad`,
zero-padded where it leaves the image. The centre is given in voxels, or placed by a rule (``crop_center``):
``motion`` (the default for 2D models: the maximum of the smoothed motion between the two images,
:func:`~gsmorph_tf.data.preprocessing.motion_center`, as the exported model's ``serving_default`` does) or
``image`` (the image centre ``(X // 2, Y // 2[, Z // 2])``, the default for 3D models, whose volumes are
not cropped in training).

- 2D models (signature input ``[None, H, W, 1]``, rank read from the SavedModel) register ``X x Y x Z``
  short-axis stacks slice by slice, slices along the last axis: slice z of the moving stack to slice z of
  the fixed stack, the same ``H x W`` window in every slice.
- 3D models (``[None, H, W, D, 1]``) register ``X x Y x Z`` volumes through one ``H x W x D`` window.

Outputs cover the fixed image's whole grid, with its affine and header: inside the window the model's result,
outside it the identity (zero displacement, moved = the (resampled) moving image, labels unchanged). Files
per pair, named after the moving file's ``<stem>`` (its name without ``.nii``/``.nii.gz``):

``<stem>_moved.nii.gz``
    ``[X, Y, Z]`` float32: the moved image, in the model's [0, 1] units (the pair's shared scaling).
``<stem>_flow_vox.nii.gz``
    ``[X, Y, Z, 3]`` float32: the displacement ``u`` in voxels, components on the last axis along the
    voxel axes i, j, k, such that ``moved(x) = moving(x + u(x))`` (x in voxel indices; Learn2Reg's
    convention, and our apply command's). 2D models give ``u_k = 0`` along the slice axis.
``<stem>_flow_mm.nii.gz``
    the same field in mm: component k times the fixed image's voxel size along axis k. Components follow
    the voxel axes, not world (scanner RAS) axes.
``<stem>_flow_itk.nii.gz``
    ``[X, Y, Z, 1, 3]`` float32, intent VECTOR: the same map as an ITK/ANTs/3D Slicer displacement field,
    physical vectors in mm in ITK's LPS convention (fixed affine's 3x3 times ``u``, then x and y negated),
    taking each fixed point to its moving point (:mod:`gsmorph_tf.register.world`). Give it to
    ``antsApplyTransforms`` / ``ants.apply_transforms`` or load it in 3D Slicer as a transform.
``<stem>_transform.h5``
    only on request (``itk_transform``; needs SimpleITK, the ``baselines`` extra): the field as an ITK
    ``DisplacementFieldTransform`` file, for ``sitk.ReadTransform`` / ITK.
``<stem>_moved_labels.nii.gz``
    ``[X, Y, Z]``: the moving label map warped with nearest neighbour (only input values occur), in the
    label file's integer type; written only when moving labels are given.

Each NIfTI header's description states its content. Every input is validated before anything is written
(in folder mode: every pair, before the first registration); each file is written to a temp name and
renamed, so an output is either whole or absent.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses

import numpy as np
import tensorflow as tf

from gsmorph_tf.data.preprocessing import image_center, motion_center, scale_to_unit
from gsmorph_tf.errors import SavedModelError
from gsmorph_tf.register.apply import APPLY_KINDS, LABEL_INTERPOLATIONS, apply_field, warp_image, warp_label_map
from gsmorph_tf.register.files import (OUTPUTS, TRANSFORM_SUFFIX, PairInputs, check_pair, load_pair, nifti_stem,
                                      write_registration)
from gsmorph_tf.register.folders import find_pairs
from gsmorph_tf.register.savedmodel import RefinedRegistrationModel, RegistrationModel, load_registration_model
from gsmorph_tf.register.window import crop_indices, paste, take
from gsmorph_tf.register.world import import_simpleitk

__all__ = ["APPLY_KINDS", "LABEL_INTERPOLATIONS", "OUTPUTS", "PairInputs", "REGISTER_CROP_CENTERS",
           "RefinedRegistrationModel", "Registration", "load_registration_model", "RegistrationModel", "SavedModelError", "TRANSFORM_SUFFIX",
           "apply_field", "check_pair", "find_pairs", "load_pair", "register_files", "register_folder",
           "register_volumes", "warp_image", "warp_label_map", "window_center", "write_registration"]


@dataclasses.dataclass
class Registration:
    """One registered pair on the fixed grid ``[X, Y, Z]`` (see the module docstring for the layout).

    Attributes:
        moved: ``[X, Y, Z]`` float32 in [0, 1] units.
        flow_voxels: ``[X, Y, Z, 3]`` float32, displacement in voxels along the voxel axes i, j, k.
        moved_labels: ``[X, Y, Z]`` warped label map, or None.
        center: the window's centre in voxels.
    """
    moved: np.ndarray
    flow_voxels: np.ndarray
    moved_labels: np.ndarray | None = None
    center: tuple = ()


#: Window placement rules of :func:`register_volumes` (None: the model's default, see the module docstring).
REGISTER_CROP_CENTERS = ("motion", "image")


def window_center(model, moving, fixed, crop_center=None):
    """The window centre (voxels) that ``crop_center`` gives for scaled ``[X, Y, Z]`` volumes: ``motion``,
    ``image``, or None for the model's default (``motion`` for 2D models, ``image`` for 3D ones)."""
    if crop_center is None:
        crop_center = "motion" if model.ndim == 2 else "image"
    if crop_center == "image":
        return image_center(fixed.shape[:model.ndim])
    if crop_center != "motion":
        raise ValueError("crop_center must be one of %s, got %r" % (", ".join(REGISTER_CROP_CENTERS), crop_center))
    frames = np.stack([moving, fixed])
    if model.ndim == 2:
        frames = np.transpose(frames, (0, 3, 1, 2))  # [2, Z, X, Y]: slices averaged
    return motion_center(frames, model.inshape, model.ndim)


def register_volumes(model, moving, fixed, center=None, moving_labels=None, batch_size=32, crop_center=None,
                     joint_scaling=True):
    """Register ``moving`` to ``fixed`` (both ``[X, Y, Z]``, scanner intensities) with ``model``.

    Args:
        model: :class:`RegistrationModel` (or :class:`RefinedRegistrationModel`: each call refines first).
        moving, fixed: ``[X, Y, Z]`` arrays of one shape (short-axis stacks for 2D models).
        center: window centre in voxels (see :func:`crop_indices`); None places it by ``crop_center``
            (:func:`window_center`).
        crop_center: ``motion``, ``image`` or None (the model's default), when ``center`` is None.
        moving_labels: optional ``[X, Y, Z]`` integer label map of ``moving``.
        batch_size: slices per call for 2D models.
        joint_scaling: scale both to [0, 1] with one shared range first (training's cardiac preprocessing);
            False: they are already in the model's units (e.g. Learn2Reg volumes scaled one by one,
            :mod:`gsmorph_tf.register.learn2reg`), and ``moved`` stays in them.

    Returns:
        :class:`Registration`; inside the window the model's outputs, outside it the identity.
    """
    if joint_scaling:
        moving, fixed = scale_to_unit(moving, fixed)
    if center is None:
        center = window_center(model, moving, fixed, crop_center)
    index = crop_indices(fixed.shape, center, model.inshape)
    batch_shape = (-1, *model.inshape, 1)
    moved_crop, flow_crop = model.register(take(moving, index).reshape(batch_shape),
                                           take(fixed, index).reshape(batch_shape), batch_size)
    moved = paste(moving, index, moved_crop.reshape(index.shape))
    components = [paste(np.zeros(fixed.shape, np.float32), index, flow_crop[..., k].reshape(index.shape))
                  for k in range(model.ndim)]
    components += [np.zeros(fixed.shape, np.float32)] * (3 - model.ndim)  # no motion across slices (2D)
    result = Registration(moved=moved, flow_voxels=np.stack(components, axis=-1), center=tuple(center))
    if moving_labels is not None:
        labels_crop = take(np.asarray(moving_labels), index).astype(np.float32).reshape(batch_shape)
        _, nearest = model.warp(labels_crop, flow_crop, batch_size)
        warped = np.rint(nearest.reshape(index.shape)).astype(moving_labels.dtype)
        result.moved_labels = paste(moving_labels, index, warped)
    return result


def register_files(model, moving_path, fixed_path, output_dir, moving_labels_path=None, center=None,
                   crop_center=None, itk_transform=False):
    """Register one NIfTI pair and write its outputs to ``output_dir`` (named after the moving file).
    ``center`` and ``crop_center``: see :func:`register_volumes`. A moving image on another grid is resampled
    into the fixed image's space first, with one printed line saying so (:func:`load_pair`).

    Args:
        itk_transform: also write ``<stem>_transform.h5`` (needs SimpleITK, checked before registering).

    Returns:
        ``{key: path}`` of the written files.

    Raises:
        DatasetError: see :func:`load_pair`; raised before anything is written.
        MissingExtraError: ``itk_transform`` without SimpleITK, before anything is registered.
    """
    if itk_transform:
        import_simpleitk()
    inputs = load_pair(model, moving_path, fixed_path, moving_labels_path, center)
    if inputs.resampled:
        print(inputs.resampled)
    result = register_volumes(model, inputs.moving, inputs.fixed, inputs.center, inputs.moving_labels,
                              crop_center=crop_center)
    return write_registration(result, inputs, output_dir, nifti_stem(moving_path), itk_transform)


def register_folder(model, moving_dir, fixed_dir, output_dir, moving_labels_dir=None, center=None,
                    show_progress=True, crop_center=None, itk_transform=False):
    """Register every pair of :func:`find_pairs` into ``output_dir``, with a Keras progress bar.

    Every pair is read and validated first (:func:`check_pair`); one bad file stops the run before any
    output is written. ``center`` applies to every pair; without it each pair's window is placed by
    ``crop_center`` (:func:`register_volumes`). ``itk_transform``: see :func:`register_files`.

    Returns:
        List of ``{key: path}``, one per pair, in file-name order.
    """
    if itk_transform:
        import_simpleitk()
    pairs = find_pairs(moving_dir, fixed_dir, moving_labels_dir)
    for moving_path, fixed_path, labels_path in pairs:
        check_pair(model, moving_path, fixed_path, labels_path, center)  # validate only; read again below
    bar = tf.keras.utils.Progbar(len(pairs), unit_name="pair") if show_progress else None
    written = []
    for done, (moving_path, fixed_path, labels_path) in enumerate(pairs, 1):
        written.append(register_files(model, moving_path, fixed_path, output_dir, labels_path, center, crop_center,
                                      itk_transform))
        if bar is not None:
            bar.update(done)
    return written
