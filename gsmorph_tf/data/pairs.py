"""ES->ED short-axis slice pairs: cropping around the heart, intensity scaling, subject split, tf.data.

Dataset-independent: the ACDC and M&Ms loaders read their own files and label conventions, then hand
NIfTI-ordered arrays to :func:`make_pairs`. Following GSMorph, the end-systolic (ES) frame is the moving
image and the end-diastolic (ED) frame the fixed one; each 2-D slice of a stack is one training pair.
"""
import dataclasses
import pathlib

import numpy as np

from gsmorph_tf import compat  # noqa: F401  (legacy Keras must be selected before TensorFlow loads)
from gsmorph_tf.data.nifti import DatasetError

import tensorflow as tf

STRUCTURES = ("LV", "Myo", "RV")  # reporting order; tables and logs name structures, never integers


def reporting_order(label_values):
    """Structure names in the order tables show them: the cardiac :data:`STRUCTURES` first (LV, Myo, RV,
    whatever their integers), then any other structure in ``label_values`` order (e.g. CSF, GM, WM)."""
    return [n for n in STRUCTURES if n in label_values] + [n for n in label_values if n not in STRUCTURES]


@dataclasses.dataclass
class SubjectPairs:
    """All ES->ED short-axis slice pairs of one subject, cropped and scaled (moving = ES, fixed = ED).

    Attributes:
        subject: subject identifier, e.g. ``"patient001"``.
        moving: ``[S, H, W]`` float32 in [0, 1], the ES frame, S slices of H x W pixels.
        fixed: ``[S, H, W]`` float32 in [0, 1], the ED frame (same scale as ``moving``).
        moving_labels: ``[S, H, W]`` int32 label map of the ES frame (0 = background).
        fixed_labels: ``[S, H, W]`` int32 label map of the ED frame.
        spacing_mm: ``(slice, row, col)`` spacing of the ``[S, H, W]`` arrays in mm.
        label_values: structure name -> integer in the label maps, e.g. ACDC ``{"RV": 1, "Myo": 2, "LV": 3}``.
        true_flow: optional ground-truth displacement of moving -> fixed (voxels, same layout as a predicted
            flow), for synthetic tasks with a known answer; None for real data.

    3D tasks use the same class with one volume per item: arrays ``[N, D, H, W]`` and ``spacing_mm`` the
    ``(d, h, w)`` spacing of each volume (len(spacing_mm) == array rank - 1).
    """
    subject: str
    moving: np.ndarray
    fixed: np.ndarray
    moving_labels: np.ndarray
    fixed_labels: np.ndarray
    spacing_mm: tuple[float, float, float]
    label_values: dict[str, int]
    true_flow: np.ndarray | None = None

    @property
    def volumes_per_item(self):
        """True for 3D tasks (``[N, D, H, W]``: each item a volume), False for 2D slice stacks."""
        return self.moving_labels.ndim == len(self.spacing_mm) + 1


def validate_label_map(labels, image_shape, label_values, source):
    """Check one label volume against its image and the dataset's label convention.

    Args:
        labels: label array as read from disk (any numeric dtype).
        image_shape: shape of the image it annotates.
        label_values: structure name -> integer, e.g. ``{"RV": 1, "Myo": 2, "LV": 3}``; 0 is background.
        source: what to name in errors (the label file, with the frame where one file holds several).

    Returns:
        ``labels`` as int32.

    Raises:
        DatasetError: naming ``source``, if the shape differs from ``image_shape``, a value is not an
            integer, or a value is neither 0 nor one of ``label_values``.
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(image_shape):
        raise DatasetError(f"{source}: label volume has shape {labels.shape}, expected the shape of its "
                           f"image {tuple(image_shape)}")
    if np.issubdtype(labels.dtype, np.floating) and not np.all(labels == np.round(labels)):
        raise DatasetError(f"{source}: label volume holds non-integer values; expected integer labels")
    labels = labels.astype(np.int32)
    allowed = {0, *label_values.values()}
    unexpected = sorted(set(np.unique(labels).tolist()) - allowed)
    if unexpected:
        raise DatasetError(f"{source}: unexpected label values {unexpected}; expected only "
                           f"{sorted(allowed)} (0 = background, {label_values})")
    return labels


def find_subject_folders(root, parents, accept, dataset, subject, expected_layout):
    """Subject folders of a dataset tree, sorted by name (the subject identifier).

    Args:
        root: dataset root.
        parents: folders under ``root`` that hold subject folders (``""`` for ``root`` itself); missing ones
            are skipped.
        accept: ``f(folder_name) -> bool`` choosing the subject folders among the entries of a parent.
        dataset, subject: names for messages, e.g. ``"ACDC"`` and ``"patient"``.
        expected_layout: sentence describing the layout, appended to the messages.

    Raises:
        DatasetError: ``root`` is missing or not a folder, no subject folder is found, or one name appears
            in two places (subjects are split by name, so a duplicate would leak between splits).
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        state = "is not a directory" if root.exists() else "does not exist"
        raise DatasetError(f"{root}: {dataset} data directory {state}; {expected_layout}")
    found = {}
    for parent in (root / name for name in parents):
        if not parent.is_dir():
            continue
        for folder in parent.iterdir():
            if not (folder.is_dir() and accept(folder.name)):
                continue
            if folder.name in found:
                raise DatasetError(f"{folder}: {subject} {folder.name} also found at {found[folder.name]}; "
                                   f"expected each {subject} once (subjects are split by name)")
            found[folder.name] = folder
    if not found:
        raise DatasetError(f"{root}: no {dataset} {subject} folders found; {expected_layout}")
    return [found[name] for name in sorted(found)]


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


def make_pairs(subject, es_image, ed_image, es_labels, ed_labels, zooms, label_values, crop_size=(128, 128)):
    """Turn one subject's ES and ED volumes into cropped, scaled slice pairs.

    Intensities are scaled on the whole volumes (see :func:`scale_to_unit`), then every slice is cropped to
    ``crop_size`` around one centre per subject, the centroid of the ED labels, so ES and ED stay aligned.
    Padding is 0: the darkest value after scaling for images, background for labels.

    Args:
        subject: subject identifier, named in errors.
        es_image, ed_image: ``[X, Y, Z]`` intensity volumes (NIfTI order), same shape.
        es_labels, ed_labels: ``[X, Y, Z]`` integer label volumes of the same shape.
        zooms: ``(x_mm, y_mm, z_mm)`` voxel size.
        label_values: structure name -> integer in the label maps.
        crop_size: ``(h, w)`` in-plane size of the output slices in pixels.

    Returns:
        :class:`SubjectPairs` with ``[Z, h, w]`` arrays (slices first) and ``spacing_mm = (z, x, y)``.

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
    try:
        center = label_centroid(fixed_labels)
    except ValueError as error:
        raise DatasetError(f"{subject}: ED label map has no foreground; cannot centre the crop") from error
    return SubjectPairs(
        subject=subject,
        moving=crop_or_pad(moving, center, crop_size),
        fixed=crop_or_pad(fixed, center, crop_size),
        moving_labels=crop_or_pad(moving_labels, center, crop_size),
        fixed_labels=crop_or_pad(fixed_labels, center, crop_size),
        spacing_mm=(float(zooms[2]), float(zooms[0]), float(zooms[1])),
        label_values=dict(label_values),
    )


def split_subjects(subjects, fractions=(0.75, 0.05, 0.20), seed=0):
    """Split subjects (not slices, so no subject leaks across splits) into train, validation and test.

    After a shuffle seeded by ``seed``, ``n_test = max(1, round(f_test * n))`` and
    ``n_val = max(1, round(f_val * n))`` subjects are taken; the rest train. Each returned list keeps the
    input order of its subjects.

    Args:
        subjects: sequence of anything identifying a subject (names, folders, :class:`SubjectPairs`).
        fractions: ``(train, val, test)`` fractions summing to 1.
        seed: seed of the shuffle.

    Returns:
        ``(train, val, test)`` lists.

    Raises:
        ValueError: fewer than 3 subjects, ``fractions`` not three non-negative numbers summing to 1, or no
            subject left to train on.
    """
    subjects = list(subjects)
    n = len(subjects)
    if n < 3:
        raise ValueError(f"need at least 3 subjects to split into train/val/test, got {n}")
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test) summing to 1, "
                         f"got {tuple(fractions)}")
    n_test = max(1, round(fractions[2] * n))
    n_val = max(1, round(fractions[1] * n))
    if n - n_test - n_val < 1:
        raise ValueError(f"fractions {tuple(fractions)} leave no training subject out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    test = sorted(order[:n_test])
    val = sorted(order[n_test:n_test + n_val])
    train = sorted(order[n_test + n_val:])
    return ([subjects[i] for i in train], [subjects[i] for i in val], [subjects[i] for i in test])


def make_dataset(pairs, batch_size, shuffle, seed=0):
    """A finite ``tf.data.Dataset`` over all slices of all subjects (one pass = one epoch).

    Args:
        pairs: list of :class:`SubjectPairs` with one common in-plane size ``H x W``.
        batch_size: slices per batch; the last batch may be smaller.
        shuffle: shuffle slices across subjects, reshuffled every epoch (seeded by ``seed``).
        seed: shuffle seed.

    Returns:
        Dataset of dicts ``{"moving": [B, H, W, 1] float32, "fixed": [B, H, W, 1] float32}``, prefetched.

    Raises:
        ValueError: ``pairs`` is empty or the subjects have different in-plane sizes.
    """
    if not pairs:
        raise ValueError("make_dataset needs at least one SubjectPairs, got none")
    sizes = {p.subject: p.moving.shape[1:] for p in pairs}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"all subjects must share one in-plane size to be batched, got {sizes}")
    moving = np.concatenate([p.moving for p in pairs]).astype(np.float32)[..., np.newaxis]
    fixed = np.concatenate([p.fixed for p in pairs]).astype(np.float32)[..., np.newaxis]
    dataset = tf.data.Dataset.from_tensor_slices({"moving": moving, "fixed": fixed})
    if shuffle:
        dataset = dataset.shuffle(len(moving), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
