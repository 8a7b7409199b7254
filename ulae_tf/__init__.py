"""ulae_tf: ULAE-net (Shu et al., MICCAI 2021) in TensorFlow on voxelmorph's layers.

Importing the package first configures legacy Keras and the Python 3.11 shim (see :mod:`gsmorph_tf.compat`).

Public API:

- :func:`ulae_tf.networks.build_ulae_net`: the network, ``[moving, fixed] -> (moved, flow, ...)``;
- :func:`ulae_tf.flows.compose_flows`: the recursive composition of displacement fields;
- :func:`ulae_tf.losses.multi_window_ncc`: the multi-window NCC similarity loss.
"""
from gsmorph_tf import compat  # noqa: F401  (must run before TensorFlow is imported)
