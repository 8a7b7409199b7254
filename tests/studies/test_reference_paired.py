"""The paired check of the port against the GSMorph reference (benchmarks/reference_paired.py and
``reference_training.py --paired``): the port starts from the given weights, takes the given batches in the
given order, and the paired table is written and read back. A stand-in replaces the PyTorch reference."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from conftest import PHANTOM, ROOT
from gsmorph_tf.config import TrainConfig
from gsmorph_tf.errors import DatasetError
from gsmorph_tf.models.reference_weights import load_reference_weights, reference_names
from gsmorph_tf.models.networks import PAPER_FEATURES
from gsmorph_tf.studies import lambda_study
from gsmorph_tf.train import training

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import reference_paired as paired  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """``(config, splits, arrays, state)``: the tiny phantom at 32x32 crops, batch 2, VoxelMorph-l settings,
    and a random reference ``state_dict`` for the paper's widths (not what the port would draw itself)."""
    folder = tmp_path_factory.mktemp("paired")
    config = TrainConfig(dataset="phantom", data_dir=str(folder / "phantom"), output_dir=str(folder / "study"),
                         dataset_options=PHANTOM, crop_size=32, batch_size=2, epochs=1, learning_rate=1e-3,
                         split_seed=0, metric_protocol="paper", conflict_diagnostics=False, surgery="none", lam=0.1,
                         warp_padding="zeros")
    splits = training.load_data(config)
    return config, splits, paired.pair_arrays(splits), random_reference_state(config)


def random_reference_state(config, seed=7):
    """A reference ``state_dict`` (PyTorch layout) of random values for ``config``'s network at 32x32."""
    network = training.build_network(config, (32, 32))
    rng = np.random.default_rng(seed)
    state = {}
    for name, layer, attribute, _ in reference_names(PAPER_FEATURES):
        shape = tuple(getattr(network.get_layer(layer), attribute).shape)
        shape = (shape[3], shape[2], shape[0], shape[1]) if attribute == "kernel" else shape
        value = rng.normal(0.0, 0.1, shape) if attribute != "moving_variance" else rng.uniform(0.5, 2.0, shape)
        state[name] = value.astype(np.float32)
    return state


def test_the_port_starts_from_the_given_weights(toy):
    config, _, arrays, state = toy
    model = paired.reference_initialised_model(config, state, (32, 32))
    network = training.build_network(config, (32, 32))
    inputs = [arrays["test_moving"][:2, ..., None], arrays["test_fixed"][:2, ..., None]]
    own = network(inputs, training=False)[1].numpy()
    load_reference_weights(network, state)
    expected = network(inputs, training=False)[1].numpy()
    flow = model.network(inputs, training=False)[1].numpy()
    np.testing.assert_array_equal(flow, expected)
    assert np.abs(own - expected).max() > 1e-3    # the network's own initialisation would predict otherwise


def test_the_port_takes_the_given_batches_in_order(toy):
    config, _, arrays, state = toy
    order = np.array([[[3, 0], [1, 2]]])   # one epoch of two steps
    trained = paired.reference_initialised_model(config, state, (32, 32))
    flows = paired.train_in_order(trained, order, arrays)
    assert flows["val_flow"].shape == (1, len(arrays["val_moving"]), 32, 32, 2)
    assert flows["test_flow"].shape == (len(arrays["test_moving"]), 32, 32, 2) and int(flows["steps"]) == 2

    def explicit(steps):
        model = paired.reference_initialised_model(config, state, (32, 32))
        for index in steps:
            model.train_step((tf.constant(arrays["train_moving"][index][..., None]),
                              tf.constant(arrays["train_fixed"][index][..., None])))
        return weights(model)
    by_hand, swapped, ours = explicit(order[0]), explicit(order[0][::-1]), weights(trained)
    for name, value in ours.items():   # to 5 % of a step (lr 1e-3): fit's graph and eager steps round apart;
        # BatchNorm's moving statistics are no steps: they round with the activations (AVX2 machines: 5.1e-5 of 0.14)
        rtol = 1e-3 if "/moving_" in name else 0
        np.testing.assert_allclose(value, by_hand[name], rtol=rtol, atol=5e-5, err_msg=name)
    kernels = [k for k in ours if k.endswith("kernel:0")]
    assert max(np.abs(ours[k] - swapped[k]).max() for k in kernels) > 5e-4   # the order is not lost


def weights(model):
    """``{name: array}`` of the network's weights, without the conv biases in front of BatchNorm: BatchNorm
    removes them again, so their gradient is round-off and Adam moves them by a random fraction of the rate
    (``benchmarks/step_comparison.py``, ``pre_batchnorm_bias``); the running means follow them by 0.1 of that."""
    return {v.name: v.numpy() for v in model.network.weights
            if not (v.name.startswith(("enc", "dec")) and "_conv" in v.name and v.name.endswith("bias:0"))}


def test_bad_orders_are_refused_naming_the_file(tmp_path):
    path = str(tmp_path / "order.npz")
    np.savez(path, order=np.array([[[0, 5]]]))
    with pytest.raises(DatasetError, match="order.npz: pair indices 0..5, outside the 4 training pairs"):
        paired.read_order(path, 4, 2)
    with pytest.raises(DatasetError, match=r"order.npz: expected integer order \[epochs, steps, 3\]"):
        paired.read_order(path, 8, 3)
    with pytest.raises(DatasetError, match="missing.npz: cannot read the batch order"):
        paired.read_order(str(tmp_path / "missing.npz"), 4, 2)


def record(seed, dice_by_subject, validation_dice=70.0, sim_loss=(1.0, 0.5)):
    rows = [{"subject": s, "dice_mean": d} for s, d in dice_by_subject.items()]
    return {"seed": seed, "test": {"dice_mean": {"mean": float(np.mean(list(dice_by_subject.values()))), "std": 0.0}},
            "test_subjects": rows, "validation_dice": validation_dice, "sim_loss_curve": list(sim_loss)}


def test_paired_table_by_hand():
    method = lambda_study.study_methods((0.1,), ())[0]
    subjects = ["s%d" % i for i in range(6)]
    port = [record(k, {s: 80.0 + i - 0.5 * k * (k - 1) for i, s in enumerate(subjects)}, 70.0 + k, (1.1, 0.5))
            for k in range(4)]
    reference = [record(k, {s: 79.0 + i + 0.3 * k for i, s in enumerate(subjects)}, 71.0 + (k == 3) * 3.0)
                 for k in range(4)]
    row = paired.paired_comparison({method.name: port}, {method.name: reference}, [method])[method.name]
    differences = [1.0 - 0.5 * k * (k - 1) - 0.3 * k for k in range(4)]    # 1, 0.7, -0.6, -2.9
    assert [r["seed"] for r in row["rows"]] == [0, 1, 2, 3]
    np.testing.assert_allclose([r["difference"] for r in row["rows"]], differences)
    assert row["mean_difference"] == pytest.approx(np.mean(differences))
    assert row["median_difference"] == pytest.approx(np.median(differences))
    assert row["seed_wilcoxon"]["p_value"] == pytest.approx(stats.wilcoxon(differences).pvalue)
    assert row["subject_wilcoxon"]["subjects"] == 6
    validation = [-1.0, 0.0, 1.0, -1.0]    # port 70 + k, reference 71 (74 for seed 3)
    np.testing.assert_allclose([r["validation_difference"] for r in row["rows"]], validation)
    assert row["validation"]["mean_difference"] == pytest.approx(-0.25)
    assert row["validation"]["seed_wilcoxon"]["p_value"] == pytest.approx(stats.wilcoxon(validation).pvalue)
    assert row["same_sign"] == 1    # only seed 3: both negative
    assert row["sim_loss_difference"] == pytest.approx(0.05)    # epochs: |1.1 - 1| / 1 and 0, averaged
    table = paired.paired_table({method.name: row}, "paper")
    assert "| VoxelMorph (lam=0.1) | 3 | 79.50 | 82.40 | -2.90 | 73.00 | 74.00 | -1.00 | 5.00 % |" in table
    assert "over 4 seeds mean -0.45" in table and "same sign in 1 of 4 seeds" in table
    with pytest.raises(ValueError, match="loss curves of 2 and 3 epochs"):
        paired.paired_comparison({method.name: port}, {method.name: [record(k, {"s0": 1.0}, 1.0, (1, 1, 1))
                                                                     for k in range(4)]}, [method])


#: Stands in for a Python with PyTorch: answers the import probe; "trains" the reference by writing zero flows,
#: the initial weights saved by the test and a seeded batch order, in reference_train.py's formats.
FAKE_REFERENCE_PYTHON = """#!{python}
import shutil
import sys
import numpy as np
if sys.argv[1] == "-c":
    sys.exit(0)
args = dict(zip(sys.argv[2::2], sys.argv[3::2]))
data, epochs, batch = np.load(args["--data"]), int(args["--epochs"]), int(args["--batch"])
pairs = len(data["train_moving"])
shutil.copy({state!r}, args["--init_out"])
rng = np.random.default_rng(int(args["--seed"]))
order = np.stack([rng.permutation(pairs)[:pairs // batch * batch].reshape(-1, batch) for _ in range(epochs)])
np.savez(args["--order_out"], order=order)
print("epoch %d/%d" % (epochs, epochs))
np.savez(args["--out"], test_flow=np.zeros(data["test_moving"].shape + (2,)),
         val_flow=np.zeros((epochs,) + data["val_moving"].shape + (2,)), sim_loss=np.ones(epochs),
         reg_loss=np.zeros(epochs), steps=np.array(pairs // batch * epochs))
"""


def test_paired_comparison_end_to_end_and_resume(toy, tmp_path):
    config, splits, arrays, state = toy
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    study = dataclasses.replace(config, surgery="layerwise", lam=0.01)   # the methods' settings come from the flags
    (study_dir / "study.json").write_text(json.dumps({"config": study.to_dict()}))
    np.savez(tmp_path / "state.npz", **state)
    python = tmp_path / "fake_python"
    python.write_text(FAKE_REFERENCE_PYTHON.format(python=sys.executable, state=str(tmp_path / "state.npz")))
    python.chmod(0o755)
    reference_dir = tmp_path / "GSMorph"
    (reference_dir / "source").mkdir(parents=True)
    (reference_dir / "source" / "model_func.py").write_text("")
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "reference_training.py"), "--paired",
               "--study_dir=%s" % study_dir, "--reference_dir=%s" % reference_dir, "--reference_python=%s" % python,
               "--seeds=0,1"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "[2/2] VoxelMorph (lam=0.1), seed 1 (paired)" in first.stdout and "port: 1 epochs of 2 steps" in first.stdout
    output = study_dir / "reference"
    saved = json.load(open(output / "paired_comparison.json"))
    assert list(saved["comparison"]) == ["VoxelMorph (lam=0.1)"]   # VoxelMorph-l alone by default
    row = saved["comparison"]["VoxelMorph (lam=0.1)"]
    assert [r["seed"] for r in row["rows"]] == [0, 1] and row["subject_wilcoxon"]["subjects"] == len(splits["test"])
    identity = lambda_study.flows_record(lambda_study.study_methods((0.1,), ())[0], 0,
                                         {"test_flow": np.zeros(arrays["test_moving"].shape + (2,)),
                                          "val_flow": np.zeros((0,)), "sim_loss": [], "reg_loss": [], "steps": 0},
                                         {"test": splits["test"], "val": []}, "paper")
    port_sim_loss = {seed: json.load(open(output / "paired" / "voxelmorph_lam0.1" / ("seed%d" % seed) /
                                          "port_run.json"))["sim_loss_curve"][0] for seed in (0, 1)}
    for r in row["rows"]:
        assert r["reference"] == pytest.approx(identity["test"]["dice_mean"]["mean"])   # zero flows: the identity
        assert r["difference"] == pytest.approx(r["port"] - r["reference"])
        assert r["validation_difference"] == pytest.approx(r["validation_port"] - r["validation_reference"])
        assert r["sim_loss_difference"] == pytest.approx(abs(port_sim_loss[r["seed"]] - 1.0))   # the fake's: 1
    port_run = json.load(open(output / "paired" / "voxelmorph_lam0.1" / "seed1" / "port_run.json"))
    assert port_run["steps"] == 2 and len(port_run["validation_curve"]) == 1
    assert "| VoxelMorph (lam=0.1) | 1 |" in open(output / "paired_comparison.md").read()
    assert (output / "paired_curves_voxelmorph_lam0.1.png").stat().st_size > 0
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "reference: epoch" not in again.stdout and "port: " not in again.stdout   # everything read back
    assert json.load(open(output / "paired_comparison.json"))["comparison"] == saved["comparison"]
    control = subprocess.run(command + ["--threads=2", "--control_threads=1"], capture_output=True, text=True,
                             timeout=600)
    assert control.returncode == 0, control.stdout + control.stderr
    assert control.stdout.count("reference: epoch") == 2 and "port: 1 epochs" not in control.stdout   # controls only
    assert "the reference with 1 thread " in control.stdout
    row = json.load(open(output / "paired_comparison.json"))["comparison"]["VoxelMorph (lam=0.1)"]
    assert [r["control_difference"] for r in row["rows"]] == [0.0, 0.0]   # the fake reference is deterministic
    assert row["control"]["mean_abs_difference"] == 0.0 and row["control"]["abs_wilcoxon"]["seeds"] == 2
    assert row["control"]["port_mean_abs_difference"] == pytest.approx(np.mean([abs(r["difference"])
                                                                                for r in row["rows"]]))
    assert "The reference against itself" in open(output / "paired_comparison.md").read()
    assert (output / "paired" / "voxelmorph_lam0.1" / "seed0" / "reference_threads1_run.json").is_file()


def test_control_runs_are_refused_when_they_cannot_control(tmp_path):
    """--control_threads needs --paired and another thread count than --threads; refused before any work."""
    base = [sys.executable, os.path.join(ROOT, "benchmarks", "reference_training.py"), "--study_dir=%s" % tmp_path,
            "--reference_dir=%s" % tmp_path, "--reference_python=%s" % sys.executable]
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "model_func.py").write_text("")
    for extra, message in ((["--control_threads=1", "--threads=2"], "add --paired"),
                           (["--paired", "--control_threads=2", "--threads=2"], "the same as --threads")):
        result = subprocess.run(base + extra, capture_output=True, text=True, timeout=300)
        assert result.returncode != 0 and message in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_control_must_start_where_the_reference_started(tmp_path):
    np.savez(tmp_path / "reference_init.npz", w=np.zeros(3))
    np.savez(tmp_path / "reference_order.npz", order=np.zeros((1, 2, 2), int))
    np.savez(tmp_path / "again_init.npz", w=np.zeros(3))
    np.savez(tmp_path / "again_order.npz", order=np.zeros((1, 2, 2), int))
    paired.check_same_start(str(tmp_path), "reference", "again")
    np.savez(tmp_path / "again_order.npz", order=np.ones((1, 2, 2), int))
    with pytest.raises(DatasetError, match="again_order.npz: the two runs took different batches"):
        paired.check_same_start(str(tmp_path), "reference", "again")
    np.savez(tmp_path / "again_init.npz", w=np.ones(3))
    with pytest.raises(DatasetError, match="again_init.npz: the two runs started from different initial weights"):
        paired.check_same_start(str(tmp_path), "reference", "again")
