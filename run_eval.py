"""Evaluate a trained model on a dataset split with the paper's metrics.

    python run_eval.py --run_dir=runs/acdc_gsmorph                       # checkpoint of a run, its own data/split
    python run_eval.py --saved_model=runs/demo/export/gsmorph_phantom/1 --dataset=acdc --data_dir=/data/ACDC
    python run_eval.py --run_dir=runs/demo --split=val --output_dir=eval/demo_val

Writes to ``--output_dir`` (default ``<run_dir>/eval_<split>`` or ``eval/``): ``per_subject.csv`` (one row per
subject, or per slice pair with ``--metric_protocol=paper``), ``summary.md`` (mean +- std: Dice %, HD95 mm,
MSE x1e-2, NJD %, Dice per structure) and
``evaluation.json`` (both, plus the settings), each written atomically. The ``Initial`` (identity) row is
always included. With ``--run_dir`` the dataset, crop size and split seed default to the run's own.

``--instance_steps=N`` refines a copy of the trained network on each test subject's pairs (2D: its slices, one
batch) for N steps of the run's training step before registering them, from the trained weights every time
(:mod:`gsmorph_tf.instance`); the rows' ``seconds`` include the refinement.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import collections.abc
import csv
import dataclasses
import io
import json
import os

from absl import app, flags

from gsmorph_tf.cli import define_instance_flags, fail, quiet_logs, run_app
from gsmorph_tf.config import CROP_CENTERS, METRIC_PROTOCOLS, TrainConfig
from gsmorph_tf.errors import ConfigError, DatasetError
from gsmorph_tf.registry import DATASETS

flags.DEFINE_string("run_dir", None, "Output dir of run_train.py: evaluates its last checkpoint.")
flags.DEFINE_string("saved_model", None, "A SavedModel version folder (…/export/<model>_<dataset>/<N>).")
flags.mark_flags_as_mutual_exclusive(["run_dir", "saved_model"], required=True)
flags.DEFINE_enum("dataset", None, DATASETS.names(), "Dataset (default: the run's).")
flags.DEFINE_string("data_dir", None, "Dataset root (default: the run's).")
flags.DEFINE_enum("split", "test", ["train", "val", "test", "all"], "Which subjects to evaluate.")
flags.DEFINE_integer("crop_size", None, "Crop size (default: the run's, else 128).", lower_bound=16)
flags.DEFINE_integer("seed", None, "Split seed (default: the run's, else 0).")
flags.DEFINE_integer("batch_size", 32, "Pairs per inference batch.", lower_bound=1)
flags.DEFINE_enum("metric_protocol", None, METRIC_PROTOCOLS, "volume (a row per subject) or paper (a row per 2D "
                  "slice pair); default: the run's, else volume.")
flags.DEFINE_enum("crop_center", None, CROP_CENTERS, "Where the crop is centred: labels (ED label centroid, the "
                  "paper protocol), motion (smoothed temporal std of the cine: label-free, as deployed) or image "
                  "(image centre); default: the run's, else labels. Per-subject crop coverage goes to "
                  "evaluation.json.")
flags.DEFINE_string("output_dir", None, "Where the tables go (default <run_dir>/eval_<split>, with --instance_steps=N "
                    "<run_dir>/eval_<split>_instanceN; else eval/).")
for _name in define_instance_flags():
    flags.declare_key_flag(_name)  # listed by --help with the flags above
FLAGS = flags.FLAGS


def data_config(run_config):
    """The TrainConfig used to read the data: the run's, overridden by the flags given."""
    config = run_config or TrainConfig(data_dir="")
    overrides = {name: getattr(FLAGS, name) for name in ("dataset", "data_dir", "crop_size", "seed", "metric_protocol",
                                                        "crop_center")
                 if getattr(FLAGS, name) is not None}
    if overrides.get("dataset", config.dataset) != config.dataset:
        overrides["dataset_options"] = {}  # another dataset: its own default settings
    config = dataclasses.replace(config, **overrides)
    if not config.data_dir:
        raise ConfigError("--data_dir is required with --saved_model")
    return config.validate()


def subjects_of(splits, split):
    """The subjects (or pairs) of ``split`` (``all``: every split, in memory datasets only).

    Raises:
        ConfigError: ``train`` or ``all`` on a dataset that streams its training pairs (no list to evaluate).
    """
    names = ("train", "val", "test") if split == "all" else (split,)
    if any(not isinstance(splits[name], collections.abc.Sequence) for name in names):
        raise ConfigError("--split=%s: this dataset streams its training pairs from disk (drawn on the fly, not a "
                          "list of subjects to evaluate); use --split=val or --split=test" % split)
    return [subject for name in names for subject in splits[name]] if split == "all" else splits[split]


def per_subject_csv(results):
    """CSV text: one row per (method, subject), every metric column."""
    rows = [dict(method=method, **row) for method, result in results.items() for row in result["subjects"]]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    quiet_logs(FLAGS["verbosity"].present)
    import tensorflow as tf

    from gsmorph_tf import evaluation, training
    from gsmorph_tf.errors import SavedModelError
    from gsmorph_tf.fileio import atomic_write_text
    from gsmorph_tf.instance import InstanceOptimizer
    from gsmorph_tf.registry import MODELS
    from gsmorph_tf.runs import load_export_for_training, load_run_for_inference

    try:
        refined = None  # (network, its run config) to refine per subject, with --instance_steps
        if FLAGS.run_dir:
            run_config, network = load_run_for_inference(FLAGS.run_dir)
            predict = evaluation.keras_predictor(network, FLAGS.batch_size)
            source = FLAGS.run_dir
            refined = network, run_config
        else:
            run_config = None
            predict = evaluation.savedmodel_predictor(FLAGS.saved_model, FLAGS.batch_size)
            source = FLAGS.saved_model
            if FLAGS.instance_steps:
                refined = load_export_for_training(FLAGS.saved_model)
        if FLAGS.instance_steps:
            refiner = InstanceOptimizer(*refined, learning_rate=FLAGS.instance_learning_rate)
            predict = refiner.predictor(FLAGS.instance_steps, FLAGS.batch_size)
        config = data_config(run_config)
        subjects = subjects_of(training.load_data(config, generate=False), FLAGS.split)
    except (ConfigError, DatasetError, FileNotFoundError, SavedModelError) as error:
        return fail(error)

    folder = "eval_%s" % FLAGS.split + ("_instance%d" % FLAGS.instance_steps if FLAGS.instance_steps else "")
    output_dir = FLAGS.output_dir or (os.path.join(FLAGS.run_dir, folder) if FLAGS.run_dir else "eval")
    os.makedirs(output_dir, exist_ok=True)
    print("Evaluating %s on %d %s subjects of %s" % (source, len(subjects), FLAGS.split, config.data_dir))
    bar = tf.keras.utils.Progbar(len(subjects), unit_name="subject")
    # A SavedModel is named by its last two path parts, <model>/<version>, as TF Serving lays them out.
    name = (MODELS.load(run_config.model).method_name(run_config) if run_config
            else "/".join(os.path.abspath(source).split(os.sep)[-2:]))
    if FLAGS.instance_steps:
        name += " + %d instance steps" % FLAGS.instance_steps
        print("Instance optimisation: %d step(s) of the run's training step per subject (surgery=%s, learning rate "
              "%g, BatchNorm frozen), from the trained weights each time"
              % (FLAGS.instance_steps, refiner.config.surgery, refiner.learning_rate))
    results = evaluation.evaluate_against_initial(predict, subjects, name, progress=lambda done, _: bar.update(done),
                                                  protocol=config.metric_protocol)
    table = (evaluation.protocol_caption(config.metric_protocol, results[name]["subjects"]) + "\n\n"
             + evaluation.format_table({method: result["summary"] for method, result in results.items()}))

    crop = evaluation.crop_report(subjects, config.crop_center)
    atomic_write_text(os.path.join(output_dir, "per_subject.csv"), per_subject_csv(results))
    atomic_write_text(os.path.join(output_dir, "summary.md"), table + "\n")
    evaluation.write_json(os.path.join(output_dir, "evaluation.json"),
                          {"source": source, "split": FLAGS.split, "data": json.loads(json.dumps(config.to_dict())),
                           "metric_protocol": config.metric_protocol, "methods": results,
                           "instance_steps": FLAGS.instance_steps,
                           "instance_learning_rate": refiner.learning_rate if FLAGS.instance_steps else None,
                           "crop": crop})
    if crop is not None:
        print("Crops (crop_center=%s): %d of %d subjects keep >= %.0f %% of their ED label voxels"
              % (crop["rule"], crop["good"], crop["subjects"], 100 * crop["good_threshold"]))
    print("\n%s split, %d subjects:\n\n%s\n" % (FLAGS.split, len(subjects), table))
    print("Wrote per_subject.csv, summary.md and evaluation.json to %s" % output_dir)
    return 0


def run():
    """Console-script entry point (``gsmorph-eval``)."""
    run_app(main, __name__)


if __name__ == "__main__":
    run()
