"""The lambda study (gsmorph_tf.studies.lambda_study): the statistics by hand, and a tiny resumable end-to-end run."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import PHANTOM, ROOT
from gsmorph_tf.config import TrainConfig
from gsmorph_tf.studies import lambda_study


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
    check_reference_comparison(tmp_path, config.output_dir)


#: Stands in for a Python with PyTorch: answers the harness's import probe, and "trains" the reference by
#: writing zero flows (the identity) in reference_train.py's output format, one line per epoch.
FAKE_REFERENCE_PYTHON = """#!{python}
import sys
import numpy as np
if sys.argv[1] == "-c":
    sys.exit(0)
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
with open(args["--out"] + ".calls", "a") as f:
    f.write(" ".join(sys.argv[2:]) + "\\n")
data, epochs = np.load(args["--data"]), int(args["--epochs"])
for epoch in range(epochs):
    print("epoch %d/%d" % (epoch + 1, epochs))
np.savez(args["--out"], test_flow=np.zeros(data["test_moving"].shape + (2,)),
         val_flow=np.zeros((epochs,) + data["val_moving"].shape + (2,)), sim_loss=np.ones(epochs),
         reg_loss=np.zeros(epochs), steps=np.array(len(data["train_moving"]) // int(args["--batch"]) * epochs))
"""


def check_reference_comparison(tmp_path, study_dir):
    """benchmarks/reference_training.py on the tiny study, with a stand-in for the reference's training."""
    python = tmp_path / "fake_python"
    python.write_text(FAKE_REFERENCE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    reference_dir = tmp_path / "GSMorph"
    (reference_dir / "source").mkdir(parents=True)
    (reference_dir / "source" / "model_func.py").write_text("")
    script = os.path.join(ROOT, "benchmarks", "reference_training.py")
    command = [sys.executable, script, "--study_dir=%s" % study_dir, "--reference_dir=%s" % reference_dir,
               "--reference_python=%s" % python, "--lambdas=0.1", "--surgery_methods=GSMorph", "--seeds=0,1"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "reference: epoch 2/2" in first.stdout and "[4/4] GSMorph, seed 1" in first.stdout
    output = os.path.join(study_dir, "reference")
    calls = open(os.path.join(output, "gsmorph", "seed1", "reference.npz.calls")).read()
    assert "--surgery layerwise" in calls and "--seed 1 --epochs 2 --batch 2 --lr 0.001" in calls
    assert "--surgery none --lam 0.1" in open(os.path.join(output, "voxelmorph_lam0.1", "seed0",
                                                           "reference.npz.calls")).read()
    with np.load(os.path.join(output, "pairs.npz")) as pairs:   # the study's own pairs, split by split
        assert pairs["train_moving"].shape == (4, 32, 32) and pairs["test_fixed"].shape[1:] == (32, 32)
    saved = json.load(open(os.path.join(output, "reference_comparison.json")))
    study = json.load(open(os.path.join(study_dir, "study.json")))
    for name in ("VoxelMorph (lam=0.1)", "GSMorph"):
        # the port's side is the study's runs, read back; the reference's zero flows score as the identity
        assert saved["port_runs"][name][0]["test"] == study["runs"][name][0]["test"]
        reference = saved["reference_runs"][name]
        assert len(reference[0]["validation_curve"]) == 2 and reference[0]["steps"] == 4
        assert reference[0]["test"]["njd"]["mean"] == 0.0 and reference[0]["test"] == reference[1]["test"]
    table = open(os.path.join(output, "reference_comparison.md")).read()
    assert "| GSMorph | reference |" in table and "- GSMorph: mean " in table
    assert os.path.isfile(os.path.join(output, "reference_curves.png"))
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "reference: epoch" not in again.stdout   # everything read back
    assert json.load(open(os.path.join(output, "reference_comparison.json")))["comparison"] == saved["comparison"]


def test_reference_comparison_refuses_bad_inputs_before_work(tmp_path):
    script = os.path.join(ROOT, "benchmarks", "reference_training.py")
    python = tmp_path / "python_without_torch"
    python.write_text("#!%s\nimport sys\nsys.exit(\"ModuleNotFoundError: No module named 'torch'\")\n" % sys.executable)
    python.chmod(0o755)

    def run():
        return subprocess.run([sys.executable, script, "--study_dir=%s" % tmp_path, "--reference_dir=%s" % tmp_path,
                               "--reference_python=%s" % python], capture_output=True, text=True, timeout=300)
    missing = run()
    assert missing.returncode == 2 and "no source/model_func.py" in missing.stderr and str(tmp_path) in missing.stderr
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "model_func.py").write_text("")
    no_torch = run()
    assert no_torch.returncode == 2 and "cannot import torch and numpy" in no_torch.stderr
    assert "No module named 'torch'" in no_torch.stderr
    python.write_text("#!%s\n" % sys.executable)   # a working interpreter, but the study is missing
    no_study = run()
    assert no_study.returncode == 2 and "no study.json; run run_study.py" in no_study.stderr


def test_port_and_reference_side_by_side(tmp_path):
    methods = lambda_study.study_methods((0.01,), (("GSMorph", "layerwise"),))
    subjects = ["s%d" % i for i in range(8)]
    port = {m.name: [dict(record(m.name, k, {s: 80.0 + i + k for i, s in enumerate(subjects)}, 75.0),
                          sim_loss_curve=[0.02, 0.01]) for k in (0, 1)] for m in methods}
    reference = {m.name: [dict(record(m.name, k, {s: 78.0 + i - 0.1 * i * i + 0.4 * k for i, s in enumerate(subjects)},
                                      74.0),
                               sim_loss_curve=[0.03, 0.01]) for k in (0, 1)] for m in methods}
    comparison = lambda_study.compare_implementations(port, reference, methods)
    row = comparison["GSMorph"]
    assert row["port"]["dice_mean"] == (84.0, 0.5) and row["reference"]["dice_mean"][0] == pytest.approx(79.95)
    assert row["port_seed_dice"] == {0: 83.5, 1: 84.5}
    differences = [2.3 + 0.1 * i * i for i in range(8)]    # port (seed mean) - reference, per subject
    assert row["wilcoxon"]["mean_difference"] == pytest.approx(np.mean(differences))
    assert row["wilcoxon"]["p_value"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    seed_dice = ([83.5, 84.5], [r["test"]["dice_mean"]["mean"] for r in reference["GSMorph"]])
    assert row["welch"]["p_value"] == pytest.approx(stats.ttest_ind(*seed_dice, equal_var=False).pvalue)
    assert row["welch"]["seeds"] == (2, 2) and row["welch"]["mean_difference"] == pytest.approx(84.0 - 79.95)
    table = lambda_study.comparison_table(comparison, "paper")
    assert "| GSMorph | port | 84.00 +- 0.50 |" in table and "0: 83.5, 1: 84.5" in table
    assert "- GSMorph: mean +4.05; Welch t = " in table
    assert "metric protocol paper" in table
    lambda_study.plot_comparison(port, reference, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").stat().st_size > 0
