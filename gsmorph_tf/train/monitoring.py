"""TensorBoard views of registration: images of fixed validation pairs, flow histograms, HParams.

- :class:`RegistrationImages` (a Keras callback): at each epoch's end, for a fixed set of validation pairs,
  writes image summaries ``images/<kind>`` of the fixed, moving and moved images, ``|fixed - moved|``, the
  displacement as a colour image (hue = direction, brightness = magnitude) and the Jacobian-determinant map
  with folding (det <= 0) in red; plus a histogram ``flow_magnitude`` (voxels) of those pairs' fields.
- :func:`log_hparams`: the run's settings (surgery mode, lam, learning rate, model, ...) and its final test
  metrics in TensorBoard's HParams dashboard, so a lambda sweep and GSMorph compare side by side when
  ``tensorboard --logdir`` points at the folder holding the runs; with the dashboard's declared
  configuration (:func:`hparams_domains`, the same in every run, and the test metrics; TensorBoard uses the
  first declaration it finds under ``--logdir``, which describes every run of one dataset).

3D pairs are shown by their middle slice along the first axis.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import os
import re

import numpy as np
import tensorflow as tf
from matplotlib import colors
from tensorboard.plugins.hparams import api as hparams_api

from gsmorph_tf.config import GROUPINGS, METRIC_PROTOCOLS, NCC_FORMULAS, REG_PENALTIES, SURGERY_MODES
from gsmorph_tf.evaluate import evaluation, metrics
from gsmorph_tf.registry import DATASETS, MODELS, SIMILARITIES

#: Settings shown as HParams columns (those a comparison varies).
HPARAM_KEYS = ("model", "surgery", "lam", "grouping", "similarity", "ncc", "reg_penalty", "learning_rate",
               "batch_size", "epochs", "int_steps", "unet_width", "dataset", "seed", "metric_protocol")

#: Test metrics logged as HParams metrics: ``summary`` key -> (tag, what the column shows).
TEST_METRICS = (("dice_mean", "test/dice", "Dice % (mean over structures)"), ("hd95_mean", "test/hd95", "HD95 mm"),
                ("mse", "test/mse", "MSE of [0, 1] intensities"), ("njd", "test/njd", "% folding voxels"),
                ("sdlogj", "test/sdlogj", "std of log Jacobian determinant"),
                ("epe_mm", "test/epe_mm", "end-point error mm (known deformation)"))


def tag_name(name):
    """A structure name as it appears in TensorBoard tags and Keras log keys: characters other than letters,
    digits, ``_``, ``-`` and ``.`` become ``_`` (e.g. ``"Left Cerebral WM"`` -> ``"Left_Cerebral_WM"``)."""
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name))


def flow_to_rgb(flow, max_magnitude=None):
    """``[H, W, 2]`` displacement (voxels) -> ``[H, W, 3]`` RGB in [0, 1]: hue = direction, value = magnitude
    relative to ``max_magnitude`` (default: the largest in the image; 0 displacement is black)."""
    magnitude = np.linalg.norm(flow, axis=-1)
    scale = max_magnitude or magnitude.max() or 1.0
    hue = (np.arctan2(flow[..., 0], flow[..., 1]) / (2 * np.pi)) % 1.0
    hsv = np.stack([hue, np.ones_like(hue), np.clip(magnitude / scale, 0, 1)], axis=-1)
    return colors.hsv_to_rgb(hsv).astype(np.float32)


def jacobian_to_rgb(det):
    """``[H, W]`` Jacobian determinant -> RGB: grey level det / 2 (1 = volume kept is mid-grey, 0 black,
    >= 2 white), folding (det <= 0) painted pure red."""
    grey = np.clip(det / 2.0, 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[det <= 0] = (1.0, 0.0, 0.0)
    return rgb.astype(np.float32)


def registration_panels(moving, fixed, moved, flow):
    """The image summaries of one pair, as ``{kind: [H, W, C] float32 in [0, 1]}``.

    Args: 2D ``[H, W]`` images and ``flow [H, W, 2]``, or 3D ``[D, H, W]`` and ``[D, H, W, 3]`` (shown at the
    middle slice; the Jacobian is computed in 3D, the colour flow from the in-plane components).
    """
    det = metrics.jacobian_determinant(flow)
    if flow.shape[-1] == 3:
        mid = flow.shape[0] // 2
        moving, fixed, moved, det = moving[mid], fixed[mid], moved[mid], det[mid]
        flow = flow[mid][..., 1:]
    gray = lambda image: np.clip(image, 0, 1)[..., None].astype(np.float32)  # noqa: E731
    return {"fixed": gray(fixed), "moving": gray(moving), "moved": gray(moved),
            "difference": gray(np.abs(fixed - moved)), "flow": flow_to_rgb(flow), "jacobian": jacobian_to_rgb(det)}


class RegistrationImages(tf.keras.callbacks.Callback):
    """Writes :func:`registration_panels` of fixed validation pairs and a flow-magnitude histogram to
    ``log_dir`` at the end of every epoch.

    Args:
        network: ``[moving, fixed] -> [moved, flow]`` model (sharing the weights being trained).
        subjects: validation :class:`~gsmorph_tf.data.subjects.SubjectPairs`; the middle item of each of the
            first ``max_pairs`` subjects is shown, always the same pairs.
        log_dir: folder for the event files (e.g. ``<run>/tensorboard/images``).
    """

    def __init__(self, network, subjects, log_dir, max_pairs=3):
        super().__init__()
        self.network = network
        chosen = [(p.moving[len(p.moving) // 2], p.fixed[len(p.fixed) // 2]) for p in subjects[:max_pairs]]
        self.moving = np.stack([m for m, _ in chosen])[..., None] if chosen else None
        self.fixed = np.stack([f for _, f in chosen])[..., None] if chosen else None
        self.writer = tf.summary.create_file_writer(log_dir) if chosen else None

    def on_epoch_end(self, epoch, logs=None):
        if self.writer is None:
            return
        moved, flow = evaluation.predict_pairs(self.network, self.moving[..., 0], self.fixed[..., 0])
        panels = [registration_panels(m[..., 0], f[..., 0], d, u)
                  for m, f, d, u in zip(self.moving, self.fixed, moved, flow)]
        with self.writer.as_default(step=epoch):
            for kind in panels[0]:
                tf.summary.image("images/%s" % kind, np.stack([p[kind] for p in panels]),
                                 max_outputs=len(panels))
            tf.summary.histogram("flow_magnitude", np.linalg.norm(flow, axis=-1).ravel())
        self.writer.flush()


def hparams_domains():
    """The :data:`HPARAM_KEYS` as ``hparams_api.HParam`` objects with the values each can take.

    Choices (the flags' enums and the registries' names) are ``Discrete`` domains. The numbers are bounded
    below only (``lam >= 0``, ``learning_rate > 0``, ``batch_size``, ``epochs >= 1``, ``int_steps >= 0``),
    and an interval needs both ends, the dashboard's filter starting at them: they are declared without a
    domain (the dashboard lists their values as logged).
    """
    choices = {"model": MODELS.names(), "surgery": SURGERY_MODES, "grouping": GROUPINGS,
               "similarity": SIMILARITIES.names(), "ncc": NCC_FORMULAS, "reg_penalty": REG_PENALTIES,
               "dataset": DATASETS.names(), "metric_protocol": METRIC_PROTOCOLS}
    return [hparams_api.HParam(key, hparams_api.Discrete(list(choices[key])) if key in choices else None)
            for key in HPARAM_KEYS]


def _test_scalars(summary):
    """``{tag: (value, description)}`` of the test metrics in ``summary`` (see :func:`log_hparams`)."""
    scalars = {tag: (summary[key]["mean"], text) for key, tag, text in TEST_METRICS if key in summary}
    for key in summary:
        for prefix, what in (("dice_", "Dice %"), ("hd95_", "HD95 mm")):
            if key.startswith(prefix) and key != prefix + "mean":
                scalars["test/%s" % tag_name(key)] = (summary[key]["mean"], "%s of %s" % (what, key[len(prefix):]))
    return scalars


def log_hparams(log_dir, config, summary):
    """Record the run's settings and final test metrics for TensorBoard's HParams dashboard.

    Writes the dashboard's configuration (``hparams_config``: :func:`hparams_domains` and the test metrics
    below), the run's values of :data:`HPARAM_KEYS` and the metrics. Called once per run, when it is
    evaluated, by the process that writes the run's files (a re-run of a finished run writes them again).

    Args:
        log_dir: the run's TensorBoard folder (a subfolder ``hparams`` is written).
        config: the run's :class:`~gsmorph_tf.config.TrainConfig`.
        summary: test-split summary ``{metric: {"mean", "std"}}`` (see
            :func:`gsmorph_tf.evaluate.evaluation.summarize`); logged as scalars ``test/dice``, ``test/hd95``,
            ``test/mse``, ``test/njd``, ``test/sdlogj`` and per structure ``test/dice_<structure>``,
            ``test/hd95_<structure>`` (names by :func:`tag_name`).
    """
    values = config.to_dict()
    scalars = _test_scalars(summary)
    with tf.summary.create_file_writer(os.path.join(log_dir, "hparams")).as_default():
        hparams_api.hparams_config(hparams=hparams_domains(), metrics=[
            hparams_api.Metric(tag, display_name=tag, description=text) for tag, (_, text) in scalars.items()])
        hparams_api.hparams({key: values[key] for key in HPARAM_KEYS},
                            trial_id=os.path.basename(os.path.normpath(config.output_dir)))
        for tag, (value, _) in scalars.items():
            tf.summary.scalar(tag, value, step=0)
