"""compose_flows: the displacement of warping by several fields in sequence, in voxelmorph's convention."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf
import voxelmorph as vxm
from scipy import ndimage

from gsmorph_tf.core.flows import ComposeFlows, compose_flows, warp as flows_warp

SIZE = 32


def constant_field(shift, shape):
    return np.broadcast_to(np.asarray(shift, np.float32), (1, *shape, len(shape))).copy()


def rotation_field(degrees, size=SIZE):
    """Displacement ``u(x) = R (x - c) + c - x`` of a rotation about the image centre ``c``,
    ``[1, size, size, 2]`` in voxels."""
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size), indexing="ij"), -1).astype(np.float64)
    centred = grid - (size - 1) / 2
    return (centred @ rotation.T - centred)[None].astype(np.float32)


def smooth_field(seed, amplitude=4.0, sigma=4.0):
    """A random smooth 2D displacement, largest component ``amplitude`` voxels, ``[1, SIZE, SIZE, 2]``."""
    rng = np.random.default_rng(seed)
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal((SIZE, SIZE)), sigma) for _ in range(2)], -1)
    return (amplitude * field / np.abs(field).max())[None].astype(np.float32)


def warp(image, flow):
    return vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij")([image, flow]).numpy()


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (8, 8, 8)])
def test_constant_shifts_add_up(shape):
    shifts = [(1.5, -2.25, 0.5), (-0.75, 3.0, 1.0), (2.0, 0.5, -1.25)]
    flows = [constant_field(s[:len(shape)], shape) for s in shifts]
    composed = compose_flows(flows).numpy()
    expected = np.sum([s[:len(shape)] for s in shifts], axis=0)
    # Resampling a constant field returns it everywhere (the border is extended), so this is exact.
    np.testing.assert_allclose(composed, constant_field(expected, shape), atol=1e-5)


def test_rotation_then_its_inverse_composes_to_zero():
    forward, inverse = rotation_field(30.0), rotation_field(-30.0)
    inside = np.hypot(*np.meshgrid(*[np.arange(SIZE) - (SIZE - 1) / 2] * 2, indexing="ij")) < 12
    composed = compose_flows([forward, inverse]).numpy()[0]
    # Linear interpolation reproduces the (affine) rotation field exactly where it samples inside the image.
    assert np.abs(composed[inside]).max() < 1e-4
    # Summing the fields instead would leave (2 cos 30 - 2) |x - c|, up to 3 voxels here.
    assert np.abs((forward + inverse)[0][inside]).max() > 2.0


def test_single_flow_is_returned_unchanged():
    flow = smooth_field(0)
    np.testing.assert_array_equal(np.asarray(compose_flows([flow])), flow)
    with pytest.raises(ValueError, match="at least one"):
        compose_flows([])


def test_composed_field_warps_like_the_fields_in_sequence():
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.random((1, SIZE, SIZE)), 4.0)
    image = ((image - image.min()) / (image.max() - image.min()))[..., None].astype(np.float32)
    flows = [smooth_field(seed) for seed in (1, 2, 3)]
    sequential = image
    for flow in flows:
        sequential = warp(sequential, flow)
    interior = (0, slice(6, -6), slice(6, -6))

    def error(field):
        return np.abs(warp(image, field) - sequential)[interior].max()

    # What is left is the blur of three linear resamplings of the image (intensities in [0, 1]).
    assert error(compose_flows(flows)) < 0.03
    # The tolerance separates the right composition from the two likely mistakes.
    assert error(sum(flows)) > 0.06
    assert error(compose_flows(flows[::-1])) > 0.06


def test_agrees_with_voxelmorph_compose_and_keras_wrapper():
    flows = [smooth_field(seed) for seed in (4, 5, 6)]
    ours = compose_flows(flows).numpy()
    # voxelmorph's compose takes the fields in the order they are applied to an image, without a batch axis,
    # and nests its look-ups instead of resampling the accumulated field: equal up to interpolation
    # (0.04 voxel here; the reversed order or the sum differ from it by over 1.4 voxels).
    theirs = vxm.utils.compose([tf.constant(f[0]) for f in flows]).numpy()
    interior = (slice(6, -6), slice(6, -6))
    assert np.abs(ours[0][interior] - theirs[interior]).max() < 0.1
    np.testing.assert_allclose(ComposeFlows()(flows).numpy(), ours, atol=1e-6)


def test_zero_padding_reads_zero_outside_and_blends_within_one_voxel():
    """``warp(padding="zeros")`` is PyTorch's grid_sample(padding_mode='zeros', align_corners=True): a shift of
    -0.5 voxel along the rows blends each row with the one above, and the first row with 0."""
    image = np.arange(1, 17, dtype=np.float32).reshape(1, 4, 4, 1)
    half = constant_field((-0.5, 0.0), (4, 4))
    zeros = warp_with_padding(image, half, "zeros")[0, ..., 0]
    np.testing.assert_allclose(zeros[0], 0.5 * image[0, 0, :, 0])
    np.testing.assert_allclose(zeros[1:], 0.5 * (image[0, :-1, :, 0] + image[0, 1:, :, 0]))
    border = warp_with_padding(image, half, "border")[0, ..., 0]
    np.testing.assert_allclose(border[0], image[0, 0, :, 0])  # voxelmorph's rule: the border voxel
    np.testing.assert_allclose(border[1:], zeros[1:])
    np.testing.assert_allclose(border, warp(image, half)[0, ..., 0])  # border is voxelmorph's SpatialTransformer
    far = warp_with_padding(image, constant_field((0.0, 6.0), (4, 4)), "zeros")
    np.testing.assert_array_equal(far, 0.0)  # entirely outside: 0, not the border column


def warp_with_padding(image, flow, padding):
    from gsmorph_tf.core.flows import Warp

    return Warp(padding)([tf.constant(image), tf.constant(flow)]).numpy()


def test_zero_padded_composition_in_3d():
    """With zeros, composing a field with a shift that leaves the volume reads 0 there (the field is not
    extended), where the border rule repeats the edge value."""
    shape = (6, 6, 6)
    first = constant_field((1.0, 0.0, 0.0), shape)
    shift = constant_field((0.0, 0.0, 2.0), shape)
    border = compose_flows([first, shift]).numpy()
    zeros = compose_flows([first, shift], padding="zeros").numpy()
    np.testing.assert_allclose(border[..., 0], 1.0)
    np.testing.assert_allclose(zeros[0, :, :, :4, 0], 1.0)  # samples inside: the first field
    np.testing.assert_allclose(zeros[0, :, :, 4:, 0], 0.0)  # samples 2 voxels past the edge: 0
    np.testing.assert_allclose(zeros[..., 2], 2.0)
    np.testing.assert_allclose(ComposeFlows("zeros")([first, shift]).numpy(), zeros)


@pytest.mark.parametrize("shape", [(12, 10), (6, 7, 5)])
def test_a_batch_warps_item_by_item_as_voxelmorphs_transformer(shape):
    """The warp of a batch of 3 (different images and fields) equals voxelmorph's transform on each item (border),
    and on each item padded with one voxel of zeros (zeros), in 2D and 3D."""
    rng = np.random.default_rng(1)
    images = rng.random((3, *shape, 2)).astype(np.float32)
    flows = rng.normal(0.0, 3.0, (3, *shape, len(shape))).astype(np.float32)
    pad = [(0, 0)] + [(1, 1)] * len(shape) + [(0, 0)]
    for padding in ("border", "zeros"):
        moved = flows_warp(tf.constant(images), tf.constant(flows), padding).numpy()
        for item in range(3):
            image, flow = images[item], flows[item]
            if padding == "zeros":
                image, flow = np.pad(image, pad[1:]), flow + 1.0
            expected = vxm.utils.transform(tf.constant(image), tf.constant(flow), interp_method="linear",
                                           indexing="ij").numpy()
            np.testing.assert_array_equal(moved[item], expected)  # the same arithmetic: bit for bit


def voxelmorph_batch_warp(images, flows):
    """What ``warp`` computed before (and voxelmorph's ``SpatialTransformer`` computes): its transform mapped over
    the batch with ``tf.map_fn``."""
    return tf.map_fn(lambda pair: vxm.utils.transform(pair[0], pair[1], interp_method="linear", indexing="ij"),
                     (images, flows), fn_output_signature=images.dtype)


@pytest.mark.parametrize("shape", [(12, 10), (6, 7, 5)])
def test_the_batched_warp_has_voxelmorphs_gradients_traced_and_eager(shape):
    """The gradients of a loss of the moved batch with respect to the images and the fields equal those through
    voxelmorph's per-item transform (float round-off: the scatter of the image gradient sums in another order),
    eagerly and inside a traced function."""
    rng = np.random.default_rng(2)
    images = tf.constant(rng.random((2, *shape, 3)).astype(np.float32))
    flows = tf.constant(rng.normal(0.0, 2.5, (2, *shape, len(shape))).astype(np.float32))
    target = tf.constant(rng.random((2, *shape, 3)).astype(np.float32))

    def gradients(warp_fn):
        with tf.GradientTape() as tape:
            tape.watch([images, flows])
            loss = tf.reduce_sum((warp_fn(images, flows) - target) ** 2)
        return tape.gradient(loss, [images, flows])

    expected = gradients(voxelmorph_batch_warp)
    ours = lambda i, f: flows_warp(i, f, "border")
    for got in (gradients(ours), tf.function(lambda: gradients(ours))()):
        np.testing.assert_allclose(got[0].numpy(), expected[0].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got[1].numpy(), expected[1].numpy(), rtol=1e-5, atol=1e-5)


def test_the_batched_warp_needs_static_sizes():
    from gsmorph_tf.core.flows import interpolate_linear

    spec = tf.TensorSpec([None, None, 8, 1], tf.float32)
    traced = tf.function(lambda image, flow: interpolate_linear(image, flow))
    with pytest.raises(ValueError, match=r"static spatial shapes and a 2-channel field: volume \(None, None, 8, 1\)"):
        traced.get_concrete_function(spec, tf.TensorSpec([None, 8, 8, 2], tf.float32))
    with pytest.raises(ValueError, match="2-channel field"):
        interpolate_linear(tf.zeros((1, 4, 4, 1)), tf.zeros((1, 4, 4, 3)))


@pytest.mark.parametrize("shape", [(6, 10), (4, 6, 8)])
@pytest.mark.parametrize("factor", [2, 4, 0.5, 1])
def test_the_batched_rescale_is_voxelmorphs_rescale_transform(shape, factor):
    """RescaleFlow (ULAE-net's coarse fields to full size) equals voxelmorph's RescaleTransform on a batch of 3:
    bit for bit eagerly, to float round-off inside a traced function (grappler may fold the arithmetic another
    way), with the same gradient, for upsampling, downsampling and the identity, in 2D and 3D."""
    from gsmorph_tf.core.flows import RescaleFlow

    rng = np.random.default_rng(3)
    flows = tf.constant(rng.normal(0.0, 2.0, (3, *shape, len(shape))).astype(np.float32))
    theirs, ours = vxm.layers.RescaleTransform(factor), RescaleFlow(factor)

    def run(layer):
        with tf.GradientTape() as tape:
            tape.watch(flows)
            rescaled = layer(flows)
            loss = tf.reduce_sum(rescaled ** 2)
        return rescaled, tape.gradient(loss, flows)

    expected, expected_gradient = run(theirs)
    assert expected.shape[1:-1] == tuple(int(n * factor) for n in shape)
    assert tuple(ours.compute_output_shape((None, *shape, len(shape)))[1:]) == expected.shape[1:]
    got, gradient = run(ours)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
    # Each input voxel's gradient sums up to factor^ndim contributions, in another order than voxelmorph's.
    np.testing.assert_allclose(gradient.numpy(), expected_gradient.numpy(), rtol=1e-4, atol=1e-5)
    got, gradient = tf.function(lambda: run(ours))()
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gradient.numpy(), expected_gradient.numpy(), rtol=1e-4, atol=1e-5)
    assert RescaleFlow.from_config(ours.get_config()).factor == factor


def test_the_batched_rescale_needs_a_static_shape():
    from gsmorph_tf.core.flows import rescale_flow

    traced = tf.function(lambda flow: rescale_flow(flow, 2))
    with pytest.raises(ValueError, match=r"static spatial shape and a 2-channel field, got \(None, None, 8, 2\)"):
        traced.get_concrete_function(tf.TensorSpec([None, None, 8, 2], tf.float32))


def test_unknown_padding_is_named():
    from gsmorph_tf.core.flows import warp as warp_fn

    with pytest.raises(ValueError, match="'reflect'.*border, zeros"):
        warp_fn(tf.zeros((1, 4, 4, 1)), tf.zeros((1, 4, 4, 2)), padding="reflect")
