"""Tests of gsmorph_tf.evaluate.metrics on small hand-made label maps and fields whose scores are worked out by hand."""
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from gsmorph_tf.evaluate import metrics


def _square(shape, rows, cols):
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def _grid(vol_shape):
    """Voxel coordinates [*vol, ndim], channel k = index along axis k ('ij', like voxelmorph)."""
    return np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in vol_shape], indexing="ij"), axis=-1)


# ----------------------------------------------------------------------------------------------- Dice


def test_dice_of_squares_shifted_two_pixels_is_overlap_over_mean_area():
    square = _square((32, 32), (5, 15), (5, 15))
    shifted = _square((32, 32), (7, 17), (5, 15))
    # 8 of the 10 rows overlap: 2 * 80 / (100 + 100).
    assert metrics.dice(square.astype(np.int32), shifted.astype(np.int32), 1) == pytest.approx(0.8, abs=1e-12)


def test_dice_identical_disjoint_and_empty():
    labels = _square((32, 32), (5, 15), (5, 15)).astype(np.int32)
    elsewhere = _square((32, 32), (20, 30), (20, 30)).astype(np.int32)
    assert metrics.dice(labels, labels, 1) == 1.0
    assert metrics.dice(labels, elsewhere, 1) == 0.0
    assert math.isnan(metrics.dice(labels, elsewhere, 7))


def test_dice_per_structure_is_keyed_by_name_in_the_given_order():
    labels_a = np.zeros((32, 32), dtype=np.int32)
    labels_b = np.zeros((32, 32), dtype=np.int32)
    labels_a[0:4, 0:5] = 1
    labels_b[0:4, 0:5] = 1                   # RV identical
    labels_a[10:14, 10:14] = 2
    labels_b[10:14, 12:16] = 2               # Myo: 8 of 16 pixels shared -> 2 * 8 / 32
    labels_a[20:25, 20:25] = 3
    labels_b[21:25, 20:25] = 3               # LV: 20 of 25 shared -> 2 * 20 / 45
    label_values = {"LV": 3, "Myo": 2, "RV": 1, "Scar": 4}

    scores = metrics.dice_per_structure(labels_a, labels_b, label_values)

    assert list(scores) == ["LV", "Myo", "RV", "Scar"]
    assert scores["LV"] == pytest.approx(40 / 45, abs=1e-12)
    assert scores["Myo"] == pytest.approx(0.5, abs=1e-12)
    assert scores["RV"] == 1.0
    assert math.isnan(scores["Scar"])


def test_dice_rejects_label_maps_of_different_shapes():
    with pytest.raises(ValueError, match=r"\(32, 32\).*\(32, 31\)"):
        metrics.dice(np.zeros((32, 32), int), np.zeros((32, 31), int), 1)


# ----------------------------------------------------------------------------------------------- HD95


def test_hd95_of_square_shifted_three_rows_with_2mm_rows():
    # Surfaces of a 10x10 square and of the same square 3 rows lower. Directed distances from each surface
    # (36 pixels) to the other, rows 2 mm and columns 1 mm apart: the 10 pixels of the outer edge 3 rows
    # from the other square's edge are 3 * 2 = 6 mm away; every other surface pixel is closer (<= 4 mm, e.g.
    # the row inside the other square reaches that square's side walls within 4 columns). Pooled: 20 of
    # 72 values are 6 mm, so the 95th percentile (position 67.45 of 0..71) is 6 mm.
    square = _square((32, 32), (5, 15), (5, 15))
    shifted = _square((32, 32), (8, 18), (5, 15))
    assert metrics.hd95(square, shifted, (2.0, 1.0)) == pytest.approx(6.0, abs=1e-12)


def test_hd95_scales_each_axis_by_its_own_spacing():
    square = _square((32, 32), (5, 15), (5, 15))
    shifted_rows = _square((32, 32), (8, 18), (5, 15))
    shifted_cols = _square((32, 32), (5, 15), (8, 18))
    # The dominant distance is the 3-pixel shift, measured in the shifted axis's mm only.
    assert metrics.hd95(square, shifted_rows, (1.0, 1.0)) == pytest.approx(3.0, abs=1e-12)
    assert metrics.hd95(square, shifted_rows, (1.0, 2.0)) == pytest.approx(3.0, abs=1e-12)
    assert metrics.hd95(square, shifted_cols, (2.0, 1.0)) == pytest.approx(3.0, abs=1e-12)
    assert metrics.hd95(square, shifted_cols, (1.0, 2.0)) == pytest.approx(6.0, abs=1e-12)


def test_hd95_measures_surface_to_surface_not_voxel_to_mask():
    # A 6x6 square centred in a 10x10 one. Inner surface -> outer surface: 2 px for all 20 pixels. Outer
    # -> inner: 4 corners sqrt(8), their 8 neighbours sqrt(5), the other 24 pixels 2. Pooled 56 values,
    # the 95th percentile (position 52.25) falls among the corners: sqrt(8). Distances from every voxel of
    # one mask to the other mask would be 0 for the inner square and give sqrt(5) instead.
    outer = _square((32, 32), (5, 15), (5, 15))
    inner = _square((32, 32), (7, 13), (7, 13))
    assert metrics.hd95(outer, inner, (1.0, 1.0)) == pytest.approx(math.sqrt(8.0), abs=1e-12)
    assert metrics.hd95(inner, outer, (1.0, 1.0)) == pytest.approx(math.sqrt(8.0), abs=1e-12)


def test_hd95_is_the_interpolated_95th_percentile_not_the_maximum():
    # The same square, plus 4 stray pixels below it in one mask, 6, 8, 10 and 12 px from the square's
    # bottom edge. Pooled: 72 zeros (both square surfaces coincide) and 6, 8, 10, 12. The 95th percentile
    # sits at position 0.95 * 75 = 71.25, a quarter of the way from the last 0 to the 6: 1.5 mm.
    square = _square((32, 32), (5, 15), (5, 15))
    with_strays = square.copy()
    with_strays[[20, 22, 24, 26], 10] = True
    assert metrics.hd95(square, with_strays, (1.0, 1.0)) == pytest.approx(1.5, abs=1e-12)


def test_hd95_identical_is_zero_and_empty_is_nan():
    square = _square((32, 32), (5, 15), (5, 15))
    empty = np.zeros((32, 32), dtype=bool)
    assert metrics.hd95(square, square, (1.5, 1.5)) == 0.0
    assert math.isnan(metrics.hd95(square, empty, (1.0, 1.0)))
    assert math.isnan(metrics.hd95(empty, square, (1.0, 1.0)))
    assert math.isnan(metrics.hd95(empty, empty, (1.0, 1.0)))


def test_hd95_3d_cube_shifted_one_slice():
    # A 6^3 cube and the same cube one slice further, slices 5 mm apart, 1 mm in plane. Each cube's outer
    # face (36 of 152 surface voxels) lies one slice from the other's face: 5 mm; every other surface voxel
    # is on or within 2 mm in plane of the other surface. 72 of 304 pooled values are 5 mm.
    cube = np.zeros((12, 12, 12), dtype=bool)
    cube[2:8, 2:8, 2:8] = True
    shifted = np.roll(cube, 1, axis=0)
    assert metrics.hd95(cube, shifted, (5.0, 1.0, 1.0)) == pytest.approx(5.0, abs=1e-12)
    # Isotropic 1 mm: the face is 1 mm away and the in-plane 2 mm points reach the other face in 1 mm too.
    assert metrics.hd95(cube, shifted, (1.0, 1.0, 1.0)) == pytest.approx(1.0, abs=1e-12)


def test_hd95_per_structure_is_keyed_by_name():
    labels_a = np.zeros((32, 32), dtype=np.int32)
    labels_b = np.zeros((32, 32), dtype=np.int32)
    labels_a[5:15, 5:15] = 1
    labels_b[8:18, 5:15] = 1
    labels_a[20:28, 20:28] = 2
    labels_b[20:28, 20:28] = 2
    scores = metrics.hd95_per_structure(labels_a, labels_b, {"RV": 1, "Myo": 2, "LV": 3}, (2.0, 1.0))
    assert list(scores) == ["RV", "Myo", "LV"]
    assert scores["RV"] == pytest.approx(6.0, abs=1e-12)
    assert scores["Myo"] == 0.0
    assert math.isnan(scores["LV"])


def test_hd95_rejects_wrong_spacing_shape_and_label_maps():
    square = _square((32, 32), (5, 15), (5, 15))
    with pytest.raises(ValueError, match=r"spacing \(1\.0, 1\.0, 1\.0\) has 3 values.*rank 2"):
        metrics.hd95(square, square, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(32, 32\).*\(16, 16\)"):
        metrics.hd95(square, square[:16, :16], (1.0, 1.0))
    with pytest.raises(ValueError, match="labels == value"):
        metrics.hd95(square * 3, square, (1.0, 1.0))


# ------------------------------------------------------------------------------------- Jacobian, NJD


def test_zero_flow_has_unit_determinant_in_2d_and_3d():
    det_2d = metrics.jacobian_determinant(np.zeros((8, 9, 2)))
    det_3d = metrics.jacobian_determinant(np.zeros((5, 6, 7, 3), dtype=np.float32))
    assert det_2d.shape == (8, 9) and det_3d.shape == (5, 6, 7)
    np.testing.assert_allclose(det_2d, 1.0, atol=1e-12)
    np.testing.assert_allclose(det_3d, 1.0, atol=1e-12)


@pytest.mark.parametrize("vol_shape, a", [((12, 10), 0.5), ((6, 8, 7), -0.2)])
def test_uniform_scaling_has_determinant_one_plus_a_to_the_ndim(vol_shape, a):
    # u(x) = a (x - c) maps x to c + (1 + a)(x - c). The field is linear, so finite differences are exact
    # on the edges as well as inside.
    grid = _grid(vol_shape)
    centre = (np.array(vol_shape) - 1) / 2.0
    det = metrics.jacobian_determinant(a * (grid - centre))
    np.testing.assert_allclose(det, (1.0 + a) ** len(vol_shape), atol=1e-12)


def test_flow_channel_k_is_displacement_along_axis_k():
    grid = _grid((10, 12))
    stretch_rows = np.zeros_like(grid)
    stretch_rows[..., 0] = 0.5 * grid[..., 0]      # rows pulled apart: area x 1.5
    shear = np.zeros_like(grid)
    shear[..., 1] = 0.5 * grid[..., 0]             # columns slide with the row: area kept
    np.testing.assert_allclose(metrics.jacobian_determinant(stretch_rows), 1.5, atol=1e-12)
    np.testing.assert_allclose(metrics.jacobian_determinant(shear), 1.0, atol=1e-12)


def _folding_field_2d():
    """20x20 field reversing rows 5..14 (about row 9.5) in columns 4..13; identity elsewhere.

    Only u_0 is non-zero, so det = d(x0 + u0)/dx0, from central differences along rows:
    rows 6..13 of the box: -1.5 (80 of 400 pixels); rows 5 and 14: +5.375; rows 4 and 15: +6.625; else 1.
    """
    flow = np.zeros((20, 20, 2))
    rows = np.arange(5, 15, dtype=np.float64)
    flow[5:15, 4:14, 0] = -2.5 * (rows[:, None] - 9.5)
    return flow


def test_folding_field_has_hand_computed_determinants_and_njd():
    flow = _folding_field_2d()
    det = metrics.jacobian_determinant(flow)
    expected_row_profile = [1.0] * 4 + [6.625, 5.375] + [-1.5] * 8 + [5.375, 6.625] + [1.0] * 4
    np.testing.assert_allclose(det[:, 8], expected_row_profile, atol=1e-12)
    np.testing.assert_allclose(det[:, 15], 1.0, atol=1e-12)
    assert metrics.negative_jacobian_percent(flow) == pytest.approx(100.0 * 80 / 400, abs=1e-12)


def test_njd_of_a_3d_folding_field():
    # The 2D fold applied along axis 1 in every one of 6 slices: 6 * 80 of 6 * 400 voxels fold.
    flow = np.zeros((6, 20, 20, 3))
    flow[..., 1] = _folding_field_2d()[None, ..., 0]
    assert metrics.negative_jacobian_percent(flow) == pytest.approx(20.0, abs=1e-12)


def test_njd_pools_all_pixels_of_a_stack_of_fields():
    # One folding slice (80 of 400 pixels) and one identity slice: 80 of 800.
    stack_2d = np.stack([_folding_field_2d(), np.zeros((20, 20, 2))])
    assert metrics.negative_jacobian_percent(stack_2d) == pytest.approx(10.0, abs=1e-12)
    fold_3d = np.zeros((6, 20, 20, 3))
    fold_3d[..., 1] = _folding_field_2d()[None, ..., 0]
    stack_3d = np.stack([fold_3d, np.zeros_like(fold_3d), np.zeros_like(fold_3d), fold_3d])
    assert metrics.negative_jacobian_percent(stack_3d) == pytest.approx(10.0, abs=1e-12)


def test_njd_counts_zero_determinant_as_folding():
    # u_0 = -x0 collapses every row onto row 0: det = 0 everywhere.
    flow = np.zeros((6, 5, 2))
    flow[..., 0] = -_grid((6, 5))[..., 0]
    assert metrics.negative_jacobian_percent(flow) == 100.0


def test_flows_whose_last_axis_does_not_match_the_rank_are_rejected():
    with pytest.raises(ValueError, match=r"\(20, 20, 3\)"):
        metrics.jacobian_determinant(np.zeros((20, 20, 3)))
    with pytest.raises(ValueError, match=r"\(20, 20, 5\)"):
        metrics.negative_jacobian_percent(np.zeros((20, 20, 5)))
    with pytest.raises(ValueError, match=r"\(4, 1, 20, 20, 2\)"):
        metrics.negative_jacobian_percent(np.zeros((4, 1, 20, 20, 2)))


# ------------------------------------------------------------------------------------ MSE, mean_std


def test_mse_by_hand():
    image_a = np.array([[0.0, 1.0], [2.0, 3.0]], dtype=np.float32)
    image_b = np.array([[1.0, 1.0], [0.0, 3.0]], dtype=np.float32)
    assert metrics.mse(image_a, image_b) == pytest.approx((1 + 0 + 4 + 0) / 4, abs=1e-12)
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2,\)"):
        metrics.mse(image_a, image_b[0])


def test_mean_std_ignores_nans_and_uses_population_std():
    mean, std = metrics.mean_std([1.0, 2.0, float("nan"), 3.0, 6.0])
    assert mean == pytest.approx(3.0, abs=1e-12)
    assert std == pytest.approx(math.sqrt((4 + 1 + 0 + 9) / 4), abs=1e-12)
    assert metrics.mean_std([1.0, 3.0]) == pytest.approx((2.0, 1.0), abs=1e-12)


def test_mean_std_of_only_nans_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mean, std = metrics.mean_std([float("nan"), float("nan")])
    assert math.isnan(mean) and math.isnan(std)


# ------------------------------------------------------------------------------------------- SDlogJ


def _learn2reg_jacobian_3d(flow):
    """Learn2Reg's recipe written out independently: central differences with zero padding outside the
    volume, ``J = det(I + grad u)``, then 2 voxels dropped at each border."""
    padded = np.pad(flow, [(1, 1)] * 3 + [(0, 0)])
    grad = np.empty(flow.shape[:3] + (3, 3))
    for axis in range(3):
        ahead = [slice(1, -1)] * 3
        behind = [slice(1, -1)] * 3
        ahead[axis], behind[axis] = slice(2, None), slice(None, -2)
        grad[..., :, axis] = (padded[tuple(ahead)] - padded[tuple(behind)]) / 2.0   # d u_c / d x_axis
    return np.linalg.det(np.eye(3) + grad)[2:-2, 2:-2, 2:-2]


def test_sdlogj_of_the_identity_is_zero_in_2d_and_3d():
    assert metrics.sdlogj(np.zeros((8, 9, 10, 3))) == 0.0
    assert metrics.sdlogj(np.zeros((8, 9, 2))) == 0.0


def test_sdlogj_of_an_affine_field_is_zero_but_not_of_a_bent_one():
    # u(x) = (A - I) x + b: x -> A x + b has the constant determinant det(A) = 0.967 everywhere.
    matrix = np.array([[1.1, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 1.0]])
    grid = _grid((9, 10, 11))
    flow = grid @ (matrix - np.eye(3)).T + np.array([1.0, -2.0, 0.5])
    np.testing.assert_allclose(metrics.jacobian_determinant(flow), np.linalg.det(matrix), atol=1e-12)
    assert metrics.sdlogj(flow) == pytest.approx(0.0, abs=1e-12)
    flow[..., 0] += 0.02 * grid[..., 0] ** 2          # bend it: d u_0 / d x_0 now grows along axis 0
    assert metrics.sdlogj(flow) > 0.005


def test_sdlogj_clips_voxels_turned_inside_out_as_learn2reg_does():
    # u_0 = f(x_0) only, so J = 1 + f'(x_0) by central differences: f falls by 5 a voxel up to row 8, then
    # stays flat. Rows 1..7: J = -4; row 8: (f9 - f7) / 2 = -2.5 -> J = -1.5; rows 9..14: J = 1.
    # Kept rows 2..13 (2 dropped at each border), each 4 x 4 voxels: J + 3 = -1 on rows 2..7, clipped to
    # 1e-9; 1.5 on row 8; 4 on rows 9..13.
    f = np.where(np.arange(16) <= 8, -5.0 * np.arange(16), -40.0)
    flow = np.zeros((16, 8, 8, 3))
    flow[..., 0] = f[:, None, None]
    np.testing.assert_allclose(metrics.jacobian_determinant(flow)[1:15, 4, 4], [-4.0] * 7 + [-1.5] + [1.0] * 6)
    expected = np.std(np.log([1e-9] * 6 + [1.5] + [4.0] * 5))     # equal weights: one row each
    assert metrics.sdlogj(flow) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(10.98, abs=0.01)  # mean -9.75; deviations -10.97 (x6), 10.16, 11.14 (x5)


def test_sdlogj_equals_learn2regs_recipe_on_a_random_folding_field():
    rng = np.random.default_rng(0)
    flow = ndimage.gaussian_filter(rng.normal(0.0, 20.0, (14, 12, 10, 3)), sigma=(1.5, 1.5, 1.5, 0))
    det = _learn2reg_jacobian_3d(flow)
    assert (det <= -3).any() and (det <= 0).mean() > 0.1 and (det > 0).any()   # clipped, folded, regular
    expected = np.std(np.log(np.clip(det + 3.0, 1e-9, 1e9)))
    assert metrics.sdlogj(flow) == pytest.approx(expected, rel=1e-10)
    # Without the border crop the one-sided differences on the border would change the value.
    full = metrics.jacobian_determinant(flow)
    assert np.std(np.log(np.clip(full + 3.0, 1e-9, 1e9))) != pytest.approx(expected, rel=1e-3)


def test_sdlogj_rejects_fields_too_small_for_the_border_crop_or_of_the_wrong_rank():
    with pytest.raises(ValueError, match="more than 4 voxels"):
        metrics.sdlogj(np.zeros((4, 9, 9, 3)))
    with pytest.raises(ValueError, match=r"\(2, 9, 9, 9, 3\)"):
        metrics.sdlogj(np.zeros((2, 9, 9, 9, 3)))
