"""HyperMorph baseline: training with sampled lambda, the frozen-lambda network, lambda selection."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.models import hypermorph


@pytest.fixture(scope="module")
def network():
    return hypermorph.build_hypermorph((32, 32))


def pairs(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"moving": rng.random((n, 32, 32, 1), np.float32), "fixed": rng.random((n, 32, 32, 1), np.float32)}


def test_fixed_lambda_network_equals_hypernetwork_at_that_lambda(network):
    batch = pairs()
    frozen = hypermorph.fixed_lambda_network(network, 0.3)
    assert frozen.input_names == ["moving", "fixed"] and frozen.output_names == ["moved", "flow"]
    moved, flow = frozen.predict(batch, verbose=0)
    direct = network.predict([batch["moving"], batch["fixed"], np.full((4, 1), 0.3, np.float32)], verbose=0)
    np.testing.assert_allclose(moved, direct[0], atol=1e-6)
    np.testing.assert_allclose(flow, direct[1], atol=1e-6)
    other = hypermorph.fixed_lambda_network(network, 0.9).predict(batch, verbose=0)[1]
    assert not np.allclose(other, flow)  # lambda really is an input of the computation


def test_training_step_draws_lambda_and_logs_losses(network):
    model = hypermorph.HyperMorphModel(network, seed=1)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-4))
    history = model.fit(tf.data.Dataset.from_tensor_slices(pairs(8)).batch(4), epochs=1, verbose=0).history
    assert set(history) == {"loss", "sim_loss", "reg_loss"}
    # (1 - lambda) sim + lambda reg lies between the two terms for any lambda in [0, 1]
    low, high = sorted((history["sim_loss"][0], history["reg_loss"][0]))
    assert low - 1e-6 <= history["loss"][0] <= high + 1e-6


def test_select_lambda_takes_best_dice_then_smallest_folding(monkeypatch, network):
    dice = {0.01: 50.0, 0.1: 70.0, 0.5: 70.0}
    njd = {0.01: 0.0, 0.1: 2.0, 0.5: 1.0}
    monkeypatch.setattr(hypermorph, "fixed_lambda_network", lambda net, lam: lam)
    monkeypatch.setattr(evaluation, "evaluate_network",
                        lambda lam, subjects, batch_size, protocol: [{"subject": "s", "dice_mean": dice[lam],
                                                                      "njd": njd[lam]}])
    best, scores = hypermorph.select_lambda(network, ["val-subject"], grid=(0.01, 0.1, 0.5))
    assert best == 0.5
    assert [s["dice"] for s in scores] == [50.0, 70.0, 70.0]
    with pytest.raises(ValueError, match="validation subject"):
        hypermorph.select_lambda(network, [], grid=(0.1,))


def test_hypermorph_takes_no_surgery():
    with pytest.raises(ConfigError, match="surgery=none"):
        TrainConfig(model="hypermorph", surgery="layerwise", data_dir="x").validate()
    TrainConfig(model="hypermorph", surgery="none", data_dir="x").validate()
