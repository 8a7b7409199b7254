"""Evaluate a registration network on ES->ED slice pairs with the GSMorph paper's metrics.

Per subject, all slices are registered (2D), the moving (ES) label map is warped with nearest-neighbour
interpolation, and the metrics are computed on the subject's whole stack ``[S, H, W]`` with its real
spacing (slice, row, col in mm):

- Dice (%) per structure and their mean (LV, Myo, RV);
- HD95 (mm) per structure and their mean;
- MSE between fixed and moved intensities (in [0, 1] units; tables show it x1e-2 like the paper);
- NJD: % of pixels whose Jacobian determinant of x -> x + u(x) is <= 0.

An ``Initial`` row (identity transform: moved = moving, zero flow) is the reference every method must beat.
Tables report mean +- std over subjects.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import json

import numpy as np
import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf import metrics
from gsmorph_tf.fileio import atomic_write_text
from gsmorph_tf.data.pairs import STRUCTURES

#: Column order of the summary tables: (key in the per-subject rows, header).
TABLE_COLUMNS = (("dice_mean", "Dice (%)"), ("hd95_mean", "HD95 (mm)"), ("mse_x100", "MSE (x1e-2)"),
                 ("njd", "NJD (%)"))


def predict_pairs(network, moving, fixed, batch_size=32):
    """Run ``network`` on stacks of 2D pairs.

    Args:
        network: Keras model ``[moving, fixed] -> (moved, flow, ...)``.
        moving, fixed: ``[S, H, W]`` float32 images in [0, 1].

    Returns:
        ``(moved [S, H, W], flow [S, H, W, 2])``, flow in pixels along (row, col).
    """
    outputs = network.predict({"moving": moving[..., None], "fixed": fixed[..., None]},
                              batch_size=batch_size, verbose=0)
    return outputs[0][..., 0], outputs[1]


def warp_labels(labels, flow):
    """Warp integer label maps ``[S, H, W]`` by flows ``[S, H, W, 2]`` (nearest neighbour, voxelmorph)."""
    warped = vxm.layers.SpatialTransformer(interp_method="nearest", indexing="ij")(
        [tf.convert_to_tensor(labels[..., None], tf.float32), tf.convert_to_tensor(flow, tf.float32)])
    return np.rint(warped.numpy()[..., 0]).astype(labels.dtype)


def subject_metrics(pairs, moved, moved_labels, flow):
    """Metrics of one subject's registration.

    Args:
        pairs: the subject's :class:`~gsmorph_tf.data.pairs.SubjectPairs` (fixed image and labels, spacing).
        moved: ``[S, H, W]`` warped moving image; moved_labels: ``[S, H, W]`` warped moving labels;
        flow: ``[S, H, W, 2]`` displacement in pixels, or None for the identity.

    Returns:
        dict: ``dice_<structure>`` (%), ``dice_mean``, ``hd95_<structure>`` (mm), ``hd95_mean``, ``mse``,
        ``mse_x100``, ``njd`` (%). NaN where a structure is absent from both label maps.
    """
    label_values = {name: pairs.label_values[name] for name in STRUCTURES}
    dice = metrics.dice_per_structure(moved_labels, pairs.fixed_labels, label_values)
    hd = metrics.hd95_per_structure(moved_labels, pairs.fixed_labels, label_values, pairs.spacing_mm)
    row = {"subject": pairs.subject}
    for name in STRUCTURES:
        row["dice_%s" % name] = 100.0 * dice[name]
        row["hd95_%s" % name] = hd[name]
    row["dice_mean"] = _nanmean([row["dice_%s" % n] for n in STRUCTURES])
    row["hd95_mean"] = _nanmean([row["hd95_%s" % n] for n in STRUCTURES])
    row["mse"] = metrics.mse(moved, pairs.fixed)
    row["mse_x100"] = 100.0 * row["mse"]
    row["njd"] = 0.0 if flow is None else metrics.negative_jacobian_percent(flow)
    return row


def _nanmean(values):
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def evaluate_identity(subjects):
    """Per-subject metrics of the identity transform (the ``Initial`` row)."""
    return [subject_metrics(p, p.moving, p.moving_labels, None) for p in subjects]


def evaluate_network(network, subjects, batch_size=32, progress=None):
    """Per-subject metrics of ``network`` on a list of SubjectPairs. ``progress``: optional callable
    ``(done, total)`` called after each subject (e.g. a Keras Progbar's update)."""
    rows = []
    for done, pairs in enumerate(subjects, 1):
        moved, flow = predict_pairs(network, pairs.moving, pairs.fixed, batch_size)
        rows.append(subject_metrics(pairs, moved, warp_labels(pairs.moving_labels, flow), flow))
        if progress is not None:
            progress(done, len(subjects))
    return rows


def summarize(rows):
    """Mean and std over subjects of every numeric column: ``{key: {"mean": m, "std": s}}`` (NaN-aware)."""
    keys = [k for k in rows[0] if k != "subject"]
    summary = {}
    for key in keys:
        mean, std = metrics.mean_std([row[key] for row in rows])
        summary[key] = {"mean": mean, "std": std}
    return summary


def format_table(summaries):
    """Markdown table of ``{method: summary}`` with the paper's Table 1 columns plus per-structure Dice."""
    columns = list(TABLE_COLUMNS) + [("dice_%s" % n, "Dice %s (%%)" % n) for n in STRUCTURES]
    lines = ["| Method | " + " | ".join(header for _, header in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for method, summary in summaries.items():
        cells = ["%.2f +- %.2f" % (summary[key]["mean"], summary[key]["std"]) for key, _ in columns]
        lines.append("| %s | %s |" % (method, " | ".join(cells)))
    return "\n".join(lines)


def write_json(path, data):
    """Write JSON atomically (temp file, then rename). NaN is written as null."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (float, np.floating)):
            return None if np.isnan(value) else float(value)
        return value

    atomic_write_text(path, json.dumps(clean(data), indent=2) + "\n")
