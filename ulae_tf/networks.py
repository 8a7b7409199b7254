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
  voxelmorph's ``RescaleTransform`` upsamples it (magnitudes scaled) to full size, and voxelmorph's
  ``SpatialTransformer`` warps the step's moving image, which becomes the next step's moving image;
- the three fields are composed recursively (:func:`gsmorph_tf.flows.compose_flows`), not summed.

Trainable parameters, 16 base channels (measured; independent of the image size): **1,109,241 in 3D**,
exactly the reference code's count, and **388,806 in 2D**. The paper's table says 789.56K; we did not
find which variant that counts, and built the reference code. InstanceNorm has no learned parameters
(PyTorch's default, as in the reference).

Differences from the reference, none of which changes a parameter: ``moved`` is the moving image warped
once by the composed field, where the reference computes its loss on the third step's output (see
:func:`build_ulae_net`); stride-2 convs and upsampling follow the reference's sampling positions but are
built from Keras layers (see :mod:`ulae_tf.blocks`); flows are upsampled by voxelmorph's
``RescaleTransform`` (corner-aligned linear, as the reference's ``ResizeTransform``).
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import tensorflow as tf
import voxelmorph as vxm

from ulae_tf.blocks import build_step_decoder, build_uncoupled_encoder
from gsmorph_tf.flows import ComposeFlows

KL = tf.keras.layers

#: Each step's flow is predicted at full size divided by this factor (steps 1, 2, 3).
STEP_DOWNSAMPLING = (4, 2, 1)
#: Stride-2 levels of the encoder: image sizes must be divisible by 2 ** ENCODER_LEVELS.
ENCODER_LEVELS = 4


def build_ulae_net(inshape, base_channels=16, name="ulae_net"):
    """Build ULAE-net as a functional Keras model.

    Args:
        inshape: spatial shape of the images, e.g. ``(128, 128)`` or ``(160, 192, 160)``; every size must be
            divisible by 16 (four stride-2 encoder levels).
        base_channels: feature count of the first encoder level (the paper's 16).
        name: model name.

    Returns:
        A ``tf.keras.Model`` with inputs ``moving`` and ``fixed`` (``[B, *inshape, 1]`` float32) and outputs,
        in this order (displacements in voxels, channel k along array axis k, ``moved(x) = moving(x + u(x))``):

        - ``moved`` ``[B, *inshape, 1]``: the moving image warped once by ``flow``. Chosen over the third
          step's output (the image resampled three times, on which the reference computes its loss) so
          that ``moved`` and ``flow`` describe the same transform -- evaluation warps labels with ``flow``
          and scores intensities on ``moved`` -- and so the loss does not see the blur of three resamplings;
        - ``flow`` ``[B, *inshape, ndim]``: the composed field ``S(S(phi1) o phi2 + phi2) o phi3 + phi3``;
        - ``step1_moved``, ``step2_moved``, ``step3_moved`` ``[B, *inshape, 1]``: each step's output, the
          previous one warped by that step's field;
        - ``step1_flow``, ``step2_flow``, ``step3_flow`` ``[B, *inshape, ndim]``: each step's own field at
          full size (``compose_flows`` of the first k gives the field accumulated after step k).

        ``gsmorph_tf.model.GradientSurgeryModel`` reads the first two.
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

    moving = KL.Input((*inshape, 1), name="moving")
    fixed = KL.Input((*inshape, 1), name="fixed")
    encoder = build_uncoupled_encoder(inshape, base_channels)
    step_input, step_moved, step_flows = moving, [], []
    for step, downsampling in enumerate(STEP_DOWNSAMPLING, start=1):
        decoder = build_step_decoder(inshape, base_channels, step, name="step%d_decoder" % step)
        e1, e2, e3, e4 = encoder([step_input, fixed])
        coarse_flow = decoder([e4, e3, e2, e1][:step + 1] + [step_input, fixed])
        # Applied at step 3 too (a x1 rescale is the identity) so that every step names its field alike.
        flow = vxm.layers.RescaleTransform(downsampling, name="step%d_flow" % step)(coarse_flow)
        step_input = vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij",
                                                   name="step%d_moved" % step)([step_input, flow])
        step_moved.append(step_input)
        step_flows.append(flow)
    flow = ComposeFlows(name="flow")(step_flows)
    moved = vxm.layers.SpatialTransformer(interp_method="linear", indexing="ij", name="moved")([moving, flow])
    return tf.keras.Model(inputs=[moving, fixed], outputs=[moved, flow] + step_moved + step_flows, name=name)
