"""Similarity and smoothness losses: the smoothness penalties by hand, against the GSMorph reference's
``Grad()`` formula."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from gsmorph_tf.core.losses import smoothness_loss


def reference_grad(flow, penalty):
    """The reference's Grad(penalty) on a [B, H, W, 2] field: the mean |forward difference| (or its square)
    along each spatial axis, over all elements, averaged over the two axes."""
    dy = flow[:, 1:, :, :] - flow[:, :-1, :, :]
    dx = flow[:, :, 1:, :] - flow[:, :, :-1, :]
    if penalty == "l2":
        dy, dx = dy * dy, dx * dx
    return (np.abs(dy).mean() + np.abs(dx).mean()) / 2


def test_l1_smoothness_by_hand():
    flow = np.zeros((1, 6, 5, 2), np.float32)
    flow[..., 0] = 0.5 * np.arange(6)[:, None]   # u_row grows 0.5 per row; nothing else moves
    # along rows: |0.5| for channel 0, 0 for channel 1 -> 0.25; along columns: 0 -> (0.25 + 0) / 2
    assert float(smoothness_loss("l1")(tf.constant(flow))) == pytest.approx(0.125)
    assert float(smoothness_loss("l2")(tf.constant(flow))) == pytest.approx(0.0625)


@pytest.mark.parametrize("penalty", ["l1", "l2"])
def test_smoothness_matches_the_reference_formula(penalty):
    flow = np.random.default_rng(0).normal(0, 0.7, (3, 9, 7, 2)).astype(np.float32)
    assert float(smoothness_loss(penalty)(tf.constant(flow))) == pytest.approx(reference_grad(flow, penalty),
                                                                                rel=1e-5)
