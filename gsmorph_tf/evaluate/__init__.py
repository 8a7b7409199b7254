"""Evaluation: scoring registrations, by the GSMorph paper's protocols or Learn2Reg's, against baselines.

- :mod:`~gsmorph_tf.evaluate.evaluation`: a network (or any predictor) evaluated on a split, per subject and
  as tables;
- :mod:`~gsmorph_tf.evaluate.metrics`: Dice, HD95, MSE, NJD and SDlogJ as small NumPy functions;
- :mod:`~gsmorph_tf.evaluate.learn2reg_metrics`: the Learn2Reg challenge's own scores (with
  ``learn2reg_surfel_areas.json``, the surface-element table its HD95 weights by);
- :mod:`~gsmorph_tf.evaluate.baselines`: the classical baselines, SimpleITK Demons and ANTsPy SyN;
- :mod:`~gsmorph_tf.evaluate.timing`: where a measurement ran and the median timer of the speed figures.

Importing this package loads nothing else.
"""
