"""Tests of gsmorph_tf.data.learn2reg on tiny tasks written in the Learn2Reg layout by the tests themselves.

NumPy only: collecting this module loads no TensorFlow (the brain writer's test imports it inside).
"""
import gzip
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import (L2R_LABELS, L2R_SHAPE, L2R_ZOOMS, ROOT, l2r_image, l2r_index, l2r_labels, raises_naming,
                      save_nifti, write_dataset_json, write_learn2reg_task)
from gsmorph_tf.data import learn2reg
from gsmorph_tf.data.learn2reg import (EvaluationPairs, label_mapping, load_learn2reg, make_splits,
                                       normalise_intensity, read_task, validate_voxels)
from gsmorph_tf.errors import DatasetError


def _stem(index):
    return f"TOY_{index:04d}_0000"


def _indices(scans):
    """Image indices of scans (from their file names ``TOY_<iiii>_0000``)."""
    return [int(scan.stem.split("_")[1]) for scan in scans]


def _pair_indices(pairs):
    return [tuple(_indices(pair)) for pair in pairs]


# --- reading and checking the task --------------------------------------------------------------------------

def test_read_task_reads_shape_labels_entries_and_pairs(task_dir):
    task = read_task(task_dir)
    assert task.name == "TOY" and task.shape == L2R_SHAPE and task.json_path == task_dir / "TOY_dataset.json"
    assert task.label_names == L2R_LABELS  # background left out
    assert [scan.image for scan in task.training] == [task_dir / "imagesTr" / f"{_stem(i)}.nii.gz" for i in range(8)]
    assert task.training[3].label == task_dir / "labelsTr" / f"{_stem(3)}.nii.gz"
    # registration_val's {"fixed": 6, "moving": 7} is (moving, fixed), labels found through the training entries.
    assert _pair_indices(task.val_pairs) == [(7, 6)]
    assert task.val_pairs[0][0].label == task.training[7].label
    assert not task.paired and task.test_pairs == ()


def test_read_task_reads_headers_only(task_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(learn2reg, "load_nifti", lambda *a, **k: calls.append(a))
    read_task(task_dir)
    assert calls == []


def test_a_truncated_volume_passes_the_header_check_and_fails_validation_naming_it(task_dir):
    path = task_dir / "imagesTr" / f"{_stem(2)}.nii.gz"
    with gzip.open(path) as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(raw[:len(raw) // 2])   # header intact, voxels cut
    task = read_task(task_dir)
    with raises_naming(path, "cannot read as NIfTI"):
        validate_voxels(task)


def test_non_finite_voxels_are_named_when_read_and_by_the_full_validation(task_dir):
    path = task_dir / "imagesTr" / f"{_stem(7)}.nii.gz"   # in the validation pair
    image = l2r_image(7)
    image[3, 4, 5] = np.nan
    save_nifti(image, path, zooms=L2R_ZOOMS)
    data = load_learn2reg(task_dir)        # headers are fine
    with raises_naming(path, "NaN or infinite"):
        data.val[0]
    with raises_naming(path, "NaN or infinite"):
        validate_voxels(data.task)
    with raises_naming(path, "NaN or infinite"):
        load_learn2reg(task_dir, validate_all_voxels=True)


def test_label_values_the_json_does_not_name_are_refused_naming_the_file(task_dir):
    path = task_dir / "labelsTr" / f"{_stem(1)}.nii.gz"
    labels = l2r_labels(1)
    labels[0, 0, 0] = 9
    save_nifti(labels, path, zooms=L2R_ZOOMS)
    with raises_naming(path, r"label values \[9\] are not named"):
        validate_voxels(read_task(task_dir))


def test_missing_folder_and_missing_or_duplicate_json_name_the_folder(tmp_path):
    with raises_naming(tmp_path / "nowhere", "does not exist"):
        read_task(tmp_path / "nowhere")
    with raises_naming(tmp_path, r"no \*_dataset.json"):
        read_task(tmp_path)
    (tmp_path / "A_dataset.json").write_text("{}")
    (tmp_path / "B_dataset.json").write_text("{}")
    with raises_naming(tmp_path, "several dataset files"):
        read_task(tmp_path)


def test_malformed_json_names_the_file(task_dir):
    (task_dir / "TOY_dataset.json").write_text('{"tensorImageShape": {"0": [16, 16, 16]},')
    with raises_naming(task_dir / "TOY_dataset.json", "cannot read as JSON"):
        read_task(task_dir)


@pytest.mark.parametrize("edit, key", [
    (lambda d: d.pop("tensorImageShape"), "tensorImageShape is missing"),
    (lambda d: d.update(tensorImageShape={"0": [16, 16]}), r'tensorImageShape\["0"\]'),
    (lambda d: d.pop("training"), "training is missing"),
    (lambda d: d.pop("registration_val"), "registration_val is missing"),
    (lambda d: d["training"][1].pop("image"), r"training\[1\]"),
    (lambda d: d["registration_val"][0].pop("moving"), r"registration_val\[0\]"),
    (lambda d: d.update(labels={"0": ["background"]}), r'labels\["0"\]'),
    (lambda d: d["labels"]["0"].update({"x": "Other"}), r'labels\["0"\]\["x"\]'),
    (lambda d: d["training"][0].update(image="/abs/imagesTr/a.nii.gz"), r"training\[0\].image.*absolute"),
])
def test_malformed_keys_name_the_json_file_and_the_key(task_dir, edit, key):
    data = json.loads((task_dir / "TOY_dataset.json").read_text())
    edit(data)
    write_dataset_json(task_dir, data)
    with raises_naming(task_dir / "TOY_dataset.json", key):
        read_task(task_dir)


def test_a_missing_listed_image_or_label_is_named(task_dir):
    label = task_dir / "labelsTr" / f"{_stem(4)}.nii.gz"
    label.unlink()
    with raises_naming(label, "not found"):
        read_task(task_dir)
    image = task_dir / "imagesTr" / f"{_stem(3)}.nii.gz"
    image.unlink()
    with raises_naming(image, "not found"):
        read_task(task_dir)


def test_an_image_of_another_shape_than_tensor_image_shape_is_named(task_dir):
    path = task_dir / "imagesTr" / f"{_stem(5)}.nii.gz"
    save_nifti(np.ones((16, 16, 15), np.float32), path)
    with raises_naming(path, r"shape \(16, 16, 15\), expected tensorImageShape \[16, 16, 16\]"):
        read_task(task_dir)


def test_a_label_map_of_another_shape_than_its_image_is_named(task_dir):
    path = task_dir / "labelsTr" / f"{_stem(2)}.nii.gz"
    save_nifti(np.zeros((16, 16, 8), np.uint8), path)
    with raises_naming(path, "expected the shape of its image"):
        read_task(task_dir)


def test_a_corrupt_header_is_named(task_dir):
    path = task_dir / "imagesTr" / f"{_stem(0)}.nii.gz"
    path.write_bytes(b"not a nifti file at all")
    with raises_naming(path, "cannot read the NIfTI header"):
        read_task(task_dir)


# --- structures, label groups, intensities ------------------------------------------------------------------

def test_structures_are_the_json_labels_without_background(task_dir):
    mapping = label_mapping(read_task(task_dir))
    assert mapping.label_values == {"Left": 1, "Middle": 2, "Right": 3}
    labels = l2r_labels(0)
    np.testing.assert_array_equal(mapping.apply(labels, "x"), labels)


def test_label_groups_merge_labels_by_name_or_integer(task_dir, tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"Sides": ["Left", 3], "Centre": [2]}))
    mapping = label_mapping(read_task(task_dir), groups)
    assert mapping.label_values == {"Sides": 1, "Centre": 2}
    stored = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(mapping.apply(stored, "x"), [0, 1, 2, 1])
    # A label no group takes becomes background.
    groups.write_text(json.dumps({"Centre": ["Middle"]}))
    np.testing.assert_array_equal(label_mapping(read_task(task_dir), groups).apply(stored, "x"), [0, 0, 1, 0])


def test_evaluation_labels_are_mapped_to_the_groups(task_dir, tmp_path):
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"Sides": ["Left", "Right"], "Centre": ["Middle"]}))
    pair = load_learn2reg(task_dir, label_groups=groups).val[0]
    assert pair.label_values == {"Sides": 1, "Centre": 2}
    expected = np.select([np.isin(l2r_labels(7), (1, 3)), l2r_labels(7) == 2], [1, 2], 0)
    np.testing.assert_array_equal(pair.moving_labels[0], expected)


@pytest.mark.parametrize("groups, message", [
    ({"Lobe": ["Left", "Nose"]}, "lists 'Nose', which is not a label"),
    ({"Lobe": [7]}, "lists 7, which is not a label"),
    ({"Lobe": [0]}, "lists 0, which is not a label"),
    ({"A": ["Left", "Middle"], "B": ["Middle"]}, "'Middle' \\(2\\) is in both groups 'A' and 'B'"),
    ({"A": []}, "group 'A' must list at least one"),
    (["Left"], "expected a JSON object"),
])
def test_bad_label_groups_name_the_groups_file(task_dir, tmp_path, groups, message):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps(groups))
    with raises_naming(path, message):
        label_mapping(read_task(task_dir), path)


def test_unreadable_label_groups_name_the_file(task_dir, tmp_path):
    path = tmp_path / "groups.json"
    path.write_text("{nope")
    with raises_naming(path, "cannot read the label groups"):
        label_mapping(read_task(task_dir), path)
    with raises_naming(tmp_path / "absent.json", "cannot read the label groups"):
        label_mapping(read_task(task_dir), tmp_path / "absent.json")


def test_intensity_norm_max_divides_by_the_maximum():
    volume = np.array([0.0, 2.0, 5.0, 10.0], np.float32)
    np.testing.assert_allclose(normalise_intensity(volume, "max", "x"), [0.0, 0.2, 0.5, 1.0])
    with raises_naming("scan.nii.gz", "positive maximum"):
        normalise_intensity(-volume, "max", "scan.nii.gz")


def test_intensity_norm_percentile_is_the_cardiac_scaling_over_one_volume():
    volume = np.random.default_rng(0).normal(100.0, 20.0, (8, 8, 8)).astype(np.float32)
    scaled = normalise_intensity(volume, "percentile", "x")
    lo, hi = float(volume.min()), float(np.percentile(volume, 99.5))
    np.testing.assert_allclose(scaled, np.clip((volume - lo) / (hi - lo), 0.0, 1.0), rtol=1e-5, atol=1e-6)
    assert scaled.min() == 0.0 and scaled.max() == 1.0 and (scaled == 1.0).sum() == 3   # 0.5 % of 512 voxels
    with pytest.raises(ValueError, match="intensity_norm"):
        normalise_intensity(volume, "zscore", "x")


# --- splits -------------------------------------------------------------------------------------------------

def test_unpaired_training_uses_every_ordered_pair_of_the_images_left_after_val_and_test(task_dir):
    splits = make_splits(read_task(task_dir), test_fraction=0.25, seed=0)
    train = _indices(splits.train_images)
    held = [int(p.split("_")[1]) for p in (s.split("/")[-1] for s in splits.record["test"]["subjects"])]
    assert splits.train_pairs is None
    assert len(held) == 2 and 6 not in train and 7 not in train and not set(held) & set(train)
    assert sorted(train + held) == [0, 1, 2, 3, 4, 5]
    assert splits.n_train_pairs == len(train) * (len(train) - 1) == 12
    assert _pair_indices(splits.val) == [(7, 6)]
    assert splits.record["train"]["pairs"] == 12
    assert splits.record["train"]["held_out"] == sorted(f"./imagesTr/{_stem(i)}.nii.gz" for i in (6, 7, *held))


def test_without_registration_test_the_test_split_is_a_seeded_hold_out_recorded_with_its_reason(task_dir):
    task = read_task(task_dir)
    record = make_splits(task, test_fraction=0.34, seed=3).record["test"]
    assert record["source"] == "held_out_training" and "no registration_test" in record["reason"]
    assert (record["fraction"], record["seed"]) == (0.34, 3)
    subjects = record["subjects"]
    assert len(subjects) == 2   # round(0.34 * 6)
    assert make_splits(task, test_fraction=0.34, seed=3).record["test"]["subjects"] == subjects
    assert len({tuple(make_splits(task, test_fraction=0.34, seed=s).record["test"]["subjects"])
                for s in range(6)}) > 1
    # Consecutive pairs of the held-out subjects: moving = s[k + 1], fixed = s[k].
    assert record["pairs"] == [[subjects[1], subjects[0]]]
    json.dumps(record)


def test_registration_test_with_labels_is_the_test_split_and_its_images_leave_training(tmp_path):
    root = tmp_path / "TOY"
    data = write_learn2reg_task(root, n_images=6, val_pairs=((5, 4),), test_pairs=((1, 0), (2, 1)))
    # One registration_test pair made of training images too: they must leave training.
    data["registration_test"].append({"fixed": data["training"][0]["image"], "moving": data["training"][1]["image"]})
    write_dataset_json(root, data)
    splits = make_splits(read_task(root))
    assert splits.record["test"]["source"] == "registration_test"
    assert [pair for pair in splits.record["test"]["pairs"]] == [
        ["./imagesTs/TOY_1001_0000.nii.gz", "./imagesTs/TOY_1000_0000.nii.gz"],
        ["./imagesTs/TOY_1002_0000.nii.gz", "./imagesTs/TOY_1001_0000.nii.gz"],
        ["./imagesTr/TOY_0001_0000.nii.gz", "./imagesTr/TOY_0000_0000.nii.gz"]]
    assert _indices(splits.train_images) == [2, 3]
    assert all(scan.label is not None for pair in splits.test for scan in pair)


def test_registration_test_without_labels_falls_back_to_the_hold_out_and_says_why(tmp_path):
    root = tmp_path / "TOY"
    write_learn2reg_task(root, n_images=8, val_pairs=((7, 6),), test_pairs=((1, 0),), test_labels=False)
    record = make_splits(read_task(root)).record["test"]
    assert record["source"] == "held_out_training"
    assert "./imagesTs/TOY_1001_0000.nii.gz" in record["reason"] and "no label file" in record["reason"]


def test_paired_tasks_train_on_their_listed_pairs_minus_those_touching_validation(tmp_path):
    root = tmp_path / "TOY"
    write_learn2reg_task(root, n_images=10, val_pairs=((9, 8),),
                         paired=((1, 0), (3, 2), (5, 4), (7, 6), (8, 9), (0, 9)))
    splits = make_splits(read_task(root), test_fraction=0.25, seed=1)
    assert splits.record["mode"] == "paired"
    train = [tuple(_indices([splits.train_images[m], splits.train_images[f]])) for m, f in splits.train_pairs]
    test = _pair_indices(splits.test)
    assert len(test) == 1 and len(train) == 3    # 4 pairs left after validation, one held out
    assert sorted(train + test) == [(1, 0), (3, 2), (5, 4), (7, 6)]
    assert splits.n_train_pairs == 3 and splits.record["train"]["pairs_rule"] == "training_paired_images"


def test_a_paired_training_pair_sharing_an_image_with_a_held_out_pair_leaves_training(tmp_path):
    root = tmp_path / "TOY"
    write_learn2reg_task(root, n_images=8, val_pairs=((7, 6),), paired=((1, 0), (2, 0), (3, 4), (5, 4)))
    for seed in range(4):
        splits = make_splits(read_task(root), test_fraction=0.25, seed=seed)
        (held,) = _pair_indices(splits.test)
        train = [tuple(_indices([splits.train_images[m], splits.train_images[f]])) for m, f in splits.train_pairs]
        assert len(train) == 2 and not any(set(pair) & set(held) for pair in train)


def test_atlas_mode_registers_the_atlas_to_every_subject(task_dir):
    splits = make_splits(read_task(task_dir), atlas="./imagesTr/TOY_0000_0000.nii.gz", test_fraction=0.2, seed=0)
    assert splits.record["mode"] == "atlas_to_subject"
    images = _indices(splits.train_images)
    assert images[0] == 0 and 0 not in images[1:]
    assert splits.train_pairs == tuple((0, j) for j in range(1, len(images)))
    assert splits.train_images[0].label is not None      # a listed atlas brings its labels
    # Validation: the atlas with each distinct image of registration_val; test: with each held-out subject.
    assert _pair_indices(splits.val) == [(0, 7), (0, 6)]
    held = _indices(fixed for _, fixed in splits.test)
    assert all(moving.stem == _stem(0) for moving, _ in splits.test) and len(held) == 1
    assert sorted(images[1:] + held) == [1, 2, 3, 4, 5]


def test_atlas_errors_name_the_file(task_dir, tmp_path):
    with raises_naming(tmp_path / "atlas.nii.gz", "not found"):
        make_splits(read_task(task_dir), atlas=tmp_path / "atlas.nii.gz")
    save_nifti(np.ones((8, 8, 8), np.float32), tmp_path / "atlas.nii.gz")
    with raises_naming(tmp_path / "atlas.nii.gz", "tensorImageShape"):
        make_splits(read_task(task_dir), atlas=tmp_path / "atlas.nii.gz")


def test_an_atlas_on_a_paired_task_is_refused(tmp_path):
    root = tmp_path / "TOY"
    write_learn2reg_task(root, n_images=6, paired=((1, 0), (3, 2)))
    with raises_naming(root / "TOY_dataset.json", "paired"):
        make_splits(read_task(root), atlas="./imagesTr/TOY_0000_0000.nii.gz")


def test_too_few_images_to_hold_out_and_train_names_the_json(tmp_path):
    root = tmp_path / "TOY"
    write_learn2reg_task(root, n_images=5, val_pairs=((4, 3),))
    with raises_naming(root / "TOY_dataset.json", "too few"):
        make_splits(read_task(root))


# --- evaluation pairs ---------------------------------------------------------------------------------------

def test_evaluation_pairs_read_nothing_until_indexed_then_one_pair(task_dir, monkeypatch):
    reads = []
    real = learn2reg.load_nifti
    monkeypatch.setattr(learn2reg, "load_nifti", lambda path, **k: reads.append(path) or real(path, **k))
    data = load_learn2reg(task_dir)
    assert reads == [] and len(data.val) == 1 and data.val.subjects == [f"{_stem(7)}_to_{_stem(6)}"]
    pair = data.val[0]
    assert sorted(p.name for p in reads) == sorted([f"{_stem(7)}.nii.gz", f"{_stem(6)}.nii.gz"] * 2)
    assert pair.subject == f"{_stem(7)}_to_{_stem(6)}"
    assert pair.moving.shape == pair.fixed.shape == pair.moving_labels.shape == (1, *L2R_SHAPE)
    assert (pair.moving.dtype, pair.moving_labels.dtype) == (np.float32, np.int32)
    assert pair.volumes_per_item and pair.spacing_mm == pytest.approx(L2R_ZOOMS)
    assert l2r_index(pair.moving) == 7 and l2r_index(pair.fixed) == 6 and pair.moving.max() == 1.0
    np.testing.assert_array_equal(pair.fixed_labels[0], l2r_labels(6))
    assert pair.label_values == {"Left": 1, "Middle": 2, "Right": 3}
    assert isinstance(data.test[:1], EvaluationPairs) and len(data.test[:1]) == 1


def test_an_image_without_labels_gets_an_empty_label_map(task_dir):
    data = json.loads((task_dir / "TOY_dataset.json").read_text())
    data["training"][6].pop("label")
    write_dataset_json(task_dir, data)
    pair = load_learn2reg(task_dir).val[0]
    assert not pair.fixed_labels.any() and pair.moving_labels.any()


def test_the_record_names_norm_structures_and_shape_and_is_json(task_dir):
    record = load_learn2reg(task_dir, intensity_norm="percentile").record
    assert record["intensity_norm"] == "percentile" and record["tensorImageShape"] == [16, 16, 16]
    assert record["structures"] == {"Left": 1, "Middle": 2, "Right": 3} and record["pair_order"] == "[moving, fixed]"
    assert json.loads(json.dumps(record)) == record


# --- the synthetic brain task in this layout ----------------------------------------------------------------

def test_brain_subjects_are_written_in_the_learn2reg_layout_deterministically(tmp_path):
    from gsmorph_tf.data.brain import BRAIN_LABELS, write_brain_learn2reg

    root = write_brain_learn2reg(tmp_path / "brain", 6, shape=L2R_SHAPE, val_subjects=2, seed=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain"]     # no temporary folder left
    data = load_learn2reg(root, validate_all_voxels=True)
    assert data.task.shape == L2R_SHAPE and data.mapping.label_values == BRAIN_LABELS
    assert len(data.task.training) == 6 and _pair_indices(data.task.val_pairs) == [(5, 4)]
    assert data.record["test"]["source"] == "held_out_training"
    pair = data.val[0]
    assert set(np.unique(pair.moving_labels)) == {0, 1, 2, 3}
    assert 0.0 <= pair.moving.min() and pair.moving.max() == 1.0
    assert not np.array_equal(pair.moving, pair.fixed)       # each subject its own deformation
    again = write_brain_learn2reg(tmp_path / "again", 6, shape=L2R_SHAPE, val_subjects=2, seed=4)
    other = write_brain_learn2reg(tmp_path / "other", 6, shape=L2R_SHAPE, val_subjects=2, seed=5)
    first = load_learn2reg(again).val[0]
    np.testing.assert_array_equal(first.moving, pair.moving)
    np.testing.assert_array_equal(first.moving_labels, pair.moving_labels)
    assert not np.array_equal(load_learn2reg(other).val[0].moving, pair.moving)
    with pytest.raises(FileExistsError, match="brain"):
        write_brain_learn2reg(root, 6, shape=L2R_SHAPE, val_subjects=2)


def test_dataset_errors_are_dataset_errors(task_dir):
    # The entry points print DatasetError as one line; every error above must be one.
    (task_dir / "TOY_dataset.json").write_text("[]")
    with pytest.raises(DatasetError):
        read_task(task_dir)


def test_importing_the_module_loads_no_tensorflow():
    done = subprocess.run([sys.executable, "-c", "import gsmorph_tf.data.learn2reg, sys; "
                           "print('tensorflow' in sys.modules)"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
