"""Gradient surgery: combine the similarity and regularisation gradients without a weighting lambda.

GSMorph (Dou et al., MICCAI 2023, Algorithm 1) computes the gradient of the similarity loss ``g_sim`` and of
the smoothness regulariser ``g_reg`` separately and, per parameter group ``i``::

    if <g_sim_i, g_reg_i> > 0:  g_i = g_sim_i
    else:                       g_i = g_sim_i - <g_sim_i, g_reg_i> / ||g_reg_i||^2 * g_reg_i

i.e. where the two objectives conflict, the component of ``g_sim`` that opposes ``g_reg`` is projected away.

Everything here is a pure function of two gradient lists (aligned with a model's trainable variables), so it
runs inside ``tf.function`` and is tested with hand-made tensors; :mod:`gsmorph_tf.core.model` only wires it into
``train_step``. A *group* is a list of indices into those lists; by default every variable (kernel, bias, BN
gamma, BN beta) is its own group, as in the paper's reference implementation.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import tensorflow as tf

# The names of the modes and groupings belong to the settings vocabulary (light, for --help).
from gsmorph_tf.config import GROUPINGS, SURGERY_MODES  # noqa: F401  (re-exported)


def check_mode(mode):
    """Raise ``ValueError`` naming the valid modes unless ``mode`` is one of :data:`SURGERY_MODES`."""
    if mode not in SURGERY_MODES:
        raise ValueError("unknown surgery mode %r; valid modes are: %s" % (mode, ", ".join(SURGERY_MODES)))


def _fill_missing(sim_grads, reg_grads):
    """Replace a ``None`` gradient by zeros shaped like its partner; indices where both are None are dropped.

    Returns ``(sim, reg, present)``: dense lists and the indices they came from.
    """
    if len(sim_grads) != len(reg_grads):
        raise ValueError("sim_grads and reg_grads must be aligned with the same variables, got lengths "
                         "%d and %d" % (len(sim_grads), len(reg_grads)))
    sim, reg, present = [], [], []
    for i, (s, r) in enumerate(zip(sim_grads, reg_grads)):
        if s is None and r is None:
            continue
        s = tf.zeros_like(r) if s is None else tf.convert_to_tensor(s)
        r = tf.zeros_like(s) if r is None else tf.convert_to_tensor(r)
        sim.append(s)
        reg.append(r)
        present.append(i)
    return sim, reg, present


def _dense_groups(groups, present, n):
    """Map groups of original indices to groups of positions in the dense lists (empty groups dropped)."""
    position = {index: k for k, index in enumerate(present)}
    if groups is None:
        return [[k] for k in range(len(present))]
    seen = set()
    dense = []
    for group in groups:
        members = []
        for index in group:
            if not 0 <= index < n:
                raise ValueError("group index %r is out of range for %d gradients" % (index, n))
            if index in seen:
                raise ValueError("gradient index %d appears in more than one group" % index)
            seen.add(index)
            if index in position:
                members.append(position[index])
        if members:
            dense.append(members)
    # A variable left out of every group still gets updated: it forms its own group.
    dense.extend([position[i]] for i in present if i not in seen)
    return dense


def _group_dot(a, b, members):
    return tf.add_n([tf.reduce_sum(a[k] * b[k]) for k in members])


def _project_groups(sim, reg, groups):
    """The GSMorph rule on each group: drop the part of g_sim along g_reg when their inner product is < 0."""
    out = list(sim)
    for members in groups:
        dot = _group_dot(sim, reg, members)
        reg_sq = _group_dot(reg, reg, members)
        # Inner product > 0 keeps g_sim; = 0 projects nothing either way; a zero g_reg gives 0/0 -> 0, not NaN.
        coef = tf.where(dot < 0.0, tf.math.divide_no_nan(dot, reg_sq), tf.zeros_like(dot))
        for k in members:
            out[k] = sim[k] - coef * reg[k]
    return out


def _agreement(sim, reg, randomize, seed):
    """GS-Agr, as the reference code computes it on the whole network's concatenated gradient.

    ``agree = sign(g_sim) == sign(g_reg)`` element-wise (so an element whose ``g_reg`` is exactly 0 agrees only
    if its ``g_sim`` is 0 too). ``agr_sum`` keeps ``agree * g_sim``; ``agr_rand`` puts ``N(0, 1) * s`` on the
    disagreeing elements, ``s = mean(|agree * g_sim|)`` over ALL elements of the network (zeros included).
    """
    agree = [tf.equal(tf.sign(s), tf.sign(r)) for s, r in zip(sim, reg)]
    kept = [tf.where(a, s, tf.zeros_like(s)) for a, s in zip(agree, sim)]
    if not randomize or not kept:
        return kept
    total = tf.add_n([tf.cast(tf.size(v), v.dtype) for v in kept])
    scale = tf.math.divide_no_nan(tf.add_n([tf.reduce_sum(tf.abs(v)) for v in kept]), total)
    out = []
    for index, (a, value) in enumerate(zip(agree, kept)):
        shape = tf.shape(value)
        if seed is None:
            noise = tf.random.normal(shape, dtype=value.dtype)
        else:
            # Each tensor gets its own stream derived from the (seed, step) pair.
            noise = tf.random.stateless_normal(shape, seed=tf.random.experimental.stateless_fold_in(seed, index),
                                               dtype=value.dtype)
        out.append(tf.where(a, value, scale * noise))
    return out


def _seed_pair(seed):
    """An int seed becomes ``[seed, 0]``; a length-2 integer tensor (e.g. ``[seed, step]``) is used as is."""
    if seed is None:
        return None
    seed = tf.convert_to_tensor(seed, dtype=tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.constant(0, tf.int64)])
    return seed


def project_gradients(sim_grads, reg_grads, mode, lam=0.01, groups=None, seed=None):
    """Combine similarity and regularisation gradients by the chosen surgery mode.

    Args:
        sim_grads: list of gradient tensors of the similarity loss, aligned with the trainable variables;
            entries may be None (a variable the loss does not reach).
        reg_grads: same for the regularisation loss.
        mode: one of :data:`SURGERY_MODES`:
            ``none``: ``g_sim + lam * g_reg`` (VoxelMorph; lam 0.1 / 0.01 / 0.001 are the paper's l/m/s);
            ``layerwise``: GSMorph: per group, ``g_sim`` if ``<g_sim, g_reg> > 0`` else
            ``g_sim - <g_sim, g_reg> / ||g_reg||^2 * g_reg``;
            ``pcgrad``: the same rule once on the concatenation of all gradients (one group);
            ``agr_rand``: GS-Agr on the whole network (as the reference code): element-wise sign agreement
            ``sign(g_sim) == sign(g_reg)``; agreeing elements keep ``g_sim``, the others become Gaussian noise
            with std ``mean(|agree * g_sim|)`` over all elements;
            ``agr_sum``: as ``agr_rand`` but disagreeing elements are set to zero.
        lam: weight of ``g_reg``, used only by ``none``.
        groups: list of lists of indices into the gradient lists; None: each variable is its own group.
            Indices not in any group form groups of their own. Used by ``layerwise`` only.
        seed: for ``agr_rand``: None (stateful random), an int, or an int tensor of shape [2] such as
            ``[seed, step]`` so that noise is reproducible yet differs from step to step.

    Returns:
        A list aligned with the inputs: the combined gradient, or None where both inputs were None.

    Raises:
        ValueError: unknown ``mode`` (the message lists the valid ones), misaligned lists or bad groups.
    """
    check_mode(mode)
    n = len(sim_grads)
    sim, reg, present = _fill_missing(sim_grads, reg_grads)
    if mode == "none":
        combined = [s + lam * r for s, r in zip(sim, reg)]
    elif mode == "pcgrad":
        combined = _project_groups(sim, reg, [list(range(len(sim)))] if sim else [])
    elif mode == "layerwise":
        combined = _project_groups(sim, reg, _dense_groups(groups, present, n))
    else:
        combined = _agreement(sim, reg, randomize=(mode == "agr_rand"), seed=_seed_pair(seed))
    result = [None] * n
    for index, g in zip(present, combined):
        result[index] = g
    return result


def group_cosines(sim_grads, reg_grads, groups=None):
    """Cosine similarity between ``g_sim`` and ``g_reg`` within each group (the paper's Fig. 2 diagnostic).

    Args and grouping as :func:`project_gradients`. A group whose either gradient is zero has cosine 0.

    Returns:
        float tensor ``[n_groups]`` in [-1, 1]; negative entries are groups in conflict.
    """
    sim, reg, present = _fill_missing(sim_grads, reg_grads)
    cosines = []
    for members in _dense_groups(groups, present, len(sim_grads)):
        dot = _group_dot(sim, reg, members)
        norms = tf.sqrt(_group_dot(sim, sim, members) * _group_dot(reg, reg, members))
        cosines.append(tf.math.divide_no_nan(dot, norms))
    return tf.stack(cosines) if cosines else tf.zeros([0])


def variable_groups(model, grouping):
    """Groups of indices into ``model.trainable_variables`` for the layer-wise rule.

    Args:
        model: a built Keras model (nested models are searched down to their leaf layers).
        grouping: ``variable`` (each trainable tensor alone, as the paper's reference code) or ``layer``
            (all trainable tensors of one Keras layer together, e.g. a conv's kernel and bias).

    Returns:
        A list of lists of indices covering every trainable variable once.
    """
    if grouping not in GROUPINGS:
        raise ValueError("unknown grouping %r; valid groupings are: %s" % (grouping, ", ".join(GROUPINGS)))
    variables = model.trainable_variables
    if grouping == "variable":
        return [[i] for i in range(len(variables))]
    index = {v.ref(): i for i, v in enumerate(variables)}
    groups = []

    def visit(layer):
        sublayers = getattr(layer, "layers", None)
        if sublayers:
            for sub in sublayers:
                visit(sub)
            return
        members = [index.pop(v.ref()) for v in layer.trainable_weights if v.ref() in index]
        if members:
            groups.append(members)

    visit(model)
    groups.extend([i] for i in sorted(index.values()))  # variables owned directly by a model, if any
    return groups
