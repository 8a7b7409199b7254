"""run_eval.py: reproduces a run's own test evaluation from its checkpoint and from its SavedModel."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import csv
import json
import os
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(phantom_run):
    return phantom_run


def run_eval(tmp, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_eval.py"), *args], cwd=tmp,
                          capture_output=True, text=True, timeout=600)


def test_checkpoint_and_savedmodel_reproduce_the_runs_evaluation(run):
    tmp, config, outcome = run
    expected = outcome["results"]["Model"]["summary"]
    for args, out in (([ "--run_dir=%s" % config.output_dir], os.path.join(config.output_dir, "eval_test")),
                      (["--saved_model=%s" % outcome["export_dir"], "--dataset=phantom",
                        "--data_dir=%s" % config.data_dir, "--crop_size=32", "--output_dir=%s" % (tmp / "sm")],
                       str(tmp / "sm"))):
        done = run_eval(tmp, *args)
        assert done.returncode == 0, done.stderr[-2000:]
        with open(os.path.join(out, "evaluation.json")) as f:
            report = json.load(f)
        methods = report["methods"]
        assert report["crop"]["rule"] == "labels" and report["crop"]["subjects"] == 1  # the run's crop rule
        assert list(methods)[0] == "Initial"
        summary = list(methods.values())[1]["summary"]
        for key in ("dice_mean", "dice_LV", "hd95_mean", "mse", "njd"):
            assert summary[key]["mean"] == pytest.approx(expected[key]["mean"], abs=1e-4), key
        with open(os.path.join(out, "per_subject.csv")) as f:
            rows = list(csv.DictReader(f))
        assert [r["method"] for r in rows][0] == "Initial" and len(rows) == 2  # 1 test subject x 2 methods
        assert "| Initial |" in open(os.path.join(out, "summary.md")).read()


def test_bad_sources_are_clear_errors(run):
    tmp, _, _ = run
    done = run_eval(tmp, "--run_dir=%s" % (tmp / "missing"))
    assert done.returncode == 2 and "config.json" in done.stderr and "Traceback" not in done.stderr
    done = run_eval(tmp, "--saved_model=%s" % (tmp / "nothing"), "--data_dir=x")
    assert done.returncode == 2 and "no SavedModel" in done.stderr
    done = run_eval(tmp)
    assert done.returncode != 0 and "Exactly one of (run_dir, saved_model)" in done.stderr


def test_learn2reg_metric_set_on_a_2d_dataset_is_a_clear_error(run):
    tmp, config, _ = run
    done = run_eval(tmp, "--run_dir=%s" % config.output_dir, "--metric_set=learn2reg")
    assert done.returncode == 2
    assert "--metric_set=learn2reg scores 3D volume pairs; dataset=phantom is 2D" in done.stderr
