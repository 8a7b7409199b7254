"""The method: what turns a registration network's two losses into one training step, with no weighting lambda.

- :mod:`~gsmorph_tf.core.surgery`: gradient surgery, the projection of conflicting similarity and smoothness
  gradients (plain functions on lists of tensors);
- :mod:`~gsmorph_tf.core.model`: :class:`~gsmorph_tf.core.model.GradientSurgeryModel`, the Keras model whose
  ``train_step`` applies the surgery;
- :mod:`~gsmorph_tf.core.losses`: similarity (MSE, local NCC) and smoothness losses;
- :mod:`~gsmorph_tf.core.flows`: warping by and composing dense displacement fields (voxelmorph's convention).

Importing this package loads nothing else.
"""
