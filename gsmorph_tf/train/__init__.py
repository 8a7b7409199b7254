"""Training: one run from its settings to a trained, evaluated and exported network, and its run directory.

- :mod:`~gsmorph_tf.train.training`: one run step by step, config -> dataset -> model -> fit -> evaluate ->
  export (:func:`~gsmorph_tf.train.training.train_and_evaluate`);
- :mod:`~gsmorph_tf.train.distribute`: ``tf.distribute`` strategies by name, chief-only writing, synchronised
  BatchNorm;
- :mod:`~gsmorph_tf.train.monitoring`: TensorBoard views of registration (panels, flow histograms, HParams);
- :mod:`~gsmorph_tf.train.rundir`: a run directory used by one run at a time, exported exactly once;
- :mod:`~gsmorph_tf.train.runs`: loading a finished run back (settings, trained network, as served);
- :mod:`~gsmorph_tf.train.instance`: test-time instance optimisation, a few training steps on the one pair
  being registered.

Importing this package loads nothing else.
"""
