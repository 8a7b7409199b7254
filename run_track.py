"""Track motion through a whole 4-D cine with an exported registration model: the ED labels carried into every frame,
per-frame LV / Myo / RV volumes, EDV, ESV, EF and myocardial mass.

An ACDC patient folder (``patientNNN_4d.nii.gz``, ``Info.cfg``, the ED and ES ``_frameXX_gt.nii.gz``)::

    python run_track.py --saved_model=models/gsmorph/1 --acdc_patient=ACDC/training/patient001 --output_dir=tracked

An M&Ms subject (``<CODE>_sa.nii.gz``, ``<CODE>_sa_gt.nii.gz``; ED/ES from the CSV, 0-based)::

    python run_track.py --saved_model=models/gsmorph/1 --mnms_subject=MnM/Training/Labeled/A0S9V9 \\
        --mnms_csv=MnM/211230_M&Ms_Dataset_information_diagnosis_opendataset.csv --output_dir=tracked

Any 4-D NIfTI cine, frames 0-based::

    python run_track.py --saved_model=models/gsmorph/1 --cine=cine.nii.gz --ed_frame=0 [--ed_labels=ed_gt.nii.gz] \\
        [--es_frame=9 --es_labels=es_gt.nii.gz] [--label_convention=acdc|mnms] --output_dir=tracked

``--instance_steps=N`` refines a copy of the network on each frame pair for N steps of the run's own training step
before registering it (:mod:`gsmorph_tf.train.instance`, as ``run_register.py``).

Outputs, the field convention and the two strategies (``--strategy=direct|composed``) are described in
:mod:`gsmorph_tf.register.track`. Every input is checked before the model loads; errors print one ``error: ...``
line naming the file or value and exit with status 2, with nothing written. The only place that reads these flags.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

from absl import app, flags

from gsmorph_tf.cli import define_instance_flags, fail, quiet_logs, run_app

flags.DEFINE_string("saved_model", None, "SavedModel version folder (<base>/<model>/<N>) or a model base path "
                    "(its highest version is used).")
flags.DEFINE_string("acdc_patient", None, "ACDC patientNNN folder: patientNNN_4d.nii.gz, Info.cfg (ED/ES, 1-based) "
                    "and the ED and ES patientNNN_frameXX_gt.nii.gz.")
flags.DEFINE_string("mnms_subject", None, "M&Ms <CODE> folder: <CODE>_sa.nii.gz and <CODE>_sa_gt.nii.gz (with "
                    "--mnms_csv).")
flags.DEFINE_string("mnms_csv", None, "M&Ms information CSV giving the subject's ED and ES frames (0-based).")
flags.DEFINE_string("cine", None, "Any 4-D NIfTI cine [X, Y, Z, T] (with --ed_frame).")
flags.DEFINE_integer("ed_frame", None, "--cine: the ED frame, 0-based.")
flags.DEFINE_string("ed_labels", None, "--cine: label map [X, Y, Z] of the ED frame on the frames' grid; without "
                    "it only the fields are written.")
flags.DEFINE_integer("es_frame", None, "--cine: the ES frame, 0-based (optional).")
flags.DEFINE_string("es_labels", None, "--cine: label map of the ES frame (needs --es_frame): the ES check.")
flags.DEFINE_enum("label_convention", "acdc", ["acdc", "mnms"], "--cine: what the label values mean: acdc = 1 RV, "
                  "2 Myo, 3 LV; mnms = 1 LV, 2 Myo, 3 RV.")
flags.DEFINE_enum("strategy", None, ["direct", "composed"], "direct = every frame registered with the ED frame; "
                  "composed = consecutive frames registered and the fields composed from ED along the cycle. "
                  "Default: the one measured better on the phantom (README).")
flags.DEFINE_string("output_dir", None, "Where the outputs are written (created if needed).")

flags.mark_flags_as_required(["saved_model", "output_dir"])
flags.mark_flags_as_mutual_exclusive(["acdc_patient", "mnms_subject", "cine"], required=True)
_CINE_ONLY = ["ed_frame", "ed_labels", "es_frame", "es_labels"]
flags.register_multi_flags_validator(
    ["cine", *_CINE_ONLY], lambda values: (values["cine"] is None) == all(values[name] is None for name in _CINE_ONLY)
    and (values["cine"] is None or values["ed_frame"] is not None),
    "--cine needs --ed_frame; --ed_frame, --ed_labels, --es_frame and --es_labels go with --cine only")
flags.register_multi_flags_validator(
    ["mnms_subject", "mnms_csv"], lambda values: (values["mnms_subject"] is None) == (values["mnms_csv"] is None),
    "--mnms_subject needs --mnms_csv (and --mnms_csv goes with --mnms_subject)")
flags.register_multi_flags_validator(
    ["es_labels", "es_frame"], lambda values: values["es_labels"] is None or values["es_frame"] is not None,
    "--es_labels needs --es_frame, the frame they annotate")

for _name in define_instance_flags():
    flags.declare_key_flag(_name)  # listed by --help with the flags above

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    if FLAGS["label_convention"].present and FLAGS.cine is None:
        return fail("--label_convention goes with --cine (ACDC and M&Ms have their own conventions)")
    from gsmorph_tf.errors import DatasetError, SavedModelError
    from gsmorph_tf.register import track

    quiet_logs(FLAGS["verbosity"].present)
    try:
        if FLAGS.acdc_patient is not None:
            cine = track.read_acdc_cine(FLAGS.acdc_patient)
        elif FLAGS.mnms_subject is not None:
            cine = track.read_mnms_cine(FLAGS.mnms_subject, FLAGS.mnms_csv)
        else:
            cine = track.read_cine(FLAGS.cine, FLAGS.ed_frame, FLAGS.ed_labels, FLAGS.es_frame, FLAGS.es_labels,
                                   FLAGS.label_convention)
        from gsmorph_tf.register import load_registration_model
        from gsmorph_tf.serve.provenance import format_provenance

        model = load_registration_model(FLAGS.saved_model, FLAGS.instance_steps, FLAGS.instance_learning_rate)
        print(format_provenance(model.provenance))
        strategy = FLAGS.strategy or track.DEFAULT_STRATEGY
        print("%s: %d frames of %s, ED frame %d%s (0-based); %s strategy"
              % (cine.path, cine.frames.shape[3], "x".join(map(str, cine.frames.shape[:3])), cine.ed,
                 "" if cine.es is None else ", ES frame %d" % cine.es, strategy))
        paths, summary = track.track_cine(model, cine, FLAGS.output_dir, strategy, show_progress=True)
    except (DatasetError, SavedModelError) as error:
        return fail(error)
    print(track.format_report(summary))
    print("Outputs in %s:" % FLAGS.output_dir)
    for path in paths.values():
        print("  %s" % path)
    return 0


def run():
    """Console-script entry point (``gsmorph-track``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
