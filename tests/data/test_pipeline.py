"""Tests of gsmorph_tf.data.pipeline: the tf.data pipeline over in-memory subjects."""
import gsmorph_tf  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

import numpy as np
import pytest

from gsmorph_tf.data.pipeline import make_dataset
from gsmorph_tf.data.subjects import SubjectPairs

LABELS = {"RV": 1, "Myo": 2, "LV": 3}


# --- make_dataset -----------------------------------------------------------------------------------------

def _subject(name, first_value, n_slices, size=8):
    """SubjectPairs whose slice k has moving = value and fixed = value + 0.5 everywhere (value = first + k)."""
    values = np.arange(first_value, first_value + n_slices, dtype=np.float32)[:, None, None]
    moving = np.broadcast_to(values, (n_slices, size, size)).copy()
    labels = np.zeros((n_slices, size, size), np.int32)
    return SubjectPairs(name, moving, moving + 0.5, labels, labels, (8.0, 1.0, 1.0), LABELS)


def _slice_ids(dataset):
    """Per element, the moving value identifying the slice, checking fixed stayed paired with it."""
    ids = []
    for batch in dataset:
        moving, fixed = batch["moving"].numpy(), batch["fixed"].numpy()
        np.testing.assert_array_equal(fixed, moving + 0.5)
        ids.extend(moving[:, 0, 0, 0].tolist())
    return ids


def test_dataset_shapes_dtypes_and_count():
    pairs = [_subject("a", 0, 3), _subject("b", 3, 4)]
    dataset = make_dataset(pairs, batch_size=3, shuffle=False)
    batches = list(dataset)
    assert [b["moving"].shape.as_list() for b in batches] == [[3, 8, 8, 1], [3, 8, 8, 1], [1, 8, 8, 1]]
    assert all(b["moving"].dtype.name == b["fixed"].dtype.name == "float32" for b in batches)
    assert sorted(batches[0]) == ["fixed", "moving"]
    assert _slice_ids(dataset) == [0, 1, 2, 3, 4, 5, 6]


def test_dataset_drops_the_last_partial_batch_like_the_reference():
    pairs = [_subject("a", 0, 3), _subject("b", 3, 4)]
    batches = list(make_dataset(pairs, batch_size=3, shuffle=True, seed=1, drop_remainder=True))
    assert [b["moving"].shape.as_list()[0] for b in batches] == [3, 3]   # 7 pairs: the 7th is dropped


def test_dataset_shuffle_is_seeded_and_reshuffled_each_epoch():
    pairs = [_subject("a", 0, 6), _subject("b", 6, 6)]
    first = make_dataset(pairs, batch_size=4, shuffle=True, seed=7)
    second = make_dataset(pairs, batch_size=4, shuffle=True, seed=7)
    epoch1 = _slice_ids(first)
    assert epoch1 == _slice_ids(second)
    assert sorted(epoch1) == list(range(12))
    assert epoch1 != list(range(12))
    assert _slice_ids(first) != epoch1  # a new order in the next epoch
    assert _slice_ids(make_dataset(pairs, batch_size=4, shuffle=True, seed=8)) != epoch1


def test_dataset_rejects_empty_and_mixed_sizes():
    with pytest.raises(ValueError, match="at least one"):
        make_dataset([], batch_size=2, shuffle=False)
    with pytest.raises(ValueError, match="one in-plane size"):
        make_dataset([_subject("a", 0, 2, size=8), _subject("b", 2, 2, size=6)], batch_size=2, shuffle=False)
