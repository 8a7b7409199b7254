"""Data: reading files, building registration pairs, splitting subjects, ``tf.data`` pipelines, datasets.

- :mod:`~gsmorph_tf.data.nifti`: reading NIfTI files (every bad file a :class:`~gsmorph_tf.errors.DatasetError`);
- :mod:`~gsmorph_tf.data.subjects`: :class:`~gsmorph_tf.data.subjects.SubjectPairs`, label checks, splits;
- :mod:`~gsmorph_tf.data.preprocessing`: cardiac cropping and intensity scaling (NumPy only);
- :mod:`~gsmorph_tf.data.pipeline`: ``tf.data`` batches for training from subjects held in memory;
- :mod:`~gsmorph_tf.data.learn2reg`: Learn2Reg-layout tasks read, checked and split, evaluation pairs read
  lazily (NumPy and nibabel only);
- :mod:`~gsmorph_tf.data.streaming`: ``tf.data`` pairs streamed from disk for datasets too large to hold,
  and the ``learn2reg`` entry of :data:`gsmorph_tf.registry.DATASETS` (its splits as streams);
- one module per other dataset of the registry (``acdc``, ``mnms``, ``phantom``, ``brain``: the latter writes
  its subjects in the Learn2Reg layout and serves them through the ``learn2reg`` code), each holding a
  ``DATASET`` (:class:`gsmorph_tf.plugins.DatasetPlugin`).

Importing this package loads nothing else.
"""
