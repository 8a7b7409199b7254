"""The GSMorph registration network: a VoxelMorph-style U-Net on voxelmorph's spatial transformer.

Topology of the GSMorph paper's reference implementation (Dou et al., MICCAI 2023), one code path for 2D
and 3D:

- input: moving and fixed images ``[B, *vol, 1]``, concatenated to 2 channels;
- an initial 3x3 conv 2 -> 16 without bias (no norm, no activation);
- encoder blocks at 16, 32, 64, 128, 256 features, max-pool x2 between them; each block is two 3x3 convs,
  each followed by BatchNorm and LeakyReLU;
- decoder: x2 (bi/tri)linear upsampling, concatenation with the encoder skip, a block at 128, 64, 32, 16;
- flow head: 3x3 conv 16 -> ndim, weights ~ N(0, 1e-5), bias 0, so training starts at the identity;
- optional scaling-and-squaring integration (voxelmorph ``VecInt``) for a diffeomorphic variant;
- voxelmorph ``SpatialTransformer`` (linear) warps the moving image (or, with ``warp_padding="zeros"``,
  :class:`gsmorph_tf.core.flows.Warp`, zero outside the volume as the reference's ``grid_sample``).

In 2D at 128x128 this has 1,968,002 trainable parameters in 75 trainable tensors (paper: 1.96M).

Details that change training dynamics follow the reference code (PyTorch defaults it relies on):
``nn.LeakyReLU()`` has slope **0.01**; conv kernels are Kaiming-normal (``fan_out``, ReLU gain: std
``sqrt(2 / fan_out)``, ``fan_out = kernel volume x output channels``) with zero biases; BatchNorm has
momentum 0.9 in Keras' convention (PyTorch's 0.1) and epsilon **1e-5** (Keras' default is 1e-3).
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import neurite as ne
import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf.core.flows import check_padding, warp_layer

KL = tf.keras.layers

#: Encoder feature counts of the paper's network; the decoder mirrors all but the last.
PAPER_FEATURES = (16, 32, 64, 128, 256)

#: Slope of the reference's ``nn.LeakyReLU()`` for negative inputs (PyTorch's default).
LEAKY_RELU_SLOPE = 0.01
#: The reference's BatchNorm: PyTorch momentum 0.1 (= Keras 0.9: the running statistics move 10 % per step;
#: Keras' 0.99 leaves them near their initial values for hundreds of steps) and epsilon 1e-5.
BATCHNORM_MOMENTUM = 0.9
BATCHNORM_EPSILON = 1e-5


def kaiming_normal_fan_out():
    """PyTorch's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``: N(0, 2 / fan_out), untruncated."""
    return tf.keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def count_trainable_parameters(model):
    """Number of trainable scalars of a Keras model (the papers' parameter counts)."""
    return int(sum(int(tf.size(v)) for v in model.trainable_variables))


def _conv(ndim, filters, name, use_bias=True, **kwargs):
    """3x3(x3) 'same' conv, Kaiming-normal kernel and zero bias unless ``kwargs`` say otherwise."""
    kwargs.setdefault("kernel_initializer", kaiming_normal_fan_out())
    kwargs.setdefault("bias_initializer", "zeros")
    return getattr(KL, "Conv%dD" % ndim)(filters, 3, padding="same", use_bias=use_bias, name=name, **kwargs)


def _upsample(ndim, name, dtype=None):
    """x2 linear upsampling: Keras' bilinear resize in 2D, neurite's linear ``Resize`` in 3D
    (``UpSampling3D`` only repeats voxels)."""
    if ndim == 2:
        return KL.UpSampling2D(2, interpolation="bilinear", name=name, dtype=dtype)
    return ne.layers.Resize(2, interp_method="linear", name=name, dtype=dtype)


def conv_block(x, filters, name, dtype=None):
    """Two (3x3 conv -> BatchNorm -> LeakyReLU(0.01)) layers. ``x``: ``[B, *vol, C]`` -> ``[B, *vol, filters]``.
    ``dtype``: the layers' dtype policy (None: Keras' global policy)."""
    ndim = len(x.shape) - 2
    for i in (1, 2):
        x = _conv(ndim, filters, name="%s_conv%d" % (name, i), dtype=dtype)(x)
        x = KL.BatchNormalization(momentum=BATCHNORM_MOMENTUM, epsilon=BATCHNORM_EPSILON,
                                  name="%s_bn%d" % (name, i), dtype=dtype)(x)
        x = KL.LeakyReLU(LEAKY_RELU_SLOPE, name="%s_act%d" % (name, i), dtype=dtype)(x)
    return x


def build_gsmorph_unet(inshape, features=PAPER_FEATURES, int_steps=0, name="gsmorph_unet", dtype_policy=None,
                       warp_padding="border"):
    """Build the GSMorph registration network as a functional Keras model.

    Args:
        inshape: spatial shape of the images, e.g. ``(128, 128)`` or ``(80, 96, 80)``; every size must be
            divisible by ``2 ** (len(features) - 1)`` (the number of max-pools).
        features: encoder feature counts, top to bottom.
        int_steps: 0 for a plain displacement field; > 0 integrates the predicted stationary velocity
            field with that many scaling-and-squaring steps (voxelmorph ``VecInt``): a diffeomorphic variant.
        name: model name.
        dtype_policy: None: every layer follows Keras' global dtype policy (float32 unless changed).
            ``"mixed_float16"`` (GPUs) or ``"mixed_bfloat16"``: the U-Net body computes in that policy
            (float32 weights, 16-bit activations) while the flow head, the integration and the spatial
            transformer run in float32, so ``moved`` and ``flow`` (what the losses see) stay float32.
            Train it with a ``tf.keras.mixed_precision.LossScaleOptimizer`` for float16.
        warp_padding: what the warp of the moving image reads outside the volume (see
            :func:`gsmorph_tf.core.flows.warp`): ``border`` (voxelmorph's) or ``zeros`` (the reference's
            ``grid_sample``).

    Returns:
        A ``tf.keras.Model`` with inputs ``moving`` and ``fixed`` (``[B, *inshape, 1]`` float32, intensities in
        [0, 1]) and outputs ``[moved, flow]``: the warped moving image ``[B, *inshape, 1]`` and the
        displacement field ``[B, *inshape, ndim]`` in voxels, channel k along array axis k ('ij'), such that
        ``moved(x) = moving(x + flow(x))``.
    """
    inshape = tuple(int(s) for s in inshape)
    ndim = len(inshape)
    if ndim not in (2, 3):
        raise ValueError("inshape must be 2D or 3D, got %r" % (inshape,))
    factor = 2 ** (len(features) - 1)
    if any(s % factor for s in inshape):
        raise ValueError("every image size must be divisible by %d (%d max-pools), got inshape %r"
                         % (factor, len(features) - 1, inshape))
    if int_steps < 0:
        raise ValueError("int_steps must be >= 0, got %d" % int_steps)
    check_padding(warp_padding)

    body = dtype_policy  # None leaves every layer on the global policy, as before this option existed
    output = None if dtype_policy is None else "float32"
    moving = KL.Input((*inshape, 1), name="moving")
    fixed = KL.Input((*inshape, 1), name="fixed")
    x = KL.Concatenate(name="pair", dtype=body)([moving, fixed])
    x = _conv(ndim, features[0], name="initial_conv", use_bias=False, dtype=body)(x)

    skips = []
    for level, filters in enumerate(features):
        if level > 0:
            x = getattr(KL, "MaxPooling%dD" % ndim)(2, name="down%d_pool" % level, dtype=body)(x)
        x = conv_block(x, filters, name="enc%d" % level, dtype=body)
        skips.append(x)

    for level in range(len(features) - 2, -1, -1):
        x = _upsample(ndim, name="dec%d_up" % level, dtype=body)(x)
        x = KL.Concatenate(name="dec%d_skip" % level, dtype=body)([x, skips[level]])
        x = conv_block(x, features[level], name="dec%d" % level, dtype=body)

    # The head's N(0, 1e-5) weights and sub-voxel displacements need float32; it casts its input up.
    head = _conv(ndim, ndim, name="flow" if int_steps == 0 else "velocity",
                 kernel_initializer=tf.keras.initializers.RandomNormal(mean=0.0, stddev=1e-5),
                 bias_initializer="zeros", dtype=output)
    flow = head(x)
    if int_steps > 0:
        flow = vxm.layers.VecInt(method="ss", int_steps=int_steps, name="flow", dtype=output)(flow)
    moved = warp_layer(warp_padding, name="moved", dtype=output)([moving, flow])
    return tf.keras.Model(inputs=[moving, fixed], outputs=[moved, flow], name=name)
