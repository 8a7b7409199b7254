"""ULAE-net's multi-window similarity loss, built on voxelmorph's local NCC (``vxm.losses.NCC``).

voxelmorph's NCC is the reference code's squared local correlation except that it clamps the local
covariance at ``eps`` before squaring, so anti-correlated windows score 0 rather than a positive value.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import tensorflow as tf
import voxelmorph as vxm

#: The paper's NCC window sides (voxels), largest first, and the weight decay between them.
PAPER_WINDOWS = (11, 9, 7)
PAPER_GAMMA = 0.5


def multi_window_ncc(windows=PAPER_WINDOWS, gamma=PAPER_GAMMA):
    """The multi-window loss ``L_sim = - sum_i gamma^(i-1) NCC_{w_i}`` (Shu et al., MICCAI 2021).

    Args:
        windows: NCC window sides in voxels (cubic windows), weighted 1, gamma, gamma^2, ... in this order.
        gamma: weight ratio between consecutive windows, > 0.

    Returns:
        ``f(fixed, moved) -> scalar``: images ``[B, *vol, 1]``; the weighted sum of voxelmorph's negative
        local NCCs (each the mean over voxels of squared local correlation, in [-1, 0]), averaged over the
        batch. Lower is better; usable as ``GradientSurgeryModel(similarity=...)``.
    """
    windows = tuple(int(w) for w in windows)
    if not windows or min(windows) < 1:
        raise ValueError("windows must be one or more positive window sides, got %r" % (windows,))
    if gamma <= 0:
        raise ValueError("gamma must be > 0, got %r" % (gamma,))
    weights = [gamma ** i for i in range(len(windows))]

    def loss(fixed, moved):
        fixed, moved = tf.convert_to_tensor(fixed), tf.convert_to_tensor(moved)  # vxm's NCC needs tensors
        # A fresh NCC per call: vxm's NCC replaces its window by a list sized for the first image
        # dimensionality it sees, so one instance cannot serve both 2D and 3D images.
        per_item = [w * vxm.losses.NCC(win).loss(fixed, moved) for w, win in zip(weights, windows)]
        return tf.reduce_mean(tf.add_n(per_item))

    return loss


def multi_ncc_from_config(config):
    """The ``multi_ncc`` entry of :data:`gsmorph_tf.registry.SIMILARITIES`: :func:`multi_window_ncc` with the
    config's ``ncc_windows`` and ``ncc_gamma``."""
    return multi_window_ncc(windows=tuple(config.ncc_windows), gamma=config.ncc_gamma)
