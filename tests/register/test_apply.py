"""Applying a saved displacement field (gsmorph_tf.register.apply, run_apply.py): the one-hot label rule by hand and
against SimpleITK's label-linear interpolator, run_register's own outputs reproduced, bad inputs named before
anything is written, the command line."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from gsmorph_tf.data.nifti import DatasetError
from gsmorph_tf.data.preprocessing import scale_to_unit
from gsmorph_tf.register import OUTPUTS, apply_field, register_files, warp_label_map
from gsmorph_tf.register.apply import DESCRIPTIONS, warped_path
from conftest import ROOT
from test_register import SPACING, affine, blobs, load, save, stack_labels


def shift(shape, *voxels):
    """A constant displacement field ``[*shape, 3]`` of ``voxels`` along i, j, k (missing ones 0)."""
    flow = np.zeros((*shape, 3), np.float32)
    flow[...] = np.pad(np.asarray(voxels, np.float32), (0, 3 - len(voxels)))
    return flow


def test_onehot_takes_the_label_with_the_largest_linear_weight_where_nearest_takes_the_closest_voxel():
    # One voxel of label 2 with label 1 on its three neighbours towards +i, +j. At (2, 2) the sample point is
    # (2.4, 2.4): weights 0.6 x 0.6 = 0.36 on the label-2 voxel, 0.24 + 0.24 + 0.16 = 0.64 on label 1.
    labels = np.zeros((6, 6, 1), np.int16)
    labels[2, 2] = 2
    labels[3, 2] = labels[2, 3] = labels[3, 3] = 1
    flow = shift(labels.shape, 0.4, 0.4)
    onehot, nearest = warp_label_map(labels, flow), warp_label_map(labels, flow, "nearest")
    assert onehot.dtype == nearest.dtype == np.int16
    np.testing.assert_array_equal(nearest, labels)  # every sample point rounds back to its own voxel
    expected = np.zeros_like(labels)
    expected[2, 2] = expected[3, 2] = expected[2, 3] = 1  # (3, 3) samples (3.4, 3.4): 0.36 label 1, 0.64 background
    np.testing.assert_array_equal(onehot, expected)


def test_onehot_ties_go_to_the_lowest_value_background_included():
    # A one-voxel line at row 4 shifted by half a voxel: rows 3 and 4 sample half line, half background.
    line = np.zeros((9, 5, 2), np.uint8)
    line[4] = 3
    flow = shift(line.shape, 0.5)
    assert not warp_label_map(line, flow).any()  # ties: background 0 < 3
    nearest = warp_label_map(line, flow, "nearest")  # tf.round: 3.5 -> 4 and 4.5 -> 4, halves to even
    np.testing.assert_array_equal(np.unique(np.nonzero(nearest)[0]), [3, 4])
    # Background is a label like any other: with background 5 the line (3) wins both ties.
    line[line == 0] = 5
    np.testing.assert_array_equal(np.unique(np.nonzero(warp_label_map(line, flow) == 3)[0]), [3, 4])


def test_onehot_equals_simpleitk_label_linear_interpolation():
    """SimpleITK's sitkLabelLinear (ITK's LabelImageGenericInterpolateImageFunction on linear interpolators:
    the largest interpolated one-hot weight, labels in increasing order, ties to the first) through a
    DisplacementFieldTransform, on a unit grid. Displacements are multiples of 1/8, so both compute the
    same weights exactly, ties included."""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    shape = (12, 10, 8)
    labels = rng.choice(np.array([0, 2, 5, 7], np.uint8), size=shape, p=[0.4, 0.2, 0.2, 0.2])
    flow = (rng.integers(-16, 17, size=(*shape, 3)) / 8.0).astype(np.float32)
    warped = warp_label_map(labels, flow)

    image = sitk.GetImageFromArray(np.transpose(labels, (2, 1, 0)))  # SimpleITK's index (x, y, z) = (i, j, k)
    field = sitk.GetImageFromArray(np.transpose(flow, (2, 1, 0, 3)).astype(np.float64), isVector=True)
    reference = sitk.Resample(image, image, sitk.DisplacementFieldTransform(field), sitk.sitkLabelLinear, 0)
    reference = np.transpose(sitk.GetArrayFromImage(reference), (2, 1, 0))
    # ITK reads 0 outside the volume, voxelmorph the border voxel: compare where x + u(x) stays inside.
    points = np.stack(np.meshgrid(*map(np.arange, shape), indexing="ij"), -1) + flow
    inside = np.all((points >= 0) & (points <= np.array(shape) - 1), axis=-1)
    assert inside.mean() > 0.5 and warped.dtype == np.uint8
    np.testing.assert_array_equal(warped[inside], reference[inside])
    assert set(np.unique(warped)) <= {0, 2, 5, 7}


def register_and_apply(model, tmp_path, shape):
    """Register a pair of ``shape`` with labels (window at the image centre), then apply its field to the
    scaled moving image and to the labels (nearest and one-hot). Returns the loaded arrays and headers."""
    moving, fixed = blobs(shape, 1), blobs(shape, 2)
    paths = register_files(model, save(tmp_path / "moving.nii.gz", moving), save(tmp_path / "fixed.nii.gz", fixed),
                           str(tmp_path / "out"), save(tmp_path / "labels.nii.gz", stack_labels(shape)),
                           crop_center="image")
    scaled = save(tmp_path / "scaled.nii.gz", scale_to_unit(moving, fixed)[0])  # registration's joint scaling
    apply_field(paths["flow_vox"], [scaled], [str(tmp_path / "moved.nii.gz")], "image")
    apply_field(paths["flow_vox"], [str(tmp_path / "labels.nii.gz")], [str(tmp_path / "nearest.nii.gz")], "labels",
                "nearest")
    apply_field(paths["flow_vox"], [str(tmp_path / "labels.nii.gz")], [str(tmp_path / "onehot.nii.gz")], "labels")
    named = {"registered": paths["moved"], "registered_labels": paths["moved_labels"], "flow": paths["flow_vox"]}
    named.update((name, tmp_path / ("%s.nii.gz" % name)) for name in ("moved", "nearest", "onehot"))
    return {name: load(path) for name, path in named.items()}


def test_applying_a_pairs_field_reproduces_run_registers_moved_image_and_labels(model_2d, tmp_path):
    # 32 x 32 slices: the model's 32 x 32 window is the whole image.
    out = register_and_apply(model_2d, tmp_path, (32, 32, 3))
    assert np.abs(out["flow"][0]).max() > 0.5
    np.testing.assert_allclose(out["moved"][0], out["registered"][0], atol=1e-6)
    np.testing.assert_array_equal(out["nearest"][0], out["registered_labels"][0])
    onehot, header = out["onehot"]
    assert header.get_data_dtype() == np.uint8 and set(np.unique(onehot)) <= {0, 1, 2, 3}
    assert header.header["descrip"].item().decode() == DESCRIPTIONS["onehot"]
    assert out["moved"][1].get_data_dtype() == np.float32
    assert out["moved"][1].header["descrip"].item().decode() == DESCRIPTIONS["image"]
    for name in ("moved", "onehot"):
        np.testing.assert_allclose(out[name][1].affine, affine(SPACING), atol=1e-5)


def test_a_smaller_window_differs_only_near_its_edge(model_2d, tmp_path):
    # 40 x 36 slices, window rows 4-35, columns 2-33: the model warped its crop, apply reads the whole image.
    out = register_and_apply(model_2d, tmp_path, (40, 36, 3))
    margin = int(np.ceil(np.abs(out["flow"][0]).max()))
    inner = (slice(4 + margin, 36 - margin), slice(2 + margin, 34 - margin))
    window = np.zeros((40, 36), bool)
    window[4:36, 2:34] = True
    for ours, theirs in (("moved", "registered"), ("nearest", "registered_labels")):
        np.testing.assert_allclose(out[ours][0][inner], out[theirs][0][inner], atol=1e-6)
        np.testing.assert_allclose(out[ours][0][~window], out[theirs][0][~window], atol=1e-6)  # zero field there
    assert not np.allclose(out["moved"][0][window], out["registered"][0][window], atol=1e-4)  # the edge band


@pytest.fixture
def files(tmp_path):
    """A field [16, 12, 3, 3] (a 2D model's: u_k = 0), an image and a label map on its grid."""
    shape = (16, 12, 3)
    flow = shift(shape, 0.5, -0.25)
    return {"field": save(tmp_path / "case_flow_vox.nii.gz", flow),
            "image": save(tmp_path / "t1.nii.gz", blobs(shape, 3)),
            "labels": save(tmp_path / "gt.nii.gz", stack_labels((16, 12, 3))), "out": tmp_path / "out", "shape": shape}


def make_bad(tmp_path, files, kind):
    """Replace one input of ``apply_field`` by a bad one: ``({argument: value}, named file, message)``."""
    bad, shape = tmp_path / "bad.nii.gz", files["shape"]
    if kind == "field_5d":
        return {"field": save(bad, np.zeros((*shape, 1, 3), np.float32))}, bad, "ITK/ANTs displacement field"
    if kind == "field_2_components":
        return ({"field": save(bad, np.zeros((*shape, 2), np.float32))}, bad,
                "expected a displacement field [X, Y, Z, 3]")
    if kind == "field_integer":
        return {"field": save(bad, np.zeros((*shape, 3), np.int16))}, bad, "stored as int16"
    if kind == "field_mm":
        image = nib.Nifti1Image(np.zeros((*shape, 3), np.float32), affine(SPACING))
        image.header["descrip"] = OUTPUTS["flow_mm"][1]
        nib.save(image, str(bad))
        return {"field": str(bad)}, bad, "this is the field in mm"
    if kind == "image_4d":
        return {"inputs": [save(bad, np.zeros((*shape, 2), np.float32))]}, bad, "expected a 3-D image [X, Y, Z]"
    if kind == "shape":
        return ({"inputs": [save(bad, np.zeros((16, 12, 4), np.float32))]}, bad,
                "shape (16, 12, 4), affine [1.299 -0.75 0 -30; ")
    if kind == "affine":
        return ({"inputs": [save(bad, np.zeros(shape, np.float32), (1.5, 1.5, 8.1))]}, bad,
                "is not the grid of the field %s (shape (16, 12, 3), affine [1.299 -0.75 0 -30; 0.75 1.299 0 12; "
                "0 0 8 40])" % files["field"])
    if kind == "labels":
        return ({"inputs": [save(bad, stack_labels(shape) + 0.5)], "kind": "labels"}, bad,
                "label map holds non-integer values")
    if kind == "output_is_input":
        return {"outputs": [files["image"]]}, files["image"], "output would overwrite the input"
    if kind == "output_twice":
        other = tmp_path / "other" / "t1.nii.gz"
        os.makedirs(other.parent)
        save(other, blobs(shape, 4))
        return ({"inputs": [files["image"], str(other)], "outputs": [warped_path(str(files["out"]), p)
                                                                    for p in (files["image"], other)]},
                files["out"] / "t1_warped.nii.gz", "output of both")
    if kind == "output_not_nifti":
        return {"outputs": [str(files["out"] / "warped.png")]}, files["out"] / "warped.png", "must end with .nii.gz"
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["field_5d", "field_2_components", "field_integer", "field_mm", "image_4d", "shape",
                                  "affine", "labels", "output_is_input", "output_twice", "output_not_nifti"])
def test_bad_input_is_named_before_anything_is_written(tmp_path, files, kind):
    arguments = {"field": files["field"], "inputs": [files["image"]],
                 "outputs": [str(files["out"] / "warped.nii.gz")], "kind": "image"}
    bad, named, message = make_bad(tmp_path, files, kind)
    arguments.update(bad)
    with pytest.raises(DatasetError) as error:
        apply_field(arguments["field"], arguments["inputs"], arguments["outputs"], arguments["kind"])
    assert str(error.value).startswith(str(named)) and message in str(error.value), str(error.value)
    assert not os.path.exists(files["out"])


def run_apply(cwd, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_apply.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_run_apply_warps_several_label_maps_and_replaces_an_existing_output(files, tmp_path):
    other = save(tmp_path / "gt2.nii.gz", stack_labels(files["shape"])[::-1].copy())
    os.makedirs(files["out"])
    (files["out"] / "gt_warped.nii.gz").write_bytes(b"old")
    done = run_apply(tmp_path, "--field=%s" % files["field"], "--image=gt.nii.gz", "--image=gt2.nii.gz",
                     "--kind=labels", "--output_dir=out")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warped 2 labels file(s)" in done.stdout and "one-hot linear" in done.stdout
    assert sorted(os.listdir(files["out"])) == ["gt2_warped.nii.gz", "gt_warped.nii.gz"]  # no temp file left
    for name, source in (("gt", files["labels"]), ("gt2", other)):
        warped, image = load(files["out"] / ("%s_warped.nii.gz" % name))
        np.testing.assert_array_equal(warped, warp_label_map(load(source)[0], shift(files["shape"], 0.5, -0.25)))
        assert image.get_data_dtype() == np.uint8


def test_run_apply_errors_are_one_line_with_status_2_and_nothing_written(files, tmp_path):
    save(tmp_path / "coarse.nii.gz", blobs((8, 6, 3), 1))
    done = run_apply(tmp_path, "--field=%s" % files["field"], "--image=t1.nii.gz", "--image=coarse.nii.gz",
                     "--kind=image", "--output_dir=out")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(
        "error: coarse.nii.gz: shape (8, 6, 3), affine [1.299 -0.75 0 -30; ")
    assert not os.path.exists(files["out"])  # not even t1, which is fine
    # Refused before TensorFlow loads: the label rule is for label maps only.
    wrong = run_apply(tmp_path, "--field=%s" % files["field"], "--image=t1.nii.gz", "--output=w.nii.gz",
                      "--kind=image", "--label_interpolation=nearest")
    assert wrong.returncode == 2 and wrong.stderr.strip() == (
        "error: --label_interpolation applies to label maps (--kind=labels); images are warped linearly")
    assert not os.path.exists(tmp_path / "w.nii.gz")
