"""benchmarks/gpu_session.py, the one script a lent GPU runs, in its --quick mode on this CPU: the environment, the
float32 step measurements (mixed precision named as not measurable without a GPU), the study part, its time limit
and records archive, a second call that measures nothing twice, and the refusal to run without --quick and a GPU."""
import json
import os
import subprocess
import sys
import tarfile

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_session.py")


def session(tmp_path, *flags):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")   # no GPU, whatever the test machine has
    return subprocess.run([sys.executable, SCRIPT, "--output_dir=%s" % (tmp_path / "out"),
                           "--work_dir=%s" % (tmp_path / "work")] + list(flags),
                          capture_output=True, text=True, timeout=600, env=env)


def test_the_quick_session_measures_studies_and_resumes(tmp_path):
    done = session(tmp_path, "--quick")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "gpu_session.json").read_text())
    assert saved["quick"] is True and saved["environment"]["gpus"] == []
    assert "CPU cores" in saved["environment"]["machine"]
    steps = saved["steps"]
    assert list(steps) == ["ulae_float32", "gsmorph3d_float32", "ulae_mixed", "gsmorph3d_mixed"]
    ulae, gsmorph3d = steps["ulae_float32"][0], steps["gsmorph3d_float32"][0]
    assert (ulae["network"], ulae["surgery"], ulae["parameters"], ulae["shape"]) == ("ulae", "none", 1_109_241,
                                                                                    [16, 16, 16])
    assert (gsmorph3d["network"], gsmorph3d["surgery"], gsmorph3d["mixed_precision"]) == ("gsmorph", "layerwise",
                                                                                          False)
    for row in (ulae, gsmorph3d):
        assert row["train_step_ms"] > 0 and row["peak_mb"] > 0 and row["memory_kind"] == "process peak RSS"
    for key in ("ulae_mixed", "gsmorph3d_mixed"):
        assert "no float16 MaxPool3D" in steps[key][0]["not_measured"]
    study = saved["study"]
    assert (study["stopped_at_time_limit"], study["exit"]) == (False, 0)
    assert study["finished_runs"] == ["disp2/initial/study_run.json"]
    with tarfile.open(tmp_path / "out" / "study_records.tar.gz") as tar:
        assert "records/disp2/initial/study_run.json" in tar.getnames()
    assert sorted(os.listdir(tmp_path / "out")) == ["gpu_session.json", "study_records.tar.gz"]

    # a second call: the measured steps are kept, the study is stopped at its limit and keeps its finished runs
    again = session(tmp_path, "--quick", "--study_minutes=0.02")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ulae_float32 measured in an earlier call" in again.stdout
    assert "the study ran its 0.02 minutes; stopping it" in again.stdout
    resumed = json.loads((tmp_path / "out" / "gpu_session.json").read_text())
    assert resumed["steps"]["ulae_float32"] == steps["ulae_float32"]
    assert resumed["study"]["stopped_at_time_limit"] is True
    assert resumed["study"]["finished_runs"] == ["disp2/initial/study_run.json"]


def test_without_quick_a_machine_without_gpu_is_refused_before_any_work(tmp_path):
    done = session(tmp_path, "--study_flagfile=deformation_study_64.flags")
    assert done.returncode == 2
    assert "sees no GPU on this machine" in done.stderr and "--quick runs its parts without one" in done.stderr
    assert not (tmp_path / "work").exists()
    missing = session(tmp_path, "--quick", "--study_flagfile=nope.flags")
    assert missing.returncode == 2 and "--study_flagfile: Unable to open flagfile nope.flags" in missing.stderr
