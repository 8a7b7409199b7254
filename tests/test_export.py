"""SavedModel export: TF Serving layout, versions, both signatures where only TensorFlow is importable,
export from a training run's checkpoint (the ``trained_run`` fixture of conftest), and run_export.py."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf import evaluation
from gsmorph_tf.export import existing_versions, export_run, export_saved_model
from gsmorph_tf.networks import build_gsmorph_unet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter: our packages and voxelmorph's stack are made unimportable, as on a serving host.
STANDALONE_LOADER = textwrap.dedent("""
    import importlib.abc, os, sys
    BLOCKED = {"gsmorph_tf", "ulae_tf", "voxelmorph", "neurite", "tf_keras"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError("blocked on the serving host: " + name)
    sys.meta_path.insert(0, Block())
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    import numpy as np
    import tensorflow as tf
    export_dir, inputs, outputs = sys.argv[1:4]
    data = np.load(inputs)
    loaded = tf.saved_model.load(export_dir)
    served = loaded.signatures["serving_default"](moving=tf.constant(data["moving"]), fixed=tf.constant(data["fixed"]))
    warped = loaded.signatures["warp"](image=tf.constant(data["image"]), flow=tf.constant(data["flow"]))
    np.savez(outputs, **{k: v.numpy() for k, v in {**served, **warped}.items()})
    print("loaded-without:", sorted(m for m in BLOCKED if m in sys.modules))
""")


def clean_env():
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}


@pytest.fixture(scope="module")
def network():
    net = build_gsmorph_unet((32, 32))
    # A non-trivial flow head, so outputs are not just the identity.
    head = net.get_layer("flow").kernel
    head.assign(np.random.default_rng(0).normal(0, 0.05, head.shape).astype(np.float32))
    return net


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, network):
    return export_saved_model(network, str(tmp_path_factory.mktemp("export") / "gsmorph"))


def test_versions_are_integers_never_overwritten(tmp_path, network):
    base = tmp_path / "models" / "gsmorph"
    assert export_saved_model(network, str(base)) == str(base / "1")
    assert export_saved_model(network, str(base)) == str(base / "2")
    assert existing_versions(str(base)) == [1, 2]
    with pytest.raises(FileExistsError, match="never overwritten"):
        export_saved_model(network, str(base), version=2)
    assert sorted(os.listdir(base)) == ["1", "2"]  # no temp folder left behind
    assert os.path.exists(base / "1" / "saved_model.pb") and os.path.isdir(base / "1" / "variables")


def test_savedmodel_runs_where_only_tensorflow_is_importable(tmp_path, network, export_dir):
    rng = np.random.default_rng(1)
    moving = rng.random((3, 32, 32, 1), np.float32)
    fixed = rng.random((3, 32, 32, 1), np.float32)
    moved, flow = network.predict({"moving": moving, "fixed": fixed}, verbose=0)
    # warp inputs: a label map (integers stored as float) and a larger field, so nearest and linear differ
    labels = rng.integers(0, 4, (3, 32, 32, 1)).astype(np.float32)
    big_flow = (flow * 20 + rng.normal(0, 1.5, flow.shape)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", moving=moving, fixed=fixed, image=labels, flow=big_flow)
    script = tmp_path / "load.py"
    script.write_text(STANDALONE_LOADER)
    done = subprocess.run([sys.executable, str(script), export_dir, str(tmp_path / "inputs.npz"),
                           str(tmp_path / "outputs.npz")], env=clean_env(), cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded-without: []" in done.stdout
    served = np.load(tmp_path / "outputs.npz")
    assert np.abs(flow).max() > 1e-3  # the comparison below is not between two zero fields
    np.testing.assert_allclose(served["moved"], moved, atol=1e-5)
    np.testing.assert_allclose(served["flow"], flow, atol=1e-5)
    # warp: the training layer (linear) and the evaluation's label warp (nearest) give the same numbers
    linear = vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij")([labels, big_flow]).numpy()
    nearest = evaluation.warp_labels(labels[..., 0].astype(np.int32), big_flow)
    np.testing.assert_allclose(served["warped_linear"], linear, atol=1e-5)
    np.testing.assert_array_equal(served["warped_nearest"][..., 0], nearest)
    assert set(np.unique(served["warped_nearest"])) <= {0.0, 1.0, 2.0, 3.0}
    assert not np.allclose(served["warped_nearest"], labels)  # the field really moved labels
    assert not np.allclose(served["warped_linear"], served["warped_nearest"])  # two interpolations


def test_warp_signature_reproduces_the_networks_moved_image(export_dir):
    loaded = tf.saved_model.load(export_dir)
    rng = np.random.default_rng(2)
    moving = tf.constant(rng.random((2, 32, 32, 1), np.float32))
    fixed = tf.constant(rng.random((2, 32, 32, 1), np.float32))
    served = loaded.signatures["serving_default"](moving=moving, fixed=fixed)
    warped = loaded.signatures["warp"](image=moving, flow=served["flow"])
    np.testing.assert_allclose(warped["warped_linear"].numpy(), served["moved"].numpy(), atol=1e-6)


def test_saved_model_cli_lists_both_signatures(export_dir):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    done = subprocess.run([cli, "show", "--all", "--dir", export_dir], env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "signature_def['serving_default']" in out and "signature_def['warp']" in out
    serving = out.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    warp = out.split("signature_def['warp']")[1].split("signature_def[")[0]
    for name in ("inputs['moving']", "inputs['fixed']", "outputs['moved']", "outputs['flow']"):
        assert name in serving
    for name in ("inputs['image']", "inputs['flow']", "outputs['warped_linear']", "outputs['warped_nearest']"):
        assert name in warp
    assert "shape: (-1, 32, 32, 2)" in warp  # the flow input: [None, H, W, ndim]


def test_export_run_serves_the_trained_network(tmp_path, trained_run):
    run_dir, _, trained = trained_run
    path = export_run(str(run_dir), str(tmp_path / "models"))
    assert path == str(tmp_path / "models" / "gsmorph" / "1")
    reference = build_gsmorph_unet((32, 32))
    for weight in reference.weights:
        weight.assign(trained[weight.name])
    rng = np.random.default_rng(4)
    moving, fixed = rng.random((2, 2, 32, 32, 1), np.float32)
    served = tf.saved_model.load(path).signatures["serving_default"](moving=tf.constant(moving),
                                                                       fixed=tf.constant(fixed))
    moved, flow = reference.predict({"moving": moving, "fixed": fixed}, verbose=0)
    np.testing.assert_allclose(served["flow"].numpy(), flow, atol=1e-5)
    np.testing.assert_allclose(served["moved"].numpy(), moved, atol=1e-5)


def run_export(cwd, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "run_export.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_run_export_cli_writes_versions_and_refuses_overwrites(tmp_path, trained_run):
    run_dir, _, _ = trained_run
    base = tmp_path / "models"
    done = run_export(tmp_path, "--run_dir=%s" % run_dir, "--export_base=%s" % base, "--model_name=heart",
                      "--version=7")
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(base / "heart" / "7") in done.stdout
    assert sorted(os.listdir(base / "heart")) == ["7"]
    assert os.path.isfile(base / "heart" / "7" / "saved_model.pb")
    again = run_export(tmp_path, "--run_dir=%s" % run_dir, "--export_base=%s" % base, "--model_name=heart",
                       "--version=7")
    assert again.returncode == 2
    assert "error:" in again.stderr and "never overwritten" in again.stderr and "Traceback" not in again.stderr
    assert sorted(os.listdir(base / "heart")) == ["7"]


def test_run_export_cli_names_a_missing_run(tmp_path):
    done = run_export(tmp_path, "--run_dir=%s" % (tmp_path / "nowhere"), "--export_base=%s" % (tmp_path / "m"))
    assert done.returncode == 2
    assert "error:" in done.stderr and str(tmp_path / "nowhere" / "config.json") in done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "m")
