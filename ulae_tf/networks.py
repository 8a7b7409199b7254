"""ULAE-net (Shu et al., MICCAI 2021, "Medical Image Registration Based on Uncoupled Learning and
Accumulative Enhancement") on voxelmorph's spatial transformer, one code path for 2D and 3D.

Topology: that of the public reference code (PyTorch, ``ULAE.py``: one encoder object shared by three
``Accumulative_Enhancement_k`` modules, each with its own decoder), layer for layer:

- uncoupled spatial encoder (:func:`ulae_tf.blocks.build_uncoupled_encoder`), four stride-2 levels with
  ``b, 2b, 2b, 2b`` features (``b`` = base channels, 16): fixed path 3x3 conv + InstanceNorm + LeakyReLU;
  moving path ASPP-style blocks (global-pool, 3x3, 1x1 and 3x3 dilated d, 2d, 3d branches, d = 4, 3, 2, 1)
  fused with the fixed features by a 1x1 conv; per-level skip = 3x3 conv block of both paths;
- accumulative enhancement: step k (k = 1, 2, 3) runs the shared encoder on (its moving image, fixed), its
  own decoder (:func:`ulae_tf.blocks.build_step_decoder`) predicts a flow at 1/4, 1/2, 1 of full size,
  :class:`gsmorph_tf.core.flows.RescaleFlow` (voxelmorph's ``RescaleTransform``, bit for bit, on the whole batch at
  once) upsamples it (magnitudes scaled) to full size, and a linear warp
  (:func:`gsmorph_tf.core.flows.warp_layer`: voxelmorph's ``SpatialTransformer`` for the border rule, its
  arithmetic on the whole batch for zero padding) warps the step's moving image, which becomes the next step's
  moving image;
- the three fields are composed recursively (:func:`gsmorph_tf.core.flows.compose_flows`), not summed.

Trainable parameters, 16 base channels (measured; independent of the image size): **1,109,241 in 3D**,
exactly the reference code's count, and **388,806 in 2D**. The paper's table says 789.56K; we did not
find which variant that counts, and built the reference code. InstanceNorm has no learned parameters
(PyTorch's default, as in the reference).

The reference's training objective and our variant (the settings of :func:`build_ulae_net` and of the
``ulae`` registry entry; the ULAE paper flagfiles select the reference's):

- the similarity is computed on ``step3_moved`` (the moving image resampled three times in sequence, the
  reference's ``warp3``) or on ``moved`` (warped once by the composed field, our variant: it is the image
  evaluation scores, and it does not carry the blur of three resamplings);
- warps and composition read 0 outside the volume (``warp_padding="zeros"``, the reference's
  ``grid_sample``) or the nearest border voxel (``border``, voxelmorph's default, our variant);
- convolutions start from PyTorch's default initialisation (``init="pytorch"``, the reference's:
  :func:`pytorch_default_init`) or Keras' (``init="keras"``: Glorot-uniform kernels, zero biases).

Beyond those, stride-2 convs and upsampling follow the reference's sampling positions but are built from Keras
layers (see :mod:`ulae_tf.blocks`); flows are upsampled by voxelmorph's ``RescaleTransform`` arithmetic
(corner-aligned linear, as the reference's ``ResizeTransform``), computed on the whole batch at once
(voxelmorph's layer loops over the items with ``tf.map_fn``; docs/results/speed.md, "Flow upsampling without
map_fn").
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import contextlib
import math

import tensorflow as tf

from gsmorph_tf.config import ULAE_INITS
from gsmorph_tf.core.flows import ComposeFlows, RescaleFlow, check_padding, warp_layer
from ulae_tf.blocks import build_step_decoder, build_uncoupled_encoder

KL = tf.keras.layers

#: Each step's flow is predicted at full size divided by this factor (steps 1, 2, 3).
STEP_DOWNSAMPLING = (4, 2, 1)
#: Stride-2 levels of the encoder: image sizes must be divisible by 2 ** ENCODER_LEVELS.
ENCODER_LEVELS = 4
#: Initialisations of the convolutions (the flow heads always start at N(0, 1e-5), zero bias): ``pytorch``
#: (the reference's, :func:`pytorch_default_init`) or ``keras`` (Keras' defaults).
INITIALISATIONS = ULAE_INITS
#: Layer name of the steps' flow heads, which keep their own initialisation.
FLOW_HEAD = "flow_head"


def _convolutions(model):
    """Every convolution layer of ``model``, its nested models included."""
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            yield from _convolutions(layer)
        elif isinstance(layer, tf.keras.layers.Conv2D | tf.keras.layers.Conv3D):
            yield layer


def pytorch_default_init(network):
    """Re-initialise every convolution of ``network`` except the flow heads as PyTorch's ``Conv3d`` does by
    default (the ULAE reference code leaves them so): kernel ``kaiming_uniform_(a=sqrt(5))``, i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), where ``fan_in`` = input
    channels x kernel volume. Draws from TensorFlow's global random state (seeded by
    ``tf.keras.utils.set_random_seed``). Returns ``network``."""
    for layer in _convolutions(network):
        if layer.name == FLOW_HEAD:
            continue
        bound = 1.0 / math.sqrt(math.prod(layer.kernel.shape[:-1]))
        layer.kernel.assign(tf.random.uniform(layer.kernel.shape, -bound, bound, dtype=layer.kernel.dtype))
        if layer.use_bias:
            layer.bias.assign(tf.random.uniform(layer.bias.shape, -bound, bound, dtype=layer.bias.dtype))
    return network


@contextlib.contextmanager
def _global_dtype_policy(policy):
    """Build the layers created inside under Keras' global dtype ``policy`` (None: leave it), then restore it."""
    if policy is None:
        yield
        return
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)


def build_ulae_net(inshape, base_channels=16, name="ulae_net", warp_padding="border", init="keras",
                   dtype_policy=None):
    """Build ULAE-net as a functional Keras model.

    Args:
        inshape: spatial shape of the images, e.g. ``(128, 128)`` or ``(160, 192, 160)``; every size must be
            divisible by 16 (four stride-2 encoder levels).
        base_channels: feature count of the first encoder level (the paper's 16).
        name: model name.
        warp_padding: what every warp and the composition read outside the volume (see
            :func:`gsmorph_tf.core.flows.warp`): ``zeros`` (the reference's) or ``border`` (voxelmorph's).
        init: one of :data:`INITIALISATIONS`: ``pytorch`` (the reference's) or ``keras``.
        dtype_policy: None: every layer follows Keras' global dtype policy. ``"mixed_float16"`` (GPUs) or
            ``"mixed_bfloat16"``: the encoder and decoders compute in that policy (float32 weights) while the
            flow heads, rescaling, warps and composition run in float32, so every output is float32.

    Returns:
        A ``tf.keras.Model`` with inputs ``moving`` and ``fixed`` (``[B, *inshape, 1]`` float32) and outputs,
        in this order (displacements in voxels, channel k along array axis k, ``moved(x) = moving(x + u(x))``):

        - ``moved`` ``[B, *inshape, 1]``: the moving image warped once by ``flow``, so that ``moved`` and
          ``flow`` describe the same transform (evaluation warps labels with ``flow`` and scores intensities
          on ``moved``). The reference computes its loss on ``step3_moved`` instead (see the module notes);
        - ``flow`` ``[B, *inshape, ndim]``: the composed field ``S(S(phi1) o phi2 + phi2) o phi3 + phi3``;
        - ``step1_moved``, ``step2_moved``, ``step3_moved`` ``[B, *inshape, 1]``: each step's output, the
          previous one warped by that step's field;
        - ``step1_flow``, ``step2_flow``, ``step3_flow`` ``[B, *inshape, ndim]``: each step's own field at
          full size (``compose_flows`` of the first k gives the field accumulated after step k).

        ``gsmorph_tf.core.model.GradientSurgeryModel`` reads the first two, or ``step3_moved`` and ``flow``
        (``moved_output="step3_moved"``, the reference's objective).
    """
    inshape = tuple(int(s) for s in inshape)
    if len(inshape) not in (2, 3):
        raise ValueError("inshape must be 2D or 3D, got %r" % (inshape,))
    factor = 2 ** ENCODER_LEVELS
    if any(s % factor for s in inshape):
        raise ValueError("every image size must be divisible by %d (%d stride-2 encoder levels), got inshape %r"
                         % (factor, ENCODER_LEVELS, inshape))
    if base_channels < 1:
        raise ValueError("base_channels must be >= 1, got %r" % (base_channels,))

    check_padding(warp_padding)
    if init not in INITIALISATIONS:
        raise ValueError("init must be one of %s, got %r" % (", ".join(INITIALISATIONS), init))

    output = None if dtype_policy is None else "float32"
    moving = KL.Input((*inshape, 1), name="moving")
    fixed = KL.Input((*inshape, 1), name="fixed")
    with _global_dtype_policy(dtype_policy):
        encoder = build_uncoupled_encoder(inshape, base_channels)
        decoders = [build_step_decoder(inshape, base_channels, step, name="step%d_decoder" % step)
                    for step in range(1, len(STEP_DOWNSAMPLING) + 1)]
    step_input, step_moved, step_flows = moving, [], []
    for step, (decoder, downsampling) in enumerate(zip(decoders, STEP_DOWNSAMPLING), start=1):
        e1, e2, e3, e4 = encoder([step_input, fixed])
        coarse_flow = decoder([e4, e3, e2, e1][:step + 1] + [step_input, fixed])
        # Applied at step 3 too (a x1 rescale is the identity) so that every step names its field alike.
        flow = RescaleFlow(downsampling, name="step%d_flow" % step, dtype=output)(coarse_flow)
        step_input = warp_layer(warp_padding, name="step%d_moved" % step, dtype=output)([step_input, flow])
        step_moved.append(step_input)
        step_flows.append(flow)
    flow = ComposeFlows(warp_padding, name="flow", dtype=output)(step_flows)
    moved = warp_layer(warp_padding, name="moved", dtype=output)([moving, flow])
    network = tf.keras.Model(inputs=[moving, fixed], outputs=[moved, flow] + step_moved + step_flows, name=name)
    return pytorch_default_init(network) if init == "pytorch" else network
