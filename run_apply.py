"""Apply a displacement field written by run_register.py to other images or label maps on the fixed grid.

One file::

    python run_apply.py --field=registered/patient001_ES_flow_vox.nii.gz --image=patient001_ES_gt.nii.gz \\
        --kind=labels [--label_interpolation=onehot|nearest] --output=patient001_ES_gt_on_ED.nii.gz

Several files of one kind, each written as ``<output_dir>/<stem>_warped.nii.gz``::

    python run_apply.py --field=registered/patient001_ES_flow_vox.nii.gz --image=a.nii.gz --image=b.nii.gz \\
        --kind=image --output_dir=warped

``--kind`` says whether the inputs are images (linear interpolation, float32 output) or label maps (one-hot
linear by default, or nearest; written in the label file's type); it is never guessed. Conventions and the
out-of-volume rule are in :mod:`gsmorph_tf.register.apply`. The only place that reads these flags. Errors print
one ``error: ...`` line naming the file and exit with status 2, with nothing written.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

from absl import app, flags

from gsmorph_tf.cli import fail, quiet_logs, run_app

flags.DEFINE_string("field", None, "Displacement field [X, Y, Z, 3] in voxels: run_register.py's "
                    "<stem>_flow_vox.nii.gz (moved(x) = moving(x + u(x)) on the fixed grid).")
flags.DEFINE_multi_string("image", None, "NIfTI image or label map [X, Y, Z] on the field's grid (same shape and "
                          "affine), all of one --kind")
flags.DEFINE_enum("kind", None, ["image", "labels"], "What the inputs are: image = linear interpolation, float32 "
                  "output; labels = integer label maps, warped by --label_interpolation.")
flags.DEFINE_enum("label_interpolation", "onehot", ["onehot", "nearest"], "Label maps: onehot = each label's "
                  "one-hot channel warped linearly, then the largest (ties: the lowest value); nearest = nearest "
                  "neighbour (run_register.py's moved labels).")
flags.DEFINE_string("output", None, "Output NIfTI file (.nii.gz or .nii), with a single --image; replaced if it "
                    "exists.")
flags.DEFINE_string("output_dir", None, "Output folder: each input is written as <stem>_warped.nii.gz (replaced if "
                    "it exists).")

flags.mark_flags_as_required(["field", "image", "kind"])
flags.mark_flags_as_mutual_exclusive(["output", "output_dir"], required=True)
flags.register_multi_flags_validator(
    ["output", "image"], lambda values: values["output"] is None or len(values["image"] or []) <= 1,
    "--output names one file: give a single --image, or --output_dir for several")

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    if FLAGS.kind == "image" and FLAGS["label_interpolation"].present:
        return fail("--label_interpolation applies to label maps (--kind=labels); images are warped linearly")
    from gsmorph_tf.errors import DatasetError
    from gsmorph_tf.register.apply import apply_field, warped_path

    quiet_logs(FLAGS["verbosity"].present)
    outputs = ([FLAGS.output] if FLAGS.output is not None
               else [warped_path(FLAGS.output_dir, path) for path in FLAGS.image])
    try:
        written = apply_field(FLAGS.field, FLAGS.image, outputs, FLAGS.kind, FLAGS.label_interpolation)
    except DatasetError as error:
        return fail(error)
    rule = "linear" if FLAGS.kind == "image" else {"onehot": "one-hot linear",
                                                   "nearest": "nearest neighbour"}[FLAGS.label_interpolation]
    print("Warped %d %s file(s) by %s (%s):" % (len(written), FLAGS.kind, FLAGS.field, rule))
    for source, path in zip(FLAGS.image, written):
        print("  %s -> %s" % (source, path))
    return 0


def run():
    """Console-script entry point (``gsmorph-apply``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
