"""Similarity and smoothness losses, built on voxelmorph's (``vxm.losses.MSE``, ``NCC``, ``Grad``).

Each factory returns a function giving a scalar (mean over the batch), the form ``train_step`` needs.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import tensorflow as tf
import voxelmorph as vxm

SIMILARITIES = ("mse", "ncc")
REG_PENALTIES = ("l1", "l2")


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
