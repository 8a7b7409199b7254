"""Models: the registration networks and the registered model entries (:data:`gsmorph_tf.registry.MODELS`).

- :mod:`~gsmorph_tf.models.networks`: the GSMorph U-Net on voxelmorph's spatial transformer;
- :mod:`~gsmorph_tf.models.gsmorph`: the ``gsmorph`` entry (that U-Net trained with gradient surgery);
- :mod:`~gsmorph_tf.models.hypermorph`: the ``hypermorph`` entry, the HyperMorph baseline;
- :mod:`~gsmorph_tf.models.reference_weights`: the official GSMorph code's PyTorch weights loaded into
  the U-Net (for the step-by-step comparison with the reference).

An entry module holds a ``MODEL`` (:class:`gsmorph_tf.plugins.ModelPlugin`). ``ulae_tf.registration`` is the
ULAE-net entry, outside this package because ULAE-net lives in its own package on top of this framework.
Importing this package loads nothing else.
"""
