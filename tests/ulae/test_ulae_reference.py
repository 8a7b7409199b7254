"""ULAE-net's reference objective as settings: PyTorch's initialisation, the similarity on warp3, zero padding,
mixed precision; and the config rules that keep them to the models that take them."""
import ulae_tf  # noqa: F401  (legacy Keras before TensorFlow)

import math

import numpy as np
import pytest
import tensorflow as tf

from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.core.flows import Warp
from gsmorph_tf.core.model import GradientSurgeryModel
from ulae_tf.losses import multi_window_ncc
from ulae_tf.networks import FLOW_HEAD, _convolutions, build_ulae_net
from ulae_tf.registration import MODEL

SHAPE = (32, 32)


def reference_config(**changes):
    settings = dict(model="ulae", dataset="brain", data_dir="x", surgery="none", lam=1.0, similarity="multi_ncc",
                    reg_penalty="l2", warp_padding="zeros", ulae_moved="warp3", ulae_init="pytorch")
    settings.update(changes)
    return TrainConfig(**settings)


def test_pytorch_initialisation_is_uniform_within_one_over_root_fan_in():
    tf.keras.utils.set_random_seed(0)
    network = build_ulae_net(SHAPE, init="pytorch")
    convolutions = list(_convolutions(network))
    assert len(convolutions) > 40  # the encoder's and the three decoders'
    for layer in convolutions:
        kernel = layer.kernel.numpy()
        if layer.name == FLOW_HEAD:  # N(0, 1e-5), zero bias: unchanged
            assert np.abs(kernel).max() < 1e-4 and not layer.bias.numpy().any()
            continue
        bound = 1.0 / math.sqrt(np.prod(kernel.shape[:-1]))
        assert np.abs(kernel).max() <= bound
        if kernel.size >= 1000:  # uniform on [-b, b]: std b / sqrt(3)
            assert abs(kernel.std() - bound / math.sqrt(3)) < 0.1 * bound / math.sqrt(3), layer.name
        if layer.use_bias:
            bias = layer.bias.numpy()
            assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.1 * bound, layer.name


def test_keras_initialisation_has_zero_biases_and_glorot_kernels():
    network = build_ulae_net(SHAPE, init="keras")
    biased = [layer for layer in _convolutions(network) if layer.use_bias and layer.name != FLOW_HEAD]
    assert biased and not any(layer.bias.numpy().any() for layer in biased)
    with pytest.raises(ValueError, match="init must be one of keras, pytorch, got 'xavier'"):
        build_ulae_net(SHAPE, init="xavier")


def test_reference_objective_scores_warp3_and_warps_with_zero_padding():
    config = reference_config()
    network = MODEL.build_network(config, SHAPE)
    model = MODEL.build_training_model(config, network)
    assert network.output_names[model.moved_index] == "step3_moved"
    assert all(isinstance(network.get_layer(name), Warp) and network.get_layer(name).padding == "zeros"
               for name in ("step1_moved", "step2_moved", "step3_moved", "moved"))
    assert network.get_layer("flow").padding == "zeros"
    rng = np.random.default_rng(0)
    moving, fixed = (tf.constant(rng.random((1, *SHAPE, 1), np.float32)) for _ in range(2))
    outputs = network([moving, fixed])
    sim, reg = model.compute_losses(moving, fixed, training=False)
    names = network.output_names
    np.testing.assert_allclose(sim, multi_window_ncc()(fixed, outputs[names.index("step3_moved")]), rtol=1e-5)
    assert not np.isclose(sim, multi_window_ncc()(fixed, outputs[0]), rtol=1e-7)  # not the composed warp
    ours = MODEL.build_training_model(reference_config(ulae_moved="composed"), network)
    assert network.output_names[ours.moved_index] == "moved"


def test_moved_output_must_name_an_output():
    network = build_ulae_net(SHAPE)
    with pytest.raises(ValueError, match="moved_output='warp3' is not an output.*step3_moved"):
        GradientSurgeryModel(network, moved_output="warp3")


def test_mixed_precision_keeps_flows_and_images_float32():
    network = build_ulae_net(SHAPE, dtype_policy="mixed_float16")
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # restored after the build
    assert network.get_layer("encoder").get_layer("skip1_conv").compute_dtype == "float16"
    assert network.get_layer("step1_decoder").get_layer(FLOW_HEAD).compute_dtype == "float32"
    rng = np.random.default_rng(0)
    pair = [tf.constant(rng.random((1, *SHAPE, 1), np.float32)) for _ in range(2)]
    with tf.GradientTape() as tape:
        outputs = network(pair, training=True)
        loss = multi_window_ncc()(pair[1], outputs[0]) + tf.reduce_mean(outputs[1] ** 2)
    assert all(output.dtype == tf.float32 for output in outputs)
    gradients = tape.gradient(loss, network.trainable_variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in gradients)


def test_model_settings_are_refused_by_models_that_do_not_take_them():
    reference_config().validate()
    with pytest.raises(ConfigError, match="model=gsmorph does not take ulae_moved: ulae_moved must be 'composed', "
                                          "got 'warp3'; models that take it: ulae"):
        reference_config(model="gsmorph", ulae_init="keras").validate()
    with pytest.raises(ConfigError, match="model=hypermorph does not take warp_padding"):
        TrainConfig(model="hypermorph", surgery="none", data_dir="x", warp_padding="zeros").validate()
    with pytest.raises(ConfigError, match="ulae_moved='warp2' is not one of: composed, warp3"):
        reference_config(ulae_moved="warp2").validate()


def test_a_comparison_row_keeps_only_its_models_settings():
    base = reference_config()
    voxelmorph = base.replace_for_model(model="gsmorph", unet_width=2)
    assert (voxelmorph.ulae_moved, voxelmorph.ulae_init) == ("composed", "keras")
    assert voxelmorph.warp_padding == "zeros" and voxelmorph.unet_width == 2  # gsmorph takes these
    voxelmorph.validate()
    assert base.replace_for_model(surgery="layerwise") == reference_config(surgery="layerwise")
