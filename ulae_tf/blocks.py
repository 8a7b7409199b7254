"""Building blocks of ULAE-net: the uncoupled spatial encoder and the per-step decoders.

Both are small functional Keras models so that the network can call the *same* encoder in all three
steps (one set of weights) and give each step its own decoder. One code path for 2D and 3D; tensors are
``[B, *vol, C]``.

Stride-2 sampling: every stride-2 branch samples its output voxel ``i`` at input voxel ``2i`` (PyTorch's
convention for a conv with padding ``dilation * (kernel - 1) / 2``, the reference code's). TensorFlow's
``padding='same'`` would centre a 3x3 stride-2 conv on ``2i + 1`` but a 1x1 one on ``2i``, misaligning the
branches that are concatenated; and TensorFlow refuses stride > 1 together with dilation > 1. So 3x3 convs
are zero-padded by 1 and run 'valid', dilated convs compute only the even output voxels of the 'same' conv
(:func:`even_voxels_of_dilated_conv`, :class:`EvenVoxelsConv3D`), and 1x1 convs run on the subsampled input
(see :func:`stride2_conv`).
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import itertools

import tensorflow as tf

KL = tf.keras.layers

#: Leaky ReLU slope of the reference code.
LEAKY_SLOPE = 0.2


def _conv(ndim, filters, kernel_size, name, **kwargs):
    return getattr(KL, "Conv%dD" % ndim)(filters, kernel_size, name=name, **kwargs)


def upsample_linear_x2(x):
    """x2 linear upsampling along every spatial axis with half-pixel centres and clamped edges.

    PyTorch's ``Upsample(scale_factor=2, mode='trilinear')`` (the reference code's) and, in 2D,
    ``tf.image.resize(..., 'bilinear')``: along each axis, output ``2i`` is ``0.75 x[i] + 0.25 x[i-1]`` and
    output ``2i+1`` is ``0.75 x[i] + 0.25 x[i+1]``. Plain tensor ops, so it traces and differentiates fast
    (neurite's ``Resize`` loops over the batch with ``map_fn``). ``[B, *vol, C]`` -> ``[B, *2 vol, C]``.

    The neighbours are two slices of the edge-padded tensor, not gathers: their gradients are a few dense ops,
    a gather's a scatter of indexed slices (the ULAE-net train step traced 27,914 graph ops with gathers, 20,570
    with slices). A form with slices joined by concatenations got wrong shapes at run time in one 3D graph from
    grappler's constant folding (tried together with another rewrite, see docs/results/speed.md);
    ``tests/ulae/test_ulae_blocks.py`` checks this traced form against eager, the 3D training tests the network.
    """
    ndim = len(x.shape) - 2
    for axis in range(1, ndim + 1):
        size = x.shape[axis]
        # [x0, x0, x1, ..., x_{n-1}, x_{n-1}]: the neighbours, each edge voxel its own outer neighbour.
        padded = tf.pad(x, [[1, 1] if k == axis else [0, 0] for k in range(ndim + 2)], mode="SYMMETRIC")
        previous = padded[(slice(None),) * axis + (slice(0, size),)]
        following = padded[(slice(None),) * axis + (slice(2, size + 2),)]
        interleaved = tf.stack([0.75 * x + 0.25 * previous, 0.75 * x + 0.25 * following], axis=axis + 1)
        # The target shape is static but for the batch.
        x = tf.reshape(interleaved, [-1] + [2 * s if k == axis else s for k, s in enumerate(x.shape) if k > 0])
    return x


class UpsampleLinear(KL.Layer):
    """Keras wrapper of :func:`upsample_linear_x2`."""

    def call(self, x):
        return upsample_linear_x2(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *(2 * s for s in input_shape[1:-1]), input_shape[-1])


def _parity_groups(kernel_size, dilation):
    """How the taps of a dilated conv split over the even and odd input voxels, along one axis.

    Output voxel ``2i`` of a 'same' conv reads input ``2i + t_j`` with ``t_j = dilation (j - c)`` for tap
    ``j`` (``c`` the centre tap), i.e. voxel ``i + t_j // 2`` of the sub-grid ``x[t_j % 2::2]``. Returns, per
    parity present, ``(parity, taps, spacing, pad_before, pad_after)``: the taps on that sub-grid (a slice of
    the kernel axis: all taps for an even dilation, every other one for an odd one), their equal spacing on
    the sub-grid, and the zero padding that makes a 'valid' conv of those taps return one voxel per sub-grid
    voxel."""
    centre, groups = kernel_size // 2, {}
    for tap in range(kernel_size):
        offset = dilation * (tap - centre)
        groups.setdefault(offset % 2, []).append((tap, offset // 2))
    options = []
    for parity, taps in sorted(groups.items()):
        indices, shifts = [tap for tap, _ in taps], [shift for _, shift in taps]
        step, spacing = (indices[1] - indices[0], shifts[1] - shifts[0]) if len(taps) > 1 else (1, 1)
        options.append((parity, slice(indices[0], indices[-1] + 1, step), spacing, -shifts[0], shifts[-1]))
    return options


def even_voxels_of_dilated_conv(x, kernel, dilation):
    """The 'same' (zero-padded) stride-1 conv of ``x`` by ``kernel`` dilated by ``dilation``, at the even
    voxels only: ``tf.nn.convolution(x, kernel, "SAME", dilations=dilation)[:, ::2, ::2(, ::2)]``, without
    computing the odd ones (7/8 of the work in 3D).

    The taps that fall on one parity sub-grid of the input (``x[p0::2, p1::2, p2::2]``) form a smaller
    kernel, dilated by ``dilation / 2`` where ``dilation`` is even and by ``dilation`` on the odd taps where it
    is odd; the result is the sum over the sub-grids of 'valid' convs of those taps (one conv for an even
    dilation, up to ``2^ndim`` for an odd one). Equal to the direct form up to float round-off.

    Args:
        x: ``[B, *vol, C_in]`` with even spatial sizes.
        kernel: ``[k, ..., k, C_in, C_out]`` with an odd ``k``.
        dilation: dilation rate, >= 1 (the same along every axis).

    Returns:
        ``[B, *vol / 2, C_out]``.
    """
    ndim = len(x.shape) - 2
    # Named explicitly: TensorFlow 2.21 records a 3D conv with unit dilations and no data_format without that
    # attribute, and its eager gradient then fails (Conv3DGrad reads it); graph mode fills in the default.
    data_format = "NDHWC" if ndim == 3 else "NHWC"
    total = None
    for combo in itertools.product(_parity_groups(kernel.shape[0], dilation), repeat=ndim):
        grid = x[(slice(None),) + tuple(slice(parity, None, 2) for parity, *_ in combo) + (slice(None),)]
        grid = tf.pad(grid, [[0, 0]] + [[before, after] for *_, before, after in combo] + [[0, 0]])
        taps = kernel[tuple(indices for _, indices, *_ in combo)]  # a strided slice: dense gradients
        part = tf.nn.convolution(grid, taps, padding="VALID", dilations=[spacing for _, _, spacing, *_ in combo],
                                 data_format=data_format)
        total = part if total is None else total + part
    return total


def _even_voxels_conv_class(base):
    class EvenVoxelsConv(base):
        """A Keras conv (``padding='same'``, ``dilation_rate`` d, stride 1 as declared) whose output is only
        its even voxels, ``[B, *vol / 2, filters]``: a dilated conv at stride 2 centred on input voxel ``2i``
        (:func:`even_voxels_of_dilated_conv`). Its weights are the plain conv's (same names and shapes)."""

        def convolution_op(self, inputs, kernel):
            return even_voxels_of_dilated_conv(inputs, kernel, self.dilation_rate[0])

        def compute_output_shape(self, input_shape):
            shape = tf.TensorShape(input_shape).as_list()
            return tf.TensorShape([shape[0], *(None if s is None else s // 2 for s in shape[1:-1]), self.filters])

    EvenVoxelsConv.__name__ = EvenVoxelsConv.__qualname__ = "EvenVoxels" + base.__name__
    return EvenVoxelsConv


#: Stride-2 dilated convs of the uncoupled encoding blocks, 2D and 3D (see :func:`even_voxels_of_dilated_conv`).
EvenVoxelsConv2D = _even_voxels_conv_class(KL.Conv2D)
EvenVoxelsConv3D = _even_voxels_conv_class(KL.Conv3D)


def stride2_conv(x, filters, kernel_size, name, dilation=1, use_bias=True):
    """Conv with stride 2 whose output voxel ``i`` is centred on input voxel ``2i``.

    ``x``: ``[B, *vol, C]`` with even sizes -> ``[B, *vol / 2, filters]``.
    """
    ndim = len(x.shape) - 2
    subsample = getattr(KL, "MaxPooling%dD" % ndim)(pool_size=1, strides=2, name=name + "_subsample")  # x[::2]
    if kernel_size == 1:
        # Subsample, then a stride-1 1x1 conv: the same numbers, and it avoids oneDNN's strided 1x1 weight
        # gradient, which corrupts memory for few input channels on CPU (uxlfoundation/oneDNN#6035; it
        # crashed TensorFlow 2.21 here on the 1-channel image).
        return _conv(ndim, filters, 1, name=name + "_conv", use_bias=use_bias)(subsample(x))
    if dilation > 1:
        # TensorFlow has no strided dilated conv: the even voxels of a 'same' conv at stride 1 (voxel j is
        # centred on input voxel j), computed without the odd ones.
        conv = EvenVoxelsConv2D if ndim == 2 else EvenVoxelsConv3D
        return conv(filters, kernel_size, name=name + "_conv", padding="same", dilation_rate=dilation,
                    use_bias=use_bias)(x)
    x = getattr(KL, "ZeroPadding%dD" % ndim)(kernel_size // 2, name=name + "_pad")(x)
    return _conv(ndim, filters, kernel_size, name=name + "_conv", strides=2, padding="valid",
                 use_bias=use_bias)(x)


def conv_norm_act(x, filters, name, stride=1):
    """3x3 conv (no bias: the norm removes it) -> InstanceNorm -> LeakyReLU(0.2), the reference's block.

    InstanceNorm has no learned scale or shift (PyTorch's ``InstanceNorm3d`` default in the reference).
    ``x``: ``[B, *vol, C]`` -> ``[B, *vol / stride, filters]``.
    """
    ndim = len(x.shape) - 2
    if stride == 2:
        x = stride2_conv(x, filters, 3, name=name, use_bias=False)
    else:
        x = _conv(ndim, filters, 3, name=name + "_conv", padding="same", use_bias=False)(x)
    x = KL.GroupNormalization(groups=filters, center=False, scale=False, epsilon=1e-5, name=name + "_norm")(x)
    return KL.LeakyReLU(LEAKY_SLOPE, name=name + "_act")(x)


def uncoupled_encoding_block(moving_features, fixed_features, dilation, name):
    """One level of the moving-image path: ASPP-style stride-2 branches fused with the fixed path.

    Branches, all at stride 2: global average pool -> 1x1 conv -> broadcast to the output size; a 3x3 conv;
    a 1x1 conv; 3x3 convs dilated by ``dilation``, ``2 * dilation`` and ``3 * dilation``. They are
    concatenated with the fixed path's features of the same level and fused by one 1x1 conv, then
    LeakyReLU(0.2) (no norm, as the reference's ``Uncoupled_Encoding_Block``).

    Args:
        moving_features: ``[B, *vol, C]``.
        fixed_features: ``[B, *vol / 2, F]``; the block outputs ``F`` channels too.
        dilation: base dilation rate ``d`` in voxels.
        name: prefix of the layer names.

    Returns:
        ``[B, *vol / 2, F]``.
    """
    ndim = len(moving_features.shape) - 2
    filters = fixed_features.shape[-1]
    out_size = tuple(fixed_features.shape[1:-1])
    context = getattr(KL, "GlobalAveragePooling%dD" % ndim)(keepdims=True, name=name + "_pool")(moving_features)
    context = _conv(ndim, filters, 1, name=name + "_pool_conv")(context)
    # Nearest upsampling of a single voxel is a broadcast to the output size.
    context = getattr(KL, "UpSampling%dD" % ndim)(out_size, name=name + "_broadcast")(context)
    branches = [context,
                stride2_conv(moving_features, filters, 3, name=name + "_3x3"),
                stride2_conv(moving_features, filters, 1, name=name + "_1x1")]
    branches += [stride2_conv(moving_features, filters, 3, name="%s_rate%d" % (name, rate), dilation=rate)
                 for rate in (dilation, 2 * dilation, 3 * dilation)]
    x = KL.Concatenate(name=name + "_concat")(branches + [fixed_features])
    x = _conv(ndim, filters, 1, name=name + "_fuse")(x)
    return KL.LeakyReLU(LEAKY_SLOPE, name=name + "_act")(x)


#: Base dilation of the uncoupled encoding blocks, top level first (the paper's d = 4, 3, 2, 1).
DILATIONS = (4, 3, 2, 1)


def level_channels(base_channels):
    """Feature counts of the four encoder levels, top first: ``b, 2b, 2b, 2b`` as the reference code."""
    return (base_channels, 2 * base_channels, 2 * base_channels, 2 * base_channels)


def build_uncoupled_encoder(inshape, base_channels, name="encoder"):
    """The uncoupled spatial encoder shared by the three steps.

    Level ``l`` (1..4, at 1/2^l resolution): the fixed path is a stride-2 :func:`conv_norm_act`; the moving
    path an :func:`uncoupled_encoding_block` with dilation ``DILATIONS[l-1]`` that also reads the fixed
    features; the level's skip feature is a :func:`conv_norm_act` of both paths concatenated.

    Args:
        inshape: spatial image shape, every size divisible by 16.
        base_channels: feature count of the first level.
        name: model name.

    Returns:
        A model ``[moving, fixed]`` (``[B, *inshape, 1]`` each) -> ``[e1, e2, e3, e4]``, ``e_l`` of shape
        ``[B, *inshape / 2^l, level_channels(base_channels)[l-1]]``.
    """
    moving = KL.Input((*inshape, 1), name="moving")
    fixed = KL.Input((*inshape, 1), name="fixed")
    moving_path, fixed_path, skips = moving, fixed, []
    for level, (filters, dilation) in enumerate(zip(level_channels(base_channels), DILATIONS), start=1):
        fixed_path = conv_norm_act(fixed_path, filters, name="fixed_down%d" % level, stride=2)
        moving_path = uncoupled_encoding_block(moving_path, fixed_path, dilation, name="moving_down%d" % level)
        both = KL.Concatenate(name="skip%d_concat" % level)([moving_path, fixed_path])
        skips.append(conv_norm_act(both, filters, name="skip%d" % level))
    return tf.keras.Model([moving, fixed], skips, name=name)


def build_step_decoder(inshape, base_channels, step, name):
    """Decoder of accumulative-enhancement step ``step`` (1, 2 or 3): a flow at 1/4, 1/2 or 1 of full size.

    From the deepest feature ``e4`` (1/16) it upsamples x2 and concatenates the skips ``e3``, ..., down to
    ``e_{4-step}``; two refining blocks; a last x2 upsampling concatenated with the (moving, fixed) pair
    average-pooled to that resolution; a block; and the flow head, a 3x3 conv with weights ~ N(0, 1e-5)
    and zero bias so each step starts at (almost) zero displacement, computed in float32 under any dtype
    policy. Feature upsampling is :func:`upsample_linear_x2`.

    Args:
        inshape: spatial image shape, every size divisible by 16.
        base_channels: feature count of the first encoder level.
        step: 1, 2 or 3.
        name: model name.

    Returns:
        A model ``[e4, ..., e_{4-step}, moving, fixed] -> flow`` with features as from
        :func:`build_uncoupled_encoder`, images ``[B, *inshape, 1]``, and the flow
        ``[B, *inshape / 2^(3-step), ndim]`` in voxels of that coarse grid.
    """
    ndim = len(inshape)
    channels = level_channels(base_channels)
    levels = list(range(4, 3 - step, -1))  # e.g. step 1: [4, 3]
    features = [KL.Input((*(s // 2 ** level for s in inshape), channels[level - 1]), name="e%d" % level)
                for level in levels]
    moving = KL.Input((*inshape, 1), name="moving")
    fixed = KL.Input((*inshape, 1), name="fixed")

    x = conv_norm_act(features[0], 2 * base_channels, name="dec4")
    for level, skip in zip(levels[1:], features[1:]):
        x = UpsampleLinear(name="dec%d_up" % level)(x)
        x = KL.Concatenate(name="dec%d_skip" % level)([x, skip])
        x = conv_norm_act(x, 2 * base_channels, name="dec%d" % level)
    x = conv_norm_act(x, 2 * base_channels, name="refine1")
    x = conv_norm_act(x, base_channels, name="refine2")
    x = UpsampleLinear(name="pair_up")(x)
    pair = KL.Concatenate(name="pair")([moving, fixed])
    for i in range(3 - step):
        pair = getattr(KL, "AveragePooling%dD" % ndim)(2, name="pair_pool%d" % (i + 1))(pair)
    x = KL.Concatenate(name="pair_skip")([x, pair])
    x = conv_norm_act(x, base_channels, name="dec_pair")
    # float32 also under a mixed dtype policy: N(0, 1e-5) weights and sub-voxel displacements need it.
    flow = _conv(ndim, ndim, 3, name="flow_head", padding="same",
                 kernel_initializer=tf.keras.initializers.RandomNormal(mean=0.0, stddev=1e-5),
                 bias_initializer="zeros", dtype="float32")(x)
    return tf.keras.Model(features + [moving, fixed], flow, name=name)
