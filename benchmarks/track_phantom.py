"""Tracking through the phantom's cine: direct (every frame with ED) vs composed (frame to frame) fields.

Draws a fresh phantom (``--seed``, not the demo's training seed 0, same sizes as ``flags/demo.flags``), tracks every
subject's cine with both strategies of :mod:`gsmorph_tf.register.track` (``track_cine``, as ``run_track.py``), and
scores the propagated ED labels against the phantom's known labels in **every** frame (rendered at each frame's
contraction with :class:`gsmorph_tf.data.phantom.render.Renderer`; at ED and ES they are the files' labels, checked).
The ED labels copied unchanged into every frame are scored too. Scores are on the whole ``[X, Y, Z]`` volume
(:func:`gsmorph_tf.evaluate.metrics.dice_per_structure`, HD95 in mm with the header zooms), averaged over the non-ED
frames of all subjects, and at ES alone; the LV/RV EF error (propagated - manual, EF points, at the given ES frame)
and the seconds per registered frame. Prints a Markdown table and the machine.

Usage: ``python benchmarks/track_phantom.py --saved_model=runs/demo/export/gsmorph [--subjects=4] [--seed=1]``
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import os
import tempfile

import numpy as np
from absl import app, flags

flags.DEFINE_string("saved_model", None, "Exported model of a phantom run (runs/demo/export/<model>).")
flags.DEFINE_integer("subjects", 4, "Phantom subjects tracked.")
flags.DEFINE_integer("seed", 1, "Phantom seed (the demo trains on seed 0).")
flags.DEFINE_integer("slices", 6, "Slices per subject (the demo's --phantom_slices).")
flags.DEFINE_integer("size", 192, "Phantom in-plane size (the demo's default --phantom_size).")
flags.DEFINE_integer("frames", 10, "Frames per cycle (the phantom's default).")
flags.mark_flag_as_required("saved_model")
FLAGS = flags.FLAGS

STRUCTURES = ("LV", "Myo", "RV")


def true_labels(seed, index, n_subjects):
    """The phantom's labels of subject ``index`` at every frame: ``[X, Y, Z, T]`` uint8 (ACDC values)."""
    from gsmorph_tf.data.phantom.anatomy import draw_subject, subject_generators
    from gsmorph_tf.data.phantom.render import Renderer, contraction_curve

    subject = draw_subject(subject_generators(seed, n_subjects)[index], FLAGS.slices, FLAGS.size, FLAGS.frames)
    renderer = Renderer(subject)
    return np.stack([renderer.render(float(c), True)[1]
                     for c in contraction_curve(subject.n_frames, subject.es_index)], axis=-1)


def main(argv):
    del argv
    import nibabel as nib

    from gsmorph_tf.data.phantom import generate_phantom_dataset
    from gsmorph_tf.evaluate.metrics import dice_per_structure, hd95_per_structure
    from gsmorph_tf.evaluate.timing import machine_description
    from gsmorph_tf.register import RegistrationModel, track

    model = RegistrationModel(FLAGS.saved_model)
    work = tempfile.mkdtemp(prefix="track_phantom_")
    root = generate_phantom_dataset(os.path.join(work, "phantom"), n_subjects=FLAGS.subjects, n_slices=FLAGS.slices,
                                    image_size=FLAGS.size, n_frames=FLAGS.frames, seed=FLAGS.seed)
    scores = {strategy: {"all": [], "es": [], "ef_lv": [], "ef_rv": [], "seconds": []} for strategy in track.STRATEGIES}
    unregistered = {"all": [], "es": []}  # the ED labels copied into every frame: what tracking has to beat
    for index in range(FLAGS.subjects):
        cine = track.read_acdc_cine(root / "training" / ("patient%03d" % (index + 1)))
        truth = true_labels(FLAGS.seed, index, FLAGS.subjects)
        for frame, manual in ((cine.ed, cine.ed_labels), (cine.es, cine.es_labels)):
            assert np.array_equal(truth[..., frame], manual), "rendered labels differ from the files'"
        values = {name: cine.label_values[name] for name in STRUCTURES}
        for t in range(cine.frames.shape[3]):
            if t != cine.ed:
                row = {"dice": dice_per_structure(cine.ed_labels, truth[..., t], values),
                       "hd95": hd95_per_structure(cine.ed_labels, truth[..., t], values, cine.zooms)}
                unregistered["all"].append(row)
                if t == cine.es:
                    unregistered["es"].append(row)
        for strategy in track.STRATEGIES:
            paths, summary = track.track_cine(model, cine, os.path.join(work, strategy, cine.name), strategy)
            propagated = np.asanyarray(nib.load(paths["labels"]).dataobj)
            for t in range(cine.frames.shape[3]):
                if t == cine.ed:
                    continue
                row = {"dice": dice_per_structure(propagated[..., t], truth[..., t], values),
                       "hd95": hd95_per_structure(propagated[..., t], truth[..., t], values, cine.zooms)}
                scores[strategy]["all"].append(row)
                if t == cine.es:
                    scores[strategy]["es"].append(row)
            check = summary["es_check"]
            scores[strategy]["ef_lv"].append(check["EF_error_LV"])
            scores[strategy]["ef_rv"].append(check["EF_error_RV"])
            scores[strategy]["seconds"].append(summary["seconds_per_frame"])
            print("%s %s: %s" % (cine.name, strategy, track.format_report(summary).splitlines()[-2]))

    def cell(rows, metric, name):
        values = np.array([row[metric][name] for row in rows], float)
        return "%.3f" % np.nanmean(values) if metric == "dice" else "%.2f" % np.nanmean(values)

    header = ("| Strategy | Frames | " + " | ".join("Dice %s" % n for n in STRUCTURES) + " | "
              + " | ".join("HD95 %s (mm)" % n for n in STRUCTURES) + " |")
    print("\n" + header + "\n|" + "---|" * (2 + 2 * len(STRUCTURES)))
    for strategy, frames in [("none (ED labels copied)", unregistered)] + [(s, scores[s]) for s in track.STRATEGIES]:
        for which, label in (("all", "every non-ED frame"), ("es", "ES")):
            rows = frames[which]
            print("| %s | %s (%d) | %s | %s |" % (strategy, label, len(rows),
                                                 " | ".join(cell(rows, "dice", n) for n in STRUCTURES),
                                                 " | ".join(cell(rows, "hd95", n) for n in STRUCTURES)))
    print("\n| Strategy | EF error LV (points, mean abs; mean) | EF error RV (mean abs; mean) | s per frame |")
    print("|---|---|---|---|")
    for strategy in track.STRATEGIES:
        s = scores[strategy]
        print("| %s | %.1f; %+.1f | %.1f; %+.1f | %.2f |"
              % (strategy, np.mean(np.abs(s["ef_lv"])), np.mean(s["ef_lv"]), np.mean(np.abs(s["ef_rv"])),
                 np.mean(s["ef_rv"]), np.mean(s["seconds"])))
    print("\n%d phantom subjects (seed %d, %d slices, %d px, %d frames), model %s; %s"
          % (FLAGS.subjects, FLAGS.seed, FLAGS.slices, FLAGS.size, FLAGS.frames, model.path, machine_description()))


if __name__ == "__main__":
    app.run(main)
