"""The paired check of the port against the GSMorph reference code: the port trained from the reference's own
initial weights in the reference's own batch order, so that the two runs of a seed differ only by their
training code (``benchmarks/reference_training.py --paired`` drives it).

``benchmarks/reference_train.py --init_out --order_out`` records, for one seed, the reference network's
``state_dict`` before any step and the training pair indices of every step (``[epochs, steps, batch]``).
:func:`reference_initialised_model` puts those weights into the port's network
(:func:`gsmorph_tf.models.reference_weights.load_reference_weights`) inside the training model ``run_train``
builds (:func:`gsmorph_tf.train.training.build_model`: ``GradientSurgeryModel``, Adam at the config's rate);
:func:`train_in_order` feeds it exactly those batches, in order, and predicts the validation pairs after every
epoch and the test pairs at the end, in the reference's output format, so that both sides are scored by
:func:`gsmorph_tf.studies.lambda_study.flows_record`. :func:`paired_comparison` and :func:`paired_table` give
the per-seed differences and their tests, with a control run (the reference trained again, another thread count;
:func:`check_same_start`) as the yardstick; :func:`plot_paired_curves` draws the runs' validation curves. No
flags, no PyTorch.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import os

import numpy as np

from gsmorph_tf.errors import DatasetError

SPLITS = ("train", "val", "test")


def pair_arrays(splits):
    """The splits' image pairs as ``reference_train.py`` reads them: ``{"<split>_<moving|fixed>": [N, H, W]
    float32}``, subjects and slices in order (the order of the flows :func:`flows_record` scores)."""
    return {"%s_%s" % (split, side): np.concatenate([getattr(p, side) for p in splits[split]]).astype(np.float32)
            for split in SPLITS for side in ("moving", "fixed")}


def read_initial_state(path):
    """A reference ``state_dict`` written by ``reference_train.py --init_out``: ``{name: array}``."""
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise DatasetError("%s: cannot read the reference's initial weights (an .npz of its state_dict): %s"
                           % (path, error)) from error


def read_order(path, pairs, batch_size):
    """The batch order written by ``reference_train.py --order_out``: int64 ``[epochs, steps, batch_size]``
    indices into the ``pairs`` training pairs; :class:`DatasetError` naming the file and what is wrong."""
    order = _load_order(path)
    if order.ndim != 3 or order.shape[2] != batch_size or not np.issubdtype(order.dtype, np.integer):
        raise DatasetError("%s: expected integer order [epochs, steps, %d], got %s %s"
                           % (path, batch_size, order.dtype, order.shape))
    if order.size and (order.min() < 0 or order.max() >= pairs):
        raise DatasetError("%s: pair indices %d..%d, outside the %d training pairs"
                           % (path, order.min(), order.max(), pairs))
    return order.astype(np.int64)


def _load_order(path):
    """The ``order`` array of a batch-order file, unchecked; :class:`DatasetError` naming the file if unreadable."""
    try:
        with np.load(path) as data:
            return data["order"]
    except (OSError, ValueError, KeyError) as error:
        raise DatasetError("%s: cannot read the batch order (an .npz with 'order'): %s" % (path, error)) from error


def check_same_start(folder, stem, other):
    """Refuse, naming the files, unless the runs ``<folder>/<stem>_*`` and ``<folder>/<other>_*`` (as
    ``reference_train.py --init_out --order_out`` writes them) started from the same initial weights (bit for
    bit) and took the same batches in the same order."""
    paths = {name: [os.path.join(folder, "%s_%s.npz" % (run, name)) for run in (stem, other)]
             for name in ("init", "order")}
    first, second = (read_initial_state(path) for path in paths["init"])
    if first.keys() != second.keys() or any(not np.array_equal(first[k], second[k]) for k in first):
        raise DatasetError("%s and %s: the two runs started from different initial weights" % tuple(paths["init"]))
    if not np.array_equal(*(_load_order(path) for path in paths["order"])):
        raise DatasetError("%s and %s: the two runs took different batches" % tuple(paths["order"]))


def reference_initialised_model(config, state, inshape):
    """The compiled training model of ``config`` (:func:`~gsmorph_tf.train.training.build_model` around
    :func:`~gsmorph_tf.train.training.build_network` for images of spatial shape ``inshape``) with the
    reference ``state`` (``{state_dict name: array}``) loaded into its network."""
    import tensorflow as tf

    from gsmorph_tf.models.reference_weights import load_reference_weights
    from gsmorph_tf.train import training

    tf.keras.utils.set_random_seed(config.seed)
    model = training.build_model(config, training.build_network(config, tuple(inshape)))
    load_reference_weights(model.network, state)
    return model


def ordered_batches(moving, fixed, epoch_order):
    """One epoch's batches as ``tf.data``: step ``s`` is ``(moving[epoch_order[s]], fixed[epoch_order[s]])``,
    each ``[batch, H, W, 1]`` float32, in the order given.

    Args:
        moving, fixed: ``[N, H, W]`` training pairs; epoch_order: int ``[steps, batch]`` indices into them.
    """
    import tensorflow as tf

    index = np.asarray(epoch_order).reshape(-1)
    batch = np.shape(epoch_order)[1]
    return tf.data.Dataset.from_tensor_slices((moving[index][..., None], fixed[index][..., None])).batch(batch)


def train_in_order(model, order, arrays, batch_size=32):
    """Train ``model`` (a compiled ``GradientSurgeryModel``) on ``arrays``' training pairs in ``order``, one
    optimiser step per ``order[epoch, step]``, the validation flows predicted after every epoch.

    Args:
        model: e.g. from :func:`reference_initialised_model`; order: int ``[epochs, steps, batch]``;
        arrays: :func:`pair_arrays`' dict; batch_size: pairs per prediction batch.

    Returns:
        ``reference_train.py``'s output as a dict: ``test_flow`` ``[N_test, H, W, 2]``, ``val_flow``
        ``[epochs, N_val, H, W, 2]`` (pixels along row and column, inference mode), ``sim_loss``,
        ``reg_loss`` ``[epochs]`` (epoch means of the step losses), ``steps``.
    """
    from gsmorph_tf.evaluate.evaluation import predict_pairs

    def flows(split):
        return predict_pairs(model.network, arrays[split + "_moving"], arrays[split + "_fixed"], batch_size)[1]
    sims, regs, val_flows = [], [], []
    for epoch_order in order:
        logs = model.fit(ordered_batches(arrays["train_moving"], arrays["train_fixed"], epoch_order), epochs=1,
                         verbose=0, shuffle=False).history
        sims.append(logs["sim_loss"][-1])
        regs.append(logs["reg_loss"][-1])
        val_flows.append(flows("val"))
    return {"test_flow": flows("test"), "val_flow": np.stack(val_flows) if val_flows else np.zeros((0,)),
            "sim_loss": np.array(sims), "reg_loss": np.array(regs), "steps": np.array(order.shape[0] * order.shape[1])}


def paired_comparison(port_records, reference_records, methods, control_records=None):
    """Per method, the port against the reference seed by seed (records as ``lambda_study.flows_record``
    writes, both sides trained from the same initial weights in the same batch order); with
    ``control_records`` (the reference trained again with another thread count: same start and batches) also
    the reference against itself, the yardstick for the port's differences.

    Returns:
        ``{method name: {"rows": [{"seed", "port", "reference", "difference", "validation_port",
        "validation_reference", "validation_difference", "sim_loss_difference"}], "mean_difference",
        "median_difference", "seed_wilcoxon", "subject_wilcoxon", "validation": {"mean_difference",
        "seed_wilcoxon"}, "same_sign": int, "sim_loss_difference": float}}``: per seed the test Dice of the two
        (points) and port - reference; the final epoch's validation Dice likewise; ``sim_loss_difference`` the
        mean over epochs of ``|port - reference| / |reference|`` of the training similarity loss (epoch means,
        a fraction). Over the seeds: the test differences' mean and median, ``seed_wilcoxon`` ``{"seeds",
        "statistic", "p_value"}`` (two-sided Wilcoxon signed-rank over the seeds' differences; statistic NaN and
        p 1 with no non-zero difference), ``subject_wilcoxon`` (seed_studies.paired_test over the test
        subjects), the same for the validation differences, ``same_sign`` (seeds whose test and validation
        differences have the same sign: a systematic gap gives the same sign on both splits) and the median of
        ``sim_loss_difference``. With a control, each row also has ``control``, ``control_difference`` (control
        - reference, test Dice), ``control_validation_difference`` and ``control_sim_loss_difference``, and the
        method a ``"control"`` entry: ``{"mean_abs_difference", "port_mean_abs_difference"`` (mean over seeds of
        ``|control - reference|`` and of ``|port - reference|``, test Dice), ``"validation_mean_abs_difference",
        "port_validation_mean_abs_difference", "sim_loss_difference"`` (median), ``"abs_wilcoxon"}``
        (``_seed_wilcoxon`` of ``|port - reference| - |control - reference|`` over the seeds: is the port
        farther from the reference than the reference is from itself?).
    """
    from gsmorph_tf.studies.seed_studies import paired_test

    comparison = {}
    for method in methods:
        port = {r["seed"]: r for r in port_records[method.name]}
        reference = {r["seed"]: r for r in reference_records[method.name]}
        seeds = [seed for seed in port if seed in reference]
        rows = [{"seed": seed, "port": port[seed]["test"]["dice_mean"]["mean"],
                 "reference": reference[seed]["test"]["dice_mean"]["mean"],
                 "validation_port": port[seed]["validation_dice"],
                 "validation_reference": reference[seed]["validation_dice"],
                 "sim_loss_difference": _relative_difference(port[seed]["sim_loss_curve"],
                                                             reference[seed]["sim_loss_curve"])} for seed in seeds]
        for row in rows:
            row["difference"] = row["port"] - row["reference"]
            row["validation_difference"] = row["validation_port"] - row["validation_reference"]
        differences = np.array([row["difference"] for row in rows])
        validation = np.array([row["validation_difference"] for row in rows])
        comparison[method.name] = {
            "rows": rows, "mean_difference": float(np.mean(differences)),
            "median_difference": float(np.median(differences)), "seed_wilcoxon": _seed_wilcoxon(differences),
            "subject_wilcoxon": paired_test([port[s] for s in seeds], [reference[s] for s in seeds]),
            "validation": {"mean_difference": float(np.mean(validation)), "seed_wilcoxon": _seed_wilcoxon(validation)},
            "same_sign": int(np.sum(np.sign(differences) == np.sign(validation))),
            "sim_loss_difference": float(np.median([row["sim_loss_difference"] for row in rows]))}
        if control_records is not None:
            comparison[method.name]["control"] = _control(rows, reference, control_records[method.name])
    return comparison


def _control(rows, reference, control_records):
    """Adds the control's columns to ``rows`` (in place) and returns the method's ``"control"`` entry (see
    :func:`paired_comparison`); ``reference``: ``{seed: record}``."""
    control = {r["seed"]: r for r in control_records}
    missing = [row["seed"] for row in rows if row["seed"] not in control]
    if missing:
        raise ValueError("seeds %s have no control run" % missing)
    for row in rows:
        seed = row["seed"]
        row["control"] = control[seed]["test"]["dice_mean"]["mean"]
        row["control_difference"] = row["control"] - row["reference"]
        row["control_validation_difference"] = control[seed]["validation_dice"] - reference[seed]["validation_dice"]
        row["control_sim_loss_difference"] = _relative_difference(control[seed]["sim_loss_curve"],
                                                                  reference[seed]["sim_loss_curve"])

    def mean_abs(key):
        return float(np.mean([abs(row[key]) for row in rows]))

    return {"mean_abs_difference": mean_abs("control_difference"), "port_mean_abs_difference": mean_abs("difference"),
            "validation_mean_abs_difference": mean_abs("control_validation_difference"),
            "port_validation_mean_abs_difference": mean_abs("validation_difference"),
            "sim_loss_difference": float(np.median([row["control_sim_loss_difference"] for row in rows])),
            "abs_wilcoxon": _seed_wilcoxon(np.array([abs(row["difference"]) - abs(row["control_difference"])
                                                     for row in rows]))}


def _seed_wilcoxon(differences):
    """Two-sided Wilcoxon signed-rank test of ``differences`` [seeds]: ``{"seeds", "statistic", "p_value"}``
    (statistic NaN and p 1 when no difference is non-zero)."""
    from scipy import stats

    test = stats.wilcoxon(differences) if np.any(differences != 0) else None
    return {"seeds": len(differences), "statistic": float(test.statistic) if test else float("nan"),
            "p_value": float(test.pvalue) if test else 1.0}


def _relative_difference(port_curve, reference_curve):
    """Mean over epochs of ``|port - reference| / |reference|`` of two loss curves [epochs] (a fraction)."""
    port_curve, reference_curve = np.asarray(port_curve, float), np.asarray(reference_curve, float)
    if port_curve.shape != reference_curve.shape or not port_curve.size:
        raise ValueError("loss curves of %s and %s epochs: a paired run has one value per epoch on both sides"
                         % (port_curve.size, reference_curve.size))
    return float(np.mean(np.abs(port_curve - reference_curve) / np.abs(reference_curve)))


def plot_paired_curves(port_records, reference_records, path, control_records=None, control_label=None):
    """``path`` (PNG): per seed one panel of the final validation split's Dice (%) after every epoch, the
    port's and the reference's runs of that seed (and the control's, the reference trained again, labelled
    ``control_label``). Records as :func:`paired_comparison` takes them, one method's lists."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gsmorph_tf.fileio import atomic_save_figure

    runs = [("port", port_records, "tab:red"), ("reference", reference_records, "tab:blue")]
    if control_records is not None:
        runs.append((control_label or "reference again", control_records, "tab:gray"))
    seeds = [r["seed"] for r in reference_records]
    columns = min(5, len(seeds))
    rows = -(-len(seeds) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.2 * rows), sharey=True, squeeze=False)
    for axis, seed in zip(axes.flat, seeds):
        for label, records, color in runs:
            curve = next(r["validation_curve"] for r in records if r["seed"] == seed)
            axis.plot(np.arange(1, len(curve) + 1), curve, color=color, lw=1.2, label=label)
        axis.set_title("seed %d" % seed, fontsize=8)
        axis.tick_params(labelsize=7)
    for axis in axes.flat[len(seeds):]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel("validation Dice (%)", fontsize=7)
    for axis in axes[-1]:
        axis.set_xlabel("epoch", fontsize=7)
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def paired_table(comparison, protocol):
    """Markdown: per method a row per seed (test and final validation Dice of both, their differences, the
    training similarity loss's relative difference), then the paired tests."""
    lines = ["Paired runs: per seed the port trained from the reference's initial weights in the reference's batch "
             "order; metric protocol %s, both scored by this package's evaluator; Dice (%%), test split and the "
             "validation split after the last epoch; sim loss: mean over epochs of |port - reference| / |reference| "
             "of the training similarity loss." % protocol, "",
             "| Method | seed | test: port | reference | port - reference | validation: port | reference | "
             "port - reference | sim loss |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in comparison.items():
        lines += ["| %s | %d | %.2f | %.2f | %+.2f | %.2f | %.2f | %+.2f | %.2f %% |"
                  % (name, r["seed"], r["port"], r["reference"], r["difference"], r["validation_port"],
                     r["validation_reference"], r["validation_difference"], 100.0 * r["sim_loss_difference"])
                  for r in row["rows"]]
    controlled = {name: row for name, row in comparison.items() if "control" in row}
    if controlled:
        lines += ["", "The reference against itself: trained again with another thread count from the same initial "
                  "weights in the same batch order (only the order of its floating-point sums changes).", "",
                  "| Method | seed | test: reference again | - reference | validation: - reference | sim loss |",
                  "|---|---|---|---|---|---|"]
        for name, row in controlled.items():
            lines += ["| %s | %d | %.2f | %+.2f | %+.2f | %.2f %% |"
                      % (name, r["seed"], r["control"], r["control_difference"], r["control_validation_difference"],
                         100.0 * r["control_sim_loss_difference"]) for r in row["rows"]]
    lines.append("")
    for name, row in comparison.items():
        seeds, subjects = row["seed_wilcoxon"], row["subject_wilcoxon"]
        validation = row["validation"]
        lines.append("- %s: port - reference over %d seeds mean %+.2f, median %+.2f; Wilcoxon signed-rank over the "
                     "seeds W = %.1f, p = %.3g; over %d test subjects (Dice averaged over seeds) median %+.2f, "
                     "W = %.1f, p = %.3g (two-sided). Validation: mean %+.2f, Wilcoxon over the seeds p = %.3g; "
                     "the test and validation differences have the same sign in %d of %d seeds. Training "
                     "similarity loss: median relative difference %.2f %%."
                     % (name, seeds["seeds"], row["mean_difference"], row["median_difference"], seeds["statistic"],
                        seeds["p_value"], subjects["subjects"], subjects["median_difference"],
                        subjects["statistic"], subjects["p_value"], validation["mean_difference"],
                        validation["seed_wilcoxon"]["p_value"], row["same_sign"], seeds["seeds"],
                        100.0 * row["sim_loss_difference"]))
        if "control" in row:
            control = row["control"]
            lines.append("- %s, the reference against itself: mean |difference| test %.2f (port: %.2f), validation "
                         "%.2f (port: %.2f); training similarity loss: median relative difference %.2f %%. "
                         "|port - reference| - |reference again - reference| over the seeds: Wilcoxon p = %.3g."
                         % (name, control["mean_abs_difference"], control["port_mean_abs_difference"],
                            control["validation_mean_abs_difference"], control["port_validation_mean_abs_difference"],
                            100.0 * control["sim_loss_difference"], control["abs_wilcoxon"]["p_value"]))
    return "\n".join(lines)
