"""The gsmorph model entry: the reference's optimizer step by hand, and the paper's method names."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from gsmorph_tf.config import TrainConfig
from gsmorph_tf.models.gsmorph import MODEL, build_optimizer


def test_adam_step_is_pytorchs_adamw_without_weight_decay():
    # PyTorch's first step: m_hat = g, v_hat = g^2, update = lr * g / (|g| + eps). With a gradient of the size of
    # eps the placement of eps matters: 1e-3 * 1e-7 / (1e-7 + 1e-8) here, 2.4e-4 with tf-keras' default.
    optimizer = build_optimizer(TrainConfig(learning_rate=1e-3))
    variable = tf.Variable([0.0])
    optimizer.apply_gradients([(tf.constant([1e-7]), variable)])
    assert float(variable.numpy()[0]) == pytest.approx(-1e-3 * 1e-7 / (1e-7 + 1e-8), rel=1e-4)


@pytest.mark.parametrize("settings, name", [
    (dict(surgery="layerwise"), "GSMorph"), (dict(surgery="pcgrad"), "GS-PCGrad"), (dict(surgery="agr_rand"), "GS-Agr"),
    (dict(surgery="none", lam=0.01), "VoxelMorph (lam=0.01)")])
def test_method_names_are_the_papers(settings, name):
    assert MODEL.method_name(TrainConfig(**settings)) == name


def test_training_model_takes_the_configs_losses():
    network = MODEL.build_network(TrainConfig(), (16, 16))
    model = MODEL.build_training_model(TrainConfig(surgery="none", lam=0.3, reg_penalty="l1"), network)
    flow = np.zeros((1, 16, 16, 2), np.float32)
    flow[..., 0] = np.arange(16)[:, None] * 0.5
    assert float(model.regularizer_fn(tf.constant(flow))) == pytest.approx(0.125)   # l1: (0.25 + 0) / 2
    assert model.lam == 0.3 and model.surgery == "none"
