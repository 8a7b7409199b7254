"""Export a training run's last checkpoint as a SavedModel for TF Serving.

    python run_export.py --run_dir=runs/demo --export_base=models

writes ``models/<model_name>/<version>/`` (``saved_model.pb`` + ``variables/``; signatures
``serving_default`` (raw input), ``register_crop`` and ``warp``, see :mod:`gsmorph_tf.serve.export`; the provenance
asset ``assets/provenance.json``, printed, and TF Serving's warm-up file) through a temp folder and a rename. An
existing version is never overwritten. The only place that reads these flags; the work is
:func:`gsmorph_tf.serve.export.export_run`.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

from absl import app, flags

from gsmorph_tf.cli import fail, quiet_logs, run_app

flags.DEFINE_string("run_dir", None, "output_dir of a run_train.py run (holds config.json and checkpoints/).")
flags.DEFINE_string("export_base", None, "Folder of TF Serving base paths: the model goes to "
                    "<export_base>/<model_name>/<version>/.")
flags.DEFINE_string("model_name", None, "TF Serving model name (a folder name); default: <model>_<dataset> of the "
                    "run, e.g. gsmorph_acdc.")
flags.DEFINE_integer("version", None, "Integer version to write; default: the next after the highest existing "
                     "one (1 for a new model). An existing version is never overwritten.", lower_bound=0)

flags.mark_flags_as_required(["run_dir", "export_base"])

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    from gsmorph_tf.errors import ConfigError
    from gsmorph_tf.serve.export import export_run  # after flag parsing: --help stays fast
    from gsmorph_tf.serve.provenance import format_provenance, read_provenance

    quiet_logs(FLAGS["verbosity"].present)
    try:
        path = export_run(FLAGS.run_dir, FLAGS.export_base, model_name=FLAGS.model_name, version=FLAGS.version)
    except (ConfigError, FileNotFoundError, FileExistsError) as error:
        return fail(error)
    print("SavedModel: %s" % path)
    print(format_provenance(read_provenance(path)))
    print("  inspect: saved_model_cli show --all --dir %s" % path)
    return 0


def run():
    """Console-script entry point (``gsmorph-export``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
