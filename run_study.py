"""Is GSMorph as good as the tuned VoxelMorph? The multi-seed lambda study, one resumable command.

    python run_study.py                                        # the phantom, sized for ~2 h on 2 CPU cores
    python run_study.py --flagfile=study_paper.flags --data_dir=/path/to/ACDC   # the paper's sizes, on a GPU

Trains VoxelMorph at every ``--lambdas`` (l1 penalty) and the ``--surgery_methods`` (GSMorph and GS-PCGrad),
each with every ``--seeds``,
on one fixed subject split (``--split_seed``), and writes to ``--output_dir``: ``study_table.md``,
``dice_vs_njd.png``, ``validation_curves.png`` and ``study.json`` (see :mod:`gsmorph_tf.studies.lambda_study`).
Re-running the same command resumes: finished runs are read back, an interrupted one continues.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

from absl import app, flags

from gsmorph_tf.cli import config_from_flags, define_dataset_options, fail, quiet_logs, run_app
from gsmorph_tf.config import METRIC_PROTOCOLS, REG_PENALTIES, WARP_PADDINGS
from gsmorph_tf.errors import ConfigError, DatasetError
from gsmorph_tf.registry import DATASETS

flags.DEFINE_enum("dataset", "phantom", DATASETS.names(), "Dataset (phantom: generated into --data_dir on first use).")
flags.DEFINE_string("data_dir", "data_cache/phantom_study", "Dataset root.")
flags.DEFINE_string("output_dir", "runs/study", "Where every run and the study's tables and figures go.")
flags.DEFINE_list("lambdas", ["0.3", "0.1", "0.03", "0.01", "0.003", "0.001"], "VoxelMorph's smoothness weights.")
flags.DEFINE_list("surgery_methods", ["GSMorph", "GS-PCGrad"], "Surgery methods of the study (empty: VoxelMorph only).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds (initialisation, shuffling) of every method.")
flags.DEFINE_integer("split_seed", 0, "Seed of the subject split, the same for every run.")
flags.DEFINE_integer("epochs", 30, "Training epochs of every run.", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "Slice pairs per step.", lower_bound=1)
flags.DEFINE_float("learning_rate", 5e-3, "Adam learning rate of every run (the paper's).", lower_bound=0.0)
flags.DEFINE_integer("crop_size", 64, "Square crop around the heart (pixels, multiple of 16).", lower_bound=16)
flags.DEFINE_enum("reg_penalty", "l1", REG_PENALTIES, "Smoothness penalty (l1: the reference's Grad()).")
flags.DEFINE_enum("metric_protocol", "paper", METRIC_PROTOCOLS, "Metric protocol of the test and validation scores.")
flags.DEFINE_enum("warp_padding", "border", WARP_PADDINGS, "What the networks' warps read outside the image (zeros: "
                  "the reference code's grid_sample).")
for _name in define_dataset_options():
    flags.declare_key_flag(_name)
flags.register_validator("lambdas", lambda values: all(_is_positive(v) for v in values),
                         "--lambdas takes comma-separated positive numbers")
flags.register_validator("seeds", lambda values: bool(values) and all(v.strip().isdigit() for v in values),
                         "--seeds takes comma-separated non-negative integers")
#: The default study runs on a phantom of 40 subjects (8 test subjects) at 96 px (the 128 px field of view
#: of the 192 px phantom in a 64x64 crop), so that 24 runs fit ~2 h on 2 CPU cores.
PHANTOM_DEFAULTS = {"phantom_subjects": 40, "phantom_slices": 6, "phantom_size": 96}
FLAGS = flags.FLAGS


def _is_positive(text):
    try:
        return float(text) > 0
    except ValueError:
        return False


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    quiet_logs(FLAGS["verbosity"].present)
    from gsmorph_tf.studies import lambda_study

    try:
        # The study compares the scores, not the conflict of VoxelMorph's gradients: one backward pass there.
        config = config_from_flags(FLAGS, ("data_dir", "output_dir", "epochs", "batch_size", "learning_rate",
                                           "crop_size", "split_seed", "reg_penalty", "metric_protocol",
                                           "warp_padding"),
                                   PHANTOM_DEFAULTS if FLAGS.dataset == "phantom" else None,
                                   conflict_diagnostics=False)
        methods = lambda_study.named_methods(FLAGS.lambdas, FLAGS.surgery_methods)
        summary = lambda_study.run_study(config, FLAGS.output_dir, [int(s) for s in FLAGS.seeds], methods)
    except (ConfigError, DatasetError) as error:
        return fail(error)
    print("\n" + summary["table"])
    print("\nWrote study_table.md, dice_vs_njd.png, validation_curves.png and study.json to %s" % FLAGS.output_dir)
    return 0


def run():
    """Console-script entry point (``gsmorph-study``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
