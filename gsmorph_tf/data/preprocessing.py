"""Cardiac preprocessing: locating the heart, cropping around it, intensity scaling, ES/ED volumes -> slice pairs.

NumPy only (no TensorFlow; :mod:`gsmorph_tf.serve.graph_preprocessing` is the same for the exported graph).
Dataset-independent: the ACDC and M&Ms loaders read their own files and label conventions, then hand
NIfTI-ordered arrays to :func:`make_pairs`.

Where the crop is centred (``crop_center``, :data:`gsmorph_tf.config.CROP_CENTERS`):

``labels``
    the centroid of the ED labels (the paper protocol; needs labels, so not at deployment);
``motion``
    label-free: the heart is what moves in a cine. The per-voxel temporal standard deviation over the frames
    (the whole cine where there is one; with only two frames it is half their absolute difference), averaged
    over the slices, smoothed with a Gaussian of :func:`motion_sigma` pixels (``scipy.ndimage``), and its
    maximum taken (:func:`motion_center`);
``image``
    the image centre ``(X // 2, Y // 2)``.
"""
import numpy as np
from scipy import ndimage

from gsmorph_tf.data.subjects import SubjectPairs
from gsmorph_tf.errors import DatasetError


def label_centroid(labels):
    """In-plane centroid of all foreground (label > 0) of a ``[S, X, Y]`` label stack.

    Returns:
        ``(row, col)`` in pixels (floats), pooled over all slices.

    Raises:
        ValueError: if no voxel is foreground.
    """
    _, rows, cols = np.nonzero(np.asarray(labels) > 0)
    if rows.size == 0:
        raise ValueError("label map has no foreground voxel; cannot compute a centroid")
    return float(rows.mean()), float(cols.mean())

#: Crop coverage (fraction of the ED label voxels inside the crop) from which a crop counts as holding the heart.
GOOD_CROP_COVERAGE = 0.99


def motion_sigma(crop_size):
    """Standard deviation (pixels) of the Gaussian that smooths the motion map: 1/8 of the crop's first side
    (16 px for 128x128 crops). Chosen on the phantom: 1/16 put 3 of 16 crops on the chest wall."""
    return float(crop_size[0]) / 8.0


def motion_map(frames, ndim=2):
    """Temporal standard deviation of ``frames`` ``[T, ..., *spatial]``, averaged down to ``ndim`` spatial axes.

    Args:
        frames: ``[T, Z, X, Y]`` short-axis cine (2D: averaged over the slices Z) or ``[T, X, Y, Z]`` (3D,
            ``ndim=3``); T >= 2 frames, any intensity units. With two frames this is ``|a - b| / 2``.

    Returns:
        float64 ``[X, Y]`` (or ``[X, Y, Z]``), in the frames' units.
    """
    frames = np.asarray(frames, np.float64)
    if frames.shape[0] < 2 or frames.ndim < ndim + 1:
        raise ValueError("motion_map needs [T >= 2, ..., %d spatial axes] frames, got shape %s"
                         % (ndim, frames.shape))
    std = frames.std(axis=0)
    return std.reshape((-1,) + std.shape[std.ndim - ndim:]).mean(axis=0)


def motion_center(frames, crop_size, ndim=2):
    """Label-free crop centre: the maximum of the smoothed :func:`motion_map` (see the module docstring).

    Args:
        frames: see :func:`motion_map`.
        crop_size: the crop's size in pixels (sets the smoothing, :func:`motion_sigma`).

    Returns:
        ``(row, col)`` (or ``(x, y, z)``) in pixels, integers as floats. Frames without any motion give the
        image centre, as ``image``.
    """
    smoothed = ndimage.gaussian_filter(motion_map(frames, ndim), motion_sigma(crop_size), mode="reflect",
                                       truncate=4.0)
    if not smoothed.max() > 0:
        return image_center(smoothed.shape)
    return tuple(float(i) for i in np.unravel_index(np.argmax(smoothed), smoothed.shape))


def image_center(shape):
    """The image centre ``(X // 2, Y // 2[, Z // 2])`` of a spatial ``shape``, in pixels (floats)."""
    return tuple(float(s // 2) for s in shape)


def crop_coverage(labels, center, size):
    """Fraction of the foreground (label > 0) voxels of a ``[S, X, Y]`` label stack inside the crop
    :func:`crop_or_pad` cuts around ``center``; 1.0 when the stack has no foreground."""
    labels = np.asarray(labels) > 0
    total = int(labels.sum())
    if total == 0:
        return 1.0
    return int(crop_or_pad(labels, center, size).sum()) / total


def crop_or_pad(stack, center, size, fill=0):
    """Cut a fixed-size in-plane window out of every slice, padding where it leaves the image.

    The pixel nearest to ``center`` lands at index ``(h // 2, w // 2)`` of the window. Padding covers both
    images smaller than the window and hearts near the image border.

    Args:
        stack: ``[S, X, Y]`` array (any dtype).
        center: ``(row, col)`` window centre in pixels of the X, Y axes (floats are rounded).
        size: ``(h, w)`` window size in pixels.
        fill: value of pixels outside the image.

    Returns:
        ``[S, h, w]`` array of ``stack``'s dtype.
    """
    stack = np.asarray(stack)
    height, width = (int(s) for s in size)
    # Round half up (not numpy's half-to-even) so a centre of 9.5 always moves the same way.
    top = int(np.floor(center[0] + 0.5)) - height // 2
    left = int(np.floor(center[1] + 0.5)) - width // 2
    out = np.full((stack.shape[0], height, width), fill, dtype=stack.dtype)
    src_rows = slice(max(top, 0), min(top + height, stack.shape[1]))
    src_cols = slice(max(left, 0), min(left + width, stack.shape[2]))
    if src_rows.start < src_rows.stop and src_cols.start < src_cols.stop:
        out[:, src_rows.start - top:src_rows.stop - top, src_cols.start - left:src_cols.stop - left] = \
            stack[:, src_rows, src_cols]
    return out


def scale_to_unit(moving, fixed, upper_percentile=99.5):
    """Scale the two frames of one subject to [0, 1] with one shared intensity range.

    One range for both frames keeps the MSE between ES and ED meaningful. ``lo`` is the minimum over both
    frames, ``hi`` the ``upper_percentile`` over both (so a few very bright voxels do not darken the
    heart); values are mapped by ``(x - lo) / (hi - lo)`` and clipped to [0, 1].

    Args:
        moving, fixed: arrays of any (possibly different) shapes, intensities in scanner units.
        upper_percentile: percentile of the pooled voxels mapped to 1.

    Returns:
        ``(moving, fixed)`` float32 in [0, 1], shapes unchanged. Constant images become all zeros.
    """
    moving = np.asarray(moving, dtype=np.float32)
    fixed = np.asarray(fixed, dtype=np.float32)
    pooled = np.concatenate([moving.ravel(), fixed.ravel()])
    lo = float(pooled.min())
    hi = float(np.percentile(pooled, upper_percentile))
    if hi <= lo:
        # Mostly-empty images can put the percentile on the minimum; the maximum still gives a range.
        hi = float(pooled.max())
    if hi <= lo:
        return np.zeros_like(moving), np.zeros_like(fixed)

    def scale(x):
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)

    return scale(moving), scale(fixed)


def make_pairs(subject, es_image, ed_image, es_labels, ed_labels, zooms, label_values, crop_size=(128, 128),
               crop_center="labels", cine=None):
    """Turn one subject's ES and ED volumes into cropped, scaled slice pairs.

    Intensities are scaled on the whole volumes (see :func:`scale_to_unit`), then every slice is cropped to
    ``crop_size`` around one centre per subject, chosen by ``crop_center`` (module docstring), so ES and ED
    stay aligned. Padding is 0: the darkest value after scaling for images, background for labels. The
    fraction of ED label voxels inside the crop is recorded as ``SubjectPairs.crop_coverage``.

    Args:
        subject: subject identifier, named in errors.
        es_image, ed_image: ``[X, Y, Z]`` intensity volumes (NIfTI order), same shape.
        es_labels, ed_labels: ``[X, Y, Z]`` integer label volumes of the same shape.
        zooms: ``(x_mm, y_mm, z_mm)`` voxel size.
        label_values: structure name -> integer in the label maps.
        crop_size: ``(h, w)`` in-plane size of the output slices in pixels.
        crop_center: ``"labels"``, ``"motion"`` or ``"image"``.
        cine: for ``motion``, the subject's ``[X, Y, Z, T]`` cine (all frames); None uses the ES and ED
            frames alone.

    Returns:
        :class:`SubjectPairs` with ``[Z, h, w]`` arrays (slices first), ``spacing_mm = (z, x, y)`` and
        ``crop_coverage``.

    Raises:
        DatasetError: naming ``subject``, if the volumes are not 3-D of one shape, ``zooms`` does not have
            three entries, or the ED labels have no foreground to centre the crop on.
    """
    volumes = {"ES image": es_image, "ED image": ed_image, "ES labels": es_labels, "ED labels": ed_labels}
    shapes = {name: np.shape(volume) for name, volume in volumes.items()}
    if len(set(shapes.values())) != 1 or len(shapes["ED image"]) != 3:
        raise DatasetError(f"{subject}: expected ES/ED images and labels as 3-D [X, Y, Z] volumes of one "
                           f"shape, got {shapes}")
    if len(zooms) != 3:
        raise DatasetError(f"{subject}: expected three voxel sizes (x, y, z) in mm, got {tuple(zooms)}")

    def slices_first(volume):
        return np.transpose(np.asarray(volume), (2, 0, 1))

    moving, fixed = scale_to_unit(slices_first(es_image), slices_first(ed_image))
    moving_labels = slices_first(es_labels).astype(np.int32)
    fixed_labels = slices_first(ed_labels).astype(np.int32)
    if crop_center == "labels":
        try:
            center = label_centroid(fixed_labels)
        except ValueError as error:
            raise DatasetError(f"{subject}: ED label map has no foreground; cannot centre the crop") from error
    elif crop_center == "motion":
        if cine is None:
            frames = np.stack([slices_first(es_image), slices_first(ed_image)])
        else:
            if np.shape(cine)[:3] != shapes["ED image"] or np.ndim(cine) != 4:
                raise DatasetError(f"{subject}: cine has shape {np.shape(cine)}; expected [X, Y, Z, T] with the "
                                   f"frames' [X, Y, Z] = {shapes['ED image']}")
            frames = np.transpose(np.asarray(cine), (3, 2, 0, 1))
        center = motion_center(frames, crop_size)
    elif crop_center == "image":
        center = image_center(fixed.shape[1:])
    else:
        raise ValueError(f"crop_center must be labels, motion or image, got {crop_center!r}")
    return SubjectPairs(
        subject=subject,
        moving=crop_or_pad(moving, center, crop_size),
        fixed=crop_or_pad(fixed, center, crop_size),
        moving_labels=crop_or_pad(moving_labels, center, crop_size),
        fixed_labels=crop_or_pad(fixed_labels, center, crop_size),
        spacing_mm=(float(zooms[2]), float(zooms[0]), float(zooms[1])),
        label_values=dict(label_values),
        crop_coverage=crop_coverage(fixed_labels, center, crop_size),
    )
