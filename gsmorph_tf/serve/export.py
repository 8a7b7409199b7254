"""Export a registration network as a TensorFlow SavedModel laid out for TF Serving.

TF Serving loads ``<base>/<version>/saved_model.pb`` (+ ``variables/``), ``version`` an integer; a run's
model is exported to ``<export_base>/<model_name>/<version>/``. Every version is written to a hidden temp
folder and renamed into place, so a server watching the base path never sees half a model, and an existing
version is never overwritten.

Signatures (``vol`` is the network's spatial input shape, e.g. ``128, 128`` or ``160, 192, 160``; ``ndim``
its length; every tensor float32; the batch axis is free):

``serving_default``, 2D models (the cardiac task): **raw input**
    inputs ``moving``, ``fixed``: ``[None, X, Y, 1]``, one subject's slices in scanner intensities, any
    in-plane size ``X >= vol[0]``, ``Y >= vol[1]``. The graph does what training did
    (:mod:`gsmorph_tf.serve.graph_preprocessing`): one intensity range for the request (minimum -> 0, 99.5th
    percentile -> 1, clipped), the crop centre from the motion between the two images (the ``motion`` rule
    on two frames), the ``vol`` window around it (zero outside the image), registration.
    outputs, on the **input's grid**: ``moved`` ``[None, X, Y, 1]`` in [0, 1] units (outside the window: the
    scaled moving image); ``flow`` ``[None, X, Y, 2]`` in pixels (outside the window: 0, the identity);
    ``crop_center`` ``[None, 2]`` int32, the window's centre (row, col), the same for every slice.
    3D models: the same contract as ``register_crop`` (their data are not cropped in training).
``register_crop``: **preprocessed input** (the contract of earlier exports' ``serving_default``)
    inputs ``moving``, ``fixed``: ``[None, *vol, 1]``, intensities scaled to [0, 1] as in training (one
    shared range for the pair: :func:`gsmorph_tf.data.preprocessing.scale_to_unit`), already cropped.
    outputs ``moved``: ``[None, *vol, 1]``, the moving image warped onto the fixed one;
    ``flow``: ``[None, *vol, ndim]``, the displacement field ``u`` in voxels, channel k along array axis k
    ('ij' indexing), such that ``moved(x) = moving(x + u(x))``.
``warp``
    applies a given displacement field to one image, both ways at once:
    inputs ``image``: ``[None, *vol, 1]`` (an intensity image, any range, or a label map stored as float:
    put several channels or label maps on the batch axis); ``flow``: ``[None, *vol, ndim]`` in voxels, as
    ``register_crop`` returns it.
    outputs ``warped_linear``: ``[None, *vol, 1]``, (bi/tri)linear interpolation, for images;
    ``warped_nearest``: ``[None, *vol, 1]``, nearest neighbour, for label maps (only input values occur).

Every signature warps with voxelmorph's ``SpatialTransformer`` ('ij' indexing, border values outside the
image), the layer the network trains with and :func:`gsmorph_tf.evaluate.evaluation.warp_labels` evaluates with, so
training, evaluation and serving warp identically. The graph holds only TensorFlow ops, so it loads with
``tf.saved_model.load`` (or TF Serving) where neither this package nor voxelmorph is installed.

Besides the graph, a version folder holds ``assets/provenance.json`` (what produced the model:
:mod:`gsmorph_tf.serve.provenance`) and ``assets.extra/tf_serving_warmup_requests``, TF Serving's warm-up file: a
TFRecord of ``PredictionLog`` protos (tensorflow-serving-api), one ``PredictRequest`` per signature, which the
server replays when it loads the version so the first client request does not pay for tracing.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
import voxelmorph as vxm
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from gsmorph_tf.config import ConfigError
from gsmorph_tf.serve.graph_preprocessing import register_raw
from gsmorph_tf.serve.provenance import PROVENANCE_FILE, build_provenance, default_model_name, library_versions
from gsmorph_tf.train.runs import load_run_for_inference

#: Signature names of an exported model.
SERVING_SIGNATURE = "serving_default"
CROP_SIGNATURE = "register_crop"
WARP_SIGNATURE = "warp"

#: TF Serving's warm-up file, relative to a version folder.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

SIGNATURE_SUMMARIES = {
    "raw": "moving, fixed [None, X, Y, 1] scanner intensities, X, Y >= the crop; one subject's slices -> moved "
           "[0, 1] units, flow pixels [None, X, Y, 2] on the input grid (identity outside the window), crop_center",
    CROP_SIGNATURE: "moving, fixed [None, *crop, 1] cropped and scaled to [0, 1] -> moved, flow [None, *crop, ndim] "
                    "voxels",
    WARP_SIGNATURE: "image [None, *crop, 1], flow [None, *crop, ndim] -> warped_linear, warped_nearest",
}


class _RegistrationModule(tf.Module):
    """Holds the network's variables, the serving functions and the provenance asset for
    ``tf.saved_model.save``."""

    def __init__(self, network, provenance_path=None):
        super().__init__(name="registration")
        # The Keras objects are kept out of the SavedModel's object graph (set past tf.Module's tracking), and
        # the network's variables saved as a plain list: a tracked Keras model makes tf.saved_model.save trace
        # every layer's call to write Keras' own metadata, most of an export's time (ULAE-net at 16^3: 34 s of
        # it), for a layer-by-layer restore that neither TF Serving nor tf.saved_model.load's signatures use.
        object.__setattr__(self, "network", network)
        # In the order of network.variables: gsmorph_tf.train.runs.load_export_for_training reads them back into
        # the network rebuilt from the provenance.
        self.network_variables = list(network.variables)
        self.vol = list(network.inputs[0].shape[1:-1])
        image = [None, *self.vol, 1]
        flow = [None, *self.vol, len(self.vol)]
        object.__setattr__(self, "linear", vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij",
                                                                          name="warp_linear"))
        object.__setattr__(self, "nearest", vxm.layers.SpatialTransformer(interp_method="nearest", indexing="ij",
                                                                           name="warp_nearest"))
        self.register_crop = tf.function(self._register_crop, input_signature=[
            tf.TensorSpec(image, tf.float32, name="moving"), tf.TensorSpec(image, tf.float32, name="fixed")])
        self.warp = tf.function(self._warp, input_signature=[
            tf.TensorSpec(image, tf.float32, name="image"), tf.TensorSpec(flow, tf.float32, name="flow")])
        if len(self.vol) == 2:
            raw = [None, None, None, 1]
            self.serve = tf.function(self._serve_raw, input_signature=[
                tf.TensorSpec(raw, tf.float32, name="moving"), tf.TensorSpec(raw, tf.float32, name="fixed")])
        else:
            self.serve = self.register_crop
        if provenance_path is not None:
            self.provenance = tf.saved_model.Asset(provenance_path)

    def _register_crop(self, moving, fixed):
        outputs = self.network([moving, fixed], training=False)
        return {"moved": outputs[0], "flow": outputs[1]}

    def _serve_raw(self, moving, fixed):
        def register(moving_crop, fixed_crop):
            outputs = self.network([moving_crop, fixed_crop], training=False)
            return outputs[0], outputs[1]

        return register_raw(register, moving, fixed, self.vol)

    def _warp(self, image, flow):
        return {"warped_linear": self.linear([image, flow]), "warped_nearest": self.nearest([image, flow])}

    def signatures(self):
        return {SERVING_SIGNATURE: self.serve, CROP_SIGNATURE: self.register_crop, WARP_SIGNATURE: self.warp}


def _tensor(array):
    return tf.make_tensor_proto(np.asarray(array, np.float32))


def warmup_requests(vol, model_name, seed=0):
    """One ``PredictRequest`` per signature of a model with spatial input ``vol``, on seeded random images
    (raw input: ``vol``-sized scanner-like intensities 0..1000; crops: [0, 1]; warp: a zero field).

    Returns:
        ``{signature name: tensorflow_serving.apis.predict_pb2.PredictRequest}``.
    """
    rng = np.random.default_rng(seed)
    image = rng.random((1, *vol, 1), np.float32)
    inputs = {CROP_SIGNATURE: {"moving": image, "fixed": rng.random((1, *vol, 1), np.float32)},
              WARP_SIGNATURE: {"image": image, "flow": np.zeros((1, *vol, len(vol)), np.float32)}}
    inputs[SERVING_SIGNATURE] = ({name: 1000.0 * value for name, value in inputs[CROP_SIGNATURE].items()}
                                 if len(vol) == 2 else inputs[CROP_SIGNATURE])
    requests = {}
    for signature, tensors in inputs.items():
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name,
                                                                            signature_name=signature))
        for name, value in tensors.items():
            request.inputs[name].CopyFrom(_tensor(value))
        requests[signature] = request
    return requests


def write_warmup_file(export_dir, vol, model_name):
    """Write ``assets.extra/tf_serving_warmup_requests`` (:func:`warmup_requests` as ``PredictionLog`` records)."""
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in warmup_requests(vol, model_name).values():
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def existing_versions(base_dir):
    """Sorted integer versions already under ``base_dir`` (other entries are ignored, as TF Serving does)."""
    if not os.path.isdir(base_dir):
        return []
    return sorted(int(name) for name in os.listdir(base_dir) if name.isdigit())


def export_saved_model(network, base_dir, version=None, provenance=None):
    """Write ``network`` to ``<base_dir>/<version>/`` atomically and return that path.

    Args:
        network: Keras model ``[moving, fixed] -> (moved, flow, ...)`` with a fixed spatial input shape.
        base_dir: the model's base path (what TF Serving's ``base_path`` points at); its folder name is the
            model name in the warm-up requests.
        version: integer version; None takes the next after the highest existing one (1 for a new base).
        provenance: dict written as ``assets/provenance.json`` (:func:`gsmorph_tf.serve.provenance.build_provenance`);
            None writes a minimal one (model name, input shape, signatures, versions).

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
    model_name = os.path.basename(os.path.normpath(base_dir))
    vol = list(network.inputs[0].shape[1:-1])
    if provenance is None:
        provenance = {"format": 1, "model_name": model_name,
                      "crop": {"size": vol, "training_rule": None, "serving_rule": "motion" if len(vol) == 2 else None},
                      "signatures": signatures_for(vol), "training": None, "test_metrics": None,
                      "versions": library_versions()}
    scratch = tempfile.mkdtemp(prefix="provenance-")
    try:
        provenance_path = os.path.join(scratch, PROVENANCE_FILE)
        with open(provenance_path, "w", encoding="utf-8") as f:
            json.dump(provenance, f, indent=2)
            f.write("\n")
        module = _RegistrationModule(network, provenance_path)
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        write_warmup_file(tmp, vol, model_name)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def signatures_for(vol):
    """``{signature name: one line on its contract}`` of an export with spatial input ``vol``."""
    summaries = dict(SIGNATURE_SUMMARIES)
    raw = summaries.pop("raw")
    return {SERVING_SIGNATURE: raw if len(vol) == 2 else "as register_crop (3D models take their input as it is)",
            **summaries}


def run_provenance(config, vol, model_name, evaluation):
    """The provenance of a training run's export (:func:`gsmorph_tf.serve.provenance.build_provenance`)."""
    return build_provenance(config, model_name, vol, signatures_for(vol), evaluation)


def export_run(run_dir, export_base, model_name=None, version=None):
    """Export a training run's last checkpoint to ``<export_base>/<model_name>/<version>/``.

    The provenance asset records the run's settings and, when the run has finished, the test metrics of its
    ``evaluation.json``.

    Args:
        run_dir: ``output_dir`` of a ``run_train.py`` run (``config.json`` and ``checkpoints/``; for
            HyperMorph also ``evaluation.json``, see :func:`serving_network`).
        export_base: folder holding one base path per model (what ``serving/models.config`` points into).
        model_name: TF Serving model name, a plain folder name; None takes ``<model>_<dataset>`` of the run
            (e.g. ``gsmorph_acdc``).
        version: integer version; None takes the next free one.

    Returns:
        The path of the written version.

    Raises:
        FileNotFoundError, ConfigError: see :func:`load_trained_network` and :func:`serving_network`;
            ConfigError also for a model name that is not a plain folder name.
        FileExistsError: ``version`` already exists.
    """
    config, network = load_run_for_inference(run_dir)
    model_name = default_model_name(config) if model_name is None else model_name
    if not model_name or model_name in (".", "..") or "/" in model_name or os.sep in model_name:
        raise ConfigError("model name %r must be a plain folder name (it becomes <export_base>/<name>)"
                          % model_name)
    evaluation = None
    evaluation_path = os.path.join(run_dir, "evaluation.json")
    if os.path.isfile(evaluation_path):
        with open(evaluation_path, encoding="utf-8") as f:
            evaluation = json.load(f)
    provenance = run_provenance(config, list(network.inputs[0].shape[1:-1]), model_name, evaluation)
    return export_saved_model(network, os.path.join(export_base, model_name), version, provenance)
