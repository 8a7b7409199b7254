"""Similarity and smoothness losses: voxelmorph's MSE and ``Grad``, and local NCC over cubic windows.

Each factory returns a function giving a scalar (mean over the batch), the form ``train_step`` needs.

Local NCC (:func:`windowed_ncc_loss`) is computed here, in two formulas (:data:`NCC_FORMULAS`) that share
the same window sums and differ in how they turn them into a squared correlation (:func:`local_ncc`):

- ``voxelmorph``: voxelmorph 0.2's ``vxm.losses.NCC`` (our default): the local covariance and both local
  variances are clamped at ``1e-5`` before ``cc = (cross / I_var) * (cross / J_var)``. A flat window (both
  variances below the clamp) scores 1; an anti-correlated window scores about 0 and passes no gradient
  through its covariance.
- ``reference``: the ULAE-net reference code's ``NCC`` (``ULAE/Loss.py``): ``cc = cross^2 / (I_var * J_var +
  1e-5)``, no clamps. A flat window scores 0; an anti-correlated window scores as high as a correlated one.

Both use zero-padded 'same' window sums and the full window's voxel count ``n = window^ndim`` for the means,
also at the borders. The sums are computed by separable box filtering (:func:`box_sums`); the direct
``window^ndim`` convolution that voxelmorph and the reference code use is :func:`box_sums_direct`.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import tensorflow as tf
import voxelmorph as vxm

from gsmorph_tf.config import NCC_FORMULAS, REG_PENALTIES  # noqa: F401  (re-exported)

#: The similarities built here (the registry also names ULAE's multi-window NCC, built in ulae_tf.losses).
SIMILARITIES = ("mse", "ncc")

#: Local NCC's ``eps``: voxelmorph's clamp of the covariance and variances, and the reference code's term
#: added to the denominator ``I_var * J_var``.
NCC_EPS = 1e-5


def _spatial_rank(images, what="images"):
    """The number of spatial axes of ``[B, *vol, C]`` ``images`` (2 or 3), or ValueError naming the shape."""
    ndim = images.shape.rank - 2 if images.shape.rank is not None else None
    if ndim not in (2, 3):
        raise ValueError("%s must be [B, *vol, C] with 2 or 3 spatial axes, got shape %s" % (what, images.shape))
    return ndim


def check_ncc_formula(formula):
    """``formula`` if it is one of :data:`NCC_FORMULAS`, else ValueError naming it."""
    if formula not in NCC_FORMULAS:
        raise ValueError("unknown NCC formula %r; valid: %s" % (formula, ", ".join(NCC_FORMULAS)))
    return formula


def check_ncc_window(window):
    """``window`` as an int if it is a positive integer (a cube side in voxels), else ValueError naming it."""
    if int(window) != window or window < 1:
        raise ValueError("an NCC window side must be a positive integer (voxels), got %r" % (window,))
    return int(window)


def _ones_convolution(images, kernel_shape):
    """``images`` ``[B, *vol, 1]`` convolved with a ones kernel of spatial shape ``kernel_shape`` ('SAME', zero
    padding): the sum over a ``kernel_shape`` box around each voxel, ``[B, *vol, 1]``."""
    # data_format named: without it, TensorFlow 2.21's eager Conv3D gradient fails (the attribute reads None).
    data_format = "NDHWC" if len(kernel_shape) == 3 else "NHWC"
    return tf.nn.convolution(images, tf.ones(list(kernel_shape) + [1, 1], images.dtype), padding="SAME",
                             data_format=data_format)


def box_sums(images, window):
    """Sum of each channel of ``images`` over the ``window``-sided cube around each voxel, zero outside the
    volume: the numbers of :func:`box_sums_direct`, in ``O(window)`` work per voxel instead of
    ``O(window^ndim)``.

    The cube is 'same' (TensorFlow's convention): ``(window - 1) // 2`` voxels before each voxel and
    ``window // 2`` after, along each axis. It is filtered one axis at a time by a 1-D convolution with a ones
    kernel ('SAME', zero padding), each channel folded into the batch so that every convolution has one input
    and one output channel; the gradient is TensorFlow's, the same box sum of the incoming gradient (mirrored
    for an even window). Earlier versions used 'same' average pooling (slow in 3D on CPUs without AVX-512) and
    then running sums in float64, slower than these convolutions from 80x96x80 up (docs/results/speed.md).

    Args:
        images: ``[B, *vol, C]``, 2D or 3D; each channel is summed on its own; float32 or float64 (float16 and
            bfloat16 are summed in float32).
        window: cube side in voxels, a positive integer.

    Returns:
        ``[B, *vol, C]``, the dtype of ``images``.
    """
    window = check_ncc_window(window)
    images = tf.convert_to_tensor(images)
    ndim = _spatial_rank(images)
    channels = images.shape[-1]
    sums = tf.cast(images, tf.float32) if images.dtype in (tf.float16, tf.bfloat16) else images
    if channels != 1:  # [B, *vol, C] -> [C * B, *vol, 1], channel-major
        sums = tf.expand_dims(tf.concat(tf.unstack(sums, axis=-1), axis=0), -1)
    for axis in range(ndim):
        kernel_shape = [1] * ndim
        kernel_shape[axis] = window
        sums = _ones_convolution(sums, kernel_shape)
    if channels != 1:
        sums = tf.stack(tf.split(sums[..., 0], channels, axis=0), axis=-1)
    return tf.cast(sums, images.dtype)


def box_sums_direct(images, window):
    """:func:`box_sums` as voxelmorph and the ULAE reference code compute it: one ``window^ndim``
    convolution with a ones kernel ('SAME', zero padding) per channel, ``O(window^ndim)`` work per voxel.
    The reference the tests and ``benchmarks/ulae.py`` compare :func:`box_sums` against.

    Args and returns as :func:`box_sums`.
    """
    window = check_ncc_window(window)
    images = tf.convert_to_tensor(images)
    kernel_shape = [window] * _spatial_rank(images)
    return tf.concat([_ones_convolution(images[..., c:c + 1], kernel_shape) for c in range(images.shape[-1])],
                     axis=-1)


def ncc_moments(fixed, moved):
    """The five maps local NCC sums over windows, in two stacks along the batch axis: ``(fixed_maps,
    moved_maps)``, ``[2 * B, *vol, 1]`` = ``I, I^2`` and ``[3 * B, *vol, 1]`` = ``J, J^2, I*J`` (each map
    ``[B, *vol, 1]``) for ``I = fixed``, ``J = moved`` (both ``[B, *vol, 1]``, 2D or 3D). Along the batch axis
    rather than as channels, so that :func:`box_sums` filters one channel; in two stacks, so that a gradient
    with respect to the moved image only (training) does not pass back through the fixed image's window sums."""
    fixed, moved = tf.convert_to_tensor(fixed), tf.convert_to_tensor(moved)
    for what, image in (("fixed", fixed), ("moved", moved)):
        _spatial_rank(image, what)
        if image.shape[-1] != 1:
            raise ValueError("local NCC takes one-channel images [B, *vol, 1]; %s has shape %s" % (what, image.shape))
    return tf.concat([fixed, fixed * fixed], axis=0), tf.concat([moved, moved * moved, fixed * moved], axis=0)


def local_ncc(fixed_sums, moved_sums, window, formula):
    """Squared local correlation per voxel from window sums.

    Args:
        fixed_sums, moved_sums: ``[2 * B, *vol, 1]`` and ``[3 * B, *vol, 1]``: window sums of the two
            :func:`ncc_moments` stacks, ``I, I^2`` and ``J, J^2, I*J``.
        window: the window side the sums were taken over; the means divide by ``n = window^ndim`` voxels,
            also at the borders where part of the window is zero padding.
        formula: ``voxelmorph`` (clamped, voxelmorph 0.2) or ``reference`` (the ULAE-net code); see the module
            docstring.

    Returns:
        ``[B, *vol, 1]``, in [0, 1] up to rounding: with ``cross = sum IJ - sum I sum J / n`` and
        ``I_var = sum I^2 - (sum I)^2 / n`` (``J_var`` alike), ``voxelmorph``:
        ``(max(cross, eps) / max(I_var, eps)) * (max(cross, eps) / max(J_var, eps))``; ``reference``:
        ``cross^2 / (I_var * J_var + eps)``; ``eps`` = :data:`NCC_EPS`.
    """
    check_ncc_formula(formula)
    n = float(window ** (moved_sums.shape.rank - 2))
    i_sum, i2_sum = tf.split(fixed_sums, 2, axis=0)
    j_sum, j2_sum, ij_sum = tf.split(moved_sums, 3, axis=0)
    # voxelmorph's and the reference code's expressions (the means u = sum / n written out), kept as they are
    # so that rounding, which matters where the variances are near eps, follows theirs.
    u_i, u_j = i_sum / n, j_sum / n
    cross = ij_sum - u_j * i_sum - u_i * j_sum + u_i * u_j * n
    i_var = i2_sum - 2 * u_i * i_sum + u_i * u_i * n
    j_var = j2_sum - 2 * u_j * j_sum + u_j * u_j * n
    if formula == "reference":
        return cross * cross / (i_var * j_var + NCC_EPS)
    cross = tf.maximum(cross, NCC_EPS)
    return (cross / tf.maximum(i_var, NCC_EPS)) * (cross / tf.maximum(j_var, NCC_EPS))


def windowed_ncc_loss(fixed, moved, windows, weights, formula, window_sums=box_sums):
    """``-sum_i weights_i * mean(local_ncc_{windows_i})``: (multi-window) negative local NCC.

    The five :func:`ncc_moments` maps are computed once and shared by every window.

    Args:
        fixed, moved: ``[B, *vol, 1]`` images, 2D or 3D.
        windows: cubic window sides in voxels.
        weights: one weight per window.
        formula: one of :data:`NCC_FORMULAS` (see :func:`local_ncc`).
        window_sums: :func:`box_sums`, or :func:`box_sums_direct` to compare against the direct convolution.

    Returns:
        A scalar: the weighted sum over windows of the negative mean over batch and voxels of the squared local
        correlation (one window, weight 1: in [-1, 0]). Lower is better.
    """
    windows = [check_ncc_window(w) for w in windows]
    if len(windows) != len(weights) or not windows:
        raise ValueError("windowed_ncc_loss takes one weight per window, got windows %r and weights %r"
                         % (windows, weights))
    fixed_maps, moved_maps = ncc_moments(fixed, moved)
    terms = [weight * tf.reduce_mean(local_ncc(window_sums(fixed_maps, window), window_sums(moved_maps, window),
                                               window, formula))
             for window, weight in zip(windows, weights)]
    return -tf.add_n(terms)


def ncc_loss(window=9, formula="voxelmorph"):
    """Negative local NCC over a ``window``-sided cube, ``f(fixed, moved) -> scalar`` in [-1, 0] (images
    ``[B, *vol, 1]``, 2D or 3D), with the ``formula`` of :data:`NCC_FORMULAS` (see :func:`local_ncc`).
    ``voxelmorph`` gives ``mean(vxm.losses.NCC(window).loss(fixed, moved))``."""
    window, formula = check_ncc_window(window), check_ncc_formula(formula)
    return lambda fixed, moved: windowed_ncc_loss(fixed, moved, (window,), (1.0,), formula)


def similarity_loss(name, ncc_window=9, ncc_formula="voxelmorph"):
    """Image dissimilarity ``f(fixed, moved) -> scalar`` (lower is better).

    Args:
        name: ``mse`` (mean squared intensity difference, the GSMorph paper) or ``ncc`` (negative local
            normalised cross-correlation over a cubic window, :func:`ncc_loss`).
        ncc_window: NCC window side in voxels.
        ncc_formula: NCC formula, one of :data:`NCC_FORMULAS`.
    """
    if name == "mse":
        mse = vxm.losses.MSE()
        return lambda fixed, moved: tf.reduce_mean(mse.loss(fixed, moved))
    if name == "ncc":
        return ncc_loss(ncc_window, ncc_formula)
    raise ValueError("unknown similarity %r; valid: %s" % (name, ", ".join(SIMILARITIES)))


def smoothness_loss(penalty):
    """Spatial-gradient regulariser ``f(flow) -> scalar``: the mean ``|du/dx|`` (``l1``) or ``(du/dx)^2``
    (``l2``) of the displacement field over all axes, with forward differences (voxelmorph ``Grad``)."""
    if penalty not in REG_PENALTIES:
        raise ValueError("unknown regularisation penalty %r; valid: %s" % (penalty, ", ".join(REG_PENALTIES)))
    grad = vxm.losses.Grad(penalty)
    return lambda flow: tf.reduce_mean(grad.loss(None, flow))


def mse_from_config(config):
    """The ``mse`` registry entry: :func:`similarity_loss` ``("mse")`` (the config has no MSE setting)."""
    del config
    return similarity_loss("mse")


def ncc_from_config(config):
    """The ``ncc`` registry entry: :func:`ncc_loss` over ``config.ncc_window`` with formula ``config.ncc``."""
    return ncc_loss(config.ncc_window, config.ncc)
