"""multi_window_ncc: the weighted sum (1, gamma, gamma^2, ...) of single-window local NCCs, in both formulas."""
import ulae_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf
import voxelmorph as vxm
from scipy import ndimage

from gsmorph_tf.config import NCC_FORMULAS, TrainConfig
from gsmorph_tf.core.losses import ncc_loss
from ulae_tf.losses import multi_ncc_from_config, multi_window_ncc


def smooth_images(shape, seed):
    """Two batch items of blurred noise in [0, 1], ``[2, *shape, 1]`` (voxelmorph's NCC takes tensors)."""
    rng = np.random.default_rng(seed)
    images = ndimage.gaussian_filter(rng.random((2, *shape)), sigma=(0,) + (2.0,) * len(shape))
    return tf.constant(((images - images.min()) / (images.max() - images.min()))[..., None], tf.float32)


@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_equals_weighted_sum_of_single_window_nccs(shape):
    fixed, moved = smooth_images(shape, seed=0), smooth_images(shape, seed=1)
    per_item = (1.0 * vxm.losses.NCC(11).loss(fixed, moved) + 0.5 * vxm.losses.NCC(9).loss(fixed, moved)
                + 0.25 * vxm.losses.NCC(7).loss(fixed, moved)).numpy()
    assert per_item.shape == (2,) and np.all(per_item < 0)  # voxelmorph's loss is -NCC per batch item
    np.testing.assert_allclose(multi_window_ncc()(fixed, moved).numpy(), per_item.mean(), rtol=1e-5)


@pytest.mark.parametrize("shape", [(24, 24), (16, 16, 16)])
@pytest.mark.parametrize("formula", NCC_FORMULAS)
def test_weights_are_powers_of_gamma(shape, formula):
    fixed, moved = smooth_images(shape, seed=4), smooth_images(shape, seed=5)
    expected = sum(weight * float(ncc_loss(window, formula)(fixed, moved))
                   for window, weight in ((7, 1.0), (5, 0.3), (3, 0.09)))
    assert float(multi_window_ncc((7, 5, 3), 0.3, formula)(fixed, moved)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("formula", NCC_FORMULAS)
def test_identical_images_reach_minus_sum_of_weights(formula):
    images = tf.constant(np.random.default_rng(2).random((2, 32, 32, 1)), tf.float32)
    # Noise: every window, even 3x3, has a local variance far above eps, so NCC = 1 - O(1e-5) in both formulas
    # (the reference's eps on I_var * J_var lowers low-contrast windows): -(1 + 0.5 + 0.25).
    loss = multi_window_ncc(formula=formula)(images, images).numpy()
    np.testing.assert_allclose(loss, -1.75, atol=1e-3)
    loss = multi_window_ncc(windows=(5, 3), gamma=0.1, formula=formula)(images, images).numpy()
    np.testing.assert_allclose(loss, -1.1, atol=1e-3)


def test_the_config_chooses_windows_gamma_and_formula():
    fixed, moved = smooth_images((24, 24), seed=6), smooth_images((24, 24), seed=7)
    config = TrainConfig(similarity="multi_ncc", ncc_windows=(7, 5), ncc_gamma=0.3, ncc="reference")
    expected = float(ncc_loss(7, "reference")(fixed, moved)) + 0.3 * float(ncc_loss(5, "reference")(fixed, moved))
    assert float(multi_ncc_from_config(config)(fixed, moved)) == pytest.approx(expected, rel=1e-6)
    assert float(multi_ncc_from_config(config)(fixed, moved)) != pytest.approx(
        float(multi_ncc_from_config(TrainConfig(ncc_windows=(7, 5), ncc_gamma=0.3))(fixed, moved)), rel=1e-3)


def test_one_loss_serves_2d_and_3d():
    loss = multi_window_ncc()
    for shape in [(32, 32), (16, 16, 16)]:
        images = smooth_images(shape, seed=3)
        assert np.isfinite(loss(images, images).numpy())


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="windows"):
        multi_window_ncc(windows=())
    with pytest.raises(ValueError, match="gamma must be > 0, got 0.0"):
        multi_window_ncc(gamma=0.0)
    with pytest.raises(ValueError, match="got 2.5"):
        multi_window_ncc(windows=(11, 2.5))
    with pytest.raises(ValueError, match="unknown NCC formula 'ulae'; valid: voxelmorph, reference"):
        multi_window_ncc(formula="ulae")
