"""One training run, step by step: config -> dataset -> model -> fit -> evaluate -> export.

Each step is a function of a :class:`~gsmorph_tf.config.TrainConfig` (or plain arguments) so it can be
called on its own from a test; :func:`train_and_evaluate` chains them. The dataset and the model are looked
up by name in :mod:`gsmorph_tf.registry`; nothing here knows which ones exist. A run's output directory
holds::

    run.lock               held by the run using the directory (a second run on it is refused; see
                           :mod:`gsmorph_tf.rundir`)
    config.json            the settings (a re-run must match them to resume)
    tensorboard/           event files: per-step losses and conflict statistics, per-epoch validation metrics,
                           images/ (registration panels, flow histogram), hparams/ (settings + test metrics)
    checkpoints/           model + optimizer + epoch after every epoch (Keras BackupAndRestore): re-running
                           the same command after an interruption resumes from the last completed epoch
    evaluation.json/.md    test-split metrics per subject and mean +- std, with the Initial (identity) row
    export/<model>_<dataset>/<N>/  SavedModel for TF Serving (serving_default: raw moving, fixed -> moved, flow
                           on the input grid; register_crop; warp), with assets/provenance.json and the warm-up
    export.json            which version holds this run's export (a re-run never exports a second one)
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import sys

import tensorflow as tf

from gsmorph_tf import evaluation, monitoring, rundir
from gsmorph_tf.data.pipeline import make_dataset
from gsmorph_tf.data.subjects import reporting_order
from gsmorph_tf.export import export_saved_model, run_provenance
from gsmorph_tf.errors import ConfigError
from gsmorph_tf.fileio import atomic_write_text
from gsmorph_tf.provenance import default_model_name
from gsmorph_tf.registry import DATASETS, MODELS


def load_data(config, generate=True):
    """Read the config's dataset (:meth:`~gsmorph_tf.plugins.DatasetPlugin.load`; ``generate``: make
    synthetic data on disk first if absent) and validate all of it before training starts.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` lists of
        :class:`~gsmorph_tf.data.subjects.SubjectPairs`.
    """
    return DATASETS.load(config.dataset).load(config, generate=generate)


def build_network(config, inshape):
    """The registration network named by ``config.model`` for images of spatial shape ``inshape``."""
    return MODELS.load(config.model).build_network(config, inshape)


def build_model(config, network):
    """``network`` wrapped in its compiled, built training model (the model entry decides which)."""
    return MODELS.load(config.model).build_training_model(config, network)


def method_name(config, chosen=None):
    """The name a run's method has in tables: the papers' names for its variants."""
    return MODELS.load(config.model).method_name(config, chosen)


class ValidationMetrics(tf.keras.callbacks.Callback):
    """At each epoch's end, register the validation subjects with ``network`` (``[moving, fixed] ->
    [moved, flow]``, sharing the trained weights) and add their mean metrics to the logs as ``val_dice`` (%),
    ``val_dice_<structure>``, ``val_hd95`` (mm), ``val_mse`` and ``val_njd`` (%), so the TensorBoard
    callback after it writes them and the progress bar shows them."""

    def __init__(self, network, subjects, batch_size, protocol="volume"):
        super().__init__()
        self.network = network
        self.subjects = subjects
        self.batch_size = batch_size
        self.protocol = protocol

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not self.subjects:
            return
        rows = evaluation.evaluate_network(self.network, self.subjects, self.batch_size, protocol=self.protocol)
        summary = evaluation.summarize(rows)
        logs["val_dice"] = summary["dice_mean"]["mean"]
        for name in reporting_order(self.subjects[0].label_values):
            logs["val_dice_%s" % name] = summary["dice_%s" % name]["mean"]
        logs["val_hd95"] = summary["hd95_mean"]["mean"]
        logs["val_mse"] = summary["mse"]["mean"]
        logs["val_njd"] = summary["njd"]["mean"]


def checkpoint_dir(output_dir):
    """The folder of a run's ``BackupAndRestore`` checkpoints."""
    return os.path.join(output_dir, "checkpoints")


def completed_epochs(output_dir):
    """How many epochs the run in ``output_dir`` has completed, by its last checkpoint (0 without one).

    ``BackupAndRestore`` keeps the index of the last completed epoch in the checkpoint (``ckpt_saved_epoch``)
    in its ``chief/`` subfolder; training resumes after it.
    """
    latest = tf.train.latest_checkpoint(os.path.join(checkpoint_dir(output_dir), "chief"))
    if latest is None:
        return 0
    return int(tf.train.load_checkpoint(latest).get_tensor("ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE")) + 1


def fit(model, splits, config, output_dir, verbose=None):
    """Train ``model`` for ``config.epochs`` epochs, resuming from ``output_dir/checkpoints`` if present.

    Returns:
        The Keras ``History`` (only the epochs run now).
    """
    train = make_dataset(splits["train"], config.batch_size, shuffle=True, seed=config.seed,
                         drop_remainder=config.drop_last)
    val = make_dataset(splits["val"], config.batch_size, shuffle=False) if splits["val"] else None
    network = MODELS.load(config.model).monitoring_network(model.network)
    log_dir = os.path.join(output_dir, "tensorboard")
    callbacks = [
        # before TensorBoard: it adds to the logs TensorBoard writes
        ValidationMetrics(network, splits["val"], config.batch_size, config.metric_protocol),
        monitoring.RegistrationImages(network, splits["val"], os.path.join(log_dir, "images")),
        tf.keras.callbacks.TensorBoard(log_dir, update_freq=config.log_every_n_steps,
                                       profile_batch=config.profile_batch or 0),
        tf.keras.callbacks.BackupAndRestore(checkpoint_dir(output_dir), delete_checkpoint=False),
    ]
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2  # a progress bar on a terminal, a line per epoch in logs
    tf.keras.utils.set_random_seed(config.seed)
    return model.fit(train, validation_data=val, epochs=config.epochs, callbacks=callbacks, verbose=verbose)


def evaluate(network, subjects, batch_size=32, show_progress=True, protocol="volume"):
    """Evaluate the identity and ``network`` on ``subjects`` by the metric ``protocol``.

    Returns:
        ``{"Initial": {"subjects": rows, "summary": ...}, "Model": {...}}`` (see :mod:`gsmorph_tf.evaluation`;
        rows per subject or per slice pair).
    """
    bar = tf.keras.utils.Progbar(len(subjects), unit_name="subject") if show_progress else None
    return evaluation.evaluate_against_initial(evaluation.keras_predictor(network, batch_size), subjects, "Model",
                                               progress=(lambda done, _: bar.update(done)) if bar else None,
                                               protocol=protocol)


def check_batches(config, splits):
    """Raise ConfigError when ``drop_last`` would leave no training batch (fewer pairs than ``batch_size``)."""
    pairs = sum(len(p.moving) for p in splits["train"])
    if config.drop_last and pairs < config.batch_size:
        raise ConfigError("batch_size=%d is larger than the %d training pairs, and drop_last drops the partial "
                          "batch: lower batch_size or set drop_last=False" % (config.batch_size, pairs))


def prepare_output_dir(config):
    """Create the output dir, or check that the run already there has the same settings; save config.json."""
    os.makedirs(config.output_dir, exist_ok=True)
    path = os.path.join(config.output_dir, "config.json")
    if os.path.exists(path):
        config.check_resumable(path)
    config.save(path)


def train_and_evaluate(config, verbose=None, log=print, export=True):
    """The whole run: validate settings and data, train (or resume), evaluate the test split, export.

    Everything that can be wrong with the settings or the data fails before the output dir is touched,
    and so does a run directory that another live run holds (:mod:`gsmorph_tf.rundir`): this run holds its
    lock from then on. Re-run after an interruption (``SIGKILL`` included), it resumes after the last
    completed epoch, and exports the SavedModel only if no earlier run exported this trained state.
    ``export=False`` skips the SavedModel (studies that only need the scores).

    Raises:
        ConfigError: invalid settings, settings that differ from the run already in the output dir, or an
            output dir in use by another run (naming it and the holder's pid and host).
        DatasetError: unreadable or inconsistent data.

    Returns:
        dict with ``history`` (Keras history dict of this call), ``results`` (see :func:`evaluate`),
        ``table`` (Markdown), ``export_dir`` (None without export) and the output paths.
    """
    config.validate()
    rundir.check_not_in_use(config.output_dir)  # a busy run directory is refused before the data is read
    splits = load_data(config)
    check_batches(config, splits)
    with rundir.locked(config.output_dir):
        prepare_output_dir(config)
        return _train_and_evaluate(config, splits, verbose, log, export)


def _train_and_evaluate(config, splits, verbose, log, export):
    """:func:`train_and_evaluate` after the checks, holding the run directory's lock."""
    inshape = splits["train"][0].moving.shape[1:]
    model_entry = MODELS.load(config.model)
    # Seed before the weights are drawn: the same seed gives the same initial network (and, with fit's
    # seeding of shuffling and noise, the same run), so compared methods really start alike.
    tf.keras.utils.set_random_seed(config.seed)
    network = model_entry.build_network(config, inshape)
    model = model_entry.build_training_model(config, network)
    log("Training %s (surgery=%s) on %d/%d/%d train/val/test subjects (%d training pairs), output in %s"
        % (config.model, config.surgery, len(splits["train"]), len(splits["val"]), len(splits["test"]),
           sum(len(p.moving) for p in splits["train"]), config.output_dir))
    done = completed_epochs(config.output_dir)
    if done:
        log("Resuming %s: %d of %d epochs completed%s" % (
            config.output_dir, done, config.epochs, ", training epochs %d-%d" % (done + 1, config.epochs)
            if done < config.epochs else ", nothing left to train"))
    history = fit(model, splits, config, config.output_dir, verbose=verbose)

    network, chosen = model_entry.finalize(config, network, splits, log=log)
    log("Evaluating on %d test subjects" % len(splits["test"]))
    results = evaluate(network, splits["test"], config.batch_size, show_progress=verbose != 0,
                       protocol=config.metric_protocol)
    name = model_entry.method_name(config, chosen)
    caption = evaluation.protocol_caption(config.metric_protocol, results["Model"]["subjects"])
    table = caption + "\n\n" + evaluation.format_table({"Initial": results["Initial"]["summary"],
                                                         name: results["Model"]["summary"]})
    record = {"config": config.to_dict(), "structures": reporting_order(splits["test"][0].label_values),
              "method": model_entry.method_name(config), "chosen": chosen, "metric_protocol": config.metric_protocol,
              "methods": results, "crop": evaluation.crop_report(splits["test"], config.crop_center)}
    evaluation.write_json(os.path.join(config.output_dir, "evaluation.json"), record)
    atomic_write_text(os.path.join(config.output_dir, "evaluation.md"), table + "\n")
    monitoring.log_hparams(os.path.join(config.output_dir, "tensorboard"), config, results["Model"]["summary"])
    export_dir = None
    if export:
        model_name = default_model_name(config)
        provenance = run_provenance(config, list(inshape), model_name, json.loads(evaluation.to_json(record)))
        base_dir = os.path.join(config.output_dir, "export", model_name)
        export_dir = rundir.export_once(
            config.output_dir, base_dir, config.epochs,
            lambda version: export_saved_model(network, base_dir, version, provenance=provenance))
    return {"history": history.history, "results": results, "table": table, "export_dir": export_dir,
            "tensorboard_dir": os.path.join(config.output_dir, "tensorboard"),
            "evaluation_json": os.path.join(config.output_dir, "evaluation.json")}
