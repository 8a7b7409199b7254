"""SavedModel export: TF Serving layout, versions, the three signatures where only TensorFlow is importable
(serving_default on a raw 217x181 slice pair), provenance and warm-up files, export from a training run's
checkpoint (the ``trained_run`` fixture of conftest), and run_export.py."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
import voxelmorph as vxm
from tensorflow_serving.apis import prediction_log_pb2

from gsmorph_tf.data.preprocessing import crop_or_pad, motion_center, scale_to_unit
from gsmorph_tf.evaluate import evaluation
from gsmorph_tf.models.networks import build_gsmorph_unet
from gsmorph_tf.serve.export import WARMUP_FILE, existing_versions, export_run, export_saved_model
from gsmorph_tf.serve.provenance import read_provenance

from conftest import ROOT

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
    served = loaded.signatures["register_crop"](moving=tf.constant(data["moving"]), fixed=tf.constant(data["fixed"]))
    warped = loaded.signatures["warp"](image=tf.constant(data["image"]), flow=tf.constant(data["flow"]))
    raw = loaded.signatures["serving_default"](moving=tf.constant(data["raw_moving"]),
                                                fixed=tf.constant(data["raw_fixed"]))
    raw = {"raw_" + k: v for k, v in raw.items()}
    np.savez(outputs, **{k: v.numpy() for k, v in {**served, **warped, **raw}.items()})
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


def test_the_export_holds_the_variables_and_no_keras_objects(network, export_dir):
    """The SavedModel's object graph holds the network's variables as a plain list and no Keras layer or model:
    saving a tracked Keras model traces every layer to write Keras' metadata (most of an export's time), which
    nothing that loads the export uses."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    nodes = saved.meta_graphs[0].object_graph_def.nodes
    identifiers = {node.user_object.identifier for node in nodes if node.WhichOneof("kind") == "user_object"}
    assert not [name for name in identifiers if "keras" in name], identifiers
    variables = [node.variable.name for node in nodes if node.WhichOneof("kind") == "variable"]
    assert sorted(variables) == sorted(v.name.split(":")[0] for v in network.variables)
    loaded = tf.saved_model.load(export_dir)
    restored = {v.name: v.numpy() for v in loaded.network_variables}
    for variable in network.variables:
        np.testing.assert_array_equal(restored[variable.name], variable.numpy())


def raw_pair(rng, shape=(2, 217, 181)):
    """A raw scanner-like slice pair ``[B, X, Y]``: smooth background 0..800 plus noise, and a disc around
    (150, 60) that is larger in the fixed frame (it is what moves)."""
    rows, cols = np.mgrid[:shape[1], :shape[2]]
    background = 400 + 300 * np.sin(rows / 23.0) * np.cos(cols / 31.0)
    moving = background + rng.normal(0, 10, shape)
    fixed = background + rng.normal(0, 10, shape)
    moving[:, (rows - 150) ** 2 + (cols - 60) ** 2 < 8 ** 2] += 500
    fixed[:, (rows - 150) ** 2 + (cols - 60) ** 2 < 12 ** 2] += 500
    return moving.astype(np.float32), fixed.astype(np.float32)


def test_savedmodel_runs_where_only_tensorflow_is_importable(tmp_path, network, export_dir):
    rng = np.random.default_rng(1)
    moving = rng.random((3, 32, 32, 1), np.float32)
    fixed = rng.random((3, 32, 32, 1), np.float32)
    moved, flow = network.predict({"moving": moving, "fixed": fixed}, verbose=0)
    # warp inputs: a label map (integers stored as float) and a larger field, so nearest and linear differ
    labels = rng.integers(0, 4, (3, 32, 32, 1)).astype(np.float32)
    big_flow = (flow * 20 + rng.normal(0, 1.5, flow.shape)).astype(np.float32)
    raw_moving, raw_fixed = raw_pair(rng)
    np.savez(tmp_path / "inputs.npz", moving=moving, fixed=fixed, image=labels, flow=big_flow,
             raw_moving=raw_moving[..., None], raw_fixed=raw_fixed[..., None])
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

    # serving_default on the raw 217x181 pair = training's preprocessing in NumPy + the network + paste back:
    # joint scaling, the two-frame motion centre (on the ring where the disc grows), the 32x32 window, identity
    # outside.
    scaled_moving, scaled_fixed = scale_to_unit(raw_moving, raw_fixed)
    center = motion_center(np.stack([scaled_moving, scaled_fixed]), (32, 32))
    assert np.hypot(center[0] - 150, center[1] - 60) <= 12
    np.testing.assert_array_equal(served["raw_crop_center"], [center, center])
    row, col = (int(c) for c in center)
    window = (slice(None), slice(row - 16, row + 16), slice(col - 16, col + 16))
    crops = [crop_or_pad(image, center, (32, 32))[..., None] for image in (scaled_moving, scaled_fixed)]
    moved_crop, flow_crop = network.predict({"moving": crops[0], "fixed": crops[1]}, verbose=0)
    assert served["raw_moved"].shape == (2, 217, 181, 1) and served["raw_flow"].shape == (2, 217, 181, 2)
    np.testing.assert_allclose(served["raw_moved"][window], moved_crop, atol=1e-5)
    np.testing.assert_allclose(served["raw_flow"][window], flow_crop, atol=1e-5)
    outside = np.ones((2, 217, 181), bool)
    outside[window] = False
    np.testing.assert_allclose(served["raw_moved"][..., 0][outside], scaled_moving[outside], atol=1e-6)
    np.testing.assert_array_equal(served["raw_flow"][outside], 0)


def test_raw_signature_pads_a_window_at_the_border_and_refuses_small_images(network, export_dir):
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    moving, fixed = raw_pair(np.random.default_rng(3), (1, 40, 36))  # the disc lies outside: motion is noise
    moving[:, 3:6, 31:34] += 3000  # a small patch moves a lot, near a corner: its window leaves the image
    out = serve(moving=tf.constant(moving[..., None]), fixed=tf.constant(fixed[..., None]))
    center = tuple(int(c) for c in out["crop_center"].numpy()[0])
    scaled = scale_to_unit(moving, fixed)
    assert center == motion_center(np.stack(scaled), (32, 32))
    top, left = center[0] - 16, center[1] - 16
    assert top < 0 or left + 32 > 36  # the window really leaves the image
    crops = [crop_or_pad(image, center, (32, 32))[..., None] for image in scaled]
    moved_crop, flow_crop = network.predict({"moving": crops[0], "fixed": crops[1]}, verbose=0)
    rows = slice(max(top, 0), min(top + 32, 40))
    cols = slice(max(left, 0), min(left + 32, 36))
    in_crop = (slice(None), slice(rows.start - top, rows.stop - top), slice(cols.start - left, cols.stop - left))
    np.testing.assert_allclose(out["moved"].numpy()[:, rows, cols], moved_crop[in_crop], atol=1e-5)
    np.testing.assert_allclose(out["flow"].numpy()[:, rows, cols], flow_crop[in_crop], atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be at least the crop 32x32"):
        serve(moving=tf.zeros([1, 31, 40, 1]), fixed=tf.zeros([1, 31, 40, 1]))


def test_export_writes_provenance_and_a_warmup_request_per_signature(export_dir):
    provenance = read_provenance(export_dir)
    assert provenance["model_name"] == "gsmorph" and provenance["crop"]["size"] == [32, 32]
    assert sorted(provenance["signatures"]) == ["register_crop", "serving_default", "warp"]
    loaded = tf.saved_model.load(export_dir)
    assert os.path.basename(loaded.provenance.asset_path.numpy().decode()) == "provenance.json"
    logs = [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(os.path.join(export_dir, WARMUP_FILE))]
    requests = {log.predict_log.request.model_spec.signature_name: log.predict_log.request for log in logs}
    assert sorted(requests) == ["register_crop", "serving_default", "warp"]
    for name, request in requests.items():  # each request runs through its signature as TF Serving replays it
        inputs = {key: tf.constant(tf.make_ndarray(value)) for key, value in request.inputs.items()}
        assert sorted(inputs) == sorted(loaded.signatures[name].structured_input_signature[1])
        outputs = loaded.signatures[name](**inputs)
        assert all(np.all(np.isfinite(value.numpy())) for value in outputs.values())


def test_warp_signature_reproduces_the_networks_moved_image(export_dir):
    loaded = tf.saved_model.load(export_dir)
    rng = np.random.default_rng(2)
    moving = tf.constant(rng.random((2, 32, 32, 1), np.float32))
    fixed = tf.constant(rng.random((2, 32, 32, 1), np.float32))
    served = loaded.signatures["register_crop"](moving=moving, fixed=fixed)
    warped = loaded.signatures["warp"](image=moving, flow=served["flow"])
    np.testing.assert_allclose(warped["warped_linear"].numpy(), served["moved"].numpy(), atol=1e-6)


def test_saved_model_cli_lists_the_signatures(export_dir):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    done = subprocess.run([cli, "show", "--all", "--dir", export_dir], env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for name in ("serving_default", "register_crop", "warp"):
        assert "signature_def['%s']" % name in out

    def section(name):
        return out.split("signature_def['%s']" % name)[1].split("signature_def[")[0]

    serving, crop, warp = section("serving_default"), section("register_crop"), section("warp")
    for name in ("inputs['moving']", "inputs['fixed']", "outputs['moved']", "outputs['flow']"):
        assert name in serving and name in crop
    assert "outputs['crop_center']" in serving and "shape: (-1, -1, -1, 1)" in serving  # raw: any size
    assert "shape: (-1, 32, 32, 1)" in crop
    for name in ("inputs['image']", "inputs['flow']", "outputs['warped_linear']", "outputs['warped_nearest']"):
        assert name in warp
    assert "shape: (-1, 32, 32, 2)" in warp  # the flow input: [None, H, W, ndim]


def test_export_run_serves_the_trained_network(tmp_path, trained_run):
    run_dir, _, trained = trained_run
    path = export_run(str(run_dir), str(tmp_path / "models"))
    assert path == str(tmp_path / "models" / "gsmorph_phantom" / "1")  # model and dataset name the export
    provenance = read_provenance(path)
    config = json.loads((run_dir / "config.json").read_text())
    assert provenance["training"] == config and provenance["dataset"] == "phantom"
    assert provenance["split_seed"] == config["seed"] and provenance["crop"]["training_rule"] == "labels"
    assert provenance["versions"]["tensorflow"] == tf.__version__
    reference = build_gsmorph_unet((32, 32))
    for weight in reference.weights:
        weight.assign(trained[weight.name])
    rng = np.random.default_rng(4)
    moving, fixed = rng.random((2, 2, 32, 32, 1), np.float32)
    served = tf.saved_model.load(path).signatures["register_crop"](moving=tf.constant(moving),
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
    assert "Provenance (provenance.json):" in done.stdout and "trained on phantom" in done.stdout
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
