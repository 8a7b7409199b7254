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
the per-seed differences and their tests. No flags, no PyTorch.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

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
    try:
        with np.load(path) as data:
            order = data["order"]
    except (OSError, ValueError, KeyError) as error:
        raise DatasetError("%s: cannot read the batch order (an .npz with 'order'): %s" % (path, error)) from error
    if order.ndim != 3 or order.shape[2] != batch_size or not np.issubdtype(order.dtype, np.integer):
        raise DatasetError("%s: expected integer order [epochs, steps, %d], got %s %s"
                           % (path, batch_size, order.dtype, order.shape))
    if order.size and (order.min() < 0 or order.max() >= pairs):
        raise DatasetError("%s: pair indices %d..%d, outside the %d training pairs"
                           % (path, order.min(), order.max(), pairs))
    return order.astype(np.int64)


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


def paired_comparison(port_records, reference_records, methods):
    """Per method, the port against the reference seed by seed (records as ``lambda_study.flows_record``
    writes, both sides trained from the same initial weights in the same batch order).

    Returns:
        ``{method name: {"rows": [{"seed", "port", "reference", "difference"}] (test Dice, points; port -
        reference), "mean_difference", "median_difference", "seed_wilcoxon": {"seeds", "statistic", "p_value"}
        (two-sided Wilcoxon signed-rank over the seeds' differences; statistic NaN and p 1 with no non-zero
        difference), "subject_wilcoxon": seed_studies.paired_test over the test subjects}}``.
    """
    from scipy import stats

    from gsmorph_tf.studies.seed_studies import paired_test

    comparison = {}
    for method in methods:
        port = {r["seed"]: r for r in port_records[method.name]}
        reference = {r["seed"]: r for r in reference_records[method.name]}
        seeds = [seed for seed in port if seed in reference]
        rows = [{"seed": seed, "port": port[seed]["test"]["dice_mean"]["mean"],
                 "reference": reference[seed]["test"]["dice_mean"]["mean"]} for seed in seeds]
        for row in rows:
            row["difference"] = row["port"] - row["reference"]
        differences = np.array([row["difference"] for row in rows])
        test = stats.wilcoxon(differences) if np.any(differences != 0) else None
        comparison[method.name] = {
            "rows": rows, "mean_difference": float(np.mean(differences)),
            "median_difference": float(np.median(differences)),
            "seed_wilcoxon": {"seeds": len(rows), "statistic": float(test.statistic) if test else float("nan"),
                              "p_value": float(test.pvalue) if test else 1.0},
            "subject_wilcoxon": paired_test([port[s] for s in seeds], [reference[s] for s in seeds])}
    return comparison


def paired_table(comparison, protocol):
    """Markdown: per method a row per seed (port, reference, difference), then the two paired tests."""
    lines = ["Paired runs: per seed the port trained from the reference's initial weights in the reference's batch "
             "order; test split, metric protocol %s, both scored by this package's evaluator; Dice (%%)." % protocol,
             "", "| Method | seed | port | reference | port - reference |", "|---|---|---|---|---|"]
    for name, row in comparison.items():
        lines += ["| %s | %d | %.2f | %.2f | %+.2f |" % (name, r["seed"], r["port"], r["reference"], r["difference"])
                  for r in row["rows"]]
    lines.append("")
    for name, row in comparison.items():
        seeds, subjects = row["seed_wilcoxon"], row["subject_wilcoxon"]
        lines.append("- %s: port - reference over %d seeds mean %+.2f, median %+.2f; Wilcoxon signed-rank over the "
                     "seeds W = %.1f, p = %.3g; over %d test subjects (Dice averaged over seeds) median %+.2f, "
                     "W = %.1f, p = %.3g (two-sided)."
                     % (name, seeds["seeds"], row["mean_difference"], row["median_difference"], seeds["statistic"],
                        seeds["p_value"], subjects["subjects"], subjects["median_difference"],
                        subjects["statistic"], subjects["p_value"]))
    return "\n".join(lines)
