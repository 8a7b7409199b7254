"""Evaluate a trained model on a dataset split with the paper's metrics.

    python run_eval.py --run_dir=runs/acdc_gsmorph                       # checkpoint of a run, its own data/split
    python run_eval.py --saved_model=runs/demo/export/gsmorph_phantom/1 --dataset=acdc --data_dir=/data/ACDC
    python run_eval.py --run_dir=runs/demo --split=val --output_dir=eval/demo_val

Writes to ``--output_dir`` (default ``<run_dir>/eval_<split>`` or ``eval/``): ``per_subject.csv`` (one row per
subject, or per slice pair with ``--metric_protocol=paper``), ``summary.md`` (mean +- std: Dice %, HD95 mm,
MSE x1e-2, NJD %, Dice per structure) and
``evaluation.json`` (both, plus the settings), each written atomically. The ``Initial`` (identity) row is
always included. With ``--run_dir`` the dataset, crop size and split seed default to the run's own.
``--metric_set=learn2reg`` scores 3D pairs as the Learn2Reg challenge does instead (Dice fraction, HD95 in
voxels, SDlogJ; ``summary.md`` then shows their mean +- std and 30 % column, see gsmorph_tf.evaluate.learn2reg_metrics);
on a ``learn2reg`` dataset ``--l2r_mask`` takes SDlogJ inside the fixed images' ``masksTr/`` and
``--l2r_points=keypoints`` adds TRE at the points of ``keypointsTr/`` (as Learn2Reg scores NLST):

    python run_eval.py --run_dir=runs/nlst --split=val --metric_set=learn2reg --l2r_mask --l2r_points=keypoints

``--instance_steps=N`` refines a copy of the trained network on each test subject's pairs (2D: its slices, one
batch) for N steps of the run's training step before registering them, from the trained weights every time
(:mod:`gsmorph_tf.train.instance`); the rows' ``seconds`` include the refinement.
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
from gsmorph_tf.config import CROP_CENTERS, METRIC_PROTOCOLS, METRIC_SETS, TrainConfig
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
flags.DEFINE_enum("metric_set", "ours", METRIC_SETS, "ours (the paper's metrics, by --metric_protocol) or "
                  "learn2reg (the Learn2Reg challenge's scores of 3D pairs: Dice fraction, HD95 in voxels by the "
                  "surface-distance method, SDlogJ, their 30 % column).")
flags.DEFINE_boolean("l2r_mask", False, "With --metric_set=learn2reg on a learn2reg dataset: SDlogJ only inside "
                     "each fixed image's mask (masksTr/ beside imagesTr/, voxels equal to 1), as Learn2Reg scores "
                     "LungCT, NLST and AbdomenMRCT.")
flags.DEFINE_enum("l2r_points", None, ["keypoints", "landmarks"], "With --metric_set=learn2reg on a learn2reg "
                  "dataset: TRE (mm) at the corresponding points in <this>Tr/ (CSV of voxel coordinates beside "
                  "imagesTr/; keypoints for NLST).")
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


def learn2reg_inputs(subjects):
    """``(masks, points)`` for ``--l2r_mask`` and ``--l2r_points``: a list per subject (read now, so a missing
    file stops the run before any registration), or None when the flag is off.

    Raises:
        ConfigError: either flag without ``--metric_set=learn2reg``, or on a dataset not in the Learn2Reg layout.
        DatasetError: naming a missing or malformed mask or points file.
    """
    if not FLAGS.l2r_mask and FLAGS.l2r_points is None:
        return None, None
    if FLAGS.metric_set != "learn2reg":
        raise ConfigError("--l2r_mask and --l2r_points score by Learn2Reg's rules: add --metric_set=learn2reg")
    pairs = getattr(subjects, "pairs", None)  # learn2reg.EvaluationPairs: (moving, fixed) Scans
    if pairs is None:
        raise ConfigError("--l2r_mask and --l2r_points read masksTr/ and keypointsTr/ beside a Learn2Reg dataset's "
                          "imagesTr/: use --dataset=learn2reg")
    from gsmorph_tf.data import learn2reg_points

    masks = [learn2reg_points.read_fixed_mask(fixed) for _, fixed in pairs] if FLAGS.l2r_mask else None
    points = (None if FLAGS.l2r_points is None else
              [learn2reg_points.read_pair_points(moving, fixed, FLAGS.l2r_points) for moving, fixed in pairs])
    return masks, points


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

    from gsmorph_tf.errors import SavedModelError
    from gsmorph_tf.evaluate import evaluation
    from gsmorph_tf.fileio import atomic_write_text
    from gsmorph_tf.registry import MODELS
    from gsmorph_tf.train import training
    from gsmorph_tf.train.instance import InstanceOptimizer
    from gsmorph_tf.train.runs import load_export_for_training, load_run_for_inference

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
        if FLAGS.metric_set == "learn2reg" and DATASETS[config.dataset].ndim != 3:
            raise ConfigError("--metric_set=learn2reg scores 3D volume pairs; dataset=%s is %dD"
                              % (config.dataset, DATASETS[config.dataset].ndim))
        subjects = subjects_of(training.load_data(config, generate=False), FLAGS.split)
        masks, points = learn2reg_inputs(subjects)
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
                                                  protocol=config.metric_protocol, metric_set=FLAGS.metric_set,
                                                  masks=masks, landmarks=points)
    caption = evaluation.protocol_caption(config.metric_protocol, results[name]["subjects"])
    if FLAGS.metric_set == "learn2reg":
        table = evaluation.learn2reg_table({method: result["learn2reg"] for method, result in results.items()})
    else:
        table = evaluation.format_table({method: result["summary"] for method, result in results.items()})
    table = caption + "\n\n" + table

    crop = evaluation.crop_report(subjects, config.crop_center)
    atomic_write_text(os.path.join(output_dir, "per_subject.csv"), per_subject_csv(results))
    atomic_write_text(os.path.join(output_dir, "summary.md"), table + "\n")
    evaluation.write_json(os.path.join(output_dir, "evaluation.json"),
                          {"source": source, "split": FLAGS.split, "data": json.loads(json.dumps(config.to_dict())),
                           "metric_protocol": config.metric_protocol, "metric_set": FLAGS.metric_set,
                           "l2r_mask": FLAGS.l2r_mask, "l2r_points": FLAGS.l2r_points,
                           "methods": results,
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
