"""Loading a training run back: its settings, its network with the trained weights, as it is served.

A run directory (``run_train.py --output_dir``) holds ``config.json``, ``checkpoints/`` and, once finished,
``evaluation.json``; :func:`load_run_for_inference` turns it into the ``[moving, fixed] -> [moved, flow]``
network that evaluation (``run_eval.py``), the paper comparison and export (``run_export.py``) use. The
network is rebuilt by the model's registry entry (:mod:`gsmorph_tf.registry`), as in training.
:func:`load_export_for_training` does the same from an exported SavedModel (its provenance records the run's
settings), for test-time instance optimisation (:mod:`gsmorph_tf.train.instance`).
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

import tensorflow as tf

from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.errors import SavedModelError
from gsmorph_tf.fileio import atomic_write_with
from gsmorph_tf.registry import DATASETS, MODELS
from gsmorph_tf.serve.provenance import read_provenance


def read_run_config(run_dir):
    """The :class:`~gsmorph_tf.config.TrainConfig` saved as ``<run_dir>/config.json`` by a training run.

    Raises:
        FileNotFoundError: no ``config.json`` in ``run_dir``.
        ConfigError: naming the file, if it is not JSON or holds settings ``TrainConfig`` does not know.
    """
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError("%s not found: --run_dir must be the output_dir of a run_train.py run" % path)
    try:
        with open(path, encoding="utf-8") as f:
            return TrainConfig.from_dict(json.load(f))
    except (ValueError, TypeError) as error:
        raise ConfigError("%s: not the config of a training run (%s)" % (path, error)) from error


def latest_run_checkpoint(run_dir):
    """Path prefix of the newest checkpoint under ``<run_dir>/checkpoints`` (Keras ``BackupAndRestore``
    writes them to its ``chief/`` subfolder after every epoch).

    Raises:
        FileNotFoundError: the run has no checkpoint (it did not complete an epoch).
    """
    folder = os.path.join(run_dir, "checkpoints")
    for candidate in (os.path.join(folder, "chief"), folder):
        if os.path.isdir(candidate):
            prefix = tf.train.latest_checkpoint(candidate)
            if prefix:
                return prefix
    raise FileNotFoundError("no checkpoint in %s: the run must complete at least one epoch before export" % folder)


def has_run_checkpoint(run_dir):
    """Whether the run in ``run_dir`` has a checkpoint on this machine (:func:`latest_run_checkpoint`): False for a
    run folder holding only records, e.g. a study run read back from its record folder after training
    elsewhere."""
    try:
        latest_run_checkpoint(run_dir)
    except FileNotFoundError:
        return False
    return True


def load_trained_network(run_dir):
    """Rebuild a training run's network and restore its trained weights from the run's last checkpoint.

    The network is built from ``<run_dir>/config.json`` by the model's registry entry, for the input shape
    its dataset gives (:meth:`~gsmorph_tf.plugins.DatasetPlugin.network_shape`). The checkpoint holds the whole
    training model (network, optimizer, loss trackers, epoch counters) under the key ``model``, the network
    under ``model/network``; a ``tf.train.Checkpoint`` of that same two-level structure restores the network's
    variables (trainable and BatchNorm statistics) and ignores the rest.

    Returns:
        ``(network, config)``.

    Raises:
        FileNotFoundError: ``config.json`` or the checkpoint is missing.
        ConfigError: naming the checkpoint, if it does not hold every variable of the configured network
            (another model, crop size or ``int_steps``).
    """
    config = read_run_config(run_dir)
    prefix = latest_run_checkpoint(run_dir)
    network = MODELS.load(config.model).build_network(config, DATASETS.load(config.dataset).network_shape(config))
    checkpoint = tf.train.Checkpoint(model=tf.train.Checkpoint(network=network))
    try:
        status = checkpoint.restore(prefix)
        status.expect_partial()  # optimizer slots, loss trackers and epoch counters are not needed
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise ConfigError("%s does not hold the weights of the %s network configured in %s (%s)"
                          % (prefix, config.model, os.path.join(run_dir, "config.json"), error)) from error
    return network, config


def serving_network(run_dir, network, config):
    """The ``[moving, fixed] -> [moved, flow]`` network to serve from a run's restored ``network``.

    Most networks are served as they are. A model that chooses settings after training (HyperMorph's
    lambda, chosen on the validation split) lists them in ``chosen_for_serving``; they are read from
    ``<run_dir>/evaluation.json`` (``chosen``), as the run's own export uses them.

    Raises:
        ConfigError: naming ``evaluation.json``, for a run without those choices (the run must finish:
            they are made after training).
    """
    model = MODELS.load(config.model)
    if not model.chosen_for_serving:
        return model.serving_network(network, {})
    path = os.path.join(run_dir, "evaluation.json")
    try:
        with open(path, encoding="utf-8") as f:
            chosen = json.load(f)["chosen"]
        for key in model.chosen_for_serving:
            float(chosen[key])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError("%s: no chosen %s (%s: %s); export the run after it has finished, when it has been "
                          "chosen on the validation split" % (path, ", ".join(model.chosen_for_serving.values()),
                                                              type(error).__name__, error)) from error
    return model.serving_network(network, chosen)


#: A trained network kept apart from its run (:func:`save_network_weights`): its variables as Keras HDF5.
NETWORK_WEIGHTS = "network.weights.h5"


def save_network_weights(folder, network, config):
    """Keep a trained ``network`` without its run (no checkpoints, no optimizer state): ``<folder>/config.json``
    (the run's settings) and ``<folder>/network.weights.h5`` (every variable of the network, Keras HDF5, about
    4 bytes per parameter), each written atomically; :func:`load_network_weights` builds it back."""
    os.makedirs(folder, exist_ok=True)
    config.save(os.path.join(folder, "config.json"))
    # The temp name keeps the ".weights.h5" ending: Keras picks the weights format from the file name (a bare ".h5"
    # writes the legacy layout, which load_weights of a ".weights.h5" file does not read).
    atomic_write_with(os.path.join(folder, NETWORK_WEIGHTS), network.save_weights, ".weights.h5")


def load_network_weights(folder):
    """``(config, network)`` from a folder :func:`save_network_weights` wrote: the network built from its
    ``config.json`` (as :func:`load_trained_network` builds it) with the saved weights, as it is served
    (models that choose settings after training are not kept this way).

    Raises:
        FileNotFoundError: ``config.json`` or ``network.weights.h5`` is missing, naming it.
        ConfigError: naming the weights file, if it does not fit the configured network.
    """
    config = read_run_config(folder)
    path = os.path.join(folder, NETWORK_WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError("%s not found: the folder holds no saved network weights" % path)
    network = MODELS.load(config.model).build_network(config, DATASETS.load(config.dataset).network_shape(config))
    try:
        network.load_weights(path)
    except (ValueError, OSError) as error:
        raise ConfigError("%s does not hold the weights of the %s network configured in %s (%s)"
                          % (path, config.model, os.path.join(folder, "config.json"), error)) from error
    return config, MODELS.load(config.model).serving_network(network, {})


def load_run_for_inference(run_dir):
    """``(config, network)``: a run's trained ``[moving, fixed] -> [moved, flow]`` network, as it is served
    (:func:`load_trained_network`, then :func:`serving_network`)."""
    network, config = load_trained_network(run_dir)
    return config, serving_network(run_dir, network, config)




def load_export_for_training(export_dir):
    """Rebuild the Keras network of an exported run (a SavedModel version folder written by
    :func:`gsmorph_tf.serve.export.export_saved_model`) with the export's weights, to train it further.

    The SavedModel's restored functions are not used: they are graph functions, not a Keras model, so a
    training step (:class:`~gsmorph_tf.core.model.GradientSurgeryModel`, which needs the network's layers, outputs
    and trainable variables as Keras has them) cannot wrap them. Instead the network is rebuilt by the model's
    registry entry from the run's settings recorded in ``assets/provenance.json`` (``training``), for the
    exported input size (``crop.size``), and its variables (trainable and BatchNorm statistics) are read from the
    SavedModel's ``variables/``: a list ``network_variables`` in the order of the network's ``variables``
    (exports since 2026-12-06), or the Keras model's own layout under ``network`` (earlier exports, which held the
    model itself).

    Returns:
        ``(network, config)``.

    Raises:
        SavedModelError: naming ``export_dir``: no provenance, or one without the run's settings (a network
            exported from memory, not from a run), a model whose served network is not its trained one
            (HyperMorph), or variables that do not fit the rebuilt network.
    """
    provenance = read_provenance(export_dir)
    if not provenance or not provenance.get("training"):
        raise SavedModelError("%s: its provenance records no training settings (a network exported from memory "
                              "or by an earlier version), so its network cannot be rebuilt for training; export "
                              "it from its run (run_export.py --run_dir=...)" % export_dir)
    try:
        config = TrainConfig.from_dict(provenance["training"])
        entry = MODELS.load(config.model)
    except (ValueError, TypeError, KeyError) as error:
        raise SavedModelError("%s: the training settings of its provenance are not this version's (%s)"
                              % (export_dir, error)) from error
    if entry.chosen_for_serving:
        raise SavedModelError("%s: a %s export holds its served network (%s frozen in), not the network its "
                              "training step trains" % (export_dir, config.model,
                                                        ", ".join(entry.chosen_for_serving.values())))
    network = entry.build_network(config, tuple(provenance["crop"]["size"]))
    path = os.path.join(export_dir, "variables", "variables")
    try:
        stored = [name for name, _ in tf.train.list_variables(path) if name.startswith("network_variables/")]
        if stored:
            if len(stored) != len(network.variables):
                raise ValueError("%d stored variables for the %d of the rebuilt network"
                                 % (len(stored), len(network.variables)))
            checkpoint = tf.train.Checkpoint(network_variables=list(network.variables))
        else:
            checkpoint = tf.train.Checkpoint(network=network)
        checkpoint.read(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise SavedModelError("%s: its variables do not fit the %s network its provenance describes (%s)"
                              % (export_dir, config.model, error)) from error
    return network, config
