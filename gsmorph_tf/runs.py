"""Loading a training run back: its settings, its network with the trained weights, as it is served.

A run directory (``run_train.py --output_dir``) holds ``config.json``, ``checkpoints/`` and, once finished,
``evaluation.json``; :func:`load_run_for_inference` turns it into the ``[moving, fixed] -> [moved, flow]``
network that evaluation (``run_eval.py``), the paper comparison and export (``run_export.py``) use. The
network is rebuilt by the model's registry entry (:mod:`gsmorph_tf.registry`), as in training.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

import tensorflow as tf

from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.registry import DATASETS, MODELS


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


def load_run_for_inference(run_dir):
    """``(config, network)``: a run's trained ``[moving, fixed] -> [moved, flow]`` network, as it is served
    (:func:`load_trained_network`, then :func:`serving_network`)."""
    network, config = load_trained_network(run_dir)
    return config, serving_network(run_dir, network, config)


