"""Environment set-up that must happen before TensorFlow, voxelmorph or neurite are imported.

voxelmorph 0.2 and neurite 0.2 are Keras-2 code: they need ``tf-keras`` (legacy Keras), selected with
``TF_USE_LEGACY_KERAS=1`` *before* TensorFlow is first imported. neurite 0.2 also calls
``inspect.getargspec``, which Python 3.11 removed; a shim built on ``inspect.getfullargspec`` restores it.

TensorFlow (2.9 and later) turns its oneDNN CPU kernels on by default only on CPUs with AVX512_VNNI, AVX512_BF16 or
AMX; on other x86 CPUs (AVX2 ones, many cloud and desktop machines) 3D convolutions and their gradients run on its
Eigen kernels, several times slower (``benchmarks/ulae.py`` on a 2-core AVX2 AMD EPYC: see
``docs/results/speed.md``). :func:`enable_onednn_kernels` turns them on unless the user chose
(``TF_ENABLE_ONEDNN_OPTS=0`` before starting Python keeps TensorFlow's default); results change only by
float round-off, as between two machines.

Both packages of this project (``gsmorph_tf`` and ``ulae_tf``) import this module first, so importing
either is enough. If TensorFlow was already imported with Keras 3, nothing can switch it back inside the
process: :func:`ensure_legacy_keras` raises an ``ImportError`` that says what to do.
"""
import collections
import inspect
import os
import sys

_LEGACY_KERAS_VAR = "TF_USE_LEGACY_KERAS"
#: TensorFlow's switch of its oneDNN CPU kernels ("1" on, "0" off; unset: on only for AVX512_VNNI/BF16/AMX CPUs).
ONEDNN_VAR = "TF_ENABLE_ONEDNN_OPTS"


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


def enable_onednn_kernels():
    """Turn TensorFlow's oneDNN CPU kernels on for this process if TensorFlow is not imported yet and the user left
    ``TF_ENABLE_ONEDNN_OPTS`` unset (see the module notes); otherwise change nothing."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault(ONEDNN_VAR, "1")


_install_getargspec_shim()
enable_onednn_kernels()
ensure_legacy_keras()
