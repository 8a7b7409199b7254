"""ULAE-net through the whole run: the 3D brain task (in the Learn2Reg layout), and the 2D cardiac phantom."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

import pytest

from conftest import PHANTOM
from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.train.runs import load_run_for_inference
from gsmorph_tf.train.training import train_and_evaluate


def quiet(config, export=True):
    return train_and_evaluate(config, verbose=0, log=lambda *a: None, export=export)


def test_ulae_on_the_brain_task_goes_through_the_learn2reg_layout(tmp_path):
    config = TrainConfig(dataset="brain", data_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "run"),
                         model="ulae", surgery="none", lam=1.0, similarity="multi_ncc", ncc_windows=(5, 3),
                         learning_rate=1e-4, batch_size=1, epochs=1, warp_padding="zeros",  # the paper flagfiles'
                         dataset_options=dict(brain_subjects=7, brain_shape=(16, 16, 16), brain_max_displacement=2.0,
                                              pairs_per_epoch=2))
    outcome = quiet(config)
    summary = outcome["results"]["Model"]["summary"]
    assert {"dice_CSF", "dice_GM", "dice_WM", "hd95_GM", "njd", "sdlogj"} <= set(summary)
    assert outcome["history"]["val_dice_GM"][0] > 0  # validation on registration_val, named structures
    # the subjects were written in the Learn2Reg layout under data_dir, and read back by its loader
    (written,) = (tmp_path / "data").iterdir()
    assert written.name == "MNIBrain_v1_7subjects_16x16x16_disp2_seed0"
    assert (written / "MNIBrain_dataset.json").is_file() and len(list((written / "imagesTr").iterdir())) == 7
    with open(os.path.join(config.output_dir, "evaluation.json")) as f:
        report = json.load(f)
    assert report["structures"] == ["CSF", "GM", "WM"] and report["method"] == "ULAE-net"
    assert report["data"]["test"]["source"] == "held_out_training" and report["data"]["train"]["images"] == 2
    assert "Test split: a seeded hold-out of 2 training subjects" in outcome["table"]
    # The run is exported (ULAE-net's SavedModel, tested here in 3D) and restores for inference at the volume's shape.
    assert outcome["export_dir"].endswith(os.path.join("export", "ulae_brain", "1"))
    assert os.path.isfile(os.path.join(outcome["export_dir"], "saved_model.pb"))
    restored_config, network = load_run_for_inference(config.output_dir)
    assert tuple(network.inputs[0].shape[1:]) == (16, 16, 16, 1) and restored_config.model == "ulae"


def test_ulae_with_gradient_surgery_on_the_cardiac_phantom(tmp_path):
    config = TrainConfig(dataset="phantom", data_dir=str(tmp_path / "phantom"), output_dir=str(tmp_path / "run"),
                         model="ulae", surgery="layerwise", similarity="multi_ncc", learning_rate=1e-4,
                         dataset_options=PHANTOM, crop_size=32, batch_size=4,
                         epochs=1)
    # Without the SavedModel (the 3D test above exports ULAE-net): the suite's time goes to the surgery.
    outcome = quiet(config, export=False)
    assert outcome["export_dir"] is None and not (tmp_path / "run" / "export").exists()
    assert "conflict_fraction" in outcome["history"]  # surgery ran: the diagnostics are logged
    assert "ULAE-net + gradient surgery (layerwise)" in outcome["table"]


def test_bad_brain_settings_fail_early():
    with pytest.raises(ConfigError, match="multiples of 16"):
        TrainConfig(dataset="brain", data_dir="x", dataset_options={"brain_shape": (30, 32, 32)}).validate()
    with pytest.raises(ConfigError, match="hypermorph"):
        TrainConfig(dataset="brain", data_dir="x", model="hypermorph", surgery="none").validate()
