"""One training run, step by step: config -> dataset -> model -> fit -> evaluate -> export.

Each step is a function of a :class:`~gsmorph_tf.config.TrainConfig` (or plain arguments) so it can be
called on its own from a test; :func:`train_and_evaluate` chains them. The dataset and the model are looked
up by name in :mod:`gsmorph_tf.registry`; nothing here knows which ones exist. A run's output directory
holds::

    run.lock               held by the run using the directory (a second run on it is refused; see
                           :mod:`gsmorph_tf.train.rundir`)
    config.json            the settings (a re-run must match them to resume)
    tensorboard/           event files: per-step losses and conflict statistics, per-epoch validation metrics,
                           images/ (registration panels, flow histogram), hparams/ (settings + test metrics)
    checkpoints/           model + optimizer + epoch after every epoch (Keras BackupAndRestore): re-running
                           the same command after an interruption resumes from the last completed epoch
    evaluation.json/.md    test-split metrics per subject and mean +- std, with the Initial (identity) row
    export/<model>_<dataset>/<N>/  SavedModel for TF Serving (serving_default: raw moving, fixed -> moved, flow
                           on the input grid; register_crop; warp), with assets/provenance.json and the warm-up
    export.json            which version holds this run's export (a re-run never exports a second one)

Several devices or machines (``config.strategy``, :mod:`gsmorph_tf.train.distribute`): the strategy is created
first, before any tensor exists, and the network and its training model are built in its scope. In a
multi-worker run every worker runs every step, writing included (saving and evaluating need all of them), but
only the chief's files land in the output directory: the others write into temporary directories that are
deleted (:func:`gsmorph_tf.train.distribute.chief_write_dir`; Keras' ``BackupAndRestore`` and ``TensorBoard`` do
the same for their files).
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import sys

import numpy as np
import tensorflow as tf

from gsmorph_tf.data.pipeline import make_dataset
from gsmorph_tf.data.subjects import reporting_order
from gsmorph_tf.errors import ConfigError
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.fileio import atomic_write_text
from gsmorph_tf.plugins import StreamedSplit
from gsmorph_tf.registry import DATASETS, MODELS
from gsmorph_tf.serve.export import export_saved_model, run_provenance
from gsmorph_tf.serve.provenance import default_model_name
from gsmorph_tf.train import distribute, monitoring, rundir


def create_strategy(config):
    """The ``tf.distribute`` strategy of ``config.strategy`` (and ``cpu_replicas``). Call it before anything
    else touches TensorFlow's devices: logical CPU replicas and a multi-worker cluster need them untouched.

    Raises:
        ConfigError: naming the setting: ``multi_worker`` without a valid ``TF_CONFIG``, or ``cpu_replicas``
            after TensorFlow initialised its devices.
    """
    try:
        return distribute.create_strategy(config.strategy, config.cpu_replicas)
    except (ValueError, RuntimeError) as error:
        raise ConfigError("strategy=%s: %s" % (config.strategy, error)) from None


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


def batches(split, batch_size, shuffle, seed=0, drop_remainder=False, first_epoch=0):
    """A split as ``tf.data`` batches of ``{"moving", "fixed"}``: streamed from disk for a
    :class:`~gsmorph_tf.plugins.StreamedSplit` (always in a seeded order per epoch, the first pass epoch
    ``first_epoch``'s: a resumed run continues the sequence), else from memory
    (:func:`~gsmorph_tf.data.pipeline.make_dataset`; ``first_epoch`` unused: a resumed run reshuffles from the
    seed's first order)."""
    if isinstance(split, StreamedSplit):
        return split.batches(batch_size, seed=seed, drop_remainder=drop_remainder, first_epoch=first_epoch)
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
    Structure names become tags by :func:`gsmorph_tf.train.monitoring.tag_name`. A split read from disk is read one
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


def plateau_state(curve, min_delta=0.0):
    """Where a validation-Dice ``curve`` (one value per epoch, %) leaves the early-stopping rule: ``(best, wait)``,
    the best value so far and the epochs since it, as :class:`ValidationPlateau` counts them (an epoch improves
    when it exceeds the best so far by more than ``min_delta`` points; the first epoch always does; NaN never).
    ``(-inf, 0)`` for an empty curve."""
    best, wait = -np.inf, 0
    for value in curve:
        wait += 1
        if value - min_delta > best:
            best, wait = value, 0
    return best, wait


class ValidationPlateau(tf.keras.callbacks.EarlyStopping):
    """Keras ``EarlyStopping`` on validation Dice (``val_dice``, %, added to the logs by
    :class:`ValidationMetrics`, which must run before it): training stops once ``patience`` epochs in a row have
    not improved on the best by more than ``min_delta`` points. The last weights are kept (not the best epoch's):
    a run's scored network is the one it ended with.

    A resumed run continues the count where it stood: ``previous`` is the validation Dice of the epochs already
    completed (:func:`plateau_state`), which ``BackupAndRestore`` does not save."""

    def __init__(self, patience, min_delta=0.0, previous=()):
        super().__init__(monitor="val_dice", mode="max", patience=patience, min_delta=min_delta, verbose=1)
        self.previous = list(previous)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.previous:
            self.best, self.wait = plateau_state(self.previous, self.min_delta)


def drop_remainder(config, pairs, replicas=1):
    """Whether the training pipeline drops each epoch's last partial batch: ``config.drop_last``, or when
    that batch (``pairs % batch_size`` examples) is smaller than the number of ``replicas``, so that one
    replica would get no example (and BatchNorm the statistics of an empty batch)."""
    return config.drop_last or 0 < pairs % config.batch_size < replicas


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


def plateaued(config, curve):
    """Whether a run with ``config``'s early-stopping settings stops after the validation-Dice ``curve`` of its
    completed epochs: ``early_stopping_patience`` > 0 epochs have passed without improving (:func:`plateau_state`)."""
    patience = config.early_stopping_patience
    return bool(patience) and plateau_state(curve, config.early_stopping_min_delta)[1] >= patience


def completed_curve(output_dir, done=None):
    """The validation Dice (%) of the run's completed epochs (``done``, default :func:`completed_epochs`), read
    back from its TensorBoard events: an epoch cut off before its checkpoint is not counted."""
    return rundir.epoch_curve(output_dir)[:completed_epochs(output_dir) if done is None else done]


def stopped_early(config, output_dir):
    """Whether the run in ``output_dir`` has already stopped on its validation plateau (:func:`plateaued` on its
    :func:`completed_curve`). Such a run is not trained further when it is resumed (unless the stopping settings
    change)."""
    return bool(config.early_stopping_patience) and plateaued(config, completed_curve(output_dir))


def fit(model, splits, config, output_dir, verbose=None, write_dir=None):
    """Train ``model`` for ``config.epochs`` epochs, resuming from ``output_dir/checkpoints`` if present, or
    fewer with ``config.early_stopping_patience`` (:class:`ValidationPlateau`).

    The model's strategy (``model.distribute_strategy``, the one it was built under) splits each batch of
    ``config.batch_size`` over its replicas; under a multi-worker strategy the datasets are sharded by
    element (``AutoShardPolicy.DATA``: each worker reads the whole in-memory data and keeps its share).

    Args:
        write_dir: where this process writes its TensorBoard events (``<write_dir>/tensorboard``); default
            ``output_dir``. The other workers of a multi-worker run pass a temporary directory
            (:func:`gsmorph_tf.train.distribute.chief_write_dir`).

    Returns:
        The Keras ``History`` (only the epochs run now; empty when the run had already stopped on its plateau).
    """
    done = completed_epochs(output_dir)   # where BackupAndRestore resumes
    previous = completed_curve(output_dir, done) if config.early_stopping_patience else []
    if plateaued(config, previous):  # finished earlier on its plateau: nothing left to train
        return tf.keras.callbacks.History()
    replicas = model.distribute_strategy.num_replicas_in_sync
    train = batches(splits["train"], config.batch_size, shuffle=True, seed=config.seed,
                    drop_remainder=drop_remainder(config, pair_count(splits["train"]), replicas),
                    first_epoch=done)
    val = batches(splits["val"], config.batch_size, shuffle=False) if len(splits["val"]) else None
    if config.strategy == "multi_worker":
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train = train.with_options(options)
        val = val.with_options(options) if val is not None else None
    network = MODELS.load(config.model).monitoring_network(model.network)
    log_dir = os.path.join(output_dir if write_dir is None else write_dir, "tensorboard")
    callbacks = [
        # before TensorBoard: it adds to the logs TensorBoard writes
        ValidationMetrics(network, splits["val"], config.batch_size, config.metric_protocol),
        monitoring.RegistrationImages(network, splits["val"], os.path.join(log_dir, "images")),
        tf.keras.callbacks.TensorBoard(log_dir, update_freq=config.log_every_n_steps,
                                       profile_batch=config.profile_batch or 0),
        tf.keras.callbacks.BackupAndRestore(checkpoint_dir(output_dir), delete_checkpoint=False),
    ]
    if config.early_stopping_patience:
        callbacks.insert(1, ValidationPlateau(config.early_stopping_patience, config.early_stopping_min_delta,
                                              previous=previous))
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2  # a progress bar on a terminal, a line per epoch in logs
    tf.keras.utils.set_random_seed(config.seed)
    return model.fit(train, validation_data=val, epochs=config.epochs, callbacks=callbacks, verbose=verbose)


def evaluate(network, subjects, batch_size=32, show_progress=True, protocol="volume"):
    """Evaluate the identity and ``network`` on ``subjects`` by the metric ``protocol``.

    Returns:
        ``{"Initial": {"subjects": rows, "summary": ...}, "Model": {...}}`` (see :mod:`gsmorph_tf.evaluate.evaluation`;
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


def check_batches(config, splits, replicas=1):
    """Raise ConfigError when ``drop_last`` would leave no training batch (fewer pairs than ``batch_size``),
    when ``batch_size`` is not a multiple of the strategy's ``replicas`` (each replica gets an equal share), or
    when there are fewer training pairs than replicas."""
    pairs = pair_count(splits["train"])
    if config.drop_last and pairs < config.batch_size:
        raise ConfigError("batch_size=%d is larger than the %d training pairs, and drop_last drops the partial "
                          "batch: lower batch_size or set drop_last=False" % (config.batch_size, pairs))
    if config.batch_size % replicas:
        raise ConfigError("batch_size=%d is the global batch, split evenly over the %d replicas of strategy=%s: "
                          "use a multiple of %d" % (config.batch_size, replicas, config.strategy, replicas))
    if pairs < replicas:
        raise ConfigError("the %d training pairs cannot give each of the %d replicas of strategy=%s an example"
                          % (pairs, replicas, config.strategy))
    if config.early_stopping_patience and not len(splits["val"]):
        raise ConfigError("early_stopping_patience=%d stops on validation Dice, but the validation split is empty: "
                          "set early_stopping_patience=0 or give the dataset validation subjects"
                          % config.early_stopping_patience)


def check_mixed_precision(config, splits):
    """Raise ConfigError when ``mixed_precision`` would train a 3D network on a machine where TensorFlow sees no GPU:
    its CPU kernels have no float16 3D max pooling (``MaxPool3D``), which both 3D networks use, so the run would
    fail at its first step. 2D networks train in mixed precision on a CPU too (slowly)."""
    shape = input_shape(splits["train"])
    if config.mixed_precision and len(shape) == 3 and not tf.config.list_physical_devices("GPU"):
        raise ConfigError("mixed_precision needs a GPU for 3D images (%s): TensorFlow's CPU kernels have no float16 "
                          "MaxPool3D, and TensorFlow sees no GPU here; train in float32 (mixed_precision=False)"
                          % "x".join(str(s) for s in shape))


def prepare_output_dir(config, write_dir=None):
    """Check that the run already in the output dir, if any, has the same settings; save config.json into
    ``write_dir`` (default: the output dir, created if needed; see :func:`train_and_evaluate` for the other
    workers of a multi-worker run)."""
    path = os.path.join(config.output_dir, "config.json")
    if os.path.exists(path):
        config.check_resumable(path)
    write_dir = config.output_dir if write_dir is None else write_dir
    os.makedirs(write_dir, exist_ok=True)
    config.save(os.path.join(write_dir, "config.json"))


def train_and_evaluate(config, verbose=None, log=print, export=True):
    """The whole run: validate settings and data, train (or resume), evaluate the test split, export.

    Everything that can be wrong with the settings or the data fails before the output dir is touched,
    and so does a run directory that another live run holds (:mod:`gsmorph_tf.train.rundir`): this run holds its
    lock from then on. Re-run after an interruption (``SIGKILL`` included), it resumes after the last
    completed epoch, and exports the SavedModel only if no earlier run exported this trained state.
    ``export=False`` skips the SavedModel (studies that only need the scores).

    Under ``strategy=multi_worker`` every worker calls this with the same config; only the chief writes into
    ``config.output_dir`` (the others' ``config.json``, TensorBoard events, evaluation and export go to a
    temporary directory that is deleted when the run ends).

    Raises:
        ConfigError: invalid settings, settings that differ from the run already in the output dir, or an
            output dir in use by another run (naming it and the holder's pid and host).
        DatasetError: unreadable or inconsistent data.

    Returns:
        dict with ``history`` (Keras history dict of this call), ``results`` (see :func:`evaluate`),
        ``table`` (Markdown), ``export_dir`` (None without export, and on the other workers of a multi-worker
        run), the output paths (in ``config.output_dir``,
        where the chief writes them), ``replicas`` (the strategy's replica count) and ``chief`` (whether this
        process wrote them).
    """
    config.validate()
    strategy = create_strategy(config)  # first: before anything initialises TensorFlow's devices
    chief = distribute.is_chief(strategy)
    if chief:  # the other workers of a multi-worker run write elsewhere (and the chief holds this lock)
        rundir.check_not_in_use(config.output_dir)  # a busy run directory is refused before the data is read
    splits = load_data(config)
    check_batches(config, splits, strategy.num_replicas_in_sync)
    check_mixed_precision(config, splits)
    with distribute.chief_write_dir(config.output_dir, strategy) as write_dir, rundir.locked(write_dir):
        prepare_output_dir(config, write_dir)
        outcome = _train_and_evaluate(config, strategy, splits, write_dir, verbose, log, export)
    outcome.update(replicas=strategy.num_replicas_in_sync, chief=chief,
                   tensorboard_dir=os.path.join(config.output_dir, "tensorboard"),
                   evaluation_json=os.path.join(config.output_dir, "evaluation.json"))
    return outcome


def _train_and_evaluate(config, strategy, splits, write_dir, verbose, log, export):
    """:func:`train_and_evaluate` after the checks, writing into ``write_dir`` and holding its lock."""
    inshape = input_shape(splits["train"])
    model_entry = MODELS.load(config.model)
    # Seed before the weights are drawn: the same seed gives the same initial network (and, with fit's
    # seeding of shuffling and noise, the same run), so compared methods really start alike.
    tf.keras.utils.set_random_seed(config.seed)
    with strategy.scope():  # variables mirrored on every replica
        network = model_entry.build_network(config, inshape)
        if config.sync_batchnorm:
            network = distribute.synchronize_batch_norm(network)
        model = model_entry.build_training_model(config, network)
    devices = "" if config.strategy == "default" else " on %d replicas (%s)" % (
        strategy.num_replicas_in_sync, config.strategy)
    record = splits.get("record")
    if record is None:
        log("Training %s (surgery=%s)%s on %d/%d/%d train/val/test subjects (%d training pairs), output in %s"
            % (config.model, config.surgery, devices, len(splits["train"]), len(splits["val"]),
               len(splits["test"]), pair_count(splits["train"]), config.output_dir))
    else:
        log("Training %s (surgery=%s)%s on %d training pairs per epoch (%s), %d validation pairs, %d test pairs "
            "(test split: %s), streamed from disk, output in %s"
            % (config.model, config.surgery, devices, pair_count(splits["train"]), record["train"]["pairs_rule"],
               len(splits["val"]), len(splits["test"]), record["test"]["source"], config.output_dir))
    done = completed_epochs(config.output_dir)
    if done:
        log("Resuming %s: %d of %d epochs completed%s" % (
            config.output_dir, done, config.epochs, ", training epochs %d-%d" % (done + 1, config.epochs)
            if done < config.epochs else ", nothing left to train"))
    if done and stopped_early(config, config.output_dir):
        log("%s stopped after epoch %d on its validation plateau (%d epochs without a gain above %g Dice points): "
            "nothing left to train" % (config.output_dir, done, config.early_stopping_patience,
                                       config.early_stopping_min_delta))
    history = fit(model, splits, config, config.output_dir, verbose=verbose, write_dir=write_dir)

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
    evaluation_record = {"config": config.to_dict(), "structures": structures, "data": record,
                         "method": model_entry.method_name(config), "chosen": chosen,
                         "metric_protocol": config.metric_protocol, "methods": results,
                         "crop": None if record is not None else evaluation.crop_report(splits["test"],
                                                                                         config.crop_center)}
    evaluation.write_json(os.path.join(write_dir, "evaluation.json"), evaluation_record)
    atomic_write_text(os.path.join(write_dir, "evaluation.md"), table + "\n")
    monitoring.log_hparams(os.path.join(write_dir, "tensorboard"), config, results["Model"]["summary"])
    export_dir = None
    if export:
        model_name = default_model_name(config)
        provenance = run_provenance(config, list(inshape), model_name,
                                    json.loads(evaluation.to_json(evaluation_record)))
        base_dir = os.path.join(config.output_dir, "export", model_name)
        if write_dir == config.output_dir:
            export_dir = rundir.export_once(
                config.output_dir, base_dir, config.epochs,
                lambda version: export_saved_model(network, base_dir, version, provenance=provenance))
        elif rundir.previous_export(config.output_dir, base_dir, config.epochs) is None:
            # Another worker of a multi-worker run saves exactly when the chief does (saving reads BatchNorm's
            # on-read statistics, a collective every worker joins), into its temporary folder.
            export_saved_model(network, os.path.join(write_dir, "export", model_name), 1, provenance=provenance)
    return {"history": history.history, "results": results, "table": table, "export_dir": export_dir}
