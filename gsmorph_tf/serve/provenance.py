"""What produced an exported model: the JSON asset every SavedModel carries (``assets/provenance.json``).

Light to import (no TensorFlow), so an entry point can print it at once. Contents (:func:`build_provenance`)::

    format              1
    model_name          the TF Serving model name, e.g. "gsmorph_acdc"
    exported_utc        ISO 8601 time of the export
    dataset, split_seed the training data and the seed of its subject split
    crop                {"size": [h, w], "training_rule": the run's crop_center, "serving_rule": "motion" (2D) or
                        null (3D: serving_default takes the network's input as it is)}
    signatures          {name: one line on its contract}
    training            every TrainConfig setting of the run
    test_metrics        the run's evaluation.json summaries (mean +- std of every metric, Initial and the
                        model), its metric protocol, method name and crop coverage; null if not evaluated
    versions            python, tensorflow, tf-keras, voxelmorph, neurite, numpy, gsmorph-tf
"""
import datetime
import importlib.metadata
import json
import os
import platform

PROVENANCE_FILE = "provenance.json"

#: Distributions whose versions an export records.
_LIBRARIES = ("tensorflow", "tf-keras", "voxelmorph", "neurite", "numpy", "scipy", "gsmorph-tf")


def default_model_name(config):
    """The TF Serving model name of a run's export: model and dataset, e.g. ``gsmorph_acdc``."""
    return "%s_%s" % (config.model, config.dataset)


def library_versions():
    """``{"python": ..., distribution: version or None}`` for the libraries a model depends on."""
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def evaluation_summary(evaluation):
    """The part of an evaluation dict (as written to ``evaluation.json``) an export keeps: summaries, not rows."""
    if not evaluation:
        return None
    crop = evaluation.get("crop")
    return {"metric_protocol": evaluation.get("metric_protocol"), "method": evaluation.get("method"),
            "chosen": evaluation.get("chosen"),
            "summaries": {name: result["summary"] for name, result in evaluation.get("methods", {}).items()},
            "crop_coverage": None if not crop else {key: crop[key] for key in ("rule", "good", "subjects",
                                                                               "good_threshold")}}


def build_provenance(config, model_name, inshape, signatures, evaluation=None):
    """The provenance dict of an export (see the module docstring).

    Args:
        config: the run's :class:`~gsmorph_tf.config.TrainConfig`.
        model_name: the TF Serving model name.
        inshape: the network's spatial input shape, e.g. ``(128, 128)``.
        signatures: ``{signature name: description}``.
        evaluation: the run's evaluation dict (``evaluation.json``), or None.
    """
    return {"format": 1, "model_name": model_name,
            "exported_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "dataset": config.dataset, "split_seed": config.data_seed,
            "crop": {"size": list(inshape), "training_rule": config.crop_center if len(inshape) == 2 else None,
                     "serving_rule": "motion" if len(inshape) == 2 else None},
            "signatures": dict(signatures), "training": json.loads(json.dumps(config.to_dict())),
            "test_metrics": evaluation_summary(evaluation), "versions": library_versions()}


def read_provenance(export_dir):
    """The provenance dict of a SavedModel version folder, or None for an export written without one."""
    path = os.path.join(export_dir, "assets", PROVENANCE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def format_provenance(provenance):
    """A few lines for a terminal: what the model was trained on, how, its test scores and the versions."""
    if provenance is None:
        return "Provenance: none recorded (exported by an earlier version)"
    training = provenance.get("training")
    crop = provenance.get("crop") or {}
    lines = ["Provenance (%s):" % PROVENANCE_FILE,
             "  model %s, exported %s" % (provenance.get("model_name"), provenance.get("exported_utc", "-"))]
    if training:
        lines.append("  trained on %s (split seed %s): model=%s surgery=%s epochs=%s lr=%s batch=%s seed=%s"
                     % (provenance.get("dataset"), provenance.get("split_seed"), training.get("model"),
                        training.get("surgery"), training.get("epochs"), training.get("learning_rate"),
                        training.get("batch_size"), training.get("seed")))
    else:
        lines.append("  training: not recorded (exported from a network in memory, not from a run)")
    lines.append("  crop %s: training centred on %s, serving_default on %s"
                 % ("x".join(str(s) for s in crop.get("size", [])), crop.get("training_rule"), crop.get("serving_rule")))
    metrics = provenance.get("test_metrics")
    if metrics:
        for name, summary in metrics["summaries"].items():
            lines.append("  test (%s protocol) %s: Dice %.2f %%, HD95 %.2f mm, NJD %.2f %%"
                         % (metrics["metric_protocol"], name, _mean(summary, "dice_mean"), _mean(summary, "hd95_mean"),
                            _mean(summary, "njd")))
    else:
        lines.append("  test metrics: none (the run was not evaluated)")
    versions = provenance.get("versions") or {}
    lines.append("  versions: " + ", ".join("%s %s" % (name, version) for name, version in versions.items()))
    return "\n".join(lines)


def _mean(summary, key):
    value = (summary.get(key) or {}).get("mean")
    return float("nan") if value is None else value
