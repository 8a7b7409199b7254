"""Evaluate a registration network with the GSMorph paper's metrics, by one of two protocols.

All slices (2D) or volumes (3D) of a subject are registered and the moving label map is warped with
nearest-neighbour interpolation. The metrics are Dice (%) per structure and their mean, HD95 (mm) per
structure and their mean, MSE of the [0, 1] intensities (tables show it x1e-2 like the paper) and NJD (%
of pixels whose Jacobian determinant of x -> x + u(x) is non-positive or negative, see below). Two
protocols (:data:`gsmorph_tf.config.METRIC_PROTOCOLS`), named in every table and results JSON:

``volume`` (one row per subject)
    each metric on the subject's whole stack ``[S, H, W]`` as one volume, HD95 with its real spacing
    (slice, row, col in mm), NJD counting det <= 0; 3D tasks item by item, then averaged. Tables: mean +- std
    over subjects.
``paper`` (one row per 2D slice pair, as the GSMorph reference code scores its validation pairs)
    Dice and HD95 per structure on each slice, averaged over the structures; HD95 in mm with the in-plane
    spacing (the reference uses pixels: at ACDC's 1.25-1.5 mm pixels, multiply); MSE per pair; NJD = % of
    pixels with det **< 0** (the reference's SimpleITK count). Tables: mean +- std over slice pairs. 2D only.
    Structures absent on a slice (a deliberate deviation): where a structure is absent from both the fixed
    and the moved label map, its Dice and HD95 are undefined and left out (NaN) of that slice's mean over
    structures and of the structure's mean over slices; where it is present in only one of them its Dice is
    0 and its HD95 undefined (no surface to measure to), so left out. The reference instead sums the scores of
    the structures present in both maps and always divides by 3, so an absent structure counts as Dice 0 and
    HD95 0 mm: a perfect registration of an apical slice without RV would score 66.7 % Dice.

An ``Initial`` row (identity transform: moved = moving, zero flow) is the reference every method must beat.

The metric set (:data:`gsmorph_tf.config.METRIC_SETS`) chooses the scores themselves: ``ours`` (the above, the
default) or ``learn2reg``: the Learn2Reg challenge's own scores of 3D pairs
(:mod:`gsmorph_tf.evaluate.learn2reg_metrics`: Dice as a fraction, HD95 in voxels by the surface-distance method,
SDlogJ, TRE with landmarks), one row per pair with the columns ``l2r_*`` and, over the rows, Learn2Reg's aggregates
(:func:`learn2reg_aggregates`). The two are not comparable column for column: the ``l2r_`` prefix keeps them apart.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import time
import weakref

import numpy as np
import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf.config import METRIC_PROTOCOLS, METRIC_SETS
from gsmorph_tf.data.preprocessing import GOOD_CROP_COVERAGE
from gsmorph_tf.data.subjects import reporting_order
from gsmorph_tf.evaluate import learn2reg_metrics, metrics
from gsmorph_tf.fileio import atomic_write_text

#: Column order of the summary tables: (key in the per-subject rows, header).
TABLE_COLUMNS = (("dice_mean", "Dice (%)"), ("hd95_mean", "HD95 (mm)"), ("mse_x100", "MSE (x1e-2)"),
                 ("njd", "NJD (%)"))


#: Per network, its traced inference call (:func:`inference_call`); weakly keyed, so dropped with the network.
_INFERENCE_CALLS = weakref.WeakKeyDictionary()


def inference_call(network):
    """``network`` in inference mode (``training=False``) as one ``tf.function``, traced once per network.

    Returns ``f(moving [B, *vol, 1], fixed [B, *vol, 1]) -> (moved [B, *vol, 1], flow [B, *vol, ndim])``:
    tensors, the network's first two outputs. ``f`` keeps the network alive while ``f`` is held, and
    ``f.function`` is the ``tf.function`` it runs. Keras' ``predict`` instead builds a ``tf.data`` pipeline and
    an iterator on every call: per 3D pair at 32x48x32 on our 2-core AMD EPYC it took about 170 ms, this call 64
    to 110 ms (``benchmarks/ulae.py``; ``docs/results/speed.md``). The trace is kept for the network's lifetime
    (a table keyed weakly by the network, whose function refers to the network weakly, so the table alone does
    not keep it alive), so every subject of an evaluation and every epoch's images reuse it: it is traced once,
    for any batch size at the network's input shapes. The weights are read at each call, so the call follows
    training and test-time refinement.
    """
    function = _INFERENCE_CALLS.get(network)
    if function is None:
        held = weakref.ref(network)

        def infer(moving, fixed):
            outputs = held()([moving, fixed], training=False)
            return outputs[0], outputs[1]
        # Any batch size, the network's own input shapes: one trace, as Keras' predict_function has
        signature = [tf.TensorSpec([None, *x.shape[1:]], tf.float32) for x in network.inputs[:2]]
        function = _INFERENCE_CALLS[network] = tf.function(infer, input_signature=signature)

    def call(moving, fixed, _network=network):  # the default argument holds the network while call is held
        return function(moving, fixed)
    call.function = function
    return call


def predict_pairs(network, moving, fixed, batch_size=32):
    """Run a Keras ``network`` on stacks of 2D pairs, ``batch_size`` pairs a call.

    Args:
        network: Keras model ``[moving, fixed] -> (moved, flow, ...)``.
        moving, fixed: ``[S, H, W]`` float32 images in [0, 1].

    Returns:
        ``(moved [S, H, W], flow [S, H, W, 2])``, flow in pixels along (row, col). (3D: ``[S, D, H, W]`` and
        ``[S, D, H, W, 3]``.)
    """
    if _distributed(network):
        def call(m, f):
            return network({"moving": m, "fixed": f}, training=False)[:2]
    else:
        call = inference_call(network)
    parts = [[o.numpy() for o in call(tf.constant(moving[start:start + batch_size, ..., None], tf.float32),
                                      tf.constant(fixed[start:start + batch_size, ..., None], tf.float32))]
             for start in range(0, len(moving), batch_size)]
    moved, flow = (np.concatenate(outputs) for outputs in zip(*parts))
    return moved[..., 0], flow


def _distributed(network):
    """Whether ``network`` runs under a ``tf.distribute`` strategy: it was built in a strategy's scope, or is
    called inside one (a callback during ``fit``). :func:`predict_pairs` then calls it eagerly, batch by batch, on
    this process's first device, the same on every worker, not through :func:`inference_call` (Keras' ``predict``
    would split each batch over the replicas, and a replica given no example of a small batch fails in the
    U-Net's convolutions, and across workers it would run collectives)."""
    return tf.distribute.has_strategy() or network.distribute_strategy is not tf.distribute.get_strategy()


def keras_predictor(network, batch_size=32):
    """A predictor ``f(moving [S, H, W], fixed [S, H, W]) -> (moved [S, H, W], flow [S, H, W, 2])``."""
    return lambda moving, fixed: predict_pairs(network, moving, fixed, batch_size)


def savedmodel_predictor(path, batch_size=32):
    """A predictor (as :func:`keras_predictor`) running a SavedModel on the subjects' crops: its
    ``register_crop`` signature, or ``serving_default`` in exports older than ``register_crop`` (same contract).

    Raises:
        FileNotFoundError: ``path`` holds no ``saved_model.pb``.
    """
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError("no SavedModel at %s (expected %s)" % (path, os.path.join(path, "saved_model.pb")))
    signatures = tf.saved_model.load(path).signatures
    serve = signatures.get("register_crop") or signatures["serving_default"]

    def predict(moving, fixed):
        moved, flow = [], []
        for start in range(0, len(moving), batch_size):
            out = serve(moving=tf.constant(moving[start:start + batch_size, ..., None], tf.float32),
                        fixed=tf.constant(fixed[start:start + batch_size, ..., None], tf.float32))
            moved.append(out["moved"].numpy()[..., 0])
            flow.append(out["flow"].numpy())
        return np.concatenate(moved), np.concatenate(flow)
    return predict


def _warp(stack, flow, interp_method):
    """``stack [S, H, W]`` (or volumes ``[N, D, H, W]``) warped by ``flow [..., ndim]`` (voxels along each
    axis) with voxelmorph's transformer, ``interp_method`` ``linear`` or ``nearest``; float32 numpy."""
    warped = vxm.layers.SpatialTransformer(interp_method=interp_method, indexing="ij")(
        [tf.convert_to_tensor(stack[..., None], tf.float32), tf.convert_to_tensor(flow, tf.float32)])
    return warped.numpy()[..., 0]


def warp_labels(labels, flow):
    """Warp integer label maps ``[S, H, W]`` by flows ``[S, H, W, 2]`` (nearest neighbour, voxelmorph)."""
    return np.rint(_warp(labels, flow, "nearest")).astype(labels.dtype)


def warp_images(images, flow):
    """Warp images ``[S, H, W]`` by flows ``[S, H, W, 2]`` (pixels along row, col) with voxelmorph's linear
    transformer, as the networks make their ``moved`` output (edge values outside the image)."""
    return _warp(images, flow, "linear")


def subject_metrics(pairs, moved, moved_labels, flow):
    """Metrics of one subject's registration.

    Args:
        pairs: the subject's :class:`~gsmorph_tf.data.subjects.SubjectPairs` (fixed image and labels, spacing,
            structure names, and the true flow when the task has one).
        moved: warped moving images, shaped like ``pairs.moving``; moved_labels: warped moving labels;
        flow: displacement ``[..., ndim]`` in voxels, or None for the identity.

    Returns:
        dict: ``dice_<structure>`` (%), ``dice_mean``, ``hd95_<structure>`` (mm), ``hd95_mean``, ``mse``,
        ``mse_x100``, ``njd`` (%), ``sdlogj`` (Learn2Reg's, :func:`gsmorph_tf.evaluate.metrics.sdlogj`; a 2D stack slice
        by slice, averaged), and ``epe_mm`` (mean end-point error against ``pairs.true_flow`` over the
        fixed image's labelled voxels) when the true flow is known. A 2D slice stack is scored as one volume
        with its slice spacing; a 3D task item by item, then averaged. NaN where a structure is absent.
    """
    names = reporting_order(pairs.label_values)
    label_values = {name: pairs.label_values[name] for name in names}
    items = range(len(moved_labels)) if pairs.volumes_per_item else [slice(None)]
    dice = [metrics.dice_per_structure(moved_labels[i], pairs.fixed_labels[i], label_values) for i in items]
    hd = [metrics.hd95_per_structure(moved_labels[i], pairs.fixed_labels[i], label_values, pairs.spacing_mm)
          for i in items]
    row = {"subject": pairs.subject}
    for name in names:
        row["dice_%s" % name] = 100.0 * _nanmean([d[name] for d in dice])
        row["hd95_%s" % name] = _nanmean([h[name] for h in hd])
    row["dice_mean"] = _nanmean([row["dice_%s" % n] for n in names])
    row["hd95_mean"] = _nanmean([row["hd95_%s" % n] for n in names])
    row["mse"] = metrics.mse(moved, pairs.fixed)
    row["mse_x100"] = 100.0 * row["mse"]
    row["njd"] = 0.0 if flow is None else metrics.negative_jacobian_percent(flow)
    row["sdlogj"] = 0.0 if flow is None else _nanmean([_sdlogj(flow[i]) for i in items])
    if pairs.true_flow is not None:
        predicted = np.zeros_like(pairs.true_flow) if flow is None else flow
        # Components are along the array axes of each item: scale each by that axis' spacing (mm).
        error_mm = (predicted - pairs.true_flow) * np.asarray(pairs.spacing_mm[-predicted.shape[-1]:])
        row["epe_mm"] = float(np.linalg.norm(error_mm, axis=-1)[pairs.fixed_labels > 0].mean())
    return row


def slice_metrics(pairs, index, moved, moved_labels, flow):
    """Metrics of slice pair ``index`` of a subject, by the paper protocol (see the module docstring).

    Args:
        pairs: the subject's :class:`~gsmorph_tf.data.subjects.SubjectPairs` (a 2D slice stack).
        index: the slice; moved ``[H, W]``, moved_labels ``[H, W]``: the registered slice and its warped
            labels; flow ``[H, W, 2]`` in pixels, or None for the identity.

    Returns:
        dict: ``subject``, ``slice``, ``dice_<structure>`` (%), ``dice_mean``, ``hd95_<structure>`` (mm, in-plane
        spacing), ``hd95_mean``, ``mse``, ``mse_x100``, ``njd`` (% of pixels with det < 0), ``sdlogj``.
    """
    names = reporting_order(pairs.label_values)
    fixed_labels = pairs.fixed_labels[index]
    row = {"subject": pairs.subject, "slice": int(index)}
    for name in names:
        value = pairs.label_values[name]
        row["dice_%s" % name] = 100.0 * metrics.dice(moved_labels, fixed_labels, value)
        row["hd95_%s" % name] = metrics.hd95(moved_labels == value, fixed_labels == value, pairs.spacing_mm[-2:])
    row["dice_mean"] = _nanmean([row["dice_%s" % n] for n in names])
    row["hd95_mean"] = _nanmean([row["hd95_%s" % n] for n in names])
    row["mse"] = metrics.mse(moved, pairs.fixed[index])
    row["mse_x100"] = 100.0 * row["mse"]
    row["njd"] = 0.0 if flow is None else metrics.negative_jacobian_percent(flow, include_zero=False)
    row["sdlogj"] = 0.0 if flow is None else _sdlogj(flow)
    return row


def metric_rows(pairs, moved, moved_labels, flow, protocol="volume", metric_set="ours", mask=None, landmarks=None):
    """The rows of one subject: ``[subject_metrics(...)]`` (``volume``) or one :func:`slice_metrics` per
    slice pair (``paper``); with ``metric_set="learn2reg"``, ``[learn2reg_row(...)]`` whatever the protocol.
    Arguments as :func:`subject_metrics`; ``mask`` and ``landmarks`` as :func:`learn2reg_row` (``learn2reg``
    only).

    Raises:
        ValueError: an unknown protocol or metric set, ``paper`` on a 3D task (it is defined on 2D slices),
            ``learn2reg`` on a 2D one, or a mask or landmarks with our metric set (which has no use for them).
    """
    if protocol not in METRIC_PROTOCOLS:
        raise ValueError("unknown metric protocol %r; valid: %s" % (protocol, ", ".join(METRIC_PROTOCOLS)))
    if metric_set not in METRIC_SETS:
        raise ValueError("unknown metric set %r; valid: %s" % (metric_set, ", ".join(METRIC_SETS)))
    if metric_set == "learn2reg":
        return [learn2reg_row(pairs, flow, mask, landmarks)]
    if mask is not None or landmarks is not None:
        raise ValueError("%s: a mask and landmarks are scored by the learn2reg metric set only" % pairs.subject)
    if protocol == "volume":
        return [subject_metrics(pairs, moved, moved_labels, flow)]
    if pairs.volumes_per_item:
        raise ValueError("%s: the paper metric protocol is defined on 2D slice pairs; use volume for 3D tasks"
                         % pairs.subject)
    return [slice_metrics(pairs, i, moved[i], moved_labels[i], None if flow is None else flow[i])
            for i in range(len(moved))]


def learn2reg_row(pairs, flow, mask=None, landmarks=None):
    """The Learn2Reg scores of a subject's 3D pair (:func:`gsmorph_tf.evaluate.learn2reg_metrics.pair_scores`), as a
    row.

    Args:
        pairs: :class:`~gsmorph_tf.data.subjects.SubjectPairs` of one volume pair (``moving [1, D, H, W]``): its
            fixed and moving labels (warped here, Learn2Reg's way) and structures (all scored).
        flow: ``[1, D, H, W, 3]`` displacement in voxels (fixed -> moving), or None for the identity.
        mask: optional ``[D, H, W]`` mask of the fixed image: SDlogJ counts the voxels where it is 1.
        landmarks: optional ``(fixed_points, moving_points[, spacing_moving])``, ``[N, 3]`` voxel coordinates
            and the moving image's spacing in mm for TRE (:func:`gsmorph_tf.data.learn2reg_points.read_pair_points`
            reads all three); without the spacing, ``pairs.spacing_mm`` (the fixed image's: Learn2Reg uses the
            moving image's, the same in its tasks).

    Returns:
        dict: ``subject``, ``l2r_dice_<structure>`` (fraction), ``l2r_dice`` (their NaN-ignoring mean),
        ``l2r_hd95_<structure>`` (voxels), ``l2r_hd95``, ``l2r_sdlogj`` and, with landmarks, ``l2r_tre`` (mean
        mm). NaN where a structure is missing from the fixed or the moving labels, inf HD95 where it vanished.

    Raises:
        ValueError: ``pairs`` is not one 3D volume pair.
    """
    if not pairs.volumes_per_item or len(pairs.spacing_mm) != 3 or len(pairs.moving_labels) != 1:
        raise ValueError("%s: the learn2reg metric set scores one 3D volume pair per subject ([1, D, H, W]), got "
                         "labels of shape %s" % (pairs.subject, pairs.moving_labels.shape))
    names = reporting_order(pairs.label_values)
    fixed_labels = pairs.fixed_labels[0]
    disp = np.zeros(fixed_labels.shape + (3,)) if flow is None else np.asarray(flow)[0]
    spacing_moving = pairs.spacing_mm if landmarks is None or len(landmarks) == 2 else landmarks[2]
    scores = learn2reg_metrics.pair_scores(fixed_labels, pairs.moving_labels[0], disp,
                                           [pairs.label_values[name] for name in names], mask=mask,
                                           landmarks=None if landmarks is None else landmarks[:2],
                                           spacing_moving=spacing_moving)
    row = {"subject": pairs.subject}
    for metric in ("dice", "hd95"):
        for name, value in zip(names, scores[metric]["detailed"]):
            row["l2r_%s_%s" % (metric, name)] = value
        row["l2r_%s" % metric] = scores[metric]["mean"]
    row["l2r_sdlogj"] = scores["sdlogj"]["mean"]
    if "tre" in scores:
        row["l2r_tre"] = scores["tre"]["mean"]
    return row


#: Learn2Reg's case-level columns of a ``learn2reg`` row: (column, Learn2Reg metric, header).
LEARN2REG_COLUMNS = (("l2r_dice", "dice", "DSC"), ("l2r_hd95", "hd95", "HD95 (voxels)"),
                     ("l2r_sdlogj", "sdlogj", "SDlogJ"), ("l2r_tre", "tre", "TRE (mm)"))


def learn2reg_aggregates(rows):
    """Learn2Reg's aggregates over the pairs (:func:`gsmorph_tf.evaluate.learn2reg_metrics.aggregate`) of each of
    :data:`LEARN2REG_COLUMNS` the rows have: ``{column: {"mean", "std", "30"}}`` (NaN and inf kept, as theirs).
    Empty for rows of our metric set."""
    return {column: learn2reg_metrics.aggregate([row[column] for row in rows], metric)
            for column, metric, _ in LEARN2REG_COLUMNS if column in rows[0]}


def learn2reg_table(aggregates_by_method):
    """Markdown table of ``{method: learn2reg_aggregates(rows)}``: mean +- std and the "30" column of each."""
    first = next(iter(aggregates_by_method.values()))
    columns = [(column, header) for column, _, header in LEARN2REG_COLUMNS if column in first]
    lines = ["| Method | " + " | ".join("%s | %s 30%%" % (header, header) for _, header in columns) + " |",
             "|---|" + "---|---|" * len(columns)]
    for method, aggregates in aggregates_by_method.items():
        cells = ["%.4f +- %.4f | %.4f" % (aggregates[c]["mean"], aggregates[c]["std"], aggregates[c]["30"])
                 for c, _ in columns]
        lines.append("| %s | %s |" % (method, " | ".join(cells)))
    return "\n".join(lines)


def _sdlogj(flow):
    """:func:`gsmorph_tf.evaluate.metrics.sdlogj` of one field; NaN where the field is too small to have an interior
    (5 voxels or fewer along an axis). A 2D slice stack ``[S, H, W, 2]`` is scored slice by slice, averaged."""
    flow = np.asarray(flow)
    if flow.ndim == 4 and flow.shape[-1] == 2:
        return _nanmean([_sdlogj(f) for f in flow])
    if min(flow.shape[:-1]) <= 2 * metrics.SDLOGJ_BORDER:
        return float("nan")
    return metrics.sdlogj(flow)


def _nanmean(values):
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def _with_timing(rows, seconds, pairs):
    """``rows`` with ``seconds`` (wall-clock time of the registration) and ``pairs`` (pairs registered)
    shared out evenly over the rows (one per subject, or one per slice pair)."""
    return [dict(row, seconds=seconds / len(rows), pairs=pairs / len(rows)) for row in rows]


def _per_subject(count, masks, landmarks, source):
    """``masks`` and ``landmarks`` (None, or a sequence with an entry per subject) as two lists of ``count``
    entries (None where a subject has none); ValueError naming ``source`` when a sequence has another length."""
    lists = []
    for name, values in (("masks", masks), ("landmarks", landmarks)):
        if values is not None and len(values) != count:
            raise ValueError("%s: %d %s for %d subjects (one entry per subject, None where it has none)"
                             % (source, len(values), name, count))
        lists.append([None] * count if values is None else list(values))
    return lists


def evaluate_identity(subjects, protocol="volume", metric_set="ours", masks=None, landmarks=None):
    """Metric rows of the identity transform (the ``Initial`` row), by ``protocol`` and ``metric_set``
    (``masks``, ``landmarks``: as :func:`evaluate_flows`); no time spent."""
    masks, landmarks = _per_subject(len(subjects), masks, landmarks, "identity")
    return [row for p, mask, points in zip(subjects, masks, landmarks)
            for row in _with_timing(metric_rows(p, p.moving, p.moving_labels, None, protocol, metric_set, mask,
                                                points), 0.0, len(p.moving))]


def evaluate_predictor(predict, subjects, progress=None, protocol="volume", metric_set="ours", masks=None,
                       landmarks=None):
    """Metric rows of a predictor on a list of SubjectPairs.

    Args:
        predict: ``f(moving [S, H, W], fixed [S, H, W]) -> (moved [S, H, W], flow [S, H, W, 2])``
            (:func:`keras_predictor`, :func:`savedmodel_predictor`, or a classical baseline).
        subjects: list of :class:`~gsmorph_tf.data.subjects.SubjectPairs`.
        progress: optional callable ``(done, total)`` called after each subject (e.g. a Progbar's update).
        protocol: ``volume`` (a row per subject) or ``paper`` (a row per slice pair), see the module docstring.
        metric_set: ``ours`` or ``learn2reg`` (:data:`gsmorph_tf.config.METRIC_SETS`, see the module docstring).
        masks, landmarks: ``learn2reg`` only, as :func:`evaluate_flows`.

    Returns:
        The rows of :func:`metric_rows`, each with ``seconds`` (wall-clock time of ``predict`` for the
        subject's stack, shared over its rows) and ``pairs`` (the pairs it covers).
    """
    masks, landmarks = _per_subject(len(subjects), masks, landmarks, "predictor")
    rows = []
    for done, (pairs, mask, points) in enumerate(zip(subjects, masks, landmarks), 1):
        start = time.perf_counter()
        moved, flow = predict(pairs.moving, pairs.fixed)
        seconds = time.perf_counter() - start
        moved_labels = warp_labels(pairs.moving_labels, flow) if metric_set == "ours" else None
        rows += _with_timing(metric_rows(pairs, moved, moved_labels, flow, protocol, metric_set, mask, points),
                             seconds, len(pairs.moving))
        if progress is not None:
            progress(done, len(subjects))
    return rows


def evaluate_flows(subjects, flows, protocol="volume", source="flows", metric_set="ours", masks=None, landmarks=None):
    """Metric rows of displacement fields computed elsewhere (another implementation, a saved run), scored
    exactly as a network's: the moving images and labels are warped here (:func:`warp_images`,
    :func:`warp_labels`), so two sets of flows differ in their scores only by the flows.

    Args:
        subjects: list of :class:`~gsmorph_tf.data.subjects.SubjectPairs`, 2D (``moving [S, H, W]``: slice
            pairs) or 3D (``moving [1, D, H, W]``: one volume pair each, as the brain and Learn2Reg tasks).
        flows: the subjects' pairs in order (subject by subject, slice by slice): ``[N, H, W, 2]`` (pixels along
            row, column) or ``[N, D, H, W, 3]`` (voxels along the array axes).
        protocol, metric_set: as :func:`evaluate_predictor`; source: names the flows in errors (e.g. their file).
        masks, landmarks: ``learn2reg`` only, optional: a sequence with an entry per subject (None, or as
            :func:`learn2reg_row`'s ``mask`` and ``landmarks``).

    Returns:
        The rows of :func:`metric_rows`, with ``seconds`` NaN (the flows' time is not known here).

    Raises:
        ValueError: ``flows`` is not shaped like the subjects' pairs.
    """
    subjects = list(subjects)
    counts = [len(p.moving) for p in subjects]
    spatial = tuple(subjects[0].moving.shape[1:])
    expected = (sum(counts),) + spatial + (len(spatial),)
    flows = np.asarray(flows)
    if len(spatial) not in (2, 3) or flows.shape != expected:
        raise ValueError("%s: expected flows of shape %s (the %d pairs of %d subjects in order), got %s"
                         % (source, expected, sum(counts), len(subjects), flows.shape))
    masks, landmarks = _per_subject(len(subjects), masks, landmarks, source)
    rows, start = [], 0
    for pairs, count, mask, points in zip(subjects, counts, masks, landmarks):
        flow = flows[start:start + count].astype(np.float32)
        start += count
        if metric_set == "ours":
            moved, moved_labels = warp_images(pairs.moving, flow), warp_labels(pairs.moving_labels, flow)
        else:
            moved = moved_labels = None  # learn2reg_row warps the labels itself, Learn2Reg's way
        rows += _with_timing(metric_rows(pairs, moved, moved_labels, flow, protocol, metric_set, mask, points),
                             float("nan"), count)
    return rows


def evaluate_network(network, subjects, batch_size=32, progress=None, protocol="volume", metric_set="ours"):
    """:func:`evaluate_predictor` for a Keras network ``[moving, fixed] -> [moved, flow]``."""
    return evaluate_predictor(keras_predictor(network, batch_size), subjects, progress, protocol, metric_set)


def per_subject_means(rows):
    """Rows averaged per subject (NaN-aware), in first-seen order: the paper protocol's slice rows become one
    row per subject (for paired tests over subjects); volume rows are returned as they are."""
    subjects = {}
    for row in rows:
        subjects.setdefault(row["subject"], []).append(row)
    out = []
    for name, group in subjects.items():
        keys = [k for k in group[0] if k not in ("subject", "slice")]
        out.append(dict(subject=name, **{k: _nanmean([r[k] for r in group]) for k in keys}))
    return out


def results_by_method(rows_by_method):
    """``{method: {"subjects": rows, "summary": summarize(rows)}}`` from ``{method: per-subject rows}``, in
    the given order: the form of every results JSON (training, ``run_eval.py``); rows of the ``learn2reg``
    metric set also get ``"learn2reg": learn2reg_aggregates(rows)``."""
    results = {}
    for method, rows in rows_by_method.items():
        results[method] = {"subjects": rows, "summary": summarize(rows)}
        aggregates = learn2reg_aggregates(rows)
        if aggregates:
            results[method]["learn2reg"] = aggregates
    return results


def evaluate_against_initial(predict, subjects, name, progress=None, protocol="volume", metric_set="ours",
                             masks=None, landmarks=None):
    """The ``Initial`` (identity) rows and ``predict``'s rows on ``subjects``, as :func:`results_by_method`.

    Args:
        predict: a predictor (see :func:`evaluate_predictor`); name: its row's name in tables.
        subjects: list of :class:`~gsmorph_tf.data.subjects.SubjectPairs`; progress, protocol, metric_set,
            masks, landmarks: as :func:`evaluate_predictor`.
    """
    rows = evaluate_predictor(predict, subjects, progress, protocol, metric_set, masks, landmarks)
    return results_by_method({"Initial": evaluate_identity(subjects, protocol, metric_set, masks, landmarks),
                              name: rows})


def crop_report(subjects, rule):
    """How well the crops of ``subjects`` hold their hearts, for the results JSON (``crop`` key).

    Args:
        subjects: :class:`~gsmorph_tf.data.subjects.SubjectPairs` (their ``crop_coverage``).
        rule: the ``crop_center`` rule that placed the crops.

    Returns:
        ``{"rule": rule, "coverage": {subject: fraction of its ED label voxels inside the crop}, "good": number of
        subjects with coverage >= GOOD_CROP_COVERAGE, "subjects": number of subjects}``; None when nothing was
        cropped (3D tasks).
    """
    coverage = {p.subject: p.crop_coverage for p in subjects if p.crop_coverage is not None}
    if not coverage:
        return None
    return {"rule": rule, "coverage": coverage, "good_threshold": GOOD_CROP_COVERAGE,
            "good": sum(value >= GOOD_CROP_COVERAGE for value in coverage.values()), "subjects": len(coverage)}


def summarize(rows):
    """Mean and std over the rows (subjects, or slice pairs) of every numeric column:
    ``{key: {"mean": m, "std": s}}`` (NaN-aware)."""
    keys = [k for k in rows[0] if k not in ("subject", "slice")]
    summary = {}
    for key in keys:
        mean, std = metrics.mean_std([row[key] for row in rows])
        summary[key] = {"mean": mean, "std": std}
    return summary


def protocol_caption(protocol, rows):
    """One line saying how a table's numbers were taken, e.g. for ``paper``: "Metric protocol: paper (per 2D
    slice pair, HD95 in mm with the in-plane spacing, NJD = % det < 0); mean +- std over 96 slice pairs of 4
    subjects."."""
    subjects = len({row["subject"] for row in rows})
    if "l2r_sdlogj" in rows[0]:
        return ("Metric set: learn2reg (the Learn2Reg challenge's scores per 3D pair: Dice fraction, HD95 in voxels "
                "by the surface-distance method, SDlogJ); mean +- std and Learn2Reg's 30 %% column over %d pairs."
                % len(rows))
    if protocol == "paper":
        return ("Metric protocol: paper (per 2D slice pair, HD95 in mm with the in-plane spacing, NJD = %% det < 0); "
                "mean +- std over %d slice pairs of %d subjects." % (len(rows), subjects))
    return ("Metric protocol: volume (per subject, each stack or volume as one, HD95 in mm, NJD = %% det <= 0); "
            "mean +- std over %d subjects." % subjects)


def format_table(summaries):
    """Markdown table of ``{method: summary}``: the paper's Table 1 columns, SDlogJ and the end-point error when
    the rows have them, then Dice per structure (by name, in the summaries' order)."""
    first = next(iter(summaries.values()))
    columns = list(TABLE_COLUMNS)
    if "sdlogj" in first:
        columns.append(("sdlogj", "SDlogJ"))
    if "epe_mm" in first:
        columns.append(("epe_mm", "EPE (mm)"))
    columns += [(key, "Dice %s (%%)" % key[5:]) for key in first if key.startswith("dice_") and key != "dice_mean"]
    lines = ["| Method | " + " | ".join(header for _, header in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for method, summary in summaries.items():
        cells = ["%.2f +- %.2f" % (summary[key]["mean"], summary[key]["std"]) for key, _ in columns]
        lines.append("| %s | %s |" % (method, " | ".join(cells)))
    return "\n".join(lines)


#: Per-structure metrics :func:`structure_table` can show: (key prefix in the rows, header).
STRUCTURE_METRICS = (("dice", "Dice (%)"), ("hd95", "HD95 (mm)"))


def structure_table(summaries, structures, metrics_shown=STRUCTURE_METRICS):
    """Markdown table with a row per structure (then their mean) and a column per method and metric, mean +-
    std: ULAE-net's Table 1 layout (Dice per brain region, methods side by side).

    Args:
        summaries: ``{method: summary}`` (see :func:`summarize`).
        structures: structure names in row order.
        metrics_shown: ``(key prefix, header)`` pairs from :data:`STRUCTURE_METRICS`; with one, the columns
            are named by the method alone.
    """
    columns = [(method, prefix, method if len(metrics_shown) == 1 else "%s %s" % (method, header))
               for method in summaries for prefix, header in metrics_shown]
    lines = ["| Structure | " + " | ".join(header for _, _, header in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for structure, suffix in [(name, name) for name in structures] + [("Mean", "mean")]:
        cells = ["%.2f +- %.2f" % (summaries[method]["%s_%s" % (prefix, suffix)]["mean"],
                                   summaries[method]["%s_%s" % (prefix, suffix)]["std"])
                 for method, prefix, _ in columns]
        lines.append("| %s | %s |" % (structure, " | ".join(cells)))
    return "\n".join(lines)


def to_json(data):
    """``data`` as JSON text (indented), NaN written as null, NumPy floats as floats."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (float, np.floating)):
            return None if np.isnan(value) else float(value)
        return value

    return json.dumps(clean(data), indent=2)


def write_json(path, data):
    """Write :func:`to_json` of ``data`` atomically (temp file, then rename)."""
    atomic_write_text(path, to_json(data) + "\n")
