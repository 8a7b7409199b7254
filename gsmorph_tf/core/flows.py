"""Warps and composition of dense displacement fields (the networks' zero-padded warps, ULAE-net's accumulation of its
steps, the brain task's known fields).

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

Out-of-volume rule (:data:`WARP_PADDINGS`): voxelmorph's transform clamps a location outside the volume to the
nearest border voxel (``border``); PyTorch's ``grid_sample`` (``padding_mode='zeros'``, ``align_corners=True``),
which both papers' reference codes use for every warp and for ULAE-net's composition, reads 0 outside, so
within one voxel of the edge a sample blends the border voxel with 0 (``zeros``). :func:`warp` does either.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import itertools

import numpy as np
import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf.config import WARP_PADDINGS


def check_padding(padding):
    """``padding`` if it is one of :data:`WARP_PADDINGS`, else ``ValueError`` naming it."""
    if padding not in WARP_PADDINGS:
        raise ValueError("unknown warp padding %r; valid: %s" % (padding, ", ".join(WARP_PADDINGS)))
    return padding


def interpolate_linear(volume, flow):
    """``volume(x + flow(x))`` by linear interpolation, the whole batch at once.

    The same arithmetic as voxelmorph 0.2's ``vxm.utils.transform(..., interp_method="linear", indexing="ij")``
    (neurite's ``interpn``: each location clipped to ``[0, n - 1]`` along each axis, i.e. the border rule, then
    the ``2^ndim`` corners weighted and summed in the same order), so its output is bit for bit voxelmorph's on
    each item. voxelmorph applies that function to a batch with ``tf.map_fn``, a while loop in the graph (and a
    second one for its gradient); here each of the ``2^ndim`` corners is one gather on the flattened batch, which
    traces faster and keeps less memory (docs/results/speed.md, "Warps without map_fn").

    Args:
        volume: ``[B, *vol, C]``, floating point, static spatial shape.
        flow: ``[B, *out, ndim]`` displacement in voxels ('ij': channel k along array axis k); ``out`` may
            differ from ``vol``; cast to ``volume``'s dtype, as voxelmorph does.

    Returns:
        ``[B, *out, C]``, the dtype of ``volume``.

    Raises:
        ValueError: a spatial size that is not known when the graph is built, or ``flow``'s last axis not
            ``ndim``.
    """
    volume, flow = tf.convert_to_tensor(volume), tf.convert_to_tensor(flow)
    shape, out_shape = volume.shape[1:-1].as_list(), flow.shape[1:-1].as_list()
    ndim = len(shape)
    if None in shape or None in out_shape or flow.shape[-1] != ndim:
        raise ValueError("interpolate_linear needs static spatial shapes and a %d-channel field: volume %s, "
                         "flow %s" % (ndim, volume.shape, flow.shape))
    grid = tf.meshgrid(*[tf.range(n, dtype=flow.dtype) for n in out_shape], indexing="ij")
    return _interpolate_at(volume, [tf.cast(grid[d][None] + flow[..., d], volume.dtype) for d in range(ndim)])


def _interpolate_at(volume, location):
    """``volume`` at the voxel coordinates ``location`` by linear interpolation, neurite's ``interpn`` arithmetic.

    Args:
        volume: ``[B, *vol, C]``, static spatial shape.
        location: ``ndim`` tensors, ``[B or 1, *out]`` each, the coordinate along each array axis in voxels and
            in ``volume``'s dtype (a location grid without a batch axis of its own is shared by every item).

    Returns:
        ``[B, *out, C]``.
    """
    shape = volume.shape[1:-1].as_list()
    ndim = len(shape)
    last = [n - 1 for n in shape]
    clipped = [tf.clip_by_value(location[d], 0, last[d]) for d in range(ndim)]
    below = [tf.clip_by_value(tf.floor(location[d]), 0, last[d]) for d in range(ndim)]
    above = [tf.clip_by_value(below[d] + 1, 0, last[d]) for d in range(ndim)]
    corner_index = [[tf.cast(c, tf.int32) for c in below], [tf.cast(c, tf.int32) for c in above]]
    # Each axis' weight of the lower and the upper neighbour, computed as neurite does (the same rounding).
    weight_below = [above[d] - clipped[d] for d in range(ndim)]
    weight = [weight_below, [1 - w for w in weight_below]]
    # Row-major strides of one item, and each item's offset in the flattened batch: [B, 1, ..., 1].
    strides = np.cumprod([1] + shape[:0:-1])[::-1]
    offset = tf.reshape(tf.range(tf.shape(volume)[0]) * int(np.prod(shape)), [-1] + [1] * ndim)
    flat = tf.reshape(volume, [-1, volume.shape[-1]])
    moved = 0
    for corner in itertools.product([0, 1], repeat=ndim):
        index = offset
        for d in range(ndim):
            index = index + corner_index[corner[d]][d] * int(strides[d])
        corner_weight = weight[corner[0]][0]
        for d in range(1, ndim):
            corner_weight = corner_weight * weight[corner[d]][d]
        moved += corner_weight[..., None] * tf.gather(flat, index)
    return moved


def rescale_flow(flow, factor):
    """A displacement field resampled to ``factor`` times its grid and its vectors scaled by ``factor``: what
    voxelmorph 0.2's ``RescaleTransform(factor)`` (linear) computes, bit for bit, the whole batch at once.

    voxelmorph maps neurite's ``resize`` over the batch with ``tf.map_fn`` (a while loop in the graph and one
    for its gradient); here one location grid serves every item (:func:`_interpolate_at`). As neurite, the
    corners are aligned: output voxel ``j`` along an axis of ``n -> m`` voxels samples input coordinate
    ``j (n - 1) / (m - 1)`` (``tf.linspace``), and the vectors are scaled before an upsampling and after a
    downsampling.

    Args:
        flow: ``[B, *vol, ndim]`` displacement in voxels of ``vol``, static spatial shape.
        factor: positive scale; ``int(n * factor)`` voxels along an axis of ``n``. 1 returns ``flow``.

    Returns:
        ``[B, *(int(n * factor) for n in vol), ndim]`` in voxels of the new grid.
    """
    if factor == 1:
        return flow
    flow = tf.convert_to_tensor(flow)
    shape = flow.shape[1:-1].as_list()
    if None in shape or flow.shape[-1] != len(shape):
        raise ValueError("rescale_flow needs a static spatial shape and a %d-channel field, got %s"
                         % (len(shape), flow.shape))
    if factor > 1:
        flow = flow * factor  # as voxelmorph: the multiplication in the smaller space
    lines = [tf.linspace(0.0, n - 1.0, int(n * factor)) for n in shape]
    location = [tf.cast(axis[None], flow.dtype) for axis in tf.meshgrid(*lines, indexing="ij")]
    resized = _interpolate_at(flow, location)
    return resized if factor > 1 else resized * factor


class RescaleFlow(tf.keras.layers.Layer):
    """Keras wrapper of :func:`rescale_flow` (voxelmorph's ``RescaleTransform``, linear, batched):
    ``[B, *vol, ndim] -> [B, *factor vol, ndim]``."""

    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, flow):
        return rescale_flow(flow, self.factor)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *(None if n is None else int(n * self.factor) for n in input_shape[1:-1]),
                input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


def warp(image, flow, padding="border"):
    """``moved(x) = image(x + flow(x))``, linear interpolation (voxelmorph's transform, :func:`interpolate_linear`).

    Args:
        image: ``[B, *vol, C]`` (an image, or a displacement field to resample).
        flow: ``[B, *vol, ndim]`` displacement in voxels, channel k along array axis k ('ij').
        padding: ``border``: a location outside the volume reads the nearest border voxel (voxelmorph's
            ``SpatialTransformer``); ``zeros``: it reads 0, and a location within one voxel outside the edge
            blends the border voxel with 0 linearly, exactly as PyTorch's ``grid_sample(padding_mode='zeros',
            align_corners=True)``. Zeros is computed as the border rule on the image padded with one voxel of
            zeros on every side, at locations shifted by that voxel.

    Returns:
        ``[B, *vol, C]``, the dtype of ``image``.
    """
    check_padding(padding)
    if padding == "zeros":
        ndim = flow.shape[-1]
        image = tf.pad(image, [[0, 0]] + [[1, 1]] * ndim + [[0, 0]])
        flow = flow + tf.cast(1.0, flow.dtype)  # location x + u in the padded volume is x + u + 1
    return interpolate_linear(image, flow)


class Warp(tf.keras.layers.Layer):
    """Keras wrapper of :func:`warp`: ``[image, flow] -> moved`` with a fixed out-of-volume rule ``padding``.

    With ``padding="border"`` it computes what voxelmorph's ``SpatialTransformer`` (linear, 'ij') does."""

    def __init__(self, padding="border", **kwargs):
        super().__init__(**kwargs)
        self.padding = check_padding(padding)

    def call(self, inputs):
        image, flow = inputs
        return warp(image, flow, self.padding)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}


def warp_layer(padding, name, dtype=None):
    """The Keras layer a network warps its moving image with: voxelmorph's ``SpatialTransformer`` (linear,
    'ij') for ``border``, :class:`Warp` for ``zeros``. ``[image, flow] -> moved``; ``dtype``: a dtype policy."""
    if check_padding(padding) == "border":
        return vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij", name=name, dtype=dtype)
    return Warp(padding, name=name, dtype=dtype)


def compose_flows(flows, padding="border"):
    """Compose displacement fields applied one after the other into one field.

    Args:
        flows: non-empty list of full-resolution displacement fields ``[B, *vol, ndim]`` in voxels, in the
            order they were applied (``flows[0]`` warps the original image, ``flows[1]`` warps the result...).
        padding: out-of-volume rule of the resampling (see :func:`warp`); ``zeros`` as the ULAE reference.

    Returns:
        ``[B, *vol, ndim]``: the displacement ``phi`` such that warping once by ``phi`` equals warping by the
        fields in sequence (up to interpolation): ``phi_1 = flows[0]``,
        ``phi_k = phi_{k-1} o flows[k-1] + flows[k-1]``. A single field is returned unchanged.
    """
    if not flows:
        raise ValueError("compose_flows needs at least one displacement field, got an empty list")
    composed = flows[0]
    for flow in flows[1:]:
        composed = warp(composed, flow, padding) + flow
    return composed


class ComposeFlows(tf.keras.layers.Layer):
    """Keras wrapper of :func:`compose_flows`: called on a list of fields ``[B, *vol, ndim]``, returns one."""

    def __init__(self, padding="border", **kwargs):
        super().__init__(**kwargs)
        self.padding = check_padding(padding)

    def call(self, flows):
        return compose_flows(list(flows), self.padding)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "padding": self.padding}
