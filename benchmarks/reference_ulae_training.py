"""Does the ULAE port train like its reference code? The study's ULAE-net runs against the official code, same data.

    python run_deformation_study.py --methods=ULAE-net --magnitudes= --output_dir=runs/ulae_reference  # or a study
    python benchmarks/reference_ulae_training.py --study_dir=runs/ulae_reference \\
        --reference_dir=/path/to/ULAE-net --reference_python=/path/to/python-with-torch

Takes a ``run_deformation_study.py`` output folder (``--study_dir``: its ``study_config.json`` gives the brain task,
split, steps, learning rate and objective) and, for every seed asked for:

- the port's ULAE-net run at the study's main level: read back from the study (trained into it first, as the
  study would, if the study lacks that seed);
- the reference's run: ``benchmarks/reference_ulae_train.py`` under ``--reference_python`` trains the official
  network, loss and step (wanghaostu/ULAE-net) on the **same volumes** (the study's training subjects, scaled as
  the port reads them), in **the port's own pair order** for that seed (:func:`gsmorph_tf.data.streaming.epoch_pairs`,
  one pair per step), for the same number of steps and learning rate, from its own seeded initialisation.

Both runs' composed fields on the test pairs (and the reference's on the validation pairs after every epoch) are
scored by one evaluator (:func:`gsmorph_tf.evaluate.evaluation.evaluate_flows`: the same warps of images and labels),
so the two differ only by how their networks were trained. Then, in the same run on the same machine, one train step of
each at the study's volume size is timed (``benchmarks/ulae.py`` and ``benchmarks/reference_ulae_step.py``, each in
a fresh process, median of ``--timing_steps`` after one warm-up).

Writes to ``--output_dir`` (default ``<study_dir>/reference``): ``reference_comparison.md`` (mean +- std over seeds,
Welch's test over seeds, a paired Wilcoxon test over test pairs, the step timing), ``reference_comparison.json``
(every run's numbers) and ``reference_curves.png`` (validation Dice and training similarity per epoch). Resumable:
a finished run is read back, an interrupted reference run continues from its last epoch.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import subprocess
import sys

from absl import app, flags

from gsmorph_tf.cli import fail, quiet_logs, run_app
from gsmorph_tf.errors import ConfigError, DatasetError
from reference_glue import check_reference_python, run_streamed  # this folder

flags.DEFINE_string("study_dir", "runs/ulae_reference", "A run_deformation_study.py output folder (study_config.json).")
flags.DEFINE_string("reference_dir", None, "Checkout of wanghaostu/ULAE-net.", required=True)
flags.DEFINE_string("reference_python", None, "Python interpreter with PyTorch, for the reference.", required=True)
flags.DEFINE_string("output_dir", None, "Where the reference runs and the comparison go (default <study_dir>/reference).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds of both implementations.")
flags.DEFINE_integer("threads", os.cpu_count(), "PyTorch intra-op threads of the reference runs and timing.",
                     lower_bound=1)
flags.DEFINE_integer("timing_steps", 5, "Timed train steps of each implementation (median; 0: no timing).",
                     lower_bound=0)
flags.register_validator("seeds", lambda values: bool(values) and all(v.strip().isdigit() for v in values),
                         "--seeds takes comma-separated non-negative integers")
FLAGS = flags.FLAGS
HERE = os.path.dirname(os.path.abspath(__file__))
#: The reference's objective (``ULAE/Train_ULAE.py``): the settings of the study's config that must equal these.
REFERENCE_OBJECTIVE = {"similarity": "multi_ncc", "ncc": "reference", "ncc_windows": (11, 9, 7), "ncc_gamma": 0.5,
                       "reg_penalty": "l2", "lam": 1.0, "warp_padding": "zeros", "ulae_moved": "warp3",
                       "ulae_init": "pytorch", "batch_size": 1, "surgery": "none", "mixed_precision": False}


def check_reference():
    """Fail at once, naming the path, if the reference checkout or its Python is unusable."""
    if not os.path.isfile(os.path.join(FLAGS.reference_dir, "ULAE", "ULAE.py")):
        raise ConfigError("--reference_dir=%s: no ULAE/ULAE.py there; expected a checkout of wanghaostu/ULAE-net"
                          % FLAGS.reference_dir)
    check_reference_python(FLAGS.reference_python)


def study_config(study_dir):
    """The study's main-level ULAE-net :class:`~gsmorph_tf.config.TrainConfig` from ``study_config.json``, checked
    against the reference's objective (:data:`REFERENCE_OBJECTIVE`)."""
    from gsmorph_tf.config import TrainConfig
    from gsmorph_tf.studies import deformation_study

    path = os.path.join(study_dir, "study_config.json")
    if not os.path.isfile(path):
        raise ConfigError("--study_dir=%s: no study_config.json; run run_deformation_study.py --methods=ULAE-net "
                          "--output_dir=%s first" % (study_dir, study_dir))
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    config = TrainConfig.from_dict(saved)
    ulae = next(m for m in deformation_study.STUDY_METHODS if m.name == deformation_study.ULAE)
    config = config.replace_for_model(**dict(ulae.settings))
    differ = ["%s=%s (the reference: %s)" % (k, getattr(config, k), v) for k, v in REFERENCE_OBJECTIVE.items()
              if (tuple(getattr(config, k)) if isinstance(v, tuple) else getattr(config, k)) != v]
    if differ:
        raise ConfigError("%s: the study's ULAE-net objective is not the reference's: %s" % (path, "; ".join(differ)))
    return config


def export_data(splits, config, seed, path):
    """The volumes and the port's pair order for ``seed`` as the ``.npz`` ``reference_ulae_train.py`` reads,
    written by its own writer (a temporary file, then a rename). The order is the port's for that seed:
    ``epoch_pairs(images, seed, epoch, pairs, pairs_per_epoch)`` for each epoch (batch 1: one pair a step)."""
    import numpy as np

    from gsmorph_tf.data import learn2reg, streaming
    from reference_train import save_npz   # this folder

    data = splits["train"].data
    images = np.stack([learn2reg.read_image(scan.image, data.intensity_norm, data.task.shape)
                       for scan in data.splits.train_images]).astype(np.float32)
    order = np.array([list(streaming.epoch_pairs(len(images), seed, epoch, data.splits.train_pairs,
                                                 splits["train"].pairs_per_epoch)) for epoch in range(config.epochs)])
    arrays = {"train_images": images, "train_order": order}
    for split in ("val", "test"):
        pairs = [splits[split][i] for i in range(len(splits[split]))]
        arrays["%s_moving" % split] = np.concatenate([p.moving for p in pairs]).astype(np.float32)
        arrays["%s_fixed" % split] = np.concatenate([p.fixed for p in pairs]).astype(np.float32)
    save_npz(path, **arrays)


def reference_run(seed, config, data_path, folder):
    """Train the reference for one seed unless its fields exist; returns the fields' path."""
    out = os.path.join(folder, "reference.npz")
    if os.path.exists(out):
        return out
    command = [FLAGS.reference_python, os.path.join(HERE, "reference_ulae_train.py"), "--ref", FLAGS.reference_dir,
               "--data", data_path, "--out", out, "--seed", str(seed), "--lr", str(config.learning_rate),
               "--threads", str(FLAGS.threads)]
    run_streamed(command)
    return out


def port_record(seed, folder, splits, protocol):
    """The port's run in ``folder`` scored as the reference's: its composed fields on the test pairs through
    :func:`~gsmorph_tf.evaluate.evaluation.evaluate_flows`; curves from its TensorBoard events."""
    import numpy as np

    from gsmorph_tf.evaluate import evaluation
    from gsmorph_tf.evaluate.timing import compiled_predictor
    from gsmorph_tf.studies import seed_studies
    from gsmorph_tf.train.runs import load_run_for_inference

    _, network = load_run_for_inference(folder)
    predict = compiled_predictor(network)
    test = splits["test"]
    flows = np.concatenate([predict(test[i].moving, test[i].fixed)[1] for i in range(len(test))])
    rows = evaluation.evaluate_flows(test, flows, protocol, folder)
    curve = seed_studies.epoch_curve(folder)
    return {"method": "ULAE-net", "seed": seed, "test": evaluation.summarize(rows),
            "test_subjects": evaluation.per_subject_means(rows), "validation_curve": curve,
            "validation_dice": curve[-1] if curve else float("nan"),
            "sim_loss_curve": seed_studies.epoch_curve(folder, "train", "epoch_sim_loss"), "metric_protocol": protocol}


def reference_record(seed, fields, splits, protocol, source):
    """The reference's run scored by the same evaluator: test fields and every epoch's validation fields."""
    import numpy as np

    from gsmorph_tf.evaluate import evaluation

    rows = evaluation.evaluate_flows(splits["test"], fields["test_flow"], protocol, source)
    curve = [evaluation.summarize(evaluation.evaluate_flows(splits["val"], epoch, protocol, source))["dice_mean"]["mean"]
             for epoch in fields["val_flow"]] if len(splits["val"]) else []
    return {"method": "ULAE-net", "seed": seed, "test": evaluation.summarize(rows),
            "test_subjects": evaluation.per_subject_means(rows), "validation_curve": curve,
            "validation_dice": curve[-1] if curve else float("nan"),
            "sim_loss_curve": [float(v) for v in fields["sim_loss"]], "steps": int(fields["steps"]),
            "median_step_ms": float(np.median(fields["step_ms"])), "metric_protocol": protocol,
            "torch_version": str(fields["torch_version"]), "reference_commit": str(fields["reference_commit"])}


def time_steps(shape):
    """Median train-step ms of each implementation at ``shape``, one after the other in fresh processes."""
    size = "x".join(str(s) for s in shape)
    port = subprocess.run([sys.executable, os.path.join(HERE, "ulae.py"), "--_child=ulae:%s" % size,
                           "--steps=%d" % FLAGS.timing_steps, "--ncc=reference"], capture_output=True, text=True)
    lines = [line for line in port.stdout.splitlines() if line.startswith("RESULT ")]
    if port.returncode or not lines:
        raise RuntimeError("timing the port's step failed: %s" % port.stderr.strip().splitlines()[-1:])
    reference = subprocess.run([FLAGS.reference_python, os.path.join(HERE, "reference_ulae_step.py"), "--ref",
                                FLAGS.reference_dir, "--sizes", size, "--steps", str(FLAGS.timing_steps),
                                "--threads", str(FLAGS.threads)], capture_output=True, text=True)
    steps = [line for line in reference.stdout.splitlines() if line.startswith("reference_ulae ")]
    if reference.returncode or not steps:
        raise RuntimeError("timing the reference's step failed: %s" % reference.stderr.strip().splitlines()[-1:])
    reference_ms = float(steps[0].split("step ")[1].split(" ms")[0])
    port_ms = json.loads(lines[0][7:])["train_step_ms"]
    return {"size": size, "port_ms": port_ms, "reference_ms": reference_ms, "ratio": port_ms / reference_ms,
            "steps": FLAGS.timing_steps, "threads": FLAGS.threads}


def comparison_table(comparison, timing, machine, steps):
    """Markdown: the port and the reference side by side, the tests, the step timing."""
    from gsmorph_tf.studies import lambda_study

    lines = [lambda_study.comparison_table(comparison, "volume").replace("averaged over slices and seeds",
                                                                         "averaged over seeds"), "",
             "Training: %d steps of one pair each, the same pairs in the same order on both sides. Machine: %s."
             % (steps, machine)]
    if timing:
        lines.append("Train step at %s (median of %d, each in a fresh process, the same run): port %.0f ms, reference "
                     "%.0f ms (%d torch threads): port / reference = %.2f."
                     % (timing["size"], timing["steps"], timing["port_ms"], timing["reference_ms"], timing["threads"],
                        timing["ratio"]))
    return "\n".join(lines)


def plot_curves(port, reference, path):
    """Validation Dice and training similarity (multi-window NCC) per epoch, each seed; port solid, reference dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from gsmorph_tf.fileio import atomic_save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for records, style, side in ((port, "-", "port"), (reference, "--", "reference")):
        for index, record in enumerate(records):
            for axis, key in zip(axes, ("validation_curve", "sim_loss_curve")):
                if record.get(key):
                    axis.plot(np.arange(1, len(record[key]) + 1), record[key], style, color=colours[index % 10],
                              label="%s, seed %d" % (side, record["seed"]))
    axes[0].set_ylabel("validation Dice (%)")
    axes[1].set_ylabel("training multi-window NCC (epoch mean)")
    for axis in axes:
        axis.set_xlabel("epoch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_save_figure(fig, path)
    plt.close(fig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    quiet_logs(FLAGS["verbosity"].present)
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.study_dir, "reference")
    try:
        check_reference()
        config = study_config(FLAGS.study_dir)
    except ConfigError as error:
        return fail(error)
    import numpy as np   # TensorFlow and the rest only once the inputs are known to be usable

    from gsmorph_tf.evaluate import evaluation
    from gsmorph_tf.evaluate.timing import machine_description
    from gsmorph_tf.fileio import atomic_write_text
    from gsmorph_tf.studies import deformation_study, lambda_study
    from gsmorph_tf.studies.seed_studies import read_or_make
    from gsmorph_tf.train import training

    try:
        seeds = [int(s) for s in FLAGS.seeds]
        splits = training.load_data(config)
        training.check_batches(config, splits)
    except (ConfigError, DatasetError) as error:
        return fail(error)
    level = float(config.option("brain_max_displacement"))
    method = next(m for m in deformation_study.STUDY_METHODS if m.name == deformation_study.ULAE)
    os.makedirs(output_dir, exist_ok=True)
    port, reference = [], []
    for done, seed in enumerate(seeds, 1):
        print("[%d/%d] ULAE-net, seed %d: the port" % (done, len(seeds), seed), flush=True)
        folder = os.path.join(FLAGS.study_dir, deformation_study.level_name(level), method.slug, "seed%d" % seed)
        deformation_study.run_record(method, seed, level, config, splits, folder)   # trained first if missing
        port.append(read_or_make(os.path.join(output_dir, "port_seed%d.json" % seed),
                                 lambda: port_record(seed, folder, splits, config.metric_protocol)))
        print("[%d/%d] ULAE-net, seed %d: the reference" % (done, len(seeds), seed), flush=True)
        run_folder = os.path.join(output_dir, "seed%d" % seed)

        def make_reference(seed=seed, run_folder=run_folder):
            os.makedirs(run_folder, exist_ok=True)
            data_path = os.path.join(run_folder, "data.npz")
            if not os.path.exists(data_path):
                export_data(splits, config, seed, data_path)
            fields_path = reference_run(seed, config, data_path, run_folder)
            with np.load(fields_path) as fields:
                return reference_record(seed, fields, splits, config.metric_protocol, fields_path)
        reference.append(read_or_make(os.path.join(run_folder, "reference_run.json"), make_reference))
    timing_path = os.path.join(output_dir, "step_timing.json")
    timing = None
    if FLAGS.timing_steps:
        timing = read_or_make(timing_path, lambda: dict(time_steps(config.option("brain_shape")),
                                                        machine=machine_description()))
    comparison = lambda_study.compare_implementations({"ULAE-net": port}, {"ULAE-net": reference}, [method])
    steps = training.pair_count(splits["train"]) * config.epochs
    table = comparison_table(comparison, timing, machine_description(), steps)
    atomic_write_text(os.path.join(output_dir, "reference_comparison.md"), table + "\n")
    evaluation.write_json(os.path.join(output_dir, "reference_comparison.json"),
                          {"config": config.to_dict(), "seeds": seeds, "reference_dir": FLAGS.reference_dir,
                           "comparison": comparison, "timing": timing, "port_runs": port,
                           "reference_runs": reference})
    plot_curves(port, reference, os.path.join(output_dir, "reference_curves.png"))
    print("\n" + table)
    print("\nWrote reference_comparison.md, reference_comparison.json and reference_curves.png to %s" % output_dir)
    return 0


if __name__ == "__main__":
    run_app(main, __name__)
