"""Register NIfTI images with an exported SavedModel.

One pair::

    python run_register.py --saved_model=models/gsmorph/1 --moving=patient001_ES.nii.gz \\
        --fixed=patient001_ED.nii.gz [--moving_labels=patient001_ES_gt.nii.gz] [--center=92,100 | --crop_center=image] \\
        [--itk_transform] --output_dir=registered

A folder of pairs, matched by file name (every pair is validated before the first registration)::

    python run_register.py --saved_model=models/gsmorph --moving_dir=ES --fixed_dir=ED \\
        [--moving_labels_dir=ES_gt] --output_dir=registered

A Learn2Reg submission: every pair of a task's registration_val (or registration_test) list, one
``disp_<fixed>_<moving>.nii.gz`` per pair, checked, in ``<output_dir>/displacements/`` and ``submission.zip``
(see :mod:`gsmorph_tf.register.learn2reg`)::

    python run_register.py --saved_model=models/gsmorph_learn2reg --learn2reg_dir=OASIS \\
        [--learn2reg_pairs=registration_test] [--intensity_norm=max] --output_dir=submission

A moving image (and its labels) on another grid than the fixed image is resampled into the fixed image's
space by their affines first (one printed line says so); outputs are on the fixed grid. Preprocessing, outputs
(moved image; the displacement in voxels, in mm along the voxel axes, and as an ITK/ANTs/3D Slicer field in
LPS mm, ``<stem>_flow_itk.nii.gz``; with ``--itk_transform`` an ITK transform file ``<stem>_transform.h5``;
warped labels) and their layout are described in :mod:`gsmorph_tf.register`. The only place that reads these
flags. Errors print one ``error: ...`` line naming the file and exit with status 2, with nothing written.

``--instance_steps=N`` (every mode) refines a copy of the network on each pair for N steps of the run's own
training step before registering it (:mod:`gsmorph_tf.train.instance`); the network is rebuilt from the export's
provenance and variables (:func:`gsmorph_tf.train.runs.load_export_for_training`).
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)


from absl import app, flags

from gsmorph_tf.cli import define_instance_flags, fail, quiet_logs, run_app

flags.DEFINE_string("saved_model", None, "SavedModel version folder (<base>/<model>/<N>) or a model base path "
                    "(its highest version is used).")
flags.DEFINE_string("moving", None, "Moving NIfTI image (X x Y x Z); on another grid than --fixed it is resampled "
                    "into the fixed image's space by the affines first.")
flags.DEFINE_string("fixed", None, "Fixed NIfTI image: outputs are on its grid.")
flags.DEFINE_string("moving_labels", None, "Optional label map of the moving image (on its grid), warped "
                    "nearest-neighbour.")
flags.DEFINE_string("moving_dir", None, "Folder mode: folder of moving images.")
flags.DEFINE_string("fixed_dir", None, "Folder mode: folder of fixed images with the same file names.")
flags.DEFINE_string("moving_labels_dir", None, "Folder mode: optional folder of moving label maps, same names.")
flags.DEFINE_string("learn2reg_dir", None, "Learn2Reg mode: task root (<NAME>_dataset.json, imagesTr/, ...); "
                    "writes a submission of --learn2reg_pairs to --output_dir.")
flags.DEFINE_enum("learn2reg_pairs", None, ["registration_val", "registration_test"], "Learn2Reg mode: the pair "
                  "list to register (default registration_val).")
flags.DEFINE_enum("intensity_norm", None, ["max", "percentile"], "Learn2Reg mode: the intensity scaling the model "
                  "was trained with, only for exports that do not record it (a learn2reg run's export does).")
flags.DEFINE_string("output_dir", None, "Where the outputs are written (created if needed).")
flags.DEFINE_string("center", None, "Crop centre in voxels: r,c (2D models: array axes 0 and 1, every slice) "
                    "or r,c,s (3D models); default: placed by --crop_center.")
flags.DEFINE_enum("crop_center", None, ["motion", "image"], "Where the crop goes without --center: motion = maximum "
                  "of the smoothed motion between moving and fixed (label-free, as the exported serving_default); "
                  "image = the image centre. Default: motion for 2D models, image for 3D models.")
flags.DEFINE_boolean("itk_transform", False, "Also write <stem>_transform.h5, the field as an ITK "
                     "DisplacementFieldTransform (SimpleITK: sitk.ReadTransform; needs the baselines extra). "
                     "<stem>_flow_itk.nii.gz, the same field for ANTs / ITK / 3D Slicer, is always written.")
for _name in define_instance_flags():
    flags.declare_key_flag(_name)  # listed by --help with the flags above

flags.mark_flags_as_required(["saved_model", "output_dir"])
flags.mark_flags_as_mutual_exclusive(["moving", "moving_dir", "learn2reg_dir"], required=True)
flags.mark_flags_as_mutual_exclusive(["fixed", "fixed_dir", "learn2reg_dir"], required=True)
flags.mark_flags_as_mutual_exclusive(["moving_labels", "moving_dir"])
flags.mark_flags_as_mutual_exclusive(["center", "crop_center"])
flags.mark_flags_as_mutual_exclusive(["moving_labels_dir", "moving"])
flags.register_multi_flags_validator(
    ["moving", "fixed"], lambda values: (values["moving"] is None) == (values["fixed"] is None),
    "one pair needs both --moving and --fixed")
flags.register_multi_flags_validator(
    ["moving_dir", "fixed_dir"], lambda values: (values["moving_dir"] is None) == (values["fixed_dir"] is None),
    "folder mode needs both --moving_dir and --fixed_dir")
_LEARN2REG_ONLY = ["learn2reg_pairs", "intensity_norm"]
_NOT_LEARN2REG = ["moving_labels", "moving_labels_dir", "center", "crop_center"]
flags.register_multi_flags_validator(
    ["learn2reg_dir", *_LEARN2REG_ONLY, *_NOT_LEARN2REG],
    lambda values: (all(values[name] is None for name in _LEARN2REG_ONLY) if values["learn2reg_dir"] is None
                    else all(values[name] is None for name in _NOT_LEARN2REG)),
    "--learn2reg_pairs and --intensity_norm go with --learn2reg_dir, which takes no --moving_labels(_dir), "
    "--center or --crop_center (the model's own window is used)")
flags.register_multi_flags_validator(
    ["learn2reg_dir", "itk_transform"], lambda values: values["learn2reg_dir"] is None or not values["itk_transform"],
    "--itk_transform goes with --moving or --moving_dir: a Learn2Reg submission holds only disp_*.nii.gz files")

FLAGS = flags.FLAGS


def parse_center(text):
    """``"92,100"`` -> ``(92.0, 100.0)``; None stays None. Raises ValueError for anything else."""
    if text is None:
        return None
    return tuple(float(part) for part in text.split(","))


def _parses_as_center(text):
    try:
        parse_center(text)
    except ValueError:
        return False
    return True


flags.register_validator("center", _parses_as_center,
                         "--center takes comma-separated voxel coordinates r,c or r,c,s")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    if FLAGS.learn2reg_dir is not None:
        return learn2reg_submission()
    mode = "folder" if FLAGS.moving_dir is not None else "pair"  # the validators above allow one of the three
    center = parse_center(FLAGS.center)
    from gsmorph_tf.errors import DatasetError
    from gsmorph_tf.register import SavedModelError, load_registration_model, register_files, register_folder
    from gsmorph_tf.serve.provenance import format_provenance

    quiet_logs(FLAGS["verbosity"].present)
    try:
        model = load_registration_model(FLAGS.saved_model, FLAGS.instance_steps, FLAGS.instance_learning_rate)
        print(format_provenance(model.provenance))
        if mode == "pair":
            written = [register_files(model, FLAGS.moving, FLAGS.fixed, FLAGS.output_dir, FLAGS.moving_labels,
                                      center, FLAGS.crop_center, FLAGS.itk_transform)]
        else:
            written = register_folder(model, FLAGS.moving_dir, FLAGS.fixed_dir, FLAGS.output_dir,
                                      FLAGS.moving_labels_dir, center, show_progress=True,
                                      crop_center=FLAGS.crop_center, itk_transform=FLAGS.itk_transform)
    except (DatasetError, SavedModelError) as error:
        return fail(error)
    rule = "--center" if center else FLAGS.crop_center or ("motion" if model.ndim == 2 else "image")
    print("Registered %d pair(s) with %s (%dD model, input %s, crop placed by %s); outputs in %s:"
          % (len(written), model.path, model.ndim, "x".join(map(str, model.inshape)), rule, FLAGS.output_dir))
    for paths in written:
        for path in paths.values():
            print("  %s" % path)
    return 0


def learn2reg_submission():
    """The Learn2Reg mode: the task is read and checked (every listed file's header) before TensorFlow and the
    model load."""
    from gsmorph_tf.data.learn2reg import read_task
    from gsmorph_tf.errors import DatasetError, SavedModelError

    pair_list = FLAGS.learn2reg_pairs or "registration_val"
    try:
        task = read_task(FLAGS.learn2reg_dir)
        from gsmorph_tf.register import load_registration_model
        from gsmorph_tf.register.learn2reg import (check_model, resolve_intensity_norm, submission_pairs,
                                                   window_note, write_submission)
        from gsmorph_tf.serve.provenance import format_provenance

        pairs = submission_pairs(task, pair_list)
        quiet_logs(FLAGS["verbosity"].present)
        model = load_registration_model(FLAGS.saved_model, FLAGS.instance_steps, FLAGS.instance_learning_rate)
        print(format_provenance(model.provenance))
        check_model(model)
        intensity_norm = resolve_intensity_norm(model, FLAGS.intensity_norm)
        print("Learn2Reg %s: %d pair(s) of %s, intensity_norm=%s (%s)"
              % (task.name, len(pairs), pair_list, intensity_norm,
                 "--intensity_norm" if FLAGS.intensity_norm else "the model's provenance"))
        note = window_note(model, task.shape)
        if note:
            print(note)
        submission = write_submission(model, task, pairs, FLAGS.output_dir, intensity_norm, show_progress=True)
    except (DatasetError, SavedModelError) as error:
        return fail(error)
    print("Wrote %d displacement file(s) for %d pair(s) to %s and %s (disp_FFFF_MMMM for _0000/_0001 pairs, both "
          "disp_FFFF_MMMM and disp_FFFF_ffff_MMMM_mmmm for same-modality pairs, the long form otherwise: the "
          "names both versions of the official evaluation find)"
          % (len(submission.names), len(pairs), submission.folder, submission.zip_path))
    return 0


def run():
    """Console-script entry point (``gsmorph-register``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
