"""multi_window_ncc: the weighted sum of voxelmorph's single-window NCC losses."""
import ulae_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf
import voxelmorph as vxm
from scipy import ndimage

from ulae_tf.losses import multi_window_ncc


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


def test_identical_images_reach_minus_sum_of_weights():
    images = smooth_images((32, 32), seed=2)
    # NCC = 1 in every window: -(1 + 0.5 + 0.25).
    np.testing.assert_allclose(multi_window_ncc()(images, images).numpy(), -1.75, atol=1e-3)
    np.testing.assert_allclose(multi_window_ncc(windows=(5, 3), gamma=0.1)(images, images).numpy(), -1.1, atol=1e-3)


def test_one_loss_serves_2d_and_3d():
    loss = multi_window_ncc()
    for shape in [(32, 32), (16, 16, 16)]:
        images = smooth_images(shape, seed=3)
        assert np.isfinite(loss(images, images).numpy())


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="windows"):
        multi_window_ncc(windows=())
    with pytest.raises(ValueError, match="gamma"):
        multi_window_ncc(gamma=0.0)
