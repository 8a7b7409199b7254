"""How hard the synthetic phantom's ES->ED pairs are, scored with the methods that need no training.

Generates the phantom (ACDC layout) into ``--data_dir`` (or a temporary folder), loads it with the ACDC
loader (128x128 crops around the ED labels, as training does) and registers ALL subjects (train + val +
test) with the identity (``Initial``), Demons and SyN (:mod:`gsmorph_tf.evaluate.baselines`). Prints two tables:

- ``paper`` (the GSMorph paper's protocol, :mod:`gsmorph_tf.evaluate.evaluation`): per 2D slice pair, Dice of each
  structure present in the fixed or the moved labels, averaged over those structures; MSE of the pair; mean
  +- std over all slice pairs (slices without any structure are left out);
- ``volume``: each subject's slice stack scored as one volume; mean +- std over subjects.

The GSMorph paper reports on ACDC (per slice): Initial 61.8 % Dice, MSE 1.58 x1e-2; Demons 85.4 %; SyN 79.3 %.

Usage: ``python benchmarks/phantom_calibration.py [--phantom_subjects=16] [--phantom_slices=6]
[--phantom_size=192] [--seed=0] [--data_dir=DIR] [--output=calibration.md]``
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import pathlib
import tempfile
import time

from absl import app, flags

from gsmorph_tf.data.acdc import load_acdc
from gsmorph_tf.data.phantom import generate_phantom_dataset
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.evaluate.timing import machine_description
from gsmorph_tf.studies.paper_comparison import classical_predictor

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
#: The paper's protocol (a row per slice pair) first: the paper's ACDC figures are per slice.
PROTOCOLS = ("paper", "volume")


def cached(predict):
    """``predict`` run once per subject (keyed by its moving stack), so both protocols score one registration."""
    outputs = {}

    def run(moving, fixed):
        if id(moving) not in outputs:
            outputs[id(moving)] = predict(moving, fixed)
        return outputs[id(moving)]
    return run


def score(method, subjects):
    """``({protocol: metric rows}, seconds)`` for one method, by both protocols of gsmorph_tf.evaluate.evaluation."""
    start = time.perf_counter()
    if method == "Initial":
        rows = {protocol: evaluation.evaluate_identity(subjects, protocol) for protocol in PROTOCOLS}
    else:
        predict = cached(classical_predictor(_CLASSICAL[method]))
        rows = {protocol: evaluation.evaluate_predictor(predict, subjects, protocol=protocol) for protocol in PROTOCOLS}
    return rows, time.perf_counter() - start


def protocol_table(results, protocol):
    """Caption and Markdown table of one protocol (mean +- std over slice pairs or subjects)."""
    first = next(iter(results.values()))[0][protocol]
    return (evaluation.protocol_caption(protocol, first) + "\n\n"
            + evaluation.format_table({method: evaluation.summarize(rows[protocol])
                                       for method, (rows, _) in results.items()}))


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
        "The GSMorph paper on ACDC (per slice): Initial 61.8 % Dice, MSE 1.58 x1e-2; Demons 85.4 %; SyN 79.3 %.",
        "",
        protocol_table(results, "paper"),
        "",
        protocol_table(results, "volume"),
        "",
        "Registration time (both protocols score one registration): " + ", ".join(
            "%s %.1f s" % (method, seconds) for method, (_, seconds) in results.items() if method != "Initial"),
        "Machine: " + machine_description(),
    ])
    print(text)
    if FLAGS.output:
        pathlib.Path(FLAGS.output).write_text(text + "\n")


if __name__ == "__main__":
    app.run(main)
