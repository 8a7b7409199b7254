"""run_train.py as users call it: bad flags fail before anything is written; errors are one clear line."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(tmp_path, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_train.py"), *args,
                           "--output_dir=%s" % (tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--flagfile=%s" % os.path.join(ROOT, "flags", "demo.flags"), "--no_such_flag=1"], "no_such_flag"),
    (["--dataset=acdc", "--data_dir=x", "--surgery=gradnorm"], "surgery"),
    (["--dataset=acdc", "--data_dir=x", "--crop_size=40"], "multiple of 16"),
    (["--dataset=acdc", "--data_dir=x", "--ncc=ulae"], "--ncc=ulae: value should be one of <voxelmorph|reference>"),
    (["--dataset=acdc", "--data_dir=x", "--profile_batch=12,10"], "--profile_batch takes one training step or a "
                                                                   "range first,last of steps"),
])
def test_bad_flags_fail_before_anything_is_written(tmp_path, args, message):
    done = run_train(tmp_path, *args)
    assert done.returncode != 0
    assert message in done.stderr
    assert not os.path.exists(tmp_path / "run")


def test_missing_dataset_is_one_clear_error(tmp_path):
    done = run_train(tmp_path, "--dataset=acdc", "--data_dir=%s" % (tmp_path / "ACDC"))
    assert done.returncode == 2
    assert "error:" in done.stderr and str(tmp_path / "ACDC") in done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "run")
