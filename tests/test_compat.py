"""The compat module: legacy Keras for voxelmorph, the Python 3.11 shim, and the error when it is too late."""
import os
import subprocess
import sys

import gsmorph_tf  # noqa: F401


def test_legacy_keras_and_getargspec_are_in_place():
    import inspect

    import tensorflow as tf
    import voxelmorph as vxm

    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert tf.keras.layers.Dense.__module__.startswith("tf_keras")
    assert inspect.getargspec(lambda a, b=1: None).args == ["a", "b"]
    assert vxm.layers.SpatialTransformer is not None


def test_tensorflow_imported_first_with_keras3_gives_clear_error():
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    done = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.keras.layers; import gsmorph_tf"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "ImportError" in done.stderr
    assert "import gsmorph_tf before tensorflow" in done.stderr and "TF_USE_LEGACY_KERAS=1" in done.stderr
