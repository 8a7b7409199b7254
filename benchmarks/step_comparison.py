"""The port's training steps against the reference code's, step by step: what each difference would cost.

    .venv/bin/python benchmarks/step_comparison.py [--reference tests/data/reference_steps.npz] [--methods none]

Reads what ``benchmarks/reference_steps.py`` recorded from the official code (wulalago/GSMorph): its initial
weights, batches, step-1 gradients, losses of every step and weights after 1 and after all steps, per method.
Loads those initial weights into the port's network
(:func:`gsmorph_tf.models.reference_weights.load_reference_weights`), runs the port's
``GradientSurgeryModel.train_step`` (through ``fit``) on the same batches with the same settings (MSE, l1 ``Grad``,
:func:`gsmorph_tf.models.gsmorph.build_optimizer`), and prints per variant of the port and per method how far it
lands from the reference:

- ``grad1``: the step-1 gradient handed to the optimizer, largest relative difference over the tensors
  (``|g - g_ref| / |g_ref|``, the conv biases in front of BatchNorm left out: see :func:`pre_batchnorm_bias`);
- ``sim``, ``reg``: the largest relative difference of the step losses over all steps;
- ``w1``: the largest difference of a trainable weight after step 1, in learning rates (Adam's first step
  moves a weight by about ``lr``), pre-BatchNorm biases left out;
- ``wN``: after the last step, the root mean square difference of the trainable weights in learning rates,
  and ``uN``: the largest, over the tensors, fraction of the reference's update that differs
  (``|w - w_ref| / |w_ref - w_initial|``), pre-BatchNorm biases left out. A single weight is no yardstick
  after several steps: where a gradient element hovers near 0, Adam's normalised step flips between
  ``+lr`` and ``-lr`` on round-off;
- ``stats``: the largest difference of a BatchNorm running mean or variance after the last step;
- ``flow``: the largest difference (pixels) of the first pair's flow in inference mode after the last step.

The variants: the port as it trains (zero padding, the reference's rule), the same with the reference's
float32 rounding of sampling locations (:class:`GridSampleRounding`: the closest the port can get), and that
emulation with one difference put back each: voxelmorph's border padding, Keras' BatchNorm epsilon or
momentum, Keras' Adam epsilon, an l2 ``Grad`` penalty. A last line gives the reference's own drift when its
initial weights move by one ulp. ``tests/core/test_reference_steps.py`` asserts the comparisons with fixed
tolerances and uses the helpers here.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import argparse
import json
import os
import types

import numpy as np
import tensorflow as tf

from gsmorph_tf.core.flows import Warp
from gsmorph_tf.core.model import GradientSurgeryModel
from gsmorph_tf.core.surgery import project_gradients
from gsmorph_tf.models.gsmorph import build_optimizer
from gsmorph_tf.models.networks import build_gsmorph_unet
from gsmorph_tf.models.reference_weights import load_reference_weights, port_variable, reference_to_port

HERE = os.path.dirname(os.path.abspath(__file__))
REFERENCE_STEPS = os.path.join(HERE, os.pardir, "tests", "data", "reference_steps.npz")
#: The recorded methods (surgery modes) and their lambda (only ``none`` uses it: VoxelMorph-l).
METHODS = {"none": 0.1, "layerwise": 0.01, "pcgrad": 0.01}


class ReferenceSteps:
    """The arrays ``benchmarks/reference_steps.py`` wrote, read back.

    Attributes: ``features``, ``size``, ``lr``, ``steps``, ``commit`` and ``torch_version`` as recorded; ``last``:
    ``"state_<steps>"``;
    ``moving`` and ``fixed``: float32 ``[steps, batch, size, size, 1]`` in [0, 1].
    """

    def __init__(self, path=REFERENCE_STEPS):
        with np.load(path) as data:
            self.arrays = {key: data[key] for key in data.files}
        self.layout = json.loads(str(self.arrays["layout"]))
        self.features = tuple(int(f) for f in self.arrays["features"])
        self.size, self.steps = int(self.arrays["size"]), int(self.arrays["steps"])
        self.lr = float(self.arrays["lr"])
        self.last = "state_%d" % self.steps   # the key of the weights after the last step
        self.commit, self.torch_version = str(self.arrays["reference_commit"]), str(self.arrays["torch_version"])
        self.moving, self.fixed = (self.arrays[k].astype(np.float32)[..., None] / 255.0 for k in ("moving", "fixed"))

    def tensors(self, key):
        """A recorded flat array as ``{reference name: array}``: every kept tensor for a state, the trainable
        ones for a gradient (told apart by the length)."""
        flat = self.arrays[key]
        entries = self.layout if flat.size == sum(int(np.prod(s)) for _, s, _ in self.layout) else \
            [entry for entry in self.layout if entry[2]]
        out, start = {}, 0
        for name, shape, _ in entries:
            size = int(np.prod(shape))
            out[name] = flat[start:start + size].reshape(shape)
            start += size
        if start != flat.size:
            raise ValueError("%s: %d values, the layout has %d" % (key, flat.size, start))
        return out

    def port(self, key):
        """A recorded array mapped to the port's tensors: ``{"<layer>/<attribute>": array}``."""
        return reference_to_port(self.tensors(key))


class GridSampleRounding(tf.keras.layers.Layer):
    """The displacement the reference's warp actually samples: its ``SpatialTransformer`` normalises
    ``grid + flow`` to [-1, 1] and ``grid_sample(align_corners=True)`` maps it back, both in float32. The round
    trip moves a location by up to about 1e-6 px; where the flow is that small (at initialisation, ~1e-5 px)
    it decides on which side of a pixel the bilinear sample's one-sided derivative is taken. ``[B, H, W, 2]``
    -> same. ``H - 1`` is held in a variable so that grappler's constant folding cannot cancel the round trip.
    """

    def build(self, input_shape):
        self.span = self.add_weight(name="span", shape=(2,), trainable=False,
                                    initializer=tf.keras.initializers.Constant([s - 1.0 for s in input_shape[1:3]]))

    def call(self, flow):
        rows, cols = flow.shape[1:3]
        grid = tf.stack(tf.meshgrid(tf.range(rows, dtype=flow.dtype), tf.range(cols, dtype=flow.dtype),
                                    indexing="ij"), axis=-1)
        normalised = 2.0 * ((grid + flow) / self.span - 0.5)   # the reference's SpatialTransformer
        return (normalised + 1.0) / 2.0 * self.span - grid       # grid_sample's unnormalisation


def port_network(reference, warp_padding="zeros", grid_sample_rounding=False):
    """The port's network (:func:`~gsmorph_tf.models.networks.build_gsmorph_unet`, the recorded widths and size) with
    the reference's initial weights; with ``grid_sample_rounding`` the moving image is warped (with
    ``warp_padding``) at the locations :class:`GridSampleRounding` gives. Outputs ``[moved, flow]``; the same
    trainable tensors."""
    network = build_gsmorph_unet((reference.size, reference.size), features=reference.features,
                                 warp_padding=warp_padding)
    load_reference_weights(network, reference.tensors("initial_state"))
    if not grid_sample_rounding:
        return network
    moving, flow = network.inputs[0], network.outputs[1]
    moved = Warp(warp_padding, name="moved_as_grid_sample")([moving, GridSampleRounding(name="grid_sample_rounding")(flow)])
    return tf.keras.Model(network.inputs, [moved, flow], name="reference_rounding")


def training_model(network, method, reference, reg_penalty="l1", optimizer=None):
    """``network`` in a compiled :class:`GradientSurgeryModel` with the recorded method's settings and the
    project's optimizer at the recorded learning rate (or ``optimizer``)."""
    model = GradientSurgeryModel(network, similarity="mse", reg_penalty=reg_penalty, surgery=method,
                                 lam=METHODS[method])
    settings = types.SimpleNamespace(learning_rate=reference.lr, mixed_precision=False)
    model.compile(optimizer=optimizer or build_optimizer(settings))
    return model


def keyed(network, keys, values=None):
    """``{key: array}`` for the port variables of the :func:`reference_to_port` ``keys``: the variables'
    values, or, given ``values`` aligned with ``network.trainable_variables``, those."""
    if values is None:
        return {key: port_variable(network, key).numpy() for key in keys}
    position = {v.ref(): i for i, v in enumerate(network.trainable_variables)}
    return {key: values[position[port_variable(network, key).ref()]].numpy() for key in keys
            if port_variable(network, key).ref() in position}


def first_step_gradients(model, reference):
    """``(g_sim, g_reg, g_applied)`` of the first batch at the current weights, each ``{key: array}``. The
    forward pass runs in training mode (batch statistics, as the step), so it moves the BatchNorm running
    statistics: use a model that is not trained afterwards."""
    variables = model.network.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        sim, reg = model.compute_losses(tf.constant(reference.moving[0]), tf.constant(reference.fixed[0]),
                                        training=True)
    sim_grads, reg_grads = tape.gradient(sim, variables), tape.gradient(reg, variables)
    applied = project_gradients(sim_grads, reg_grads, model.surgery, lam=model.lam, groups=model.groups)
    keys = reference.port("grad_sim").keys()
    return tuple(keyed(model.network, keys, grads) for grads in (sim_grads, reg_grads, applied))


class _Snapshots(tf.keras.callbacks.Callback):
    """Each step's losses, and the weights and statistics after the first and the last step."""

    def __init__(self, keys, last):
        super().__init__()
        self.keys, self.last = keys, last
        self.sim, self.reg, self.states = [], [], {}

    def on_train_batch_end(self, batch, logs=None):
        self.sim.append(float(self.model.sim_tracker.result()))
        self.reg.append(float(self.model.reg_tracker.result()))
        self.model.sim_tracker.reset_state()   # the logs are running means; the reference logs each step
        self.model.reg_tracker.reset_state()
        if batch + 1 in (1, self.last):
            self.states[batch + 1] = keyed(self.model.network, self.keys)


def train_port(model, reference):
    """Train ``model`` with ``fit`` on the recorded batches, in order, one step each.

    Returns:
        dict ``sim_loss``, ``reg_loss`` ``[steps]``; ``state_1`` and ``state_<steps>`` ``{key: array}``;
        ``eval_flow`` ``[size, size, 2]``: the first pair's flow in inference mode after the last step.
    """
    data = tf.data.Dataset.from_tensor_slices((reference.moving, reference.fixed))
    snapshots = _Snapshots(list(reference.port("initial_state")), reference.steps)
    model.fit(data, epochs=1, verbose=0, shuffle=False, callbacks=[snapshots])
    flow = model.network([reference.moving[0, :1], reference.fixed[0, :1]], training=False)[1]
    return {"sim_loss": np.array(snapshots.sim), "reg_loss": np.array(snapshots.reg),
            "state_1": snapshots.states[1], reference.last: snapshots.states[reference.steps],
            "eval_flow": flow.numpy()[0]}


def pre_batchnorm_bias(key):
    """True for the bias of a conv in front of BatchNorm (``enc*_conv*/bias``, ``dec*_conv*/bias``): BatchNorm
    subtracts it again, so its gradient is float round-off (|g| ~ 1e-13) in both implementations and Adam
    moves it by a random fraction of ``lr``; it changes no output in training mode."""
    layer, attribute = key.split("/")
    return attribute == "bias" and layer.startswith(("enc", "dec"))


def running_statistic(key):
    return key.endswith(("/moving_mean", "/moving_variance"))


def largest_relative_difference(ours, theirs):
    """Largest ``|a - b| / |b|`` (Euclidean norms per tensor) over the keys, pre-BatchNorm biases left out."""
    return max(float(np.linalg.norm(ours[k] - theirs[k]) / np.linalg.norm(theirs[k]))
               for k in theirs if not pre_batchnorm_bias(k))


def trainable_keys(theirs):
    """The keys of trainable tensors other than pre-BatchNorm biases."""
    return [k for k in theirs if not running_statistic(k) and not pre_batchnorm_bias(k)]


def largest_weight_difference(ours, theirs, statistics=False):
    """Largest element difference over the trainable tensors (pre-BatchNorm biases left out), or with
    ``statistics`` over the BatchNorm running means and variances."""
    keys = [k for k in theirs if running_statistic(k)] if statistics else trainable_keys(theirs)
    return max(float(np.abs(ours[k] - theirs[k]).max()) for k in keys)


def rms_weight_difference(ours, theirs):
    """Root mean square difference over the elements of the trainable tensors (pre-BatchNorm biases left out)."""
    keys = trainable_keys(theirs)
    return float(np.sqrt(np.mean(np.concatenate([((ours[k] - theirs[k]) ** 2).ravel() for k in keys]))))


def largest_update_difference(ours, theirs, initial):
    """Largest ``|w - w_ref| / |w_ref - w_initial|`` over the trainable tensors (pre-BatchNorm biases left
    out): the fraction of the reference's update that the two do not share."""
    return max(float(np.linalg.norm(ours[k] - theirs[k]) / np.linalg.norm(theirs[k] - initial[k]))
               for k in trainable_keys(theirs))


def compare(port, reference, method, gradients=None):
    """The figures of the module docstring for one port run (:func:`train_port`) and, if given, its step-1
    gradients (:func:`first_step_gradients`)."""
    figures = weight_figures(port, reference.port(method + "/state_1"), reference.port(method + "/" + reference.last),
                             reference)
    figures.update(sim=_relative(port["sim_loss"], reference.arrays[method + "/sim_loss"]),
                   reg=_relative(port["reg_loss"], reference.arrays[method + "/reg_loss"]),
                   flow=float(np.abs(port["eval_flow"] - reference.arrays[method + "/eval_flow"].transpose(1, 2, 0)).max()))
    if gradients is not None:
        figures["grad1"] = largest_relative_difference(gradients[2], reference.port(method + "/grad_applied"))
    return figures


def reference_drift(reference, method):
    """The reference against itself from initial weights nudged by one ulp: ``sim``, ``reg``, ``wN``, ``uN``,
    ``stats``."""
    recorded = {reference.last: reference.port(method + "/nudged_" + reference.last)}
    figures = weight_figures(recorded, None, reference.port(method + "/" + reference.last), reference)
    figures.update(sim=_relative(reference.arrays[method + "/nudged_sim_loss"], reference.arrays[method + "/sim_loss"]),
                   reg=_relative(reference.arrays[method + "/nudged_reg_loss"], reference.arrays[method + "/reg_loss"]))
    return figures


def weight_figures(ours, theirs_1, theirs_last, reference):
    """``w1`` (if ``theirs_1`` is given), ``wN``, ``uN`` and ``stats`` of the module docstring: ``ours`` holds
    ``state_1`` and ``state_<steps>``, the others are the reference's states after step 1 and the last."""
    last = ours[reference.last]
    figures = {"wN": rms_weight_difference(last, theirs_last) / reference.lr,
               "uN": largest_update_difference(last, theirs_last, reference.port("initial_state")),
               "stats": largest_weight_difference(last, theirs_last, statistics=True)}
    if theirs_1 is not None:
        figures["w1"] = largest_weight_difference(ours["state_1"], theirs_1) / reference.lr
    return figures


def _relative(ours, theirs):
    """Largest ``|a - b| / |b|`` over the elements (the steps' losses)."""
    return float(np.max(np.abs(ours - theirs) / np.abs(theirs)))


def _set_batchnorm(network, **attributes):
    for layer in network.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            for name, value in attributes.items():
                setattr(layer, name, value)


#: ``name: (network keywords, change applied to the network, training-model keywords)``.
VARIANTS = {
    "port as it trains (zero padding)": ({}, None, {}),
    "+ grid_sample's rounding (exact emulation)": ({"grid_sample_rounding": True}, None, {}),
    "emulation, border padding (voxelmorph's)": ({"grid_sample_rounding": True, "warp_padding": "border"}, None, {}),
    "emulation, BatchNorm epsilon 1e-3 (Keras')": ({"grid_sample_rounding": True},
                                                   lambda n: _set_batchnorm(n, epsilon=1e-3), {}),
    "emulation, BatchNorm momentum 0.99 (Keras')": ({"grid_sample_rounding": True},
                                                    lambda n: _set_batchnorm(n, momentum=0.99), {}),
    "emulation, Adam epsilon 1e-7 on sqrt(v) (Keras')": (
        {"grid_sample_rounding": True}, None, {"optimizer": "keras_adam"}),
    "emulation, l2 Grad penalty": ({"grid_sample_rounding": True}, None, {"reg_penalty": "l2"}),
}


def run_variant(reference, method, name):
    """:func:`compare` figures of one :data:`VARIANTS` entry for one method."""
    network_kwargs, change, model_kwargs = VARIANTS[name]
    model_kwargs = dict(model_kwargs)
    if model_kwargs.get("optimizer") == "keras_adam":
        model_kwargs["optimizer"] = tf.keras.optimizers.Adam(learning_rate=reference.lr)
    models = []
    for _ in range(2):   # one for the step-1 gradients, one to train
        network = port_network(reference, **network_kwargs)
        if change:
            change(network)
        models.append(training_model(network, method, reference, **model_kwargs))
    return compare(train_port(models[1], reference), reference, method, first_step_gradients(models[0], reference))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default=REFERENCE_STEPS, help="an .npz of benchmarks/reference_steps.py")
    parser.add_argument("--methods", default=",".join(METHODS), help="recorded methods to compare")
    args = parser.parse_args()
    reference = ReferenceSteps(args.reference)
    print("reference %s (torch %s); %d steps of batch %d at %dx%d, features %s, lr %g; TensorFlow %s"
          % (reference.commit[:7], reference.torch_version, reference.steps, reference.moving.shape[1],
             reference.size, reference.size, ",".join(map(str, reference.features)), reference.lr, tf.__version__))
    columns = ("grad1", "sim", "reg", "w1", "wN", "uN", "stats", "flow")
    for method in args.methods.split(","):
        print("\n%s:\n%-50s %s" % (method, "variant", " ".join("%9s" % c for c in columns)))
        for name in VARIANTS:
            figures = run_variant(reference, method, name)
            print("%-50s %s" % (name, " ".join("%9.2e" % figures[c] for c in columns)), flush=True)
        drift = reference_drift(reference, method)
        print("%-50s %s" % ("reference vs itself nudged by 1 ulp",
                            " ".join("%9.2e" % drift[c] if c in drift else "%9s" % "-" for c in columns)))


if __name__ == "__main__":
    main()
