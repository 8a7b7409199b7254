"""Tests of gsmorph_tf.data.subjects: label checks and the subject split."""
import numpy as np
import pytest

from gsmorph_tf.data.subjects import split_subjects, validate_label_map
from gsmorph_tf.errors import DatasetError

LABELS = {"RV": 1, "Myo": 2, "LV": 3}


# --- validate_label_map -----------------------------------------------------------------------------------

def test_validate_label_map_names_source():
    image_shape = (4, 4, 2)
    good = validate_label_map(np.full(image_shape, 3.0), image_shape, LABELS, "a_gt.nii.gz")
    assert good.dtype == np.int32
    with pytest.raises(DatasetError, match=r"b_gt\.nii\.gz: label volume has shape \(4, 4, 1\)"):
        validate_label_map(np.zeros((4, 4, 1)), image_shape, LABELS, "b_gt.nii.gz")
    with pytest.raises(DatasetError, match=r"c_gt\.nii\.gz: unexpected label values \[4\]"):
        validate_label_map(np.full(image_shape, 4), image_shape, LABELS, "c_gt.nii.gz")
    with pytest.raises(DatasetError, match=r"d_gt\.nii\.gz: label volume holds non-integer"):
        validate_label_map(np.full(image_shape, 1.5), image_shape, LABELS, "d_gt.nii.gz")


# --- split_subjects ---------------------------------------------------------------------------------------

def test_split_sizes_disjoint_and_complete():
    subjects = [f"patient{i:03d}" for i in range(1, 21)]
    train, val, test = split_subjects(subjects)
    assert (len(train), len(val), len(test)) == (15, 1, 4)
    assert sorted(train + val + test) == subjects
    # Each split keeps the input order.
    assert train == sorted(train) and test == sorted(test)


@pytest.mark.parametrize("n, sizes", [(100, (75, 5, 20)), (3, (1, 1, 1)), (4, (2, 1, 1))])
def test_split_sizes_follow_rounding_rule(n, sizes):
    train, val, test = split_subjects(list(range(n)))
    assert (len(train), len(val), len(test)) == sizes


def test_split_is_deterministic_per_seed():
    subjects = [f"patient{i:03d}" for i in range(1, 21)]
    assert split_subjects(subjects, seed=3) == split_subjects(subjects, seed=3)
    assert split_subjects(subjects, seed=0) != split_subjects(subjects, seed=1)


def test_split_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 3 subjects"):
        split_subjects(["a", "b"])
    with pytest.raises(ValueError, match="summing to 1"):
        split_subjects(list("abcdef"), fractions=(0.5, 0.2, 0.2))
