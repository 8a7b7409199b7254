"""Train, evaluate and export a registration model: ``python run_train.py --flagfile=flags/acdc.flags``.

The only place that reads flags: they become a :class:`gsmorph_tf.config.TrainConfig` once, and the run is
:func:`gsmorph_tf.training.train_and_evaluate`. Re-running the same command after an interruption resumes
from the last completed epoch.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)


from absl import app, flags

from gsmorph_tf.cli import fail, quiet_logs

from gsmorph_tf.config import DATASETS, MODELS, SIMILARITY_CHOICES, ConfigError, TrainConfig
from gsmorph_tf.data.nifti import DatasetError
from gsmorph_tf.losses import REG_PENALTIES
from gsmorph_tf.surgery import GROUPINGS, SURGERY_MODES

_DEFAULTS = TrainConfig()

flags.DEFINE_enum("dataset", _DEFAULTS.dataset, DATASETS,
                  "Data: 'acdc' reads the ACDC layout under --data_dir, 'mnms' the M&Ms layout (with its CSV); "
                  "'phantom' generates a synthetic cine-MRI phantom in the ACDC layout into --data_dir on first "
                  "use, then reads it; 'brain' makes 3D pairs from the MNI152 template nilearn ships, with known "
                  "deformations (pip install \"gsmorph-tf[brain]\").")
flags.DEFINE_string("data_dir", None, "Dataset root (for phantom: where it is generated and cached).")
flags.DEFINE_string("output_dir", _DEFAULTS.output_dir, "Run directory: TensorBoard, checkpoints, evaluation, "
                    "SavedModel. Re-run with the same settings to resume.")
flags.DEFINE_enum("model", _DEFAULTS.model, MODELS, "Registration network: gsmorph (the paper's U-Net), "
                  "hypermorph (baseline) or ulae (ULAE-net: uncoupled encoder, 3 accumulative warping steps).")
flags.DEFINE_enum("surgery", _DEFAULTS.surgery, SURGERY_MODES,
                  "How the similarity and smoothness gradients are combined: layerwise = GSMorph; none = "
                  "weighted sum with --lam (VoxelMorph); pcgrad = GS-PCGrad; agr_rand/agr_sum = GS-Agr.")
flags.DEFINE_enum("grouping", _DEFAULTS.grouping, GROUPINGS,
                  "Surgery groups: each trainable tensor (variable, the paper's code) or each Keras layer.")
flags.DEFINE_float("lam", _DEFAULTS.lam, "Smoothness weight for --surgery=none (paper: 0.1/0.01/0.001).",
                   lower_bound=0.0)
flags.DEFINE_enum("similarity", _DEFAULTS.similarity, SIMILARITY_CHOICES,
                  "Image similarity loss: mse, ncc (window --ncc_window) or multi_ncc (ULAE's "
                  "-sum_i gamma^(i-1) NCC_{w_i} over --ncc_windows with --ncc_gamma).")
flags.DEFINE_integer("ncc_window", _DEFAULTS.ncc_window, "NCC window side (pixels).", lower_bound=1)
flags.DEFINE_list("ncc_windows", [str(w) for w in _DEFAULTS.ncc_windows], "multi_ncc window sides, largest first.")
flags.DEFINE_float("ncc_gamma", _DEFAULTS.ncc_gamma, "multi_ncc weight decay between windows.", lower_bound=0.0)
flags.DEFINE_enum("reg_penalty", _DEFAULTS.reg_penalty, REG_PENALTIES, "Spatial-gradient penalty on the flow.")
flags.DEFINE_integer("int_steps", _DEFAULTS.int_steps,
                     "0: displacement field; >0: diffeomorphic (scaling and squaring steps).", lower_bound=0)
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Slice pairs per step.", lower_bound=1)
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Training epochs (total, counting resumed ones).", lower_bound=1)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for the subject split, shuffling, initialisation and noise.")
flags.DEFINE_integer("crop_size", _DEFAULTS.crop_size, "Square crop around the heart (pixels, multiple of 16).",
                     lower_bound=16)
flags.DEFINE_boolean("conflict_diagnostics", _DEFAULTS.conflict_diagnostics,
                     "With --surgery=none, also compute the two gradients separately to log their conflict "
                     "(one extra backward pass); other modes always log it.")
flags.DEFINE_integer("log_every_n_steps", _DEFAULTS.log_every_n_steps,
                     "Write per-step TensorBoard summaries every N steps.", lower_bound=1)
flags.DEFINE_integer("phantom_subjects", _DEFAULTS.phantom_subjects, "Phantom: number of subjects.", lower_bound=3)
flags.DEFINE_integer("phantom_slices", _DEFAULTS.phantom_slices, "Phantom: short-axis slices per subject.",
                     lower_bound=1)
flags.DEFINE_integer("phantom_size", _DEFAULTS.phantom_size, "Phantom: in-plane size (pixels).", lower_bound=32)
flags.DEFINE_integer("brain_pairs", _DEFAULTS.brain_pairs, "Brain: number of synthetic pairs.", lower_bound=3)
flags.DEFINE_list("brain_shape", [str(s) for s in _DEFAULTS.brain_shape], "Brain: volume shape D,H,W (voxels).")
flags.DEFINE_float("brain_max_displacement", _DEFAULTS.brain_max_displacement,
                   "Brain: largest displacement of the random deformations (voxels).", lower_bound=0.0)

FLAGS = flags.FLAGS


def config_from_flags():
    """The run's settings, read from the parsed flags once."""
    values = {name: getattr(FLAGS, name) for name in TrainConfig.__dataclass_fields__
              if FLAGS[name].value is not None}
    try:
        for name in ("ncc_windows", "brain_shape"):
            values[name] = tuple(int(v) for v in values[name])
    except ValueError:
        raise ConfigError("--ncc_windows and --brain_shape take comma-separated integers") from None
    return TrainConfig(**values)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    from gsmorph_tf.training import train_and_evaluate  # after flag parsing: --help stays fast

    quiet_logs(FLAGS["verbosity"].present)

    try:
        config = config_from_flags().validate()
        outcome = train_and_evaluate(config)
    except (ConfigError, DatasetError, FileExistsError) as error:
        return fail(error)
    print("\nTest split (mean +- std over %d subjects):\n" % len(outcome["results"]["Model"]["subjects"]))
    print(outcome["table"])
    print("\nOutputs in %s:" % config.output_dir)
    print("  evaluation: %s (and evaluation.md)" % outcome["evaluation_json"])
    print("  SavedModel: %s" % outcome["export_dir"])
    print("  TensorBoard: tensorboard --logdir %s" % outcome["tensorboard_dir"])
    return 0


def run():
    """Console-script entry point (``gsmorph-train``)."""
    app.run(main)


if __name__ == "__main__":
    run()
