"""The deformation study (gsmorph_tf.studies.deformation_study, run_deformation_study.py): its statistics on hand-made
records, bad inputs refused before any training, the whole command on a tiny brain task (learned runs stood in
for, so it runs in seconds) with its resume, and one real ULAE-net run through the command."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import shutil
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
from scipy import stats

from gsmorph_tf.config import TrainConfig
from gsmorph_tf.errors import ConfigError, DatasetError
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.studies import deformation_study, paper_comparison, seed_studies
from gsmorph_tf.studies.deformation_study import StudyPlan
from gsmorph_tf.train import rundir

from conftest import ROOT

PNG = b"\x89PNG\r\n\x1a\n"
#: A tiny brain task: 8 subjects at 16^3; 3 validation subjects (2 pairs), 3 held out for test (2 pairs), 2 training
#: subjects (2 ordered pairs).
TINY = {"brain_subjects": 8, "brain_shape": (16, 16, 16), "brain_max_displacement": 2.0, "pairs_per_epoch": 2,
        "test_fraction": 0.6}
TINY_FLAGS = ["--brain_subjects=8", "--brain_shape=16,16,16", "--brain_max_displacement=2", "--pairs_per_epoch=2",
              "--test_fraction=0.6"]


def tiny_config(tmp_path, **changes):
    settings = dict(dataset="brain", data_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "study"),
                    model="ulae", surgery="none", lam=1.0, similarity="multi_ncc", reg_penalty="l2",
                    warp_padding="zeros", ulae_moved="warp3", ulae_init="pytorch", learning_rate=1e-4, batch_size=1,
                    epochs=1, split_seed=0, conflict_diagnostics=False, dataset_options=dict(TINY))
    settings.update(changes)
    return TrainConfig(**settings)


def record(method, seed, dice_by_pair, validation_curve=(), ms=(), level=5.0):
    rows = [{"subject": pair, "dice_mean": dice, "dice_GM": dice - 1.0} for pair, dice in dice_by_pair.items()]
    mean = float(np.mean(list(dice_by_pair.values())))
    summary = {"dice_GM": {"mean": mean - 1.0, "std": 0.0}, "dice_mean": {"mean": mean, "std": 0.0},
               "hd95_mean": {"mean": 3.0, "std": 0.0}, "njd": {"mean": 0.1 * (seed or 0), "std": 0.0},
               "sdlogj": {"mean": None, "std": None}}
    curve = list(validation_curve)
    return {"method": method, "seed": seed, "level": level, "test": summary, "test_subjects": rows,
            "ms_per_pair": list(ms), "parameters": 10, "validation_curve": curve,
            "validation_dice": curve[-1] if curve else None, "steps": 40}


PAIRS = ["p%d" % i for i in range(6)]


def hand_made_records():
    """ULAE-net beats VoxelMorph x2 by 0.5 + 0.5 i Dice points on pair i (after averaging over seeds); lambda 1
    wins on validation although lambda 3 is better on test."""
    lam = {0.3: ([60.0, 62.0], 50.0), 1.0: ([66.0, 64.0], 55.0), 3.0: ([64.0, 64.0], 58.0)}
    main = {"VoxelMorph (lam=%g)" % value: [record("VoxelMorph", seed,
                                                   {p: test + i + seed for i, p in enumerate(PAIRS)},
                                                   [40.0, validation[seed]]) for seed in (0, 1)]
            for value, (validation, test) in lam.items()}
    main["Initial"] = [record("Initial", None, {p: 40.0 + i for i, p in enumerate(PAIRS)})]
    main["VoxelMorph x2 (lam=1)"] = [record("x2", seed, {p: 70.0 + 0.5 * i + seed for i, p in enumerate(PAIRS)},
                                            [50.0, 60.0], ms=[100.0]) for seed in (0, 1)]
    main["ULAE-net"] = [record("ULAE-net", 0, {p: 70.0 + i for i, p in enumerate(PAIRS)}, [50, 60, 65, 66],
                               ms=[10.0, 30.0, 20.0]),
                        record("ULAE-net", 1, {p: 72.0 + i for i, p in enumerate(PAIRS)}, [50, 55, 60, 64],
                               ms=[40.0, 40.0])]
    low = {name: [dict(r, test=dict(r["test"], dice_mean={"mean": r["test"]["dice_mean"]["mean"] + 10, "std": 0}))
                  for r in main[name]] for name in ("Initial", "ULAE-net", "VoxelMorph x2 (lam=1)")}
    return {5.0: main, 2.0: low}


def test_statistics_by_hand(tmp_path):
    plan = StudyPlan(tiny_config(tmp_path, dataset_options=dict(TINY, brain_max_displacement=5.0)),
                     str(tmp_path / "study"), deformation_study.select_methods(
                         ["Initial", "VoxelMorph", "VoxelMorph x2", "ULAE-net"]),
                     seeds=(0, 1), lambdas=(0.3, 1.0, 3.0), magnitudes=(5.0, 2.0)).validate()
    records = hand_made_records()
    chosen, validation = deformation_study.choose_lambda(records[5.0], plan.lambdas)
    assert chosen == 1.0 and validation[1.0] == (65.0, 1.0) and validation[0.3] == (61.0, 1.0)
    summary = deformation_study.summarize(records, plan, chosen)
    assert summary["chosen_lambda"] == 1.0 and summary["chosen_lambda_method"] == "VoxelMorph (lam=1)"
    assert summary["structures"] == ["GM"]
    ulae = summary["rows"]["ULAE-net"]
    assert ulae["dice_mean"] == (73.5, 1.0)            # split means 72.5 and 74.5
    assert ulae["dice_GM"] == (72.5, 1.0)
    assert ulae["njd"] == (0.05, 0.05)
    assert np.isnan(ulae["sdlogj"][0])                 # undefined in every run: shown as "-"
    assert ulae["ms_per_pair"] == (30.0, 10.0)         # medians 20 and 40
    assert ulae["late_gain"] == (2.5, 1.5)             # last quarter of 4 epochs: 66 - 65 and 64 - 60
    assert ulae["validation_dice"] == (65.0, 1.0) and ulae["seeds"] == 2 and ulae["steps"] == (40, 40)
    assert np.isnan(summary["rows"]["Initial"]["ms_per_pair"][0])
    tests = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    assert set(tests) == {("ULAE-net", "VoxelMorph (lam=1)"), ("ULAE-net", "VoxelMorph x2 (lam=1)")}
    versus_x2 = tests[("ULAE-net", "VoxelMorph x2 (lam=1)")]
    # per pair: ULAE 71 + i, x2 70.5 + 0.5 i: differences 0.5 ... 3.0, all positive: W = 0, exact p = 2 / 2^6
    assert versus_x2["wilcoxon"]["subjects"] == 6 and versus_x2["wilcoxon"]["statistic"] == 0.0
    assert versus_x2["wilcoxon"]["p_value"] == pytest.approx(2 / 64)
    assert versus_x2["wilcoxon"]["median_difference"] == pytest.approx(1.75)
    # over seeds: ULAE 72.5, 74.5 (variance 2); x2 71.25, 72.25 (variance 0.5): t = 1.75 / sqrt(2/2 + 0.5/2)
    assert versus_x2["welch"]["statistic"] == pytest.approx(1.75 / np.sqrt(1.25))
    assert versus_x2["welch"]["p_value"] == pytest.approx(
        stats.ttest_ind([72.5, 74.5], [71.25, 72.25], equal_var=False).pvalue)
    levels = summary["magnitudes"]
    assert [m["level"] for m in levels] == [2.0, 5.0] and levels[1]["test_pairs"] == 6
    assert levels[0]["dice"]["ULAE-net"] == (83.5, 1.0) and levels[1]["dice"]["Initial"] == (42.5, 0.0)
    assert levels[0]["ulae_vs_x2"]["wilcoxon"]["p_value"] == pytest.approx(2 / 64)
    table = deformation_study.study_table(summary, 6)
    assert "| ULAE-net | 72.50 +- 1.00 | 73.50 +- 1.00 | 3.00 +- 0.00 | 0.05 +- 0.05 | - | 30.00 +- 10.00 |" in table
    assert "lambda chosen on the validation split (best mean validation Dice over seeds): 1" in table
    assert "- ULAE-net - VoxelMorph x2 (lam=1): mean +1.75, median +1.75 Dice points over 6 test pairs; " \
           "Wilcoxon W = 0, p = 0.0312" in table
    assert "| 2 | 6 | 52.50 +- 0.00 | 83.50 +- 1.00 | 81.75 +- 0.50 | +1.75 | 0.0312 |" in table


def test_late_gain_and_lambda_ties():
    assert np.isnan(deformation_study.late_gain([])) and np.isnan(deformation_study.late_gain([3.0]))
    assert deformation_study.late_gain([1.0, 4.0]) == 3.0
    assert deformation_study.late_gain(list(range(10))) == 3.0   # ceil(10 / 4) = 3 epochs back
    tie = {"VoxelMorph (lam=%g)" % lam: [record("v", 0, {"p": 1.0}, [70.0])] for lam in (3.0, 1.0)}
    assert deformation_study.choose_lambda(tie, (3.0, 1.0))[0] == 3.0   # the first listed on a tie


# --- bad inputs ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"seeds": ()}, "seeds takes non-negative integers, got none"),
    ({"seeds": (0, -1)}, "seeds takes non-negative integers, got -1"),
    ({"seeds": (1, 0, 1)}, "seeds lists 1 more than once"),
    ({"lambdas": (1.0, 0.0)}, "lambdas takes positive numbers, got 0.0"),
    ({"lambdas": (0.3, 1.0), "methods": ("VoxelMorph x2",)}, "VoxelMorph x2 trains with the lambda chosen for "
                                                            "VoxelMorph.*got lambdas 0.3,1"),
    ({"magnitudes": (2.0, -4.0)}, r"magnitudes takes positive numbers \(voxels\), got -4.0"),
    ({"magnitudes": (2.0, 2.0)}, "magnitudes lists 2 more than once"),
    ({"config": {"dataset": "phantom", "dataset_options": {}}}, "runs on dataset=brain.*got dataset=phantom"),
    ({"config": {"split_seed": None}}, "split_seed must be set"),
    ({"config": {"dataset_options": dict(TINY, brain_shape=(20, 16, 16))}}, "brain_shape.*multiple.*16.*20"),
    ({"config": {"epochs": 0}}, "epochs must be a positive number, got 0"),
])
def test_bad_settings_fail_before_any_training(tmp_path, changes, message):
    changes = dict(changes)
    config = tiny_config(tmp_path, **changes.pop("config", {}))
    if "methods" in changes:
        changes["methods"] = deformation_study.select_methods(changes["methods"])
    plan = StudyPlan(config, str(tmp_path / "study"), **changes)
    with mock.patch("gsmorph_tf.train.training.train_and_evaluate", side_effect=AssertionError("trained")):
        with pytest.raises(ConfigError, match=message):
            deformation_study.run_deformation_study(plan, log=lambda *a: None)
    assert not (tmp_path / "data").exists() and not (tmp_path / "study").exists()


def test_unknown_methods_are_named():
    with pytest.raises(ConfigError, match="unknown 'ULAE', 'Demons'; valid: Initial, SyN, VoxelMorph, VoxelMorph x2, "
                                          "ULAE-net, ULAE-net \\+ gradient surgery, GSMorph-3D"):
        deformation_study.select_methods(["ULAE", "Initial", "Demons"])


def test_missing_extra_another_study_and_bad_data_fail_before_training(tmp_path, monkeypatch):
    quiet = dict(log=lambda *a: None)
    monkeypatch.setattr("gsmorph_tf.train.training.train_and_evaluate",
                        mock.Mock(side_effect=AssertionError("trained")))
    with monkeypatch.context() as patched:
        patched.setitem(sys.modules, "ants", None)   # SyN's library, antspyx, not installed
        with pytest.raises(ImportError, match=r"needs antspyx.*install the baselines extra"):
            deformation_study.run_deformation_study(StudyPlan(tiny_config(tmp_path), str(tmp_path / "study")), **quiet)
    # The folder holds a study with other settings: refused before any data is written.
    (tmp_path / "study").mkdir()
    tiny_config(tmp_path, epochs=3).save(str(tmp_path / "study" / "study_config.json"))
    learned = deformation_study.select_methods(["Initial", "ULAE-net"])
    with pytest.raises(ConfigError, match=r"study holds a run with other settings \(epochs: 3 before, 1 now\)"):
        deformation_study.run_deformation_study(StudyPlan(tiny_config(tmp_path), str(tmp_path / "study"), learned),
                                                **quiet)
    assert not (tmp_path / "data").exists()
    # Too few subjects left to train once 4 of the 5 non-validation subjects are held out for test: every level's
    # data is written and checked before the first run.
    plan = StudyPlan(tiny_config(tmp_path, dataset_options=dict(TINY, test_fraction=0.9)), str(tmp_path / "other"),
                     learned, magnitudes=(2.0, 3.0))
    with pytest.raises(DatasetError, match="5 training image.*too few to hold out 4 test subject"):
        deformation_study.run_deformation_study(plan, **quiet)
    assert os.listdir(tmp_path / "other") == ["study_config.json"]


def test_command_names_a_bad_flag_value(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "run_deformation_study.py"), "--seeds=0,x",
                           "--output_dir=%s" % (tmp_path / "study")], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert done.returncode == 2 and "error: --seeds: 'x' is not an integer" in done.stderr
    assert not (tmp_path / "study").exists()


def test_the_cpu_flagfile_is_the_commands_defaults(tmp_path):
    code = ("import json, run_deformation_study as r; from gsmorph_tf import cli; cli._install_flagfile_lookup(); "
            "plans = []\nfor argv in ([], ['--flagfile=deformation_study.flags'], "
            "['--flagfile=deformation_study_gpu.flags'], ['--flagfile=deformation_study_64.flags']):\n"
            "    r.FLAGS.unparse_flags(); r.FLAGS(['x'] + argv); plans.append(r.plan_from_flags())\n"
            "print(json.dumps([plans[0] == plans[1], plans[0].run_count(), list(plans[0].levels), "
            "plans[0].config.dataset_options, plans[2].config.dataset_options, list(plans[2].magnitudes), "
            "plans[0].config.ncc, [p.config.learning_rate for p in plans], "
            "[p.config.early_stopping_patience for p in plans], "
            "plans[0].config.epochs, plans[3].config.dataset_options, list(plans[3].levels), plans[3].run_count(), "
            "plans[3].config.to_dict() == __import__('dataclasses').replace(plans[0].config, "
            "dataset_options=plans[3].config.dataset_options, output_dir=plans[3].config.output_dir).to_dict()]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    same, runs, levels, cpu, gpu, magnitudes, ncc, rates, patience, epochs, grid64, levels64, runs64, otherwise_cpu = \
        json.loads(done.stdout)
    assert same and levels == [5.0, 2.0, 7.0] and ncc == "reference"   # the ULAE code's NCC formula
    # on CPU every run stops on its plateau within 60 epochs at lr 1e-3; the GPU study keeps the reference's 1e-4
    assert rates == [1e-3, 1e-3, 1e-4, 1e-3] and patience == [8, 8, 3, 8] and epochs == 60
    # the GPU session's study: the CPU protocol on a grid twice as fine, the magnitudes scaled with it
    assert grid64 == dict(cpu, brain_shape=[64, 96, 64], brain_max_displacement=10.0) and otherwise_cpu
    assert levels64 == [10.0, 4.0, 14.0] and runs64 == 37
    # main level: Initial, SyN, 3 lambdas x 3 seeds, x2, ULAE-net, ULAE + GS, GSMorph-3D x 3 seeds; two more levels:
    # Initial and (x2, ULAE-net) x 3 seeds
    assert runs == 2 + 9 + 4 * 3 + 2 * (1 + 2 * 3) == 37
    assert cpu == {"brain_subjects": 30, "brain_shape": [32, 48, 32], "brain_max_displacement": 5.0,
                   "pairs_per_epoch": 40, "test_fraction": 0.4}
    assert gpu["brain_shape"] == [160, 192, 160] and magnitudes == [8.0, 20.0, 28.0]


# --- the whole command, learned runs stood in for ------------------------------------------------------------------

def fake_learned(calls, real=paper_comparison.method_record):
    """Stands in for a learned method's training and scoring: records the config it was given, writes a validation
    curve to the run's TensorBoard events, and scores the Initial rows shifted by a method- and seed-dependent
    amount. Initial and SyN run for real."""
    import tensorflow as tf

    def method_record(method, config, splits, folder, log=print, predictors=None, networks=None):
        if method.kind != "learned":
            return real(method, config, splits, folder, log, predictors, networks)
        config = config.replace_for_model(output_dir=folder, **dict(method.settings))
        calls.append(config)
        shift = {"ULAE-net": 20.0, "VoxelMorph x2 (lam=1)": 10.0}.get(method.name, config.lam) + config.seed
        with tf.summary.create_file_writer(os.path.join(folder, "tensorboard", "validation")).as_default():
            for epoch in range(config.epochs):
                tf.summary.scalar("epoch_dice", 30.0 + shift * (epoch + 1), step=epoch)
        rows = [dict(row, dice_mean=row["dice_mean"] + shift)
                for row in evaluation.evaluate_identity(splits["test"])]
        return {"name": method.name, "kind": "learned", "parameters": 7, "ms_per_pair": [5.0 + config.seed],
                "subjects": rows, "summary": evaluation.summarize(rows), "chosen": {}, "metric_protocol": "volume"}
    return method_record


def run_command(argv, fake, capsys):
    """run_deformation_study.main in this process with ``argv``, ULAE's step images stood in for (the pair's moving
    image after every step)."""
    import run_deformation_study

    run_deformation_study.FLAGS.unparse_flags()
    run_deformation_study.FLAGS(["run_deformation_study"] + argv)
    steps = lambda run_dir, pair, network=None: {name: pair.moving[0] for name, _ in deformation_study.STEP_OUTPUTS}
    with mock.patch.object(paper_comparison, "method_record", side_effect=fake), \
            mock.patch.object(deformation_study, "ulae_step_images", side_effect=steps):
        status = run_deformation_study.main(["run_deformation_study"])
    run_deformation_study.FLAGS.unparse_flags()
    return status, capsys.readouterr()


def test_the_whole_command_on_a_tiny_task_and_its_resume(tmp_path, capsys):
    argv = ["--data_dir=%s" % (tmp_path / "data"), "--output_dir=%s" % (tmp_path / "study"), "--epochs=3",
            "--seeds=0,1", "--lambdas=0.5,1", "--magnitudes=1,2", "--early_stopping_patience=4",
            "--early_stopping_min_delta=0.1", "--methods=Initial,SyN,VoxelMorph,VoxelMorph x2,ULAE-net"] + TINY_FLAGS
    calls = []
    with mock.patch.object(seed_studies, "plot_seed_curves", wraps=seed_studies.plot_seed_curves) as curves:
        status, out = run_command(argv, fake_learned(calls), capsys)
    assert status == 0, out.err
    # every run's own curve, a panel per row and level (Initial and SyN: none drawn)
    panels = curves.call_args.args[0]
    assert list(panels) == ["%s, %g voxels" % (name, level) for level, names in (
        (2, ["Initial", "SyN", "VoxelMorph (lam=0.5)", "VoxelMorph (lam=1)", "VoxelMorph x2 (lam=1)", "ULAE-net"]),
        (1, ["Initial", "VoxelMorph x2 (lam=1)", "ULAE-net"])) for name in names]
    assert [len(r["validation_curve"]) for r in panels["ULAE-net, 1 voxels"]] == [3, 3]
    # main level (2 voxels): Initial, SyN, 2 lambdas x 2 seeds, x2 x 2, ULAE x 2; level 1: Initial, x2 x 2, ULAE x 2
    assert "[1/15] Initial (max displacement 2 voxels)" in out.out
    assert "[10/15] ULAE-net, seed 1 (max displacement 2 voxels)" in out.out
    assert "[15/15] ULAE-net, seed 1 (max displacement 1 voxels)" in out.out
    assert "VoxelMorph's lambda chosen on the validation split: 1" in out.out
    # every learned run: the same data, steps, learning rate and objective; each row its own model settings
    assert len(calls) == 12
    for config in calls:
        assert (config.learning_rate, config.epochs, config.batch_size, config.split_seed) == (1e-3, 3, 1, 0)
        assert (config.similarity, config.reg_penalty, config.warp_padding) == ("multi_ncc", "l2", "zeros")
        assert config.option("pairs_per_epoch") == 2 and config.conflict_diagnostics is False
        assert (config.early_stopping_patience, config.early_stopping_min_delta) == (4, 0.1)
    by_model = {(c.model, c.unet_width, c.lam, c.option("brain_max_displacement")): c for c in calls}
    x2 = by_model[("gsmorph", 2, 1.0, 1.0)]   # VoxelMorph x2 at the chosen lambda, on level 1's data
    assert (x2.surgery, x2.ulae_moved, x2.ulae_init) == ("none", "composed", "keras")
    ulae = by_model[("ulae", 1, 1.0, 2.0)]
    assert (ulae.surgery, ulae.ulae_moved, ulae.ulae_init) == ("none", "warp3", "pytorch")
    assert ulae.output_dir == str(tmp_path / "study" / "disp2" / "ulae" / "seed1")
    assert sorted(os.listdir(tmp_path / "data")) == ["MNIBrain_v1_8subjects_16x16x16_disp1_seed0",
                                                      "MNIBrain_v1_8subjects_16x16x16_disp2_seed0"]

    study = tmp_path / "study"
    for name in ("validation_curves.png", "dice_vs_magnitude.png", "ulae_steps.png"):
        assert (study / name).read_bytes()[:8] == PNG, name
    saved = json.loads((study / "deformation_study.json").read_text())
    assert saved["levels"] == [2.0, 1.0] and sorted(saved["runs"]) == ["disp1", "disp2"]
    assert list(saved["runs"]["disp2"]) == ["Initial", "SyN", "VoxelMorph (lam=0.5)", "VoxelMorph (lam=1)",
                                            "VoxelMorph x2 (lam=1)", "ULAE-net"]
    assert list(saved["runs"]["disp1"]) == ["Initial", "VoxelMorph x2 (lam=1)", "ULAE-net"]
    ulae_runs = saved["runs"]["disp2"]["ULAE-net"]
    assert [r["seed"] for r in ulae_runs] == [0, 1] and ulae_runs[0]["steps"] == 3 * 2
    assert ulae_runs[1]["validation_curve"] == [51.0, 72.0, 93.0]   # 30 + 21 (epoch + 1)
    initial = saved["runs"]["disp2"]["Initial"][0]
    pairs = [row["subject"] for row in initial["test_subjects"]]
    assert len(pairs) == 2 and [r["subject"] for r in ulae_runs[0]["test_subjects"]] == pairs
    summary = saved["summary"]
    assert summary["chosen_lambda"] == 1.0 and summary["structures"] == ["CSF", "GM", "WM"]
    # each run: Initial + 20 + seed
    assert summary["rows"]["ULAE-net"]["dice_mean"] == pytest.approx([initial["test"]["dice_mean"]["mean"] + 20.5, 0.5])
    assert summary["rows"]["ULAE-net"]["ms_per_pair"] == [5.5, 0.5] and summary["rows"]["SyN"]["seeds"] == 1
    comparisons = {(c["a"], c["b"]): c for c in summary["comparisons"]}
    versus_x2 = comparisons[("ULAE-net", "VoxelMorph x2 (lam=1)")]
    assert versus_x2["wilcoxon"]["subjects"] == 2 and versus_x2["wilcoxon"]["mean_difference"] == pytest.approx(10.0)
    assert versus_x2["welch"]["seeds"] == [2, 2]
    assert [m["level"] for m in summary["magnitudes"]] == [1.0, 2.0]
    assert set(summary["magnitudes"][0]["dice"]) == {"Initial", "ULAE-net", "VoxelMorph x2 (lam=1)"}
    # ULAE's Fig. 3 on the first test pair: the moving image's MSE to fixed is the Initial row's
    assert summary["figure"]["pair"] == pairs[0]
    assert summary["figure"]["mse_x100"]["Moving"] == pytest.approx(initial["test_subjects"][0]["mse_x100"], rel=1e-5)
    assert summary["figure"]["mse_x100"]["Fixed"] == 0.0
    table = (study / "deformation_table.md").read_text()
    assert table.startswith("Main level: brain_max_displacement 2 voxels, 2 test pairs.")
    for row in ("| Initial |", "| SyN |", "| VoxelMorph (lam=0.5) |", "| VoxelMorph x2 (lam=1) |", "| ULAE-net |"):
        assert row in table
    assert "| 1 | 2 |" in table and "- ULAE-net - VoxelMorph (lam=1): mean +19.00" in table
    assert (study / "disp2" / "ulae" / "seed0" / "study_run.json").is_file()

    # Resume: the same command trains and scores nothing again and writes the same numbers.
    def no_run(*args, **kwargs):
        raise AssertionError("a finished run was run again")
    with mock.patch("gsmorph_tf.train.training.train_and_evaluate", side_effect=AssertionError("trained")):
        status, again = run_command(argv, no_run, capsys)
    assert status == 0, again.err
    assert "[15/15] ULAE-net, seed 1 (max displacement 1 voxels)" in again.out and "training" not in again.out
    resumed = json.loads((study / "deformation_study.json").read_text())
    assert resumed["summary"] == summary and resumed["runs"] == saved["runs"]


def test_several_processes_share_a_study_by_the_run_locks(tmp_path, capsys):
    """Runs another live process is training are skipped (and VoxelMorph x2 while VoxelMorph's lambda waits for one),
    also when the other process takes a run between the check and the training; a call that skipped runs writes
    no outputs, and the next call trains just those runs and writes them."""
    import contextlib

    argv = ["--data_dir=%s" % (tmp_path / "data"), "--output_dir=%s" % (tmp_path / "study"), "--epochs=2",
            "--seeds=0,1", "--lambdas=0.5,1", "--magnitudes=1",
            "--methods=Initial,VoxelMorph,VoxelMorph x2,ULAE-net"] + TINY_FLAGS
    study = tmp_path / "study"
    vxm, ulae, raced = (study / "disp2" / "voxelmorph_lam0.5" / "seed0", study / "disp1" / "ulae" / "seed1",
                        study / "disp2" / "ulae" / "seed0")
    calls, others = [], contextlib.ExitStack()
    learned = fake_learned(calls)

    def racing(method, config, splits, folder, *args, **kwargs):
        if folder == str(raced):     # another process locks this run just before this one would train it
            others.enter_context(rundir.locked(folder))
            raise ConfigError("output_dir %s is in use by another run" % folder)
        return learned(method, config, splits, folder, *args, **kwargs)

    with others:
        others.enter_context(rundir.locked(str(vxm)))
        others.enter_context(rundir.locked(str(ulae)))
        status, out = run_command(argv, racing, capsys)
    assert status == 0, out.err
    assert "VoxelMorph (lam=0.5), seed 0 (max displacement 2 voxels): skipped, another process is training it" \
        in out.out
    assert "ULAE-net, seed 0 (max displacement 2 voxels): skipped, another process started training it" in out.out
    assert "ULAE-net, seed 1 (max displacement 1 voxels): skipped, another process is training it" in out.out
    for level in (2, 1):
        assert "VoxelMorph x2 (max displacement %d voxels): skipped, VoxelMorph's lambda is not chosen yet" % level \
            in out.out
    assert "VoxelMorph's lambda chosen" not in out.out
    assert "7 run(s) were skipped, being trained by other processes" in out.out and "No outputs written" in out.out
    assert not (study / "deformation_study.json").exists() and not (study / "deformation_table.md").exists()
    first = {c.output_dir for c in calls}
    assert len(first) == 5 and not {str(vxm), str(ulae), str(raced)} & first   # VoxelMorph x3, ULAE-net x2
    assert not any("voxelmorph_x2" in folder for folder in first)

    # The last call, the others ended: it trains just the skipped runs and writes the outputs.
    calls.clear()
    status, out = run_command(argv, fake_learned(calls), capsys)
    assert status == 0, out.err
    assert "skipped" not in out.out and "VoxelMorph's lambda chosen on the validation split: 1" in out.out
    x2 = {str(study / level / "voxelmorph_x2_lam1" / ("seed%d" % seed))
          for level in ("disp2", "disp1") for seed in (0, 1)}
    assert {c.output_dir for c in calls} == {str(vxm), str(ulae), str(raced)} | x2
    saved = json.loads((study / "deformation_study.json").read_text())
    assert [r["seed"] for r in saved["runs"]["disp1"]["ULAE-net"]] == [0, 1]


def test_a_study_carried_to_another_machine_by_its_record_folder(tmp_path, capsys):
    """--record_dir keeps the settings, every finished run's record and the outputs (not a subset's); a new output
    folder (another machine: its runs and data gone) reads the kept runs back instead of training them and writes the
    same numbers; other settings, or the record folder as output folder, are refused by name."""
    record = tmp_path / "record"
    argv = ["--data_dir=%s" % (tmp_path / "data"), "--output_dir=%s" % (tmp_path / "study"), "--epochs=2",
            "--seeds=0,1", "--lambdas=1", "--magnitudes=", "--methods=Initial,VoxelMorph,ULAE-net",
            "--record_dir=%s" % record] + TINY_FLAGS
    status, out = run_command(argv, fake_learned([]), capsys)
    assert status == 0, out.err
    assert "(and %s)" % record in out.out
    kept = sorted(os.path.relpath(os.path.join(folder, name), record) for folder, _, names in os.walk(record)
                  for name in names)
    assert kept == ["deformation_study.json", "deformation_table.md", "disp2/initial/study_run.json",
                    "disp2/ulae/seed0/study_run.json", "disp2/ulae/seed1/study_run.json",
                    "disp2/voxelmorph_lam1/seed0/study_run.json", "disp2/voxelmorph_lam1/seed1/study_run.json",
                    "study_config.json", "ulae_steps.png", "validation_curves.png"]
    saved = json.loads((record / "deformation_study.json").read_text())
    assert saved == json.loads((tmp_path / "study" / "deformation_study.json").read_text())

    # a call on a subset of the runs (one of several processes sharing the study, say) leaves the record folder's
    # outputs, the whole study's, as they are
    table = (record / "deformation_table.md").read_text()
    subset = [a if not a.startswith("--methods=") else "--methods=Initial,ULAE-net" for a in argv]
    status, part = run_command(subset, fake_learned([]), capsys)
    assert status == 0, part.err
    assert ("The outputs were not copied to %s: it keeps 2 run(s) this call did not cover "
            "(disp2/voxelmorph_lam1/seed0, disp2/voxelmorph_lam1/seed1)" % record) in part.out
    assert "(and %s)" % record not in part.out
    assert (record / "deformation_table.md").read_text() == table and "| VoxelMorph (lam=1) |" in table
    assert "VoxelMorph" not in (tmp_path / "study" / "deformation_table.md").read_text()
    assert json.loads((record / "deformation_study.json").read_text()) == saved

    # another machine: a new output folder and data folder, the same record; nothing is trained or scored again
    moved = [a.replace(str(tmp_path / "study"), str(tmp_path / "elsewhere")).replace(
        str(tmp_path / "data"), str(tmp_path / "data2")) for a in argv]
    with mock.patch("gsmorph_tf.train.training.train_and_evaluate", side_effect=AssertionError("trained")):
        status, again = run_command(moved, lambda *a, **k: pytest.fail("a kept run was run again"), capsys)
    assert status == 0, again.err
    assert "finished on another machine: %s read back" % (record / "disp2" / "ulae" / "seed1" / "study_run.json") \
        in again.out
    resumed = json.loads((tmp_path / "elsewhere" / "deformation_study.json").read_text())
    assert resumed["runs"] == saved["runs"]
    figures = [summary.pop("figure") for summary in (resumed["summary"], saved["summary"])]
    assert resumed["summary"] == saved["summary"]
    assert figures[0]["run"] == str(tmp_path / "elsewhere" / "disp2" / "ulae" / "seed0")
    assert (figures[0]["pair"], figures[0]["mse_x100"]) == (figures[1]["pair"], figures[1]["mse_x100"])

    status, other = run_command(moved[:2] + ["--epochs=3"] + moved[3:], fake_learned([]), capsys)
    assert status != 0
    assert "record_dir: %s holds a run with other settings (epochs: 2 before, 3 now)" % record in other.err
    status, same = run_command(argv + ["--output_dir=%s" % record], fake_learned([]), capsys)
    assert status != 0 and "record_dir must be another folder than output_dir (%s)" % record in same.err


# --- one real run ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_ulae_study(tmp_path_factory):
    """The command on the tiny task with ULAE-net trained for real (1 step at the reference's lr 1e-4, seed 3),
    its records kept in ``record/``: ``(folder, its output)``."""
    tmp_path = tmp_path_factory.mktemp("real_ulae")
    command = [sys.executable, os.path.join(ROOT, "run_deformation_study.py"), "--data_dir=%s" % (tmp_path / "data"),
               "--output_dir=%s" % (tmp_path / "study"), "--record_dir=%s" % (tmp_path / "record"),
               "--methods=Initial,ULAE-net", "--seeds=3", "--epochs=1",
               "--magnitudes=", "--pairs_per_epoch=1", "--learning_rate=1e-4"] + [
                   f for f in TINY_FLAGS if "pairs_per_epoch" not in f]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return tmp_path, done.stdout


def test_a_real_ulae_net_run_through_the_command(real_ulae_study):
    """ULAE-net trained for real (1 step) by the command, scored, timed, and its three steps drawn."""
    tmp_path, stdout = real_ulae_study
    assert "[2/2] ULAE-net, seed 3 (max displacement 2 voxels)" in stdout
    saved = json.loads((tmp_path / "study" / "deformation_study.json").read_text())
    run = saved["runs"]["disp2"]["ULAE-net"][0]
    assert run["parameters"] == 1_109_241 and run["steps"] == 1 and len(run["validation_curve"]) == 1
    assert len(run["ms_per_pair"]) == 2 and min(run["ms_per_pair"]) > 0      # the 2 test pairs, one at a time
    with open(tmp_path / "study" / "disp2" / "ulae" / "seed3" / "config.json") as f:
        config = json.load(f)
    assert (config["seed"], config["ulae_moved"], config["warp_padding"], config["lam"], config["ncc"]) == \
        (3, "warp3", "zeros", 1.0, "reference")
    assert (tmp_path / "study" / "ulae_steps.png").read_bytes()[:8] == PNG
    figure = saved["summary"]["figure"]
    assert set(figure["mse_x100"]) == {"Moving", "Step 1", "Step 2", "Step 3", "Composed", "Fixed"}
    assert saved["summary"]["magnitudes"] == [] and not (tmp_path / "study" / "dice_vs_magnitude.png").exists()
    assert "| ULAE-net |" in (tmp_path / "study" / "deformation_table.md").read_text()


def test_fig3_drawn_on_another_machine_from_the_kept_network(real_ulae_study):
    """The record folder keeps Fig. 3's network (ULAE-net's first seed): it rebuilds the trained network exactly, and
    the command on a new output folder draws the same figure from it without training."""
    from gsmorph_tf.train.runs import load_network_weights, load_run_for_inference

    tmp_path, _ = real_ulae_study
    kept = tmp_path / "record" / "disp2" / "ulae" / "seed3"
    assert sorted(os.listdir(kept)) == ["config.json", "network.weights.h5", "study_run.json"]
    config, network = load_network_weights(str(kept))
    _, trained = load_run_for_inference(str(tmp_path / "study" / "disp2" / "ulae" / "seed3"))
    assert (config.model, config.seed, config.ulae_moved) == ("ulae", 3, "warp3")
    pair = [np.random.default_rng(0).random((1, 16, 16, 16, 1), np.float32) for _ in range(2)]
    for a, b in zip(network(pair, training=False), trained(pair, training=False)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    command = [sys.executable, os.path.join(ROOT, "run_deformation_study.py"), "--data_dir=%s" % (tmp_path / "data"),
               "--output_dir=%s" % (tmp_path / "elsewhere"), "--record_dir=%s" % (tmp_path / "record"),
               "--methods=Initial,ULAE-net", "--seeds=3", "--epochs=1", "--magnitudes=", "--pairs_per_epoch=1",
               "--learning_rate=1e-4"] + [f for f in TINY_FLAGS if "pairs_per_epoch" not in f]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "training" not in done.stdout and "finished on another machine" in done.stdout
    figures = [json.loads((tmp_path / folder / "deformation_study.json").read_text())["summary"]["figure"]
               for folder in ("study", "elsewhere")]
    assert figures[1]["mse_x100"] == figures[0]["mse_x100"]
    assert (tmp_path / "elsewhere" / "ulae_steps.png").read_bytes()[:8] == PNG


#: Stands in for a Python with PyTorch: answers the harness's import probe and "trains" the reference by writing
#: zero fields (the identity) in reference_ulae_train.py's output format.
FAKE_REFERENCE_PYTHON = """#!{python}
import sys
import numpy as np
if sys.argv[1] == "-c":
    sys.exit(0)
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
with open(args["--out"] + ".calls", "a") as f:
    f.write(" ".join(sys.argv[2:]) + "\\n")
data = np.load(args["--data"])
epochs, steps = data["train_order"].shape[:2]
for epoch in range(epochs):
    print("epoch %d/%d" % (epoch + 1, epochs))
np.savez(args["--out"], test_flow=np.zeros(data["test_moving"].shape + (3,)),
         val_flow=np.zeros((epochs,) + data["val_moving"].shape + (3,)), sim_loss=np.full(epochs, -0.5),
         reg_loss=np.zeros(epochs), step_ms=np.full(epochs * steps, 1000.0), steps=np.array(epochs * steps),
         torch_version="2.fake", reference_commit="abc")
"""


def test_the_ulae_reference_comparison_on_the_studys_run(real_ulae_study):
    """benchmarks/reference_ulae_training.py on the study's real ULAE-net run, with a stand-in for the reference:
    the reference gets the port's volumes and its pair order, both sides are scored by one evaluator, and a second
    call reads everything back (the step timing is left out: it times the real network, too slow for the suite)."""
    from gsmorph_tf.data import streaming

    tmp_path, _ = real_ulae_study
    python = tmp_path / "fake_python"
    python.write_text(FAKE_REFERENCE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    reference_dir = tmp_path / "ULAE-net"
    (reference_dir / "ULAE").mkdir(parents=True)
    (reference_dir / "ULAE" / "ULAE.py").write_text("")
    study = tmp_path / "study"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "reference_ulae_training.py"), "--study_dir=%s" % study,
               "--reference_dir=%s" % reference_dir, "--reference_python=%s" % python, "--seeds=3", "--timing_steps=0"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "[1/1] ULAE-net, seed 3: the reference" in first.stdout and "reference: epoch 1/1" in first.stdout
    output = study / "reference"
    calls = (output / "seed3" / "reference.npz.calls").read_text()
    assert "--seed 3 --lr 0.0001" in calls
    config = TrainConfig.from_dict(json.loads((study / "study_config.json").read_text()))
    with np.load(output / "seed3" / "data.npz") as data:
        assert data["train_images"].shape == (2, 16, 16, 16) and data["test_moving"].shape == (2, 16, 16, 16)
        # the port's own order for seed 3: epoch_pairs of the two training images, one pair per step
        assert data["train_order"].tolist() == [[list(pair) for pair in streaming.epoch_pairs(2, 3, 0, None, 1)]]
        assert 0.0 <= data["train_images"].min() and data["train_images"].max() <= 1.0
    assert config.option("pairs_per_epoch") == 1
    saved = json.loads((output / "reference_comparison.json").read_text())
    port, reference = saved["port_runs"][0], saved["reference_runs"][0]
    initial = json.loads((study / "deformation_study.json").read_text())["runs"]["disp2"]["Initial"][0]
    # the reference's zero fields score as the identity; the port's trained run as itself, to Initial's order
    assert reference["test"]["dice_mean"]["mean"] == pytest.approx(initial["test"]["dice_mean"]["mean"], abs=1e-6)
    assert reference["test"]["njd"]["mean"] == 0.0 and reference["steps"] == 1 and reference["median_step_ms"] == 1000.0
    assert abs(port["test"]["dice_mean"]["mean"] - initial["test"]["dice_mean"]["mean"]) < 5.0
    assert len(port["validation_curve"]) == len(reference["validation_curve"]) == 1
    assert saved["timing"] is None   # --timing_steps=0 (the step timing builds and traces the real network: slow)
    table = (output / "reference_comparison.md").read_text()
    assert "| ULAE-net | reference |" in table and "Wilcoxon" in table and "Train step at" not in table
    assert (output / "reference_curves.png").read_bytes()[:8] == PNG
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "reference: epoch" not in again.stdout   # everything read back
    assert json.loads((output / "reference_comparison.json").read_text())["comparison"] == saved["comparison"]


def test_the_ulae_reference_comparison_refuses_another_objective(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    tiny_config(tmp_path, ncc="voxelmorph").save(str(study / "study_config.json"))
    (tmp_path / "ULAE-net" / "ULAE").mkdir(parents=True)
    (tmp_path / "ULAE-net" / "ULAE" / "ULAE.py").write_text("")
    python = tmp_path / "fake_python"
    python.write_text(FAKE_REFERENCE_PYTHON.format(python=sys.executable))
    python.chmod(0o755)
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "reference_ulae_training.py"), "--study_dir=%s" % study,
               "--reference_dir=%s" % (tmp_path / "ULAE-net"), "--reference_python=%s" % python]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "study_config.json: the study's ULAE-net objective is not the reference's" in done.stderr
    assert "ncc=voxelmorph (the reference: reference)" in done.stderr
    missing = subprocess.run(command[:2] + ["--study_dir=%s" % tmp_path] + command[3:], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and "no study_config.json; run run_deformation_study.py" in missing.stderr


def test_every_runs_own_validation_curve_gets_drawn(tmp_path):
    """The curves figure: a panel per learned row and level, a line per seed, no panel for untrained rows."""
    import matplotlib.image

    def runs(*curves):
        return [{"seed": seed, "validation_curve": list(curve)} for seed, curve in enumerate(curves)]
    panels = {"Initial, 5 voxels": [{"seed": None, "validation_curve": []}],
              "VoxelMorph (lam=1), 5 voxels": runs([40, 50, 52], [41, 49, 51, 52, 52]),
              "ULAE-net, 5 voxels": runs([45, 55], [44, 54, 57], [46, 53, 56, 57]),
              "ULAE-net, 2 voxels": runs([60, 62, 63]), "VoxelMorph x2 (lam=1), 2 voxels": runs([58, 61]),
              "ULAE-net, 7 voxels": runs([30, 40, 45])}
    path = tmp_path / "curves.png"
    drawn = seed_studies.plot_seed_curves(panels, str(path))
    assert drawn == list(panels)[1:]
    # 5 panels: 4 columns, 2 rows of 3.0 x 2.4 inches at 120 dpi
    assert matplotlib.image.imread(str(path)).shape[:2] == (2 * 288, 4 * 360)
    with pytest.raises(ValueError, match="no run has a validation curve"):
        seed_studies.plot_seed_curves({"SyN, 5 voxels": [{"seed": None, "validation_curve": []}]},
                                      str(tmp_path / "none.png"))
    assert not (tmp_path / "none.png").exists()


def test_the_steps_column_shows_the_spread_of_runs_that_stopped_on_their_plateaus():
    assert deformation_study._steps_cell((400, 400)) == "400"
    assert deformation_study._steps_cell((320, 560)) == "320-560"
    assert deformation_study._steps_cell((0, 0)) == "-"     # Initial, SyN


def test_instance_optimisation_of_the_studys_ulae_net_run(real_ulae_study, tmp_path):
    """benchmarks/instance_optimisation.py --methods=ulae on the study's real ULAE-net run (3D, one volume pair a
    step): N = 0 scores as the study scored the run, N = 2 refines every test pair; a study level without the run
    is refused, naming the folder."""
    study = real_ulae_study[0] / "study"
    results = tmp_path / "results.json"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "instance_optimisation.py"), "--methods=ulae",
               "--seeds=3", "--steps=0,2", "--learning_rates=1e-3", "--runs_dir=%s" % (study / "disp2"),
               "--results=%s" % results]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ulae seed 3, lr 0.001: 2 test subjects, 2 pairs" in done.stdout
    saved = json.loads(results.read_text())
    assert sorted(saved) == ["ulae/3/0/0.001", "ulae/3/2/0.001"]
    record = json.loads((study / "disp2" / "ulae" / "seed3" / "study_run.json").read_text())
    assert saved["ulae/3/0/0.001"]["dice_mean"] == pytest.approx(record["test"]["dice_mean"]["mean"], abs=1e-4)
    assert saved["ulae/3/2/0.001"]["pairs"] == 2 and "| ULAE-net | 0.001 | 2 | 3 |" in done.stdout
    elsewhere = ["--runs_dir=%s" % (study / "disp9"), "--results=%s" % (tmp_path / "other.json")]
    missing = subprocess.run(command[:-2] + elsewhere, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert missing.returncode != 0 and "disp9/ulae/seed3 holds no finished run" in missing.stderr


def test_the_inference_benchmark_times_the_studys_runs_again(real_ulae_study, tmp_path):
    """benchmarks/study_inference.py on the study's real ULAE-net run and SyN (its record stood in for): every test
    pair timed, the table and JSON written; a run without a checkpoint here (kept from another machine) listed as
    not timed; a missing SyN record or study folder is refused by name."""
    study = real_ulae_study[0] / "study"
    script = os.path.join(ROOT, "benchmarks", "study_inference.py")
    missing_syn = subprocess.run([sys.executable, script, "--study_dir=%s" % study], capture_output=True, text=True,
                                 timeout=300)
    assert missing_syn.returncode == 2
    assert "%s: no study_run.json; the study has not run SyN" % (study / "disp2" / "syn") in missing_syn.stderr
    (study / "disp2" / "syn").mkdir()
    (study / "disp2" / "syn" / "study_run.json").write_text("{}")
    kept_only = study / "disp2" / "ulae" / "seed4"       # a run read back from its record: no checkpoint here
    kept_only.mkdir()
    (kept_only / "study_run.json").write_text(json.dumps({"method": "ULAE-net", "seed": 4}))
    try:
        done = subprocess.run([sys.executable, script, "--study_dir=%s" % study, "--repeats=2"], capture_output=True,
                              text=True, timeout=300)
    finally:
        shutil.rmtree(kept_only)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[1/2] ULAE-net, seed 3" in done.stdout and "[2/2] SyN" in done.stdout
    assert "not timed: ULAE-net, seed 4 (%s): no checkpoint on this machine" % kept_only in done.stdout
    saved = json.loads((study / "inference_times.json").read_text())
    assert saved["level"] == 2.0 and saved["repeats"] == 2 and saved["test_pairs"] == 2
    assert saved["not_timed"] == [{"method": "ULAE-net", "seed": 4, "run": str(kept_only)}]
    ulae, syn = saved["methods"]["ULAE-net"], saved["methods"]["SyN"]
    assert [run["seed"] for run in ulae] == [3] and syn[0]["seed"] is None
    for run in ulae + syn:
        assert len(run["ms_per_pair"]) == 2 and min(run["ms_per_pair"]) > 0
        assert run["median_ms"] == pytest.approx(np.median(run["ms_per_pair"]))
    table = (study / "inference_times.md").read_text()
    assert "| ULAE-net | %.1f | seed 3: %.1f |" % (ulae[0]["median_ms"], ulae[0]["median_ms"]) in table
    assert "| SyN | %.1f | %.1f |" % (syn[0]["median_ms"], syn[0]["median_ms"]) in table
    assert "Not timed (no checkpoint on this machine; " in table and "): ULAE-net seed 4." in table
    nowhere = subprocess.run([sys.executable, script, "--study_dir=%s" % tmp_path], capture_output=True, text=True,
                             timeout=300)
    assert nowhere.returncode == 2 and "--study_dir=%s: no study_config.json" % tmp_path in nowhere.stderr
    empty = subprocess.run([sys.executable, script, "--study_dir=%s" % study, "--level=7"], capture_output=True,
                           text=True, timeout=300)
    assert empty.returncode == 2 and "%s holds no finished learned run" % (study / "disp7") in empty.stderr
