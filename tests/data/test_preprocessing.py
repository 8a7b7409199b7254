"""Tests of gsmorph_tf.data.preprocessing: cropping, scaling, ES/ED volumes -> slice pairs."""
import numpy as np
import pytest

from gsmorph_tf.data.preprocessing import (crop_coverage, crop_or_pad, label_centroid, make_pairs, motion_center,
                                          scale_to_unit)
from gsmorph_tf.data.subjects import SubjectPairs
from gsmorph_tf.errors import DatasetError

LABELS = {"RV": 1, "Myo": 2, "LV": 3}


# --- crop_or_pad ------------------------------------------------------------------------------------------

def test_marked_pixel_lands_at_crop_centre():
    stack = np.zeros((2, 20, 15), np.int32)
    stack[:, 10, 7] = 5
    crop = crop_or_pad(stack, center=(10, 7), size=(6, 4))
    assert crop.shape == (2, 6, 4)
    assert crop.dtype == np.int32
    # Centre index of an even-sized window is size // 2.
    assert np.argwhere(crop[0] == 5).tolist() == [[3, 2]]
    assert crop.sum() == 10


def test_fractional_centre_rounds_half_up():
    stack = np.zeros((1, 20, 20))
    stack[0, 9, 5] = 1
    # 8.5 -> 9 and 4.5 -> 5; round-half-to-even would give 8 and 4 and miss the pixel.
    crop = crop_or_pad(stack, center=(8.5, 4.5), size=(5, 5))
    assert np.argwhere(crop[0] == 1).tolist() == [[2, 2]]


def test_image_smaller_than_crop_is_padded_and_kept_whole():
    stack = np.arange(1, 7, dtype=np.float32).reshape(1, 3, 2)  # [[1, 2], [3, 4], [5, 6]]
    crop = crop_or_pad(stack, center=(1, 1), size=(6, 5), fill=-1)
    # top = 1 - 3 = -2, left = 1 - 2 = -1: the image sits at rows 2..4, cols 1..2 of the window.
    np.testing.assert_array_equal(crop[0, 2:5, 1:3], stack[0])
    assert np.count_nonzero(crop == -1) == 6 * 5 - 6
    assert crop.shape == (1, 6, 5)


def test_window_leaving_the_border_is_padded():
    stack = np.arange(16).reshape(1, 4, 4)
    crop = crop_or_pad(stack, center=(0, 0), size=(4, 4))
    # top = left = -2: the image's top-left 2x2 block fills the window's bottom-right quarter.
    np.testing.assert_array_equal(crop[0], [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 4, 5]])


def test_label_centroid_pools_all_slices():
    labels = np.zeros((2, 10, 10), np.int32)
    labels[0, 2, 3] = 1
    labels[1, 4, 5] = 3
    assert label_centroid(labels) == (3.0, 4.0)
    with pytest.raises(ValueError, match="no foreground"):
        label_centroid(np.zeros((2, 4, 4)))


# --- scale_to_unit ----------------------------------------------------------------------------------------

def test_scale_uses_one_range_for_both_frames():
    moving = np.array([10.0, 30.0, 60.0])
    fixed = np.array([10.0, 110.0])
    scaled_moving, scaled_fixed = scale_to_unit(moving, fixed, upper_percentile=100)
    # lo = 10 (min of both), hi = 110 (max of both): ES is not stretched to its own [0, 1].
    np.testing.assert_allclose(scaled_moving, [0.0, 0.2, 0.5])
    np.testing.assert_allclose(scaled_fixed, [0.0, 1.0])
    assert scaled_moving.dtype == scaled_fixed.dtype == np.float32


def test_scale_clips_above_the_percentile():
    moving = np.arange(100, dtype=np.float32)
    fixed = np.arange(100, 200, dtype=np.float32)
    scaled_moving, scaled_fixed = scale_to_unit(moving, fixed, upper_percentile=50)
    # Median of 0..199 is 99.5.
    assert scaled_moving[99] == pytest.approx(99 / 99.5)
    assert np.all(scaled_fixed == 1.0)
    assert scaled_moving.min() == 0.0


def test_scale_constant_images_gives_zeros():
    scaled_moving, scaled_fixed = scale_to_unit(np.full(4, 7.0), np.full(3, 7.0))
    assert not scaled_moving.any() and not scaled_fixed.any()


# --- make_pairs and label checks --------------------------------------------------------------------------

def _volumes():
    """[X=20, Y=16, Z=3] ES/ED volumes; ED foreground at one pixel (10, 8), ES elsewhere."""
    ed_labels = np.zeros((20, 16, 3), np.uint8)
    ed_labels[10, 8, :] = 3
    es_labels = np.zeros_like(ed_labels)
    es_labels[2, 2, :] = 3
    ed_image = 100.0 * (ed_labels > 0)
    es_image = 50.0 * (es_labels > 0)
    return es_image, ed_image, es_labels, ed_labels


def test_make_pairs_puts_slices_first_and_centres_on_ed_labels():
    es_image, ed_image, es_labels, ed_labels = _volumes()
    pairs = make_pairs("s1", es_image, ed_image, es_labels, ed_labels, (1.5, 1.25, 8.0), LABELS, (8, 8))
    assert isinstance(pairs, SubjectPairs)
    assert pairs.moving.shape == pairs.fixed.shape == pairs.fixed_labels.shape == (3, 8, 8)
    assert pairs.spacing_mm == (8.0, 1.5, 1.25)
    assert pairs.label_values == LABELS
    assert pairs.moving.dtype == np.float32 and pairs.fixed_labels.dtype == np.int32
    # ED foreground (10, 8) is the crop centre -> window index (4, 4) in every slice.
    assert np.argwhere(pairs.fixed_labels[1] == 3).tolist() == [[4, 4]]
    assert pairs.fixed[:, 4, 4].tolist() == [1.0, 1.0, 1.0]
    # ES pixel (2, 2) is 8 rows and 6 columns off the centre: outside the 8x8 window.
    assert not pairs.moving_labels.any()
    assert pairs.subject == "s1"


def test_make_pairs_moving_is_es_on_shared_scale():
    es_image, ed_image, es_labels, ed_labels = _volumes()
    es_labels[:] = ed_labels
    es_image = 50.0 * (es_labels > 0)
    pairs = make_pairs("s1", es_image, ed_image, es_labels, ed_labels, (1.0, 1.0, 1.0), LABELS, (8, 8))
    # Only 6 of 1,920 voxels are bright, so the 99.5th percentile is the background and the range falls
    # back to [min, max] = [0, 100]: ES 50 -> 0.5, ED 100 -> 1.
    assert pairs.moving.max() == pytest.approx(0.5)
    assert pairs.fixed.max() == pytest.approx(1.0)


def test_make_pairs_rejects_empty_ed_labels_and_shape_mismatch():
    es_image, ed_image, es_labels, ed_labels = _volumes()
    with pytest.raises(DatasetError, match="s1: ED label map has no foreground"):
        make_pairs("s1", es_image, ed_image, es_labels, 0 * ed_labels, (1.0, 1.0, 1.0), LABELS)
    with pytest.raises(DatasetError, match="s2: expected"):
        make_pairs("s2", es_image[:, :, :2], ed_image, es_labels, ed_labels, (1.0, 1.0, 1.0), LABELS)


# --- label-free localisation (crop_center=motion) and crop coverage ----------------------------------------

def _beating_cine(shape=(64, 48, 2), centre=(40, 30), frames=6):
    """[X, Y, Z, T] cine: a bright disc around ``centre`` whose radius beats 8 -> 5 -> 8 px, plus a static
    brighter block in a corner (bright but still: it must not attract the crop)."""
    rows, cols = np.mgrid[:shape[0], :shape[1]]
    cine = np.full(shape + (frames,), 10.0, np.float32)
    cine[:12, :12] = 300.0
    for t in range(frames):
        radius = 8.0 - 3.0 * np.sin(np.pi * t / (frames - 1))
        disc = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2
        cine[disc, :, t] = 200.0
    return cine


def test_motion_centre_finds_the_moving_disc_not_the_bright_still_block():
    cine = _beating_cine()
    frames = np.transpose(cine, (3, 2, 0, 1))  # [T, Z, X, Y]
    assert motion_center(frames, (64, 64)) == (40.0, 30.0)  # the disc centre: its ring of motion, smoothed
    # two frames (ED and the most contracted one) find it too
    assert motion_center(frames[[0, 3]], (64, 64)) == (40.0, 30.0)
    # no motion at all: the image centre, not the corner argmax of a flat map
    assert motion_center(frames[[0, 0]], (16, 16)) == (32.0, 24.0)


def test_crop_coverage_counts_ed_label_voxels_inside_the_crop():
    labels = np.zeros((2, 20, 20), np.uint8)
    labels[:, 2:6, 2:6] = 1          # 32 voxels around (3.5, 3.5)
    assert crop_coverage(labels, (3.5, 3.5), (4, 4)) == 1.0
    # a 4x4 crop centred at (2, 4) takes rows 0..3 and cols 2..5: rows 2, 3 of the block, 16 of 32 voxels
    assert crop_coverage(labels, (2, 4), (4, 4)) == 0.5
    assert crop_coverage(np.zeros((1, 5, 5)), (2, 2), (2, 2)) == 1.0


@pytest.mark.parametrize("rule, centre", [("labels", (10, 8)), ("motion", (10, 8)), ("image", (10, 8))])
def test_make_pairs_crop_rules_and_coverage(rule, centre):
    es_image, ed_image, es_labels, ed_labels = _volumes()
    es_image[10, 8, :] = 30.0  # the only voxel that changes between ES and ED besides (2, 2)
    ed_image[2, 2, :] = 50.0   # (2, 2) changes less: the motion maximum is at the ED foreground
    pairs = make_pairs("s1", es_image, ed_image, es_labels, ed_labels, (1.0, 1.0, 1.0), LABELS, (8, 8), rule)
    assert np.argwhere(pairs.fixed_labels[1] == 3).tolist() == [[10 - centre[0] + 4, 8 - centre[1] + 4]]
    assert pairs.crop_coverage == 1.0


def test_make_pairs_motion_uses_the_cine_and_checks_its_shape():
    es_image, ed_image, es_labels, ed_labels = _volumes()
    cine = np.zeros((20, 16, 3, 4), np.float32)
    cine[3, 12, :, 1] = 500.0   # the cine moves at (3, 12); the ES/ED frames alone would not say so
    pairs = make_pairs("s1", es_image, ed_image, es_labels, ed_labels, (1.0, 1.0, 1.0), LABELS, (4, 4), "motion",
                       cine=cine)
    assert pairs.crop_coverage == 0.0   # ED foreground (10, 8) is outside a 4x4 crop around (3, 12)
    with pytest.raises(DatasetError, match="s1: cine has shape"):
        make_pairs("s1", es_image, ed_image, es_labels, ed_labels, (1.0, 1.0, 1.0), LABELS, (4, 4), "motion",
                   cine=cine[:, :, :2])
