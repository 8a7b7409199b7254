"""Registering files in world space: the ITK/ANTs displacement field and the ITK transform file apply our
registration in SimpleITK and ANTsPy as our own warp does, on an oblique, anisotropic volume; a moving image on
another grid is resampled into the fixed image's space first (and ANTs applies our field to the original file
as our warp does); images that do not overlap are refused; the transform file without SimpleITK is refused
before registering."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import os
import sys

import ants
import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from gsmorph_tf.data.nifti import DatasetError
from gsmorph_tf.data.preprocessing import scale_to_unit
from gsmorph_tf.extras import MissingExtraError
from gsmorph_tf.register import register_files
from test_register import blobs, load

#: The fixed volume: 20 x 18 x 17 voxels; with the 16^3 model the default window (image centre (10, 9, 8))
#: covers rows 2-17, columns 1-16, slices 0-15, all inside the volume.
SHAPE = (20, 18, 17)
WINDOW_LOW, WINDOW_HIGH = np.array([2, 1, 0]), np.array([17, 16, 15])
#: Anisotropic voxels (mm) on an oblique grid.
SPACING = (1.2, 0.9, 3.0)

#: Linear interpolation of one float32 image at the same physical points, by voxelmorph (TensorFlow, float32)
#: and by ITK (double): they differ by float32 rounding only, of the image (~6e-8 relative), of the field
#: (float32 in the NIfTI file, ~1e-7 relative of its mm) and of TensorFlow's arithmetic; 1e-4 in [0, 1]
#: intensity units leaves a hundred times that margin and still fails for a 0.01-voxel misplacement wherever
#: the image's gradient exceeds 0.01 per voxel (most of these images).
SAME_POINTS_ATOL = 1e-4


def rotation(axis, degrees):
    """3x3 rotation by ``degrees`` about world ``axis`` (0, 1, 2)."""
    angle = np.deg2rad(degrees)
    i, j = [k for k in range(3) if k != axis]
    matrix = np.eye(3)
    matrix[i, i] = matrix[j, j] = np.cos(angle)
    matrix[i, j], matrix[j, i] = -np.sin(angle), np.sin(angle)
    return matrix


def oblique_affine(spacing=SPACING):
    """Voxel-to-world (RAS, mm): rotated 30 degrees about x and 20 degrees about z, anisotropic, shifted."""
    matrix = np.eye(4)
    matrix[:3, :3] = rotation(0, 30) @ rotation(2, 20) @ np.diag(spacing)
    matrix[:3, 3] = (-30.0, 12.0, 40.0)
    return matrix


def save(path, array, affine):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return str(path)


def comparable_voxels(flow):
    """Where ITK's resampling must equal our moved image: ``[X, Y, Z]`` bool. (1) Inside the window, where
    x + u(x) stays inside the window (our warp samples the window only and clamps at its edge; the window lies
    inside the volume, so ITK sees the same voxels there); (2) every voxel outside the window (identity: u = 0,
    the voxel itself)."""
    points = np.indices(SHAPE).transpose(1, 2, 3, 0) + flow
    in_window = np.zeros(SHAPE, bool)
    in_window[tuple(slice(low, high + 1) for low, high in zip(WINDOW_LOW, WINDOW_HIGH))] = True
    compared = ~in_window | np.all((points >= WINDOW_LOW) & (points <= WINDOW_HIGH), axis=-1)
    assert np.count_nonzero(compared & in_window) > 2000  # of the window's 4096 voxels
    return compared


def test_itk_field_and_transform_apply_our_registration_in_simpleitk_and_antspy(model_3d, tmp_path):
    moving_raw, fixed_raw = blobs(SHAPE, 4), blobs(SHAPE, 5)
    moving = save(tmp_path / "m.nii.gz", moving_raw, oblique_affine())
    fixed = save(tmp_path / "f.nii.gz", fixed_raw, oblique_affine())
    paths = register_files(model_3d, moving, fixed, str(tmp_path / "out"), itk_transform=True)
    assert os.path.basename(paths["transform"]) == "m_transform.h5"
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(path) for path in paths.values())
    flow, _ = load(paths["flow_vox"])
    moved, _ = load(paths["moved"])

    # The NIfTI field: 5-D vector image on the fixed grid, as ANTs writes them.
    field_file = nib.load(paths["flow_itk"])
    assert field_file.shape == (*SHAPE, 1, 3) and field_file.get_data_dtype() == np.float32
    assert field_file.header.get_intent()[0] == "vector" and int(field_file.header["intent_code"]) == 1007
    np.testing.assert_allclose(field_file.affine, nib.load(fixed).affine, atol=1e-6)

    # SimpleITK reads it as a 3-D image of 3-vectors on the fixed image's physical grid, and each vector is the
    # physical (LPS) step from a fixed voxel centre i to the point i + u(i), by ITK's own geometry of the fixed file.
    fixed_itk = sitk.ReadImage(fixed, sitk.sitkFloat32)
    field_itk = sitk.ReadImage(paths["flow_itk"])
    assert field_itk.GetDimension() == 3 and field_itk.GetNumberOfComponentsPerPixel() == 3
    assert field_itk.GetSize() == SHAPE
    np.testing.assert_allclose(field_itk.GetOrigin(), fixed_itk.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(field_itk.GetSpacing(), fixed_itk.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(field_itk.GetDirection(), fixed_itk.GetDirection(), atol=1e-6)
    index_to_physical = (np.reshape(fixed_itk.GetDirection(), (3, 3)) @ np.diag(fixed_itk.GetSpacing()))
    vectors = np.transpose(sitk.GetArrayFromImage(field_itk), (2, 1, 0, 3))  # back to [X, Y, Z, 3]
    np.testing.assert_allclose(vectors, flow @ index_to_physical.T, atol=1e-5)
    assert np.abs(vectors).max() > 1.0  # mm: a real motion, not a zero field
    # A world check that needs no vector algebra: the transform takes a fixed point to its moving point.
    transform_h5 = sitk.ReadTransform(paths["transform"])
    assert transform_h5.GetName() == "DisplacementFieldTransform"
    voxel = (12, 5, 9)
    moving_point = fixed_itk.TransformContinuousIndexToPhysicalPoint([float(v) for v in np.add(voxel, flow[voxel])])
    np.testing.assert_allclose(transform_h5.TransformPoint(fixed_itk.TransformIndexToPhysicalPoint(voxel)),
                               moving_point, atol=1e-4)

    # Resample the moving image (scaled as the model saw it) through each file with each tool.
    scaled_moving = save(tmp_path / "m_scaled.nii.gz", scale_to_unit(moving_raw, fixed_raw)[0], oblique_affine())
    moving_itk = sitk.ReadImage(scaled_moving, sitk.sitkFloat32)
    from_nifti = sitk.DisplacementFieldTransform(sitk.Cast(field_itk, sitk.sitkVectorFloat64))
    itk_moved = {}
    for name, transform in (("SimpleITK, _transform.h5", transform_h5), ("SimpleITK, _flow_itk.nii.gz", from_nifti)):
        resampled = sitk.Resample(moving_itk, fixed_itk, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        itk_moved[name] = np.transpose(sitk.GetArrayFromImage(resampled), (2, 1, 0))
    itk_moved["ANTsPy, _flow_itk.nii.gz"] = ants.apply_transforms(
        ants.image_read(fixed), ants.image_read(scaled_moving), transformlist=[paths["flow_itk"]],
        interpolator="linear").numpy()

    compared = comparable_voxels(flow)
    for name, warped in itk_moved.items():
        assert warped.shape == SHAPE, name
        np.testing.assert_allclose(warped[compared], moved[compared], atol=SAME_POINTS_ATOL, err_msg=name)


def reoriented_fine_grid(shape, affine):
    """Another grid over the same volume: axes turned 90 degrees in-plane (its axis 0 runs along the fixed
    axis -1, its axis 1 along fixed axis 0) and half the voxel size, placed so that every fixed voxel centre is
    one of its voxel centres. Returns ``(shape, affine, index)``: ``index`` maps its voxel indices to fixed ones."""
    index = np.array([[0, 0.5, 0, 0], [-0.5, 0, 0, shape[1] - 1], [0, 0, 0.5, 0], [0, 0, 0, 1]])
    return (2 * shape[1] - 1, 2 * shape[0] - 1, 2 * shape[2] - 1), affine @ index, index


def test_moving_on_another_grid_is_resampled_and_registers_like_one_on_the_fixed_grid(model_3d, tmp_path, capsys):
    moving_raw, fixed_raw = blobs(SHAPE, 4), blobs(SHAPE, 5, scale=2000.0)
    labels = (moving_raw > np.median(moving_raw)).astype(np.uint8) + (moving_raw > 600).astype(np.uint8)
    fixed = save(tmp_path / "f.nii.gz", fixed_raw, oblique_affine())
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    on_fixed_grid = register_files(model_3d, save(tmp_path / "a" / "m.nii.gz", moving_raw, oblique_affine()), fixed,
                                   str(tmp_path / "out_a"),
                                   save(tmp_path / "a" / "m_gt.nii.gz", labels, oblique_affine()))
    assert "resampled" not in capsys.readouterr().out

    # The same content on the other grid: linear upsampling of the same voxels (equal at the fixed voxel centres).
    fine_shape, fine_affine, fine_to_fixed = reoriented_fine_grid(SHAPE, oblique_affine())
    coordinates = np.tensordot(fine_to_fixed[:3], np.append(np.indices(fine_shape), np.ones((1, *fine_shape)), 0),
                               axes=1)
    moving_fine = ndimage.map_coordinates(moving_raw, coordinates, order=1)
    labels_fine = ndimage.map_coordinates(labels, coordinates, order=0)
    assert nib.aff2axcodes(fine_affine) != nib.aff2axcodes(oblique_affine())
    moving_path = save(tmp_path / "b" / "m.nii.gz", moving_fine, fine_affine)
    on_other_grid = register_files(model_3d, moving_path, fixed, str(tmp_path / "out_b"),
                                   save(tmp_path / "b" / "m_gt.nii.gz", labels_fine, fine_affine))
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "resampled into the space of the fixed image" in printed[0]
    for named in (moving_path, fixed, "35x39x33 voxels of 0.45x0.6x1.5 mm", "20x18x17 voxels of 1.2x0.9x3 mm",
                  "".join(nib.aff2axcodes(fine_affine)), "".join(nib.aff2axcodes(oblique_affine()))):
        assert named in printed[0]

    # Resampling at lattice points is exact up to the float32 affines in the files (~1e-6 voxel), so both
    # registrations see the same volumes and give the same outputs.
    for key, atol in (("moved", SAME_POINTS_ATOL), ("flow_vox", 1e-3), ("moved_labels", 0)):
        np.testing.assert_allclose(load(on_other_grid[key])[0], load(on_fixed_grid[key])[0], atol=atol, err_msg=key)
    assert load(on_other_grid["moved_labels"])[1].get_data_dtype() == np.uint8

    # ANTs applies the field to the original moving file, on its own grid: its trilinear interpolation there is
    # ours on the fixed grid (the fine grid halves the fixed voxels, and its values are the fixed-grid trilinear
    # function), once the fine image is scaled as the model saw the pair (a linear map: the fixed image is the
    # brighter one, so the 99.5th percentile clips no moving voxel).
    scaled = scale_to_unit(moving_raw, fixed_raw)[0]
    slope, intercept = np.polyfit(moving_raw.ravel(), scaled.ravel(), 1)
    np.testing.assert_allclose(slope * moving_raw + intercept, scaled, atol=1e-6)  # linear indeed: nothing clipped
    scaled_fine = save(tmp_path / "b" / "m_scaled.nii.gz", (slope * moving_fine + intercept).astype(np.float32),
                       fine_affine)
    warped = ants.apply_transforms(ants.image_read(fixed), ants.image_read(scaled_fine),
                                   transformlist=[on_other_grid["flow_itk"]], interpolator="linear").numpy()
    moved, _ = load(on_other_grid["moved"])
    compared = comparable_voxels(load(on_other_grid["flow_vox"])[0])
    np.testing.assert_allclose(warped[compared], moved[compared], atol=SAME_POINTS_ATOL)


def test_moving_and_fixed_images_that_do_not_overlap_are_refused_naming_both(model_3d, tmp_path):
    fixed = save(tmp_path / "f.nii.gz", blobs(SHAPE, 5), oblique_affine())
    far = oblique_affine()
    far[:3, 3] += (0.0, 0.0, 500.0)  # 500 mm up: the volumes are ~60 mm tall
    moving = save(tmp_path / "m.nii.gz", blobs(SHAPE, 4), far)
    with pytest.raises(DatasetError, match="do not overlap in world space") as error:
        register_files(model_3d, moving, fixed, str(tmp_path / "out"))
    for named in (moving, fixed, "20x18x17 voxels of 1.2x0.9x3 mm", "world box"):
        assert named in str(error.value)
    assert not os.path.exists(tmp_path / "out")


def test_itk_transform_without_simpleitk_names_the_extra_before_registering(model_3d, tmp_path, monkeypatch):
    fixed = save(tmp_path / "f.nii.gz", blobs(SHAPE, 5), oblique_affine())
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # as if the baselines extra were not installed
    with pytest.raises(MissingExtraError, match=r"SimpleITK.*baselines"):
        register_files(model_3d, fixed, fixed, str(tmp_path / "out"), itk_transform=True)
    assert not os.path.exists(tmp_path / "out")
