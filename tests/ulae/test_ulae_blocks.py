"""ULAE building blocks: stride-2 branches aligned, linear upsampling, encoder and decoder shapes."""
import ulae_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from ulae_tf.blocks import (EvenVoxelsConv3D, build_step_decoder, build_uncoupled_encoder,
                            even_voxels_of_dilated_conv, stride2_conv, upsample_linear_x2)


@pytest.mark.parametrize("kernel_size, dilation", [(1, 1), (3, 1), (3, 2), (3, 3)])
def test_stride2_branches_sample_even_voxels(kernel_size, dilation):
    # An impulse at voxel (8, 6) through a conv whose only weight is the kernel centre lands on (4, 3) for
    # every branch, so the concatenated branches see the same place. (TensorFlow's 'same' 3x3 stride-2 conv
    # would centre output i on input 2i + 1 and miss the impulse entirely.)
    image = np.zeros((1, 16, 16, 1), np.float32)
    image[0, 8, 6, 0] = 1.0
    inputs = tf.keras.Input((16, 16, 1))
    model = tf.keras.Model(inputs, stride2_conv(inputs, 1, kernel_size, name="b", dilation=dilation,
                                                use_bias=False))
    kernel = np.zeros((kernel_size, kernel_size, 1, 1), np.float32)
    kernel[kernel_size // 2, kernel_size // 2] = 1.0
    model.get_layer("b_conv").set_weights([kernel])
    out = model(image).numpy()[0, ..., 0]
    assert out.shape == (8, 8)
    expected = np.zeros((8, 8), np.float32)
    expected[4, 3] = 1.0
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shape", [(12, 16), (8, 10, 12)])
@pytest.mark.parametrize("dilation", [1, 2, 3, 4, 9])
def test_even_voxels_equal_the_subsampled_dilated_conv_with_gradients(shape, dilation):
    """The direct form computes every voxel and keeps the even ones; the fast one computes only those. Equal
    values and equal gradients (input and kernel) to float round-off, for even and odd dilations (a dilation
    larger than the image reads only zeros on some taps)."""
    rng = np.random.default_rng(dilation)
    ndim = len(shape)
    x = tf.Variable(rng.random((2, *shape, 3), np.float32))
    kernel = tf.Variable(rng.standard_normal((3,) * ndim + (3, 4)).astype(np.float32))
    weights = tf.constant(rng.standard_normal((2, *(s // 2 for s in shape), 4)).astype(np.float32))
    results = []
    for conv in (lambda: tf.nn.convolution(x, kernel, padding="SAME", dilations=dilation)[
                     (slice(None),) + (slice(None, None, 2),) * ndim],
                 lambda: even_voxels_of_dilated_conv(x, kernel, dilation)):
        @tf.function  # as training runs it (the direct form's eager 3D gradient fails at dilation 1 in TF 2.21)
        def value_and_gradients(conv=conv):
            with tf.GradientTape() as tape:
                out = conv()
                total = tf.reduce_sum(out * weights)
            return [out] + tape.gradient(total, [x, kernel])
        results.append(value_and_gradients())
    for direct, fast in zip(*results):
        assert direct.shape == fast.shape
        np.testing.assert_allclose(fast.numpy(), direct.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dilation", [1, 3])
def test_even_voxels_gradient_runs_eagerly_in_3d(dilation):
    """TensorFlow 2.21's eager gradient of a 3D conv with unit dilations fails unless the conv names its
    data_format; the even-voxel conv does, so a 3D ULAE step also runs eagerly, with the traced step's numbers."""
    rng = np.random.default_rng(dilation)
    x = tf.Variable(rng.random((1, 8, 8, 8, 2), np.float32))
    kernel = tf.Variable(rng.standard_normal((3, 3, 3, 2, 4)).astype(np.float32))

    def value_and_gradients():
        with tf.GradientTape() as tape:
            out = even_voxels_of_dilated_conv(x, kernel, dilation)
            total = tf.reduce_sum(out * out)
        return [out] + tape.gradient(total, [x, kernel])

    for eager, traced in zip(value_and_gradients(), tf.function(value_and_gradients)()):
        np.testing.assert_allclose(eager.numpy(), traced.numpy(), rtol=1e-6, atol=1e-6)


def test_even_voxels_conv_is_a_keras_conv_with_the_plain_weights():
    layer = EvenVoxelsConv3D(5, 3, padding="same", dilation_rate=3, name="rate3_conv")
    out = layer(tf.zeros((1, 8, 8, 8, 2)))
    assert tuple(out.shape) == (1, 4, 4, 4, 5) and isinstance(layer, tf.keras.layers.Conv3D)
    assert [tuple(w.shape) for w in layer.weights] == [(3, 3, 3, 2, 5), (5,)]
    assert tuple(layer.compute_output_shape((None, 16, 8, 8, 2))) == (None, 8, 4, 4, 5)


def test_encoder_and_decoder_shapes():
    encoder = build_uncoupled_encoder((32, 32), base_channels=16)
    assert [tuple(t.shape) for t in encoder.outputs] == [(None, 16, 16, 16), (None, 8, 8, 32), (None, 4, 4, 32),
                                                         (None, 2, 2, 32)]
    for step, size in [(1, 8), (2, 16), (3, 32)]:
        decoder = build_step_decoder((32, 32), 16, step, name="d%d" % step)
        assert len(decoder.inputs) == step + 1 + 2  # e4 ... e_{4-step}, moving, fixed
        assert tuple(decoder.output.shape) == (None, size, size, 2)


def test_linear_upsampling_is_pytorchs_half_pixel_interpolation():
    # Along an axis [0, 4] becomes [0, 1, 3, 4]: outputs sit at input coordinates -0.25, 0.25, 0.75, 1.25,
    # clamped at the edges (PyTorch's Upsample(mode='trilinear'), the reference code's).
    line = np.array([0.0, 4.0], np.float32)
    for axis in (1, 2, 3):
        shape = [1, 1, 1, 1, 1]
        shape[axis] = 2
        out = upsample_linear_x2(tf.constant(line.reshape(shape))).numpy()
        expected_shape = [1, 2, 2, 2, 1]
        expected_shape[axis] = 4
        assert out.shape == tuple(expected_shape)
        np.testing.assert_allclose(np.moveaxis(out, axis, -1).reshape(-1, 4), [[0.0, 1.0, 3.0, 4.0]] * 4)
    image = tf.random.stateless_normal((2, 5, 7, 3), seed=(0, 1))
    np.testing.assert_allclose(upsample_linear_x2(image).numpy(), tf.image.resize(image, (10, 14), "bilinear"),
                               atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 2, 3, 2, 4), (2, 1, 5, 2, 3)])
def test_linear_upsampling_traced_equals_eager_with_its_gradient(shape):
    """Traced and optimised by grappler (as training runs it) the upsampling and its gradient equal the eager
    ones, at axes of 1, 2 and odd sizes (grappler's constant folding gave another form of it wrong shapes)."""
    x = tf.random.stateless_normal(shape, seed=(2, 3))
    weights = tf.random.stateless_normal((shape[0], *(2 * s for s in shape[1:-1]), shape[-1]), seed=(4, 5))

    def value_and_gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = upsample_linear_x2(x)
            loss = tf.reduce_sum(out * weights)
        return out, tape.gradient(loss, x)

    eager, traced = value_and_gradient(x), tf.function(value_and_gradient)(x)
    for a, b in zip(eager, traced):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6)
    # every input voxel feeds its two outputs and its two neighbours' with weights summing to 2 along each axis
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(tf.function(upsample_linear_x2)(x))
    np.testing.assert_allclose(tape.gradient(total, x).numpy(), 2.0 ** (len(shape) - 2), rtol=1e-6)
