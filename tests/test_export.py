"""SavedModel export: TF Serving layout, versions, and loading where only TensorFlow is importable."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gsmorph_tf.export import existing_versions, export_saved_model
from gsmorph_tf.networks import build_gsmorph_unet

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
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    result = serve(moving=tf.constant(data["moving"]), fixed=tf.constant(data["fixed"]))
    np.savez(outputs, **{k: v.numpy() for k, v in result.items()})
    print("loaded-without:", sorted(m for m in BLOCKED if m in sys.modules))
""")


@pytest.fixture(scope="module")
def network():
    net = build_gsmorph_unet((32, 32))
    # A non-trivial flow head, so outputs are not just the identity.
    head = net.get_layer("flow").kernel
    head.assign(np.random.default_rng(0).normal(0, 0.05, head.shape).astype(np.float32))
    return net


def test_versions_are_integers_never_overwritten(tmp_path, network):
    base = tmp_path / "models" / "gsmorph"
    assert export_saved_model(network, str(base)) == str(base / "1")
    assert export_saved_model(network, str(base)) == str(base / "2")
    assert existing_versions(str(base)) == [1, 2]
    with pytest.raises(FileExistsError, match="never overwritten"):
        export_saved_model(network, str(base), version=2)
    assert sorted(os.listdir(base)) == ["1", "2"]  # no temp folder left behind
    assert os.path.exists(base / "1" / "saved_model.pb") and os.path.isdir(base / "1" / "variables")


def test_savedmodel_runs_where_only_tensorflow_is_importable(tmp_path, network):
    export_dir = export_saved_model(network, str(tmp_path / "gsmorph"))
    rng = np.random.default_rng(1)
    moving = rng.random((3, 32, 32, 1), np.float32)
    fixed = rng.random((3, 32, 32, 1), np.float32)
    np.savez(tmp_path / "inputs.npz", moving=moving, fixed=fixed)
    script = tmp_path / "load.py"
    script.write_text(STANDALONE_LOADER)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
    done = subprocess.run([sys.executable, str(script), export_dir, str(tmp_path / "inputs.npz"),
                           str(tmp_path / "outputs.npz")], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded-without: []" in done.stdout
    served = np.load(tmp_path / "outputs.npz")
    moved, flow = network.predict({"moving": moving, "fixed": fixed}, verbose=0)
    assert np.abs(flow).max() > 1e-3  # the comparison below is not between two zero fields
    np.testing.assert_allclose(served["moved"], moved, atol=1e-5)
    np.testing.assert_allclose(served["flow"], flow, atol=1e-5)
