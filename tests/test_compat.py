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


def _onednn_in_fresh_process(value):
    """Whether a fresh Python that imports gsmorph_tf first runs TensorFlow's oneDNN kernels, with
    ``TF_ENABLE_ONEDNN_OPTS`` set to ``value`` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = value
    done = subprocess.run([sys.executable, "-c", "import gsmorph_tf, os\n"
                           "from gsmorph_tf.evaluate.timing import onednn_enabled, machine_description\n"
                           "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], onednn_enabled(), machine_description())"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[:2], done.stdout


def test_onednn_kernels_are_turned_on_unless_the_user_chose():
    # Unset (TensorFlow's default: on only for AVX512_VNNI/BF16/AMX CPUs): gsmorph_tf turns them on on any CPU.
    (value, enabled), text = _onednn_in_fresh_process(None)
    assert (value, enabled) == ("1", "True") and text.rstrip().endswith("oneDNN on")
    # A user's choice is kept: off stays off.
    (value, enabled), text = _onednn_in_fresh_process("0")
    assert (value, enabled) == ("0", "False") and text.rstrip().endswith("oneDNN off")
