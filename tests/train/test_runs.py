"""Loading a run back (gsmorph_tf.train.runs): the trained weights from its checkpoint, clear errors for what is
missing, and a model's post-training choices (HyperMorph's lambda) applied when it is served."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import train_one_epoch
from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.models import hypermorph
from gsmorph_tf.serve.export import export_run
from gsmorph_tf.train.runs import load_network_weights, load_trained_network, read_run_config, save_network_weights


def test_checkpoint_restores_the_trained_weights(trained_run):
    run_dir, initial, trained = trained_run
    network, config = load_trained_network(str(run_dir))
    restored = {w.name: w.numpy() for w in network.weights}
    assert config.crop_size == 32 and sorted(restored) == sorted(trained)
    for name, value in restored.items():
        np.testing.assert_array_equal(value, trained[name], err_msg=name)
    # Training really moved them (a fresh network would also differ, by its random init): every conv
    # kernel, the flow head included, and the BatchNorm statistics differ from their initial values.
    # 20 kernels (initial conv, 9 blocks x 2 convs, flow head) and 18 BatchNorm moving means.
    moved = [name for name in restored if "kernel" in name or "moving_mean" in name]
    assert "flow/kernel:0" in moved and len(moved) == 38
    for name in moved:
        assert not np.array_equal(restored[name], initial[name]), name


def test_network_weights_kept_apart_from_the_run_load_back_exactly(trained_run, tmp_path):
    run_dir, _, trained = trained_run
    network, config = load_trained_network(str(run_dir))
    save_network_weights(str(tmp_path / "kept"), network, read_run_config(str(run_dir)))
    assert sorted(os.listdir(tmp_path / "kept")) == ["config.json", "network.weights.h5"]  # no temp file left
    kept_config, served = load_network_weights(str(tmp_path / "kept"))
    assert kept_config.crop_size == config.crop_size
    restored = {w.name: w.numpy() for w in served.weights}
    assert sorted(restored) == sorted(trained)
    for name, value in restored.items():
        np.testing.assert_array_equal(value, trained[name], err_msg=name)


def test_network_weights_that_do_not_fit_are_named(trained_run, tmp_path):
    run_dir, _, _ = trained_run
    network, _ = load_trained_network(str(run_dir))
    save_network_weights(str(tmp_path / "kept"), network, read_run_config(str(run_dir)))
    TrainConfig(crop_size=32, model="ulae").save(str(tmp_path / "kept" / "config.json"))
    with pytest.raises(ConfigError, match="network.weights.h5 does not hold the weights of the ulae network"):
        load_network_weights(str(tmp_path / "kept"))
    os.remove(tmp_path / "kept" / "network.weights.h5")
    with pytest.raises(FileNotFoundError, match="network.weights.h5 not found"):
        load_network_weights(str(tmp_path / "kept"))


def test_missing_checkpoint_is_named(tmp_path):
    TrainConfig(crop_size=32).save(str(tmp_path / "config.json"))
    with pytest.raises(FileNotFoundError, match="no checkpoint in %s" % (tmp_path / "checkpoints")):
        load_trained_network(str(tmp_path))


def test_hypermorph_run_is_served_at_its_chosen_lambda(tmp_path):
    network, _ = train_one_epoch(tmp_path, model="hypermorph")
    with pytest.raises(ConfigError, match="%s: no chosen HyperMorph lambda" % (tmp_path / "evaluation.json")):
        export_run(str(tmp_path), str(tmp_path / "models"))
    assert not os.path.exists(tmp_path / "models")
    evaluation.write_json(str(tmp_path / "evaluation.json"), {"chosen": {"hypermorph_lambda": 0.3}})
    path = export_run(str(tmp_path), str(tmp_path / "models"))
    rng = np.random.default_rng(5)
    moving, fixed = rng.random((2, 2, 32, 32, 1), np.float32)
    served = tf.saved_model.load(path).signatures["register_crop"](moving=tf.constant(moving),
                                                                     fixed=tf.constant(fixed))
    outputs = {lam: hypermorph.fixed_lambda_network(network, lam).predict({"moving": moving, "fixed": fixed},
                                                                          verbose=0)
               for lam in (0.3, 0.9)}
    np.testing.assert_allclose(served["flow"].numpy(), outputs[0.3][1], atol=1e-5)
    assert np.abs(outputs[0.9][1] - outputs[0.3][1]).max() > 1e-4  # lambda matters: 0.3 was really used
