"""gsmorph_tf: GSMorph (gradient-surgery deformable registration) in TensorFlow on voxelmorph's layers.

Importing the package first configures legacy Keras and the Python 3.11 shim (see :mod:`gsmorph_tf.compat`).
"""
from gsmorph_tf import compat  # noqa: F401  (must run before TensorFlow is imported)

__version__ = "0.1.0"
