"""Registering NIfTI files with an exported SavedModel: training's preprocessing, outputs on the fixed grid,
units of the field, labels, the motion-placed window (the same as the SavedModel's raw serving_default), bad
inputs (nothing written), folder mode, run_register.py, a 3D model."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from gsmorph_tf.data.nifti import DatasetError
from gsmorph_tf.data.preprocessing import crop_or_pad, motion_center, scale_to_unit
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.register import (OUTPUTS, TRANSFORM_SUFFIX, RegistrationModel, SavedModelError, register_files,
                                 register_folder, register_volumes)

from conftest import ROOT

SPACING = (1.5, 1.5, 8.0)
LABEL_VALUES = {0, 1, 2, 3}


def affine(spacing, offset=(-30.0, 12.0, 40.0)):
    """A rotated (about z by 30 degrees), scaled and shifted voxel-to-world matrix."""
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(spacing)
    matrix[:3, 3] = offset
    return matrix


def blobs(shape, seed, scale=800.0):
    """Smooth positive scanner-like intensities (scale x [0, 1] plus noise)."""
    grids = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    rng = np.random.default_rng(seed)
    image = sum(np.sin(2 * np.pi * (rng.uniform(0.5, 1.5) * g + rng.uniform())) for g in grids[:2])
    return (scale * (image - image.min()) / np.ptp(image) + rng.normal(0, 5, shape)).astype(np.float32)


def save(path, array, spacing=SPACING):
    nib.save(nib.Nifti1Image(np.asarray(array), affine(spacing)), str(path))
    return str(path)


def stack_labels(shape):
    labels = np.zeros(shape, np.uint8)
    labels[10:20, 8:18] = 3
    labels[20:26, 8:30] = 2
    labels[14:30, 20:28] = 1
    return labels


@pytest.fixture
def pair(tmp_path):
    """A 40 x 36 x 3 short-axis stack pair (spacing 1.5 x 1.5 x 8 mm) with moving labels."""
    shape = (40, 36, 3)
    return {"moving": save(tmp_path / "moving.nii.gz", blobs(shape, 1)),
            "fixed": save(tmp_path / "fixed.nii.gz", blobs(shape, 2)),
            "labels": save(tmp_path / "moving_gt.nii.gz", stack_labels(shape)),
            "out": tmp_path / "out"}


def signature_on(model, moving_crop, fixed_crop):
    """``register_crop`` called directly on ``[B, *vol]`` crops: ``(moved [B, *vol], flow [B, *vol, ndim])``."""
    serve = tf.saved_model.load(model.path).signatures["register_crop"]
    out = serve(moving=tf.constant(moving_crop[..., None]), fixed=tf.constant(fixed_crop[..., None]))
    return out["moved"].numpy()[..., 0], out["flow"].numpy()


def load(path):
    image = nib.load(str(path))
    return np.asanyarray(image.dataobj), image


def test_2d_outputs_on_the_fixed_grid_match_the_signature_on_the_crop(model_2d, pair):
    paths = register_files(model_2d, pair["moving"], pair["fixed"], str(pair["out"]), pair["labels"],
                           crop_center="image")
    assert sorted(os.listdir(pair["out"])) == ["moving_flow_itk.nii.gz", "moving_flow_mm.nii.gz",
                                               "moving_flow_vox.nii.gz", "moving_moved.nii.gz",
                                               "moving_moved_labels.nii.gz"]
    moved, moved_image = load(paths["moved"])
    flow, flow_image = load(paths["flow_vox"])
    flow_mm, _ = load(paths["flow_mm"])
    assert moved.shape == (40, 36, 3) and flow.shape == (40, 36, 3, 3) and flow_mm.shape == (40, 36, 3, 3)
    for key, path in paths.items():
        image = nib.load(path)
        np.testing.assert_allclose(image.affine, affine(SPACING), atol=1e-5)
        np.testing.assert_allclose(image.header.get_zooms()[:3], SPACING)
        assert image.header["descrip"].item().decode() == OUTPUTS[key][1]
    assert moved_image.get_data_dtype() == np.float32 and flow_image.get_data_dtype() == np.float32

    # Training's preprocessing by hand: joint scaling, then the window around the image centre (20, 18): rows 4-35,
    # columns 2-33 of every slice; slices are the batch.
    scaled_moving, scaled_fixed = scale_to_unit(load(pair["moving"])[0], load(pair["fixed"])[0])
    window = (slice(4, 36), slice(2, 34))
    expected_moved, expected_flow = signature_on(model_2d, np.transpose(scaled_moving[window], (2, 0, 1)),
                                                 np.transpose(scaled_fixed[window], (2, 0, 1)))
    np.testing.assert_allclose(moved[window], np.transpose(expected_moved, (1, 2, 0)), atol=1e-6)
    np.testing.assert_allclose(flow[window][..., :2], np.transpose(expected_flow, (1, 2, 0, 3)), atol=1e-6)
    assert np.abs(flow[window][..., :2]).max() > 0.5  # not the identity
    np.testing.assert_array_equal(flow[..., 2], 0)  # 2D model: no motion across slices
    # Outside the window: the identity (scaled moving image, zero field).
    outside = np.ones((40, 36), bool)
    outside[window] = False
    np.testing.assert_allclose(moved[outside], scaled_moving[outside], atol=1e-6)
    np.testing.assert_array_equal(flow[outside], 0)
    # The field in mm is the field in voxels times the voxel size of each axis.
    np.testing.assert_allclose(flow_mm, flow * np.array(SPACING), rtol=1e-6, atol=1e-6)


def test_labels_are_warped_nearest_keeping_only_label_values(model_2d, pair):
    paths = register_files(model_2d, pair["moving"], pair["fixed"], str(pair["out"]), pair["labels"],
                           crop_center="image")
    warped, image = load(paths["moved_labels"])
    labels = stack_labels((40, 36, 3))
    assert image.get_data_dtype() == np.uint8
    assert set(np.unique(warped).tolist()) <= LABEL_VALUES
    assert not np.array_equal(warped, labels)
    flow, _ = load(paths["flow_vox"])
    window = (slice(4, 36), slice(2, 34))
    expected = evaluation.warp_labels(np.transpose(labels[window], (2, 0, 1)).astype(np.int32),
                                      np.transpose(flow[window][..., :2], (2, 0, 1, 3)))
    np.testing.assert_array_equal(warped[window], np.transpose(expected, (1, 2, 0)))


def test_default_window_follows_the_motion_as_the_raw_serving_signature_does(model_2d):
    shape = (48, 44, 3)
    moving, fixed = blobs(shape, 1), blobs(shape, 1)
    fixed[29:38, 27:36] += 400.0  # the only change between the frames, centred on (33, 31): the window goes there
    result = register_volumes(model_2d, moving, fixed)
    scaled = scale_to_unit(moving, fixed)
    assert result.center == motion_center(np.transpose(np.stack(scaled), (0, 3, 1, 2)), (32, 32))
    assert result.center == (33.0, 31.0)  # not the image centre (24, 22)
    # The exported model's serving_default does the same in its graph, on the raw slices.
    serve = tf.saved_model.load(model_2d.path).signatures["serving_default"]
    out = serve(moving=tf.constant(np.transpose(moving, (2, 0, 1))[..., None]),
                fixed=tf.constant(np.transpose(fixed, (2, 0, 1))[..., None]))
    assert tuple(out["crop_center"].numpy()[0]) == result.center
    np.testing.assert_allclose(np.transpose(out["moved"].numpy()[..., 0], (1, 2, 0)), result.moved, atol=1e-5)
    np.testing.assert_allclose(np.transpose(out["flow"].numpy(), (1, 2, 0, 3)), result.flow_voxels[..., :2],
                               atol=1e-5)


def test_window_at_the_border_is_zero_padded_like_training(model_2d, pair):
    # Centre (3, 30): the 32 x 32 window spans rows -13..18 and columns 14..45 (image: 40 x 36).
    paths = register_files(model_2d, pair["moving"], pair["fixed"], str(pair["out"]), center=(3, 30))
    scaled_moving, scaled_fixed = scale_to_unit(load(pair["moving"])[0], load(pair["fixed"])[0])
    crops = [crop_or_pad(np.transpose(volume, (2, 0, 1)), (3, 30), (32, 32))
             for volume in (scaled_moving, scaled_fixed)]
    expected_moved, expected_flow = signature_on(model_2d, *crops)
    moved, _ = load(paths["moved"])
    flow, _ = load(paths["flow_vox"])
    np.testing.assert_allclose(moved[0:19, 14:36], np.transpose(expected_moved[:, 13:, :22], (1, 2, 0)), atol=1e-6)
    np.testing.assert_allclose(flow[0:19, 14:36, :, :2], np.transpose(expected_flow[:, 13:, :22], (1, 2, 0, 3)),
                               atol=1e-6)
    assert np.all(flow[19:] == 0) and np.all(flow[:, :14] == 0)


def make_bad(tmp_path, kind):
    """Make one input of ``kind`` bad: returns (the register_files argument it replaces, the file or value
    the error must name, text the error must contain)."""
    bad = tmp_path / "bad.nii.gz"
    if kind == "4d":
        return {"moving_path": save(bad, np.ones((40, 36, 3, 2), np.float32))}, bad, "expected a 3-D"
    if kind == "2d_image":
        return {"fixed_path": save(bad, np.ones((40, 36), np.float32))}, bad, "for this 2D model"
    if kind == "nan":
        image = blobs((40, 36, 3), 1)
        image[5, 5, 1] = np.nan
        return {"moving_path": save(bad, image)}, bad, "NaN or infinite"
    if kind == "corrupt":
        bad.write_bytes(b"\x1f\x8b\x08\x00 not really a nifti file")
        return {"fixed_path": str(bad)}, bad, "cannot read as NIfTI"
    if kind == "missing":
        return {"moving_path": str(tmp_path / "absent.nii.gz")}, tmp_path / "absent.nii.gz", "not found"
    if kind == "labels_grid":  # the moving image's grid is 40 x 36 x 3
        return {"moving_labels_path": save(bad, stack_labels((40, 36, 4)))}, bad, "differs from the moving image"
    if kind == "labels":
        return {"moving_labels_path": save(bad, stack_labels((40, 36, 3)) + 0.5)}, bad, "non-integer"
    if kind == "center":
        return {"center": (50, 10)}, "(50.0, 10.0)", "does not fit"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["4d", "2d_image", "nan", "corrupt", "missing", "labels_grid", "labels",
                                  "center"])
def test_bad_input_is_named_and_nothing_is_written(model_2d, pair, tmp_path, kind):
    arguments = {"moving_path": pair["moving"], "fixed_path": pair["fixed"], "output_dir": str(pair["out"]),
                 "moving_labels_path": pair["labels"], "center": None}
    bad, named, message = make_bad(tmp_path, kind)
    arguments.update(bad)
    with pytest.raises(DatasetError) as error:
        register_files(model_2d, **arguments)
    assert str(named) in str(error.value) and message in str(error.value)
    assert not os.path.exists(pair["out"])


def test_missing_savedmodel_is_named(tmp_path):
    with pytest.raises(SavedModelError, match="%s: SavedModel folder not found" % (tmp_path / "models")):
        RegistrationModel(str(tmp_path / "models"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SavedModelError, match="no saved_model.pb"):
        RegistrationModel(str(tmp_path / "empty"))


def folder_of_pairs(tmp_path, names):
    for folder in ("ES", "ED", "ES_gt"):
        (tmp_path / folder).mkdir()
    shape = (40, 36, 3)
    for i, name in enumerate(names):
        save(tmp_path / "ES" / name, blobs(shape, 10 + i))
        save(tmp_path / "ED" / name, blobs(shape, 20 + i))
        save(tmp_path / "ES_gt" / name, stack_labels(shape))


def test_folder_mode_registers_every_pair_like_pair_mode(model_2d, tmp_path):
    folder_of_pairs(tmp_path, ["case01.nii.gz", "case02.nii.gz"])
    written = register_folder(model_2d, str(tmp_path / "ES"), str(tmp_path / "ED"), str(tmp_path / "out"),
                              str(tmp_path / "ES_gt"), show_progress=False)
    assert len(written) == 2 and len(os.listdir(tmp_path / "out")) == 10
    single = register_files(model_2d, str(tmp_path / "ES" / "case02.nii.gz"), str(tmp_path / "ED" / "case02.nii.gz"),
                            str(tmp_path / "single"), str(tmp_path / "ES_gt" / "case02.nii.gz"))
    for key in ("moved", "flow_vox", "moved_labels"):
        assert written[1][key] == str(tmp_path / "out" / ("case02" + OUTPUTS[key][0]))
        np.testing.assert_array_equal(load(written[1][key])[0], load(single[key])[0])


def test_folder_mode_validates_every_pair_before_the_first_registration(model_2d, tmp_path):
    folder_of_pairs(tmp_path, ["case01.nii.gz", "case02.nii.gz"])
    broken = tmp_path / "ED" / "case02.nii.gz"
    image = blobs((40, 36, 3), 3)
    image[0, 0, 0] = np.inf
    save(broken, image)
    with pytest.raises(DatasetError, match=str(broken)):
        register_folder(model_2d, str(tmp_path / "ES"), str(tmp_path / "ED"), str(tmp_path / "out"),
                        show_progress=False)
    assert not os.path.exists(tmp_path / "out")  # not even case01, which is fine
    os.remove(broken)
    with pytest.raises(DatasetError, match="without a partner of the same name: case02.nii.gz"):
        register_folder(model_2d, str(tmp_path / "ES"), str(tmp_path / "ED"), str(tmp_path / "out"),
                        show_progress=False)
    assert not os.path.exists(tmp_path / "out")


def run_register(cwd, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_register.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_run_register_cli_folder_mode_and_one_line_errors(model_2d, tmp_path):
    folder_of_pairs(tmp_path, ["a.nii.gz", "b.nii"])
    base = os.path.dirname(model_2d.path)  # a base path: its highest version is used
    done = run_register(tmp_path, "--saved_model=%s" % base, "--moving_dir=ES", "--fixed_dir=ED",
                        "--moving_labels_dir=ES_gt", "--output_dir=out", "--center=20,18", "--itk_transform")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Registered 2 pair(s)" in done.stdout and "2D model, input 32x32" in done.stdout
    assert "Provenance (provenance.json):" in done.stdout and "crop placed by --center" in done.stdout
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        "%s%s" % (stem, suffix) for stem in ("a", "b")
        for suffix in [suffix for suffix, _ in OUTPUTS.values()] + [TRANSFORM_SUFFIX])
    (tmp_path / "ED" / "b.nii").write_bytes(b"garbage")
    failed = run_register(tmp_path, "--saved_model=%s" % base, "--moving=ES/b.nii", "--fixed=ED/b.nii",
                          "--output_dir=out2")
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith("error: ED/b.nii: cannot read as NIfTI")
    assert "Traceback" not in failed.stderr and not os.path.exists(tmp_path / "out2")


def test_run_register_cli_names_a_missing_savedmodel(tmp_path):
    done = run_register(tmp_path, "--saved_model=nowhere/gsmorph", "--moving=m.nii.gz", "--fixed=f.nii.gz",
                        "--output_dir=out")
    assert done.returncode == 2
    assert "error: nowhere/gsmorph: SavedModel folder not found" in done.stderr
    assert not os.path.exists(tmp_path / "out")


def test_3d_model_registers_volumes(model_3d, tmp_path):
    shape, spacing = (20, 18, 17), (1.0, 1.2, 1.5)
    moving = save(tmp_path / "m.nii.gz", blobs(shape, 4), spacing)
    fixed = save(tmp_path / "f.nii.gz", blobs(shape, 5), spacing)
    paths = register_files(model_3d, moving, fixed, str(tmp_path / "out"))
    moved, _ = load(paths["moved"])
    flow, image = load(paths["flow_vox"])
    flow_mm, _ = load(paths["flow_mm"])
    assert moved.shape == shape and flow.shape == (*shape, 3)
    np.testing.assert_allclose(image.affine, affine(spacing), atol=1e-5)
    # Default window around (10, 9, 8): rows 2-17, columns 1-16, slices 0-15.
    window = (slice(2, 18), slice(1, 17), slice(0, 16))
    scaled = scale_to_unit(load(moving)[0], load(fixed)[0])
    expected_moved, expected_flow = signature_on(model_3d, scaled[0][window][None], scaled[1][window][None])
    np.testing.assert_allclose(moved[window], expected_moved[0], atol=1e-6)
    np.testing.assert_allclose(flow[window], expected_flow[0], atol=1e-6)
    assert np.all(np.abs(flow[window]).max(axis=(0, 1, 2)) > 0.3)  # all three components move
    assert np.all(flow[:, :, 16] == 0) and np.all(flow[:2] == 0)
    np.testing.assert_allclose(flow_mm, flow * np.array(spacing), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, message", [((20, 18), "for this 3D model"), ((20, 18, 1), "single slice")])
def test_3d_model_rejects_slices(model_3d, tmp_path, shape, message):
    path = save(tmp_path / "slice.nii.gz", np.ones(shape, np.float32))
    with pytest.raises(DatasetError, match=message) as error:
        register_files(model_3d, path, path, str(tmp_path / "out"))
    assert str(path) in str(error.value) and not os.path.exists(tmp_path / "out")
