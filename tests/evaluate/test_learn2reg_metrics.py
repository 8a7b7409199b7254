"""Tests of gsmorph_tf.evaluate.learn2reg_metrics: the numbers of Learn2Reg's own evaluation code on a tiny task,
its NaN and inf rules, and small cases worked out by hand.

``tests/data/learn2reg_official_scores.json`` holds what MDL-UzL/L2R's ``evaluation/evaluation.py`` (commit in
the file) wrote for the task of ``benchmarks/learn2reg_case.py``, run by ``benchmarks/learn2reg_official_scores.py``
under their pinned requirements. Dice and HD95 and their aggregates must be equal to the last bit (ratios of
counts, square roots of integers); SDlogJ and TRE within 1e-12 relative (the same formulas, sums in another order,
another NumPy and SciPy: measured, SDlogJ differs by at most 2e-16 relative and TRE not at all).
"""
import json
import math
import os
import sys

import numpy as np
import pytest

from conftest import FIXTURES, ROOT
from gsmorph_tf.data import learn2reg_points
from gsmorph_tf.data.learn2reg import Scan
from gsmorph_tf.errors import DatasetError
from gsmorph_tf.evaluate import learn2reg_metrics as l2r
from gsmorph_tf.evaluate import metrics

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import learn2reg_case  # noqa: E402  (benchmarks/: the case their code was run on)

OFFICIAL = os.path.join(FIXTURES, "learn2reg_official_scores.json")
#: Relative tolerance for SDlogJ and TRE (Dice and HD95: exact).
FLOAT_RTOL = 1e-12


@pytest.fixture(scope="module")
def official():
    with open(OFFICIAL, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def case():
    return learn2reg_case.make_case()


def _same(ours, theirs, rtol=0.0):
    """Equal as Learn2Reg's JSON holds it: NaN == NaN, inf == inf, else within ``rtol``."""
    ours, theirs = np.asarray(ours, dtype=np.float64), np.asarray(theirs, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf
        close = np.abs(ours - theirs) <= rtol * np.abs(theirs)
    return ours.shape == theirs.shape and bool(np.all((np.isnan(ours) & np.isnan(theirs)) | (ours == theirs) | close))


def _our_cases(case, masked):
    cases = {}
    for fixed, moving in learn2reg_case.PAIRS:
        f_scan, m_scan = case["scans"][fixed], case["scans"][moving]
        cases["%s<--%s" % (fixed, moving)] = l2r.pair_scores(
            f_scan["labels"], m_scan["labels"], case["disps"][(fixed, moving)], labels=learn2reg_case.LABELS,
            mask=case["masks"][fixed] if masked else None, landmarks=(f_scan["keypoints"], m_scan["keypoints"]),
            spacing_moving=learn2reg_case.SPACING)
    return cases


# Their result names (the evaluation config's) -> ours.
_NAMES = learn2reg_case.NAMES


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_scores_equal_learn2reg_official_code(official, case, masked):
    theirs = official["results"]["masked" if masked else "unmasked"]
    ours = _our_cases(case, masked)
    assert official["l2r_commit"] == l2r.L2R_COMMIT
    assert sorted(ours) == sorted(theirs["cases"])
    for pair, their_scores in theirs["cases"].items():
        for their_name, metric in _NAMES.items():
            rtol = FLOAT_RTOL if metric in ("sdlogj", "tre") else 0.0
            for part in ("mean", "detailed"):
                assert _same(ours[pair][metric][part], their_scores[their_name][part], rtol), (pair, metric, part)
    for their_name, metric in _NAMES.items():
        aggregate = l2r.aggregate([ours[pair][metric]["mean"] for pair in theirs["cases"]], metric)
        rtol = FLOAT_RTOL if metric in ("sdlogj", "tre") else 0.0
        for key in ("mean", "std", "30"):
            assert _same(aggregate[key], theirs["aggregates"][their_name][key], rtol), (metric, key)


def test_hd95_equals_the_surface_distance_package_on_irregular_masks(official):
    # 24 pairs of thresholded noise (236 of the 256 neighbourhood codes occur); with every surface element
    # counted alike instead of by its area, 5 of these 24 would differ.
    masks_a, masks_b = learn2reg_case.random_mask_pairs()
    assert [l2r.hd95(a, b) for a, b in zip(masks_a, masks_b)] == official["random_mask_pairs_hd95"]


def test_masks_and_points_read_from_the_task_folder_give_their_scores(official, case, tmp_path):
    learn2reg_case.write_task(case, tmp_path / "TOY", tmp_path / "submission")
    theirs = official["results"]["masked"]["cases"]
    for fixed, moving in learn2reg_case.PAIRS:
        fixed_scan, moving_scan = (Scan(tmp_path / "TOY" / learn2reg_case.scan_path(name)) for name in (fixed, moving))
        mask = learn2reg_points.read_fixed_mask(fixed_scan)
        np.testing.assert_array_equal(mask, case["masks"][fixed] == 1)
        fixed_points, moving_points, spacing = learn2reg_points.read_pair_points(moving_scan, fixed_scan)
        assert spacing == learn2reg_case.SPACING
        scores = l2r.pair_scores(None, None, case["disps"][(fixed, moving)], mask=mask,
                                 landmarks=(fixed_points, moving_points), spacing_moving=spacing)
        pair = theirs["%s<--%s" % (fixed, moving)]
        assert _same(scores["sdlogj"]["mean"], pair["LogJacDetStd"]["mean"], FLOAT_RTOL)
        assert _same(scores["tre"]["detailed"], pair["TRE_kp"]["detailed"], FLOAT_RTOL)


def test_points_folders_and_bad_points_files(tmp_path):
    assert learn2reg_points.points_folder("NLST_0101_0000", "NLST_0101_0001") == "keypoints"
    assert learn2reg_points.points_folder("X_0003_0000", "X_0004_0000", "landmarks") == "landmarks"
    assert learn2reg_points.points_folder("X_0011_0002", "X_0011_0000") == "keypoints00000002"
    image = tmp_path / "imagesTs" / "X_0001_0000.nii.gz"
    assert learn2reg_points.companion_path(image, "keypoints", ".csv") == tmp_path / "keypointsTs" / "X_0001_0000.csv"
    assert learn2reg_points.companion_path(image, "masks") == tmp_path / "masksTs" / "X_0001_0000.nii.gz"
    with pytest.raises(DatasetError, match="not in an images folder"):
        learn2reg_points.companion_path(tmp_path / "X_0001_0000.nii.gz", "masks")
    with pytest.raises(DatasetError, match="no mask for the fixed image"):
        learn2reg_points.read_fixed_mask(Scan(image))
    (tmp_path / "keypointsTs").mkdir()
    (tmp_path / "keypointsTs" / "X_0001_0000.csv").write_text("1,2\n3,4\n")
    with pytest.raises(DatasetError, match=r"X_0001_0000.csv: expected finite x,y,z"):
        learn2reg_points.read_pair_points(Scan(tmp_path / "imagesTs" / "X_0002_0000.nii.gz"), Scan(image))
    (tmp_path / "keypointsTs" / "X_0001_0000.csv").write_text("1,2,3\n")
    with pytest.raises(DatasetError, match=r"X_0002_0000.csv: missing"):
        learn2reg_points.read_pair_points(Scan(tmp_path / "imagesTs" / "X_0002_0000.nii.gz"), Scan(image))


def test_the_case_exercises_their_nan_and_inf_rules(official):
    cases = official["results"]["unmasked"]["cases"]
    missing, vanished = cases["0002_0000<--0002_0001"], cases["0003_0000<--0004_0000"]
    assert math.isnan(missing["DSC"]["detailed"][2]) and math.isnan(missing["HD95"]["detailed"][2])
    assert vanished["DSC"]["detailed"][2] == 0.0 and math.isinf(vanished["HD95"]["detailed"][2])
    assert math.isinf(official["results"]["unmasked"]["aggregates"]["HD95"]["mean"])
    # The masked SDlogJ differs from the unmasked one: the mask was applied.
    assert (official["results"]["masked"]["aggregates"]["LogJacDetStd"]["mean"]
            != official["results"]["unmasked"]["aggregates"]["LogJacDetStd"]["mean"])


# ------------------------------------------------------------------------------------ hand-checked cases


def test_surfel_areas_of_a_cut_corner_a_flat_face_and_complements():
    areas = l2r.surfel_areas()
    assert areas[0] == 0.0 and areas[255] == 0.0
    # One voxel of the 2x2x2 inside: the triangle through three edge midpoints, area sqrt(3) / 8.
    assert areas[0b00000001] == pytest.approx(math.sqrt(3) / 8, abs=1e-15)
    assert areas[0b10000000] == pytest.approx(math.sqrt(3) / 8, abs=1e-15)
    # Four voxels of one half: a flat unit square.
    assert areas[0b00001111] == 1.0 and areas[0b00110011] == 1.0 and areas[0b01010101] == 1.0
    # Inside and outside swapped: the same surface.
    np.testing.assert_array_equal(areas, areas[::-1])


def _box(shape, *ranges):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in ranges)] = True
    return mask


def test_hd95_of_one_voxel_and_its_shift_is_by_area_per_direction():
    voxel = _box((8, 8, 8), (2, 3), (2, 3), (2, 3))
    shifted = _box((8, 8, 8), (2, 3), (5, 6), (2, 3))
    # A voxel's 8 corners carry equal areas; 4 are 2 voxels from the shifted voxel's corners, 4 are 3 away.
    assert l2r.hd95(voxel, voxel) == 0.0
    assert l2r.hd95(voxel, shifted) == 3.0
    assert l2r.hd95(voxel, shifted, percent=50.0) == 2.0  # half the area is at 2 voxels
    distances, areas, _, _ = l2r.surface_distances(voxel, shifted)
    np.testing.assert_array_equal(distances, [2, 2, 2, 2, 3, 3, 3, 3])
    np.testing.assert_allclose(areas, math.sqrt(3) / 8, rtol=0, atol=1e-15)


def test_hd95_is_in_voxels_whatever_the_spacing_and_inf_for_an_empty_mask():
    box = _box((10, 10, 10), (2, 6), (2, 6), (2, 6))
    moved = _box((10, 10, 10), (3, 7), (2, 6), (2, 6))
    # Every surface element is within 1 voxel of the other surface: the faces across the shift are 1 apart.
    assert l2r.hd95(box, moved) == 1.0
    assert l2r.hd95(box, np.zeros_like(box)) == math.inf
    assert l2r.hd95(np.zeros_like(box), np.zeros_like(box)) == math.inf


def test_pair_scores_nan_for_missing_labels_zero_and_inf_for_a_vanished_one():
    shape = (12, 10, 8)
    fixed, moving = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    fixed[2:6, 2:6, 2:6] = moving[2:6, 2:6, 2:6] = 1
    fixed[8:10, 6:9, 5:7] = 2                 # 2: only in the fixed map
    moving[8:10, 6:9, 1:3] = 3                # 3: only in the moving map
    fixed[0:2, 0:3, 0:2] = moving[0:2, 0:3, 0:2] = 4   # 4: both, at the first corner
    disp = np.zeros(shape + (3,))
    disp[..., 0] = 1.0   # x samples moving x + 1 along axis 0: label 4's row 0 is never sampled...
    disp[:1, ..., 0] = 5.0  # ...nor row 1 (row 0 samples row 5): label 4 vanishes
    scores = l2r.pair_scores(fixed, moving, disp, labels=[1, 2, 3, 4])
    dice, hd = scores["dice"]["detailed"], scores["hd95"]["detailed"]
    # Label 1 (rows 2-5, 64 voxels) lands on rows 1-4 and, from row 5, on row 0: 80 voxels, rows 2-4 shared.
    assert dice[0] == pytest.approx(2 * 48 / (64 + 80), abs=1e-15)
    assert math.isnan(dice[1]) and math.isnan(dice[2]) and math.isnan(hd[1]) and math.isnan(hd[2])
    assert dice[3] == 0.0 and hd[3] == math.inf
    assert scores["hd95"]["mean"] == math.inf
    assert scores["dice"]["mean"] == pytest.approx((dice[0] + 0.0) / 2, abs=1e-15)


def test_warp_labels_reads_zero_outside_the_volume():
    labels = np.full((6, 5, 4), 7, dtype=np.int32)
    disp = np.zeros((6, 5, 4, 3))
    disp[..., 1] = 2.0  # axis 1 + 2: columns 3 and 4 read outside
    warped = l2r.warp_labels(labels, disp)
    assert (warped[:, :3] == 7).all() and (warped[:, 3:] == 0).all()


def test_tre_is_the_mm_distance_after_the_sampled_displacement():
    disp = np.zeros((12, 12, 12, 3))
    disp[...] = (0.5, -1.0, 2.0)
    fixed = np.array([[5.0, 6.0, 4.5], [6.25, 5.0, 7.0]])
    moving = fixed + (0.5, -1.0, 2.0) + np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -2.0]])
    errors = l2r.tre(fixed, moving, disp, spacing_moving=(1.5, 1.25, 2.0))
    np.testing.assert_allclose(errors, [1.5, 4.0], rtol=0, atol=1e-9)


def test_aggregate_quantile_is_point_three_for_dice_and_hd95_point_seven_for_sdlogj_and_tre():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert l2r.aggregate(values, "dice") == {"mean": 3.0, "std": math.sqrt(2.0), "30": pytest.approx(2.2)}
    assert l2r.aggregate(values, "hd95")["30"] == pytest.approx(2.2)
    assert l2r.aggregate(values, "sdlogj")["30"] == pytest.approx(3.8)
    assert l2r.aggregate(values, "tre")["30"] == pytest.approx(3.8)
    assert l2r.aggregate([1.0, math.inf, 2.0], "hd95")["mean"] == math.inf
    with pytest.raises(ValueError, match="unknown Learn2Reg metric 'ncc'"):
        l2r.aggregate(values, "ncc")


def test_sdlogj_mask_counts_the_voxels_equal_to_one(case):
    disp = case["disps"][learn2reg_case.PAIRS[0]]
    mask = case["masks"][learn2reg_case.PAIRS[0][0]]
    assert metrics.sdlogj(disp, mask=np.ones(mask.shape)) == metrics.sdlogj(disp)
    interior = (slice(2, -2),) * 3
    determinant = metrics.jacobian_determinant(disp)[interior][mask[interior] == 1]
    assert metrics.sdlogj(disp, mask=mask) == pytest.approx(float(np.std(np.log(determinant + 3))), rel=1e-12)
    with pytest.raises(ValueError, match="keeps no voxel"):
        metrics.sdlogj(disp, mask=np.full(mask.shape, 2))
    with pytest.raises(ValueError, match="same shape"):
        metrics.sdlogj(disp, mask=mask[:-1])


# ---------------------------------------------------------------------------- the evaluation option


def _subject(case, pair_index=0):
    from gsmorph_tf.data.subjects import SubjectPairs

    fixed, moving = learn2reg_case.PAIRS[pair_index]
    f_scan, m_scan = case["scans"][fixed], case["scans"][moving]
    return SubjectPairs(subject="%s<--%s" % (fixed, moving), moving=m_scan["image"][None],
                        fixed=f_scan["image"][None], moving_labels=m_scan["labels"][None].astype(np.int32),
                        fixed_labels=f_scan["labels"][None].astype(np.int32), spacing_mm=learn2reg_case.SPACING,
                        label_values={"Outer": 1, "Inner": 2, "Edge": 3})


def test_evaluate_flows_with_the_learn2reg_metric_set(case):
    from gsmorph_tf.evaluate import evaluation

    subjects = [_subject(case, 0), _subject(case, 2)]
    flows = np.stack([case["disps"][learn2reg_case.PAIRS[i]] for i in (0, 2)])
    points = [(case["scans"][f]["keypoints"], case["scans"][m]["keypoints"])
              for f, m in (learn2reg_case.PAIRS[0], learn2reg_case.PAIRS[2])]
    rows = evaluation.evaluate_flows(subjects, flows, metric_set="learn2reg", landmarks=points)
    expected = _our_cases(case, masked=False)["0001_0000<--0001_0001"]
    assert rows[0]["l2r_dice_Outer"] == expected["dice"]["detailed"][0]
    assert rows[0]["l2r_hd95"] == expected["hd95"]["mean"]
    assert rows[0]["l2r_sdlogj"] == expected["sdlogj"]["mean"]
    assert rows[0]["l2r_tre"] == expected["tre"]["mean"]
    assert rows[1]["l2r_hd95_Edge"] == math.inf
    results = evaluation.results_by_method({"Flows": rows})
    assert results["Flows"]["learn2reg"]["l2r_hd95"]["mean"] == math.inf
    assert results["Flows"]["learn2reg"]["l2r_dice"] == l2r.aggregate([r["l2r_dice"] for r in rows], "dice")
    table = evaluation.learn2reg_table({"Flows": results["Flows"]["learn2reg"]})
    assert table.splitlines()[0] == ("| Method | DSC | DSC 30% | HD95 (voxels) | HD95 (voxels) 30% | SDlogJ | "
                                     "SDlogJ 30% | TRE (mm) | TRE (mm) 30% |")
    assert "Metric set: learn2reg" in evaluation.protocol_caption("volume", rows)


def test_learn2reg_metric_set_refuses_2d_pairs_and_our_set_refuses_a_mask(case):
    from gsmorph_tf.data.subjects import SubjectPairs
    from gsmorph_tf.evaluate import evaluation

    flat = SubjectPairs(subject="s", moving=np.zeros((2, 8, 8), np.float32), fixed=np.zeros((2, 8, 8), np.float32),
                        moving_labels=np.zeros((2, 8, 8), np.int32), fixed_labels=np.zeros((2, 8, 8), np.int32),
                        spacing_mm=(5.0, 1.0, 1.0), label_values={"A": 1})
    with pytest.raises(ValueError, match="one 3D volume pair per subject"):
        evaluation.metric_rows(flat, flat.moving, flat.moving_labels, None, metric_set="learn2reg")
    subject = _subject(case)
    with pytest.raises(ValueError, match="learn2reg metric set only"):
        evaluation.metric_rows(subject, subject.moving, subject.moving_labels, None, mask=case["masks"]["0001_0000"])
    with pytest.raises(ValueError, match="unknown metric set 'l2r'"):
        evaluation.metric_rows(subject, subject.moving, subject.moving_labels, None, metric_set="l2r")


def test_the_submission_checks_task_json_and_comparison(tmp_path):
    """benchmarks/learn2reg_submission_check.py's pieces (in learn2reg_case.py): its dataset JSON lists the case's pairs for run_register, and its
    comparison counts NaN == NaN and inf == inf as equal, any other NaN or inf mismatch as an infinite difference."""
    from gsmorph_tf.data.learn2reg import read_task

    case = learn2reg_case.make_case()
    learn2reg_case.write_task(case, tmp_path / "TOY", tmp_path / "fields")
    learn2reg_case.write_dataset_json(str(tmp_path / "TOY"))
    task = read_task(str(tmp_path / "TOY"))
    assert task.shape == learn2reg_case.SHAPE
    assert [(fixed.image.name, moving.image.name) for moving, fixed in task.val_pairs] == [
        ("TOY_%s.nii.gz" % f, "TOY_%s.nii.gz" % m) for f, m in learn2reg_case.PAIRS]
    ours = learn2reg_case.our_scores(case, str(tmp_path / "fields"), masked=False)
    assert learn2reg_case.largest_difference(ours, ours) == 0.0
    shifted = json.loads(json.dumps(ours))
    pair = sorted(shifted["cases"])[0]
    shifted["cases"][pair]["DSC"]["mean"] += 0.25
    assert learn2reg_case.largest_difference(ours, shifted) == pytest.approx(0.25)
    shifted["cases"][pair]["DSC"]["mean"] = math.inf
    assert learn2reg_case.largest_difference(ours, shifted) == math.inf
