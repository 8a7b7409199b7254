"""Reproduce the papers' comparisons: Table 1, Table 2 and Fig. 3 in one command.

    python run_benchmark.py                                      # phantom, short schedule (< 45 min on 2 CPU cores)
    python run_benchmark.py --flagfile=flags/benchmark_acdc.flags --data_dir=/path/to/ACDC   # the paper's protocol
    python run_benchmark.py --flagfile=flags/benchmark_oasis.flags --data_dir=/path/to/OASIS # ULAE-net's Table 1

On a 2D dataset the rows are the GSMorph paper's (below); on a 3D dataset (``learn2reg``, ``brain``) they are
ULAE-net's Table 1 columns: Initial, SyN, VoxelMorph, VoxelMorph x2, ULAE-net, ULAE-net + gradient surgery,
with Dice per structure (or per ``--label_groups`` group).

Trains Initial, VoxelMorph-s/m/l, HyperMorph, GS-Agr, GS-PCGrad and GSMorph with identical data, epochs and
seed, runs Demons (SimpleITK) and SyN (ANTsPy) on the same crops (``pip install "gsmorph-tf[baselines]"``),
and writes ``table1.md``, ``table2.md``, ``figure3.png`` and ``results.json`` to ``--output_dir``. Re-running
the same command resumes: finished methods are read back, an interrupted training resumes from its last epoch.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)


from absl import app, flags

from gsmorph_tf.cli import config_from_flags, define_dataset_options, fail, quiet_logs, run_app
from gsmorph_tf.config import NCC_FORMULAS, ULAE_INITS, ULAE_MOVED, WARP_PADDINGS
from gsmorph_tf.errors import ConfigError, DatasetError
from gsmorph_tf.registry import DATASETS, SIMILARITIES

flags.DEFINE_enum("dataset", "phantom", DATASETS.names(), "Dataset (phantom: generated into --data_dir on first use).")
flags.DEFINE_string("data_dir", "data_cache/phantom", "Dataset root.")
flags.DEFINE_string("output_dir", "runs/benchmark", "Where every method's run and the tables go.")
flags.DEFINE_list("methods", None, "Subset of methods by name (default: all rows of Table 1), e.g. "
                  "Initial,SyN,GSMorph (3D: Initial,SyN,VoxelMorph,VoxelMorph x2,ULAE-net,ULAE-net + gradient "
                  "surgery).")
flags.DEFINE_integer("epochs", 30, "Training epochs of every learned method.", lower_bound=1)
flags.DEFINE_integer("batch_size", 16, "Slice pairs per step.", lower_bound=1)
flags.DEFINE_float("learning_rate", 5e-3, "Adam learning rate of every learned method.", lower_bound=0.0)
flags.DEFINE_enum("similarity", "mse", SIMILARITIES.names(), "Similarity loss of every learned method.")
flags.DEFINE_list("ncc_windows", ["11", "9", "7"], "multi_ncc window sides, largest first.")
flags.DEFINE_float("ncc_gamma", 0.5, "multi_ncc weight decay between windows.", lower_bound=0.0)
flags.DEFINE_enum("ncc", NCC_FORMULAS[0], NCC_FORMULAS, "Local NCC formula of ncc and multi_ncc: voxelmorph "
                  "(voxelmorph 0.2's, clamped) or reference (the ULAE-net code's); see run_train.py --help.")
flags.DEFINE_float("lam", None, "3D comparison: smoothness weight of VoxelMorph and ULAE-net (default 1, the ULAE "
                   "paper's); the 2D comparison sets its own per row (VoxelMorph-s/m/l: 0.001/0.01/0.1).",
                   lower_bound=0.0)
flags.DEFINE_enum("warp_padding", "border", WARP_PADDINGS, "What every learned method's warps read outside the "
                  "volume: border (voxelmorph's) or zeros (the reference codes' grid_sample).")
flags.DEFINE_enum("ulae_moved", "composed", ULAE_MOVED, "3D comparison: the image ULAE-net's similarity scores "
                  "(warp3: the reference's, resampled by the three steps in sequence; composed: ours).")
flags.DEFINE_enum("ulae_init", "keras", ULAE_INITS, "3D comparison: ULAE-net's initialisation (pytorch: the "
                  "reference's; keras: ours).")
flags.DEFINE_integer("crop_size", 128, "Square crop around the heart (pixels, multiple of 16).", lower_bound=16)
flags.DEFINE_integer("seed", 0, "Seed shared by every method (split, init, shuffling).")
flags.DEFINE_enum("reg_penalty", "l1", ["l1", "l2"], "Smoothness penalty of every learned method: l1 is the GSMorph "
                  "reference's Grad(), on whose scale the paper's lambdas 0.1/0.01/0.001 are set.")
flags.DEFINE_enum("metric_protocol", None, ["paper", "volume"], "Default: paper on 2D datasets, volume on 3D ones. "
                  "paper: a row per 2D slice pair, as the GSMorph "
                  "reference code; volume: a row per subject.")
for _name in define_dataset_options():
    flags.declare_key_flag(_name)
flags.register_validator("ncc_windows", lambda windows: all(w.strip().isdigit() and int(w) > 0 for w in windows),
                         "--ncc_windows takes comma-separated positive integers")
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


def three_d_defaults(dataset, lam, metric_protocol):
    """The settings whose defaults depend on the comparison: on 3D datasets lambda 1 (ULAE-net's), the
    ``volume`` protocol and ULAE-net as the base config's model (so that it takes ULAE's settings; every 3D row
    names its model, and a row keeps only the settings its model takes); on 2D ones the ``paper`` protocol
    (each VoxelMorph row sets its own lambda)."""
    three_d = DATASETS[dataset].ndim == 3
    settings = {"metric_protocol": metric_protocol or ("volume" if three_d else "paper")}
    if three_d:
        settings["model"] = "ulae"
    if lam is not None or three_d:
        settings["lam"] = 1.0 if lam is None else lam
    return settings


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    quiet_logs(FLAGS["verbosity"].present)
    from gsmorph_tf.evaluate.timing import machine_description
    from gsmorph_tf.studies import paper_comparison

    try:
        config = config_from_flags(FLAGS, ("data_dir", "output_dir", "epochs", "batch_size", "learning_rate",
                                           "similarity", "ncc_gamma", "ncc", "crop_size", "seed", "reg_penalty",
                                           "warp_padding", "ulae_moved", "ulae_init"),
                                   PHANTOM_DEFAULTS if FLAGS.dataset == "phantom" else None,
                                   ncc_windows=tuple(int(w) for w in FLAGS.ncc_windows),
                                   **three_d_defaults(FLAGS.dataset, FLAGS.lam, FLAGS.metric_protocol))
        methods = selected_methods(FLAGS.methods, paper_comparison.comparison_methods(FLAGS.dataset))
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
