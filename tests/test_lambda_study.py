"""The lambda study (gsmorph_tf.lambda_study): the statistics by hand, and a tiny resumable end-to-end run."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

import numpy as np
import pytest
from scipy import stats

from conftest import PHANTOM
from gsmorph_tf import lambda_study
from gsmorph_tf.config import TrainConfig


def record(method, seed, dice_by_subject, validation, njd=0.0):
    rows = [{"subject": s, "dice_mean": d} for s, d in dice_by_subject.items()]
    mean = float(np.mean(list(dice_by_subject.values())))
    summary = {"dice_mean": {"mean": mean, "std": 0.0}, "hd95_mean": {"mean": 2.0, "std": 0.0},
               "njd": {"mean": njd, "std": 0.0}, "mse_x100": {"mean": 1.0, "std": 0.0}}
    return {"method": method, "seed": seed, "test": summary, "test_subjects": rows, "validation_dice": validation,
            "validation_curve": [validation], "steps": 10}


def test_best_lambda_is_chosen_on_validation_and_gsmorph_is_tested_against_it():
    methods = lambda_study.study_methods((0.1, 0.01), (("GSMorph", "layerwise"),))
    subjects = ["s%d" % i for i in range(8)]
    base = {s: 80.0 + i for i, s in enumerate(subjects)}
    records = {
        # lam 0.1 is better on test, but 0.01 is better on validation: validation decides.
        "VoxelMorph (lam=0.1)": [record("l", k, {s: v + 5 for s, v in base.items()}, 70.0) for k in (0, 1)],
        "VoxelMorph (lam=0.01)": [record("m", k, base, 75.0 + k, njd=1.0) for k in (0, 1)],
        "GSMorph": [record("g", k, {s: v - 1.0 - 0.1 * i + (0.2 if k else 0.0)
                                    for i, (s, v) in enumerate(base.items())}, 72.0) for k in (0, 1)],
    }
    summary = lambda_study.summarize_study(records, methods)
    assert summary["best_lambda"] == 0.01 and summary["best_lambda_method"] == "VoxelMorph (lam=0.01)"
    assert summary["rows"]["VoxelMorph (lam=0.01)"]["validation_dice"] == (75.5, 0.5)
    assert summary["rows"]["VoxelMorph (lam=0.01)"]["njd"] == (1.0, 0.0)
    test = summary["wilcoxon"]
    # per subject, averaged over the two seeds: GSMorph - lam 0.01 = -1 - 0.1 i + 0.1
    differences = [-0.9 - 0.1 * i for i in range(8)]
    assert test["subjects"] == 8
    assert test["median_difference"] == pytest.approx(np.median(differences))
    assert test["p_value"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    table = lambda_study.study_table(summary, "paper")
    assert "Best lambda on the validation split: 0.01" in table and "Wilcoxon" in table


def test_tiny_study_end_to_end_and_resume(tmp_path):
    config = TrainConfig(dataset="phantom", data_dir=str(tmp_path / "phantom"), output_dir=str(tmp_path / "study"),
                         dataset_options=PHANTOM, crop_size=32, batch_size=2, epochs=2, learning_rate=1e-3,
                         split_seed=0, metric_protocol="paper", conflict_diagnostics=False)
    methods = lambda_study.study_methods((0.1,), (("GSMorph", "layerwise"),))
    messages = []
    summary = lambda_study.run_study(config, config.output_dir, [0, 1], methods, log=messages.append)
    for name in ("study_table.md", "dice_vs_njd.png", "validation_curves.png", "study.json"):
        assert os.path.isfile(os.path.join(config.output_dir, name)), name
    saved = json.load(open(os.path.join(config.output_dir, "study.json")))
    runs = saved["runs"]["GSMorph"]
    assert [r["seed"] for r in runs] == [0, 1] and len(runs[0]["validation_curve"]) == 2   # one value per epoch
    assert runs[0]["steps"] == 2 * 2                       # 4 training pairs / batch 2, 2 epochs
    # the split is fixed: both seeds are scored on the same test subjects
    assert [r["subject"] for r in runs[0]["test_subjects"]] == [r["subject"] for r in runs[1]["test_subjects"]]
    assert summary["best_lambda"] == 0.1
    again = lambda_study.run_study(config, config.output_dir, [0, 1], methods, log=messages.append)
    assert again["rows"] == summary["rows"]
    assert sum("training in" in m for m in messages) == 4   # the second call trained nothing
