"""gsmorph_tf: GSMorph (gradient-surgery deformable registration) in TensorFlow on voxelmorph's layers.

Importing the package first configures legacy Keras and the Python 3.11 shim (see :mod:`gsmorph_tf.compat`).

The package is laid out by stage, in the order a run goes through them (each subpackage's docstring lists
its modules); the modules at the top are the framework every stage builds on:

- :mod:`gsmorph_tf.config`, :mod:`~gsmorph_tf.registry`, :mod:`~gsmorph_tf.plugins`: a run's settings, the
  models, datasets and losses by name, and the interfaces those entries implement (no TensorFlow);
- :mod:`gsmorph_tf.errors`, :mod:`~gsmorph_tf.fileio`, :mod:`~gsmorph_tf.extras`, :mod:`~gsmorph_tf.cli`,
  :mod:`~gsmorph_tf.compat`: user-facing errors, atomic writes, optional dependencies, what the ``run_*.py``
  entry points share, and the environment set-up imported first;
- :mod:`gsmorph_tf.data`: reading, checking, splitting and batching datasets;
- :mod:`gsmorph_tf.core`: the method: gradient surgery, its ``train_step``, losses, flow composition;
- :mod:`gsmorph_tf.models`: the networks and the registered model entries;
- :mod:`gsmorph_tf.train`: a training run, on one or several devices, its run directory, loading it back;
- :mod:`gsmorph_tf.evaluate`: metrics, the evaluation protocols, classical baselines, timing;
- :mod:`gsmorph_tf.serve`: the SavedModel export for TF Serving and its provenance;
- :mod:`gsmorph_tf.register`: registering NIfTI files with an exported model, applying fields, tracking;
- :mod:`gsmorph_tf.studies`: the papers' comparisons and the multi-seed studies built from all of the above.
"""
from gsmorph_tf import compat  # noqa: F401  (must run before TensorFlow is imported)

__version__ = "0.1.0"
