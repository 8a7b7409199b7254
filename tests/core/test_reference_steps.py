"""The port's training step against the official code's (wulalago/GSMorph), step by step.

``tests/data/reference_steps.npz`` holds what the reference's own code did (``benchmarks/reference_steps.py``
under PyTorch; regenerate it with ``/path/to/torch-python benchmarks/reference_steps.py --ref /path/to/GSMorph``):
its seeded initial weights (features 4, 4, 8, 8, 8 at 32x32), 20 batches of 4 pairs, and per method
(VoxelMorph-l, GSMorph, GS-PCGrad) the step-1 gradients, every step's losses, the weights after steps 1 and 20
and a flow in inference mode, at learning rate 1e-4. These tests load those weights into the port's network,
train it with ``GradientSurgeryModel`` on the same batches and compare (helpers in
``benchmarks/step_comparison.py``; the README's "Step by step" gives the measured differences).

Tolerances, in the units the comparison prints. The tightest run is the port with the reference's float32
rounding of the sampling locations (``GridSampleRounding``): it takes the same step 1 to 1e-4 of each
gradient. After 20 steps the two differ as much as either differs from itself under round-off (the
reference with its weights nudged by one ulp, the port on another convolution backend: up to 0.26 lr RMS and
0.21 of a tensor's update), which the 20-step tolerances allow with a margin; a difference of the method
(border padding) shows at step 1 as a gradient off by more than its own size and a flipped first step.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import os
import sys

import numpy as np
import pytest

from conftest import ROOT
from gsmorph_tf.models.networks import build_gsmorph_unet
from gsmorph_tf.models.reference_weights import (load_reference_weights, port_variable, reference_features,
                                                 reference_names, reference_to_port)

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import step_comparison as steps  # noqa: E402

METHODS = tuple(steps.METHODS)
#: Step-1 gradients with the reference's rounding: relative difference per tensor (measured <= 2e-5).
GRADIENT_TOLERANCE = 1e-4
#: After 20 steps (measured with the rounding: losses <= 3.5e-5 and 7.6e-4, RMS <= 0.11 lr, update <= 0.21,
#: statistics <= 1.5e-3, flow <= 3.7e-4 px; the port as it trains, VoxelMorph-l: 4.1e-6, 3.7e-3, 0.25 lr,
#: 0.16, 1.1e-3, 9.5e-6 px).
TWENTY_STEPS = {"sim": 1e-4, "reg": 1e-2, "wN": 0.6, "uN": 0.5, "stats": 5e-3, "flow": 2e-3}


@pytest.fixture(scope="module")
def reference():
    return steps.ReferenceSteps()


def test_the_file_records_the_official_code_at_the_stated_settings(reference):
    assert reference.commit == "6ab180d4b785924ceb82db11cfbf471aa657ecb5"
    assert reference.torch_version.startswith("2.")
    assert (reference.features, reference.size, reference.steps, reference.lr) == ((4, 4, 8, 8, 8), 32, 20, 1e-4)
    assert reference.moving.shape == reference.fixed.shape == (20, 4, 32, 32, 1)
    assert 0.0 <= reference.moving.min() and reference.moving.max() <= 1.0
    assert reference.moving[:, :, 0].mean() > 0.1  # not black at the border: the padding rule matters


def test_reference_weights_fill_every_tensor_of_the_network(reference):
    state = reference.tensors("initial_state")
    network = build_gsmorph_unet((32, 32), features=reference_features(state), warp_padding="zeros")
    load_reference_weights(network, state)
    mapped = reference_to_port(state)
    assert len(mapped) == len(network.weights) == 75 + 36  # 75 trainable tensors, 2 running statistics per BN
    assert {port_variable(network, key).ref() for key in mapped} == {w.ref() for w in network.weights}
    for key, value in mapped.items():
        np.testing.assert_array_equal(port_variable(network, key).numpy(), value)


def test_kernels_are_transposed_and_decoder_inputs_swapped():
    features = (2, 3, 3, 3, 3)
    state = _zero_reference_state(features)
    state["feat_extractor.init_conv.weight"][1, 0, 2, 0] = 7.0         # out 1, in 0 (moving), row 2, column 0
    state["feat_extractor.up_conv1.conv1.weight"][1, 0, 0, 2] = 5.0    # in 0: the skip (2 channels), first
    state["feat_extractor.up_conv1.conv1.weight"][0, 2, 1, 1] = 3.0    # in 2: the upsampled input's first
    port = reference_to_port(state)
    assert port["initial_conv/kernel"].shape == (3, 3, 2, 2) and port["initial_conv/kernel"][2, 0, 0, 1] == 7.0
    kernel = port["dec0_conv1/kernel"]                                  # port input: 3 upsampled, then 2 skip
    assert kernel.shape == (3, 3, 5, 2) and kernel[0, 2, 3, 1] == 5.0 and kernel[1, 1, 0, 0] == 3.0
    assert np.count_nonzero(kernel) == 2


def test_reference_weights_refuse_what_does_not_fit(reference):
    state = reference.tensors("initial_state")
    network = build_gsmorph_unet((32, 32), features=(4, 4, 8, 8, 16))
    with pytest.raises(ValueError, match="enc4_conv1/kernel: the reference's tensor has shape .3, 3, 8, 8.*"
                                         "the network's .3, 3, 8, 16."):
        load_reference_weights(network, state)
    with pytest.raises(ValueError, match="no counterpart in the port's network: feat_extractor.extra.weight"):
        reference_to_port(dict(state, **{"feat_extractor.extra.weight": np.zeros(3)}))
    with pytest.raises(ValueError, match="lacks flow.bias"):
        load_reference_weights(network, {k: v for k, v in state.items() if k != "flow.bias"})
    with pytest.raises(ValueError, match="not a GSMorph reference state_dict"):
        reference_features({"flow.weight": np.zeros((2, 4, 3, 3))})


@pytest.mark.parametrize("method", METHODS)
def test_step_one_gradients_match_with_the_references_rounding(reference, method):
    model = steps.training_model(steps.port_network(reference, grid_sample_rounding=True), method, reference)
    sim, reg, applied = steps.first_step_gradients(model, reference)
    for ours, recorded in ((sim, "grad_sim"), (reg, "grad_reg"), (applied, method + "/grad_applied")):
        theirs = reference.port(recorded)
        assert steps.largest_relative_difference(ours, theirs) < GRADIENT_TOLERANCE, recorded
        for key in filter(steps.pre_batchnorm_bias, theirs):   # round-off on both sides
            assert np.abs(ours[key]).max() < 1e-9 and np.abs(theirs[key]).max() < 1e-9, key


def test_step_one_gradients_of_the_port_as_it_trains(reference):
    """Without the emulated rounding the smoothness gradient is the same; the similarity gradient differs by a
    few % (the flow at initialisation is ~1e-5 px, within grid_sample's rounding of a pixel centre, where the
    bilinear derivative is one-sided); with border padding it differs by more than itself."""
    sim, reg, _ = steps.first_step_gradients(steps.training_model(steps.port_network(reference), "none", reference),
                                             reference)
    assert steps.largest_relative_difference(reg, reference.port("grad_reg")) < GRADIENT_TOLERANCE
    assert 1e-3 < steps.largest_relative_difference(sim, reference.port("grad_sim")) < 0.1
    border = steps.port_network(reference, warp_padding="border", grid_sample_rounding=True)
    sim, _, _ = steps.first_step_gradients(steps.training_model(border, "none", reference), reference)
    assert steps.largest_relative_difference(sim, reference.port("grad_sim")) > 1.0


@pytest.mark.parametrize("method", METHODS)
def test_twenty_steps_match_with_the_references_rounding(reference, method):
    model = steps.training_model(steps.port_network(reference, grid_sample_rounding=True), method, reference)
    figures = steps.compare(steps.train_port(model, reference), reference, method)
    assert figures["w1"] < 0.01   # the first step: the same to 1 % of a step on every weight
    for name, tolerance in TWENTY_STEPS.items():
        assert figures[name] < tolerance, (name, figures)


def test_twenty_steps_of_the_port_as_it_trains(reference):
    model = steps.training_model(steps.port_network(reference), "none", reference)
    figures = steps.compare(steps.train_port(model, reference), reference, "none")
    assert figures["w1"] < 0.2    # the few-% step-1 difference moves weights whose gradient is near Adam's epsilon
    for name, tolerance in TWENTY_STEPS.items():
        assert figures[name] < tolerance, (name, figures)


def _zero_reference_state(features):
    """A reference ``state_dict`` of zeros with encoder widths ``features``, shaped from the port's network."""
    network = build_gsmorph_unet((16, 16), features=features)
    state = {}
    for name, layer, attribute, _ in reference_names(features):
        shape = tuple(getattr(network.get_layer(layer), attribute).shape)
        state[name] = np.zeros((shape[3], shape[2], shape[0], shape[1]) if attribute == "kernel" else shape, np.float32)
    return state
