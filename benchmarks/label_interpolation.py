"""Label maps warped by registration fields: nearest neighbour vs one-hot linear (:mod:`gsmorph_tf.register.apply`).

Takes a run trained on the synthetic phantom (``make demo`` writes ``runs/demo``), registers the ES->ED slice
pairs of its test split (``--split=all``: every subject, training ones included) with the run's network, and
warps each ES label map to ED by both rules of :func:`gsmorph_tf.register.warp_label_map`, as ``run_apply.py``
applies ``run_register.py``'s fields: the slice stack as an ``[H, W, S]`` volume, the field with ``u_k = 0``.
The warped labels are scored against the ED labels by the paper protocol of :mod:`gsmorph_tf.evaluate.evaluation` (per
2D slice pair; HD95 in mm with the in-plane spacing; a structure absent from both maps is left out).

Prints mean +- sd per structure for both rules; the paired difference one-hot - nearest (mean +- sd) with a
Wilcoxon signed-rank test (``scipy.stats.wilcoxon``, two-sided, zero differences dropped) over the slice pairs
where both scores are defined; the share of voxels the two rules label differently; the time each rule took
and the machine.

Usage: ``make demo && python benchmarks/label_interpolation.py [--run_dir=runs/demo] [--split=test|all]``
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import time

import numpy as np
from absl import app, flags

flags.DEFINE_string("run_dir", "runs/demo", "A training run on the phantom (make demo writes runs/demo).")
flags.DEFINE_enum("split", "test", ["test", "all"], "Subjects scored: the run's test split, or every subject.")
FLAGS = flags.FLAGS

#: (table name, rule of warp_label_map), the baseline first.
RULES = (("Nearest", "nearest"), ("One-hot", "onehot"))


def warp_stack(labels, flow, rule):
    """ES labels ``[S, H, W]`` warped by ``flow [S, H, W, 2]`` (pixels) as run_apply.py warps a stack: one
    ``[H, W, S]`` volume, the field ``[H, W, S, 3]`` with no motion across slices."""
    from gsmorph_tf.register import warp_label_map

    volume = np.transpose(labels, (1, 2, 0))
    field = np.concatenate([np.transpose(flow, (1, 2, 0, 3)), np.zeros((*volume.shape, 1), np.float32)], axis=-1)
    return np.transpose(warp_label_map(volume, field, rule), (2, 0, 1))


def paired_table(rows, structures):
    """Markdown: per structure (then their mean) and metric, one-hot - nearest over the slice pairs where both
    are defined (mean +- sd), the Wilcoxon signed-rank p-value and the number of pairs."""
    from scipy.stats import wilcoxon

    baseline, other = (rows[name] for name, _ in RULES)
    lines = ["| Structure | Dice one-hot - nearest (points) | p (Dice) | HD95 one-hot - nearest (mm) | p (HD95) "
             "| pairs |",
             "|---|---|---|---|---|---|"]
    for structure, suffix in [(name, name) for name in structures] + [("Mean", "mean")]:
        cells, count = [], 0
        for prefix in ("dice", "hd95"):
            key = "%s_%s" % (prefix, suffix)
            a = np.array([row[key] for row in baseline])
            b = np.array([row[key] for row in other])
            both = np.isfinite(a) & np.isfinite(b)
            difference = b[both] - a[both]
            p = wilcoxon(b[both], a[both]).pvalue if np.any(difference != 0) else float("nan")
            cells += ["%+.3f +- %.3f" % (difference.mean(), difference.std()),
                      "%.3g" % p if np.isfinite(p) else "n/a (all equal)"]
            count = max(count, int(both.sum()))
        lines.append("| %s | %s | %d |" % (structure, " | ".join(cells), count))
    return "\n".join(lines)


def main(argv):
    del argv
    from gsmorph_tf.evaluate import evaluation
    from gsmorph_tf.evaluate.timing import machine_description
    from gsmorph_tf.train import training
    from gsmorph_tf.train.runs import load_run_for_inference

    try:
        config, network = load_run_for_inference(FLAGS.run_dir)
    except FileNotFoundError as error:
        raise app.UsageError("%s (train one with make demo)" % error) from error
    if config.dataset != "phantom":
        raise app.UsageError("--run_dir: %s was trained on dataset=%s; this benchmark takes a phantom run "
                             "(make demo)" % (FLAGS.run_dir, config.dataset))
    splits = training.load_data(config)
    subjects = splits["test"] if FLAGS.split == "test" else splits["train"] + splits["val"] + splits["test"]
    predict = evaluation.keras_predictor(network)
    rows = {name: [] for name, _ in RULES}
    seconds = {name: 0.0 for name, _ in RULES}
    changed = labelled = 0
    for pairs in subjects:
        moved, flow = predict(pairs.moving, pairs.fixed)
        warped = {}
        for name, rule in RULES:
            start = time.perf_counter()
            warped[name] = warp_stack(pairs.moving_labels, flow, rule)
            seconds[name] += time.perf_counter() - start
            rows[name] += evaluation.metric_rows(pairs, moved, warped[name], flow, "paper")
        changed += int(np.count_nonzero(warped["Nearest"] != warped["One-hot"]))
        labelled += int(np.count_nonzero((warped["Nearest"] > 0) | (warped["One-hot"] > 0)))
    structures = training.structure_names(subjects)
    summaries = {name: evaluation.summarize(rule_rows) for name, rule_rows in rows.items()}
    print("\n".join([
        "Run %s (%s, %s, seed %d); %s split: %s" % (FLAGS.run_dir, config.model, config.dataset, config.seed,
                                                  FLAGS.split, evaluation.protocol_caption("paper", rows["Nearest"])),
        "",
        evaluation.structure_table(summaries, structures),
        "",
        "Paired over slice pairs (Wilcoxon signed-rank, two-sided, zero differences dropped):",
        "",
        paired_table(rows, structures),
        "",
        "Voxels labelled differently by the two rules: %d of %d labelled by either (%.2f %%)."
        % (changed, labelled, 100.0 * changed / max(labelled, 1)),
        "Warping time (all stacks): " + ", ".join("%s %.2f s" % item for item in seconds.items()),
        "Machine: " + machine_description(),
    ]))


if __name__ == "__main__":
    app.run(main)
