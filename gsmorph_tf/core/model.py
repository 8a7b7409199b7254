"""``GradientSurgeryModel``: a Keras model whose ``train_step`` applies gradient surgery.

Wraps any registration network whose first two outputs are ``(moved, flow)``. Each step computes the
similarity loss on ``(fixed, moved)`` and the smoothness loss on ``flow`` under one persistent
``GradientTape``, takes the two gradients separately, combines them with
:func:`gsmorph_tf.core.surgery.project_gradients` and applies the result. Everything else (``fit``, callbacks,
progress bar, checkpoints, ``tf.distribute`` strategies) is ordinary Keras.

Under a strategy with several replicas (:mod:`gsmorph_tf.train.distribute`) the two gradients are all-reduced
separately and projected once, on the global gradients; with a ``LossScaleOptimizer`` (mixed precision) both
losses are scaled and both gradients unscaled before the projection. See
:meth:`GradientSurgeryModel.train_step`.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import tensorflow as tf

from gsmorph_tf.core import losses
from gsmorph_tf.core.surgery import check_mode, group_cosines, project_gradients, variable_groups


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


def replicas_in_sync():
    """How many replicas run this step together (1 on one device or outside a replica context)."""
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def global_batch_fraction(batch):
    """This replica's share of the global batch, ``local_batch / global_batch`` (float32 scalar).

    Multiplying a replica's batch-mean loss by it makes the sum over replicas the global-batch mean, also
    when the strategy split the last batch unevenly. Costs one scalar all-reduce. Call in a replica context.
    """
    local = tf.cast(tf.shape(batch)[0], tf.float32)
    return local / tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, local)


def all_reduce_gradients(gradient_lists):
    """Sum each gradient list over all replicas (one collective call for all of them, each list reduced on
    its own: nothing is added across lists). ``None`` entries stay ``None``.

    Returns:
        The lists in the same structure, holding the global sums.
    """
    flat = [g for grads in gradient_lists for g in grads if g is not None]
    reduced = iter(tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, flat))
    return [[None if g is None else next(reduced) for g in grads] for grads in gradient_lists]


def record_batch_mean(tracker, value, batch, distributed):
    """Add a batch mean to a ``Mean`` tracker. Under a strategy (``distributed``) a replica that got no
    example of a partial batch (its mean is NaN) adds nothing instead of turning the running mean into NaN."""
    if not distributed:
        tracker.update_state(value)
        return
    present = tf.cast(tf.shape(batch)[0] > 0, value.dtype)
    tracker.update_state(tf.math.multiply_no_nan(value, present), sample_weight=present)


def _nan_unless_finite(grads, checked):
    """``grads`` unchanged if every tensor in ``checked`` is finite, else all NaN.

    A LossScaleOptimizer skips a step (and lowers its scale) when the gradients it is given are not finite.
    The projection can turn an overflowed g_reg into a finite result (where <g_sim, g_reg> > 0 it returns
    g_sim alone), so the overflow of either input must be passed on explicitly.
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in checked if g is not None])
    poison = tf.where(finite, 0.0, float("nan"))
    return [None if g is None else g + tf.cast(poison, g.dtype) for g in grads]


class GradientSurgeryModel(tf.keras.Model):
    """Train a registration network with gradient surgery between similarity and smoothness.

    Logged every step (Keras logs and, under the TensorBoard callback, per-step summaries ``step/*``):
    ``sim_loss``, ``reg_loss``, ``conflict_fraction`` (fraction of groups whose gradients have a negative
    inner product) and ``mean_cosine`` (mean cosine between ``g_sim`` and ``g_reg`` over groups).

    Args:
        network: Keras model taking ``[moving, fixed]`` and returning ``(moved, flow, ...)``.
        similarity: ``mse`` or ``ncc`` (see :func:`gsmorph_tf.core.losses.similarity_loss`), or a callable
            ``f(fixed, moved) -> scalar``.
        reg_penalty: ``l1`` (the GSMorph reference's ``Grad()``) or ``l2`` spatial-gradient penalty on ``flow``,
            or a callable ``f(flow) -> scalar``.
        surgery: one of :data:`gsmorph_tf.core.surgery.SURGERY_MODES`.
        lam: smoothness weight, used only by surgery ``none`` (``L_sim + lam * L_reg``).
        grouping: ``variable`` or ``layer`` (see :func:`gsmorph_tf.core.surgery.variable_groups`).
        seed: integer seed for the random parts of ``agr_rand`` (combined with the step number).
        ncc_window: window side for ``ncc``.
        conflict_diagnostics: with surgery ``none``, compute the two gradients separately so the conflict
            statistics can be logged (an extra backward pass); False takes one backward pass of
            ``L_sim + lam * L_reg`` and logs no conflict statistics. Other modes always need both gradients.
        moved_output: name of the network output the similarity scores; None: the first output. ULAE-net's
            reference objective scores ``step3_moved`` (its image resampled step by step). The smoothness
            loss always takes the second output, the field.
    """

    def __init__(self, network, similarity="mse", reg_penalty="l1", surgery="layerwise", lam=0.01,
                 grouping="variable", seed=0, ncc_window=9, conflict_diagnostics=True, moved_output=None,
                 **kwargs):
        super().__init__(**kwargs)
        check_mode(surgery)
        self.network = network
        names = list(network.output_names)
        if moved_output is not None and moved_output not in names:
            raise ValueError("moved_output=%r is not an output of network %s; its outputs: %s"
                             % (moved_output, network.name, ", ".join(names)))
        self.moved_index = 0 if moved_output is None else names.index(moved_output)
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
        # The logs are tracker results, already aggregated over all replicas: Keras' default ("auto") would
        # sum them over the replicas again under a multi-worker strategy (a validation loss x the workers).
        self.distribute_reduction_method = "first"

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
        moved, flow = outputs[self.moved_index], outputs[1]
        return self.similarity_fn(fixed, moved), self.regularizer_fn(flow)

    def train_step(self, data):
        """One step: both gradients, surgery, update; returns the logs.

        On one device (the default strategy) this is exactly: ``g_sim`` and ``g_reg`` of the batch-mean
        losses, ``project_gradients``, ``apply_gradients``.

        Under a strategy with ``R > 1`` replicas each replica holds a slice of the global batch. The
        projection is non-linear: projecting each replica's gradients and summing the results (what the
        optimizer's usual aggregation would do) is not the projection of the global gradients; nor is the
        conflict test on one replica's slice the conflict test on the batch. So each replica scales its two
        losses by its share of the global batch (:func:`global_batch_fraction`: the sum over replicas is then
        the global-batch mean, not ``R`` times it), takes both gradients, and the two gradient lists are
        all-reduced *separately*; every replica then projects the same global ``g_sim`` and ``g_reg`` (same
        inputs, same seed, same result) and applies it with ``skip_gradients_aggregation=True``, so nothing
        is summed a second time. The conflict statistics are computed on the global gradients. Surgery
        ``none`` goes the same way (its weighted sum is linear, but the loss scaling is what keeps the step
        the size it has on one device).

        With a ``tf.keras.mixed_precision.LossScaleOptimizer``, both losses are multiplied by the loss scale
        before differentiation and both gradients unscaled (before the all-reduce and the projection, which
        must see true magnitudes); a step where either gradient is not finite is skipped and the scale
        lowered, as the LossScaleOptimizer does for an ordinary loss.
        """
        moving, fixed = unpack_pair(data)
        variables = self.network.trainable_variables
        # Summaries need an explicit step: the TensorBoard callback's default step is a snapshot taken at
        # train begin. The optimizer's counter is checkpointed, so steps also continue across a resume.
        step = tf.identity(self.optimizer.iterations)
        distributed = replicas_in_sync() > 1
        loss_scaling = hasattr(self.optimizer, "get_scaled_loss")  # a LossScaleOptimizer
        with tf.GradientTape(persistent=self.separate_gradients) as tape:
            sim, reg = self.compute_losses(moving, fixed, training=True)
            objectives = [sim, reg] if self.separate_gradients else [sim + self.lam * reg]
            if distributed:
                # multiply_no_nan: a replica that got no examples (NaN mean) contributes 0, not NaN.
                fraction = global_batch_fraction(moving)
                objectives = [tf.math.multiply_no_nan(o, fraction) for o in objectives]
            if loss_scaling:
                objectives = [self.optimizer.get_scaled_loss(o) for o in objectives]
        gradient_lists = [tape.gradient(o, variables) for o in objectives]
        del tape
        if loss_scaling:
            gradient_lists = [self.optimizer.get_unscaled_gradients(g) for g in gradient_lists]
        if distributed:
            gradient_lists = all_reduce_gradients(gradient_lists)
        if self.separate_gradients:
            sim_grads, reg_grads = gradient_lists
            step_seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
            grads = project_gradients(sim_grads, reg_grads, self.surgery, lam=self.lam,
                                      groups=self.groups, seed=step_seed)
            if loss_scaling:
                grads = _nan_unless_finite(grads, sim_grads + reg_grads)
            cosines = group_cosines(sim_grads, reg_grads, self.groups)
            conflict = tf.reduce_mean(tf.cast(cosines < 0.0, tf.float32))
            mean_cosine = tf.reduce_mean(cosines)
            self.conflict_tracker.update_state(conflict)
            self.cosine_tracker.update_state(mean_cosine)
            tf.summary.scalar("step/conflict_fraction", conflict, step=step)
            tf.summary.scalar("step/mean_cosine", mean_cosine, step=step)
            tf.summary.histogram("step/group_cosine", cosines, step=step)
        else:
            grads = gradient_lists[0]
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if distributed:
            self.optimizer.apply_gradients(pairs, skip_gradients_aggregation=True)  # already global sums
        else:
            self.optimizer.apply_gradients(pairs)
        # The trackers get this replica's batch means; reading them averages over replicas.
        record_batch_mean(self.sim_tracker, sim, moving, distributed)
        record_batch_mean(self.reg_tracker, reg, moving, distributed)
        # Instantaneous per-step values (the Keras logs are running means over the epoch).
        tf.summary.scalar("step/sim_loss", sim, step=step)
        tf.summary.scalar("step/reg_loss", reg, step=step)
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        moving, fixed = unpack_pair(data)
        sim, reg = self.compute_losses(moving, fixed, training=False)
        distributed = replicas_in_sync() > 1
        record_batch_mean(self.sim_tracker, sim, moving, distributed)
        record_batch_mean(self.reg_tracker, reg, moving, distributed)
        return {"sim_loss": self.sim_tracker.result(), "reg_loss": self.reg_tracker.result()}
