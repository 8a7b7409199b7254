"""Local NCC (gsmorph_tf.core.losses): separable window sums equal the direct window^ndim convolution; the
``voxelmorph`` formula is voxelmorph 0.2's NCC, the ``reference`` formula the ULAE-net code's; the two differ
where the brief says (flat and anti-correlated windows), by hand-computable numbers."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf
import voxelmorph as vxm
from scipy import ndimage

from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.core.losses import (box_sums, box_sums_direct, ncc_from_config, ncc_loss, similarity_loss,
                                    windowed_ncc_loss)

SHAPES = [(24, 24), (16, 16, 16)]


def random_pair(shape, seed=0):
    """Two batch items of uniform noise in [0, 1], fixed and moved independent: ``[2, *shape, 1]`` each."""
    rng = np.random.default_rng(seed)
    return tuple(tf.constant(rng.random((2, *shape, 1)), tf.float32) for _ in range(2))


def structured_pair(shape, seed=0):
    """Fixed and moved ``[2, *shape, 1]`` in three slabs along the last axis: zero in both (flat), then moved =
    0.7 fixed + 0.3 noise (correlated), then moved = 1 - fixed (anti-correlated); fixed is noise outside the
    flat slab."""
    rng = np.random.default_rng(seed)
    third = shape[-1] // 3
    fixed = rng.random((2, *shape))
    moved = 0.7 * fixed + 0.3 * rng.random((2, *shape))
    moved[..., 2 * third:] = 1.0 - fixed[..., 2 * third:]
    fixed[..., :third] = moved[..., :third] = 0.0
    return tf.constant(fixed[..., None], tf.float32), tf.constant(moved[..., None], tf.float32)


PAIRS = {"random": random_pair, "structured": structured_pair}


def value_and_gradient(loss, fixed, moved):
    """``loss(fixed, moved)`` and its gradient with respect to ``moved``, eagerly (also in 3D: the box sums name
    the convolutions' data_format, without which TensorFlow 2.21's eager Conv3D gradient fails)."""
    with tf.GradientTape() as tape:
        tape.watch(moved)
        value = loss(fixed, moved)
    return value, tape.gradient(value, moved)


def assert_close(actual, expected, rtol):
    """``actual`` within ``rtol`` of ``expected``, relative to the largest ``|expected|`` (gradients are near 0
    in places, so an element-wise relative test would measure round-off there)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert np.abs(actual - expected).max() <= rtol * np.abs(expected).max()


def assert_same_loss(loss, expected, fixed, moved, rtol=1e-5):
    """``loss(fixed, moved)`` equals ``expected(fixed, moved)`` within ``rtol``, in value and in gradient with
    respect to ``moved``."""
    actual, wanted = value_and_gradient(loss, fixed, moved), value_and_gradient(expected, fixed, moved)
    assert_close(actual[0], wanted[0], rtol)
    assert_close(actual[1], wanted[1], rtol)


def ulae_reference_ncc(fixed, moved, window):
    """The ULAE-net reference code's ``NCC.forward`` (``ULAE/Loss.py``) in float64 numpy: zero-padded window
    sums, ``u = sum / window^ndim``, ``cc = cross^2 / (I_var * J_var + 1e-5)``, loss ``-mean(cc)``."""
    I, J = (np.asarray(image, np.float64)[..., 0] for image in (fixed, moved))
    ndim = I.ndim - 1
    weight = np.ones((1,) + (window,) * ndim)  # one window per batch item, none across the batch
    I_sum, J_sum, I2_sum, J2_sum, IJ_sum = (ndimage.correlate(x, weight, mode="constant")
                                            for x in (I, J, I * I, J * J, I * J))
    win_size = window ** ndim
    u_I, u_J = I_sum / win_size, J_sum / win_size
    cross = IJ_sum - u_J * I_sum - u_I * J_sum + u_I * u_J * win_size
    I_var = I2_sum - 2 * u_I * I_sum + u_I * u_I * win_size
    J_var = J2_sum - 2 * u_J * J_sum + u_J * u_J * win_size
    return -np.mean(cross * cross / (I_var * J_var + 1e-5))


def test_box_sums_by_hand():
    ones = tf.ones((1, 8, 8, 1))
    sums = box_sums(ones, 5)[0, ..., 0].numpy()
    # 5 voxels per axis inside, 3 at the border (2 of the 5 are padding), 4 one voxel in.
    assert (sums[0, 0], sums[0, 1], sums[0, 4], sums[4, 4]) == (9, 12, 15, 25)
    # An even window spans (4 - 1) // 2 = 1 voxel before and 2 after: 3 inside at index 0, 2 at index 7.
    sums = box_sums(ones, 4)[0, ..., 0].numpy()
    assert (sums[0, 0], sums[7, 7], sums[0, 7], sums[3, 3]) == (9, 4, 6, 16)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("window", [1, 4, 5, 9])
def test_box_sums_equal_the_direct_convolution(shape, window):
    rng = np.random.default_rng(window)
    images = tf.constant(rng.random((2, *shape, 5)), tf.float32)
    upstream = tf.constant(rng.normal(size=(2, *shape, 5)), tf.float32)

    def weighted(sums):
        return lambda unused, x: tf.reduce_sum(sums(x, window) * upstream)

    assert_close(box_sums(images, window), box_sums_direct(images, window), 1e-5)
    # The gradient is the adjoint, mirrored for the even window.
    assert_same_loss(weighted(box_sums), weighted(box_sums_direct), images, images)


@pytest.mark.parametrize("dtype, atol", [(tf.float16, 0.02), (tf.bfloat16, 0.2), (tf.float64, 1e-12)])
def test_box_sums_keep_the_dtype(dtype, atol):
    # Half-precision images are summed in float32 and rounded once; float64 stays float64 throughout.
    images = np.random.default_rng(3).random((1, 8, 8, 8, 2))
    sums = box_sums(tf.constant(images, dtype), 3)
    assert sums.dtype == dtype
    np.testing.assert_allclose(tf.cast(sums, tf.float64), box_sums_direct(tf.constant(images), 3), atol=atol)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("formula", ["voxelmorph", "reference"])
def test_fast_ncc_equals_the_direct_convolution(shape, pair, formula):
    fixed, moved = PAIRS[pair](shape)
    for windows, weights in (((9,), (1.0,)), ((11, 9, 7), (1.0, 0.5, 0.25))):
        assert_same_loss(lambda f, m: windowed_ncc_loss(f, m, windows, weights, formula),
                         lambda f, m: windowed_ncc_loss(f, m, windows, weights, formula, window_sums=box_sums_direct),
                         fixed, moved)


@pytest.mark.parametrize("shape", SHAPES)
def test_the_gradient_with_respect_to_the_fixed_image_too(shape):
    # The fixed image's window sums are a stack of their own (a moved-only gradient skips them); a gradient with
    # respect to the fixed image still passes through them.
    fixed, moved = structured_pair(shape)
    windows, weights = (11, 9, 7), (1.0, 0.5, 0.25)

    def of_fixed(sums):  # the loss as a function of (moved, fixed): assert_same_loss differentiates the second
        return lambda m, f: windowed_ncc_loss(f, m, windows, weights, "reference", window_sums=sums)

    assert_same_loss(of_fixed(box_sums), of_fixed(box_sums_direct), moved, fixed)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_voxelmorph_formula_is_voxelmorphs_ncc(shape, pair):
    fixed, moved = PAIRS[pair](shape)
    for window in (4, 9):
        assert_same_loss(ncc_loss(window, "voxelmorph"),
                         lambda f, m: tf.reduce_mean(vxm.losses.NCC(window).loss(f, m)), fixed, moved)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_reference_formula_is_the_ulae_codes_ncc(shape, pair):
    fixed, moved = PAIRS[pair](shape)
    for window in (5, 9):
        assert_close(ncc_loss(window, "reference")(fixed, moved), ulae_reference_ncc(fixed, moved, window), 1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_identical_images_with_a_flat_slab(shape):
    # Fixed = moved: zero in the first half along the last axis, noise in the second. Window 5 reaches 2 voxels
    # on each side, so the windows around the first half - 2 slices are all zero (flat): voxelmorph scores them
    # 1, the reference 0; every other window holds noise, where both score 1 - O(1e-5).
    rng = np.random.default_rng(1)
    images = rng.random((1, *shape, 1))
    half = shape[-1] // 2
    images[..., :half, :] = 0.0
    images = tf.constant(images, tf.float32)
    flat = (half - 2) / shape[-1]
    assert float(ncc_loss(5, "voxelmorph")(images, images)) == pytest.approx(-1.0, abs=1e-4)
    assert float(ncc_loss(5, "reference")(images, images)) == pytest.approx(-(1.0 - flat), abs=1e-4)
    assert float(ncc_loss(5, "reference")(images, images)) == pytest.approx(
        ulae_reference_ncc(images, images, 5), rel=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_anti_correlated_images(shape):
    # moved = -fixed: every window's covariance is -I_var. The reference squares it (cc = 1 - O(1e-5), its
    # optimum); voxelmorph clamps it at 1e-5 (cc = 1e-10 / I_var^2, about 0).
    fixed, noise = random_pair(shape)
    assert float(ncc_loss(5, "reference")(fixed, -fixed)) == pytest.approx(-1.0, abs=1e-4)
    assert abs(float(ncc_loss(5, "voxelmorph")(fixed, -fixed))) < 1e-8
    # Less than perfectly anti-correlated: the reference pulls moved towards -fixed; voxelmorph passes almost
    # no gradient (only through the clamped cc's variances, 1e-10 / I_var^2 small).
    moved = 0.5 * noise - fixed
    reference = value_and_gradient(ncc_loss(5, "reference"), fixed, moved)[1].numpy()
    clamped = value_and_gradient(ncc_loss(5, "voxelmorph"), fixed, moved)[1].numpy()
    assert np.sum(reference * (moved + fixed)) > 0  # descending it moves towards -fixed
    assert np.abs(clamped).max() < 1e-6 * np.abs(reference).max()


def test_identical_noise_scores_minus_one_in_both_formulas():
    fixed, _ = random_pair((24, 24))
    for formula in ("voxelmorph", "reference"):
        assert float(ncc_loss(9, formula)(fixed, fixed)) == pytest.approx(-1.0, abs=1e-4)


def test_the_config_chooses_the_formula():
    fixed, moved = structured_pair((24, 24))
    for formula in ("voxelmorph", "reference"):
        loss = ncc_from_config(TrainConfig(similarity="ncc", ncc_window=7, ncc=formula))
        assert float(loss(fixed, moved)) == float(ncc_loss(7, formula)(fixed, moved))
    assert float(similarity_loss("ncc", 7, "reference")(fixed, moved)) == pytest.approx(
        ulae_reference_ncc(fixed, moved, 7), rel=1e-5)
    assert TrainConfig().ncc == "voxelmorph"  # today's runs and figures keep their loss


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match="ncc='ulae' is not one of: voxelmorph, reference"):
        TrainConfig(ncc="ulae", data_dir="x").validate()
    with pytest.raises(ValueError, match="unknown NCC formula 'clamped'; valid: voxelmorph, reference"):
        ncc_loss(9, "clamped")
    with pytest.raises(ValueError, match="window side must be a positive integer .*got 0"):
        ncc_loss(0)
    with pytest.raises(ValueError, match="moved has shape \\(1, 8, 8, 2\\)"):
        ncc_loss(3)(tf.zeros((1, 8, 8, 1)), tf.zeros((1, 8, 8, 2)))
    with pytest.raises(ValueError, match="2 or 3 spatial axes, got shape \\(1, 8, 1\\)"):
        box_sums(tf.zeros((1, 8, 1)), 3)
