"""Tests of gsmorph_tf.data.brain: the MNI152 template, random fields, the known-answer pairs, the split."""
import sys

import gsmorph_tf  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

import numpy as np
import pytest
import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf.data import brain
from gsmorph_tf.data.brain import (BRAIN_LABELS, load_brain, load_mni152, make_brain_pairs, random_smooth_field,
                                   warp_template)
from gsmorph_tf.data.pipeline import make_dataset
from gsmorph_tf.data.subjects import split_subjects
from gsmorph_tf.evaluate import metrics
from gsmorph_tf.evaluate.evaluation import warp_labels
from gsmorph_tf.extras import MissingExtraError

SMALL = (32, 40, 32)
DEFAULT = (80, 96, 80)
# Extent of the template's brain (T1 > 0.2) in the shipped 1 mm MNI152 image, voxels = mm, per axis.
BRAIN_EXTENT_MM = (145, 181, 155)


def _warp_linear(image, flow):
    """``image(x + flow(x))`` for one ``[D, H, W]`` image and ``[D, H, W, 3]`` flow, voxelmorph, linear."""
    return vxm.utils.transform(tf.constant(image[..., None], tf.float32), tf.constant(flow, tf.float32),
                               interp_method="linear", indexing="ij").numpy()[..., 0]


def _dice(labels_a, labels_b):
    return metrics.dice_per_structure(labels_a, labels_b, BRAIN_LABELS)


@pytest.fixture(scope="module")
def default_pairs():
    """Two pairs at the default grid and displacement (about 3 s)."""
    return make_brain_pairs(2, DEFAULT, max_displacement=8.0, seed=3)


# --- load_mni152 ------------------------------------------------------------------------------------------

def test_template_shapes_labels_and_intensities():
    t1, labels, mask, spacing = load_mni152(SMALL)
    assert t1.shape == labels.shape == mask.shape == SMALL
    assert (t1.dtype, labels.dtype, mask.dtype) == (np.float32, np.int32, bool)
    assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
    assert 0.0 <= t1.min() and t1.max() == pytest.approx(1.0)
    np.testing.assert_array_equal(mask, labels > 0)
    assert np.all(t1[~mask] == 0)
    # T1 contrast: CSF darker than grey matter, grey darker than white.
    csf, gm, wm = (t1[labels == BRAIN_LABELS[name]].mean() for name in ("CSF", "GM", "WM"))
    assert csf < gm < wm


def test_template_spacing_is_isotropic_and_brain_fills_90_percent_of_the_tightest_axis():
    _, _, mask, spacing = load_mni152(SMALL)
    # Isotropic zoom set by the tightest axis: W, 155 mm into 0.9 * 32 voxels (X: 145 / 28.8, H: 181 / 36).
    assert spacing == pytest.approx((155 / 28.8,) * 3)
    extent = [np.ptp(np.nonzero(mask)[axis]) + 1 for axis in range(3)]
    for axis in range(3):
        # The resampled brain keeps its physical size (to within a voxel) and does not touch the border.
        assert abs(extent[axis] * spacing[axis] - BRAIN_EXTENT_MM[axis]) <= spacing[axis]
        index = np.nonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        assert index.min() >= 1 and index.max() <= SMALL[axis] - 2


def test_missing_nilearn_names_the_extra(monkeypatch):
    brain._template_1mm.cache_clear()
    monkeypatch.setitem(sys.modules, "nilearn", None)
    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)  # also when imported earlier
    with pytest.raises(MissingExtraError, match=r'the brain task .*needs nilearn.*pip install -e "\.\[brain\]"'):
        load_mni152(SMALL)


# --- random_smooth_field ----------------------------------------------------------------------------------

def test_random_field_has_the_requested_largest_displacement_and_is_seeded():
    field = random_smooth_field((24, 28, 20), 3.5, 4.0, np.random.default_rng(7))
    assert field.shape == (24, 28, 20, 3) and field.dtype == np.float32
    assert np.linalg.norm(field, axis=-1).max() == pytest.approx(3.5, abs=1e-5)
    np.testing.assert_array_equal(field, random_smooth_field((24, 28, 20), 3.5, 4.0, np.random.default_rng(7)))
    assert not np.allclose(field, random_smooth_field((24, 28, 20), 3.5, 4.0, np.random.default_rng(8)))


def test_random_field_smoothness_is_the_gaussian_sigma():
    # Gaussian-blurred white noise has autocorrelation exp(-lag^2 / (4 sigma^2)): 0.78 at lag = sigma.
    sigma = 3
    field = random_smooth_field((48, 48, 48), 3.0, sigma, np.random.default_rng(0))
    for axis in range(3):
        a = np.moveaxis(field, axis, 0)
        corr = (a[sigma:] * a[:-sigma]).sum() / np.sqrt((a[sigma:] ** 2).sum() * (a[:-sigma] ** 2).sum())
        assert corr == pytest.approx(np.exp(-0.25), abs=0.05)


# --- the known answer -------------------------------------------------------------------------------------

def test_warping_moving_by_the_true_flow_gives_fixed_exactly_for_a_linear_image():
    # Linear interpolation is exact on a ramp, so warping twice (moving, then by u) must equal the single
    # warp by compose_flows([w, u]) wherever no sample leaves the grid (2 * 2.5 + 1 voxels from the border).
    shape = (24, 24, 24)
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in shape), indexing="ij"), axis=-1)
    ramp = (grid @ np.array([0.01, 0.02, 0.03])).astype(np.float32)
    rng = np.random.default_rng(1)
    w, u = (random_smooth_field(shape, 2.5, 4.0, rng) for _ in range(2))
    moving, fixed, _, _ = warp_template(ramp, np.zeros(shape, np.int32), w, u)
    inner = (slice(6, -6),) * 3
    np.testing.assert_allclose(moving[inner], (ramp + (w @ np.array([0.01, 0.02, 0.03])))[inner], atol=1e-5)
    np.testing.assert_allclose(_warp_linear(moving, u)[inner], fixed[inner], atol=1e-4)
    # The other order of composition is a different transform, far outside that tolerance.
    _, swapped, _, _ = warp_template(ramp, np.zeros(shape, np.int32), u, w)
    assert np.abs(_warp_linear(moving, u) - swapped)[inner].max() > 0.01


def test_noise_free_template_pair_is_matched_by_the_true_flow():
    t1, labels, _, _ = load_mni152(DEFAULT)
    rng = np.random.default_rng(2)
    w, u = (random_smooth_field(DEFAULT, 8.0, 12.0, rng) for _ in range(2))
    moving, fixed, _, fixed_labels = warp_template(t1, labels, w, u)
    brain_voxels = fixed_labels > 0
    registered = np.abs(_warp_linear(moving, u) - fixed)[brain_voxels].mean()
    unregistered = np.abs(moving - fixed)[brain_voxels].mean()
    # What remains is the blur of interpolating twice (moving, then by u) at tissue edges: measured ~0.012
    # against ~0.13 for the identity.
    assert registered < 0.02
    assert registered < 0.15 * unregistered


def test_pairs_have_the_documented_layout(default_pairs):
    assert [p.subject for p in default_pairs] == ["pair000", "pair001"]
    spacing = load_mni152(DEFAULT)[3]
    for pair in default_pairs:
        assert pair.moving.shape == pair.fixed.shape == (1, *DEFAULT)
        assert pair.moving.dtype == pair.fixed.dtype == np.float32
        assert pair.moving_labels.shape == pair.fixed_labels.shape == (1, *DEFAULT)
        assert pair.moving_labels.dtype == pair.fixed_labels.dtype == np.int32
        assert pair.true_flow.shape == (1, *DEFAULT, 3) and pair.true_flow.dtype == np.float32
        assert np.linalg.norm(pair.true_flow, axis=-1).max() == pytest.approx(8.0, abs=1e-5)
        assert pair.spacing_mm == spacing and len(pair.spacing_mm) == 3
        assert pair.label_values == BRAIN_LABELS
        for image in (pair.moving, pair.fixed):
            assert image.min() >= 0.0 and image.max() <= 1.0
        for labels in (pair.moving_labels, pair.fixed_labels):
            assert set(np.unique(labels).tolist()) == {0, 1, 2, 3}
        # A fair task: the answer has no folds.
        assert metrics.negative_jacobian_percent(pair.true_flow) == 0.0


def test_true_flow_registers_the_noisy_images(default_pairs):
    for pair in default_pairs:
        brain_voxels = pair.fixed_labels[0] > 0
        fixed = pair.fixed[0][brain_voxels]
        registered = np.corrcoef(_warp_linear(pair.moving[0], pair.true_flow[0])[brain_voxels], fixed)[0, 1]
        unregistered = np.corrcoef(pair.moving[0][brain_voxels], fixed)[0, 1]
        # Bias field and Rician noise differ between the images, so not 1: over 20 pairs measured 0.95-0.98,
        # against 0.43-0.57 for the identity.
        assert registered > 0.93
        assert registered > unregistered + 0.2


def test_true_flow_aligns_the_labels_and_the_identity_does_not(default_pairs):
    for pair in default_pairs:
        registered = _dice(warp_labels(pair.moving_labels, pair.true_flow), pair.fixed_labels)
        unregistered = _dice(pair.moving_labels, pair.fixed_labels)
        # GM and WM: measured ~92 % with the true flow, ~65 % without. CSF is about one voxel thick at
        # 2.2 mm, so the half-voxel rounding of nearest-neighbour label warping caps it near 70 %.
        assert registered["GM"] > 0.90 and registered["WM"] > 0.90
        assert registered["CSF"] > 0.60
        for name in BRAIN_LABELS:
            assert registered[name] > unregistered[name] + 0.2


def test_make_dataset_batches_volumes(default_pairs):
    batch = next(iter(make_dataset(default_pairs, batch_size=2, shuffle=False)))
    assert batch["moving"].shape == batch["fixed"].shape == (2, *DEFAULT, 1)
    np.testing.assert_array_equal(batch["fixed"].numpy()[1, ..., 0], default_pairs[1].fixed[0])


def test_pairs_are_seeded_and_do_not_depend_on_the_number_drawn():
    one = make_brain_pairs(1, SMALL, max_displacement=3.0, seed=5)
    two = make_brain_pairs(2, SMALL, max_displacement=3.0, seed=5)
    for name in ("moving", "fixed", "moving_labels", "fixed_labels", "true_flow"):
        np.testing.assert_array_equal(getattr(one[0], name), getattr(two[0], name))
    assert not np.allclose(two[0].true_flow, two[1].true_flow)
    assert not np.allclose(one[0].true_flow, make_brain_pairs(1, SMALL, max_displacement=3.0, seed=6)[0].true_flow)


def test_load_brain_splits_pairs_by_seed():
    splits = load_brain(n_pairs=6, shape=(16, 16, 16), seed=4)
    names = {key: [p.subject for p in pairs] for key, pairs in splits.items()}
    # round(0.2 * 6) = 1 test, max(1, round(0.05 * 6)) = 1 validation, the other 4 train.
    assert [len(names[key]) for key in ("train", "val", "test")] == [4, 1, 1]
    assert sorted(sum(names.values(), [])) == [f"pair{i:03d}" for i in range(6)]
    train, val, test = split_subjects([f"pair{i:03d}" for i in range(6)], (0.75, 0.05, 0.20), seed=4)
    assert names == {"train": train, "val": val, "test": test}
    again = load_brain(n_pairs=6, shape=(16, 16, 16), seed=4)
    np.testing.assert_array_equal(again["test"][0].true_flow, splits["test"][0].true_flow)
