"""One training run, step by step: config -> dataset -> model -> fit -> evaluate -> export.

Each step is a function of a :class:`~gsmorph_tf.config.TrainConfig` (or plain arguments) so it can be
called on its own from a test; :func:`train_and_evaluate` chains them. The dataset and the model are looked
up by name in :mod:`gsmorph_tf.registry`; nothing here knows which ones exist. A run's output directory
holds::

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

from gsmorph_tf import evaluation, monitoring
from gsmorph_tf.data.pipeline import make_dataset
from gsmorph_tf.data.subjects import reporting_order
from gsmorph_tf.export import export_saved_model
from gsmorph_tf.errors import ConfigError
from gsmorph_tf.fileio import atomic_write_text
from gsmorph_tf.plugins import StreamedSplit
from gsmorph_tf.registry import DATASETS, MODELS


def load_data(config, generate=True):
    """Read the config's dataset (:meth:`~gsmorph_tf.plugins.DatasetPlugin.load`; ``generate``: make
    synthetic data on disk first if absent) and validate all of it before training starts.

    Returns:
        ``{"train": ..., "val": ..., "test": ...}``: lists of :class:`~gsmorph_tf.data.subjects.SubjectPairs`,
        or :class:`~gsmorph_tf.plugins.StreamedSplit` objects (datasets streamed from disk); optionally
        ``"record"`` (how the splits were made).
    """
    return DATASETS.load(config.dataset).load(config, generate=generate)


def pair_count(split):
    """Registration pairs in a split (per epoch for a streamed training split), reading no volume."""
    return split.pair_count if isinstance(split, StreamedSplit) else sum(len(p.moving) for p in split)


def input_shape(split):
    """Spatial shape of a split's images, e.g. ``(128, 128)`` or ``(160, 224, 192)``."""
    return tuple(split.shape) if isinstance(split, StreamedSplit) else split[0].moving.shape[1:]


def structure_names(split):
    """The structures a split is scored on, in table order (:func:`reporting_order`)."""
    return reporting_order(split.label_values if isinstance(split, StreamedSplit) else split[0].label_values)


def batches(split, batch_size, shuffle, seed=0, drop_remainder=False):
    """A split as ``tf.data`` batches of ``{"moving", "fixed"}``: streamed from disk for a
    :class:`~gsmorph_tf.plugins.StreamedSplit` (always in a seeded order per epoch), else from memory
    (:func:`~gsmorph_tf.data.pipeline.make_dataset`)."""
    if isinstance(split, StreamedSplit):
        return split.batches(batch_size, seed=seed, drop_remainder=drop_remainder)
    return make_dataset(split, batch_size, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder)


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
    ``val_dice_<structure>``, ``val_hd95`` (mm), ``val_hd95_<structure>``, ``val_mse``, ``val_njd`` (%) and
    ``val_sdlogj``, so the TensorBoard callback after it writes them and the progress bar shows them.
    Structure names become tags by :func:`gsmorph_tf.monitoring.tag_name`. A split read from disk is read one
    pair at a time."""

    def __init__(self, network, subjects, batch_size, protocol="volume"):
        super().__init__()
        self.network = network
        self.subjects = subjects
        self.batch_size = batch_size
        self.protocol = protocol
        self.structures = structure_names(subjects) if len(subjects) else []

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or not len(self.subjects):
            return
        rows = evaluation.evaluate_network(self.network, self.subjects, self.batch_size, protocol=self.protocol)
        summary = evaluation.summarize(rows)
        logs["val_dice"] = summary["dice_mean"]["mean"]
        logs["val_hd95"] = summary["hd95_mean"]["mean"]
        for name in self.structures:
            logs["val_dice_%s" % monitoring.tag_name(name)] = summary["dice_%s" % name]["mean"]
            logs["val_hd95_%s" % monitoring.tag_name(name)] = summary["hd95_%s" % name]["mean"]
        for key in ("mse", "njd", "sdlogj"):
            logs["val_%s" % key] = summary[key]["mean"]


def fit(model, splits, config, output_dir, verbose=None):
    """Train ``model`` for ``config.epochs`` epochs, resuming from ``output_dir/checkpoints`` if present.

    Returns:
        The Keras ``History`` (only the epochs run now).
    """
    train = batches(splits["train"], config.batch_size, shuffle=True, seed=config.seed,
                    drop_remainder=config.drop_last)
    val = batches(splits["val"], config.batch_size, shuffle=False) if len(splits["val"]) else None
    network = MODELS.load(config.model).monitoring_network(model.network)
    log_dir = os.path.join(output_dir, "tensorboard")
    callbacks = [
        # before TensorBoard: it adds to the logs TensorBoard writes
        ValidationMetrics(network, splits["val"], config.batch_size, config.metric_protocol),
        monitoring.RegistrationImages(network, splits["val"], os.path.join(log_dir, "images")),
        tf.keras.callbacks.TensorBoard(log_dir, update_freq=config.log_every_n_steps),
        tf.keras.callbacks.BackupAndRestore(os.path.join(output_dir, "checkpoints"), delete_checkpoint=False),
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


def describe_test_split(record):
    """How a streamed dataset's test split was made, from its record: e.g. "registration_test (4 pairs)" or
    "a seeded hold-out of 2 training subjects (1 pairs), because the JSON has no registration_test"."""
    test = record["test"]
    if test["source"] == "registration_test":
        return "registration_test (%d pairs)" % len(test["pairs"])
    held = ("%d training subjects" % len(test["subjects"])) if "subjects" in test else "training pairs"
    return ("a seeded hold-out of %s (%d pairs; fraction %g, seed %d), because %s"
            % (held, len(test["pairs"]), test["fraction"], test["seed"], test["reason"]))


def check_batches(config, splits):
    """Raise ConfigError when ``drop_last`` would leave no training batch (fewer pairs than ``batch_size``)."""
    pairs = pair_count(splits["train"])
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

    Everything that can be wrong with the settings or the data fails before the output dir is touched.
    ``export=False`` skips the SavedModel (studies that only need the scores).

    Returns:
        dict with ``history`` (Keras history dict of this call), ``results`` (see :func:`evaluate`),
        ``table`` (Markdown), ``export_dir`` (None without export) and the output paths.
    """
    config.validate()
    splits = load_data(config)
    check_batches(config, splits)
    prepare_output_dir(config)
    inshape = input_shape(splits["train"])
    model_entry = MODELS.load(config.model)
    # Seed before the weights are drawn: the same seed gives the same initial network (and, with fit's
    # seeding of shuffling and noise, the same run), so compared methods really start alike.
    tf.keras.utils.set_random_seed(config.seed)
    network = model_entry.build_network(config, inshape)
    model = model_entry.build_training_model(config, network)
    record = splits.get("record")
    if record is None:
        log("Training %s (surgery=%s) on %d/%d/%d train/val/test subjects (%d training pairs), output in %s"
            % (config.model, config.surgery, len(splits["train"]), len(splits["val"]), len(splits["test"]),
               pair_count(splits["train"]), config.output_dir))
    else:
        log("Training %s (surgery=%s) on %d training pairs per epoch (%s), %d validation pairs, %d test pairs "
            "(test split: %s), streamed from disk, output in %s"
            % (config.model, config.surgery, pair_count(splits["train"]), record["train"]["pairs_rule"],
               len(splits["val"]), len(splits["test"]), record["test"]["source"], config.output_dir))
    history = fit(model, splits, config, config.output_dir, verbose=verbose)

    network, chosen = model_entry.finalize(config, network, splits, log=log)
    log("Evaluating on %d test %s" % (len(splits["test"]), "subjects" if record is None else "pairs"))
    results = evaluate(network, splits["test"], config.batch_size, show_progress=verbose != 0,
                       protocol=config.metric_protocol)
    name = model_entry.method_name(config, chosen)
    caption = evaluation.protocol_caption(config.metric_protocol, results["Model"]["subjects"])
    summaries = {"Initial": results["Initial"]["summary"], name: results["Model"]["summary"]}
    structures = structure_names(splits["test"])
    table = (caption + "\n\n" + evaluation.format_table(summaries) + "\n\nPer structure:\n\n"
             + evaluation.structure_table(summaries, structures))
    if record is not None:
        table = "Test split: %s.\n\n%s" % (describe_test_split(record), table)
    evaluation.write_json(os.path.join(config.output_dir, "evaluation.json"),
                          {"config": config.to_dict(), "structures": structures, "data": record,
                           "method": model_entry.method_name(config), "chosen": chosen,
                           "metric_protocol": config.metric_protocol, "methods": results})
    atomic_write_text(os.path.join(config.output_dir, "evaluation.md"), table + "\n")
    monitoring.log_hparams(os.path.join(config.output_dir, "tensorboard"), config, results["Model"]["summary"])
    export_dir = None
    if export:
        export_dir = export_saved_model(network, os.path.join(config.output_dir, "export", config.model))
    return {"history": history.history, "results": results, "table": table, "export_dir": export_dir,
            "tensorboard_dir": os.path.join(config.output_dir, "tensorboard"),
            "evaluation_json": os.path.join(config.output_dir, "evaluation.json")}
