"""A Learn2Reg submission (gsmorph_tf.register.learn2reg, run_register.py --learn2reg_dir): one displacement file
per listed pair under names both versions of the official evaluation find, the model's own intensity scaling,
the files checked before they are zipped, the CLI."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import shutil
import subprocess
import sys
import types
import zipfile

import nibabel as nib
import numpy as np
import pytest

from conftest import L2R_ZOOMS, ROOT, raises_naming, save_nifti, write_learn2reg_task
from gsmorph_tf.config import TrainConfig
from gsmorph_tf.data.learn2reg import read_image, read_task
from gsmorph_tf.errors import DatasetError, SavedModelError
from gsmorph_tf.register import RegistrationModel, register_volumes
from gsmorph_tf.register.learn2reg import (check_model, check_submission, displacement_names, register_pair,
                                           resolve_intensity_norm, submission_pairs, trained_intensity_norm,
                                           window_note, write_submission)
from gsmorph_tf.serve.provenance import PROVENANCE_FILE, build_provenance
from test_register import blobs


# The two lookup rules of MDL-UzL/L2R at 8847509, as they find the file of a pair in a submission folder. Case and
# modality are the path's characters [-16:-12] and [-11:-7] in both.

def current_rule(files, fixed, moving):
    """evaluation/evaluation.py lines 41-59: disp_F_M only for a 0000 (fixed) / 0001 (moving) pair, tried
    first; disp_F_f_M_m always."""
    f_case, f_mod, m_case, m_mod = fixed[-16:-12], fixed[-11:-7], moving[-16:-12], moving[-11:-7]
    short, long = f"disp_{f_case}_{m_case}", f"disp_{f_case}_{f_mod}_{m_case}_{m_mod}"
    for name, allowed in ((short, (f_mod, m_mod) == ("0000", "0001")), (long, True)):
        if allowed and any(name + ext in files for ext in (".npz", ".nii.gz")):
            return name + ".nii.gz" if name + ".nii.gz" in files else name + ".npz"
    return None


def docker_rule(files, fixed, moving):
    """evaluation/L2RTest/evaluation.py lines 41-49 and 75-86: disp_F_M when f == m or (f, m) == (0000, 0001),
    and then only that name; disp_F_f_M_m otherwise."""
    f_case, f_mod, m_case, m_mod = fixed[-16:-12], fixed[-11:-7], moving[-16:-12], moving[-11:-7]
    if f_mod == m_mod or (f_mod, m_mod) == ("0000", "0001"):
        name = f"disp_{f_case}_{m_case}"
    else:
        name = f"disp_{f_case}_{f_mod}_{m_case}_{m_mod}"
    return next((name + ext for ext in (".npz", ".nii.gz") if name + ext in files), None)


@pytest.mark.parametrize("fixed, moving, expected", [
    ("./imagesTr/OASIS_0395_0000.nii.gz", "./imagesTr/OASIS_0396_0000.nii.gz",
     ("disp_0395_0396.nii.gz", "disp_0395_0000_0396_0000.nii.gz")),  # same modality: the versions disagree
    ("./imagesTr/NLST_0101_0000.nii.gz", "./imagesTr/NLST_0101_0001.nii.gz", ("disp_0101_0101.nii.gz",)),
    ("./imagesTr/ThoraxCBCT_0011_0001.nii.gz", "./imagesTr/ThoraxCBCT_0011_0000.nii.gz",
     ("disp_0011_0001_0011_0000.nii.gz",)),
    ("./imagesTr/AbdomenMRCT_0006_0000.nii.gz", "./imagesTr/AbdomenMRCT_0006_0002.nii.gz",
     ("disp_0006_0000_0006_0002.nii.gz",)),
])
def test_names_are_found_by_both_versions_of_the_evaluation(fixed, moving, expected):
    names = displacement_names(fixed, moving)
    assert names == expected
    found = {rule(set(names), fixed, moving) for rule in (current_rule, docker_rule)}
    assert None not in found and found == set(names)  # both find the pair, and no file is written for nothing


def blob_task(root, shape=(16, 16, 16), val_pairs=((7, 6), (5, 4))):
    """A toy task whose validation images are smooth intensities at different scales (so the scaling matters)."""
    data = write_learn2reg_task(root, n_images=8, val_pairs=val_pairs, shape=shape)
    for index in sorted({i for pair in val_pairs for i in pair}):
        save_nifti(blobs(shape, index, scale=300.0 + 100 * index) + 50.0, root / "imagesTr" / f"TOY_{index:04d}_0000.nii.gz",
                   zooms=L2R_ZOOMS)
    return data


@pytest.fixture(scope="module")
def model(exported_3d):
    """conftest's 16^3 model (an untrained GSMorph U-Net with a constant flow bias), exported from memory: its
    provenance records no training."""
    return RegistrationModel(exported_3d)


@pytest.fixture(scope="module")
def submission(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("l2r") / "TOY"
    blob_task(root)
    task = read_task(root)
    pairs = submission_pairs(task)
    written = write_submission(model, task, pairs, str(root.parent / "out"), "percentile", show_progress=False)
    return task, pairs, written


def test_one_checked_file_per_pair_name_in_the_folder_and_the_zip(submission):
    task, pairs, written = submission
    expected = ["disp_0004_0005.nii.gz", "disp_0004_0000_0005_0000.nii.gz",
                "disp_0006_0007.nii.gz", "disp_0006_0000_0007_0000.nii.gz"]
    assert sorted(os.listdir(written.folder)) == sorted(expected)
    assert sorted(os.listdir(os.path.dirname(written.folder))) == ["displacements", "submission.zip"]
    with zipfile.ZipFile(written.zip_path) as archive:
        assert sorted(archive.namelist()) == sorted(expected)  # top level, no folder
        assert archive.testzip() is None
        assert archive.read("disp_0006_0007.nii.gz") == archive.read("disp_0006_0000_0007_0000.nii.gz")
    files = set(os.listdir(written.folder))
    for moving, fixed in task.val_pairs:
        for rule in (current_rule, docker_rule):
            assert rule(files, task.relative(fixed.image), task.relative(moving.image)) is not None
    for name in expected:
        image = nib.load(os.path.join(written.folder, name))
        assert image.shape == (16, 16, 16, 3) and image.get_data_dtype() == np.float32
        np.testing.assert_allclose(image.affine, np.diag([*L2R_ZOOMS, 1.0]))


def test_the_field_is_register_volumes_on_volumes_scaled_as_training_scaled_them(model, submission):
    task, pairs, written = submission
    (moving, fixed), = [(m.image, f.image) for m, f in task.val_pairs if f.stem == "TOY_0006_0000"]
    field = np.asanyarray(nib.load(os.path.join(written.folder, "disp_0006_0007.nii.gz")).dataobj)
    expected = register_volumes(model, read_image(moving, "percentile"), read_image(fixed, "percentile"),
                                joint_scaling=False).flow_voxels
    np.testing.assert_allclose(field, expected, atol=1e-6)
    assert np.all(np.abs(field).max(axis=(0, 1, 2)) > 0.3)  # all three components move
    # Not the cardiac files' joint scaling of the raw volumes, nor another intensity_norm: the scaling matters.
    raw = [np.asanyarray(nib.load(str(path)).dataobj) for path in (moving, fixed)]
    for other in (register_volumes(model, *raw).flow_voxels,
                  register_volumes(model, read_image(moving, "max"), read_image(fixed, "max"),
                                   joint_scaling=False).flow_voxels):
        assert np.abs(field - other).max() > 1e-3


def test_a_window_smaller_than_the_volume_is_said_and_zero_outside(model, tmp_path):
    blob_task(tmp_path / "TOY", shape=(20, 16, 16), val_pairs=((5, 4),))
    task = read_task(tmp_path / "TOY")
    pair, = submission_pairs(task)
    assert window_note(model, task.shape) == (
        "Note: the model's input 16x16x16 is not tensorImageShape 20x16x16: each pair is registered in one "
        "16x16x16 window centred on voxel (10, 8, 8); the displacement is zero outside it")
    assert window_note(model, (16, 16, 16)) is None
    field = register_pair(model, pair, "max", task.shape)
    assert field.shape == (20, 16, 16, 3)
    assert np.all(field[:2] == 0) and np.all(field[18:] == 0) and np.all(np.abs(field[2:18]).max(axis=(0, 1, 2)) > 0.3)


def test_intensity_norm_comes_from_a_learn2reg_runs_export_or_must_be_given(model):
    config = TrainConfig(dataset="learn2reg", dataset_options={"intensity_norm": "percentile"})
    recorded = types.SimpleNamespace(path="models/l2r/1", provenance=build_provenance(config, "gsmorph_learn2reg",
                                                                                       (16, 16, 16), {}))
    assert trained_intensity_norm(recorded.provenance) == "percentile"
    assert resolve_intensity_norm(recorded) == "percentile" == resolve_intensity_norm(recorded, "percentile")
    with pytest.raises(SavedModelError, match="models/l2r/1: trained with intensity_norm=percentile .* "
                                              "intensity_norm=max was given"):
        resolve_intensity_norm(recorded, "max")
    # Exported from memory (no training recorded) or trained on another dataset: refused unless given.
    cardiac = types.SimpleNamespace(path="models/acdc/1", provenance=build_provenance(
        TrainConfig(dataset="phantom"), "gsmorph_phantom", (32, 32), {}))
    for unknown in (model, cardiac):
        assert trained_intensity_norm(unknown.provenance) is None
        with raises_naming(unknown.path, "does not record the intensity_norm .* --intensity_norm", SavedModelError):
            resolve_intensity_norm(unknown)
        assert resolve_intensity_norm(unknown, "max") == "max"
    with pytest.raises(SavedModelError, match="a 2D model .* needs a 3D model"):
        check_model(types.SimpleNamespace(path="models/acdc/1", ndim=2, inshape=(32, 32)))


def test_a_bad_volume_is_named_before_anything_is_registered_or_written(model, tmp_path):
    blob_task(tmp_path / "TOY")
    bad = tmp_path / "TOY" / "imagesTr" / "TOY_0004_0000.nii.gz"  # the second pair's fixed image
    image = blobs((16, 16, 16), 4)
    image[3, 3, 3] = np.nan
    save_nifti(image, bad, zooms=L2R_ZOOMS)
    task = read_task(tmp_path / "TOY")  # headers only: the NaN is found when the voxels are read
    with raises_naming(bad, "NaN or infinite"):
        write_submission(model, task, submission_pairs(task), str(tmp_path / "out"), "max", show_progress=False)
    assert not os.path.exists(tmp_path / "out")


def write_fields(folder, names, shape=(16, 16, 16, 3)):
    folder.mkdir()
    for name in names:
        if name.endswith(".nii.gz"):
            nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), str(folder / name))
        else:
            (folder / name).write_text("not a field", encoding="utf-8")


@pytest.mark.parametrize("kind, message", [
    ("shape", r"shape \(16, 16, 15, 3\), expected tensorImageShape \+ \[3\] = \(16, 16, 16, 3\)"),
    ("nan", "NaN or infinite"), ("float64", "stored as float64, expected float32")])
def test_a_bad_field_is_named_before_anything_is_zipped(task_dir, tmp_path, kind, message):
    pairs = submission_pairs(read_task(task_dir))
    names = [name for pair in pairs for name in pair.names]
    write_fields(tmp_path / "fields", names)
    bad = tmp_path / "fields" / names[-1]
    field = np.zeros((16, 16, 15, 3) if kind == "shape" else (16, 16, 16, 3), np.float32)
    field[1, 2, 3, 0] = np.nan if kind == "nan" else 0.0
    nib.save(nib.Nifti1Image(field.astype(np.float64 if kind == "float64" else np.float32), np.eye(4)), str(bad))
    with raises_naming(bad, message):
        check_submission(str(tmp_path / "fields"), pairs, (16, 16, 16))


def test_missing_or_extra_files_name_the_folder(task_dir, tmp_path):
    pairs = submission_pairs(read_task(task_dir))
    write_fields(tmp_path / "fields", ["disp_0006_0007.nii.gz", "notes.txt"])
    with raises_naming(tmp_path / "fields", r"missing \['disp_0006_0000_0007_0000.nii.gz'\]; unexpected "
                                            r"\['notes.txt'\]"):
        check_submission(str(tmp_path / "fields"), pairs, (16, 16, 16))


def test_pair_lists_that_cannot_make_a_submission_name_the_json(tmp_path):
    write_learn2reg_task(tmp_path / "A", val_pairs=((5, 4), (5, 4)))
    task = read_task(tmp_path / "A")
    with raises_naming(task.json_path, r"registration_val\[1\] .* would write disp_0004_0005.nii.gz, as "
                                       r"registration_val\[0\] does"):
        submission_pairs(task)
    with raises_naming(task.json_path, "registration_test lists no pairs"):
        submission_pairs(task, "registration_test")
    write_learn2reg_task(tmp_path / "T", val_pairs=((5, 4),), test_pairs=((1, 0),))
    pair, = submission_pairs(read_task(tmp_path / "T"), "registration_test")
    assert (pair.fixed.stem, pair.moving.stem) == ("TOY_1000_0000", "TOY_1001_0000")
    assert pair.names == ("disp_1000_1001.nii.gz", "disp_1000_0000_1001_0000.nii.gz")
    data = write_learn2reg_task(tmp_path / "B", name="TOY", val_pairs=((5, 4),))
    shutil.copyfile(tmp_path / "B" / "imagesTr" / "TOY_0005_0000.nii.gz", tmp_path / "B" / "imagesTr" / "toy5.nii.gz")
    data["registration_val"][0]["moving"] = "./imagesTr/toy5.nii.gz"
    (tmp_path / "B" / "TOY_dataset.json").write_text(json.dumps(data), encoding="utf-8")
    with raises_naming(tmp_path / "B" / "imagesTr" / "toy5.nii.gz", "expected a Learn2Reg image name"):
        submission_pairs(read_task(tmp_path / "B"))


def run_register(cwd, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_register.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_the_submission_with_the_exports_intensity_norm(model, submission, tmp_path):
    task, _, written = submission
    # The model as a learn2reg run exports it: its provenance records the run's config (intensity_norm=percentile).
    version = tmp_path / "models" / "gsmorph_learn2reg" / "1"
    shutil.copytree(model.path, version)
    config = TrainConfig(dataset="learn2reg", dataset_options={"intensity_norm": "percentile"})
    (version / "assets" / PROVENANCE_FILE).write_text(
        json.dumps(build_provenance(config, "gsmorph_learn2reg", (16, 16, 16), {})), encoding="utf-8")
    done = run_register(tmp_path, "--saved_model=models/gsmorph_learn2reg", f"--learn2reg_dir={task.root}",
                        "--output_dir=out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Learn2Reg TOY: 2 pair(s) of registration_val, intensity_norm=percentile (the model's provenance)" \
        in done.stdout
    assert "Note:" not in done.stdout and "Wrote 4 displacement file(s) for 2 pair(s)" in done.stdout
    assert sorted(os.listdir(tmp_path / "out" / "displacements")) == sorted(written.names)
    for name in written.names:  # the same fields as the library call with the same scaling
        np.testing.assert_array_equal(np.asanyarray(nib.load(str(tmp_path / "out" / "displacements" / name)).dataobj),
                                      np.asanyarray(nib.load(os.path.join(written.folder, name)).dataobj))
    with zipfile.ZipFile(tmp_path / "out" / "submission.zip") as archive:
        assert sorted(archive.namelist()) == sorted(written.names)


def test_cli_names_a_bad_task_folder_before_loading_the_model(tmp_path):
    done = run_register(tmp_path, "--saved_model=nowhere/model", "--learn2reg_dir=missing", "--output_dir=out")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: missing: Learn2Reg data directory does not exist; expected <root>/<NAME>_dataset.json with "
        "tensorImageShape, labels, training and registration_val (the Learn2Reg layout), images in imagesTr/ "
        "and labels in labelsTr/")
    assert not os.path.exists(tmp_path / "out")
    mixed = run_register(tmp_path, "--saved_model=nowhere/model", "--learn2reg_dir=missing", "--center=1,2,3",
                         "--output_dir=out")
    assert mixed.returncode != 0 and "--learn2reg_dir, which takes no" in mixed.stderr
    itk = run_register(tmp_path, "--saved_model=nowhere/model", "--learn2reg_dir=missing", "--itk_transform",
                       "--output_dir=out")
    assert itk.returncode != 0 and "a Learn2Reg submission holds only disp_*.nii.gz files" in itk.stderr
