"""Register NIfTI images with an exported SavedModel.

One pair::

    python run_register.py --saved_model=models/gsmorph/1 --moving=patient001_ES.nii.gz \\
        --fixed=patient001_ED.nii.gz [--moving_labels=patient001_ES_gt.nii.gz] [--center=92,100] \\
        --output_dir=registered

A folder of pairs, matched by file name (every pair is validated before the first registration)::

    python run_register.py --saved_model=models/gsmorph --moving_dir=ES --fixed_dir=ED \\
        [--moving_labels_dir=ES_gt] --output_dir=registered

Preprocessing, outputs (moved image, displacement in voxels and mm, warped labels) and their layout are
described in :mod:`gsmorph_tf.register`. The only place that reads these flags. Errors print one
``error: ...`` line naming the file and exit with status 2, with nothing written.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)


from absl import app, flags

from gsmorph_tf.cli import fail, quiet_logs

flags.DEFINE_string("saved_model", None, "SavedModel version folder (<base>/<model>/<N>) or a model base path "
                    "(its highest version is used).")
flags.DEFINE_string("moving", None, "Moving NIfTI image (X x Y x Z).")
flags.DEFINE_string("fixed", None, "Fixed NIfTI image, same shape and voxel size: outputs are on its grid.")
flags.DEFINE_string("moving_labels", None, "Optional label map of the moving image, warped nearest-neighbour.")
flags.DEFINE_string("moving_dir", None, "Folder mode: folder of moving images.")
flags.DEFINE_string("fixed_dir", None, "Folder mode: folder of fixed images with the same file names.")
flags.DEFINE_string("moving_labels_dir", None, "Folder mode: optional folder of moving label maps, same names.")
flags.DEFINE_string("output_dir", None, "Where the outputs are written (created if needed).")
flags.DEFINE_string("center", None, "Crop centre in voxels: r,c (2D models: array axes 0 and 1, every slice) "
                    "or r,c,s (3D models); default: the image centre.")

FLAGS = flags.FLAGS


def parse_center(text):
    """``"92,100"`` -> ``(92.0, 100.0)``; None stays None. Raises ValueError naming the flag value."""
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError("--center=%s: expected comma-separated voxel coordinates r,c or r,c,s" % text) from None


def check_mode():
    """``"pair"`` or ``"folder"`` from the flags given; raises ValueError for a missing or mixed set."""
    pair = [name for name in ("moving", "fixed", "moving_labels") if FLAGS[name].value is not None]
    folder = [name for name in ("moving_dir", "fixed_dir", "moving_labels_dir") if FLAGS[name].value is not None]
    for name in ("saved_model", "output_dir"):
        if not FLAGS[name].value:
            raise ValueError("--%s is required" % name)
    if pair and folder:
        raise ValueError("give either --moving/--fixed or --moving_dir/--fixed_dir, not both")
    if folder:
        if FLAGS.moving_dir is None or FLAGS.fixed_dir is None:
            raise ValueError("folder mode needs both --moving_dir and --fixed_dir")
        return "folder"
    if FLAGS.moving is None or FLAGS.fixed is None:
        raise ValueError("give --moving and --fixed (one pair) or --moving_dir and --fixed_dir (a folder)")
    return "pair"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    try:
        mode = check_mode()
        center = parse_center(FLAGS.center)
    except ValueError as error:
        return fail(error)
    from gsmorph_tf.data.nifti import DatasetError
    from gsmorph_tf.register import RegistrationModel, SavedModelError, register_files, register_folder

    quiet_logs(FLAGS["verbosity"].present)
    try:
        model = RegistrationModel(FLAGS.saved_model)
        if mode == "pair":
            written = [register_files(model, FLAGS.moving, FLAGS.fixed, FLAGS.output_dir, FLAGS.moving_labels,
                                      center)]
        else:
            written = register_folder(model, FLAGS.moving_dir, FLAGS.fixed_dir, FLAGS.output_dir,
                                      FLAGS.moving_labels_dir, center, show_progress=True)
    except (DatasetError, SavedModelError) as error:
        return fail(error)
    print("Registered %d pair(s) with %s (%dD model, input %s); outputs in %s:"
          % (len(written), model.path, model.ndim, "x".join(map(str, model.inshape)), FLAGS.output_dir))
    for paths in written:
        for path in paths.values():
            print("  %s" % path)
    return 0


def run():
    """Console-script entry point (``gsmorph-register``)."""
    app.run(main)


if __name__ == "__main__":
    run()
