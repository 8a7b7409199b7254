"""Tests of gsmorph_tf.data.acdc (and the NIfTI reading under it) on tiny trees in the real ACDC layout."""
import gsmorph_tf  # noqa: F401  (selects legacy Keras before TensorFlow is imported)


import numpy as np
import pytest

from conftest import ZOOMS, raises_naming, save_nifti
from gsmorph_tf.data.acdc import ACDC_LABELS, find_acdc_subjects, load_acdc, load_acdc_subject, read_info_cfg
from gsmorph_tf.data.nifti import DatasetError, load_nifti

SHAPE = (40, 36, 3)          # [X, Y, Z]
ED_FRAME, ES_FRAME = 1, 12
BACKGROUND, ED_HEART, ES_HEART = 10.0, 100.0, 60.0


def _ed_labels():
    """ED labels: a 12x12 block at rows 14..25, cols 12..23 (RV strip, Myo, LV inside); centroid (19.5, 17.5)."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[14:26, 12:16] = ACDC_LABELS["RV"]
    labels[14:26, 16:24] = ACDC_LABELS["Myo"]
    labels[17:23, 18:22] = ACDC_LABELS["LV"]     # 6 x 4 = 24 pixels a slice
    return labels


def _es_labels():
    """ES labels: the same block shifted 2 rows down, with a smaller LV (4 x 2 = 8 pixels a slice)."""
    labels = np.zeros(SHAPE, np.uint8)
    labels[16:28, 12:16] = ACDC_LABELS["RV"]
    labels[16:28, 16:24] = ACDC_LABELS["Myo"]
    labels[20:24, 19:21] = ACDC_LABELS["LV"]
    return labels



def write_patient(parent, name):
    """Write one patient folder as ACDC publishes it: Info.cfg and the ED/ES frames with labels."""
    folder = parent / name
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(f"ED: {ED_FRAME}\nES: {ES_FRAME}\nGroup: DCM\nHeight: 184.0\n"
                                     "NbFrame: 30\nWeight: 95.0\n")
    for frame, labels, heart in ((ED_FRAME, _ed_labels(), ED_HEART), (ES_FRAME, _es_labels(), ES_HEART)):
        image = np.where(labels > 0, heart, BACKGROUND).astype(np.float32)
        save_nifti(image, folder / f"{name}_frame{frame:02d}.nii.gz")
        save_nifti(labels, folder / f"{name}_frame{frame:02d}_gt.nii.gz")
    return folder


def frame_path(folder, frame, gt=False):
    return folder / f"{folder.name}_frame{frame:02d}{'_gt' if gt else ''}.nii.gz"


@pytest.fixture
def flat_tree(tmp_path):
    """Three patients directly under the root."""
    root = tmp_path / "acdc"
    for name in ("patient003", "patient001", "patient002"):
        write_patient(root, name)
    return root



# --- layout and Info.cfg ----------------------------------------------------------------------------------

def test_find_subjects_flat_layout(flat_tree):
    assert [p.name for p in find_acdc_subjects(flat_tree)] == ["patient001", "patient002", "patient003"]


def test_find_subjects_training_testing_layout(tmp_path):
    root = tmp_path / "ACDC"
    for name in ("patient002", "patient001"):
        (root / "training" / name).mkdir(parents=True)
    (root / "testing" / "patient101").mkdir(parents=True)
    (root / "training" / "notes").mkdir()   # not a patient folder: ignored
    found = find_acdc_subjects(root)
    assert [p.relative_to(root).as_posix() for p in found] == [
        "training/patient001", "training/patient002", "testing/patient101"]


def test_find_subjects_rejects_duplicate_patient(tmp_path):
    (tmp_path / "patient001").mkdir()
    (tmp_path / "training" / "patient001").mkdir(parents=True)
    with raises_naming(tmp_path / "training" / "patient001", "also found"):
        find_acdc_subjects(tmp_path)


def test_read_info_cfg(flat_tree):
    info = read_info_cfg(flat_tree / "patient001" / "Info.cfg")
    assert info == {"ED": 1, "ES": 12, "Group": "DCM", "Height": 184.0, "NbFrame": 30, "Weight": 95.0}


# --- loading ----------------------------------------------------------------------------------------------

def test_subject_moving_is_es_fixed_is_ed(flat_tree):
    pairs = load_acdc_subject(flat_tree / "patient001", crop_size=(32, 32))
    assert pairs.subject == "patient001"
    assert pairs.moving.shape == pairs.fixed.shape == pairs.moving_labels.shape == (3, 32, 32)
    lv = ACDC_LABELS["LV"]
    assert np.count_nonzero(pairs.fixed_labels == lv) == 3 * 24    # ED LV
    assert np.count_nonzero(pairs.moving_labels == lv) == 3 * 8     # ES LV
    # Shared scale: lo = background 10, hi = ED heart 100, so ES heart 60 -> 50 / 90.
    assert pairs.fixed.max() == pytest.approx(1.0)
    assert pairs.moving.max() == pytest.approx(50 / 90)
    assert pairs.fixed.min() == pytest.approx(0.0)


def test_subject_spacing_labels_and_crop_window(flat_tree):
    pairs = load_acdc_subject(flat_tree / "patient002", crop_size=(32, 32))
    assert pairs.spacing_mm == (8.0, 1.5, 1.25)            # (slice, row = x, col = y)
    assert pairs.label_values == {"RV": 1, "Myo": 2, "LV": 3}
    assert pairs.fixed_labels.dtype == pairs.moving_labels.dtype == np.int32
    # Crop centre = ED centroid (19.5, 17.5) -> (20, 18); a 32-wide window starts at row 4, col 2.
    ed = np.transpose(_ed_labels(), (2, 0, 1))
    es = np.transpose(_es_labels(), (2, 0, 1))
    np.testing.assert_array_equal(pairs.fixed_labels, ed[:, 4:36, 2:34])
    np.testing.assert_array_equal(pairs.moving_labels, es[:, 4:36, 2:34])


def test_subject_smaller_than_crop_is_padded_whole(flat_tree):
    pairs = load_acdc_subject(flat_tree / "patient003", crop_size=(64, 64))
    # Window starts at row 20 - 32 = -12, col 18 - 32 = -14: the 40 x 36 slice sits at rows 12..51, cols 14..49.
    ed = np.transpose(_ed_labels(), (2, 0, 1))
    np.testing.assert_array_equal(pairs.fixed_labels[:, 12:52, 14:50], ed)
    assert pairs.fixed_labels.sum() == ed.sum()
    assert np.all(pairs.fixed[:, :12, :] == 0.0)


def test_load_acdc_flat_and_split(flat_tree):
    splits = load_acdc(flat_tree, crop_size=(32, 32))
    assert sorted(splits) == ["test", "train", "val"]
    assert [len(splits[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    names = sorted(p.subject for subjects in splits.values() for p in subjects)
    assert names == ["patient001", "patient002", "patient003"]


def test_load_acdc_training_testing_layout(tmp_path):
    root = tmp_path / "ACDC"
    for name in ("patient001", "patient002", "patient003"):
        write_patient(root / "training", name)
    write_patient(root / "testing", "patient101")
    splits = load_acdc(root, crop_size=(32, 32), seed=1)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [2, 1, 1]
    names = sorted(p.subject for subjects in splits.values() for p in subjects)
    assert names == ["patient001", "patient002", "patient003", "patient101"]
    again = load_acdc(root, crop_size=(32, 32), seed=1)
    assert [p.subject for p in again["test"]] == [p.subject for p in splits["test"]]


# --- bad input: each raises DatasetError naming the offending file ----------------------------------------

def test_missing_data_dir(tmp_path):
    with raises_naming(tmp_path / "nowhere", "does not exist"):
        load_acdc(tmp_path / "nowhere")


def test_empty_data_dir_says_expected_layout(tmp_path):
    (tmp_path / "training").mkdir()
    (tmp_path / "readme.txt").write_text("not a patient")
    with raises_naming(tmp_path, "no ACDC patient folders.*patientNNN.*training/ and testing/"):
        load_acdc(tmp_path)


def test_too_few_patients(tmp_path):
    write_patient(tmp_path, "patient001")
    with raises_naming(tmp_path, "at least 3"):
        load_acdc(tmp_path)


def test_missing_info_cfg(flat_tree):
    path = flat_tree / "patient002" / "Info.cfg"
    path.unlink()
    with raises_naming(path, "Info.cfg not found"):
        load_acdc(flat_tree)


@pytest.mark.parametrize("text, match", [
    ("ED: 1\nNbFrame: 30\n", "no 'ES:' line"),
    ("ED: one\nES: 12\n", "ED must be int, got 'one'"),
    ("ED: 1\nES: 12.5\n", "ES must be int"),
    ("ED: 1\nES: 31\nNbFrame: 30\n", "ES frame 31 is outside 1..30"),
    ("ED 1\nES: 12\n", "expected 'key: value'"),
])
def test_bad_info_cfg(flat_tree, text, match):
    path = flat_tree / "patient003" / "Info.cfg"
    path.write_text(text)
    with raises_naming(path, match):
        load_acdc(flat_tree)


@pytest.mark.parametrize("frame, gt", [(ED_FRAME, False), (ED_FRAME, True), (ES_FRAME, False), (ES_FRAME, True)])
def test_missing_frame_file(flat_tree, frame, gt):
    path = frame_path(flat_tree / "patient001", frame, gt)
    path.unlink()
    with raises_naming(path, "not found"):
        load_acdc(flat_tree)


def test_truncated_gzip(flat_tree):
    path = frame_path(flat_tree / "patient002", ES_FRAME)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with raises_naming(path, "cannot read as NIfTI"):
        load_acdc(flat_tree)


def test_garbage_file(flat_tree):
    path = frame_path(flat_tree / "patient002", ED_FRAME, gt=True)
    path.write_bytes(b"this is not a NIfTI file at all" * 20)
    with raises_naming(path, "cannot read as NIfTI"):
        load_acdc(flat_tree)


def test_label_shape_differs_from_image(flat_tree):
    path = frame_path(flat_tree / "patient001", ES_FRAME, gt=True)
    save_nifti(_es_labels()[:, :, :2], path)
    with raises_naming(path, r"shape \(40, 36, 2\), expected the shape of its image \(40, 36, 3\)"):
        load_acdc(flat_tree)


def test_unexpected_label_value(flat_tree):
    path = frame_path(flat_tree / "patient001", ED_FRAME, gt=True)
    labels = _ed_labels()
    labels[0, 0, 0] = 4
    save_nifti(labels, path)
    with raises_naming(path, r"unexpected label values \[4\]"):
        load_acdc(flat_tree)


def test_non_finite_voxels(flat_tree):
    path = frame_path(flat_tree / "patient003", ED_FRAME)
    image = np.full(SHAPE, BACKGROUND, np.float32)
    image[1, 2, 0] = np.nan
    image[3, 4, 1] = np.inf
    save_nifti(image, path)
    with raises_naming(path, "2 voxel.* NaN or infinite"):
        load_acdc(flat_tree)


def test_wrong_number_of_dimensions(flat_tree):
    path = frame_path(flat_tree / "patient003", ES_FRAME)
    save_nifti(np.zeros((*SHAPE, 2), np.float32), path)
    with raises_naming(path, r"expected a 3-D volume, got shape \(40, 36, 3, 2\)"):
        load_acdc(flat_tree)


def test_ed_labels_without_foreground(flat_tree):
    path = frame_path(flat_tree / "patient002", ED_FRAME, gt=True)
    save_nifti(np.zeros(SHAPE, np.uint8), path)
    with raises_naming(path, "no foreground"):
        load_acdc(flat_tree)


def test_all_bad_patients_reported_together(flat_tree):
    missing = flat_tree / "patient001" / "Info.cfg"
    missing.unlink()
    empty = frame_path(flat_tree / "patient003", ED_FRAME, gt=True)
    save_nifti(np.zeros(SHAPE, np.uint8), empty)
    with pytest.raises(DatasetError, match="2 bad ACDC patient") as caught:
        load_acdc(flat_tree)
    assert str(missing) in str(caught.value) and str(empty) in str(caught.value)


def test_load_nifti_returns_array_zooms_affine(flat_tree):
    image, zooms, affine = load_nifti(frame_path(flat_tree / "patient001", ED_FRAME), expected_ndim=3)
    labels, _, _ = load_nifti(frame_path(flat_tree / "patient001", ED_FRAME, gt=True))
    assert image.dtype == np.float32 and image.shape == SHAPE
    assert labels.dtype == np.uint8   # label maps keep their stored integer type
    assert zooms == ZOOMS
    np.testing.assert_array_equal(affine, np.diag([*ZOOMS, 1.0]))


def test_motion_crop_reads_the_4d_cine_and_names_it_when_missing(flat_tree):
    folder = flat_tree / "patient001"
    with raises_naming(folder / "patient001_4d.nii.gz", "4D cine not found"):
        load_acdc_subject(folder, (8, 8), "motion")
    cine = np.full(SHAPE + (4,), BACKGROUND, np.float32)
    cine[20, 18, :, 1::2] = 900.0  # motion at the ED label centroid (19.5, 17.5), rounded (20, 18)
    save_nifti(cine, folder / "patient001_4d.nii.gz")
    pairs = load_acdc_subject(folder, (16, 16), "motion")
    assert pairs.crop_coverage == 1.0
    assert np.array_equal(pairs.fixed_labels, load_acdc_subject(folder, (16, 16), "labels").fixed_labels)
