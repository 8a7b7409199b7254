"""Run Learn2Reg's own evaluation code on a tiny task and keep its numbers, for
``tests/evaluate/test_learn2reg_metrics.py``.

    python benchmarks/learn2reg_official_scores.py --l2r_dir=/work/ref/L2R --reference_python=/work/envs/l2r/bin/python

Writes ``benchmarks/learn2reg_case.py``'s task and submission to a temporary folder, runs
``<l2r_dir>/evaluation/evaluation.py`` (MDL-UzL/L2R, its command line, unchanged) on it under
``--reference_python`` (a separate Python with their pinned requirements: numpy 1.23.3, scipy 1.9.1, nibabel
4.0.2, evalutils 0.3.1 and their vendored surface-distance), once with ``masked_evaluation`` off and once on, and
writes both result JSONs (as their code wrote them: NaN and Infinity included), the L2R commit and the commands
to ``tests/data/learn2reg_official_scores.json``. It also writes the surface-distance package's 256 surface-element
areas at unit spacing (their ``create_table_neighbour_code_to_surface_area(np.ones(3))``) to
``gsmorph_tf/evaluate/learn2reg_surfel_areas.json``, the table our HD95 weights its surface elements by, and their
HD95 (``compute_robust_hausdorff(compute_surface_distances(a, b, np.ones(3)), 95)``, the call Learn2Reg's
``utils.compute_hd95`` makes) of ``learn2reg_case.random_mask_pairs()``, irregular masks whose surfaces hold
most neighbourhood codes.
"""
import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import learn2reg_case  # noqa: E402  (this folder, for the shared case)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
flags.DEFINE_string("l2r_dir", "/work/ref/L2R", "A checkout of github.com/MDL-UzL/L2R (its evaluation/ is run).")
flags.DEFINE_string("reference_python", "/work/envs/l2r/bin/python", "Python with Learn2Reg's evaluation "
                    "requirements (evaluation/requirements.txt) and its surface-distance installed.")
flags.DEFINE_string("output", os.path.join(REPO, "tests", "data", "learn2reg_official_scores.json"),
                    "Where their scores go.")
flags.DEFINE_string("table_output", os.path.join(REPO, "gsmorph_tf", "evaluate", "learn2reg_surfel_areas.json"),
                    "Where the surface-element area table goes.")
FLAGS = flags.FLAGS

_AREAS_PROBE = ("import json, numpy as np; from surface_distance import lookup_tables as t; "
                "print(json.dumps([float(a) for a in t.create_table_neighbour_code_to_surface_area(np.ones(3))]))")


_HD95_PROBE = ("import json, sys, numpy as np; from surface_distance import compute_surface_distances as d, "
               "compute_robust_hausdorff as h; m = np.load(sys.argv[1]); "
               "print(json.dumps([float(h(d(a, b, np.ones(3)), 95.)) for a, b in zip(m['a'], m['b'])]))")


def _atomic_json(path, data):
    from gsmorph_tf.fileio import atomic_write_text
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def main(argv):
    del argv
    script = learn2reg_case.evaluation_script(FLAGS.l2r_dir)
    commit = learn2reg_case.run_command(["git", "-C", FLAGS.l2r_dir, "rev-parse", "HEAD"]).strip()
    versions = json.loads(learn2reg_case.run_command([
        FLAGS.reference_python, "-c", "import json, numpy, scipy, nibabel; print(json.dumps("
                                "{'numpy': numpy.__version__, 'scipy': scipy.__version__, "
                                "'nibabel': nibabel.__version__}))"]))
    areas = json.loads(learn2reg_case.run_command([FLAGS.reference_python, "-c", _AREAS_PROBE]))
    results, commands = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        task_dir, submission_dir = os.path.join(tmp, "TOY"), os.path.join(tmp, "submission")
        config = learn2reg_case.write_task(learn2reg_case.make_case(), task_dir, submission_dir)
        masks_path = os.path.join(tmp, "masks.npz")
        masks_a, masks_b = learn2reg_case.random_mask_pairs()
        with open(masks_path, "wb") as f:
            np.savez(f, a=masks_a, b=masks_b)
        random_hd95 = json.loads(learn2reg_case.run_command([FLAGS.reference_python, "-c", _HD95_PROBE,
                                                             masks_path]))
        for key, masked in (("unmasked", False), ("masked", True)):
            results[key] = learn2reg_case.run_reference(FLAGS.reference_python, script, config, masked, submission_dir, task_dir,
                                         tmp, key, commands)
    _atomic_json(FLAGS.output, {"l2r_commit": commit, "reference_versions": versions, "commands": commands,
                                "results": results, "random_mask_pairs_hd95": random_hd95})
    _atomic_json(FLAGS.table_output, {
        "what": "surface area inside each 2x2x2 neighbourhood code (voxel faces, unit spacing)",
        "source": "google-deepmind/surface-distance (Apache-2.0) as vendored by MDL-UzL/L2R %s: "
                  "lookup_tables.create_table_neighbour_code_to_surface_area(np.ones(3))" % commit,
        "written_by": "benchmarks/learn2reg_official_scores.py", "areas": areas})
    for key, result in results.items():
        print("%s: %s" % (key, json.dumps(result["aggregates"])))
    print("Wrote %s and %s (L2R %s)" % (FLAGS.output, FLAGS.table_output, commit))


if __name__ == "__main__":
    app.run(main)
