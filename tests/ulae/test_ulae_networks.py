"""ULAE-net: reference size, outputs and their wiring, gradients through the shared encoder, training."""
import ulae_tf  # noqa: F401  (legacy Keras before TensorFlow)

import functools

import numpy as np
import pytest
import tensorflow as tf
import voxelmorph as vxm
from scipy import ndimage

from gsmorph_tf.core.flows import compose_flows
from gsmorph_tf.core.losses import smoothness_loss
from gsmorph_tf.core.model import GradientSurgeryModel
from gsmorph_tf.models.networks import count_trainable_parameters
from ulae_tf.losses import multi_window_ncc
from ulae_tf.networks import build_ulae_net

SHAPE_2D = (32, 32)
STEPS = (1, 2, 3)


@functools.lru_cache(maxsize=None)
def shared_network(inshape):
    """A network built once per shape (a build takes seconds); see :func:`network_2d` to change weights."""
    return build_ulae_net(inshape)


@pytest.fixture
def network_2d():
    """The shared 2D network, its initial weights put back after the test so that the test may change them."""
    network = shared_network(SHAPE_2D)
    weights = network.get_weights()
    yield network
    network.set_weights(weights)


def shifted_pair(shape=SHAPE_2D, batch=1, seed=0):
    """Blurred noise in [0, 1] and a copy shifted by 2 voxels along the first axis, ``[batch, *shape, 1]``."""
    rng = np.random.default_rng(seed)
    fixed = ndimage.gaussian_filter(rng.random((batch, *shape)), sigma=(0,) + (3.0,) * len(shape))
    fixed = ((fixed - fixed.min()) / (fixed.max() - fixed.min()))[..., None].astype(np.float32)
    return {"moving": np.roll(fixed, 2, axis=1), "fixed": fixed}


def decoder(network, step):
    return network.get_layer("step%d_decoder" % step)


def set_flow_heads(network, active_step, stddev, seed=0):
    """Give step ``active_step``'s flow head random weights ~ N(0, stddev) and zero the other heads, so those
    steps predict exactly zero displacement and pass no gradient to their decoders or the encoder."""
    rng = np.random.default_rng(seed)
    for step in STEPS:
        head = decoder(network, step).get_layer("flow_head")
        kernel, bias = head.get_weights()
        scale = stddev if step == active_step else 0.0
        head.set_weights([(scale * rng.standard_normal(kernel.shape)).astype(np.float32), np.zeros_like(bias)])


def final_loss_gradients(network, batch, variables):
    """Gradients of the paper's training loss (multi-window NCC on ``moved`` + L2 smoothness of ``flow``)."""
    similarity, smoothness = multi_window_ncc(), smoothness_loss("l2")
    with tf.GradientTape() as tape:
        moved, flow = network([batch["moving"], batch["fixed"]], training=True)[:2]
        loss = similarity(batch["fixed"], moved) + smoothness(flow)
    return tape.gradient(loss, variables)


def is_zero(gradient):
    return gradient is None or not np.any(gradient.numpy())


def test_trainable_parameters_match_the_reference_code():
    # The public reference code (shared encoder, one decoder per step) has 1,109,241 in 3D at 16 channels;
    # the count does not depend on the image size.
    assert count_trainable_parameters(shared_network((16, 16, 16))) == 1_109_241
    assert count_trainable_parameters(shared_network(SHAPE_2D)) == 388_806


@pytest.mark.parametrize("inshape", [SHAPE_2D, (16, 16, 16)])
def test_outputs_and_identity_at_initialisation(inshape):
    network = shared_network(inshape)
    ndim = len(inshape)
    assert network.input_names == ["moving", "fixed"]
    assert network.output_names == ["moved", "flow", "step1_moved", "step2_moved", "step3_moved",
                                    "step1_flow", "step2_flow", "step3_flow"]
    batch = shifted_pair(inshape, batch=2)
    outputs = network.predict(batch, verbose=0)
    image, field = (2, *inshape, 1), (2, *inshape, ndim)
    assert [o.shape for o in outputs] == [image, field] + [image] * 3 + [field] * 3
    # Flow heads ~ N(0, 1e-5), zero bias: the untrained network is (almost) the identity transform.
    moved, flow = outputs[:2]
    assert np.abs(flow).max() < 1e-2
    np.testing.assert_allclose(moved, batch["moving"], atol=1e-2)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="divisible by 16"):
        build_ulae_net((40, 32))
    with pytest.raises(ValueError, match="2D or 3D"):
        build_ulae_net((32,))


def test_outputs_are_the_steps_warps_and_their_composition(network_2d):
    network = network_2d
    # Heads large enough for displacements of about a voxel, so every relation below is tested for real.
    for step in STEPS:
        head = decoder(network, step).get_layer("flow_head")
        head.kernel.assign(tf.random.normal(head.kernel.shape, stddev=0.05, seed=step))
    batch = shifted_pair()
    moved, flow, *rest = network([batch["moving"], batch["fixed"]])
    step_moved, step_flows = rest[:3], rest[3:]
    for step_flow in step_flows:
        assert np.abs(step_flow.numpy()).max() > 0.3

    warp = vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij")
    encoder = network.get_layer("encoder")
    step_input = batch["moving"]
    for step, warped, step_flow, downsampling in zip(STEPS, step_moved, step_flows, (4, 2, 1)):
        # Step k registers the previous step's output (encoder and decoder alike) and warps it.
        e1, e2, e3, e4 = encoder([step_input, batch["fixed"]])
        coarse = decoder(network, step)([e4, e3, e2, e1][:step + 1] + [step_input, batch["fixed"]])
        expected = vxm.layers.RescaleTransform(downsampling)(coarse)
        np.testing.assert_allclose(step_flow.numpy(), expected.numpy(), atol=1e-5)
        np.testing.assert_allclose(warped.numpy(), warp([step_input, step_flow]).numpy(), atol=1e-5)
        step_input = warped
    np.testing.assert_allclose(flow.numpy(), compose_flows(step_flows).numpy(), atol=1e-5)
    np.testing.assert_allclose(moved.numpy(), warp([batch["moving"], flow]).numpy(), atol=1e-5)
    # (That one warp by the composed field matches the steps' warps in sequence is tested with smooth
    # fields in test_ulae_flows; these random heads give rough fields.)


def test_every_variable_gets_gradient_at_initialisation():
    network = shared_network(SHAPE_2D)
    variables = network.trainable_variables
    gradients = final_loss_gradients(network, shifted_pair(), variables)
    assert [v.name for v, g in zip(variables, gradients) if is_zero(g)] == []


@pytest.mark.parametrize("active_step", STEPS)
def test_gradient_reaches_the_shared_encoder_through_each_step(network_2d, active_step):
    # With the other two flow heads at zero, their steps output exactly zero displacement and contribute
    # exactly zero gradient: whatever reaches the encoder comes through step `active_step`'s own decoder and
    # its own call of the shared encoder. A step that used its own encoder copy, or stopped the gradient,
    # would leave the shared encoder with zero gradient here.
    network = network_2d
    set_flow_heads(network, active_step, stddev=1e-3)
    encoder = network.get_layer("encoder")
    decoders = {step: decoder(network, step).trainable_variables for step in STEPS}
    gradients = final_loss_gradients(network, shifted_pair(), {"encoder": encoder.trainable_variables,
                                                               "decoders": decoders})

    # Step k's decoder reads the skips of levels 4 down to 4 - k; the others get no gradient.
    unused_skips = {"skip%d_conv" % level for level in range(1, 4 - active_step)}
    encoder_gradients = {v.ref(): g for v, g in zip(encoder.trainable_variables, gradients["encoder"])}
    for layer in encoder.layers:
        for variable in layer.trainable_variables:
            gradient = encoder_gradients[variable.ref()]
            assert is_zero(gradient) == (layer.name in unused_skips), (active_step, variable.name)
    for step in STEPS:
        head = decoder(network, step).get_layer("flow_head").trainable_variables
        for variable, gradient in zip(decoders[step], gradients["decoders"][step]):
            if step == active_step or any(variable is h for h in head):
                # A zeroed head still gets gradient (that is how it leaves zero in training).
                assert not is_zero(gradient), (step, variable.name)
            else:
                assert is_zero(gradient), (step, variable.name)


def test_gradient_surgery_model_reads_moved_and_flow():
    network = shared_network(SHAPE_2D)
    model = GradientSurgeryModel(network, similarity=multi_window_ncc(), reg_penalty="l2", surgery="none",
                                 lam=1.0)
    batch = shifted_pair(batch=2)
    sim, reg = model.compute_losses(batch["moving"], batch["fixed"], training=False)
    moved, flow = network([batch["moving"], batch["fixed"]])[:2]
    np.testing.assert_allclose(sim.numpy(), multi_window_ncc()(batch["fixed"], moved).numpy(), rtol=1e-5)
    expected_reg = tf.reduce_mean(vxm.losses.Grad("l2").loss(None, flow)).numpy()
    np.testing.assert_allclose(reg.numpy(), expected_reg, rtol=1e-5)


@pytest.mark.parametrize("surgery", ["none", "layerwise"])
def test_fit_step_with_the_paper_loss(network_2d, surgery):
    network = network_2d
    model = GradientSurgeryModel(network, similarity=multi_window_ncc(), reg_penalty="l2", surgery=surgery,
                                 lam=1.0)
    # Eagerly: tracing this train_step (three encoder passes, two gradients) takes about a minute on two
    # CPU cores, and the step is the same Python code. (predict() above covers the graph-mode forward.)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-4), run_eagerly=True)
    before = [v.numpy().copy() for v in network.trainable_variables]
    data = tf.data.Dataset.from_tensor_slices(shifted_pair(batch=2)).batch(1)
    history = model.fit(data, epochs=1, verbose=0).history
    assert np.isfinite(history["sim_loss"][0]) and np.isfinite(history["reg_loss"][0])
    assert -1.75 <= history["sim_loss"][0] < 0.0  # the multi-window NCC's range
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, network.trainable_variables)]
    assert all(changed)
