"""Test-time instance optimisation (gsmorph_tf.train.instance): 0 steps is the plain prediction, steps lower the pair's
similarity loss on a copy (the caller's network untouched), the step is training's surgery step, run_eval and
run_register with --instance_steps, bad values refused."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import re
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, raises_naming
from gsmorph_tf.config import TrainConfig
from gsmorph_tf.core.model import GradientSurgeryModel
from gsmorph_tf.data.preprocessing import scale_to_unit
from gsmorph_tf.errors import ConfigError, SavedModelError
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.register import RegistrationModel, register_volumes
from gsmorph_tf.train import instance
from gsmorph_tf.train.runs import load_export_for_training, load_trained_network
from gsmorph_tf.train.training import load_data

#: The refinement's learning rate in these tests (see the ``run`` fixture).
RATE = 5e-3


@pytest.fixture(scope="module")
def run(phantom_run):
    """conftest's tiny phantom GSMorph run (surgery layerwise, evaluated and exported): its network, config, test
    subject and an InstanceOptimizer of it. The run is one epoch, far from trained: the refinement uses the
    training rate (RATE), which shows its effect in a few steps (the default, 1e-3, is for trained networks)."""
    tmp, config, outcome = phantom_run
    network, config = load_trained_network(config.output_dir)
    subject = load_data(config, generate=False)["test"][0]
    return {"tmp": tmp, "config": config, "outcome": outcome, "network": network, "subject": subject,
            "refiner": instance.InstanceOptimizer(network, config, learning_rate=RATE)}


def mse(a, b):
    return float(np.mean((a - b) ** 2))


def test_zero_steps_is_the_plain_prediction(run):
    subject = run["subject"]
    moved, flow = evaluation.predict_pairs(run["network"], subject.moving, subject.fixed)
    result = run["refiner"].register(subject.moving, subject.fixed, 0)
    assert result.steps == 0 and result.sim_loss is None
    np.testing.assert_array_equal(result.flow, flow)
    np.testing.assert_array_equal(result.moved, moved)


def test_steps_lower_the_pairs_loss_on_a_copy_and_are_deterministic(run):
    subject, network, refiner = run["subject"], run["network"], run["refiner"]
    before = {w.name: w.numpy().copy() for w in network.weights}
    plain, _ = evaluation.predict_pairs(network, subject.moving, subject.fixed)
    first = refiner.register(subject.moving, subject.fixed, 4)
    assert first.steps == 4 and first.sim_loss > 0 and first.seconds > 0
    # The run's similarity (mse) on this pair, before and after: the refinement optimised it.
    assert mse(first.moved, subject.fixed) < 0.9 * mse(plain, subject.fixed)
    assert not np.array_equal(first.flow, evaluation.predict_pairs(network, subject.moving, subject.fixed)[1])
    for weight in network.weights:  # the caller's network: every weight, BatchNorm statistics included
        np.testing.assert_array_equal(weight.numpy(), before[weight.name])
    # BatchNorm of the copy is frozen: its statistics and scale are the trained ones after the steps.
    assert refiner.frozen_batch_norm == 18
    bn = refiner.copy.get_layer("enc0_bn1")
    np.testing.assert_array_equal(bn.moving_mean.numpy(), network.get_layer("enc0_bn1").moving_mean.numpy())
    np.testing.assert_array_equal(bn.gamma.numpy(), network.get_layer("enc0_bn1").gamma.numpy())
    # Each pair starts from the trained weights with a fresh optimiser: the same call gives the same result.
    again = refiner.register(subject.moving, subject.fixed, 4)
    np.testing.assert_array_equal(again.flow, first.flow)
    # ... whatever was refined in between (another pair: the subject's slices reversed)
    refiner.register(subject.moving[::-1], subject.fixed[::-1], 3)
    np.testing.assert_array_equal(refiner.register(subject.moving, subject.fixed, 4).flow, first.flow)


def test_agr_rand_refinements_are_seeded_and_independent_of_the_pair_order(run):
    """agr_rand draws random numbers in every step: a pair's refinement is the same whether or not other pairs were
    refined before it (its draws are seeded by the run's seed and the step counter, reset per pair), and another
    seed draws others."""
    subject, network = run["subject"], run["network"]
    config = run["config"].replace_for_model(surgery="agr_rand")
    refiner = instance.InstanceOptimizer(network, config, learning_rate=RATE, seed=7)
    first = refiner.register(subject.moving, subject.fixed, 3)
    refiner.register(subject.moving[::-1], subject.fixed[::-1], 2)
    np.testing.assert_array_equal(refiner.register(subject.moving, subject.fixed, 3).flow, first.flow)
    fresh = instance.InstanceOptimizer(network, config, learning_rate=RATE, seed=7)
    np.testing.assert_array_equal(fresh.register(subject.moving, subject.fixed, 3).flow, first.flow)
    other = instance.InstanceOptimizer(network, config, learning_rate=RATE, seed=8)
    assert not np.array_equal(other.register(subject.moving, subject.fixed, 3).flow, first.flow)


def test_the_update_is_trainings_surgery_projection(run):
    """One refinement step moves the weights by Adam's first step on project_gradients(g_sim, g_reg) in the run's
    surgery mode (layerwise, over the training model's groups), not on the plain sum of the two gradients."""
    import tensorflow as tf

    from gsmorph_tf.core.surgery import project_gradients

    subject, refiner = run["subject"], run["refiner"]
    assert isinstance(refiner.model, GradientSurgeryModel) and refiner.model.surgery == "layerwise"
    moving, fixed = (tf.constant(images[..., None]) for images in (subject.moving, subject.fixed))
    refiner.reset()
    variables = refiner.copy.trainable_variables
    start = [v.numpy() for v in variables]
    with tf.GradientTape(persistent=True) as tape:
        sim, reg = refiner.model.compute_losses(moving, fixed, training=True)
    sim_grads, reg_grads = tape.gradient(sim, variables), tape.gradient(reg, variables)
    projected = project_gradients(sim_grads, reg_grads, "layerwise", groups=refiner.model.groups)
    refiner.register(subject.moving, subject.fixed, 1)
    rate = refiner.learning_rate

    def adam_first_step(g):  # m_hat = g, v_hat = g^2, epsilon 1e-8 added to sqrt(v_hat)
        g = g.numpy()
        return -rate * g / (np.abs(g) + 1e-8)

    steps = [v.numpy() - w for v, w in zip(variables, start)]
    for step, g in zip(steps, projected):
        np.testing.assert_allclose(step, adam_first_step(g), atol=1e-2 * rate)
    summed = [adam_first_step(s + r) for s, r in zip(sim_grads, reg_grads)]
    assert max(np.abs(step - other).max() for step, other in zip(steps, summed)) > rate  # some signs differ


def test_models_served_otherwise_than_trained_are_refused(run):
    with pytest.raises(ConfigError, match="hypermorph chooses"):
        instance.check_refinable(TrainConfig(model="hypermorph", surgery="none", data_dir="x"))
    with pytest.raises(ConfigError, match="learning rate must be > 0"):
        instance.InstanceOptimizer(run["network"], run["config"], learning_rate=0.0)


def test_an_export_rebuilds_its_network_or_says_why_not(run, tmp_path):
    export_dir = run["outcome"]["export_dir"]
    network, config = load_export_for_training(export_dir)
    assert config == run["config"]
    for restored, trained in zip(network.weights, run["network"].weights):
        np.testing.assert_array_equal(restored.numpy(), trained.numpy())
    # An export written before 2026-12-06 held the Keras model, its variables in the model's checkpoint layout.
    earlier = tmp_path / "earlier"
    shutil.copytree(export_dir, earlier)
    shutil.rmtree(earlier / "variables")
    tf.train.Checkpoint(network=run["network"]).write(str(earlier / "variables" / "variables"))
    network, _ = load_export_for_training(str(earlier))
    for restored, trained in zip(network.weights, run["network"].weights):
        np.testing.assert_array_equal(restored.numpy(), trained.numpy())
    copy = tmp_path / "1"
    shutil.copytree(export_dir, copy)
    path = copy / "assets" / "provenance.json"
    provenance = json.loads(path.read_text())
    path.write_text(json.dumps(dict(provenance, training=None)))
    with raises_naming(copy, "records no training settings", SavedModelError):
        load_export_for_training(str(copy))
    # Settings that rebuild another network: its variables are named as not fitting, in both layouts.
    for folder in (copy, earlier):
        path = folder / "assets" / "provenance.json"
        path.write_text(json.dumps(dict(provenance, training=dict(provenance["training"], unet_width=2))))
        with raises_naming(folder, "variables do not fit the gsmorph network", SavedModelError):
            load_export_for_training(str(folder))


def command(tmp, script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=tmp, capture_output=True,
                          text=True, timeout=600)


def test_run_eval_refines_each_test_subject(run):
    done = command(run["tmp"], "run_eval.py", "--run_dir=%s" % run["config"].output_dir, "--instance_steps=2",
                   "--instance_learning_rate=%g" % RATE)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(run["config"].output_dir, "eval_test_instance2", "evaluation.json")) as f:
        report = json.load(f)
    assert report["instance_steps"] == 2 and report["instance_learning_rate"] == RATE
    name = list(report["methods"])[1]
    assert name == "GSMorph + 2 instance steps"
    plain = run["outcome"]["results"]["Model"]["summary"]["mse"]["mean"]
    assert report["methods"][name]["summary"]["mse"]["mean"] < 0.9 * plain  # refined on its own (mse) loss
    assert "Instance optimisation: 2 step(s)" in done.stdout


def test_run_register_refines_with_the_export_alone(run, tmp_path):
    subject = run["subject"]
    moving, fixed = (np.transpose(images, (1, 2, 0)) for images in (subject.moving, subject.fixed))  # [X, Y, Z]
    for name, array in (("moving", moving), ("fixed", fixed)):
        nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 8.0, 1.0])), str(tmp_path / ("%s.nii.gz" % name)))
    base = ["--saved_model=%s" % run["outcome"]["export_dir"], "--moving=moving.nii.gz", "--fixed=fixed.nii.gz",
            "--crop_center=image"]
    done = command(tmp_path, "run_register.py", *base, "--output_dir=refined", "--instance_steps=2",
                   "--instance_learning_rate=%g" % RATE)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Instance optimisation: 2 step(s)" in done.stdout and "surgery=layerwise" in done.stdout
    refined = nib.load(str(tmp_path / "refined" / "moving_moved.nii.gz")).get_fdata()
    # The same pair registered by the export as it is: the refinement lowered the pair's loss.
    plain = register_volumes(RegistrationModel(run["outcome"]["export_dir"]), moving, fixed, crop_center="image")
    scaled_fixed = scale_to_unit(moving, fixed)[1]
    assert mse(refined, scaled_fixed) < 0.9 * mse(plain.moved, scaled_fixed)


def test_tracking_refines_every_frame_pair(run, tmp_path):
    """gsmorph_tf.register.track with the model run_track.py --instance_steps builds: each frame's registration
    with ED is refined first (every non-ED field changes), and the ED frame carried to ES by the refined field is
    closer to ES than without refinement."""
    from gsmorph_tf.register import load_registration_model
    from gsmorph_tf.register.track import read_cine, track_fields, track_window

    subject = run["subject"]
    ed, es = (np.transpose(images, (1, 2, 0)) for images in (subject.fixed, subject.moving))  # [X, Y, Z]
    frames = np.stack([ed, 0.5 * (ed + es), es], axis=-1).astype(np.float32)  # a 3-frame cine, ED first
    nib.save(nib.Nifti1Image(frames, np.diag([1.5, 1.5, 8.0, 1.0])), str(tmp_path / "cine.nii.gz"))
    cine = read_cine(str(tmp_path / "cine.nii.gz"), 0)
    fields = {}
    for steps in (0, 2):
        model = load_registration_model(run["outcome"]["export_dir"], steps, RATE, log=lambda line: None)
        assert type(model).__name__ == ("RefinedRegistrationModel" if steps else "RegistrationModel")
        fields[steps] = dict(track_fields(model, cine, track_window(model, cine.frames)))
    assert all(np.abs(fields[2][t] - fields[0][t]).max() > 1e-3 for t in (1, 2))
    scaled_ed, scaled_es = (np.transpose(v, (2, 0, 1)) for v in scale_to_unit(ed, es))  # [Z, X, Y] slices
    error = {steps: mse(evaluation.warp_images(scaled_ed, np.transpose(fields[steps][2][..., :2], (2, 0, 1, 3))),
                        scaled_es) for steps in (0, 2)}
    assert error[2] < error[0], error


@pytest.mark.parametrize("args, message", [
    (["--instance_steps=-1"], "-1 is not a non-negative integer"),
    (["--instance_learning_rate=0.1"], "goes with --instance_steps > 0"),
    (["--instance_steps=2", "--instance_learning_rate=0"], "must be > 0"),
])
def test_bad_instance_flags_are_refused(args, message):
    """The flags run_eval.py and run_register.py define (gsmorph_tf.cli.define_instance_flags)."""
    from absl import flags

    from gsmorph_tf.cli import define_instance_flags

    values = flags.FlagValues()
    assert define_instance_flags(values) == ["instance_steps", "instance_learning_rate"]
    with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
        values(["run_register.py", *args])


def test_the_benchmark_chooses_the_learning_rate_on_the_validation_split(run, tmp_path):
    """benchmarks/instance_optimisation.py --split=validation on the shared run: every rate scored on the validation
    subject, the best one named, everything saved under validation keys and read back by a second call."""
    config = run["config"]
    runs_dir = tmp_path / "runs"
    (runs_dir / "gsmorph").mkdir(parents=True)
    os.symlink(config.output_dir, runs_dir / "gsmorph" / "seed0")
    results = tmp_path / "results.json"
    command = [sys.executable, os.path.join(ROOT, "benchmarks", "instance_optimisation.py"), "--methods=gsmorph",
               "--seeds=0", "--steps=0,2", "--split=validation", "--learning_rates=1e-4,1e-2",
               "--runs_dir=%s" % runs_dir, "--results=%s" % results]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "gsmorph seed 0, lr 0.01: 1 validation subjects" in first.stdout
    saved = json.loads(results.read_text())
    assert sorted(saved) == ["validation/gsmorph/0/0/0.0001", "validation/gsmorph/0/0/0.01",
                             "validation/gsmorph/0/2/0.0001", "validation/gsmorph/0/2/0.01"]
    assert {row["split"] for row in saved.values()} == {"validation"}
    # N = 0 is the plain prediction whatever the rate; the named rate is the one with the best Dice at N = 2
    assert saved["validation/gsmorph/0/0/0.0001"]["dice_mean"] == saved["validation/gsmorph/0/0/0.01"]["dice_mean"]
    best = max((1e-4, 1e-2), key=lambda rate: saved["validation/gsmorph/0/2/%g" % rate]["dice_mean"])
    assert re.search(r"GSMorph: best learning rate on the validation split at N=2: %g \(mean Dice [0-9.]+ %% over 1 "
                     r"seeds\)" % best, first.stdout), first.stdout
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert second.returncode == 0 and "traced" not in second.stdout and "On the validation split" in second.stdout
