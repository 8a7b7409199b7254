"""Evaluation helpers: label warping convention, per-subject metrics, tables."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest

from gsmorph_tf.data.acdc import ACDC_LABELS
from gsmorph_tf.data.subjects import SubjectPairs
from gsmorph_tf.evaluate import evaluation


def square_labels(shape=(2, 16, 16)):
    labels = np.zeros(shape, np.int32)
    labels[:, 4:8, 4:8] = ACDC_LABELS["LV"]
    labels[:, 4:8, 9:12] = ACDC_LABELS["Myo"]
    labels[:, 10:13, 4:12] = ACDC_LABELS["RV"]
    return labels


def test_warp_labels_follows_voxelmorph_convention():
    labels = square_labels()
    flow = np.zeros((*labels.shape, 2), np.float32)
    np.testing.assert_array_equal(evaluation.warp_labels(labels, flow), labels)
    flow[..., 0] = 1.0  # moved(x) = moving(x + (1, 0)): content moves up one row
    np.testing.assert_array_equal(evaluation.warp_labels(labels, flow)[:, 3:7, 4:8], labels[:, 4:8, 4:8])


def make_subject(moving_labels, fixed_labels):
    image = (fixed_labels > 0).astype(np.float32)
    return SubjectPairs(subject="s1", moving=(moving_labels > 0).astype(np.float32), fixed=image,
                        moving_labels=moving_labels, fixed_labels=fixed_labels, spacing_mm=(10.0, 1.5, 1.5),
                        label_values=dict(ACDC_LABELS))


def test_subject_metrics_by_hand():
    fixed = square_labels()
    moving = np.roll(fixed, 1, axis=2)  # everything one column to the right
    row = evaluation.subject_metrics(make_subject(moving, fixed), moving.astype(np.float32) * 0,
                                     moving, None)
    # LV 4x4 square shifted by one column: overlap 4x3 -> Dice 2*12/32 = 75 %
    assert row["dice_LV"] == pytest.approx(75.0)
    assert row["hd95_LV"] == pytest.approx(1.5)  # one pixel at 1.5 mm
    assert row["njd"] == 0.0
    identity = evaluation.evaluate_identity([make_subject(fixed, fixed)])[0]
    assert identity["dice_mean"] == pytest.approx(100.0) and identity["hd95_mean"] == 0.0


def test_summary_and_table():
    rows = [{"subject": "a", "dice_mean": 80.0, "hd95_mean": 2.0, "mse_x100": 1.0, "njd": 0.0,
             "dice_LV": 90.0, "dice_Myo": 70.0, "dice_RV": 80.0},
            {"subject": "b", "dice_mean": 60.0, "hd95_mean": 4.0, "mse_x100": 3.0, "njd": 1.0,
             "dice_LV": 70.0, "dice_Myo": 50.0, "dice_RV": np.nan}]
    summary = evaluation.summarize(rows)
    assert summary["dice_mean"] == {"mean": 70.0, "std": 10.0}
    assert summary["dice_RV"]["mean"] == 80.0  # NaN (structure absent) is left out
    table = evaluation.format_table({"Initial": summary})
    assert "| Initial | 70.00 +- 10.00 | 3.00 +- 1.00 |" in table
    assert "Dice LV (%)" in table.splitlines()[0]


def test_3d_items_and_end_point_error_by_hand():
    labels = np.zeros((1, 8, 8, 8), np.int32)
    labels[0, 2:6, 2:6, 2:6] = 2
    true_flow = np.zeros((1, 8, 8, 8, 3), np.float32)
    pairs = SubjectPairs(subject="pair000", moving=labels.astype(np.float32), fixed=labels.astype(np.float32),
                         moving_labels=labels, fixed_labels=labels, spacing_mm=(2.0, 1.0, 1.0),
                         label_values={"CSF": 1, "GM": 2, "WM": 3}, true_flow=true_flow)
    assert pairs.volumes_per_item
    flow = np.zeros_like(true_flow)
    flow[..., 0] = 1.0  # one voxel off along axis 0, where voxels are 2 mm
    row = evaluation.subject_metrics(pairs, pairs.moving, labels, flow)
    assert row["epe_mm"] == pytest.approx(2.0)
    assert row["dice_GM"] == pytest.approx(100.0) and np.isnan(row["dice_CSF"])  # CSF absent from both
    assert row["hd95_GM"] == 0.0
    table = evaluation.format_table({"Model": evaluation.summarize([row])})
    assert "EPE (mm)" in table and "Dice CSF (%)" in table and "Dice LV" not in table


def test_paper_protocol_scores_each_slice_pair_by_hand():
    fixed = square_labels((2, 16, 16))
    fixed[1][fixed[1] == ACDC_LABELS["RV"]] = 0            # slice 1: no RV in the fixed labels ...
    moving = fixed.copy()
    moving[0] = np.roll(fixed[0], 1, axis=1)               # slice 0: everything one column to the right
    subject = make_subject(moving, fixed)
    flow = np.zeros((2, 16, 16, 2), np.float32)
    flow[1, 5:8, 5:8, 0] = np.array([0.0, 3.0, 6.0])[:, None]   # a fold: det = 1 + d(u0)/dr < 0 in the middle
    rows = evaluation.metric_rows(subject, (moving > 0).astype(np.float32), moving, flow, protocol="paper")
    assert [(r["subject"], r["slice"]) for r in rows] == [("s1", 0), ("s1", 1)]
    assert rows[0]["dice_LV"] == pytest.approx(75.0) and rows[0]["hd95_LV"] == pytest.approx(1.5)  # in-plane mm
    # ... nor in the moved ones: undefined, left out of the slice's mean over LV and Myo
    assert np.isnan(rows[1]["dice_RV"]) and np.isnan(rows[1]["hd95_RV"])
    assert rows[1]["dice_mean"] == pytest.approx(100.0)
    assert rows[0]["dice_mean"] == pytest.approx(np.mean([rows[0]["dice_%s" % n] for n in ("LV", "Myo", "RV")]))
    assert rows[0]["njd"] == 0.0 and rows[1]["njd"] > 0.0
    assert rows[1]["mse"] == pytest.approx(0.0) and rows[0]["mse"] > 0.0


def test_paper_protocol_counts_only_negative_determinants():
    flow = np.zeros((1, 8, 8, 2), np.float32)
    flow[0, :, :, 0] = -np.arange(8, dtype=np.float32)[:, None]   # x -> x - x along rows: det = 0 everywhere
    from gsmorph_tf.evaluate import metrics
    assert metrics.negative_jacobian_percent(flow) == 100.0                       # det <= 0 (volume)
    assert metrics.negative_jacobian_percent(flow, include_zero=False) == 0.0     # det < 0 (paper)


def test_paper_protocol_rows_and_captions():
    fixed = square_labels((3, 16, 16))
    subject = make_subject(fixed, fixed)
    paper = evaluation.evaluate_identity([subject], protocol="paper")
    assert len(paper) == 3 and paper[0]["pairs"] == 1
    assert evaluation.per_subject_means(paper) == [dict(evaluation.per_subject_means(paper)[0], subject="s1")]
    assert len(evaluation.evaluate_identity([subject])) == 1
    assert "over 3 slice pairs of 1 subjects" in evaluation.protocol_caption("paper", paper)
    assert "over 1 subjects" in evaluation.protocol_caption("volume", evaluation.evaluate_identity([subject]))
    with pytest.raises(ValueError, match="unknown metric protocol 'slices'"):
        evaluation.metric_rows(subject, subject.moving, subject.moving_labels, None, protocol="slices")


def test_evaluate_flows_scores_precomputed_flows_as_a_predictor_would():
    fixed = square_labels((3, 16, 16))
    first, second = make_subject(np.roll(fixed, 1, axis=2), fixed), make_subject(fixed, fixed)
    second = SubjectPairs(**dict(vars(second), subject="s2", moving=second.moving[:2], fixed=second.fixed[:2],
                                 moving_labels=second.moving_labels[:2], fixed_labels=second.fixed_labels[:2]))
    flows = np.zeros((5, 16, 16, 2), np.float32)
    flows[:3, ..., 1] = 1.0   # the first subject's three pairs: one column back, which undoes the roll
    rows = evaluation.evaluate_flows([first, second], flows, protocol="paper")
    stacks = iter((flows[:3], flows[3:]))

    def predict(moving, fixed):   # the same flows, given subject by subject as a network would
        flow = next(stacks)
        return evaluation.warp_images(moving, flow), flow
    expected = evaluation.evaluate_predictor(predict, [first, second], protocol="paper")
    assert [(r["subject"], r["dice_mean"], r["mse_x100"], r["njd"]) for r in rows] == \
        [(r["subject"], r["dice_mean"], r["mse_x100"], r["njd"]) for r in expected]
    assert all(np.isnan(r["seconds"]) for r in rows)
    assert rows[0]["dice_LV"] == pytest.approx(100.0)   # the roll undone away from the image border
    identity = evaluation.evaluate_flows([first], np.zeros((3, 16, 16, 2)), protocol="volume")[0]
    assert identity["dice_mean"] == pytest.approx(evaluation.evaluate_identity([first])[0]["dice_mean"])
    with pytest.raises(ValueError, match=r"run\.npz: expected flows of shape \(5, 16, 16, 2\)"):
        evaluation.evaluate_flows([first, second], flows[:4], source="run.npz")


def test_evaluate_flows_scores_3d_volume_pairs_as_a_predictor_would():
    fixed = np.stack([square_labels((8, 16, 16))])            # one volume pair per subject: [1, D, H, W]
    first = make_subject(np.roll(fixed, 1, axis=3), fixed)
    second = SubjectPairs(**dict(vars(make_subject(fixed, fixed)), subject="s2"))
    flows = np.zeros((2, 8, 16, 16, 3), np.float32)
    flows[0, ..., 2] = 1.0   # the first pair: one voxel back along the last axis, which undoes the roll
    flows[1, ..., 0] = 0.5
    rows = evaluation.evaluate_flows([first, second], flows)
    stacks = iter((flows[:1], flows[1:]))

    def predict(moving, fixed):
        flow = next(stacks)
        return evaluation.warp_images(moving, flow), flow
    expected = evaluation.evaluate_predictor(predict, [first, second])
    assert [(r["subject"], r["dice_mean"], r["mse_x100"], r["njd"]) for r in rows] == \
        [(r["subject"], r["dice_mean"], r["mse_x100"], r["njd"]) for r in expected]
    assert rows[0]["dice_LV"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match=r"expected flows of shape \(2, 8, 16, 16, 3\)"):
        evaluation.evaluate_flows([first, second], flows[..., :2])


def test_warp_images_moves_content_like_the_label_warp():
    image = (square_labels() > 0).astype(np.float32)
    flow = np.zeros((*image.shape, 2), np.float32)
    flow[..., 0] = 1.0
    np.testing.assert_allclose(evaluation.warp_images(image, flow)[:, 3:7, 4:8], image[:, 4:8, 4:8])


def test_predict_pairs_equals_keras_predict_batch_by_batch_and_keeps_one_trace_per_network():
    import gc
    import weakref

    import tensorflow as tf

    from gsmorph_tf.models.networks import build_gsmorph_unet

    network = build_gsmorph_unet((32, 32))
    rng = np.random.default_rng(0)
    moving, fixed = rng.random((5, 32, 32), np.float32), rng.random((5, 32, 32), np.float32)
    expected_moved, expected_flow = network.predict({"moving": moving[..., None], "fixed": fixed[..., None]},
                                                    batch_size=2, verbose=0)[:2]
    moved, flow = evaluation.predict_pairs(network, moving, fixed, batch_size=2)   # batches of 2, 2 and 1
    assert moved.shape == (5, 32, 32) and flow.shape == (5, 32, 32, 2)
    np.testing.assert_allclose(moved, expected_moved[..., 0], atol=1e-6)
    np.testing.assert_allclose(flow, expected_flow, atol=1e-5)
    function = evaluation.inference_call(network).function
    assert evaluation.inference_call(network).function is function   # kept: every subject and epoch reuses it
    evaluation.predict_pairs(network, moving, fixed, batch_size=2)
    assert function.experimental_get_tracing_count() == 1   # one trace for the batches of 2 and the last of 1
    # A call outlives the caller's own reference to the network (a predictor built on a temporary network) ...
    held = weakref.ref(network)
    call = evaluation.inference_call(network)
    del network, function
    gc.collect()
    moved_again, _ = call(tf.constant(moving[:1, ..., None]), tf.constant(fixed[:1, ..., None]))
    np.testing.assert_allclose(moved_again.numpy()[0, ..., 0], expected_moved[0, ..., 0], atol=1e-6)
    # ... and the kept trace alone does not keep the network alive.
    del call
    gc.collect()
    assert held() is None
