"""Similarity and smoothness losses, built on voxelmorph's (``vxm.losses.MSE``, ``NCC``, ``Grad``).

Each factory returns a function giving a scalar (mean over the batch), the form ``train_step`` needs.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf.config import REG_PENALTIES  # noqa: F401  (re-exported)

#: The similarities built here (the registry also names ULAE's multi-window NCC, built in ulae_tf.losses).
SIMILARITIES = ("mse", "ncc")


def similarity_loss(name, ncc_window=9):
    """Image dissimilarity ``f(fixed, moved) -> scalar`` (lower is better).

    Args:
        name: ``mse`` (mean squared intensity difference, the GSMorph paper) or ``ncc`` (negative local
            normalised cross-correlation over a cubic window).
        ncc_window: NCC window side in voxels.
    """
    if name == "mse":
        mse = vxm.losses.MSE()
        return lambda fixed, moved: tf.reduce_mean(mse.loss(fixed, moved))
    if name == "ncc":
        ncc = vxm.losses.NCC(win=ncc_window)
        return lambda fixed, moved: tf.reduce_mean(ncc.loss(fixed, moved))
    raise ValueError("unknown similarity %r; valid: %s" % (name, ", ".join(SIMILARITIES)))


def smoothness_loss(penalty):
    """Spatial-gradient regulariser ``f(flow) -> scalar``: the mean ``|du/dx|`` (``l1``) or ``(du/dx)^2``
    (``l2``) of the displacement field over all axes, with forward differences (voxelmorph ``Grad``)."""
    if penalty not in REG_PENALTIES:
        raise ValueError("unknown regularisation penalty %r; valid: %s" % (penalty, ", ".join(REG_PENALTIES)))
    grad = vxm.losses.Grad(penalty)
    return lambda flow: tf.reduce_mean(grad.loss(None, flow))


def mse_from_config(config):
    """The ``mse`` registry entry: :func:`similarity_loss` ``("mse")`` (the config has no MSE setting)."""
    del config
    return similarity_loss("mse")


def ncc_from_config(config):
    """The ``ncc`` registry entry: :func:`similarity_loss` ``("ncc", config.ncc_window)``."""
    return similarity_loss("ncc", config.ncc_window)
