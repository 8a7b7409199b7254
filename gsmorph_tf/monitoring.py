"""TensorBoard views of registration: images of fixed validation pairs, flow histograms, HParams.

- :class:`RegistrationImages` (a Keras callback): at each epoch's end, for a fixed set of validation pairs,
  writes image summaries ``images/<kind>`` of the fixed, moving and moved images, ``|fixed - moved|``, the
  displacement as a colour image (hue = direction, brightness = magnitude) and the Jacobian-determinant map
  with folding (det <= 0) in red; plus a histogram ``flow_magnitude`` (voxels) of those pairs' fields.
- :func:`log_hparams`: the run's settings (surgery mode, lam, learning rate, model, ...) and its final test
  metrics in TensorBoard's HParams dashboard, so a lambda sweep and GSMorph compare side by side when
  ``tensorboard --logdir`` points at the folder holding the runs.

3D pairs are shown by their middle slice along the first axis.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import os
import re

import numpy as np
import tensorflow as tf
from matplotlib import colors
from tensorboard.plugins.hparams import api as hparams_api

from gsmorph_tf import metrics

#: Settings shown as HParams columns (those a comparison varies).
HPARAM_KEYS = ("model", "surgery", "lam", "grouping", "similarity", "reg_penalty", "learning_rate", "batch_size",
               "epochs", "int_steps", "unet_width", "dataset", "seed")


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
        moved, flow = self.network.predict({"moving": self.moving, "fixed": self.fixed}, verbose=0)[:2]
        panels = [registration_panels(m[..., 0], f[..., 0], d[..., 0], u)
                  for m, f, d, u in zip(self.moving, self.fixed, moved, flow)]
        with self.writer.as_default(step=epoch):
            for kind in panels[0]:
                tf.summary.image("images/%s" % kind, np.stack([p[kind] for p in panels]),
                                 max_outputs=len(panels))
            tf.summary.histogram("flow_magnitude", np.linalg.norm(flow, axis=-1).ravel())
        self.writer.flush()


def log_hparams(log_dir, config, summary):
    """Record the run's settings and final test metrics for TensorBoard's HParams dashboard.

    Args:
        log_dir: the run's TensorBoard folder (a subfolder ``hparams`` is written).
        config: the run's :class:`~gsmorph_tf.config.TrainConfig`.
        summary: test-split summary ``{metric: {"mean", "std"}}`` (see :func:`gsmorph_tf.evaluation.summarize`);
            logged as scalars ``test/dice``, ``test/hd95``, ``test/mse``, ``test/njd``, ``test/sdlogj`` and per
            structure ``test/dice_<structure>``, ``test/hd95_<structure>`` (names by :func:`tag_name`).
    """
    values = config.to_dict()
    hparams = {key: values[key] for key in HPARAM_KEYS}
    with tf.summary.create_file_writer(os.path.join(log_dir, "hparams")).as_default():
        hparams_api.hparams(hparams, trial_id=os.path.basename(os.path.normpath(config.output_dir)))
        for key, name in (("dice_mean", "dice"), ("hd95_mean", "hd95"), ("mse", "mse"), ("njd", "njd"),
                          ("epe_mm", "epe_mm")):
            if key in summary:
                tf.summary.scalar("test/%s" % name, summary[key]["mean"], step=0)
        if "sdlogj" in summary:
            tf.summary.scalar("test/sdlogj", summary["sdlogj"]["mean"], step=0)
        for key in summary:
            if key.startswith(("dice_", "hd95_")) and key not in ("dice_mean", "hd95_mean"):
                tf.summary.scalar("test/%s" % tag_name(key), summary[key]["mean"], step=0)
