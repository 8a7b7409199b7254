"""ulae_tf: ULAE-net (Shu et al., MICCAI 2021) in TensorFlow on voxelmorph's layers.

Built on :mod:`gsmorph_tf`'s framework (its training model, losses, flow composition :mod:`gsmorph_tf.core.flows`);
``gsmorph_tf`` never imports this package: the model registry names it and imports it on first use.
Importing the package first configures legacy Keras and the Python 3.11 shim (see :mod:`gsmorph_tf.compat`).

Public API:

- :func:`ulae_tf.networks.build_ulae_net`: the network, ``[moving, fixed] -> (moved, flow, ...)``;
- :mod:`ulae_tf.registration`: the ``ulae`` entry of the model registry (:mod:`gsmorph_tf.registry`);
- :func:`ulae_tf.losses.multi_window_ncc`: the multi-window NCC similarity loss;
- :func:`ulae_tf.reference.load_reference_weights`: the reference code's (PyTorch) weights in the network.
"""
from gsmorph_tf import compat  # noqa: F401  (must run before TensorFlow is imported)
