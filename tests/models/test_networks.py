"""The GSMorph U-Net: the paper's size, shapes in 2D and 3D, identity at initialisation."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from gsmorph_tf.core.surgery import variable_groups
from gsmorph_tf.models.networks import build_gsmorph_unet, count_trainable_parameters


def test_paper_parameter_count_in_2d_at_128():
    model = build_gsmorph_unet((128, 128))
    assert count_trainable_parameters(model) == 1_968_002
    assert len(model.trainable_variables) == 75  # the reference implementation's 75 surgery groups
    # initial conv (kernel) + 18 convs (kernel, bias) + 18 BN (gamma, beta) + flow head (kernel, bias)
    assert len(variable_groups(model, "layer")) == 1 + 18 + 18 + 1


@pytest.mark.parametrize("inshape", [(32, 32), (16, 16, 16)])
def test_outputs_moved_and_flow_and_start_near_identity(inshape):
    model = build_gsmorph_unet(inshape)
    rng = np.random.default_rng(0)
    moving = rng.random((2, *inshape, 1), np.float32)
    fixed = rng.random((2, *inshape, 1), np.float32)
    moved, flow = model.predict({"moving": moving, "fixed": fixed}, verbose=0)
    assert moved.shape == (2, *inshape, 1)
    assert flow.shape == (2, *inshape, len(inshape))
    assert model.output_names == ["moved", "flow"]
    # flow head ~ N(0, 1e-5): the untrained network is (almost) the identity transform
    assert np.abs(flow).max() < 1e-2
    np.testing.assert_allclose(moved, moving, atol=1e-2)


def test_diffeomorphic_variant_integrates_velocity():
    model = build_gsmorph_unet((32, 32), int_steps=5)
    names = [layer.name for layer in model.layers]
    assert "velocity" in names and "flow" in names
    assert count_trainable_parameters(model) == count_trainable_parameters(build_gsmorph_unet((32, 32)))


def test_reference_activation_normalisation_and_initialisation():
    model = build_gsmorph_unet((32, 32))
    activations = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.LeakyReLU)]
    norms = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)]
    assert len(activations) == len(norms) == 18
    assert all(layer.get_config()["alpha"] == pytest.approx(0.01) for layer in activations)  # nn.LeakyReLU()
    assert all(layer.epsilon == pytest.approx(1e-5) and layer.momentum == pytest.approx(0.9) for layer in norms)
    # Kaiming-normal, fan_out, ReLU gain: std sqrt(2 / (3 * 3 * 256)) for the 256-filter convs (1 179 648
    # weights in enc4_conv2: the sample std is within 1 % of it); biases start at zero.
    kernel = model.get_layer("enc4_conv2").kernel.numpy()
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / (3 * 3 * 256)), rel=0.01)
    assert abs(kernel.mean()) < 0.01 * kernel.std()
    small = model.get_layer("dec0_conv2").kernel.numpy()   # 16 filters: a 4x larger std
    assert small.std() == pytest.approx(np.sqrt(2.0 / (3 * 3 * 16)), rel=0.05)
    assert all(not np.any(layer.bias.numpy()) for layer in model.layers
               if isinstance(layer, tf.keras.layers.Conv2D) and layer.use_bias)
    assert model.get_layer("flow").kernel.numpy().std() < 1e-4   # the flow head stays N(0, 1e-5)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="divisible by 16"):
        build_gsmorph_unet((120, 128))
    with pytest.raises(ValueError, match="2D or 3D"):
        build_gsmorph_unet((64,))
