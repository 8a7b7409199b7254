"""Tests of gsmorph_tf.evaluate.baselines: SimpleITK Demons and ANTsPy SyN in the project's flow convention."""
import gsmorph_tf  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

import sys

import numpy as np
import pytest
import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf.data.subjects import SubjectPairs
from gsmorph_tf.evaluate import baselines, evaluation, metrics

SIZE = 48
ROWS, COLS = np.mgrid[:SIZE, :SIZE].astype(np.float32)
FAST = {"demons": {"iterations": 50}, "syn": {"iterations": (20, 10, 0)}}


def _blob(row, col, sigma=5.0):
    return np.exp(-((ROWS - row) ** 2 + (COLS - col) ** 2) / (2 * sigma ** 2)).astype(np.float32)


def _warp(image, flow):
    """``moving(x + flow(x))`` with voxelmorph's linear SpatialTransformer ('ij'): the learned methods' warp."""
    moved = vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij")(
        [tf.constant(image[None, ..., None], tf.float32), tf.constant(flow[None], tf.float32)])
    return moved.numpy()[0, ..., 0]


def _smooth_pair():
    """A heart-like image (bright disk in a dark ring, a second blob) and a smooth, non-symmetric warp of it.

    The known displacement (pixels) is up to ~2.2 along rows and ~1.5 along cols, varying differently along
    each axis, so swapping or negating the flow channels changes the warped image.
    """
    radius = np.hypot(ROWS - 22, COLS - 25)
    moving = (np.clip(10 - radius, 0, 1) * 0.9 + np.clip(radius - 12, 0, 1) * np.clip(16 - radius, 0, 1) * 0.5
              + 0.6 * _blob(36, 12, 3)).astype(np.float32)
    known = np.stack([2.2 * np.sin(2 * np.pi * COLS / SIZE) * np.exp(-((ROWS - 24) / 20) ** 2),
                      1.5 * np.cos(2 * np.pi * ROWS / SIZE)], axis=-1).astype(np.float32)
    return moving, _warp(moving, known), known


@pytest.fixture(scope="module")
def smooth_pair():
    return _smooth_pair()


@pytest.fixture(scope="module")
def registered(smooth_pair):
    """Each method's ``(moved, flow)`` on the smooth pair (computed once for the tests below)."""
    moving, fixed, _ = smooth_pair
    return {method: baselines.METHODS[method](moving, fixed, **FAST[method]) for method in baselines.METHODS}


# --- the flow convention ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(baselines.METHODS))
def test_flow_reproduces_library_warp(method, smooth_pair, registered):
    moving, _, _ = smooth_pair
    moved, flow = registered[method]
    assert moved.shape == (SIZE, SIZE) and flow.shape == (SIZE, SIZE, 2)
    assert moved.dtype == flow.dtype == np.float32
    # Compare where the sampled point stays inside the image: outside, ITK fills 0 and voxelmorph repeats the
    # edge pixel.
    inside = ((ROWS + flow[..., 0] >= 0) & (ROWS + flow[..., 0] <= SIZE - 1)
              & (COLS + flow[..., 1] >= 0) & (COLS + flow[..., 1] <= SIZE - 1))
    assert inside.mean() > 0.9
    assert np.abs(_warp(moving, flow) - moved)[inside].max() < 1e-4
    # The comparison tells conventions apart: (col, row) channels or the inverse direction would not match.
    assert np.abs(_warp(moving, flow[..., ::-1]) - moved)[inside].max() > 0.05
    assert np.abs(_warp(moving, -flow) - moved)[inside].max() > 0.05


@pytest.mark.parametrize("method", sorted(baselines.METHODS))
def test_translation_gives_flow_pointing_back_to_the_moving_image(method):
    # Fixed = moving shifted by +3 rows, +2 cols: fixed(x) = moving(x - (3, 2)), so moved(x) = moving(x + flow(x))
    # matches fixed when flow = (-3, -2).
    moving, fixed = _blob(22, 22), _blob(25, 24)
    moved, flow = baselines.METHODS[method](moving, fixed)
    on_blob = fixed > 0.5
    np.testing.assert_allclose(flow[on_blob].mean(axis=0), (-3.0, -2.0), atol=0.5)
    assert metrics.mse(moved, fixed) < 0.05 * metrics.mse(moving, fixed)


# --- quality on a smooth known deformation ----------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(baselines.METHODS))
def test_improves_mse_over_identity(method, smooth_pair, registered):
    moving, fixed, _ = smooth_pair
    moved, _ = registered[method]
    assert metrics.mse(moved, fixed) < 0.25 * metrics.mse(moving, fixed)


def test_demons_field_on_smooth_case_does_not_fold(smooth_pair, registered):
    _, _, known = smooth_pair
    _, flow = registered["demons"]
    assert np.abs(flow).max() > 1.0     # a real deformation, not the identity
    # Closer to the known field than the identity is, on the heart (flat regions leave demons little to go by).
    heart = np.hypot(ROWS - 22, COLS - 25) < 14
    assert np.abs(flow - known)[heart].mean() < 0.6 * np.abs(known)[heart].mean()
    assert metrics.negative_jacobian_percent(flow) == 0.0


# --- stacks and evaluation --------------------------------------------------------------------------------

def test_register_stack_is_slice_by_slice(smooth_pair):
    moving, fixed, _ = smooth_pair
    stack_moving, stack_fixed = np.stack([fixed, moving]), np.stack([moving, fixed])
    moved, flow = baselines.register_stack("demons", stack_moving, stack_fixed, iterations=20)
    assert moved.shape == (2, SIZE, SIZE) and flow.shape == (2, SIZE, SIZE, 2)
    single_moved, single_flow = baselines.register_demons(moving, fixed, iterations=20)
    np.testing.assert_allclose(moved[1], single_moved, atol=1e-6)
    np.testing.assert_allclose(flow[1], single_flow, atol=1e-6)
    assert np.abs(flow[0] + flow[1]).mean() < np.abs(flow[1]).mean()   # the reverse pair moves the other way


def test_register_stack_rejects_unknown_method_and_bad_shapes():
    stack = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="unknown baseline method 'elastix'.*'demons', 'syn'"):
        baselines.register_stack("elastix", stack, stack)
    with pytest.raises(ValueError, match=r"\(2, 8, 8\) and \(2, 8, 7\)"):
        baselines.register_stack("demons", stack, stack[:, :, :7])


def test_register_pair_rejects_bad_input():
    image = np.zeros((8, 8), np.float32)
    with pytest.raises(ValueError, match=r"moving \(1, 8, 8\) and fixed \(8, 8\)"):
        baselines.register_demons(image[None], image)
    bad = image.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="fixed image holds NaN"):
        baselines.register_syn(image, bad)


def test_baseline_is_scored_like_a_network(smooth_pair):
    moving, fixed, known = smooth_pair
    # Labels: a disk in the moving image, warped by the known field for the fixed one (same named structures).
    labels = {"LV": 3, "Myo": 2, "RV": 1}
    moving_labels = np.where(np.hypot(ROWS - 22, COLS - 25) < 8, labels["LV"], 0).astype(np.int32)
    moving_labels[np.hypot(ROWS - 36, COLS - 12) < 4] = labels["RV"]
    moving_labels[(np.hypot(ROWS - 22, COLS - 25) >= 8) & (np.hypot(ROWS - 22, COLS - 25) < 11)] = labels["Myo"]
    fixed_labels = evaluation.warp_labels(moving_labels[None], known[None])[0]
    pairs = SubjectPairs("s1", moving[None], fixed[None], moving_labels[None], fixed_labels[None],
                         (8.0, 1.5, 1.5), labels)
    row, = evaluation.evaluate_predictor(
        lambda m, f: baselines.register_stack("demons", m, f, iterations=50), [pairs])
    initial, = evaluation.evaluate_identity([pairs])
    assert row["subject"] == "s1"
    assert row["dice_LV"] > initial["dice_LV"] and row["dice_mean"] > initial["dice_mean"] > 50
    assert row["mse"] < initial["mse"]
    assert row["njd"] == 0.0


# --- the optional extra -----------------------------------------------------------------------------------

@pytest.mark.parametrize("module, package, method", [("SimpleITK", "SimpleITK", "demons"),
                                                     ("ants", "antspyx", "syn")])
def test_missing_library_names_the_extra(monkeypatch, module, package, method):
    monkeypatch.setitem(sys.modules, module, None)   # makes `import module` raise ImportError
    image = np.zeros((8, 8), np.float32)
    expected = rf"needs {package} \(Python module '{module}'\).*install the baselines extra with: .*pip install -e \"\.\[baselines\]\""
    with pytest.raises(ImportError, match=expected):
        baselines.METHODS[method](image, image)
    with pytest.raises(ImportError, match=expected):  # the up-front check a long run makes first
        baselines.require(method)
