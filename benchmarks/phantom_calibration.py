"""How hard the synthetic phantom's ES->ED pairs are, scored with the methods that need no training.

Generates the phantom (ACDC layout) into ``--data_dir`` (or a temporary folder), loads it with the ACDC
loader (128x128 crops around the ED labels, as training does) and registers ALL subjects (train + val +
test) with the identity (``Initial``), Demons and SyN (:mod:`gsmorph_tf.baselines`). Prints two tables:

- **per slice** (the GSMorph paper's protocol): on each 2D slice pair, Dice of each structure present in the
  fixed or the moved labels, averaged over those structures; MSE of the pair; mean +- std over all slice
  pairs (slices without any structure are skipped);
- **per subject** (:func:`gsmorph_tf.evaluation.subject_metrics`, the project's tables): each subject's
  slice stack scored as one volume; mean +- std over subjects.

The GSMorph paper reports on ACDC (per slice): Initial 61.8 % Dice, MSE 1.58 x1e-2; Demons 85.4 %; SyN 79.3 %.

Usage: ``python benchmarks/phantom_calibration.py [--phantom_subjects=16] [--phantom_slices=6]
[--phantom_size=192] [--seed=0] [--data_dir=DIR] [--output=calibration.md]``
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import pathlib
import tempfile
import time

import numpy as np
from absl import app, flags

from gsmorph_tf import evaluation, metrics
from gsmorph_tf.benchmark import classical_predictor, machine_description
from gsmorph_tf.data.acdc import load_acdc
from gsmorph_tf.data.pairs import reporting_order
from gsmorph_tf.data.phantom import generate_phantom_dataset

flags.DEFINE_integer("phantom_subjects", 16, "Phantom: number of subjects.", lower_bound=3)
flags.DEFINE_integer("phantom_slices", 6, "Phantom: slices per subject.", lower_bound=1)
flags.DEFINE_integer("phantom_size", 192, "Phantom: in-plane size (pixels).", lower_bound=32)
flags.DEFINE_integer("phantom_frames", 10, "Phantom: frames per cardiac cycle.", lower_bound=2)
flags.DEFINE_integer("seed", 0, "Phantom seed (training and the benchmark use 0).", lower_bound=0)
flags.DEFINE_integer("crop_size", 128, "Square crop around the heart (pixels).")
flags.DEFINE_string("data_dir", "", "Folder to generate the phantom into (reused if it holds the same phantom); "
                    "empty: a temporary folder, removed afterwards.")
flags.DEFINE_list("methods", ["Initial", "Demons", "SyN"], "Rows: Initial, Demons, SyN.")
flags.DEFINE_string("output", "", "Also write the tables (markdown) to this file.")
FLAGS = flags.FLAGS

_CLASSICAL = {"Demons": "demons", "SyN": "syn"}


def per_slice_scores(pairs, moved, moved_labels):
    """The paper's per-slice protocol for one subject: one dict per slice pair with ``dice`` (% mean over the
    structures present in either label map, NaN if none), ``dice_<structure>`` (%, NaN if absent) and
    ``mse`` (of [0, 1] intensities)."""
    names = reporting_order(pairs.label_values)
    rows = []
    for k in range(len(pairs.fixed)):
        dice = {name: 100.0 * metrics.dice(moved_labels[k], pairs.fixed_labels[k], pairs.label_values[name])
                for name in names}
        present = [value for value in dice.values() if not np.isnan(value)]
        rows.append({"dice": float(np.mean(present)) if present else float("nan"),
                     **{"dice_" + name: value for name, value in dice.items()},
                     "mse": metrics.mse(moved[k], pairs.fixed[k])})
    return rows


def score(method, subjects):
    """Both protocols for one method: (per-subject rows, per-slice rows, seconds)."""
    outputs = []
    if method == "Initial":
        start = time.perf_counter()
        subject_rows = evaluation.evaluate_identity(subjects)
        outputs = [(p.moving, p.moving_labels) for p in subjects]
    else:
        register = classical_predictor(_CLASSICAL[method])

        def recording(moving, fixed):
            moved, flow = register(moving, fixed)
            outputs.append((moved, flow))
            return moved, flow

        start = time.perf_counter()
        subject_rows = evaluation.evaluate_predictor(recording, subjects)
        outputs = [(moved, evaluation.warp_labels(pairs.moving_labels, flow))
                   for pairs, (moved, flow) in zip(subjects, outputs)]
    seconds = time.perf_counter() - start
    slice_rows = [row for p, (moved, labels) in zip(subjects, outputs) for row in per_slice_scores(p, moved, labels)]
    return subject_rows, slice_rows, seconds


def slice_table(results):
    """Markdown table of the per-slice protocol: mean +- std over slice pairs."""
    columns = [("dice", "Dice (%)"), ("dice_LV", "Dice LV (%)"), ("dice_Myo", "Dice Myo (%)"),
               ("dice_RV", "Dice RV (%)"), ("mse_x100", "MSE (x1e-2)")]
    lines = ["| Method | " + " | ".join(header for _, header in columns) + " | slice pairs |",
             "|---|" + "---|" * (len(columns) + 1)]
    for method, (_, rows, _) in results.items():
        cells = []
        for key, _ in columns:
            values = [100.0 * row["mse"] for row in rows] if key == "mse_x100" else [row[key] for row in rows]
            cells.append("%.2f +- %.2f" % metrics.mean_std(values))
        counted = sum(not np.isnan(row["dice"]) for row in rows)
        lines.append("| %s | %s | %d |" % (method, " | ".join(cells), counted))
    return "\n".join(lines)


def main(argv):
    del argv
    for method in FLAGS.methods:
        if method != "Initial" and method not in _CLASSICAL:
            raise app.UsageError("--methods: unknown method %r; expected Initial, Demons or SyN" % method)
    with tempfile.TemporaryDirectory(prefix="phantom_calibration_") as scratch:
        root = pathlib.Path(FLAGS.data_dir or pathlib.Path(scratch) / "phantom")
        start = time.perf_counter()
        generate_phantom_dataset(root, n_subjects=FLAGS.phantom_subjects, n_slices=FLAGS.phantom_slices,
                                 image_size=FLAGS.phantom_size, n_frames=FLAGS.phantom_frames, seed=FLAGS.seed)
        generation = time.perf_counter() - start
        splits = load_acdc(root, crop_size=(FLAGS.crop_size, FLAGS.crop_size))
    subjects = sorted(splits["train"] + splits["val"] + splits["test"], key=lambda p: p.subject)

    results = {method: score(method, subjects) for method in FLAGS.methods}
    n_pairs = sum(len(p.fixed) for p in subjects)
    text = "\n".join([
        "Phantom: %d subjects x %d slices, image_size %d, %d frames, seed %d, %dx%d crops; all %d subjects, %d "
        "slice pairs. Phantom ready in %.1f s (generation, or the check of an existing one)."
        % (FLAGS.phantom_subjects, FLAGS.phantom_slices, FLAGS.phantom_size, FLAGS.phantom_frames, FLAGS.seed,
           FLAGS.crop_size, FLAGS.crop_size, len(subjects), n_pairs, generation),
        "",
        "(b) Per slice pair (the GSMorph paper's protocol; ACDC in the paper: Initial 61.8 % Dice, MSE 1.58; "
        "Demons 85.4 %; SyN 79.3 %):",
        "",
        slice_table(results),
        "",
        "(a) Per subject (gsmorph_tf.evaluation.subject_metrics: each slice stack scored as one volume):",
        "",
        evaluation.format_table({method: evaluation.summarize(rows) for method, (rows, _, _) in results.items()}),
        "",
        "Registration time: " + ", ".join("%s %.1f s" % (method, seconds) for method, (_, _, seconds)
                                          in results.items() if method != "Initial"),
        "Machine: " + machine_description(),
    ])
    print(text)
    if FLAGS.output:
        pathlib.Path(FLAGS.output).write_text(text + "\n")


if __name__ == "__main__":
    app.run(main)
