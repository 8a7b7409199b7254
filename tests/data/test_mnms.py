"""Tests of gsmorph_tf.data.mnms on tiny trees in the M&Ms layout (4-D cines, information CSV)."""
import gsmorph_tf  # noqa: F401  (selects legacy Keras before TensorFlow is imported)

import logging

import nibabel as nib
import numpy as np
import pytest
from absl import flags

from conftest import ROOT, raises_naming, save_nifti
from gsmorph_tf.data.acdc import ACDC_LABELS, load_acdc_subject
from gsmorph_tf.data.mnms import (MNMS_CSV_NAME, MNMS_LABELS, find_mnms_subjects, load_mnms, load_mnms_subject,
                                  read_mnms_csv)
from gsmorph_tf.data.nifti import DatasetError
from gsmorph_tf.data.preprocessing import crop_coverage, crop_or_pad, motion_center
from gsmorph_tf.evaluate import evaluation

SHAPE = (40, 36, 3)           # [X, Y, Z]; cines are [X, Y, Z, T]
N_FRAMES = 5
ED_FRAME, ES_FRAME = 1, 3     # 0-based, as in the M&Ms CSV
BACKGROUND = 10.0
HEART_BY_FRAME = (40.0, 100.0, 70.0, 60.0, 50.0)   # ED (frame 1) 100, ES (frame 3) 60
CODES = {"Training/Labeled": "A0S9V9", "Validation": "B1C2D3", "Testing": "C4E5F6"}
CSV_HEADER = ",External code,VendorName,Vendor,Centre,ED,ES,Age,Pathology,Sex,Height,Weight"


def _masks(phase):
    """Structure name -> [X, Y, Z] mask, the same heart geometry as tests/data/test_acdc.py.

    ED: a 12x12 block at rows 14..25, cols 12..23 (RV strip, Myo, LV of 6 x 4 = 24 pixels a slice).
    ES: the block 2 rows down with an LV of 4 x 2 = 8 pixels at rows 20..23, cols 19..20. Identity Dice a slice:
    LV 2 * 6 / (24 + 8) = 37.5 %, RV 2 * 40 / (48 + 48) = 83.3 %.
    """
    shift = 0 if phase == "ED" else 2
    masks = {name: np.zeros(SHAPE, bool) for name in ("RV", "Myo", "LV")}
    masks["RV"][14 + shift:26 + shift, 12:16] = True
    if phase == "ED":
        masks["LV"][17:23, 18:22] = True
    else:
        masks["LV"][20:24, 19:21] = True
    masks["Myo"][14 + shift:26 + shift, 16:24] = True
    masks["Myo"] &= ~masks["LV"]
    return masks


def _label_map(phase, label_values):
    labels = np.zeros(SHAPE, np.uint8)
    for name, mask in _masks(phase).items():
        labels[mask] = label_values[name]
    return labels



def write_subject(folder):
    """Write ``<CODE>_sa.nii.gz`` and ``<CODE>_sa_gt.nii.gz`` with labels in frames ED_FRAME and ES_FRAME only."""
    folder.mkdir(parents=True)
    image = np.full((*SHAPE, N_FRAMES), BACKGROUND, np.float32)
    labels = np.zeros((*SHAPE, N_FRAMES), np.uint8)
    for frame, heart in enumerate(HEART_BY_FRAME):
        phase = "ED" if frame <= 2 else "ES"    # the heart is drawn in every frame, labelled in two
        image[..., frame][_label_map(phase, MNMS_LABELS) > 0] = heart
    labels[..., ED_FRAME] = _label_map("ED", MNMS_LABELS)
    labels[..., ES_FRAME] = _label_map("ES", MNMS_LABELS)
    save_nifti(image, folder / f"{folder.name}_sa.nii.gz")
    save_nifti(labels, folder / f"{folder.name}_sa_gt.nii.gz")
    return folder


def write_csv(root, rows, header=CSV_HEADER, prefix=""):
    """The information CSV; ``rows`` are ``(code, ed, es)``."""
    lines = [header] + [f"{i},{code},Philips,B,2,{ed},{es},45,HCM,M,180,80"
                        for i, (code, ed, es) in enumerate(rows)]
    path = root / MNMS_CSV_NAME
    path.write_text(prefix + "\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tree(tmp_path):
    """One subject in each of Training/Labeled, Validation, Testing, and the CSV with their rows."""
    root = tmp_path / "MnM"
    for split, code in CODES.items():
        write_subject(root / split / code)
    write_csv(root, [(code, ED_FRAME, ES_FRAME) for code in CODES.values()])
    return root


def subject_dir(root, code="B1C2D3"):
    return next(folder for folder in find_mnms_subjects(root) if folder.name == code)



# --- layout and CSV ---------------------------------------------------------------------------------------

def test_find_subjects_in_the_three_split_folders(tree):
    (tree / "Training" / "Unlabeled" / "D7D7D7").mkdir(parents=True)   # no labels: not read
    (tree / "Testing" / "notes.txt").write_text("not a subject")
    (tree / "Testing" / ".ipynb_checkpoints").mkdir()
    found = find_mnms_subjects(tree)
    assert [p.relative_to(tree).as_posix() for p in found] == [
        "Training/Labeled/A0S9V9", "Validation/B1C2D3", "Testing/C4E5F6"]


def test_find_subjects_rejects_duplicate_code(tree):
    duplicate = tree / "Testing" / "A0S9V9"
    duplicate.mkdir()
    with raises_naming(duplicate, "also found"):
        find_mnms_subjects(tree)


def test_missing_and_empty_data_dir(tmp_path):
    with raises_naming(tmp_path / "nowhere", "does not exist"):
        load_mnms(tmp_path / "nowhere")
    (tmp_path / "Validation").mkdir()
    with raises_naming(tmp_path, "no M&Ms subject folders.*Training/Labeled/, Validation/ and Testing/"):
        load_mnms(tmp_path)


def test_read_csv_rows_and_0_based_frames(tree):
    rows = read_mnms_csv(tree / MNMS_CSV_NAME)
    assert sorted(rows) == sorted(CODES.values())
    row = rows["A0S9V9"]
    assert (row["ED"], row["ES"]) == (1, 3)
    assert (row["VendorName"], row["Vendor"], row["Centre"], row["Pathology"]) == ("Philips", "B", "2", "HCM")


def test_read_csv_with_byte_order_mark_and_spaces(tmp_path):
    path = write_csv(tmp_path, [("A0S9V9", 0, 9)], header=",External code , VendorName,Vendor,Centre, ED ,ES",
                     prefix="\ufeff")
    assert read_mnms_csv(path)["A0S9V9"]["ES"] == 9


@pytest.mark.parametrize("header, rows, match", [
    ("External code,VendorName,Vendor,Centre,ED", [], r"missing column\(s\) \['ES'\]"),
    (CSV_HEADER, [("A0S9V9", "one", 3)], r"line 2 \(A0S9V9\): ED must be a non-negative integer.*'one'"),
    (CSV_HEADER, [("A0S9V9", 1, "-2")], r"line 2 \(A0S9V9\): ES must be a non-negative integer"),
    (CSV_HEADER, [("A0S9V9", 1, 3), ("B1C2D3", 4, 4)], r"line 3 \(B1C2D3\): ED and ES are the same frame 4"),
    (CSV_HEADER, [("A0S9V9", 1, 3), ("A0S9V9", 1, 3)], "line 3: code A0S9V9 listed twice"),
])
def test_bad_csv(tmp_path, header, rows, match):
    path = write_csv(tmp_path, rows, header=header)
    with raises_naming(path, match):
        read_mnms_csv(path)


def test_missing_csv_names_expected_path(tree):
    path = tree / MNMS_CSV_NAME
    path.unlink()
    with raises_naming(path, "CSV not found"):
        load_mnms(tree)


# --- loading ----------------------------------------------------------------------------------------------

def test_subject_moving_is_es_fixed_is_ed_0_based(tree):
    pairs = load_mnms_subject(subject_dir(tree), ED_FRAME, ES_FRAME, crop_size=(32, 32))
    assert pairs.subject == "B1C2D3"
    assert pairs.moving.shape == pairs.fixed.shape == pairs.moving_labels.shape == (3, 32, 32)
    lv = MNMS_LABELS["LV"]
    assert np.count_nonzero(pairs.fixed_labels == lv) == 3 * 24    # ED LV
    assert np.count_nonzero(pairs.moving_labels == lv) == 3 * 8     # ES LV
    # Frames 1 and 3 (0-based): lo = background 10, hi = ED heart 100, ES heart 60 -> 50 / 90. Frames 0/2/4
    # (heart 40, 70, 50) or 1-based reading would give other values.
    assert pairs.fixed.max() == pytest.approx(1.0)
    assert pairs.moving.max() == pytest.approx(50 / 90)


def test_subject_spacing_labels_and_crop_window(tree):
    pairs = load_mnms_subject(subject_dir(tree), ED_FRAME, ES_FRAME, crop_size=(32, 32))
    assert pairs.spacing_mm == (8.0, 1.5, 1.25)            # (slice, row = x, col = y), not the frame time
    assert pairs.label_values == {"LV": 1, "Myo": 2, "RV": 3}
    assert pairs.fixed_labels.dtype == np.int32
    # Crop centre = ED centroid (19.5, 17.5) -> (20, 18): the window starts at row 4, col 2.
    ed = np.transpose(_label_map("ED", MNMS_LABELS), (2, 0, 1))
    np.testing.assert_array_equal(pairs.fixed_labels, ed[:, 4:36, 2:34])


def test_load_mnms_pools_the_splits(tree):
    splits = load_mnms(tree, crop_size=(32, 32))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    assert sorted(p.subject for subjects in splits.values() for p in subjects) == sorted(CODES.values())
    again = load_mnms(tree, crop_size=(32, 32))
    assert [p.subject for p in again["test"]] == [p.subject for p in splits["test"]]


def test_csv_code_without_folder_is_skipped_with_a_warning(tree, caplog):
    write_csv(tree, [(code, ED_FRAME, ES_FRAME) for code in (*CODES.values(), "Z9Z9Z9")])
    with caplog.at_level(logging.WARNING, logger="gsmorph_tf.data.mnms"):
        splits = load_mnms(tree, crop_size=(32, 32))
    assert sum(len(s) for s in splits.values()) == 3
    assert "1 subject(s) listed" in caplog.text and "skipped: Z9Z9Z9" in caplog.text


def test_folder_without_csv_row_is_an_error(tree):
    write_csv(tree, [("A0S9V9", ED_FRAME, ES_FRAME), ("C4E5F6", ED_FRAME, ES_FRAME)])
    with raises_naming(tree / "Validation" / "B1C2D3", "no row for code B1C2D3"):
        load_mnms(tree)


@pytest.mark.parametrize("ed, es, key, frame", [(2, ES_FRAME, "ED", 2), (ED_FRAME, 4, "ES", 4), (0, 2, "ED", 0)])
def test_frame_without_labels_names_file_and_frame(tree, ed, es, key, frame):
    path = subject_dir(tree) / "B1C2D3_sa_gt.nii.gz"
    with raises_naming(path, rf"{key} frame {frame} \(0-based, from the CSV\) has no labels; labels are in "
                              r"frame\(s\) \[1, 3\]"):
        load_mnms_subject(subject_dir(tree), ed, es)


def test_1_based_csv_is_caught(tree):
    write_csv(tree, [(code, ED_FRAME + 1, ES_FRAME + 1) for code in CODES.values()])
    with pytest.raises(DatasetError, match=r"(?s)3 bad M&Ms subject.*ED frame 2 .*has no labels") as caught:
        load_mnms(tree)
    for split, code in CODES.items():
        assert str(tree / split / code / f"{code}_sa_gt.nii.gz") in str(caught.value)


def test_frame_outside_the_cine(tree):
    path = subject_dir(tree) / "B1C2D3_sa.nii.gz"
    with raises_naming(path, r"ES frame 5 \(0-based, from the CSV\) is outside the 5 frames 0..4"):
        load_mnms_subject(subject_dir(tree), ED_FRAME, 5)


@pytest.mark.parametrize("name", ["B1C2D3_sa.nii.gz", "B1C2D3_sa_gt.nii.gz"])
def test_missing_file(tree, name):
    path = subject_dir(tree) / name
    path.unlink()
    with raises_naming(path, "not found"):
        load_mnms(tree)


def test_truncated_gzip(tree):
    path = subject_dir(tree) / "B1C2D3_sa.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with raises_naming(path, "cannot read as NIfTI"):
        load_mnms(tree)


def test_non_finite_voxels(tree):
    path = subject_dir(tree) / "B1C2D3_sa.nii.gz"
    image = np.full((*SHAPE, N_FRAMES), BACKGROUND, np.float32)
    image[1, 2, 0, 4] = np.nan
    save_nifti(image, path)
    with raises_naming(path, "1 voxel.* NaN or infinite"):
        load_mnms(tree)


def test_not_a_cine(tree):
    path = subject_dir(tree) / "B1C2D3_sa.nii.gz"
    save_nifti(np.zeros(SHAPE, np.float32), path)
    with raises_naming(path, r"expected a 4-D volume, got shape \(40, 36, 3\)"):
        load_mnms(tree)


def test_label_shape_differs_from_image(tree):
    path = subject_dir(tree) / "B1C2D3_sa_gt.nii.gz"
    save_nifti(np.zeros((*SHAPE, N_FRAMES - 1), np.uint8), path)
    with raises_naming(path, r"shape \(40, 36, 3, 4\), expected the shape of its image \(40, 36, 3, 5\)"):
        load_mnms(tree)


def test_unexpected_label_value(tree):
    path = subject_dir(tree) / "B1C2D3_sa_gt.nii.gz"
    labels = np.zeros((*SHAPE, N_FRAMES), np.uint8)
    labels[..., ED_FRAME] = _label_map("ED", MNMS_LABELS)
    labels[..., ES_FRAME] = _label_map("ES", MNMS_LABELS)
    labels[0, 0, 0, ED_FRAME] = 4
    save_nifti(labels, path)
    with raises_naming(path, r"unexpected label values \[4\]"):
        load_mnms(tree)


# --- structures by name across datasets -------------------------------------------------------------------

def write_acdc_patient(folder):
    """The same ED/ES geometry and intensities in the ACDC layout, labelled with ACDC's integers."""
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("ED: 1\nES: 4\nNbFrame: 5\n")
    for frame, phase, heart in ((1, "ED", HEART_BY_FRAME[ED_FRAME]), (4, "ES", HEART_BY_FRAME[ES_FRAME])):
        labels = _label_map(phase, ACDC_LABELS)
        stem = folder / f"{folder.name}_frame{frame:02d}"
        save_nifti(np.where(labels > 0, heart, BACKGROUND).astype(np.float32), f"{stem}.nii.gz")
        save_nifti(labels, f"{stem}_gt.nii.gz")
    return folder


def test_same_heart_gives_same_dice_per_structure_in_both_datasets(tree, tmp_path):
    mnms = load_mnms_subject(subject_dir(tree), ED_FRAME, ES_FRAME, crop_size=(32, 32))
    acdc = load_acdc_subject(write_acdc_patient(tmp_path / "acdc" / "patient001"), crop_size=(32, 32))
    # Same images, different integers: LV is 1 in M&Ms and 3 in ACDC.
    np.testing.assert_array_equal(mnms.moving, acdc.moving)
    np.testing.assert_array_equal(mnms.fixed_labels == 1, acdc.fixed_labels == 3)
    assert not np.array_equal(mnms.fixed_labels, acdc.fixed_labels)
    scores = {name: evaluation.subject_metrics(p, p.moving, p.moving_labels, None)
              for name, p in (("mnms", mnms), ("acdc", acdc))}
    for row in scores.values():
        # Identity (see _masks): LV 37.5 %, RV 83.3 %; swapped LV/RV integers would exchange them.
        assert row["dice_LV"] == pytest.approx(37.5)
        assert row["dice_RV"] == pytest.approx(250 / 3)
    for key in scores["acdc"]:
        if key != "subject":
            assert scores["mnms"][key] == pytest.approx(scores["acdc"][key], nan_ok=True), key


# --- flagfile ---------------------------------------------------------------------------------------------

def test_flagfile_selects_mnms_with_the_acdc_settings(monkeypatch):
    monkeypatch.chdir(ROOT)   # flagfiles name each other from the repo root
    expanded = flags.FlagValues().read_flags_from_files(["prog", "--flagfile=flags/mnms.flags"])
    values = dict(arg[2:].split("=", 1) for arg in expanded[1:])   # later flags override earlier ones
    assert values["dataset"] == "mnms"
    assert values["output_dir"] == "runs/mnms_gsmorph"
    assert (values["model"], values["surgery"], values["learning_rate"], values["crop_size"]) == (
        "gsmorph", "layerwise", "5e-3", "128")


def test_motion_crop_is_centred_on_the_whole_cine(tree):
    folder = subject_dir(tree)
    pairs = load_mnms_subject(folder, ED_FRAME, ES_FRAME, crop_size=(16, 16), crop_center="motion")
    cine = np.asanyarray(nib.load(str(folder / f"{folder.name}_sa.nii.gz")).dataobj)
    center = motion_center(np.transpose(cine, (3, 2, 0, 1)), (16, 16))   # all 5 frames, not only ED and ES
    ed = np.transpose(_label_map("ED", MNMS_LABELS), (2, 0, 1))
    np.testing.assert_array_equal(pairs.fixed_labels, crop_or_pad(ed, center, (16, 16)))
    assert pairs.crop_coverage == crop_coverage(ed, center, (16, 16)) and 0.5 < pairs.crop_coverage <= 1.0
