"""GradientSurgeryModel: fit applies exactly the projected gradient, logs the diagnostics."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from gsmorph_tf.core.model import GradientSurgeryModel
from gsmorph_tf.core.surgery import project_gradients
from gsmorph_tf.models.networks import build_gsmorph_unet


def smooth_pairs(n, shape=(32, 32), seed=0):
    """Blurry random images and slightly shifted copies: a registration problem with useful gradients."""
    rng = np.random.default_rng(seed)
    fixed = ndimage.gaussian_filter(rng.random((n, *shape)), sigma=(0, 3, 3))
    moving = np.roll(fixed, 2, axis=1)
    scale = lambda a: ((a - a.min()) / (a.max() - a.min()))[..., None].astype(np.float32)  # noqa: E731
    return {"moving": scale(moving), "fixed": scale(fixed)}


@pytest.mark.parametrize("mode", ["layerwise", "pcgrad"])
def test_one_sgd_step_moves_weights_by_projected_gradient(mode):
    tf.keras.utils.set_random_seed(1)
    network = build_gsmorph_unet((32, 32))
    # At the paper's N(0, 1e-5) head init every gradient is ~1e-6 and lr * g falls below float32 resolution
    # of the weights; a larger head makes the update measurable without changing the rule under test.
    head = network.get_layer("flow").kernel
    head.assign(tf.random.normal(head.shape, stddev=0.05, seed=2))
    model = GradientSurgeryModel(network, similarity="mse", reg_penalty="l2", surgery=mode)
    lr = 0.01
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=lr))
    batch = smooth_pairs(4)

    variables = network.trainable_variables
    before = [v.numpy().copy() for v in variables]
    with tf.GradientTape(persistent=True) as tape:
        sim, reg = model.compute_losses(batch["moving"], batch["fixed"], training=True)
    sim_grads = tape.gradient(sim, variables)
    reg_grads = tape.gradient(reg, variables)
    expected = [g.numpy() for g in project_gradients(sim_grads, reg_grads, mode)]
    # The step must actually differ from plain similarity descent, or this test could not tell them apart.
    # (Gradients are ~1e-6 at initialisation, as the flow head starts at ~1e-5: compare relatively.)
    assert any(not np.allclose(e, s.numpy(), rtol=1e-3, atol=0.0) for e, s in zip(expected, sim_grads))

    model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(4), epochs=1, verbose=0)
    largest_step = lr * max(np.abs(g).max() for g in expected)
    for v, w0, g in zip(variables, before, expected):
        # w1 - w0 is exact up to the float32 rounding of the stored weight (one ulp of |w|).
        rounding = 2 * np.spacing(np.abs(w0).max())
        np.testing.assert_allclose(v.numpy() - w0, -lr * g, rtol=2e-3, atol=1e-3 * largest_step + rounding,
                                   err_msg=v.name)


def test_fit_logs_losses_and_conflict_diagnostics():
    network = build_gsmorph_unet((32, 32))
    model = GradientSurgeryModel(network, surgery="layerwise")
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    data = tf.data.Dataset.from_tensor_slices(smooth_pairs(8)).batch(4)
    history = model.fit(data, validation_data=data, epochs=2, verbose=0).history
    assert set(history) == {"sim_loss", "reg_loss", "conflict_fraction", "mean_cosine",
                            "val_sim_loss", "val_reg_loss"}
    assert all(0.0 <= f <= 1.0 for f in history["conflict_fraction"])
    assert all(-1.0 <= c <= 1.0 for c in history["mean_cosine"])
    assert history["sim_loss"][-1] > 0.0


def test_single_backward_pass_baseline_matches_two_gradient_sum():
    """surgery none: lam-weighted sum; with diagnostics off it is one backward pass of L_sim + lam L_reg."""
    batch = smooth_pairs(4)
    results = []
    for diagnostics in (True, False):
        tf.keras.utils.set_random_seed(3)
        network = build_gsmorph_unet((32, 32))
        model = GradientSurgeryModel(network, surgery="none", lam=0.5, conflict_diagnostics=diagnostics)
        model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=0.1))
        history = model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(4), epochs=1, verbose=0).history
        assert ("conflict_fraction" in history) == diagnostics
        results.append([v.numpy() for v in network.trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_unknown_mode_fails_before_training():
    with pytest.raises(ValueError, match="valid modes are"):
        GradientSurgeryModel(build_gsmorph_unet((32, 32)), surgery="lambda")
