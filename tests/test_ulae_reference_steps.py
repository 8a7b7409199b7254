"""The ULAE port against the ULAE-net reference code (PyTorch): its weights in our network, its pairs.

``tests/data/ulae_reference_steps.npz`` holds what the reference computed (``benchmarks/reference_ulae_steps.py``,
which says how it was run; regenerate with ``python benchmarks/reference_ulae_steps.py --ref /path/to/ULAE-net``
under a Python with PyTorch), among it its initial weights at 2 base channels and its parameter names and shapes
at 4 and 16.
"""
import ulae_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

import numpy as np
import pytest

from ulae_tf.networks import build_ulae_net
from ulae_tf.reference import (GRID_BUFFERS, load_reference_weights, reference_variables, smooth_pairs,
                               to_reference_layout)

DATA = os.path.join(os.path.dirname(__file__), "data", "ulae_reference_steps.npz")


@pytest.fixture(scope="module")
def reference():
    with np.load(DATA) as data:
        return {key: data[key] for key in data.files}


def tensors(reference, prefix):
    """``{reference name: array}`` of the tensors stored under ``prefix`` (e.g. ``"initial:"``)."""
    return {key[len(prefix):]: value for key, value in reference.items() if key.startswith(prefix)}


def reference_network(reference):
    """The port at the reference's size and width, zero padding, with the reference's initial weights."""
    shape = tuple(int(s) for s in reference["shape"])
    network = build_ulae_net(shape, base_channels=int(reference["base_channels"]), warp_padding="zeros")
    return load_reference_weights(network, tensors(reference, "initial:"))


@pytest.fixture(scope="module")
def initial_network(reference):
    """:func:`reference_network`, built once; a test that changes its weights puts them back."""
    return reference_network(reference)


@pytest.fixture(scope="module")
def pairs(reference):
    return smooth_pairs(len(reference["pair_sums"]), tuple(int(s) for s in reference["shape"]),
                        int(reference["seed"]))


def test_the_pairs_are_the_ones_the_reference_trained_on(reference, pairs):
    np.testing.assert_array_equal(pairs.astype(np.float64).sum(axis=(2, 3, 4)), reference["pair_sums"])
    assert pairs.min() == 0.0 and pairs.max() == 1.0 and pairs.dtype == np.float32


def test_our_layers_hold_the_reference_tensors_at_every_width(reference, initial_network):
    """Names, order and shapes of the reference's ``named_parameters()`` at the file's width (2 base channels),
    4 and 16 (the paper's); at 16 that is the reference's 1,109,241 parameters."""
    base = int(reference["base_channels"])
    widths = {int(width): table for width, table in json.loads(str(reference["parameter_shapes"])).items()}
    widths[base] = [[name, list(value.shape)] for name, value in tensors(reference, "initial:").items()]
    assert {base, 4, 16} <= set(widths)
    for width, table in widths.items():
        network = initial_network if width == base else build_ulae_net((32, 32, 32), base_channels=width)
        ours = [[names[0], list(to_reference_layout(np.zeros(variable.shape)).shape)]
                for names, variable in reference_variables(network)]
        assert ours == table, width
        assert len(ours) == len(network.trainable_variables)
    assert sum(np.prod(shape) for _, shape in widths[16]) == 1_109_241


def test_loading_takes_the_state_dict_form_and_refuses_a_mismatch(reference, initial_network):
    initial, network = tensors(reference, "initial:"), initial_network
    kernel = network.get_layer("encoder").get_layer("moving_down2_rate6_conv").kernel.numpy()  # mec2.ab12
    np.testing.assert_array_equal(kernel, initial["acc1.mec2.ab12.weight"].transpose(2, 3, 4, 1, 0))
    # state_dict(): the encoder under every step, and the transformers' grids.
    grid = np.zeros((1, 3, 32, 32, 32), np.float32)
    full = dict(initial, **{name: grid for name in GRID_BUFFERS})
    full.update((name.replace("acc1.", "acc%d." % k), value) for name, value in initial.items()
                for k in (2, 3) if name.startswith(("acc1.mec", "acc1.fec", "acc1.fusion")))
    assert len(full) == 220  # the reference's state_dict at any width
    before = network.get_weights()
    load_reference_weights(network, full)
    assert all(np.array_equal(a, b) for a, b in zip(before, network.get_weights()))

    def refused(match, **changes):
        state = dict(full, **changes)
        state = {name: value for name, value in state.items() if value is not None}
        with pytest.raises(ValueError, match=match):
            load_reference_weights(network, state)

    refused(r"no tensor acc2\.dc2\.0\.weight \(our .*dec2_conv/kernel", **{"acc2.dc2.0.weight": None})
    refused(r"state\['acc3\.output\.bias'\] has shape \(4,\); our .*flow_head/bias.* needs \(3,\)",
            **{"acc3.output.bias": np.zeros(4, np.float32)})
    refused(r"state\['acc3\.fec1\.0\.weight'\] differs from state\['acc1\.fec1\.0\.weight'\]",
            **{"acc3.fec1.0.weight": initial["acc1.fec1.0.weight"] + 1.0})
    refused(r"1 tensor\(s\) that the ULAE reference does not have: acc1\.dc2\.0\.weight$",
            **{"acc1.dc2.0.weight": initial["acc2.dc2.0.weight"]})
    refused(r"state\['transformer\.grid'\] has shape \(1, 3, 16, 16, 16\)",
            **{"transformer.grid": np.zeros((1, 3, 16, 16, 16), np.float32)})
    with pytest.raises(ValueError, match="the ULAE reference code is 3D"):
        load_reference_weights(build_ulae_net((32, 32), base_channels=2), initial)
