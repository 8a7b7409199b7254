"""How often each crop rule keeps the whole heart in the crop: label-free localisation measured.

For every subject of an ACDC-layout dataset (by default the demo's phantom, generated into ``--data_dir`` or a
temporary folder), crops the ED/ES stacks as training does with each ``crop_center`` rule (``labels``: ED label
centroid, the paper protocol; ``motion``: maximum of the smoothed temporal std of the 4D cine; ``motion2``: the
same rule on the ES and ED frames alone, as ``run_register`` and the exported model do; ``image``: the image
centre) and prints, per rule, how many subjects keep >= 99 % of their ED label voxels inside the crop
(``crop_coverage``), and the mean and minimum coverage.

Usage: ``python benchmarks/crop_localisation.py [--data_dir=DIR] [--acdc_dir=/path/to/ACDC]
[--phantom_subjects=16] [--phantom_slices=6] [--phantom_size=192] [--crop_size=128]``
(``--acdc_dir``: any ACDC-layout data instead of the phantom).
"""
import pathlib
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # run from a source checkout

from gsmorph_tf.data.acdc import find_acdc_subjects, load_acdc_subject  # noqa: E402
from gsmorph_tf.data.phantom import generate_phantom_dataset  # noqa: E402
from gsmorph_tf.data.preprocessing import GOOD_CROP_COVERAGE  # noqa: E402
from gsmorph_tf.evaluate.timing import machine_description  # noqa: E402

flags.DEFINE_string("acdc_dir", "", "ACDC-layout data to measure instead of the phantom.")
flags.DEFINE_integer("phantom_subjects", 16, "Phantom: number of subjects.", lower_bound=3)
flags.DEFINE_integer("phantom_slices", 6, "Phantom: slices per subject.", lower_bound=1)
flags.DEFINE_integer("phantom_size", 192, "Phantom: in-plane size (pixels).", lower_bound=32)
flags.DEFINE_integer("crop_size", 128, "Square crop (pixels).", lower_bound=16)
flags.DEFINE_string("data_dir", "", "Folder to generate the phantom into (reused if it holds the same phantom); "
                    "empty: a temporary folder, removed afterwards.")
FLAGS = flags.FLAGS

RULES = ("labels", "motion", "motion2", "image")


def coverage_by_rule(folders, crop_size):
    """``{rule: [coverage per subject]}`` for :data:`RULES` (``motion2``: ``motion`` on ES and ED only)."""
    found = {rule: [] for rule in RULES}
    for folder in folders:
        for rule in RULES:
            if rule == "motion2":
                pairs = _two_frame_motion(folder, crop_size)
            else:
                pairs = load_acdc_subject(folder, (crop_size, crop_size), rule)
            found[rule].append(pairs.crop_coverage)
    return found


def _two_frame_motion(folder, crop_size):
    """The subject cropped on the motion between its ES and ED frames alone (its cine hidden)."""
    from gsmorph_tf.data import acdc, preprocessing

    info = acdc.read_info_cfg(folder / "Info.cfg")
    es_image, _, es_labels, _ = acdc._load_frame(folder, info["ES"])
    ed_image, zooms, ed_labels, _ = acdc._load_frame(folder, info["ED"])
    return preprocessing.make_pairs(folder.name, es_image, ed_image, es_labels, ed_labels, zooms,
                                    acdc.ACDC_LABELS, (crop_size, crop_size), "motion", cine=None)


def main(argv):
    del argv
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        if FLAGS.acdc_dir:
            root, what = FLAGS.acdc_dir, "ACDC-layout data in %s" % FLAGS.acdc_dir
        else:
            root = generate_phantom_dataset(FLAGS.data_dir or pathlib.Path(scratch) / "phantom",
                                            n_subjects=FLAGS.phantom_subjects, n_slices=FLAGS.phantom_slices,
                                            image_size=FLAGS.phantom_size, seed=0)
            what = "phantom (%d subjects, %d slices, %d px, seed 0)" % (FLAGS.phantom_subjects, FLAGS.phantom_slices,
                                                                        FLAGS.phantom_size)
        folders = find_acdc_subjects(root)
        found = coverage_by_rule(folders, FLAGS.crop_size)
    print("Crop coverage (fraction of ED label voxels inside the %dx%d crop), %s; %s; %.1f s\n"
          % (FLAGS.crop_size, FLAGS.crop_size, what, machine_description(), time.perf_counter() - start))
    print("| crop_center | subjects with coverage >= %.0f %% | mean coverage (%%) | min coverage (%%) |"
          % (100 * GOOD_CROP_COVERAGE))
    print("|---|---|---|---|")
    for rule, values in found.items():
        values = np.asarray(values)
        print("| %s | %d / %d | %.2f | %.2f |" % (rule, int((values >= GOOD_CROP_COVERAGE).sum()), len(values),
                                                  100 * values.mean(), 100 * values.min()))


if __name__ == "__main__":
    app.run(main)
