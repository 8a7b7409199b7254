"""Does GSMorph keep its promise? A multi-seed lambda sweep of VoxelMorph against the gradient-surgery methods.

GSMorph claims that without a lambda it registers as well as VoxelMorph with a tuned one. The study trains,
on the same data and split, VoxelMorph (``surgery=none``) at every lambda of :data:`STUDY_LAMBDAS` and the
surgery methods (:data:`SURGERY_METHODS`), each with several seeds, and writes:

- ``study_table.md``: per method, mean +- std **over seeds** of the test metrics (each seed's value is the
  mean over the test split by the run's metric protocol), and the validation Dice the lambda is chosen on;
- ``dice_vs_njd.png``: test Dice against NJD: the lambda front (error bars over seeds) and the surgery
  methods as points;
- ``validation_curves.png``: validation Dice per epoch (mean over seeds) per method, to show the plateau;
- ``study.json``: every run's numbers, the lambda chosen on the validation split, and a paired two-sided
  Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) of GSMorph against that lambda over the test subjects
  (each subject's Dice averaged over its slices and over seeds).

Every (method, seed) is an ordinary training run in ``<output_dir>/<slug>/seed<k>/`` (resumable: an
interrupted run continues from its last epoch, a finished one is read back from its ``study_run.json``). The
subject split is fixed by ``split_seed`` so that every seed is scored on the same subjects.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses
import os

import numpy as np

from gsmorph_tf.errors import ConfigError
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.fileio import atomic_save_figure, atomic_write_text
from gsmorph_tf.studies.seed_studies import (epoch_curve, epoch_steps, over_seeds, paired_test,  # noqa: F401
                                             plot_curves, read_or_make, seed_test,
                                             subject_dice)  # (re-exported: the study's API)
from gsmorph_tf.train import training

#: VoxelMorph's smoothness weights (l1 penalty), strongest first: the paper's 0.1 / 0.01 / 0.001 and between.
STUDY_LAMBDAS = (0.3, 0.1, 0.03, 0.01, 0.003, 0.001)
#: The gradient-surgery methods, by table name and surgery mode.
SURGERY_METHODS = (("GSMorph", "layerwise"), ("GS-PCGrad", "pcgrad"))


@dataclasses.dataclass(frozen=True)
class StudyMethod:
    """One method of the study: its table name, folder name and the settings it changes."""
    name: str
    slug: str
    settings: tuple

    @property
    def is_lambda(self):
        return dict(self.settings)["surgery"] == "none"


def study_methods(lambdas=STUDY_LAMBDAS, surgery_methods=SURGERY_METHODS):
    """The VoxelMorph lambdas, then the surgery methods, as :class:`StudyMethod` rows."""
    methods = [StudyMethod("VoxelMorph (lam=%g)" % lam, "voxelmorph_lam%g" % lam,
                           (("surgery", "none"), ("lam", float(lam)))) for lam in lambdas]
    methods += [StudyMethod(name, name.lower().replace("-", "_"), (("surgery", mode),))
                for name, mode in surgery_methods]
    return methods


def named_methods(lambdas, surgery_names):
    """:func:`study_methods` for the VoxelMorph ``lambdas`` and the surgery methods named (table names of
    :data:`SURGERY_METHODS`, in that order); ``ConfigError`` naming an unknown name and the known ones."""
    known = dict(SURGERY_METHODS)
    unknown = sorted(set(surgery_names) - set(known))
    if unknown:
        raise ConfigError("--surgery_methods: unknown %s; known: %s" % (", ".join(unknown), ", ".join(sorted(known))))
    return study_methods(tuple(float(v) for v in lambdas),
                         tuple(m for m in SURGERY_METHODS if m[0] in surgery_names))


def run_one(method, seed, base_config, output_dir, steps_per_epoch, log=print):
    """Train (or resume, or read back) one (method, seed) run and return its record::

        {"method", "seed", "test": summary, "test_subjects": per-subject rows, "validation_dice",
         "validation_curve": [...], "steps": optimiser steps}
    """
    folder = os.path.join(output_dir, method.slug, "seed%d" % seed)
    config = dataclasses.replace(base_config, output_dir=folder, seed=seed, **dict(method.settings))

    def train():
        log("%s, seed %d: training in %s" % (method.name, seed, folder))
        outcome = training.train_and_evaluate(config, verbose=0, log=log, export=False)
        rows = outcome["results"]["Model"]["subjects"]
        curve = epoch_curve(folder)
        return {"method": method.name, "seed": seed, "test": evaluation.summarize(rows),
                "test_subjects": evaluation.per_subject_means(rows),
                "validation_dice": curve[-1] if curve else float("nan"), "validation_curve": curve,
                "steps": steps_per_epoch * config.epochs, "metric_protocol": config.metric_protocol}
    return read_or_make(os.path.join(folder, "study_run.json"), train)


def summarize_study(records_by_method, methods):
    """The study's numbers from ``{method name: [record per seed]}``.

    Returns:
        dict: ``rows`` (per method: mean/std over seeds of test Dice, HD95, NJD, MSE, and of the final
        validation Dice), ``best_lambda`` (the VoxelMorph lambda with the highest mean validation Dice) and
        ``wilcoxon`` (GSMorph against that lambda over test subjects, each subject's Dice averaged over seeds).
    """
    rows = {}
    for method in methods:
        records = records_by_method[method.name]
        rows[method.name] = {key: over_seeds(records, key) for key in ("dice_mean", "hd95_mean", "njd", "mse_x100")}
        validation = [np.nan if r["validation_dice"] is None else r["validation_dice"] for r in records]
        rows[method.name]["validation_dice"] = (float(np.nanmean(validation)), float(np.nanstd(validation)))
        rows[method.name]["seeds"] = len(records)
        rows[method.name]["steps"] = records[0]["steps"]
    lambdas = [m for m in methods if m.is_lambda]
    best = max(lambdas, key=lambda m: np.nan_to_num(rows[m.name]["validation_dice"][0], nan=-1.0)) if lambdas else None
    result = {"rows": rows, "best_lambda": dict(best.settings)["lam"] if best else None,
              "best_lambda_method": best.name if best else None}
    if best is not None and "GSMorph" in records_by_method:
        result["wilcoxon"] = paired_test(records_by_method["GSMorph"], records_by_method[best.name])
    return result


def study_table(summary, protocol):
    """Markdown: mean +- std over seeds per method, then the chosen lambda and the test."""
    lines = ["Test split, metric protocol %s; each cell mean +- std over seeds of the split's mean." % protocol, "",
             "| Method | Dice (%) | HD95 (mm) | NJD (%) | MSE (x1e-2) | Val. Dice (%) | seeds | steps |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in summary["rows"].items():
        cells = ["%.2f +- %.2f" % row[key] for key in ("dice_mean", "hd95_mean", "njd", "mse_x100", "validation_dice")]
        lines.append("| %s | %s | %d | %d |" % (name, " | ".join(cells), row["seeds"], row["steps"]))
    if summary["best_lambda"] is not None:
        lines += ["", "Best lambda on the validation split: %g (%s)." % (summary["best_lambda"],
                                                                       summary["best_lambda_method"])]
    test = summary.get("wilcoxon")
    if test:
        lines.append("GSMorph - %s over %d test subjects (Dice averaged over slices and seeds): median %+.2f, mean "
                     "%+.2f Dice points; Wilcoxon signed-rank W = %.1f, p = %.3g (two-sided)."
                     % (summary["best_lambda_method"], test["subjects"], test["median_difference"],
                        test["mean_difference"], test["statistic"], test["p_value"]))
    return "\n".join(lines)


def plot_front(summary, methods, path):
    """Dice against NJD: the lambda front with error bars over seeds, the surgery methods as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    fig, axis = plt.subplots(figsize=(5.5, 4.2))
    lambdas = [m for m in methods if m.is_lambda]
    if lambdas:
        njd = [rows[m.name]["njd"] for m in lambdas]
        dice = [rows[m.name]["dice_mean"] for m in lambdas]
        axis.errorbar([n[0] for n in njd], [d[0] for d in dice], xerr=[n[1] for n in njd],
                      yerr=[d[1] for d in dice], fmt="o-", color="tab:blue", capsize=3, label="VoxelMorph (lambda)")
        for method, n, d in zip(lambdas, njd, dice):
            axis.annotate("%g" % dict(method.settings)["lam"], (n[0], d[0]), textcoords="offset points",
                          xytext=(4, 4), fontsize=7)
    for method, color in zip([m for m in methods if not m.is_lambda], ("tab:red", "tab:green", "tab:purple")):
        n, d = rows[method.name]["njd"], rows[method.name]["dice_mean"]
        axis.errorbar([n[0]], [d[0]], xerr=[n[1]], yerr=[d[1]], fmt="s", color=color, capsize=3, label=method.name)
    axis.set_xlabel("NJD (% of pixels folding)")
    axis.set_ylabel("Dice (%)")
    axis.set_title("Test split, mean +- std over seeds", fontsize=9)
    axis.legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def run_study(base_config, output_dir, seeds, methods=None, log=print):
    """Run (or resume) every (method, seed) and write the study's table, figures and JSON to ``output_dir``.

    Returns:
        The summary of :func:`summarize_study`.
    """
    methods = study_methods() if methods is None else methods
    base_config.validate()
    splits = training.load_data(base_config)  # every bad input fails here, before any training
    training.check_batches(base_config, splits)
    os.makedirs(output_dir, exist_ok=True)
    steps_per_epoch = epoch_steps(base_config, splits)
    records = {}
    total = len(methods) * len(seeds)
    for method in methods:
        for seed in seeds:
            log("[%d/%d] %s, seed %d" % (sum(len(v) for v in records.values()) + 1, total, method.name, seed))
            records.setdefault(method.name, []).append(
                run_one(method, seed, base_config, output_dir, steps_per_epoch, log=log))
    summary = summarize_study(records, methods)
    table = study_table(summary, base_config.metric_protocol)
    atomic_write_text(os.path.join(output_dir, "study_table.md"), table + "\n")
    plot_front(summary, methods, os.path.join(output_dir, "dice_vs_njd.png"))
    plot_curves(records, os.path.join(output_dir, "validation_curves.png"))
    evaluation.write_json(os.path.join(output_dir, "study.json"),
                          {"config": base_config.to_dict(), "seeds": list(seeds), "summary": summary,
                           "runs": records})
    summary["table"] = table
    return summary


# --- The port against the reference code (wulalago/GSMorph), trained on the same data ----------------------------

#: Keys of the comparison table: (record key, header).
COMPARISON_KEYS = (("dice_mean", "Dice (%)"), ("hd95_mean", "HD95 (mm)"), ("njd", "NJD (%)"),
                   ("mse_x100", "MSE (x1e-2)"))


def flows_record(method, seed, flows, splits, protocol, source="flows"):
    """The study record (as :func:`run_one` writes) of a run trained elsewhere, scored with this package's
    evaluator (:func:`gsmorph_tf.evaluate.evaluation.evaluate_flows`) on the study's split.

    Args:
        method: its :class:`StudyMethod`; seed: its training seed.
        flows: mapping (e.g. an opened ``.npz``) with ``test_flow`` ``[N_test, H, W, 2]`` and ``val_flow``
            ``[epochs, N_val, H, W, 2]`` (the split's pairs in order, pixels along row and column), ``steps``
            (optimiser steps), ``sim_loss`` and ``reg_loss`` ``[epochs]`` (training losses, epoch means);
            optionally ``conflict_fraction`` and ``whole_conflict`` ``[epochs]`` (the fraction of parameter
            tensors, and of steps for the whole network, whose two gradients conflict; epoch means).
        splits: the study's ``{"val", "test"}`` subject lists; protocol: the metric protocol; source: names the
            flows in errors.
    """
    rows = evaluation.evaluate_flows(splits["test"], flows["test_flow"], protocol, source)
    curve = [evaluation.summarize(evaluation.evaluate_flows(splits["val"], epoch_flows, protocol, source))
             ["dice_mean"]["mean"] for epoch_flows in flows["val_flow"]] if len(splits["val"]) else []
    return {"method": method.name, "seed": seed, "test": evaluation.summarize(rows),
            "test_subjects": evaluation.per_subject_means(rows),
            "validation_dice": curve[-1] if curve else float("nan"), "validation_curve": curve,
            "sim_loss_curve": [float(v) for v in flows["sim_loss"]],
            "reg_loss_curve": [float(v) for v in flows["reg_loss"]],
            "steps": int(flows["steps"]), "metric_protocol": protocol,
            **{"%s_curve" % key: [float(v) for v in flows[key]] for key in ("conflict_fraction", "whole_conflict")
               if key in getattr(flows, "files", flows)}}


def compare_implementations(port_records, reference_records, methods):
    """Per method, the port's and the reference's test metrics (mean, std over seeds), each seed's Dice, a
    two-sided Welch test over seeds (:func:`seed_test`) and a paired two-sided Wilcoxon test over the test
    subjects (:func:`paired_test`), both port against reference.

    Args:
        port_records, reference_records: ``{method name: [record per seed]}``; methods: the rows, in order.
    """
    comparison = {}
    for method in methods:
        port, reference = port_records[method.name], reference_records[method.name]
        comparison[method.name] = {
            "port": {key: over_seeds(port, key) for key, _ in COMPARISON_KEYS},
            "reference": {key: over_seeds(reference, key) for key, _ in COMPARISON_KEYS},
            "port_seed_dice": {r["seed"]: r["test"]["dice_mean"]["mean"] for r in port},
            "reference_seed_dice": {r["seed"]: r["test"]["dice_mean"]["mean"] for r in reference},
            "welch": seed_test(port, reference), "wilcoxon": paired_test(port, reference)}
    return comparison


def comparison_table(comparison, protocol):
    """Markdown: port and reference side by side per method, then the two tests of their Dice per method."""
    lines = ["Test split, metric protocol %s; both implementations scored by this package's evaluator on the same "
             "pairs; each cell mean +- std over seeds of the split's mean." % protocol, "",
             "| Method | Code | %s | seeds (Dice per seed) |" % " | ".join(h for _, h in COMPARISON_KEYS),
             "|---|---|%s---|" % ("---|" * len(COMPARISON_KEYS))]
    for name, row in comparison.items():
        for side in ("port", "reference"):
            cells = ["%.2f +- %.2f" % row[side][key] for key, _ in COMPARISON_KEYS]
            seeds = ", ".join("%s: %.1f" % item for item in sorted(row["%s_seed_dice" % side].items()))
            lines.append("| %s | %s | %s | %s |" % (name, side, " | ".join(cells), seeds))
    lines += ["", "Port - reference, Dice points: over seeds (Welch's t-test on each seed's split mean, which counts "
              "the seed-to-seed spread), and over test subjects (paired Wilcoxon on each subject's Dice averaged over "
              "slices and seeds, which does not).", ""]
    for name, row in comparison.items():
        welch, test = row["welch"], row["wilcoxon"]
        lines.append("- %s: mean %+.2f; Welch t = %.2f, p = %.3g over %d + %d seeds; over %d subjects median %+.2f, "
                     "Wilcoxon W = %.1f, p = %.3g (two-sided)."
                     % (name, welch["mean_difference"], welch["statistic"], welch["p_value"], welch["seeds"][0],
                        welch["seeds"][1], test["subjects"], test["median_difference"], test["statistic"],
                        test["p_value"]))
    return "\n".join(lines)


def plot_comparison(port_records, reference_records, path):
    """Three panels per epoch, mean over the seeds that have the curve: validation Dice, training similarity
    loss, and the fraction of parameter tensors whose two gradients conflict (surgery methods); one colour per
    method, the port solid and the reference dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, name in enumerate(port_records):
        for records, style, label in ((port_records[name], "-", "port"), (reference_records[name], "--", "reference")):
            for axis, key in zip(axes, ("validation_curve", "sim_loss_curve", "conflict_fraction_curve")):
                curves = [r.get(key) for r in records if r.get(key)]
                if not curves:
                    continue
                length = min(len(c) for c in curves)
                axis.plot(np.arange(1, length + 1), np.mean([c[:length] for c in curves], axis=0), style,
                          color=colours[index % len(colours)], label="%s (%s)" % (name, label))
    axes[0].set_ylabel("validation Dice (%)")
    axes[1].set_ylabel("training MSE (epoch mean)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("tensors with g_sim . g_reg < 0 (fraction)")
    for axis in axes:
        axis.set_xlabel("epoch")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)
