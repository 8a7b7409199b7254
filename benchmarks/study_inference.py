"""Inference time per pair of a deformation study's methods, measured again in one process on a quiet machine.

    python benchmarks/study_inference.py --study_dir=runs/deformation_study

``run_deformation_study.py`` times each run's test pairs right after training it (the ``ms / pair`` column of its
table). Runs trained over several sittings, or beside other work, were timed under different loads, so that
column compares methods only roughly. This script times them all again, one after the other, in the same
process: every finished learned run of one level (``--level``, default the study's main level; each
``disp<level>/<method>/seed<k>/`` holding a ``study_run.json``) whose checkpoint is on this machine, and SyN
(``--syn``; ``disp<level>/syn/study_run.json`` must exist: the study ran it, here or elsewhere). A run read back
from the study's record folder after training on another machine has no checkpoint here: it is listed as not
timed, and its own ``ms_per_pair`` (in its ``study_run.json``) is the one measured where it trained.

Per run: the network as it is served (:func:`gsmorph_tf.train.runs.load_run_for_inference`) called through one
``tf.function`` (:func:`gsmorph_tf.evaluate.timing.compiled_predictor`), one warm-up pair, then each test pair
(one moving and one fixed volume, batch 1, float32) ``--repeats`` times; a pair's time is the median of its
repeats, a run's the median over its pairs. SyN (ANTsPy ``SyNOnly``, as the study) registers each pair once.

Prints per method the mean +- std over seeds of the runs' medians (ms), the per-seed figures, the machine and
its 1-minute load average at the start (a load above 0.5 per core is reported: timings then carry other work),
and writes ``inference_times.md`` and ``inference_times.json`` to ``--study_dir`` (atomically).
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import glob
import json
import os

from absl import app, flags

from gsmorph_tf.cli import fail, quiet_logs, run_app
from gsmorph_tf.errors import ConfigError, DatasetError

flags.DEFINE_string("study_dir", "runs/deformation_study", "A run_deformation_study.py output folder "
                    "(study_config.json).")
flags.DEFINE_float("level", None, "Deformation level (brain_max_displacement, voxels) whose runs are timed; default "
                   "the study's main level.")
flags.DEFINE_integer("repeats", 5, "Timed calls per test pair (its time: their median).", lower_bound=1)
flags.DEFINE_bool("syn", True, "Also time SyN (ANTsPy, the baselines extra) on the same pairs, once per pair.")
FLAGS = flags.FLAGS

#: Busy-machine threshold: 1-minute load average per core above which the timings are reported as loaded.
BUSY_LOAD_PER_CORE = 0.5


def study_level(study_dir, level):
    """``(config, level)``: the study's :class:`~gsmorph_tf.config.TrainConfig` from ``study_config.json`` on the
    brain dataset of ``level`` (None: the study's main level).

    Raises:
        ConfigError: no ``study_config.json`` in ``study_dir``, or a level that is not positive.
    """
    from gsmorph_tf.config import TrainConfig
    from gsmorph_tf.studies.deformation_study import StudyPlan

    path = os.path.join(study_dir, "study_config.json")
    if not os.path.isfile(path):
        raise ConfigError("--study_dir=%s: no study_config.json; expected a run_deformation_study.py output folder"
                          % study_dir)
    with open(path, encoding="utf-8") as f:
        plan = StudyPlan(TrainConfig.from_dict(json.load(f)), study_dir)
    level = plan.main_level if level is None else float(level)
    if not level > 0:
        raise ConfigError("--level takes a positive displacement (voxels), got %g" % level)
    return plan.level_config(level), level


def finished_runs(level_dir):
    """The finished learned runs of a study level: ``[(method name, seed, run folder)]`` in folder order, each
    ``<level_dir>/<slug>/seed<k>/`` holding its ``study_run.json`` (whether or not its checkpoint is here).

    Raises:
        ConfigError: ``level_dir`` holds none (naming it).
    """
    runs = []
    for path in sorted(glob.glob(os.path.join(level_dir, "*", "seed*", "study_run.json"))):
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        runs.append((record["method"], int(record["seed"]), os.path.dirname(path)))
    if not runs:
        raise ConfigError("%s holds no finished learned run (<method>/seed<k>/study_run.json); run the study first"
                          % level_dir)
    return runs


def time_pairs(predict, subjects, repeats):
    """Per test pair, the median wall-clock ms of ``repeats`` calls of ``predict(moving[None], fixed[None])``,
    after one untimed warm-up call on the first pair (tracing)."""
    from gsmorph_tf.evaluate.timing import median_ms

    pairs = [(m, f) for subject in subjects for m, f in zip(subject.moving, subject.fixed)]
    predict(pairs[0][0][None], pairs[0][1][None])
    return [median_ms(lambda m=m, f=f: predict(m[None], f[None]), repeats, warmup=0) for m, f in pairs]


def summary_table(rows, machine, load, cores, level, pairs, not_timed=()):
    """The Markdown written to ``inference_times.md``: a row per method, mean +- std over seeds of the runs' median
    ms per pair, and the per-seed medians; then the ``not_timed`` runs (``(method, seed, folder)``: no checkpoint
    on this machine), if any."""
    import numpy as np

    lines = ["Inference ms per pair (batch 1, float32; each run's median over %d test pairs at %g voxels), all "
             "measured in one process: %s; 1-minute load average at the start %.2f on %d cores%s." % (
                 pairs, level, machine, load, cores,
                 " (busy: these timings carry other work)" if load > BUSY_LOAD_PER_CORE * cores else ""),
             "", "| Method | ms / pair | per seed |", "|---|---|---|"]
    for name, runs in rows.items():
        medians = [run["median_ms"] for run in runs]
        spread = "%.1f" % medians[0] if len(medians) == 1 else "%.1f +- %.1f" % (np.mean(medians), np.std(medians))
        lines.append("| %s | %s | %s |" % (name, spread, ", ".join(
            "%.1f" % run["median_ms"] if run["seed"] is None else "seed %d: %.1f" % (run["seed"], run["median_ms"])
            for run in runs)))
    if not_timed:
        lines += ["", "Not timed (no checkpoint on this machine; each run's own time, measured where it trained, is in "
                  "its study_run.json): %s." % ", ".join("%s seed %d" % (name, seed) for name, seed, _ in not_timed)]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    quiet_logs(FLAGS["verbosity"].present)
    try:
        config, level = study_level(FLAGS.study_dir, FLAGS.level)
        from gsmorph_tf.studies import deformation_study
        from gsmorph_tf.train.runs import has_run_checkpoint

        level_dir = os.path.join(FLAGS.study_dir, deformation_study.level_name(level))
        runs = finished_runs(level_dir)
        not_timed = [run for run in runs if not has_run_checkpoint(run[2])]
        runs = [run for run in runs if run not in not_timed]
        syn_dir = os.path.join(level_dir, "syn")
        if FLAGS.syn:
            if not os.path.isfile(os.path.join(syn_dir, "study_run.json")):
                raise ConfigError("%s: no study_run.json; the study has not run SyN at this level (or pass --nosyn)"
                                  % syn_dir)
            from gsmorph_tf.evaluate import baselines

            baselines.require("syn")
        from gsmorph_tf.train import training

        splits = training.load_data(config)
    except (ConfigError, DatasetError, ImportError) as error:
        return fail(error)
    import numpy as np

    from gsmorph_tf.evaluate.evaluation import write_json
    from gsmorph_tf.evaluate.timing import compiled_predictor, machine_description
    from gsmorph_tf.fileio import atomic_write_text
    from gsmorph_tf.studies.paper_comparison import classical_predictor
    from gsmorph_tf.train.runs import load_run_for_inference

    load, cores, machine = os.getloadavg()[0], os.cpu_count(), machine_description()
    if load > BUSY_LOAD_PER_CORE * cores:
        print("warning: 1-minute load average %.2f on %d cores: the machine is busy, timings will carry its load"
              % (load, cores), flush=True)
    for name, seed, folder in not_timed:
        print("not timed: %s, seed %d (%s): no checkpoint on this machine (its record was kept from the machine it "
              "trained on)" % (name, seed, folder), flush=True)
    test = splits["test"]
    rows = {}
    jobs = runs + ([(deformation_study.SYN, None, syn_dir)] if FLAGS.syn else [])
    for done, (name, seed, folder) in enumerate(jobs, 1):
        print("[%d/%d] %s%s: %s" % (done, len(jobs), name, "" if seed is None else ", seed %d" % seed, folder),
              flush=True)
        if seed is None:
            times = time_pairs(classical_predictor("syn"), test, 1)
        else:
            times = time_pairs(compiled_predictor(load_run_for_inference(folder)[1]), test, FLAGS.repeats)
        run = {"seed": seed, "run": folder, "ms_per_pair": times, "median_ms": float(np.median(times))}
        print("    median %.1f ms per pair" % run["median_ms"], flush=True)
        rows.setdefault(name, []).append(run)
    pairs = training.pair_count(test)
    table = summary_table(rows, machine, load, cores, level, pairs, not_timed)
    atomic_write_text(os.path.join(FLAGS.study_dir, "inference_times.md"), table + "\n")
    write_json(os.path.join(FLAGS.study_dir, "inference_times.json"), {
        "level": level, "repeats": FLAGS.repeats, "test_pairs": pairs, "machine": machine, "load_average": load,
        "cores": cores, "methods": rows,
        "not_timed": [{"method": name, "seed": seed, "run": folder} for name, seed, folder in not_timed]})
    print(table)
    return 0


if __name__ == "__main__":
    run_app(main, __name__)
