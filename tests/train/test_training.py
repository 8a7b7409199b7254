"""The whole run on a tiny phantom: outputs, resume, TensorBoard tags, errors before anything is written."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import PHANTOM
from gsmorph_tf.config import SURGERY_MODES, ConfigError, TrainConfig, check_profile_batch
from gsmorph_tf.data.nifti import DatasetError
from gsmorph_tf.data.subjects import STRUCTURES
from gsmorph_tf.serve.provenance import read_provenance
from gsmorph_tf.train.training import load_data, train_and_evaluate


def tiny_config(tmp_path, **overrides):
    settings = dict(dataset="phantom", data_dir=str(tmp_path / "phantom"), output_dir=str(tmp_path / "run"),
                    crop_size=32, batch_size=4, epochs=1, learning_rate=1e-3)
    settings.update(overrides)
    if settings["dataset"] == "phantom":
        settings.setdefault("dataset_options", PHANTOM)
    return TrainConfig(**settings)


def quiet(config):
    return train_and_evaluate(config, verbose=0, log=lambda *args: None)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One 2-epoch run, then the same command again with --epochs=3 (resumes: exactly one more epoch), its
    first step profiled (--profile_batch=1,1)."""
    tmp_path = tmp_path_factory.mktemp("pipeline")
    first = quiet(tiny_config(tmp_path, epochs=2))
    lines = []
    second = train_and_evaluate(tiny_config(tmp_path, epochs=3, profile_batch=(1, 1)), verbose=0, log=lines.append)
    second["log"] = lines
    return tmp_path, first, second


def test_run_writes_evaluation_checkpoints_and_savedmodel(finished_run):
    tmp_path, first, _ = finished_run
    run = tmp_path / "run"
    with open(run / "evaluation.json") as f:
        report = json.load(f)
    assert report["structures"] == list(STRUCTURES)
    for method in ("Initial", "Model"):
        summary = report["methods"][method]["summary"]
        for key in ("dice_LV", "dice_Myo", "dice_RV", "dice_mean", "hd95_mean", "mse", "njd"):
            assert np.isfinite(summary[key]["mean"]), (method, key)
        assert len(report["methods"][method]["subjects"]) == 1  # 4 subjects -> 2/1/1
    assert report["methods"]["Initial"]["summary"]["njd"]["mean"] == 0.0  # identity never folds
    assert "| Initial |" in (run / "evaluation.md").read_text()
    assert first["export_dir"] == str(run / "export" / "gsmorph_phantom" / "1")
    assert os.path.exists(os.path.join(first["export_dir"], "saved_model.pb"))
    # crop coverage per test subject, and the export's provenance carries the run's settings and test metrics
    assert report["crop"]["rule"] == "labels" and report["crop"]["subjects"] == 1
    (coverage,) = report["crop"]["coverage"].values()
    assert 0.0 <= coverage <= 1.0 and report["crop"]["good"] == int(coverage >= 0.99)
    provenance = read_provenance(first["export_dir"])
    assert provenance["model_name"] == "gsmorph_phantom" and provenance["dataset"] == "phantom"
    stored = json.loads((run / "config.json").read_text())  # written again by the resumed run (epochs 3, profiled)
    assert provenance["training"] == dict(stored, epochs=2, profile_batch=[])
    assert provenance["test_metrics"]["summaries"]["Model"]["dice_mean"]["mean"] == pytest.approx(
        report["methods"]["Model"]["summary"]["dice_mean"]["mean"])
    assert os.listdir(run / "checkpoints")
    assert json.loads((run / "config.json").read_text())["surgery"] == "layerwise"


def test_rerun_resumes_from_last_completed_epoch(finished_run):
    _, first, second = finished_run
    assert len(first["history"]["sim_loss"]) == 2
    assert len(second["history"]["sim_loss"]) == 1  # epochs 1-2 restored, only epoch 3 trained
    assert "Resuming %s: 2 of 3 epochs completed, training epochs 3-3" % (finished_run[0] / "run") in second["log"]
    # Each run exports a new version; none is overwritten.
    assert second["export_dir"].endswith(os.path.join("gsmorph_phantom", "2"))


def test_tensorboard_has_per_step_and_per_epoch_tags(finished_run):
    tmp_path, _, _ = finished_run
    train = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "train"),
                             size_guidance={"tensors": 0, "histograms": 0}).Reload()
    tags = set(train.Tags()["tensors"])
    assert {"step/sim_loss", "step/reg_loss", "step/conflict_fraction", "step/mean_cosine"} <= tags
    # 2 training pairs per subject x 2 subjects / batch 4 = 1 step per epoch, 3 epochs, logged every step
    steps = [event.step for event in train.Tensors("step/sim_loss")]
    assert sorted(set(steps)) == [0, 1, 2]
    assert "step/group_cosine" in tags or "step/group_cosine" in train.Tags()["histograms"]
    validation = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "validation"),
                                  size_guidance={"tensors": 0}).Reload()
    val_tags = set(validation.Tags()["tensors"])
    assert {"epoch_dice", "epoch_dice_LV", "epoch_dice_Myo", "epoch_dice_RV", "epoch_mse", "epoch_njd"} <= val_tags


def test_resuming_with_other_settings_is_refused(finished_run):
    tmp_path, _, _ = finished_run
    with pytest.raises(ConfigError, match="surgery"):
        quiet(tiny_config(tmp_path, epochs=3, surgery="none"))


def test_bad_data_fails_before_output_dir_is_written(tmp_path):
    config = tiny_config(tmp_path, dataset="acdc", data_dir=str(tmp_path / "no_such_dir"))
    with pytest.raises(DatasetError, match="no_such_dir"):
        quiet(config)
    assert not os.path.exists(config.output_dir)


@pytest.mark.parametrize("change, message", [
    (dict(surgery="gradnorm"), "surgery"), (dict(crop_size=40), "multiple of 16"), (dict(lam=-1.0), "lam"),
    (dict(data_dir=""), "data_dir"), (dict(batch_size=0), "batch_size"), (dict(profile_batch=(3, 2)), "profile_batch")])
def test_invalid_settings_fail_before_anything_is_written(tmp_path, change, message):
    config = dataclasses.replace(tiny_config(tmp_path), **change)
    with pytest.raises(ConfigError, match=message):
        quiet(config)
    assert not os.path.exists(config.output_dir)
    assert not glob.glob(str(tmp_path / "phantom" / "*"))


def test_a_batch_larger_than_the_training_pairs_fails_early(tmp_path):
    config = tiny_config(tmp_path, batch_size=64)   # 2 training subjects x 2 slices = 4 pairs
    with pytest.raises(ConfigError, match="batch_size=64 is larger than the 4 training pairs"):
        quiet(config)
    assert not os.path.exists(config.output_dir)


def test_exported_model_reproduces_network(finished_run):
    tmp_path, _, second = finished_run
    loaded = tf.saved_model.load(second["export_dir"])
    serve = loaded.signatures["register_crop"]
    rng = np.random.default_rng(0)
    moving = rng.random((2, 32, 32, 1), np.float32)
    fixed = rng.random((2, 32, 32, 1), np.float32)
    outputs = serve(moving=tf.constant(moving), fixed=tf.constant(fixed))
    assert set(outputs) == {"moved", "flow"}
    assert outputs["moved"].shape == (2, 32, 32, 1) and outputs["flow"].shape == (2, 32, 32, 2)


def test_tensorboard_shows_the_registration_and_hparams(finished_run):
    tmp_path, _, _ = finished_run
    images = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "images"),
                              size_guidance={"tensors": 0}).Reload()
    kinds = ("fixed", "moving", "moved", "difference", "flow", "jacobian")
    assert {"images/%s" % k for k in kinds} | {"flow_magnitude"} <= set(images.Tags()["tensors"])
    for kind in kinds:
        events = images.Tensors("images/%s" % kind)
        assert [e.step for e in events] == [0, 1, 2]  # every epoch, resumed run included
        width, height = (int(v) for v in tf.make_ndarray(events[-1].tensor_proto)[:2])
        assert (width, height) == (32, 32)  # the crop size
    hparams = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "hparams"),
                               size_guidance={"tensors": 0}).Reload()
    assert "_hparams_/session_start_info" in hparams.Tags()["tensors"]
    assert {"test/dice", "test/hd95", "test/mse", "test/njd", "test/dice_LV"} <= set(hparams.Tags()["tensors"])


def test_hparams_dashboard_has_a_declared_config(finished_run):
    """The experiment config the HParams plugin reads: each setting's domain and the list of test metrics."""
    tmp_path, _, _ = finished_run
    hparams = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "hparams"),
                               size_guidance={"tensors": 0}).Reload()
    events = hparams.Tensors(hparams_metadata.EXPERIMENT_TAG)
    assert len(events) == 2  # one per run of the fixture (the first, then the resumed one)
    content = hparams.SummaryMetadata(hparams_metadata.EXPERIMENT_TAG).plugin_data.content
    experiment = hparams_metadata.parse_experiment_plugin_data(content)
    domains = {info.name: info for info in experiment.hparam_infos}
    assert [v.string_value for v in domains["surgery"].domain_discrete.values] == sorted(SURGERY_MODES)
    assert "phantom" in [v.string_value for v in domains["dataset"].domain_discrete.values]
    assert not domains["lam"].HasField("domain_interval") and not domains["lam"].HasField("domain_discrete")
    tags = [info.name.tag for info in experiment.metric_infos]
    assert tags == ["test/dice", "test/hd95", "test/mse", "test/njd", "test/sdlogj",
                    "test/dice_LV", "test/hd95_LV", "test/dice_Myo", "test/hd95_Myo", "test/dice_RV", "test/hd95_RV"]


def test_profile_batch_traces_the_steps_asked_for(finished_run):
    tmp_path, _, _ = finished_run
    traces = glob.glob(str(tmp_path / "run" / "tensorboard" / "plugins" / "profile" / "*" / "*.xplane.pb"))
    assert len(traces) == 1  # only the resumed run profiled (step 1)


@pytest.mark.parametrize("steps, expected", [((), ()), (None, ()), (5, (5, 5)), (("10", "12"), (10, 12)),
                                             ([3, 3], (3, 3))])
def test_profile_batch_forms(steps, expected):
    assert check_profile_batch(steps) == expected
    assert TrainConfig(profile_batch=steps).profile_batch == expected


@pytest.mark.parametrize("steps", [(12, 10), (0, 2), ("a", "b"), (1, 2, 3), -1])
def test_bad_profile_batch_is_refused(steps):
    with pytest.raises(ConfigError, match=r"profile_batch takes one training step or a range 'first,last'"):
        check_profile_batch(steps)


def test_same_seed_same_run(tmp_path):
    """The seed fixes the initial weights too, so two runs of one config agree (methods start alike)."""
    results = []
    for name in ("a", "b"):
        outcome = quiet(tiny_config(tmp_path, output_dir=str(tmp_path / name)))
        results.append(outcome["results"]["Model"]["summary"])
    for key in ("dice_mean", "mse", "hd95_mean"):
        assert results[0][key]["mean"] == pytest.approx(results[1][key]["mean"], rel=1e-4, abs=1e-6), key


def test_crop_center_is_validated_and_motion_crops_the_phantom_from_its_cine(tmp_path):
    with pytest.raises(ConfigError, match="crop_center='heart' is not one of: labels, motion, image"):
        tiny_config(tmp_path, crop_center="heart").validate()
    with pytest.raises(ConfigError, match="crop_center=motion places the crop of 2D cardiac slices; dataset=brain"):
        TrainConfig(dataset="brain", model="ulae", crop_center="motion", data_dir=str(tmp_path)).validate()
    config = tiny_config(tmp_path, crop_center="motion")
    splits = load_data(config)
    subjects = splits["train"] + splits["val"] + splits["test"]
    assert all(0.0 <= subject.crop_coverage <= 1.0 for subject in subjects)
    labelled = {s.subject: s for split in load_data(dataclasses.replace(config, crop_center="labels")).values()
                for s in split}
    assert all(labelled[s.subject].crop_coverage == 1.0 for s in subjects)  # the labels' own centre
    # the motion crops are not the label crops: another centre, the same anatomy around it
    assert any(not np.array_equal(s.fixed_labels, labelled[s.subject].fixed_labels) for s in subjects)


@pytest.mark.parametrize("curve, min_delta, expected", [
    ([], 0.0, (-np.inf, 0)),
    ([50.0], 0.0, (50.0, 0)),
    ([50.0, 52.0, 51.0, 51.5], 0.0, (52.0, 2)),
    ([50.0, 50.4, 50.2, 50.45], 0.5, (50.0, 3)),     # each gain below min_delta: the best stays the first
    ([50.0, 50.4, 51.0, 49.0], 0.5, (51.0, 1)),
    ([50.0, float("nan"), 49.0], 0.0, (50.0, 2)),   # NaN never improves
])
def test_plateau_state_counts_epochs_since_the_best(curve, min_delta, expected):
    from gsmorph_tf.train.training import plateau_state

    assert plateau_state(curve, min_delta) == expected


def test_validation_plateau_stops_as_plateau_state_counts_and_resumes_its_count():
    from gsmorph_tf.train.training import ValidationPlateau, plateau_state

    curve = [40.0, 45.0, 44.0, 46.0, 45.9, 45.5, 45.8, 47.0]
    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])

    def stop_epoch(callback, values, first_epoch=0):
        callback.set_model(model)
        model.stop_training = False
        callback.on_train_begin()
        for epoch, value in enumerate(values, start=first_epoch):
            callback.on_epoch_end(epoch, {"val_dice": value})
            if model.stop_training:
                return epoch
        return None

    # patience 3: epochs 4, 5, 6 (0-based) do not beat 46.0, so it stops after epoch 6
    assert stop_epoch(ValidationPlateau(3), curve) == 6
    assert plateau_state(curve[:7], 0.0)[1] == 3
    # the same run interrupted after epoch 4 and resumed: the count continues from the first part of the curve
    assert stop_epoch(ValidationPlateau(3, previous=curve[:5]), curve[5:], first_epoch=5) == 6
    # a min_delta of 1 point: 46.0 does not count against 45.0, so the wait starts at epoch 1
    assert stop_epoch(ValidationPlateau(3, min_delta=1.0), curve) == 4


def test_early_stopping_ends_a_run_on_its_plateau_and_a_rerun_trains_no_further(tmp_path):
    """min_delta of 100 Dice points: no epoch after the first improves, so patience 1 stops after epoch 2 of 5;
    the same command again finds the run stopped and trains nothing."""
    from gsmorph_tf.train.rundir import epoch_curve
    from gsmorph_tf.train.training import completed_epochs

    config = tiny_config(tmp_path, epochs=5, early_stopping_patience=1, early_stopping_min_delta=100.0,
                         surgery="none", conflict_diagnostics=False)
    first = quiet(config)
    assert len(first["history"]["sim_loss"]) == 2
    assert completed_epochs(config.output_dir) == 2 and len(epoch_curve(config.output_dir)) == 2
    lines = []
    second = train_and_evaluate(config, verbose=0, log=lines.append)
    assert second["history"] == {} and completed_epochs(config.output_dir) == 2
    assert any("stopped after epoch 2 on its validation plateau" in line for line in lines), lines
    # a looser rule may be given to the same run: it trains on from epoch 3
    looser = dataclasses.replace(config, early_stopping_patience=3)
    assert len(quiet(looser)["history"]["sim_loss"]) >= 1


def test_early_stopping_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="early_stopping_patience must be an integer >= 0"):
        tiny_config(tmp_path, early_stopping_patience=-1).validate()
    with pytest.raises(ConfigError, match="early_stopping_min_delta must be >= 0"):
        tiny_config(tmp_path, early_stopping_min_delta=float("nan")).validate()
