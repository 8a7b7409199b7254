"""Registered models (:data:`gsmorph_tf.registry.MODELS`): one module per model, each holding a ``MODEL``
(:class:`gsmorph_tf.plugins.ModelPlugin`). ``ulae_tf.registration`` is the ULAE-net entry, outside this
package because ULAE-net lives in its own package on top of this framework.
"""
