"""Training's preprocessing as TensorFlow ops, for the raw-input ``serving_default`` of an exported 2D model.

The rules are those of :mod:`gsmorph_tf.data.preprocessing` (NumPy), written again with TensorFlow ops so that
the SavedModel does them in its graph and a client sends scanner intensities of any size:

1. intensity scaling (:func:`scale_pair_to_unit`): one range for the whole request, minimum -> 0 and the
   99.5th percentile (linear interpolation, as ``np.percentile``) -> 1, clipped;
2. localisation (:func:`motion_center`): the two-frame motion rule, the maximum of ``|moving - fixed| / 2``
   averaged over the slices and smoothed by a Gaussian of ``crop / 8`` pixels (``scipy.ndimage``'s kernel and
   its ``reflect`` border); the image centre where nothing moves;
3. the crop (:func:`crop_window`): the ``crop`` window around that centre, zero-padded outside the image;
4. after registration, :func:`paste_window` puts the window's results back on the input's grid.

A request (the batch axis) is **one subject's slices**: one intensity range and one crop centre for all of
them, as training cuts one subject. Graph-only: nothing here needs voxelmorph or this package at serving time.
"""
import numpy as np
import tensorflow as tf

from gsmorph_tf.data.preprocessing import motion_sigma

#: Percentile of the pooled intensities mapped to 1 (that of :func:`~gsmorph_tf.data.preprocessing.scale_to_unit`).
UPPER_PERCENTILE = 99.5


def percentile(values, q):
    """The ``q``-th percentile of all of ``values`` (float32), interpolated linearly as ``np.percentile``."""
    ordered = tf.sort(tf.reshape(values, [-1]))
    position = (q / 100.0) * tf.cast(tf.size(ordered) - 1, tf.float64)
    lower = tf.floor(position)
    below = tf.gather(ordered, tf.cast(lower, tf.int32))
    above = tf.gather(ordered, tf.cast(tf.math.ceil(position), tf.int32))
    return below + (above - below) * tf.cast(position - lower, tf.float32)


def scale_pair_to_unit(moving, fixed):
    """Both images of a request mapped to [0, 1] with one shared range (see the module docstring).

    Args:
        moving, fixed: float32 tensors of any shapes, scanner intensities.

    Returns:
        ``(moving, fixed)`` float32 in [0, 1]; all zeros where the intensities are constant.
    """
    pooled = tf.concat([tf.reshape(moving, [-1]), tf.reshape(fixed, [-1])], axis=0)
    lo = tf.reduce_min(pooled)
    hi = percentile(pooled, UPPER_PERCENTILE)
    hi = tf.where(hi > lo, hi, tf.reduce_max(pooled))  # mostly-empty images: the maximum still gives a range
    span = tf.where(hi > lo, hi - lo, 1.0)

    def scale(x):
        return tf.where(hi > lo, tf.clip_by_value((x - lo) / span, 0.0, 1.0), tf.zeros_like(x))

    return scale(moving), scale(fixed)


def gaussian_kernel(sigma, truncate=4.0):
    """``scipy.ndimage.gaussian_filter``'s 1-D kernel: radius ``int(truncate * sigma + 0.5)``, sums to 1."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (x / sigma) ** 2)
    return (weights / weights.sum()).astype(np.float32)


def smooth(image, sigma):
    """Gaussian smoothing of a ``[X, Y]`` map as ``scipy.ndimage.gaussian_filter(mode="reflect")``; needs a
    radius ``int(4 sigma + 0.5)`` <= X and Y."""
    kernel = gaussian_kernel(sigma)
    radius = len(kernel) // 2
    padded = tf.pad(image, [[radius, radius], [radius, radius]], mode="SYMMETRIC")[None, :, :, None]
    padded = tf.nn.conv2d(padded, kernel.reshape(-1, 1, 1, 1), strides=1, padding="VALID")
    padded = tf.nn.conv2d(padded, kernel.reshape(1, -1, 1, 1), strides=1, padding="VALID")
    return padded[0, :, :, 0]


def motion_center(moving, fixed, crop_size):
    """The two-frame motion rule: ``(row, col)`` int32 ``[2]`` of the maximum of the smoothed motion map.

    Args:
        moving, fixed: ``[B, X, Y, 1]`` one subject's slices (scaled).
        crop_size: ``(h, w)`` of the crop (the smoothing is ``h / 8`` pixels).
    """
    motion = tf.reduce_mean(tf.abs(moving - fixed)[..., 0], axis=0) / 2.0  # temporal std of two frames
    smoothed = smooth(motion, motion_sigma(crop_size))
    shape = tf.shape(smoothed)
    flat = tf.argmax(tf.reshape(smoothed, [-1]), output_type=tf.int32)
    peak = tf.stack([flat // shape[1], flat % shape[1]])
    return tf.where(tf.reduce_max(smoothed) > 0, peak, shape // 2)


def _offsets(center, crop_size):
    """Top-left corner of the window in the image padded by ``crop_size`` on every side."""
    return center - tf.constant([crop_size[0] // 2, crop_size[1] // 2]) + tf.constant(list(crop_size[:2]))


def crop_window(images, center, crop_size):
    """The ``crop_size`` window of ``images`` ``[B, X, Y, C]`` around ``center`` (int32 ``[2]``), zero outside
    the image: :func:`~gsmorph_tf.data.preprocessing.crop_or_pad` of every slice."""
    h, w = crop_size[:2]
    padded = tf.pad(images, [[0, 0], [h, h], [w, w], [0, 0]])
    corner = _offsets(center, crop_size)
    return tf.slice(padded, tf.stack([0, corner[0], corner[1], 0]), tf.stack([-1, h, w, tf.shape(images)[3]]))


def paste_window(canvas, window, center, crop_size):
    """``canvas`` ``[B, X, Y, C]`` with ``window`` ``[B, h, w, C]`` written where :func:`crop_window` took it
    (its part outside the image dropped)."""
    h, w = crop_size[:2]
    shape = tf.shape(canvas)
    corner = _offsets(center, crop_size)
    after = tf.stack([shape[1] + 2 * h, shape[2] + 2 * w]) - corner - tf.constant([h, w])
    paddings = tf.stack([[0, 0], [corner[0], after[0]], [corner[1], after[1]], [0, 0]])
    placed = tf.pad(window, paddings)[:, h:h + shape[1], w:w + shape[2], :]
    inside = tf.pad(tf.ones_like(window), paddings)[:, h:h + shape[1], w:w + shape[2], :]
    return tf.where(inside > 0, placed, canvas)


def register_raw(register, moving, fixed, crop_size):
    """Register a raw pair with training's preprocessing in the graph; results on the input's grid.

    Args:
        register: ``f(moving_crop, fixed_crop) -> (moved [B, h, w, 1], flow [B, h, w, 2])`` on scaled crops.
        moving, fixed: ``[B, X, Y, 1]`` float32 scanner intensities, one subject's slices, X >= h, Y >= w.
        crop_size: ``(h, w)``, the network's input size.

    Returns:
        ``{"moved": [B, X, Y, 1] in [0, 1] units (the scaled moving image outside the window), "flow":
        [B, X, Y, 2] displacement in pixels along rows and columns (0 outside the window: the identity),
        "crop_center": [B, 2] int32, the window's centre (row, col), the same for every slice}``.
    """
    tf.debugging.assert_equal(tf.shape(moving), tf.shape(fixed),
                              message="serving_default: moving and fixed must have the same shape")
    tf.debugging.assert_greater_equal(
        tf.shape(fixed)[1:3], tf.constant(list(crop_size[:2])),
        message="serving_default: the in-plane size of moving/fixed [B, X, Y, 1] must be at least the crop "
                "%dx%d (use register_crop for preprocessed crops)" % tuple(crop_size[:2]))
    moving, fixed = scale_pair_to_unit(moving, fixed)
    center = motion_center(moving, fixed, crop_size)
    moved_crop, flow_crop = register(crop_window(moving, center, crop_size), crop_window(fixed, center, crop_size))
    flow_canvas = tf.zeros(tf.concat([tf.shape(fixed)[:3], [2]], axis=0))
    return {"moved": paste_window(moving, moved_crop, center, crop_size),
            "flow": paste_window(flow_canvas, flow_crop, center, crop_size),
            "crop_center": tf.tile(center[None], [tf.shape(fixed)[0], 1])}
