"""A submission written by ``run_register.py --learn2reg_dir`` scored by Learn2Reg's own evaluation code and by ours.

    python benchmarks/learn2reg_submission_check.py --saved_model=models/<3D model> [--intensity_norm=max] \\
        --l2r_dir=/work/ref/L2R --reference_python=/work/envs/l2r/bin/python

Writes ``benchmarks/learn2reg_case.py``'s tiny task (three pairs at 24 x 20 x 16 voxels, labels 1-3, masks,
keypoints) with a Learn2Reg dataset JSON listing its pairs as ``registration_val``, runs ``run_register.py
--learn2reg_dir`` on it with ``--saved_model`` (any exported 3D model: the check is of the files and the scoring,
not of the model's accuracy), unpacks the ``submission.zip`` it wrote, and runs MDL-UzL/L2R's
``evaluation/evaluation.py`` (unchanged, under ``--reference_python``, a Python with their pinned requirements)
on it, without and with ``masked_evaluation``. Their evaluation refuses a submission with a missing file or a
wrong shape, so a result means the submission passed its checks. Then it scores the same files with
:func:`gsmorph_tf.evaluate.learn2reg_metrics.pair_scores` and :func:`~gsmorph_tf.evaluate.learn2reg_metrics.aggregate`
and prints, per pair and metric, both values and their largest difference; ``--output`` keeps everything as JSON.
"""
import json
import os
import subprocess
import sys
import tempfile
import zipfile

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import learn2reg_case  # noqa: E402  (this folder: the task)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("saved_model", None, "An exported 3D registration model (version folder or base path).")
flags.DEFINE_enum("intensity_norm", "max", ["max", "percentile"], "Scaling of each volume, passed to run_register "
                  "(the toy task's images are in [0, 1] already).")
flags.DEFINE_string("l2r_dir", "/work/ref/L2R", "A checkout of github.com/MDL-UzL/L2R (its evaluation/ is run).")
flags.DEFINE_string("reference_python", "/work/envs/l2r/bin/python", "Python with Learn2Reg's evaluation "
                    "requirements (evaluation/requirements.txt) and its surface-distance installed.")
flags.DEFINE_string("output", None, "Optional JSON file for both sides' scores.")
flags.mark_flag_as_required("saved_model")
FLAGS = flags.FLAGS

def main(argv):
    del argv
    script = learn2reg_case.evaluation_script(FLAGS.l2r_dir)
    case = learn2reg_case.make_case()
    report = {"saved_model": FLAGS.saved_model, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        task_dir = os.path.join(tmp, learn2reg_case.TASK)
        config = learn2reg_case.write_task(case, task_dir, os.path.join(tmp, "case_fields"))
        learn2reg_case.write_dataset_json(task_dir)
        command = [sys.executable, os.path.join(REPO, "run_register.py"), "--saved_model=%s" % FLAGS.saved_model,
                   "--learn2reg_dir=%s" % task_dir, "--intensity_norm=%s" % FLAGS.intensity_norm,
                   "--output_dir=%s" % os.path.join(tmp, "out")]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError("run_register failed (exit %d):\n%s" % (done.returncode, done.stderr[-3000:]))
        submission_dir = os.path.join(tmp, "submission")
        with zipfile.ZipFile(os.path.join(tmp, "out", "submission.zip")) as archive:
            archive.extractall(submission_dir)
        report["files"] = sorted(os.listdir(submission_dir))
        print("run_register wrote %s" % ", ".join(report["files"]))
        for key, masked in (("unmasked", False), ("masked", True)):
            theirs = learn2reg_case.run_reference(FLAGS.reference_python, script, config, masked, submission_dir,
                                                  task_dir, tmp, key)
            ours = learn2reg_case.our_scores(case, submission_dir, masked)
            difference = learn2reg_case.largest_difference(ours, theirs)
            report["results"][key] = {"theirs": theirs, "ours": ours, "largest_difference": difference}
            print("%s evaluation: the official code found and scored %d pairs; largest difference to ours %.3g"
                  % (key, len(theirs["cases"]), difference))
            for name in learn2reg_case.NAMES:
                print("  %-12s theirs mean %-10.6g ours mean %.6g" % (name, theirs["aggregates"][name]["mean"],
                                                                      ours["aggregates"][name]["mean"]))
    if FLAGS.output:
        from gsmorph_tf.evaluate.evaluation import write_json
        write_json(FLAGS.output, report)
        print("Wrote %s" % FLAGS.output)


if __name__ == "__main__":
    app.run(main)
