"""Tracking through a 4-D cine (gsmorph_tf.register.track, run_track.py): the ACDC, M&Ms and plain-NIfTI layouts,
the two strategies' fields against the registrations they are made of, volumes in ml, EF, the ES check against
the metrics, bad inputs named before anything is written."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, raises_naming, save_nifti
from gsmorph_tf.core.flows import compose_flows
from gsmorph_tf.data.acdc import ACDC_LABELS
from gsmorph_tf.data.mnms import MNMS_LABELS
from gsmorph_tf.data.phantom import generate_phantom_dataset
from gsmorph_tf.evaluate.metrics import dice_per_structure, hd95_per_structure
from gsmorph_tf.register import register_volumes, track
from gsmorph_tf.register.apply import warp_label_map

ACDC_TO_MNMS = np.array([0, 3, 2, 1], np.uint8)  # RV 1 -> 3, Myo 2 -> 2, LV 3 -> 1


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    """A 3-frame 32-px 2-slice phantom patient in the ACDC layout (ED frame 1, ES frame 2, 1-based)."""
    root = generate_phantom_dataset(tmp_path_factory.mktemp("phantom") / "data", n_subjects=1, n_slices=2,
                                    image_size=32, n_frames=3)
    return root / "training" / "patient001"


@pytest.fixture(scope="module")
def tracked(model_2d, patient, tmp_path_factory):
    """The patient tracked with the direct strategy: ``(cine, paths, summary)``."""
    cine = track.read_acdc_cine(patient)
    paths, summary = track.track_cine(model_2d, cine, str(tmp_path_factory.mktemp("out")), "direct")
    return cine, paths, summary


def load(path):
    return np.asanyarray(nib.load(str(path)).dataobj)


def test_acdc_outputs_are_the_ed_frame_registered_with_every_frame(model_2d, tracked):
    cine, paths, summary = tracked
    assert (cine.ed, cine.es, cine.label_values) == (0, 1, ACDC_LABELS)
    flows, labels = load(paths["flows"]), load(paths["labels"])
    shape = cine.frames.shape
    assert flows.shape == shape + (3,) and labels.shape == shape
    assert np.allclose(nib.load(paths["flows"]).affine, cine.affine)
    assert not flows[..., 0, :].any() and np.array_equal(labels[..., 0], cine.ed_labels)
    center = tuple(summary["window_center_voxels"])
    assert center == track.track_window(model_2d, cine.frames)
    for t in (1, 2):  # fixed = frame t, moving = ED: the field pulls ED onto frame t
        expected = register_volumes(model_2d, cine.frames[..., 0], cine.frames[..., t], center=center).flow_voxels
        np.testing.assert_allclose(flows[..., t, :], expected, atol=1e-5)
        assert flows[..., t, :2].any() and not flows[..., t, 2].any()  # 2D model: no motion across slices
        assert np.array_equal(labels[..., t], warp_label_map(cine.ed_labels, flows[..., t, :], "onehot"))
    assert sorted(os.listdir(os.path.dirname(paths["flows"]))) == sorted(os.path.basename(p) for p in paths.values())


def test_volumes_csv_and_summary_follow_the_propagated_labels(tracked):
    cine, paths, summary = tracked
    labels = load(paths["labels"])
    voxel_ml = float(np.prod(cine.zooms)) / 1000.0
    rows = open(paths["volumes_csv"]).read().split()
    assert rows[0] == "frame,LV_ml,Myo_ml,RV_ml" and len(rows) == 4
    for t, row in enumerate(rows[1:]):
        values = [float(v) for v in row.split(",")]
        assert values[0] == t
        for value, name in zip(values[1:], ("LV", "Myo", "RV")):
            assert value == pytest.approx(np.count_nonzero(labels[..., t] == ACDC_LABELS[name]) * voxel_ml, abs=1e-4)
    lv = [np.count_nonzero(labels[..., t] == 3) * voxel_ml for t in range(3)]
    assert summary["es_frame"] == int(np.argmin(lv))
    assert summary["LV"]["EDV_ml"] == pytest.approx(lv[0])
    assert summary["LV"]["EF_percent"] == pytest.approx(100 * (lv[0] - min(lv)) / lv[0])
    assert summary["myocardial_mass_g"] == pytest.approx(1.05 * np.count_nonzero(cine.ed_labels == 2) * voxel_ml)
    assert json.load(open(paths["summary"]))["LV"] == pytest.approx(summary["LV"])
    assert os.path.getsize(paths["volumes_png"]) > 0


def test_es_check_is_the_metrics_on_the_propagated_and_manual_es_labels(tracked):
    cine, paths, summary = tracked
    propagated, check = load(paths["labels"])[..., cine.es], summary["es_check"]
    values = {name: ACDC_LABELS[name] for name in ("LV", "Myo", "RV")}
    assert check["dice"] == pytest.approx(dice_per_structure(propagated, cine.es_labels, values), nan_ok=True)
    assert check["hd95_mm"] == pytest.approx(hd95_per_structure(propagated, cine.es_labels, values, cine.zooms),
                                             nan_ok=True)
    voxel_ml = float(np.prod(cine.zooms)) / 1000.0
    edv, esv = (np.count_nonzero(m == 3) * voxel_ml for m in (cine.ed_labels, cine.es_labels))
    assert check["EF_manual_LV"] == pytest.approx(100 * (edv - esv) / edv)
    assert check["EF_error_LV"] == pytest.approx(summary["at_given_es"]["LV"]["EF_percent"] - check["EF_manual_LV"])


def test_composed_fields_chain_the_frame_to_frame_registrations(model_2d, patient):
    cine = track.read_acdc_cine(patient)
    center = track.track_window(model_2d, cine.frames)
    fields = dict(track.track_fields(model_2d, cine, center, "composed"))
    frames = cine.frames
    step1 = register_volumes(model_2d, frames[..., 0], frames[..., 1], center=center).flow_voxels
    step2 = register_volumes(model_2d, frames[..., 1], frames[..., 2], center=center).flow_voxels
    np.testing.assert_allclose(fields[1], step1, atol=1e-5)
    expected = compose_flows([tf.constant(step1[None]), tf.constant(step2[None])]).numpy()[0]
    np.testing.assert_allclose(fields[2], expected, atol=1e-5)
    assert not np.allclose(fields[2], step2, atol=1e-3)  # the composition is not the last step alone


def test_mnms_layout_reports_structures_by_name(model_2d, patient, tracked, tmp_path):
    acdc, _, acdc_summary = tracked
    folder = tmp_path / "Training" / "Labeled" / "A1B2C3"
    folder.mkdir(parents=True)
    gt = np.zeros(acdc.frames.shape, np.uint8)
    gt[..., 0], gt[..., 1] = ACDC_TO_MNMS[acdc.ed_labels], ACDC_TO_MNMS[acdc.es_labels]
    nib.save(nib.Nifti1Image(acdc.frames, acdc.affine, acdc.header), str(folder / "A1B2C3_sa.nii.gz"))
    nib.save(nib.Nifti1Image(gt, acdc.affine), str(folder / "A1B2C3_sa_gt.nii.gz"))
    csv = tmp_path / "info.csv"
    csv.write_text("External code,VendorName,ED,ES\nA1B2C3,Siemens,0,1\n")
    cine = track.read_mnms_cine(folder, csv)
    assert (cine.name, cine.ed, cine.es, cine.label_values) == ("A1B2C3", 0, 1, MNMS_LABELS)
    paths, summary = track.track_cine(model_2d, cine, str(tmp_path / "out"), "direct")
    for ventricle in ("LV", "RV"):
        assert summary[ventricle]["EDV_ml"] == pytest.approx(acdc_summary[ventricle]["EDV_ml"])
        assert summary["es_check"]["EF_manual_" + ventricle] == pytest.approx(
            acdc_summary["es_check"]["EF_manual_" + ventricle])
    assert summary["myocardial_mass_g"] == pytest.approx(acdc_summary["myocardial_mass_g"])
    assert load(paths["labels"]).max() <= 3


def test_plain_cine_of_30_frames_with_ed_not_first(model_2d, tmp_path):
    """A 30-frame cine, ED at frame 28: composed along the cycle 28, 29, 0, 1, ...; no ED labels: fields only."""
    rng = np.random.default_rng(0)
    base = rng.random((32, 32, 2)).astype(np.float32)
    frames = np.stack([np.roll(base, (t % 4) - 2, axis=0) for t in range(30)], axis=-1) * 500
    save_nifti(frames, tmp_path / "cine.nii.gz")
    cine = track.read_cine(str(tmp_path / "cine.nii.gz"), 28)
    assert track.frame_order(28, 30)[:4] == [28, 29, 0, 1]
    paths, summary = track.track_cine(model_2d, cine, str(tmp_path / "out"), "composed")
    assert set(paths) == {"flows", "summary"} and summary["ed_frame"] == 28
    flows = load(paths["flows"])
    assert flows.shape == (32, 32, 2, 30, 3) and not flows[..., 28, :].any() and flows[..., 27, :].any()
    assert sorted(os.listdir(tmp_path / "out")) == ["cine_flows.nii.gz", "cine_summary.json"]


def test_volumes_in_ml_and_ejection_fraction_by_hand():
    labels = np.zeros((4, 5, 2), np.uint8)
    labels[0, :, 0] = 3  # 5 LV voxels
    labels[1, :2, :] = 2  # 4 Myo voxels
    labels[3, 0, 1] = 1  # 1 RV voxel
    volumes = track.structure_volumes_ml(labels, ACDC_LABELS, (1.5, 1.25, 8.0))  # 15 mm^3 per voxel
    assert volumes == pytest.approx({"LV": 0.075, "Myo": 0.06, "RV": 0.015})
    assert track.ejection_fraction(150.0, 60.0) == pytest.approx(60.0)
    assert np.isnan(track.ejection_fraction(0.0, 0.0))


def test_bad_inputs_are_named_before_anything_runs(patient, tmp_path):
    cine_path = patient / "patient001_4d.nii.gz"
    frame = patient / "patient001_frame01.nii.gz"
    with raises_naming(frame, "expected a 4-D cine"):
        track.read_cine(str(frame), 0)
    with raises_naming(cine_path, "ED frame 3 .*outside the 3 frames 0..2"):
        track.read_cine(str(cine_path), 3)
    labels = load(patient / "patient001_frame01_gt.nii.gz")
    save_nifti(labels[:, :-1], tmp_path / "cropped_gt.nii.gz")
    with raises_naming(tmp_path / "cropped_gt.nii.gz", "not on the frame grid"):
        track.read_cine(str(cine_path), 0, str(tmp_path / "cropped_gt.nii.gz"))
    image = nib.load(str(cine_path))
    nib.save(nib.Nifti1Image(labels, image.affine + np.diag([0, 0, 1.0, 0])), str(tmp_path / "thick_gt.nii.gz"))
    with raises_naming(tmp_path / "thick_gt.nii.gz", "not on the frame grid"):
        track.read_cine(str(cine_path), 0, str(tmp_path / "thick_gt.nii.gz"))


def test_run_track_exits_2_naming_the_frame_with_nothing_written(patient, tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "run_track.py"), "--saved_model=/nonexistent",
                           "--cine=%s" % (patient / "patient001_4d.nii.gz"), "--ed_frame=7",
                           "--output_dir=%s" % (tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error:" in done.stderr and "patient001_4d.nii.gz: ED frame 7" in done.stderr
    assert not (tmp_path / "out").exists()
