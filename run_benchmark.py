"""Reproduce the GSMorph paper's comparison: Table 1, Table 2 and Fig. 3 in one command.

    python run_benchmark.py                                      # phantom, short schedule (< 45 min on 2 CPU cores)
    python run_benchmark.py --flagfile=flags/benchmark_acdc.flags --data_dir=/path/to/ACDC   # the paper's protocol

Trains Initial, VoxelMorph-s/m/l, HyperMorph, GS-Agr, GS-PCGrad and GSMorph with identical data, epochs and
seed, runs Demons (SimpleITK) and SyN (ANTsPy) on the same crops (``pip install "gsmorph-tf[baselines]"``),
and writes ``table1.md``, ``table2.md``, ``figure3.png`` and ``results.json`` to ``--output_dir``. Re-running
the same command resumes: finished methods are read back, an interrupted training resumes from its last epoch.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)


from absl import app, flags

from gsmorph_tf.cli import config_from_flags, define_dataset_options, fail, quiet_logs, run_app
from gsmorph_tf.errors import ConfigError, DatasetError
from gsmorph_tf.registry import DATASETS

flags.DEFINE_enum("dataset", "phantom", DATASETS.names(), "Dataset (phantom: generated into --data_dir on first use).")
flags.DEFINE_string("data_dir", "data_cache/phantom", "Dataset root.")
flags.DEFINE_string("output_dir", "runs/benchmark", "Where every method's run and the tables go.")
flags.DEFINE_list("methods", None, "Subset of methods by name (default: all rows of Table 1), e.g. "
                  "Initial,SyN,GSMorph.")
flags.DEFINE_integer("epochs", 30, "Training epochs of every learned method.", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "Slice pairs per step.", lower_bound=1)
flags.DEFINE_float("learning_rate", 5e-3, "Adam learning rate of every learned method.", lower_bound=0.0)
flags.DEFINE_enum("similarity", "mse", ["mse", "ncc"], "Similarity loss of every learned method.")
flags.DEFINE_integer("crop_size", 128, "Square crop around the heart (pixels, multiple of 16).", lower_bound=16)
flags.DEFINE_integer("seed", 0, "Seed shared by every method (split, init, shuffling).")
flags.DEFINE_enum("reg_penalty", "l1", ["l1", "l2"], "Smoothness penalty of every learned method: l1 is the GSMorph "
                  "reference's Grad(), on whose scale the paper's lambdas 0.1/0.01/0.001 are set.")
flags.DEFINE_enum("metric_protocol", "paper", ["paper", "volume"], "paper: a row per 2D slice pair, as the GSMorph "
                  "reference code; volume: a row per subject.")
for _name in define_dataset_options():
    flags.declare_key_flag(_name)
#: The default comparison runs on a smaller phantom than a training run's default (16 x 6 slices).
PHANTOM_DEFAULTS = {"phantom_subjects": 16, "phantom_slices": 6}
FLAGS = flags.FLAGS


def selected_methods(names, available):
    """The Method rows named in ``names`` (in Table 1's order), or all when ``names`` is None."""
    if names is None:
        return available
    known = {m.name: m for m in available}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError("unknown --methods %s; valid: %s" % (", ".join(unknown), ", ".join(known)))
    return tuple(m for m in available if m.name in names)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    quiet_logs(FLAGS["verbosity"].present)
    from gsmorph_tf import paper_comparison
    from gsmorph_tf.timing import machine_description

    try:
        config = config_from_flags(FLAGS, ("data_dir", "output_dir", "epochs", "batch_size", "learning_rate",
                                           "similarity", "crop_size", "seed", "reg_penalty", "metric_protocol"),
                                   PHANTOM_DEFAULTS if FLAGS.dataset == "phantom" else None)
        methods = selected_methods(FLAGS.methods, paper_comparison.PAPER_METHODS)
        paper_comparison.check_requirements(methods)
        records = paper_comparison.run_paper_comparison(config, FLAGS.output_dir, methods)
    except (ConfigError, DatasetError, ImportError) as error:
        return fail(error)
    print("\nTable 1 (test split):\n")
    print(paper_comparison.table1(records))
    print("\nTable 2:\n")
    print(paper_comparison.table2(records, machine_description()))
    print("\nWrote table1.md, table2.md, figure3.png and results.json to %s" % FLAGS.output_dir)
    return 0


def run():
    """Console-script entry point."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
