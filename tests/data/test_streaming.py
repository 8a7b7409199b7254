"""Tests of gsmorph_tf.data.streaming: the per-epoch pair draw and the tf.data stream from NIfTI files."""
import gsmorph_tf  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

import collections
import itertools
import types

import numpy as np
import pytest
import tensorflow as tf

from conftest import L2R_SHAPE, L2R_ZOOMS, l2r_image, l2r_index, save_nifti, write_learn2reg_task
from gsmorph_tf.data import learn2reg
from gsmorph_tf.data.learn2reg import load_learn2reg
from gsmorph_tf.data.streaming import epoch_pairs, pair_dataset, training_dataset


def _pairs_of(batches):
    """``[(moving index, fixed index), ...]`` of every item of a stream of l2r_image volumes, in order."""
    return [(l2r_index(m), l2r_index(f)) for batch in batches for m, f in zip(batch["moving"].numpy(),
                                                                           batch["fixed"].numpy())]


# --- the draw of pairs --------------------------------------------------------------------------------------

def test_one_epoch_is_every_ordered_pair_of_distinct_images_once():
    drawn = list(epoch_pairs(6, seed=0, epoch=0))
    assert len(drawn) == 30 == len(set(drawn))
    assert set(drawn) == set(itertools.permutations(range(6), 2))


def test_every_round_of_n_pairs_uses_each_image_once_as_moving_and_once_as_fixed():
    drawn = list(epoch_pairs(7, seed=2, epoch=5))
    for start in range(0, len(drawn), 7):
        moving, fixed = zip(*drawn[start:start + 7])
        assert sorted(moving) == sorted(fixed) == list(range(7))


def test_the_order_is_a_function_of_seed_and_epoch():
    first = list(epoch_pairs(6, seed=0, epoch=0))
    assert list(epoch_pairs(6, seed=0, epoch=0)) == first
    assert list(epoch_pairs(6, seed=0, epoch=1)) != first
    assert list(epoch_pairs(6, seed=1, epoch=0)) != first
    assert set(epoch_pairs(6, seed=0, epoch=1)) == set(first)


def test_pairs_per_epoch_cuts_a_pass_short_or_runs_further_passes():
    short = list(epoch_pairs(5, seed=0, epoch=0, pairs_per_epoch=7))
    assert len(short) == len(set(short)) == 7
    long = list(epoch_pairs(5, seed=0, epoch=0, pairs_per_epoch=50))   # 2.5 passes of 20
    assert set(long[:20]) == set(long[20:40]) == set(itertools.permutations(range(5), 2))
    assert long[:20] != long[20:40]
    assert sorted(collections.Counter(long).values()) == [2] * 10 + [3] * 10


def test_listed_pairs_are_drawn_in_a_new_order_each_pass():
    listed = [(0, 1), (2, 3), (4, 5), (1, 0)]
    drawn = list(epoch_pairs(6, seed=0, epoch=0, pairs=listed, pairs_per_epoch=8))
    assert sorted(drawn[:4]) == sorted(drawn[4:]) == sorted(listed)
    assert [list(epoch_pairs(6, seed=0, epoch=e, pairs=listed)) for e in range(4)].count(drawn[:4]) < 4


def test_an_empty_epoch_is_refused():
    with pytest.raises(ValueError, match="no pair"):
        list(epoch_pairs(1, seed=0, epoch=0))
    with pytest.raises(ValueError, match="pairs_per_epoch"):
        list(epoch_pairs(4, seed=0, epoch=0, pairs_per_epoch=0))


# --- the stream ---------------------------------------------------------------------------------------------

def test_batches_have_the_volume_shape_and_one_channel(task_dir):
    data = load_learn2reg(task_dir, test_fraction=0.25)     # 4 training images left: 12 pairs
    dataset = training_dataset(data, batch_size=5, seed=0)
    spec = dataset.element_spec
    assert spec["moving"].shape.as_list() == [None, *L2R_SHAPE, 1] and spec["fixed"].dtype == tf.float32
    assert int(dataset.cardinality()) == 3
    batches = list(dataset)
    assert [b["moving"].shape[0] for b in batches] == [5, 5, 2]
    assert batches[0]["fixed"].shape == (5, *L2R_SHAPE, 1)
    assert max(float(tf.reduce_max(b["moving"])) for b in batches) == 1.0     # max-scaled
    assert int(training_dataset(data, 5, drop_remainder=True).cardinality()) == 2


def test_each_epoch_draws_all_pairs_in_a_new_seeded_order(task_dir):
    data = load_learn2reg(task_dir, test_fraction=0.25)
    train = [int(scan.stem.split("_")[1]) for scan in data.splits.train_images]
    dataset = training_dataset(data, batch_size=4, seed=7)
    first, second = _pairs_of(dataset), _pairs_of(dataset)
    assert sorted(first) == sorted(second) == sorted(itertools.permutations(train, 2))
    assert first != second
    assert _pairs_of(training_dataset(data, batch_size=4, seed=7)) == first          # reproducible
    assert _pairs_of(training_dataset(data, batch_size=4, seed=7, first_epoch=1)) == second   # resumable
    assert _pairs_of(training_dataset(data, batch_size=4, seed=8)) != first


def test_atlas_and_paired_streams_draw_their_pairs(tmp_path):
    root = tmp_path / "TOY"
    write_learn2reg_task(root, n_images=8, val_pairs=((7, 6),), paired=((1, 0), (3, 2), (5, 4)))
    paired = load_learn2reg(root, test_fraction=0.3, seed=0)
    kept = [tuple(int(s.stem.split("_")[1]) for s in pair) for pair in
            ((paired.splits.train_images[m], paired.splits.train_images[f]) for m, f in paired.splits.train_pairs)]
    assert sorted(_pairs_of(training_dataset(paired, batch_size=2))) == sorted(kept) and len(kept) == 2

    write_learn2reg_task(tmp_path / "U", n_images=8, val_pairs=((7, 6),))
    atlas = load_learn2reg(tmp_path / "U", atlas="./imagesTr/TOY_0003_0000.nii.gz", test_fraction=0.2)
    drawn = _pairs_of(training_dataset(atlas, batch_size=3))
    assert {moving for moving, _ in drawn} == {3}
    assert sorted(fixed for _, fixed in drawn) == sorted(int(s.stem.split("_")[1])
                                                         for s in atlas.splits.train_images[1:])


def test_volumes_are_read_when_their_pair_comes_up_not_up_front(tmp_path, monkeypatch):
    reads = []
    real = learn2reg.read_image
    monkeypatch.setattr(learn2reg, "read_image", lambda path, *a: reads.append(path) or real(path, *a))
    write_learn2reg_task(tmp_path / "T", n_images=60, val_pairs=((59, 58),))
    data = load_learn2reg(tmp_path / "T", test_fraction=0.05)
    n_train = len(data.splits.train_images)
    dataset = training_dataset(data, batch_size=1, seed=0)
    assert reads == [] and n_train == 55                 # building the stream reads nothing
    iterator = iter(dataset)
    next(iterator)
    # One pair needs 2 reads; the parallel map and the prefetch run a few pairs ahead (5 reads measured on 2
    # cores), far from the 55 training volumes, let alone the 2 * 55 * 54 reads of the epoch.
    assert 2 <= len(reads) < n_train
    for _ in range(5):
        next(iterator)
    assert 12 <= len(reads) < n_train


def test_a_non_finite_volume_stops_the_stream_naming_the_file(tmp_path):
    paths = []
    for index in range(3):
        image = l2r_image(index)
        if index == 2:
            image[1, 2, 3] = np.inf
        paths.append(tmp_path / f"scan{index}.nii.gz")
        save_nifti(image, paths[-1], zooms=L2R_ZOOMS)
    dataset = pair_dataset(paths, batch_size=6, seed=0)
    with pytest.raises(tf.errors.OpError, match=str(paths[2]).replace(".", r"\.") + ".*NaN or infinite"):
        list(dataset)


def test_a_volume_of_another_shape_stops_the_stream_naming_the_file(tmp_path):
    paths = [tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"]
    save_nifti(l2r_image(0), paths[0])
    save_nifti(np.ones((16, 16, 8), np.float32), paths[1])
    with pytest.raises(tf.errors.OpError, match=r"b\.nii\.gz: image has shape \(16, 16, 8\)"):
        list(pair_dataset(paths, batch_size=2, shape=L2R_SHAPE))


def test_percentile_norm_and_listed_pairs_through_pair_dataset(tmp_path):
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"scan{index}.nii.gz")
        save_nifti(np.arange(np.prod(L2R_SHAPE), dtype=np.float32).reshape(L2R_SHAPE) * (index + 1), paths[-1])
    batch = next(iter(pair_dataset(paths, batch_size=2, pairs=[(2, 0)], intensity_norm="percentile")))
    assert batch["moving"].shape == (1, *L2R_SHAPE, 1)
    for volume in (batch["moving"].numpy(), batch["fixed"].numpy()):
        assert volume.min() == 0.0 and volume.max() == 1.0
        assert (volume == 1.0).sum() == 21      # the top 0.5 % of 4096 voxels clipped at the 99.5th percentile


def test_a_resumed_training_run_continues_the_streamed_pair_order(task_dir, tmp_path, monkeypatch):
    from gsmorph_tf.data.streaming import StreamedTrainingPairs
    from gsmorph_tf.train import training

    split = StreamedTrainingPairs(load_learn2reg(task_dir, test_fraction=0.25))
    uninterrupted = training.batches(split, 4, shuffle=True, seed=3)
    epochs = [_pairs_of(uninterrupted) for _ in range(3)]
    assert _pairs_of(training.batches(split, 4, shuffle=True, seed=3, first_epoch=2)) == epochs[2]
    # fit starts the stream at the epoch BackupAndRestore resumes from
    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise Stop
    seen = {}
    monkeypatch.setattr(training, "completed_epochs", lambda output_dir: 2)
    monkeypatch.setattr(training, "batches", spy)
    model = types.SimpleNamespace(distribute_strategy=tf.distribute.get_strategy())
    config = types.SimpleNamespace(batch_size=4, seed=3, drop_last=False, early_stopping_patience=0)
    with pytest.raises(Stop):
        training.fit(model, {"train": split, "val": []}, config, str(tmp_path))
    assert seen["first_epoch"] == 2 and seen["seed"] == 3
