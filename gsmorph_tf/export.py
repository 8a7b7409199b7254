"""Export a registration network as a TensorFlow SavedModel laid out for TF Serving.

TF Serving loads ``<base>/<version>/saved_model.pb`` (+ ``variables/``), ``version`` an integer. The
``serving_default`` signature takes named inputs ``moving`` and ``fixed`` (float32 ``[None, *vol, 1]``,
intensities scaled to [0, 1] as in training) and returns ``moved`` (``[None, *vol, 1]``) and ``flow``
(``[None, *vol, ndim]``, displacement in voxels along the array axes). The graph holds only TensorFlow ops,
so it loads with ``tf.saved_model.load`` where neither this package nor voxelmorph is installed.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import os
import shutil

import tensorflow as tf


class _RegistrationModule(tf.Module):
    """Holds the network's variables and its inference function for ``tf.saved_model.save``."""

    def __init__(self, network):
        super().__init__(name="registration")
        self.network = network
        spec = [None, *network.inputs[0].shape[1:]]
        self.serve = tf.function(self._serve, input_signature=[
            tf.TensorSpec(spec, tf.float32, name="moving"), tf.TensorSpec(spec, tf.float32, name="fixed")])

    def _serve(self, moving, fixed):
        outputs = self.network([moving, fixed], training=False)
        return {"moved": outputs[0], "flow": outputs[1]}


def existing_versions(base_dir):
    """Sorted integer versions already under ``base_dir`` (other entries are ignored, as TF Serving does)."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(name) for name in os.listdir(base_dir) if name.isdigit())


def export_saved_model(network, base_dir, version=None):
    """Write ``network`` to ``<base_dir>/<version>/`` atomically and return that path.

    Args:
        network: Keras model ``[moving, fixed] -> (moved, flow, ...)``.
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
        tf.saved_model.save(module, tmp, signatures={"serving_default": module.serve})
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
