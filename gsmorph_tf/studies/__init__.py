"""Studies: the papers' comparisons and the multi-seed experiments, built from training and evaluation.

- :mod:`~gsmorph_tf.studies.paper_comparison`: the papers' tables and figure (GSMorph's Table 1, 2, Fig. 3;
  ULAE-net's rows) on any dataset (``run_benchmark.py``);
- :mod:`~gsmorph_tf.studies.lambda_study`: does GSMorph keep its promise? a multi-seed lambda sweep of
  VoxelMorph against the surgery methods (``run_study.py``);
- :mod:`~gsmorph_tf.studies.deformation_study`: does ULAE-net keep its promise? accumulative enhancement
  against single-step VoxelMorph over deformation magnitudes (``run_deformation_study.py``);
- :mod:`~gsmorph_tf.studies.seed_studies`: what the multi-seed studies share (run records, curves,
  statistics over seeds and subjects, the validation-curve figure).

Importing this package loads nothing else.
"""
