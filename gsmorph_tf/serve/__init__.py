"""Export and serving: a trained network as a TensorFlow SavedModel that TF Serving (or
:mod:`gsmorph_tf.register`) runs without this package.

- :mod:`~gsmorph_tf.serve.export`: the SavedModel in TF Serving's layout, its signatures and warm-up file
  (``run_export.py``);
- :mod:`~gsmorph_tf.serve.graph_preprocessing`: training's preprocessing as TensorFlow ops, for the
  raw-input ``serving_default``;
- :mod:`~gsmorph_tf.serve.provenance`: what produced an export (``assets/provenance.json``).

Importing this package loads nothing else.
"""
