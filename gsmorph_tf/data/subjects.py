"""Subjects and their splits: the registration pairs of one subject, label checks, folder discovery, splits.

NumPy only (no TensorFlow). Following GSMorph, the end-systolic (ES) frame is the moving image and the
end-diastolic (ED) frame the fixed one; each 2-D slice of a stack is one pair. 3D tasks use the same class
with one volume per item.
"""
import dataclasses
import pathlib

import numpy as np

from gsmorph_tf.errors import DatasetError

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
        crop_coverage: fraction of the ED (fixed) label voxels that the in-plane crop kept (1.0: the whole
            heart is in the crop), or None where nothing was cropped.

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
    crop_coverage: float | None = None

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
