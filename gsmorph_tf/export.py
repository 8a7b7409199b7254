"""Export a registration network as a TensorFlow SavedModel laid out for TF Serving.

TF Serving loads ``<base>/<version>/saved_model.pb`` (+ ``variables/``), ``version`` an integer; a run's
model is exported to ``<export_base>/<model_name>/<version>/``. Every version is written to a hidden temp
folder and renamed into place, so a server watching the base path never sees half a model, and an existing
version is never overwritten.

Signatures (``vol`` is the network's spatial input shape, e.g. ``128, 128`` or ``160, 192, 160``; ``ndim``
its length; every tensor float32; the batch axis is free):

``serving_default``
    inputs ``moving``, ``fixed``: ``[None, *vol, 1]``, intensities scaled to [0, 1] as in training (one
    shared range for the pair: :func:`gsmorph_tf.data.preprocessing.scale_to_unit`).
    outputs ``moved``: ``[None, *vol, 1]``, the moving image warped onto the fixed one;
    ``flow``: ``[None, *vol, ndim]``, the displacement field ``u`` in voxels, channel k along array axis k
    ('ij' indexing), such that ``moved(x) = moving(x + u(x))``.

``warp``
    applies a given displacement field to one image, both ways at once:
    inputs ``image``: ``[None, *vol, 1]`` (an intensity image, any range, or a label map stored as float:
    put several channels or label maps on the batch axis); ``flow``: ``[None, *vol, ndim]`` in voxels, as
    ``serving_default`` returns it.
    outputs ``warped_linear``: ``[None, *vol, 1]``, (bi/tri)linear interpolation, for images;
    ``warped_nearest``: ``[None, *vol, 1]``, nearest neighbour, for label maps (only input values occur).

Both signatures warp with voxelmorph's ``SpatialTransformer`` ('ij' indexing, border values outside the
image), the layer the network trains with and :func:`gsmorph_tf.evaluation.warp_labels` evaluates with, so
training, evaluation and serving warp identically. The graph holds only TensorFlow ops, so it loads with
``tf.saved_model.load`` (or TF Serving) where neither this package nor voxelmorph is installed.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import os
import shutil

import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf.config import ConfigError
from gsmorph_tf.runs import load_run_for_inference

#: Signature names of an exported model.
SERVING_SIGNATURE = "serving_default"
WARP_SIGNATURE = "warp"


class _RegistrationModule(tf.Module):
    """Holds the network's variables and the two serving functions for ``tf.saved_model.save``."""

    def __init__(self, network):
        super().__init__(name="registration")
        self.network = network
        vol = list(network.inputs[0].shape[1:-1])
        image = [None, *vol, 1]
        flow = [None, *vol, len(vol)]
        self.linear = vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij", name="warp_linear")
        self.nearest = vxm.layers.SpatialTransformer(interp_method="nearest", indexing="ij", name="warp_nearest")
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec(image, tf.float32, name="moving"), tf.TensorSpec(image, tf.float32, name="fixed")])
        self.warp = tf.function(self._warp, input_signature=[
            tf.TensorSpec(image, tf.float32, name="image"), tf.TensorSpec(flow, tf.float32, name="flow")])

    def _serve(self, moving, fixed):
        outputs = self.network([moving, fixed], training=False)
        return {"moved": outputs[0], "flow": outputs[1]}

    def _warp(self, image, flow):
        return {"warped_linear": self.linear([image, flow]), "warped_nearest": self.nearest([image, flow])}


def existing_versions(base_dir):
    """Sorted integer versions already under ``base_dir`` (other entries are ignored, as TF Serving does)."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(name) for name in os.listdir(base_dir) if name.isdigit())


def export_saved_model(network, base_dir, version=None):
    """Write ``network`` to ``<base_dir>/<version>/`` atomically and return that path.

    Args:
        network: Keras model ``[moving, fixed] -> (moved, flow, ...)`` with a fixed spatial input shape.
        base_dir: the model's base path (what TF Serving's ``base_path`` points at).
        version: integer version; None takes the next after the highest existing one (1 for a new base).

    Raises:
        FileExistsError: ``version`` already exists (an exported version is never overwritten).
    """
    if version is None:
        versions = existing_versions(base_dir)
        version = versions[-1] + 1 if versions else 1
    version = int(version)
    if version < 0:
        raise ValueError("version must be a non-negative integer, got %d" % version)
    target = os.path.join(base_dir, str(version))
    if os.path.exists(target):
        raise FileExistsError("SavedModel version %s already exists; exported versions are never overwritten"
                              % target)
    os.makedirs(base_dir, exist_ok=True)
    # A hidden, non-numeric temp dir is invisible to TF Serving until the rename makes it whole at once.
    tmp = os.path.join(base_dir, ".tmp-%d-%d" % (version, os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    module = _RegistrationModule(network)
    try:
        tf.saved_model.save(module, tmp, signatures={SERVING_SIGNATURE: module.serve, WARP_SIGNATURE: module.warp})
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def export_run(run_dir, export_base, model_name=None, version=None):
    """Export a training run's last checkpoint to ``<export_base>/<model_name>/<version>/``.

    Args:
        run_dir: ``output_dir`` of a ``run_train.py`` run (``config.json`` and ``checkpoints/``; for
            HyperMorph also ``evaluation.json``, see :func:`serving_network`).
        export_base: folder holding one base path per model (what ``serving/models.config`` points into).
        model_name: TF Serving model name, a plain folder name; None takes the run's ``config.model``.
        version: integer version; None takes the next free one.

    Returns:
        The path of the written version.

    Raises:
        FileNotFoundError, ConfigError: see :func:`load_trained_network` and :func:`serving_network`;
            ConfigError also for a model name that is not a plain folder name.
        FileExistsError: ``version`` already exists.
    """
    config, network = load_run_for_inference(run_dir)
    model_name = config.model if model_name is None else model_name
    if not model_name or model_name in (".", "..") or "/" in model_name or os.sep in model_name:
        raise ConfigError("model name %r must be a plain folder name (it becomes <export_base>/<name>)"
                          % model_name)
    return export_saved_model(network, os.path.join(export_base, model_name), version)
