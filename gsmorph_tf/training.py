"""One training run, step by step: data -> model -> fit -> evaluate -> export.

Each step is a function of a :class:`~gsmorph_tf.config.TrainConfig` (or plain arguments) so it can be
called on its own from a test; :func:`train_and_evaluate` chains them. A run's output directory holds::

    config.json            the settings (a re-run must match them to resume)
    tensorboard/           event files: per-step losses and conflict statistics, per-epoch validation metrics,
                           images/ (registration panels, flow histogram), hparams/ (settings + test metrics)
    checkpoints/           model + optimizer + epoch after every epoch (Keras BackupAndRestore): re-running
                           the same command after an interruption resumes from the last completed epoch
    evaluation.json/.md    test-split metrics per subject and mean +- std, with the Initial (identity) row
    export/<model>/<N>/    SavedModel for TF Serving (serving_default: moving, fixed -> moved, flow)
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import os
import sys

import tensorflow as tf

from gsmorph_tf import evaluation, hypermorph, monitoring
from gsmorph_tf.config import ConfigError
from gsmorph_tf.data.acdc import load_acdc
from gsmorph_tf.data.mnms import load_mnms
from gsmorph_tf.data.pairs import make_dataset, reporting_order
from gsmorph_tf.data.phantom import generate_phantom_dataset
from gsmorph_tf.export import export_saved_model
from gsmorph_tf.fileio import atomic_write_text
from gsmorph_tf.model import GradientSurgeryModel
from gsmorph_tf.networks import build_gsmorph_unet

#: The phantom is always drawn with this seed, so the training seed changes the run, not the data.
PHANTOM_SEED = 0

#: HyperMorph's lambda for the per-epoch validation metrics (~ VoxelMorph's lam 0.01 with MSE).
VALIDATION_HYPERMORPH_LAMBDA = 0.01


def load_data(config, generate=True):
    """Read (and for ``phantom`` with ``generate``, first generate) the dataset; validate it all before
    training starts. Without ``generate`` an existing phantom is read as it is (evaluation).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` lists of
        :class:`~gsmorph_tf.data.pairs.SubjectPairs`, crops of ``config.crop_size`` pixels.
    """
    if config.dataset == "phantom" and generate:
        generate_phantom_dataset(config.data_dir, n_subjects=config.phantom_subjects,
                                 n_slices=config.phantom_slices, image_size=config.phantom_size,
                                 seed=PHANTOM_SEED)
    crop = (config.crop_size, config.crop_size)
    if config.dataset == "mnms":
        return load_mnms(config.data_dir, crop_size=crop, seed=config.seed)
    if config.dataset == "brain":
        from gsmorph_tf.data.brain import load_brain  # optional extra (nilearn)

        return load_brain(n_pairs=config.brain_pairs, shape=tuple(config.brain_shape),
                          max_displacement=config.brain_max_displacement, seed=config.seed)
    return load_acdc(config.data_dir, crop_size=crop, seed=config.seed)  # ACDC and the phantom


def build_network(config, inshape):
    """The registration network named by ``config.model`` for images of spatial shape ``inshape``."""
    if config.model == "gsmorph":
        return build_gsmorph_unet(inshape, int_steps=config.int_steps)
    if config.model == "hypermorph":
        return hypermorph.build_hypermorph(inshape, int_steps=config.int_steps)
    if config.model == "ulae":
        from ulae_tf.networks import build_ulae_net

        return build_ulae_net(inshape)
    raise ConfigError("unknown model %r" % config.model)


def similarity_for(config):
    """The similarity loss a config names: a voxelmorph loss name, or ULAE's multi-window NCC callable."""
    if config.similarity == "multi_ncc":
        from ulae_tf.losses import multi_window_ncc

        return multi_window_ncc(windows=tuple(config.ncc_windows), gamma=config.ncc_gamma)
    return config.similarity


def build_model(config, network):
    """Wrap ``network`` in its compiled training model (Adam at ``config.learning_rate``):
    :class:`GradientSurgeryModel`, or :class:`~gsmorph_tf.hypermorph.HyperMorphModel` for ``hypermorph``."""
    zeros = tf.zeros((1, *network.inputs[0].shape[1:]))
    if config.model == "hypermorph":
        model = hypermorph.HyperMorphModel(network, similarity=config.similarity, reg_penalty=config.reg_penalty,
                                           ncc_window=config.ncc_window, seed=config.seed)
        dummy = [zeros, zeros, tf.zeros((1, 1))]
    else:
        model = GradientSurgeryModel(network, similarity=similarity_for(config), reg_penalty=config.reg_penalty,
                                     surgery=config.surgery, lam=config.lam, grouping=config.grouping,
                                     seed=config.seed, ncc_window=config.ncc_window,
                                     conflict_diagnostics=config.conflict_diagnostics)
        dummy = [zeros, zeros]
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=config.learning_rate))
    model(dummy)  # BackupAndRestore needs a built model to restore into.
    return model


def inference_network(config, network, splits, log=print):
    """The ``[moving, fixed] -> [moved, flow]`` network to evaluate and export, and a dict of what was
    chosen for it: HyperMorph's lambda is selected on the validation split, other networks are used as is."""
    if config.model != "hypermorph":
        return network, {}
    lam, scores = hypermorph.select_lambda(network, splits["val"], batch_size=config.batch_size)
    log("HyperMorph: lambda %g chosen on the validation split (mean Dice %.2f %%)"
        % (lam, max(s["dice"] for s in scores if s["lambda"] == lam)))
    return hypermorph.fixed_lambda_network(network, lam), {"hypermorph_lambda": lam, "lambda_scores": scores}


def method_name(config, chosen=None):
    """The name a run's method has in tables: the paper's names for its variants."""
    if config.model == "hypermorph":
        return "HyperMorph" + (" (lambda=%g)" % chosen["hypermorph_lambda"] if chosen else "")
    if config.model == "ulae":
        return "ULAE-net" + ("" if config.surgery == "none" else " + gradient surgery (%s)" % config.surgery)
    if config.surgery == "none":
        return "VoxelMorph (lam=%g)" % config.lam
    return {"layerwise": "GSMorph", "pcgrad": "GS-PCGrad", "agr_rand": "GS-Agr", "agr_sum": "GS-Agr (sum)"}[
        config.surgery]


class ValidationMetrics(tf.keras.callbacks.Callback):
    """At each epoch's end, register the validation subjects with ``network`` (``[moving, fixed] ->
    [moved, flow]``, sharing the trained weights) and add their mean metrics to the logs as ``val_dice`` (%),
    ``val_dice_<structure>``, ``val_hd95`` (mm), ``val_mse`` and ``val_njd`` (%), so the TensorBoard
    callback after it writes them and the progress bar shows them."""

    def __init__(self, network, subjects, batch_size):
        super().__init__()
        self.network = network
        self.subjects = subjects
        self.batch_size = batch_size

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.subjects:
            return
        rows = evaluation.evaluate_network(self.network, self.subjects, self.batch_size)
        summary = evaluation.summarize(rows)
        logs["val_dice"] = summary["dice_mean"]["mean"]
        for name in reporting_order(self.subjects[0].label_values):
            logs["val_dice_%s" % name] = summary["dice_%s" % name]["mean"]
        logs["val_hd95"] = summary["hd95_mean"]["mean"]
        logs["val_mse"] = summary["mse"]["mean"]
        logs["val_njd"] = summary["njd"]["mean"]


def fit(model, splits, config, output_dir, verbose=None):
    """Train ``model`` for ``config.epochs`` epochs, resuming from ``output_dir/checkpoints`` if present.

    Returns:
        The Keras ``History`` (only the epochs run now).
    """
    train = make_dataset(splits["train"], config.batch_size, shuffle=True, seed=config.seed)
    val = make_dataset(splits["val"], config.batch_size, shuffle=False) if splits["val"] else None
    network = model.network
    if config.model == "hypermorph":  # monitored at VoxelMorph-m's weight; the final lambda is chosen later
        network = hypermorph.fixed_lambda_network(network, VALIDATION_HYPERMORPH_LAMBDA)
    log_dir = os.path.join(output_dir, "tensorboard")
    callbacks = [
        ValidationMetrics(network, splits["val"], config.batch_size),  # before TensorBoard: it adds to logs
        monitoring.RegistrationImages(network, splits["val"], os.path.join(log_dir, "images")),
        tf.keras.callbacks.TensorBoard(log_dir, update_freq=config.log_every_n_steps),
        tf.keras.callbacks.BackupAndRestore(os.path.join(output_dir, "checkpoints"), delete_checkpoint=False),
    ]
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2  # a progress bar on a terminal, a line per epoch in logs
    tf.keras.utils.set_random_seed(config.seed)
    return model.fit(train, validation_data=val, epochs=config.epochs, callbacks=callbacks, verbose=verbose)


def evaluate(network, subjects, batch_size=32, show_progress=True):
    """Evaluate the identity and ``network`` on ``subjects``.

    Returns:
        ``{"Initial": {"subjects": rows, "summary": ...}, "Model": {...}}`` (see :mod:`gsmorph_tf.evaluation`).
    """
    bar = tf.keras.utils.Progbar(len(subjects), unit_name="subject") if show_progress else None
    model_rows = evaluation.evaluate_network(network, subjects, batch_size,
                                             progress=(lambda done, _: bar.update(done)) if bar else None)
    results = {}
    for method, rows in (("Initial", evaluation.evaluate_identity(subjects)), ("Model", model_rows)):
        results[method] = {"subjects": rows, "summary": evaluation.summarize(rows)}
    return results


def prepare_output_dir(config):
    """Create the output dir, or check that the run already there has the same settings; save config.json."""
    os.makedirs(config.output_dir, exist_ok=True)
    path = os.path.join(config.output_dir, "config.json")
    if os.path.exists(path):
        config.check_resumable(path)
    config.save(path)


def train_and_evaluate(config, verbose=None, log=print):
    """The whole run: validate settings and data, train (or resume), evaluate the test split, export.

    Everything that can be wrong with the settings or the data fails before the output dir is touched.

    Returns:
        dict with ``history`` (Keras history dict of this call), ``results`` (see :func:`evaluate`),
        ``table`` (Markdown), ``export_dir`` and the output paths.
    """
    config.validate()
    splits = load_data(config)
    prepare_output_dir(config)
    inshape = splits["train"][0].moving.shape[1:]
    # Seed before the weights are drawn: the same seed gives the same initial network (and, with fit's
    # seeding of shuffling and noise, the same run), so compared methods really start alike.
    tf.keras.utils.set_random_seed(config.seed)
    network = build_network(config, inshape)
    model = build_model(config, network)
    log("Training %s (surgery=%s) on %d/%d/%d train/val/test subjects (%d training pairs), output in %s"
        % (config.model, config.surgery, len(splits["train"]), len(splits["val"]), len(splits["test"]),
           sum(len(p.moving) for p in splits["train"]), config.output_dir))
    history = fit(model, splits, config, config.output_dir, verbose=verbose)

    network, chosen = inference_network(config, network, splits, log=log)
    log("Evaluating on %d test subjects" % len(splits["test"]))
    results = evaluate(network, splits["test"], config.batch_size, show_progress=verbose != 0)
    table = evaluation.format_table({"Initial": results["Initial"]["summary"],
                                     method_name(config, chosen): results["Model"]["summary"]})
    evaluation.write_json(os.path.join(config.output_dir, "evaluation.json"),
                          {"config": config.to_dict(), "structures": reporting_order(splits["test"][0].label_values),
                           "method": method_name(config),
                           "chosen": chosen, "methods": results})
    atomic_write_text(os.path.join(config.output_dir, "evaluation.md"), table + "\n")
    monitoring.log_hparams(os.path.join(config.output_dir, "tensorboard"), config, results["Model"]["summary"])
    export_dir = export_saved_model(network, os.path.join(config.output_dir, "export", config.model))
    return {"history": history.history, "results": results, "table": table, "export_dir": export_dir,
            "tensorboard_dir": os.path.join(config.output_dir, "tensorboard"),
            "evaluation_json": os.path.join(config.output_dir, "evaluation.json")}

