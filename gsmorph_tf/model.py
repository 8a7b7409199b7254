"""``GradientSurgeryModel``: a Keras model whose ``train_step`` applies gradient surgery.

Wraps any registration network whose first two outputs are ``(moved, flow)``. Each step computes the
similarity loss on ``(fixed, moved)`` and the smoothness loss on ``flow`` under one persistent
``GradientTape``, takes the two gradients separately, combines them with
:func:`gsmorph_tf.surgery.project_gradients` and applies the result. Everything else (``fit``, callbacks,
progress bar, checkpoints) is ordinary Keras.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import tensorflow as tf

from gsmorph_tf import losses
from gsmorph_tf.surgery import check_mode, group_cosines, project_gradients, variable_groups


def unpack_pair(data):
    """``(moving, fixed)`` from a batch: a dict with keys ``moving``/``fixed`` (as
    :func:`gsmorph_tf.data.pipeline.make_dataset` yields), or a ``(moving, fixed)`` tuple, optionally wrapped
    in Keras' ``(x,)`` / ``(x, y)`` form."""
    if isinstance(data, (tuple, list)) and len(data) in (1, 2) and isinstance(data[0], (dict, tuple, list)):
        data = data[0]
    if isinstance(data, dict):
        return data["moving"], data["fixed"]
    moving, fixed = data
    return moving, fixed


class GradientSurgeryModel(tf.keras.Model):
    """Train a registration network with gradient surgery between similarity and smoothness.

    Logged every step (Keras logs and, under the TensorBoard callback, per-step summaries ``step/*``):
    ``sim_loss``, ``reg_loss``, ``conflict_fraction`` (fraction of groups whose gradients have a negative
    inner product) and ``mean_cosine`` (mean cosine between ``g_sim`` and ``g_reg`` over groups).

    Args:
        network: Keras model taking ``[moving, fixed]`` and returning ``(moved, flow, ...)``.
        similarity: ``mse`` or ``ncc`` (see :func:`gsmorph_tf.losses.similarity_loss`), or a callable
            ``f(fixed, moved) -> scalar``.
        reg_penalty: ``l1`` (the GSMorph reference's ``Grad()``) or ``l2`` spatial-gradient penalty on ``flow``,
            or a callable ``f(flow) -> scalar``.
        surgery: one of :data:`gsmorph_tf.surgery.SURGERY_MODES`.
        lam: smoothness weight, used only by surgery ``none`` (``L_sim + lam * L_reg``).
        grouping: ``variable`` or ``layer`` (see :func:`gsmorph_tf.surgery.variable_groups`).
        seed: integer seed for the random parts of ``agr_rand`` (combined with the step number).
        ncc_window: window side for ``ncc``.
        conflict_diagnostics: with surgery ``none``, compute the two gradients separately so the conflict
            statistics can be logged (an extra backward pass); False takes one backward pass of
            ``L_sim + lam * L_reg`` and logs no conflict statistics. Other modes always need both gradients.
    """

    def __init__(self, network, similarity="mse", reg_penalty="l1", surgery="layerwise", lam=0.01,
                 grouping="variable", seed=0, ncc_window=9, conflict_diagnostics=True, **kwargs):
        super().__init__(**kwargs)
        check_mode(surgery)
        self.network = network
        self.similarity_fn = similarity if callable(similarity) else losses.similarity_loss(similarity, ncc_window)
        self.regularizer_fn = reg_penalty if callable(reg_penalty) else losses.smoothness_loss(reg_penalty)
        self.surgery = surgery
        self.lam = float(lam)
        self.grouping = grouping
        self.seed = int(seed)
        self.separate_gradients = surgery != "none" or bool(conflict_diagnostics)
        # Groups are static index lists, fixed once the network's variables exist.
        self.groups = variable_groups(network, grouping)
        self.sim_tracker = tf.keras.metrics.Mean(name="sim_loss")
        self.reg_tracker = tf.keras.metrics.Mean(name="reg_loss")
        self.conflict_tracker = tf.keras.metrics.Mean(name="conflict_fraction")
        self.cosine_tracker = tf.keras.metrics.Mean(name="mean_cosine")

    @property
    def metrics(self):
        trackers = [self.sim_tracker, self.reg_tracker]
        if self.separate_gradients:
            trackers += [self.conflict_tracker, self.cosine_tracker]
        return trackers

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def compute_losses(self, moving, fixed, training):
        """Forward pass; returns ``(sim_loss, reg_loss)`` scalars."""
        outputs = self.network([moving, fixed], training=training)
        moved, flow = outputs[0], outputs[1]
        return self.similarity_fn(fixed, moved), self.regularizer_fn(flow)

    def train_step(self, data):
        moving, fixed = unpack_pair(data)
        variables = self.network.trainable_variables
        # Summaries need an explicit step: the TensorBoard callback's default step is a snapshot taken at
        # train begin. The optimizer's counter is checkpointed, so steps also continue across a resume.
        step = tf.identity(self.optimizer.iterations)
        with tf.GradientTape(persistent=self.separate_gradients) as tape:
            sim, reg = self.compute_losses(moving, fixed, training=True)
            total = sim + self.lam * reg
        if self.separate_gradients:
            sim_grads = tape.gradient(sim, variables)
            reg_grads = tape.gradient(reg, variables)
            del tape
            step_seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
            grads = project_gradients(sim_grads, reg_grads, self.surgery, lam=self.lam,
                                       groups=self.groups, seed=step_seed)
            cosines = group_cosines(sim_grads, reg_grads, self.groups)
            conflict = tf.reduce_mean(tf.cast(cosines < 0.0, tf.float32))
            mean_cosine = tf.reduce_mean(cosines)
            self.conflict_tracker.update_state(conflict)
            self.cosine_tracker.update_state(mean_cosine)
            tf.summary.scalar("step/conflict_fraction", conflict, step=step)
            tf.summary.scalar("step/mean_cosine", mean_cosine, step=step)
            tf.summary.histogram("step/group_cosine", cosines, step=step)
        else:
            grads = tape.gradient(total, variables)
        self.optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        self.sim_tracker.update_state(sim)
        self.reg_tracker.update_state(reg)
        # Instantaneous per-step values (the Keras logs are running means over the epoch).
        tf.summary.scalar("step/sim_loss", sim, step=step)
        tf.summary.scalar("step/reg_loss", reg, step=step)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        moving, fixed = unpack_pair(data)
        sim, reg = self.compute_losses(moving, fixed, training=False)
        self.sim_tracker.update_state(sim)
        self.reg_tracker.update_state(reg)
        return {"sim_loss": self.sim_tracker.result(), "reg_loss": self.reg_tracker.result()}
