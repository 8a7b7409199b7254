"""Train, evaluate and export a registration model: ``python run_train.py --flagfile=flags/acdc.flags``.

The only place that reads flags: they become a :class:`gsmorph_tf.config.TrainConfig` once, and the run is
:func:`gsmorph_tf.train.training.train_and_evaluate`. Re-running the same command after an interruption resumes
from the last completed epoch.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

from absl import app, flags

from gsmorph_tf.cli import dataset_options_from_flags, define_dataset_options, fail, quiet_logs, run_app
from gsmorph_tf.config import (CROP_CENTERS, GROUPINGS, METRIC_PROTOCOLS, NCC_FORMULAS, REG_PENALTIES, STRATEGIES,
                               SURGERY_MODES, ULAE_INITS, ULAE_MOVED, WARP_PADDINGS, TrainConfig,
                               check_profile_batch)
from gsmorph_tf.errors import ConfigError, DatasetError
from gsmorph_tf.registry import DATASETS, MODELS, SIMILARITIES

_DEFAULTS = TrainConfig()


def _choices(registry):
    return "; ".join("%s = %s" % (entry.name, entry.help) for entry in registry)


flags.DEFINE_enum("dataset", _DEFAULTS.dataset, DATASETS.names(), "Data: " + _choices(DATASETS) + ".")
flags.DEFINE_string("data_dir", None, "Dataset root (for phantom: where it is generated and cached).")
flags.DEFINE_string("output_dir", _DEFAULTS.output_dir, "Run directory: TensorBoard, checkpoints, evaluation, "
                    "SavedModel. Re-run with the same settings to resume.")
flags.DEFINE_enum("model", _DEFAULTS.model, MODELS.names(), "Registration network: " + _choices(MODELS) + ".")
flags.DEFINE_enum("surgery", _DEFAULTS.surgery, SURGERY_MODES,
                  "How the similarity and smoothness gradients are combined: layerwise = GSMorph; none = "
                  "weighted sum with --lam (VoxelMorph); pcgrad = GS-PCGrad; agr_rand/agr_sum = GS-Agr.")
flags.DEFINE_enum("grouping", _DEFAULTS.grouping, GROUPINGS,
                  "Surgery groups: each trainable tensor (variable, the paper's code) or each Keras layer.")
flags.DEFINE_float("lam", _DEFAULTS.lam, "Smoothness weight for --surgery=none (paper: 0.1/0.01/0.001).",
                   lower_bound=0.0)
flags.DEFINE_enum("similarity", _DEFAULTS.similarity, SIMILARITIES.names(),
                  "Image similarity loss: " + _choices(SIMILARITIES) + ".")
flags.DEFINE_integer("ncc_window", _DEFAULTS.ncc_window, "NCC window side (pixels).", lower_bound=1)
flags.DEFINE_list("ncc_windows", [str(w) for w in _DEFAULTS.ncc_windows], "multi_ncc window sides, largest first.")
flags.DEFINE_float("ncc_gamma", _DEFAULTS.ncc_gamma, "multi_ncc weight decay between windows.", lower_bound=0.0)
flags.DEFINE_enum("ncc", _DEFAULTS.ncc, NCC_FORMULAS, "Local NCC formula of ncc and multi_ncc: voxelmorph = "
                  "voxelmorph 0.2's NCC, covariance and variances clamped at 1e-5 (flat windows score 1, "
                  "anti-correlated ones pass no gradient); reference = the ULAE-net code's cross^2 / (I_var J_var + "
                  "1e-5), no clamps (flat windows score 0, anti-correlated ones as high as correlated ones).")
flags.DEFINE_enum("reg_penalty", _DEFAULTS.reg_penalty, REG_PENALTIES,
                  "Spatial-gradient penalty on the flow: l1 = mean |forward difference| averaged over the axes (the "
                  "GSMorph reference's Grad(), the scale of its lambdas), l2 = mean squared forward difference.")
flags.DEFINE_integer("int_steps", _DEFAULTS.int_steps,
                     "0: displacement field; >0: diffeomorphic (scaling and squaring steps).", lower_bound=0)
flags.DEFINE_integer("unet_width", _DEFAULTS.unet_width, "--model=gsmorph: multiply the U-Net's feature widths "
                     "(16..256) by this (2 = VoxelMorph x2, ULAE-net's wider baseline).", lower_bound=1)
flags.DEFINE_enum("warp_padding", _DEFAULTS.warp_padding, WARP_PADDINGS,
                  "--model=gsmorph or ulae: what the warps (and ULAE's composition) read outside the volume: border = "
                  "the nearest border voxel (voxelmorph's, our default); zeros = 0 (PyTorch grid_sample's, the "
                  "reference codes').")
flags.DEFINE_enum("ulae_moved", _DEFAULTS.ulae_moved, ULAE_MOVED,
                  "--model=ulae: the image the similarity scores: warp3 = the moving image resampled by the three "
                  "steps in sequence (the reference's objective); composed = warped once by the composed field (ours).")
flags.DEFINE_enum("ulae_init", _DEFAULTS.ulae_init, ULAE_INITS,
                  "--model=ulae: initialisation of the convolutions (flow heads: N(0, 1e-5)): pytorch = PyTorch's "
                  "defaults (the reference's); keras = Keras' defaults (ours).")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Adam learning rate.", lower_bound=0.0)
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Slice pairs per step.", lower_bound=1)
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Training epochs (total, counting resumed ones).", lower_bound=1)
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for the subject split, shuffling, initialisation and noise "
                     "(the GSMorph reference uses 3407).")
flags.DEFINE_integer("split_seed", None, "Seed of the subject split only (default: --seed); fix it to compare "
                     "seeds on the same test subjects.")
flags.DEFINE_boolean("drop_last", _DEFAULTS.drop_last, "Drop each epoch's last partial batch (the reference's "
                     "drop_last=True).")
flags.DEFINE_enum("metric_protocol", _DEFAULTS.metric_protocol, METRIC_PROTOCOLS,
                  "Evaluation: volume = a row per subject (stack as one volume, NJD det <= 0); paper = a row per 2D "
                  "slice pair as the GSMorph reference code (NJD det < 0).")
flags.DEFINE_integer("crop_size", _DEFAULTS.crop_size, "Square crop around the heart (pixels, multiple of 16).",
                     lower_bound=16)
flags.DEFINE_enum("crop_center", _DEFAULTS.crop_center, CROP_CENTERS,
                  "Where the crop is centred: labels = centroid of the ED labels (the paper protocol); motion = "
                  "maximum of the smoothed temporal std of the cine (label-free, as run_register and the exported "
                  "model do); image = the image centre.")
flags.DEFINE_boolean("conflict_diagnostics", _DEFAULTS.conflict_diagnostics,
                     "With --surgery=none, also compute the two gradients separately to log their conflict "
                     "(one extra backward pass); other modes always log it.")
flags.DEFINE_integer("early_stopping_patience", _DEFAULTS.early_stopping_patience,
                     "Stop once validation Dice has not improved by more than --early_stopping_min_delta for this many "
                     "epochs in a row (--epochs is then the most it trains; needs a validation split). 0: train every "
                     "epoch.", lower_bound=0)
flags.DEFINE_float("early_stopping_min_delta", _DEFAULTS.early_stopping_min_delta,
                   "Validation Dice points an epoch must gain over the best so far to count as an improvement.",
                   lower_bound=0.0)
flags.DEFINE_integer("log_every_n_steps", _DEFAULTS.log_every_n_steps,
                     "Write per-step TensorBoard summaries every N steps.", lower_bound=1)
flags.DEFINE_list("profile_batch", None, "Training steps TensorBoard's profiler traces: 'first,last' (1-based, e.g. "
                  "10,12) or one step; the trace is in the TensorBoard Profile tab (tensorboard-plugin-profile).")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy, STRATEGIES,
                  "Devices: default = one device; mirrored = every GPU of this machine (or --cpu_replicas logical "
                  "CPUs); multi_worker = the machines in the TF_CONFIG environment variable (start the same command "
                  "on each). --batch_size is the global batch, split over the replicas.")
flags.DEFINE_integer("cpu_replicas", _DEFAULTS.cpu_replicas, "With --strategy=mirrored: split the CPU into this many "
                     "logical devices (to try distributed training without GPUs; not faster). 0: off.", lower_bound=0)
flags.DEFINE_boolean("sync_batchnorm", _DEFAULTS.sync_batchnorm, "BatchNorm uses the global batch's statistics "
                     "instead of each replica's slice (--strategy=mirrored or multi_worker; --model=gsmorph).")
flags.DEFINE_boolean("mixed_precision", _DEFAULTS.mixed_precision, "mixed_float16: the network body computes in "
                     "float16, the flow heads, warps and losses in float32, with loss scaling (GPUs; --model=gsmorph "
                     "or ulae; 3D images need a GPU: TensorFlow's CPU kernels have no float16 MaxPool3D).")
for _name in define_dataset_options():
    flags.declare_key_flag(_name)  # listed by --help with the flags above
flags.register_validator("crop_size", lambda size: size % 16 == 0,
                         "--crop_size must be a multiple of 16 (the U-Net pools 4 times)")
flags.register_validator("ncc_windows", lambda windows: all(w.strip().isdigit() and int(w) > 0 for w in windows),
                         "--ncc_windows takes comma-separated positive integers")

FLAGS = flags.FLAGS


def _valid_profile_batch(steps):
    try:
        check_profile_batch(steps)
    except ConfigError:
        return False
    return True


flags.register_validator("profile_batch", _valid_profile_batch,
                         "--profile_batch takes one training step or a range first,last of steps (positive integers, "
                         "first <= last, e.g. --profile_batch=10,12)")


def config_from_flags():
    """The run's settings, read from the parsed flags once."""
    values = {name: getattr(FLAGS, name) for name in TrainConfig.__dataclass_fields__
              if name != "dataset_options" and FLAGS[name].value is not None}
    values["ncc_windows"] = tuple(int(v) for v in values["ncc_windows"])
    values["profile_batch"] = check_profile_batch(values.get("profile_batch"))
    return TrainConfig(**values, dataset_options=dataset_options_from_flags(FLAGS, FLAGS.dataset))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    try:
        config = config_from_flags().validate()  # before TensorFlow loads: a bad setting fails at once
    except ConfigError as error:
        return fail(error)
    from gsmorph_tf.train.training import train_and_evaluate  # after flag parsing: --help stays fast

    quiet_logs(FLAGS["verbosity"].present)

    try:
        outcome = train_and_evaluate(config)
    except (ConfigError, DatasetError, FileExistsError) as error:
        return fail(error)
    print("\nTest split:\n")
    print(outcome["table"])
    if not outcome["chief"]:
        print("\nThis worker is not the chief: the chief writes the outputs into its %s" % config.output_dir)
        return 0
    print("\nOutputs in %s:" % config.output_dir)
    print("  evaluation: %s (and evaluation.md)" % outcome["evaluation_json"])
    print("  SavedModel: %s" % outcome["export_dir"])
    print("  TensorBoard: tensorboard --logdir %s" % outcome["tensorboard_dir"])
    return 0


def run():
    """Console-script entry point (``gsmorph-train``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
