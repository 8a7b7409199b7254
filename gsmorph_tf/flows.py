"""Composition of dense displacement fields (ULAE-net's accumulation of its steps, the brain task's known fields).

Shared by the framework and the model packages: a dataset that composes fields (``gsmorph_tf.data.brain``)
and a network that does (``ulae_tf.networks``) both use this module, so neither depends on the other.

Convention (voxelmorph's ``SpatialTransformer``, 'ij' indexing): a displacement field ``u`` of shape
``[B, *vol, ndim]``, in voxels, channel k along array axis k, warps an image by
``moved(x) = moving(x + u(x))``. Warping by ``u1`` and then the result by ``u2`` gives
``moving(x + u2(x) + u1(x + u2(x)))``, i.e. a single warp by ``u2 + u1 o u2`` where
``(a o b)(x) = a(x + b(x))`` is field ``a`` resampled (linearly) at the locations ``b`` points to.
For ULAE-net's three steps this is the paper's ``phi = S(S(phi1) o phi2 + phi2) o phi3 + phi3``.

``vxm.utils.compose`` computes the same transform but nests the look-ups (``u1`` is resampled once at the
final locations); :func:`compose_flows` keeps the paper's recursion, which resamples the field accumulated
so far at each step, as the reference code does. The two agree up to linear-interpolation error.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import tensorflow as tf
import voxelmorph as vxm


def _resample_field(field, flow):
    """``(field o flow)(x) = field(x + flow(x))``, linear, per batch item; locations outside the volume take
    the nearest border value (voxelmorph's default, as for the images). Both ``[B, *vol, ndim]``."""
    return tf.map_fn(lambda pair: vxm.utils.transform(pair[0], pair[1], interp_method="linear", indexing="ij"),
                     (field, flow), fn_output_signature=field.dtype)


def compose_flows(flows):
    """Compose displacement fields applied one after the other into one field.

    Args:
        flows: non-empty list of full-resolution displacement fields ``[B, *vol, ndim]`` in voxels, in the
            order they were applied (``flows[0]`` warps the original image, ``flows[1]`` warps the result...).

    Returns:
        ``[B, *vol, ndim]``: the displacement ``phi`` such that warping once by ``phi`` equals warping by the
        fields in sequence (up to interpolation): ``phi_1 = flows[0]``,
        ``phi_k = phi_{k-1} o flows[k-1] + flows[k-1]``. A single field is returned unchanged.
    """
    if not flows:
        raise ValueError("compose_flows needs at least one displacement field, got an empty list")
    composed = flows[0]
    for flow in flows[1:]:
        composed = _resample_field(composed, flow) + flow
    return composed


class ComposeFlows(tf.keras.layers.Layer):
    """Keras wrapper of :func:`compose_flows`: called on a list of fields ``[B, *vol, ndim]``, returns one."""

    def call(self, flows):
        return compose_flows(list(flows))

    def compute_output_shape(self, input_shape):
        return input_shape[0]
