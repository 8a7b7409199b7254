"""Environment set-up that must happen before TensorFlow, voxelmorph or neurite are imported.

voxelmorph 0.2 and neurite 0.2 are Keras-2 code: they need ``tf-keras`` (legacy Keras), selected with
``TF_USE_LEGACY_KERAS=1`` *before* TensorFlow is first imported. neurite 0.2 also calls
``inspect.getargspec``, which Python 3.11 removed; a shim built on ``inspect.getfullargspec`` restores it.

Both packages of this project (``gsmorph_tf`` and ``ulae_tf``) import this module first, so importing
either is enough. If TensorFlow was already imported with Keras 3, nothing can switch it back inside the
process: :func:`ensure_legacy_keras` raises an ``ImportError`` that says what to do.
"""
import collections
import inspect
import os
import sys

_LEGACY_KERAS_VAR = "TF_USE_LEGACY_KERAS"


def _install_getargspec_shim():
    """Give ``inspect`` back the ``getargspec`` that Python 3.11 removed (neurite 0.2 calls it)."""
    if hasattr(inspect, "getargspec"):
        return
    ArgSpec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")

    def getargspec(func):
        spec = inspect.getfullargspec(func)
        return ArgSpec(spec.args, spec.varargs, spec.varkw, spec.defaults)

    inspect.getargspec = getargspec


def ensure_legacy_keras():
    """Select tf-keras for TensorFlow, or fail clearly if TensorFlow already runs on Keras 3.

    Raises:
        ImportError: TensorFlow was imported before this module with ``TF_USE_LEGACY_KERAS`` unset, so
            ``tf.keras`` is Keras 3 and voxelmorph's layers cannot work in this process.
    """
    if "tensorflow" not in sys.modules:
        os.environ[_LEGACY_KERAS_VAR] = "1"
        # TensorFlow's C++ INFO lines (oneDNN, CUDA probing) drown the progress bar; users can override.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
        return
    import tensorflow as tf  # already imported: only inspect it

    keras_version = getattr(tf.keras, "__version__", "") or getattr(tf.keras, "version", lambda: "")()
    if str(keras_version).startswith("3"):
        raise ImportError(
            "TensorFlow was imported with Keras 3 (tf.keras %s) before gsmorph_tf/ulae_tf. voxelmorph 0.2 "
            "needs legacy Keras: import gsmorph_tf before tensorflow, or set the environment variable "
            "TF_USE_LEGACY_KERAS=1 before starting Python (and `pip install tf-keras`)." % keras_version)


_install_getargspec_shim()
ensure_legacy_keras()
