"""Does the port train like the reference code? The study's runs against the GSMorph reference, same data.

    python benchmarks/reference_training.py --study_dir=runs/study \\
        --reference_dir=/path/to/GSMorph --reference_python=/path/to/python-with-torch

Takes a finished or partial ``run_study.py`` output (``--study_dir``: its ``study.json`` gives the data, split,
crop, batch, epochs, learning rate, penalty and metric protocol) and, for every method and seed asked for:

- the port's run: read back from the study (trained into it first if the study lacks that seed);
- the reference's run: ``benchmarks/reference_train.py`` under ``--reference_python`` trains the reference's
  own network, training step and loop on the **same pairs** (the study's split, already scaled and cropped,
  exported to ``<output_dir>/pairs.npz``), the same batch, epochs, learning rate, lambda and surgery mode;
  its test and per-epoch validation flows come back and are scored by this package's evaluator, warped as
  the port's are, so that the two differ only by how their networks were trained.

Writes to ``--output_dir`` (default ``<study_dir>/reference``): ``reference_comparison.md`` (port and
reference side by side, mean +- std over seeds, a Welch test over seeds and a paired Wilcoxon test over test
subjects per method), ``reference_comparison.json`` (every run's numbers) and ``reference_curves.png``
(validation Dice, training MSE and the fraction of parameter tensors in conflict, per epoch). Resumable: a
finished run is read back, an interrupted reference run continues from its last epoch.

With ``--paired`` (default methods: VoxelMorph-l, lambda 0.1, no surgery method) it runs the paired check
instead (``benchmarks/reference_paired.py``): per method and seed the reference as above, also recording its
initial weights and batch order, then the port trained from those weights in that order (the study's own runs
are not used), both scored alike. Writes to ``<output_dir>/paired/<method>/seed<k>/`` the reference's
``reference.npz``, ``reference_init.npz``, ``reference_order.npz`` and both runs' records
(``reference_run.json``, ``port_run.json``), and ``paired_comparison.md`` / ``.json``: per seed both test Dice
and their difference; over seeds the mean and median difference and a Wilcoxon signed-rank test; the paired
Wilcoxon test over the test subjects; per seed also the final validation Dice of both and the distance of
their training-loss curves; ``paired_curves_<method>.png``, per seed the validation Dice of both after every
epoch. ``--control_threads=N`` adds the reference against itself: trained again per seed with N PyTorch
threads from the same weights in the same order (checked), its differences beside the port's. Resumable per
run.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

from absl import app, flags

from gsmorph_tf.cli import fail, quiet_logs, run_app
from gsmorph_tf.errors import ConfigError, DatasetError
from reference_glue import check_reference_python, run_streamed  # this folder

#: VoxelMorph's lambdas compared by default: the paper's VoxelMorph-l, -m and -s (l1 penalty).
REFERENCE_LAMBDAS = ("0.1", "0.01", "0.001")

flags.DEFINE_string("study_dir", "runs/study", "A run_study.py output folder (with its study.json).")
flags.DEFINE_string("reference_dir", None, "Checkout of wulalago/GSMorph.", required=True)
flags.DEFINE_string("reference_python", None, "Python interpreter with PyTorch, for the reference.", required=True)
flags.DEFINE_string("output_dir", None, "Where the reference runs and the comparison go (default "
                    "<study_dir>/reference).")
flags.DEFINE_list("lambdas", list(REFERENCE_LAMBDAS), "VoxelMorph lambdas to compare.")
flags.DEFINE_list("surgery_methods", ["GSMorph", "GS-PCGrad"], "Surgery methods to compare (names as in the study).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds of both implementations.")
flags.DEFINE_bool("paired", False, "Train the port from the reference's initial weights in its batch order (default "
                  "methods VoxelMorph-l only: --lambdas=0.1 --surgery_methods=) and compare seed by seed.")
flags.DEFINE_integer("threads", os.cpu_count(), "PyTorch intra-op threads of the reference runs.", lower_bound=1)
flags.DEFINE_integer("control_threads", 0, "With --paired: also train the reference a second time per seed with "
                     "this many threads (same initial weights and batch order, verified; only the order of its "
                     "floating-point sums changes), to measure how far the reference differs from itself. 0: no "
                     "control.", lower_bound=0)
flags.register_validator("seeds", lambda values: bool(values) and all(v.strip().isdigit() for v in values),
                         "--seeds takes comma-separated non-negative integers")
FLAGS = flags.FLAGS
HERE = os.path.dirname(os.path.abspath(__file__))


def check_reference():
    """Fail at once, naming the path, if the reference checkout or its Python is unusable."""
    if not os.path.isfile(os.path.join(FLAGS.reference_dir, "source", "model_func.py")):
        raise ConfigError("--reference_dir=%s: no source/model_func.py there; expected a checkout of "
                          "wulalago/GSMorph" % FLAGS.reference_dir)
    check_reference_python(FLAGS.reference_python)


def study_config(study_dir):
    """The study's :class:`~gsmorph_tf.config.TrainConfig` from ``<study_dir>/study.json``."""
    from gsmorph_tf.config import TrainConfig

    path = os.path.join(study_dir, "study.json")
    if not os.path.isfile(path):
        raise ConfigError("--study_dir=%s: no study.json; run run_study.py with --output_dir=%s first"
                          % (study_dir, study_dir))
    with open(path, encoding="utf-8") as f:
        return TrainConfig.from_dict(json.load(f)["config"])


def export_pairs(splits, path):
    """The splits' image pairs as the ``.npz`` ``reference_train.py`` reads (subjects and slices in order),
    written by its own writer (a temporary file, then a rename)."""
    from reference_paired import pair_arrays   # this folder
    from reference_train import save_npz

    save_npz(path, **pair_arrays(splits))


def threads_label(threads):
    """``"1 thread"`` / ``"4 threads"``: names the control run in the log and figures."""
    return "%d thread%s" % (threads, "" if threads == 1 else "s")


def reference_run(method, seed, config, pairs_path, folder, paired=False, stem="reference", threads=None):
    """Train the reference for one (method, seed) unless its flows exist; returns the flows' path
    (``<folder>/<stem>.npz``). With ``paired`` it also writes ``<stem>_init.npz`` and ``<stem>_order.npz`` to
    ``folder``. ``threads``: PyTorch intra-op threads (default ``--threads``)."""
    out = os.path.join(folder, stem + ".npz")
    if os.path.exists(out):
        return out
    os.makedirs(folder, exist_ok=True)
    settings = dict(method.settings)
    command = [FLAGS.reference_python, os.path.join(HERE, "reference_train.py"), "--ref", FLAGS.reference_dir,
               "--data", pairs_path, "--out", out, "--surgery", settings["surgery"],
               "--lam", str(settings.get("lam", config.lam)), "--seed", str(seed), "--epochs", str(config.epochs),
               "--batch", str(config.batch_size), "--lr", str(config.learning_rate),
               "--threads", str(threads or FLAGS.threads)]
    if paired:
        command += ["--init_out", os.path.join(folder, stem + "_init.npz"),
                    "--order_out", os.path.join(folder, stem + "_order.npz")]
    run_streamed(command)
    return out


def write_comparison(stem, table, config, seeds, comparison, port, reference):
    """``stem.md`` (the table) and ``stem.json`` (settings, the comparison and every run's record), atomically."""
    from gsmorph_tf.evaluate import evaluation
    from gsmorph_tf.fileio import atomic_write_text

    atomic_write_text(stem + ".md", table + "\n")
    evaluation.write_json(stem + ".json", {"config": config.to_dict(), "seeds": seeds,
                                           "reference_dir": FLAGS.reference_dir, "comparison": comparison,
                                           "port_runs": port, "reference_runs": reference})


def run_paired(methods, seeds, config, splits, pairs_path, output_dir):
    """The paired check (see the module docstring) for every method and seed; writes and prints the table."""
    import dataclasses

    import numpy as np
    import reference_paired as paired   # this folder
    from gsmorph_tf.studies import lambda_study
    from gsmorph_tf.studies.seed_studies import read_or_make

    arrays = paired.pair_arrays(splits)
    port, reference, control, total, done = {}, {}, {}, len(methods) * len(seeds), 0
    control_stem = "reference_threads%d" % FLAGS.control_threads   # the control run's files in a seed's folder
    for method in methods:
        for seed in seeds:
            done += 1
            print("[%d/%d] %s, seed %d (paired)" % (done, total, method.name, seed), flush=True)
            folder = os.path.join(output_dir, "paired", method.slug, "seed%d" % seed)

            def score(flows, source):
                return lambda_study.flows_record(method, seed, flows, splits, config.metric_protocol, source)

            def reference_record():
                flows_path = reference_run(method, seed, config, pairs_path, folder, paired=True)
                with np.load(flows_path) as flows:
                    return score(flows, flows_path)

            def port_record():
                run_config = dataclasses.replace(config, seed=seed, **dict(method.settings))
                order = paired.read_order(os.path.join(folder, "reference_order.npz"), len(arrays["train_moving"]),
                                          config.batch_size)
                state = paired.read_initial_state(os.path.join(folder, "reference_init.npz"))
                model = paired.reference_initialised_model(run_config, state, arrays["train_moving"].shape[1:])
                print("  port: %d epochs of %d steps from the reference's weights" % order.shape[:2], flush=True)
                return score(paired.train_in_order(model, order, arrays), "the port's paired run")

            def control_record():
                flows_path = reference_run(method, seed, config, pairs_path, folder, paired=True,
                                           stem=control_stem, threads=FLAGS.control_threads)
                paired.check_same_start(folder, "reference", control_stem)
                with np.load(flows_path) as flows:
                    return score(flows, flows_path)
            reference.setdefault(method.name, []).append(
                read_or_make(os.path.join(folder, "reference_run.json"), reference_record))
            record = read_or_make(os.path.join(folder, "port_run.json"), port_record)
            port.setdefault(method.name, []).append(record)
            line = "  test Dice: port %.2f, reference %.2f" % (record["test"]["dice_mean"]["mean"],
                                                              reference[method.name][-1]["test"]["dice_mean"]["mean"])
            if FLAGS.control_threads:
                control.setdefault(method.name, []).append(read_or_make(
                    os.path.join(folder, control_stem + "_run.json"), control_record))
                line += ", the reference with %s %.2f" % (threads_label(FLAGS.control_threads),
                                                         control[method.name][-1]["test"]["dice_mean"]["mean"])
            print(line, flush=True)
    comparison = paired.paired_comparison(port, reference, methods, control or None)
    table = paired.paired_table(comparison, config.metric_protocol)
    write_comparison(os.path.join(output_dir, "paired_comparison"), table, config, seeds, comparison, port, reference)
    for method in methods:
        paired.plot_paired_curves(port[method.name], reference[method.name],
                                  os.path.join(output_dir, "paired_curves_%s.png" % method.slug),
                                  control.get(method.name), "reference, " + threads_label(FLAGS.control_threads))
    print("\n" + table)
    print("\nWrote paired_comparison.md, paired_comparison.json and paired_curves_<method>.png to %s" % output_dir)
    return 0


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    quiet_logs(FLAGS["verbosity"].present)
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.study_dir, "reference")
    try:
        if FLAGS.control_threads and not FLAGS.paired:
            raise ConfigError("--control_threads=%d: the control run belongs to the paired check; add --paired"
                              % FLAGS.control_threads)
        if FLAGS.control_threads == FLAGS.threads:
            raise ConfigError("--control_threads=%d: the same as --threads, so the control would repeat the "
                              "reference bit for bit; give another thread count" % FLAGS.control_threads)
        check_reference()
        config = study_config(FLAGS.study_dir)
        if (config.model, config.similarity, config.reg_penalty, config.drop_last) != ("gsmorph", "mse", "l1", True):
            raise ConfigError("%s: the reference trains the GSMorph U-Net with MSE, the l1 Grad() penalty and "
                              "drop_last; the study has model=%s, similarity=%s, reg_penalty=%s, drop_last=%s"
                              % (FLAGS.study_dir, config.model, config.similarity, config.reg_penalty,
                                 config.drop_last))
    except ConfigError as error:
        return fail(error)
    import numpy as np   # TensorFlow and the rest only once the inputs are known to be usable
    from gsmorph_tf.evaluate import evaluation
    from gsmorph_tf.studies import lambda_study
    from gsmorph_tf.train import training

    try:
        if FLAGS.paired:   # VoxelMorph-l alone unless the methods are named
            methods = lambda_study.named_methods(FLAGS.lambdas if FLAGS["lambdas"].present else ["0.1"],
                                                 FLAGS.surgery_methods if FLAGS["surgery_methods"].present else [])
        else:
            methods = lambda_study.named_methods(FLAGS.lambdas, FLAGS.surgery_methods)
        seeds = [int(s) for s in FLAGS.seeds]
        splits = training.load_data(config)
        training.check_batches(config, splits)
    except (ConfigError, DatasetError) as error:
        return fail(error)
    os.makedirs(output_dir, exist_ok=True)
    pairs_path = os.path.join(output_dir, "pairs.npz")
    export_pairs(splits, pairs_path)
    if FLAGS.paired:
        try:
            return run_paired(methods, seeds, config, splits, pairs_path, output_dir)
        except (DatasetError, ValueError) as error:   # an unreadable init or order; weights that do not fit
            return fail(error)
    steps_per_epoch = lambda_study.epoch_steps(config, splits)
    port, reference, total = {}, {}, len(methods) * len(seeds)
    for method in methods:
        for seed in seeds:
            done = sum(len(v) for v in reference.values()) + 1
            print("[%d/%d] %s, seed %d" % (done, total, method.name, seed), flush=True)
            record = lambda_study.run_one(method, seed, config, FLAGS.study_dir, steps_per_epoch)
            run_dir = os.path.join(FLAGS.study_dir, method.slug, "seed%d" % seed)
            record["sim_loss_curve"] = lambda_study.epoch_curve(run_dir, "train", "epoch_sim_loss")
            record["conflict_fraction_curve"] = lambda_study.epoch_curve(run_dir, "train", "epoch_conflict_fraction")
            port.setdefault(method.name, []).append(record)
            folder = os.path.join(output_dir, method.slug, "seed%d" % seed)
            record_path = os.path.join(folder, "reference_run.json")
            if os.path.exists(record_path):
                with open(record_path, encoding="utf-8") as f:
                    record = json.load(f)
            else:
                flows_path = reference_run(method, seed, config, pairs_path, folder)
                with np.load(flows_path) as flows:
                    record = lambda_study.flows_record(method, seed, flows, splits, config.metric_protocol, flows_path)
                evaluation.write_json(record_path, record)
            reference.setdefault(method.name, []).append(record)
    comparison = lambda_study.compare_implementations(port, reference, methods)
    table = lambda_study.comparison_table(comparison, config.metric_protocol)
    write_comparison(os.path.join(output_dir, "reference_comparison"), table, config, seeds, comparison, port,
                     reference)
    lambda_study.plot_comparison(port, reference, os.path.join(output_dir, "reference_curves.png"))
    print("\n" + table)
    print("\nWrote reference_comparison.md, reference_comparison.json and reference_curves.png to %s" % output_dir)
    return 0


if __name__ == "__main__":
    run_app(main, __name__)
