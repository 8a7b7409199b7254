"""Colour encodings of the TensorBoard registration panels, checked pixel by pixel."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np

from gsmorph_tf.train.monitoring import flow_to_rgb, jacobian_to_rgb, registration_panels


def test_flow_colour_encodes_direction_and_magnitude():
    flow = np.zeros((2, 2, 2), np.float32)
    flow[0, 0] = (0.0, 2.0)   # along +columns: hue 0 = red, full brightness (the largest)
    flow[0, 1] = (0.0, 1.0)   # same direction, half the magnitude
    rgb = flow_to_rgb(flow)
    np.testing.assert_allclose(rgb[0, 0], (1.0, 0.0, 0.0))
    np.testing.assert_allclose(rgb[0, 1], (0.5, 0.0, 0.0))
    np.testing.assert_allclose(rgb[1, 1], (0.0, 0.0, 0.0))  # no displacement: black


def test_jacobian_map_marks_folding_red():
    det = np.array([[1.0, 0.0], [-0.5, 4.0]])
    rgb = jacobian_to_rgb(det)
    np.testing.assert_allclose(rgb[0, 0], (0.5, 0.5, 0.5))
    np.testing.assert_allclose(rgb[0, 1], (1.0, 0.0, 0.0))
    np.testing.assert_allclose(rgb[1, 0], (1.0, 0.0, 0.0))
    np.testing.assert_allclose(rgb[1, 1], (1.0, 1.0, 1.0))


def test_panels_of_a_3d_pair_show_the_middle_slice():
    rng = np.random.default_rng(0)
    volume = rng.random((6, 8, 10)).astype(np.float32)
    panels = registration_panels(volume, volume, volume, np.zeros((6, 8, 10, 3), np.float32))
    assert set(panels) == {"fixed", "moving", "moved", "difference", "flow", "jacobian"}
    assert panels["fixed"].shape == (8, 10, 1) and panels["flow"].shape == (8, 10, 3)
    np.testing.assert_allclose(panels["moving"][..., 0], volume[3])
    np.testing.assert_allclose(panels["jacobian"], 0.5)  # identity: det 1 everywhere
