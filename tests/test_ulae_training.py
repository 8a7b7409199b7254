"""ULAE-net through the whole run: 3D brain pairs with known deformations, and the 2D cardiac phantom."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

import numpy as np
import pytest

from conftest import PHANTOM
from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.runs import load_run_for_inference
from gsmorph_tf.training import train_and_evaluate


def quiet(config):
    return train_and_evaluate(config, verbose=0, log=lambda *a: None)


def test_ulae_on_brain_pairs_reports_tissue_dice_and_end_point_error(tmp_path):
    config = TrainConfig(dataset="brain", data_dir="", output_dir=str(tmp_path / "run"), model="ulae",
                         surgery="none", lam=1.0, similarity="multi_ncc", ncc_windows=(5, 3), learning_rate=1e-4,
                         batch_size=1, epochs=1,
                         dataset_options=dict(brain_pairs=4, brain_shape=(32, 32, 32), brain_max_displacement=3.0))
    outcome = quiet(config)
    summary = outcome["results"]["Model"]["summary"]
    assert {"dice_CSF", "dice_GM", "dice_WM", "epe_mm", "njd"} <= set(summary)
    initial = outcome["results"]["Initial"]["summary"]
    assert initial["epe_mm"]["mean"] > 0.5  # the identity misses the known deformation
    assert np.isfinite(summary["epe_mm"]["mean"])
    with open(os.path.join(config.output_dir, "evaluation.json")) as f:
        report = json.load(f)
    assert report["structures"] == ["CSF", "GM", "WM"] and report["method"] == "ULAE-net"
    assert "EPE (mm)" in outcome["table"]
    # The exported 3D model has the brain volume's shape; the run restores for inference.
    restored_config, network = load_run_for_inference(config.output_dir)
    assert tuple(network.inputs[0].shape[1:]) == (32, 32, 32, 1) and restored_config.model == "ulae"


def test_ulae_with_gradient_surgery_on_the_cardiac_phantom(tmp_path):
    config = TrainConfig(dataset="phantom", data_dir=str(tmp_path / "phantom"), output_dir=str(tmp_path / "run"),
                         model="ulae", surgery="layerwise", similarity="multi_ncc", learning_rate=1e-4,
                         dataset_options=PHANTOM, crop_size=32, batch_size=4,
                         epochs=1)
    outcome = quiet(config)
    assert outcome["export_dir"].endswith(os.path.join("export", "ulae_phantom", "1"))
    assert "conflict_fraction" in outcome["history"]  # surgery ran: the diagnostics are logged
    assert "ULAE-net + gradient surgery (layerwise)" in outcome["table"]


def test_bad_brain_settings_fail_early():
    with pytest.raises(ConfigError, match="multiples of 16"):
        TrainConfig(dataset="brain", dataset_options={"brain_shape": (30, 32, 32)}).validate()
    with pytest.raises(ConfigError, match="hypermorph"):
        TrainConfig(dataset="brain", model="hypermorph", surgery="none").validate()
