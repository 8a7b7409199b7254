"""HyperMorph baseline (Hoopes et al., IPMI 2021 / MELBA 2022) on voxelmorph's ``HyperVxmDense``.

One network is trained for all smoothness weights at once: a hypernetwork maps ``lambda`` to the
registration U-Net's conv weights, and each training batch draws ``lambda ~ U(0, 1)`` and minimises
``(1 - lambda) L_sim + lambda L_reg``. At test time ``lambda`` is an input: it is chosen on the validation
split (:func:`select_lambda`) and frozen into a plain ``[moving, fixed] -> [moved, flow]`` model
(:func:`fixed_lambda_network`), so evaluation and export treat it like any other network.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf.core import losses
from gsmorph_tf.core.model import global_batch_fraction, replicas_in_sync, unpack_pair
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.models.gsmorph import compile_and_build
from gsmorph_tf.plugins import ModelPlugin

#: HyperMorph's lambda for the per-epoch validation metrics (~ VoxelMorph's lam 0.01 with MSE).
VALIDATION_LAMBDA = 0.01

#: Validation grid for lambda; denser at small values, where VoxelMorph's useful weights lie.
LAMBDA_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)


def build_hypermorph(inshape, int_steps=0, name="hypermorph"):
    """voxelmorph's HyperVxmDense with its default U-Net. Inputs ``[moving, fixed, lambda [B, 1]]``,
    outputs ``[moved, flow]`` (flow in voxels, as :func:`gsmorph_tf.models.networks.build_gsmorph_unet`)."""
    return vxm.networks.HyperVxmDense(tuple(int(s) for s in inshape), int_steps=int_steps, name=name)


class HyperMorphModel(tf.keras.Model):
    """Trains a HyperVxmDense network with ``lambda ~ U(0, 1)`` drawn per batch.

    Logs ``sim_loss``, ``reg_loss`` and ``loss`` = ``(1 - lambda) sim + lambda reg`` (running means).
    """

    def __init__(self, network, similarity="mse", reg_penalty="l2", ncc_window=9, ncc_formula="voxelmorph", seed=0,
                 **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.similarity_fn = losses.similarity_loss(similarity, ncc_window, ncc_formula)
        self.regularizer_fn = losses.smoothness_loss(reg_penalty)
        self.seed = int(seed)
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")
        self.sim_tracker = tf.keras.metrics.Mean(name="sim_loss")
        self.reg_tracker = tf.keras.metrics.Mean(name="reg_loss")
        self.distribute_reduction_method = "first"  # tracker results are global already (see GradientSurgeryModel)

    @property
    def metrics(self):
        return [self.loss_tracker, self.sim_tracker, self.reg_tracker]

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def weighted_losses(self, moving, fixed, lam, training):
        """``(sim, reg, (1 - lam) sim + lam reg)`` scalars for one batch at smoothness weight ``lam``."""
        hyper = tf.fill([tf.shape(moving)[0], 1], lam)
        moved, flow = self.network([moving, fixed, hyper], training=training)[:2]
        sim, reg = self.similarity_fn(fixed, moved), self.regularizer_fn(flow)
        return sim, reg, (1.0 - lam) * sim + lam * reg

    def train_step(self, data):
        """One step at a lambda drawn from the step number: one backward pass of the weighted loss.

        Under a strategy with several replicas every replica draws the same lambda (same seed and step) and
        scales its batch-mean loss by its share of the global batch, so the optimizer's usual sum over
        replicas is the gradient of the global-batch mean, as on one device (the update is linear in the
        gradient, so no separate reduction is needed here, unlike gradient surgery).
        """
        moving, fixed = unpack_pair(data)
        seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        lam = tf.random.stateless_uniform([], seed=seed)
        with tf.GradientTape() as tape:
            sim, reg, loss = self.weighted_losses(moving, fixed, lam, training=True)
            objective = loss
            if replicas_in_sync() > 1:
                objective = tf.math.multiply_no_nan(loss, global_batch_fraction(moving))
        variables = self.network.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(objective, variables), variables))
        for tracker, value in zip(self.metrics, (loss, sim, reg)):
            tracker.update_state(value)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        # Validation loss at lambda = 0.5: a fixed point that makes epochs comparable.
        moving, fixed = unpack_pair(data)
        sim, reg, loss = self.weighted_losses(moving, fixed, tf.constant(0.5), training=False)
        for tracker, value in zip(self.metrics, (loss, sim, reg)):
            tracker.update_state(value)
        return {m.name: m.result() for m in self.metrics}


def fixed_lambda_network(network, lam, name=None):
    """A ``[moving, fixed] -> [moved, flow]`` model that runs the HyperMorph ``network`` at ``lambda = lam``.

    Inputs are named ``moving`` and ``fixed`` like the other networks, so evaluation and SavedModel export
    use it unchanged.
    """
    spatial = network.inputs[0].shape[1:]
    moving = tf.keras.Input(spatial, name="moving")
    fixed = tf.keras.Input(spatial, name="fixed")
    hyper = tf.keras.layers.Lambda(lambda x: tf.fill([tf.shape(x)[0], 1], float(lam)), name="lambda")(moving)
    moved, flow = network([moving, fixed, hyper])[:2]
    moved = tf.keras.layers.Activation("linear", name="moved")(moved)
    flow = tf.keras.layers.Activation("linear", name="flow")(flow)
    return tf.keras.Model([moving, fixed], [moved, flow], name=name or "hypermorph_lambda_%g" % lam)


def select_lambda(network, subjects, grid=LAMBDA_GRID, batch_size=32, protocol="volume"):
    """Choose lambda on validation subjects: the grid value with the highest mean Dice (ties: smaller NJD).

    Returns:
        ``(best_lambda, scores)`` with ``scores`` a list of ``{"lambda", "dice", "njd"}`` per grid value.
    """
    if not subjects:
        raise ValueError("select_lambda needs at least one validation subject")
    scores = []
    for lam in grid:
        rows = evaluation.evaluate_network(fixed_lambda_network(network, lam), subjects, batch_size,
                                           protocol=protocol)
        summary = evaluation.summarize(rows)
        scores.append({"lambda": float(lam), "dice": summary["dice_mean"]["mean"], "njd": summary["njd"]["mean"]})
    best = max(scores, key=lambda s: (np.nan_to_num(s["dice"], nan=-1.0), -s["njd"]))
    return best["lambda"], scores


class HyperMorphPlugin(ModelPlugin):
    """The ``hypermorph`` entry of :data:`gsmorph_tf.registry.MODELS` (2D, ``surgery=none``, mse or ncc).

    Monitored per epoch at :data:`VALIDATION_LAMBDA`; after training, lambda is chosen on the validation
    split and frozen into the evaluated and served network (``chosen["hypermorph_lambda"]``).
    """

    chosen_for_serving = {"hypermorph_lambda": "HyperMorph lambda"}

    def build_network(self, config, inshape):
        return build_hypermorph(inshape, int_steps=config.int_steps)

    def build_training_model(self, config, network):
        model = HyperMorphModel(network, similarity=config.similarity, reg_penalty=config.reg_penalty,
                                ncc_window=config.ncc_window, ncc_formula=config.ncc, seed=config.seed)
        zeros = tf.zeros((1, *network.inputs[0].shape[1:]))
        return compile_and_build(model, config, [zeros, zeros, tf.zeros((1, 1))])

    def method_name(self, config, chosen=None):
        return "HyperMorph" + (" (lambda=%g)" % chosen["hypermorph_lambda"] if chosen else "")

    def monitoring_network(self, network):
        return fixed_lambda_network(network, VALIDATION_LAMBDA)

    def finalize(self, config, network, splits, log=print):
        lam, scores = select_lambda(network, splits["val"], batch_size=config.batch_size,
                                    protocol=config.metric_protocol)
        log("HyperMorph: lambda %g chosen on the validation split (mean Dice %.2f %%)"
            % (lam, max(s["dice"] for s in scores if s["lambda"] == lam)))
        return fixed_lambda_network(network, lam), {"hypermorph_lambda": lam, "lambda_scores": scores}

    def serving_network(self, network, chosen):
        return fixed_lambda_network(network, float(chosen["hypermorph_lambda"]))


MODEL = HyperMorphPlugin()
