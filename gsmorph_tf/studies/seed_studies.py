"""What the multi-seed studies share (:mod:`gsmorph_tf.studies.lambda_study`,
:mod:`gsmorph_tf.studies.deformation_study`): run records made once and read back, per-epoch curves from a run's
TensorBoard events, statistics over seeds and over test subjects, and the validation-curve figures.

A *record* is the JSON-serialisable result of one training run (one method, one seed)::

    {"method", "seed", "test": summary (evaluation.summarize of the test rows), "test_subjects": one row per test
     subject or pair (at least "subject" and "dice_mean"), "validation_dice", "validation_curve": [...], "steps"}

Light to import (no TensorFlow): TensorBoard, SciPy's statistics, Matplotlib and the training and evaluation
modules are loaded by the functions that use them.
"""
import json
import os

import numpy as np

from gsmorph_tf.fileio import atomic_save_figure
from gsmorph_tf.train.rundir import epoch_curve  # noqa: F401  (the studies read their curves through this module)


def read_or_make(record_path, make):
    """The record saved at ``record_path`` by an earlier call (a finished run, read back), or ``make()``'s,
    saved there atomically first (:func:`gsmorph_tf.evaluate.evaluation.write_json`, NaN as null) and returned as it
    reads back, so a record is the same whether it was just made or read."""
    if not os.path.exists(record_path):
        from gsmorph_tf.evaluate import evaluation

        evaluation.write_json(record_path, make())
    with open(record_path, encoding="utf-8") as f:
        return json.load(f)


def epoch_steps(config, splits):
    """Optimiser steps per epoch of a run on ``splits`` (one device): training pairs over the batch size,
    the last partial batch dropped with ``config.drop_last``."""
    from gsmorph_tf.train import training

    pairs = training.pair_count(splits["train"])
    return pairs // config.batch_size if config.drop_last else -(-pairs // config.batch_size)


def over_seeds(records, key):
    """``(mean, std)`` over the records (seeds) of each one's test-split mean of ``key`` (NaN-aware; population
    std, 0 for one record)."""
    values = [r["test"][key]["mean"] for r in records if key in r["test"]]
    values = [np.nan if v is None else v for v in values]
    if not values or np.all(np.isnan(values)):
        return float("nan"), float("nan")
    return float(np.nanmean(values)), float(np.nanstd(values))


def subject_dice(records):
    """``{subject: Dice averaged over seeds}`` from a method's records."""
    values = {}
    for record in records:
        for row in record["test_subjects"]:
            values.setdefault(row["subject"], []).append(row["dice_mean"])
    return {subject: float(np.mean(v)) for subject, v in values.items()}


def paired_test(records_a, records_b):
    """Two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) of method a against method b on the test
    subjects' (or pairs') Dice, each averaged over the method's seeds.

    Returns:
        ``{"subjects", "median_difference", "mean_difference", "statistic", "p_value"}`` (Dice points, a - b);
        with no non-zero difference, statistic NaN and p 1.
    """
    from scipy import stats

    a, b = subject_dice(records_a), subject_dice(records_b)
    subjects = sorted(set(a) & set(b))
    differences = np.array([a[s] - b[s] for s in subjects])
    test = stats.wilcoxon(differences) if np.any(differences != 0) else None
    return {"subjects": len(subjects), "median_difference": float(np.median(differences)),
            "mean_difference": float(np.mean(differences)),
            "statistic": float(test.statistic) if test else float("nan"),
            "p_value": float(test.pvalue) if test else 1.0}


def seed_test(records_a, records_b):
    """Welch's two-sided t-test (``scipy.stats.ttest_ind``, unequal variances) of two methods' test Dice over
    their seeds (each seed's mean over the test split). Unlike :func:`paired_test` it counts the seed-to-seed
    spread, which moves every subject of a run together. Returns ``{"seeds": (n_a, n_b), "mean_difference",
    "statistic", "p_value"}`` (a - b); statistic and p NaN with fewer than two seeds on a side."""
    from scipy import stats

    a = [r["test"]["dice_mean"]["mean"] for r in records_a]
    b = [r["test"]["dice_mean"]["mean"] for r in records_b]
    if min(len(a), len(b)) < 2:
        return {"seeds": (len(a), len(b)), "mean_difference": float(np.mean(a) - np.mean(b)),
                "statistic": float("nan"), "p_value": float("nan")}
    test = stats.ttest_ind(a, b, equal_var=False)
    return {"seeds": (len(a), len(b)), "mean_difference": float(np.mean(a) - np.mean(b)),
            "statistic": float(test.statistic), "p_value": float(test.pvalue)}


def plot_curves(records_by_method, path, ylabel="validation Dice (%)"):
    """Validation Dice per epoch, mean over seeds, one line per method (VoxelMorph solid, the others dashed);
    methods without a curve (no training) are left out. Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6, 4.2))
    for name, records in records_by_method.items():
        curves = [r["validation_curve"] for r in records if r["validation_curve"]]
        if not curves:
            continue
        length = min(len(c) for c in curves)
        mean = np.mean([c[:length] for c in curves], axis=0)
        axis.plot(np.arange(1, length + 1), mean, label=name, linestyle="-" if "VoxelMorph" in name else "--")
    axis.set_xlabel("epoch")
    axis.set_ylabel(ylabel)
    axis.legend(fontsize=6)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def plot_seed_curves(panels, path, ylabel="validation Dice (%)", columns=4):
    """Every run's own validation curve: one panel per entry of ``panels`` (``{title: records}``, in order), one
    line per seed over the epochs that run trained, its last epoch marked, so that each run's plateau (or the lack
    of one) and where early stopping ended it are seen; entries without a curve (no training) are left out. Panels
    share the y axis; at most ``columns`` per row. Written atomically.

    Returns:
        list: the titles drawn, in order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [(title, [r for r in records if r["validation_curve"]]) for title, records in panels.items()]
    drawn = [(title, records) for title, records in drawn if records]
    if not drawn:
        raise ValueError("%s: no run has a validation curve to draw" % path)
    ncols = min(columns, len(drawn))
    nrows = -(-len(drawn) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows), sharey=True, squeeze=False)
    for axis, (title, records) in zip(axes.flat, drawn):
        for record in records:
            curve = record["validation_curve"]
            epochs = np.arange(1, len(curve) + 1)
            label = "seed %s (%d ep.)" % (record.get("seed"), len(curve))
            line, = axis.plot(epochs, curve, linewidth=1, label=label)
            axis.plot(epochs[-1], curve[-1], "o", markersize=3, color=line.get_color())
        axis.set_title(title, fontsize=8)
        axis.set_xlabel("epoch", fontsize=7)
        axis.tick_params(labelsize=7)
        axis.legend(fontsize=6)
    for axis in axes[:, 0]:
        axis.set_ylabel(ylabel, fontsize=7)
    for axis in list(axes.flat)[len(drawn):]:
        axis.set_visible(False)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
    return [title for title, _ in drawn]
