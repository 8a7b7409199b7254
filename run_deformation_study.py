"""Does ULAE-net keep its promise? The resumable multi-seed 3D study of accumulative enhancement, one command.

    python run_deformation_study.py                                          # CPU size (flags/deformation_study.flags)
    python run_deformation_study.py --flagfile=deformation_study_gpu.flags   # the paper's volume size, on a GPU

On the synthetic brain task (written under ``--data_dir`` on first use, one dataset per deformation level), trains
VoxelMorph at every ``--lambdas`` (the lambda chosen on validation also trains VoxelMorph x2), ULAE-net with its
reference objective, ULAE-net with gradient surgery and GSMorph-3D, each with every ``--seeds``, runs Initial and
SyN, trains ULAE-net and VoxelMorph x2 again at every ``--magnitudes`` level, and writes to ``--output_dir``:
``deformation_table.md``, ``deformation_study.json``, ``validation_curves.png``, ``dice_vs_magnitude.png`` and
``ulae_steps.png`` (see :mod:`gsmorph_tf.studies.deformation_study`). Re-running the same command resumes: finished runs
are read back, an interrupted one continues; with ``--record_dir`` the finished runs' records (and the outputs, when
the call covers every run kept there) are also kept in a folder small enough to commit, so the study resumes on
another machine. The same command may run in several processes at once (e.g. one per core, each with
``TF_NUM_INTRAOP_THREADS=1``): each skips the runs another is training, and the call that finds every run finished
writes the outputs (run it once more at the end).
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import math

from absl import app, flags

from gsmorph_tf.cli import dataset_options_from_flags, define_dataset_options, fail, quiet_logs, run_app
from gsmorph_tf.config import NCC_FORMULAS, ULAE_INITS, ULAE_MOVED, WARP_PADDINGS
from gsmorph_tf.errors import ConfigError, DatasetError

flags.DEFINE_string("data_dir", "data_cache/brain", "Where the brain datasets are written (one folder per level).")
flags.DEFINE_string("output_dir", "runs/deformation_study", "Where every run and the study's tables and figures go.")
flags.DEFINE_string("record_dir", "", "A folder that keeps what the study's numbers and figures need (its settings, "
                    "each finished run's study_run.json, Fig. 3's network, the outputs), small enough to commit: runs "
                    "kept there are read back on any machine instead of trained again. Empty: none.")
flags.DEFINE_list("methods", None, "Subset of the rows by name (default: all): Initial, SyN, VoxelMorph, "
                  "VoxelMorph x2, ULAE-net, ULAE-net + gradient surgery, GSMorph-3D.")
flags.DEFINE_list("lambdas", ["0.3", "1", "3"], "VoxelMorph's smoothness weights (l2); the one with the best mean "
                  "validation Dice also trains VoxelMorph x2.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds (initialisation, pair order) of every learned method.")
flags.DEFINE_list("magnitudes", ["2", "5", "7"], "brain_max_displacement levels (voxels) at which ULAE-net and "
                  "VoxelMorph x2 are compared, each its own dataset; empty: no magnitude study.")
flags.DEFINE_integer("split_seed", 0, "Seed of the brain subjects and of the split, the same for every run.")
flags.DEFINE_integer("epochs", 60, "Most training epochs of every learned run (each --pairs_per_epoch steps at batch "
                     "1); with --early_stopping_patience a run stops earlier, on its plateau.",
                     lower_bound=1)
flags.DEFINE_integer("early_stopping_patience", 8, "Stop each learned run once its validation Dice has not improved "
                     "by more than --early_stopping_min_delta for this many epochs in a row (--epochs is then the "
                     "most it trains). 0: every run trains --epochs.", lower_bound=0)
flags.DEFINE_float("early_stopping_min_delta", 0.25, "Validation Dice points an epoch must gain over the run's best "
                   "to count as an improvement.", lower_bound=0.0)
flags.DEFINE_integer("batch_size", 1, "Pairs per step (ULAE's reference: 1).", lower_bound=1)
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate of every learned run (the ULAE reference's is 1e-4, "
                   "which the GPU flagfile keeps; on CPU 1e-3 lets runs reach their plateau).",
                   lower_bound=0.0)
flags.DEFINE_float("lam", 1.0, "ULAE-net's smoothness weight (its reference objective: 1).", lower_bound=0.0)
flags.DEFINE_list("ncc_windows", ["11", "9", "7"], "Multi-window NCC window sides, largest first (every method).")
flags.DEFINE_float("ncc_gamma", 0.5, "Multi-window NCC weight decay between windows.", lower_bound=0.0)
flags.DEFINE_enum("ncc", "reference", NCC_FORMULAS, "Local NCC formula of every method (reference: the ULAE code's "
                  "cross^2 / (var_I var_J + 1e-5), no clamps; voxelmorph: voxelmorph 0.2's clamped one).")
flags.DEFINE_enum("warp_padding", "zeros", WARP_PADDINGS, "What every learned method's warps read outside the volume "
                  "(zeros: the reference's grid_sample).")
flags.DEFINE_enum("ulae_moved", "warp3", ULAE_MOVED, "The image ULAE-net's similarity scores (warp3: the reference's).")
flags.DEFINE_enum("ulae_init", "pytorch", ULAE_INITS, "ULAE-net's initialisation (pytorch: the reference's).")
#: The CPU-sized brain task (flags/deformation_study.flags says why): 30 subjects at 32x48x32 (4.5 mm voxels), the
#: main level 5 voxels; 3 validation subjects (2 pairs), 11 held out for test (10 pairs), 16 training subjects (240
#: ordered pairs, 40 drawn per epoch).
BRAIN_DEFAULTS = {"brain_subjects": 30, "brain_shape": (32, 48, 32), "brain_max_displacement": 5.0,
                  "pairs_per_epoch": 40, "test_fraction": 0.4}
for _name in define_dataset_options(only=("brain",), defaults=BRAIN_DEFAULTS):
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def parse_numbers(flag, values, kind=float):
    """``--flag``'s comma-separated values as ``kind`` (float or int).

    Raises:
        ConfigError: naming the flag and the value that is not a number of that kind.
    """
    numbers = []
    for text in values:
        try:
            value = kind(text.strip())
        except ValueError:
            value = None
        if value is None or (kind is float and not math.isfinite(value)):
            raise ConfigError("--%s: %r is not %s" % (flag, text, "an integer" if kind is int else "a number"))
        numbers.append(value)
    return tuple(numbers)


def plan_from_flags():
    """The :class:`~gsmorph_tf.studies.deformation_study.StudyPlan` the flags describe (validated).

    Raises:
        ConfigError: naming the flag or setting that is wrong.
    """
    from gsmorph_tf.config import TrainConfig
    from gsmorph_tf.studies import deformation_study

    options = dict(BRAIN_DEFAULTS, **dataset_options_from_flags(FLAGS, "brain"))
    seeds = parse_numbers("seeds", FLAGS.seeds, int)
    config = TrainConfig(dataset="brain", data_dir=FLAGS.data_dir, output_dir=FLAGS.output_dir, model="ulae",
                         surgery="none", lam=FLAGS.lam, similarity="multi_ncc", reg_penalty="l2",
                         ncc_windows=parse_numbers("ncc_windows", FLAGS.ncc_windows, int), ncc_gamma=FLAGS.ncc_gamma,
                         ncc=FLAGS.ncc, warp_padding=FLAGS.warp_padding, ulae_moved=FLAGS.ulae_moved, ulae_init=FLAGS.ulae_init,
                         learning_rate=FLAGS.learning_rate, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
                         early_stopping_patience=FLAGS.early_stopping_patience,
                         early_stopping_min_delta=FLAGS.early_stopping_min_delta,
                         seed=seeds[0] if seeds else 0, split_seed=FLAGS.split_seed, metric_protocol="volume",
                         conflict_diagnostics=False, dataset_options=options)
    return deformation_study.StudyPlan(
        config=config, output_dir=FLAGS.output_dir, methods=deformation_study.select_methods(FLAGS.methods),
        seeds=seeds, lambdas=parse_numbers("lambdas", FLAGS.lambdas),
        magnitudes=parse_numbers("magnitudes", FLAGS.magnitudes), record_dir=FLAGS.record_dir).validate()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    quiet_logs(FLAGS["verbosity"].present)
    from gsmorph_tf.studies import deformation_study

    try:
        plan = plan_from_flags()
        summary = deformation_study.run_deformation_study(plan)
    except (ConfigError, DatasetError, ImportError) as error:
        return fail(error)
    if summary is None:     # runs left to other processes on the same study: the last call writes the outputs
        return 0
    print("\n" + summary["table"])
    print("\nWrote deformation_table.md, deformation_study.json and the figures to %s%s"
          % (FLAGS.output_dir, " (and %s)" % FLAGS.record_dir if summary["recorded"] else ""))
    return 0


def run():
    """Console-script entry point (``gsmorph-deformation-study``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
