"""An exported registration SavedModel, called through its signatures (see :mod:`gsmorph_tf.serve.export`)."""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import os

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from gsmorph_tf.errors import SavedModelError
from gsmorph_tf.serve.export import CROP_SIGNATURE, SERVING_SIGNATURE, WARP_SIGNATURE, existing_versions
from gsmorph_tf.serve.provenance import read_provenance
from gsmorph_tf.train.instance import InstanceOptimizer
from gsmorph_tf.train.runs import load_export_for_training


def crop_signature(loaded):
    """The signature of ``loaded`` (a loaded SavedModel) that takes cropped, scaled ``[None, *vol, 1]`` pairs:
    ``register_crop``, or ``serving_default`` in exports written before it existed (their contract)."""
    return loaded.signatures.get(CROP_SIGNATURE) or loaded.signatures[SERVING_SIGNATURE]


class RegistrationModel:
    """An exported registration SavedModel, called through its ``register_crop`` and ``warp`` signatures
    (``serving_default`` in exports older than ``register_crop``, whose ``serving_default`` had its contract).

    Args:
        export_dir: a version folder (holding ``saved_model.pb``) or a model's base path (its highest
            integer version is used, as TF Serving does).

    Attributes:
        path: the version folder loaded.
        inshape: spatial input shape, e.g. ``(128, 128)``; ndim: 2 or 3.
        provenance: the export's provenance dict (:mod:`gsmorph_tf.serve.provenance`), or None for older exports.

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
                                  "run_export.py / gsmorph_tf.serve.export" % (self.path, ", ".join(missing)))
        self._loaded = loaded  # the signatures need their module alive
        self._serve = crop_signature(loaded)
        self._warp = loaded.signatures[WARP_SIGNATURE]
        name = CROP_SIGNATURE if CROP_SIGNATURE in loaded.signatures else SERVING_SIGNATURE
        inputs = self._serve.structured_input_signature[1]
        if "moving" not in inputs or "fixed" not in inputs:
            raise SavedModelError("%s: %s takes %s; expected inputs moving and fixed" % (self.path, name, sorted(inputs)))
        shape = inputs["moving"].shape
        self.inshape = tuple(shape[1:-1])
        self.ndim = len(self.inshape)
        if self.ndim not in (2, 3) or None in self.inshape:
            raise SavedModelError("%s: %s input moving has shape %s; expected [None, H, W, 1] or [None, H, W, D, 1] "
                                  "with fixed sizes" % (self.path, name, shape))
        self.provenance = read_provenance(self.path)

    def register(self, moving, fixed, batch_size=32):
        """Run ``register_crop`` on ``[B, *inshape, 1]`` float32 pairs in [0, 1], ``batch_size`` at a time.

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


class RefinedRegistrationModel(RegistrationModel):
    """A :class:`RegistrationModel` whose :meth:`register` first refines a copy of the network on the pair for
    ``steps`` training steps (test-time instance optimisation, :mod:`gsmorph_tf.train.instance`); warping (labels)
    still goes through the SavedModel's ``warp`` signature.

    The network is rebuilt from the export's provenance and variables (:func:`gsmorph_tf.train.runs.
    load_export_for_training`): the SavedModel's own functions cannot be trained by the training step.

    Args:
        export_dir: as :class:`RegistrationModel`.
        steps: training steps per pair (0: the export's own registration, through the rebuilt network).
        learning_rate, seed: see :class:`~gsmorph_tf.train.instance.InstanceOptimizer` (None: the run's).

    Raises:
        SavedModelError: see :class:`RegistrationModel` and :func:`~gsmorph_tf.train.runs.load_export_for_training`.
    """

    def __init__(self, export_dir, steps, learning_rate=None, seed=None):
        super().__init__(export_dir)
        network, config = load_export_for_training(self.path)
        self.steps = int(steps)
        self.refiner = InstanceOptimizer(network, config, learning_rate, seed)

    def register(self, moving, fixed, batch_size=32):
        """Refine on the ``[B, *inshape, 1]`` pair (all ``B`` items in every step), then register it.

        Returns:
            ``(moved [B, *inshape, 1], flow [B, *inshape, ndim])``, flow in voxels ('ij').
        """
        result = self.refiner.register(moving[..., 0], fixed[..., 0], self.steps, batch_size)
        return result.moved[..., None], result.flow


def load_registration_model(export_dir, instance_steps=0, learning_rate=None, log=print):
    """The model an entry point registers with: a :class:`RegistrationModel`, or with ``instance_steps`` > 0 a
    :class:`RefinedRegistrationModel` (``learning_rate``: None for the default), saying so through ``log``."""
    if not instance_steps:
        return RegistrationModel(export_dir)
    model = RefinedRegistrationModel(export_dir, instance_steps, learning_rate)
    log("Instance optimisation: %d step(s) of the run's training step per pair (surgery=%s, learning rate %g, "
        "BatchNorm frozen)" % (model.steps, model.refiner.config.surgery, model.refiner.learning_rate))
    return model


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
