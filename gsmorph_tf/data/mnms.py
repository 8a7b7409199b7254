"""M&Ms (Multi-Centre, Multi-Vendor & Multi-Disease Cardiac Segmentation, Campello et al. 2021) loader.

Reads the dataset as distributed::

    <root>/211230_M&Ms_Dataset_information_diagnosis_opendataset.csv
    <root>/Training/Labeled/<CODE>/<CODE>_sa.nii.gz       [X, Y, Z, T] short-axis cine, all frames
    <root>/Training/Labeled/<CODE>/<CODE>_sa_gt.nii.gz    [X, Y, Z, T] labels, non-zero in the ED and ES frames
    <root>/Validation/<CODE>/...                           same two files
    <root>/Testing/<CODE>/...                              same two files

The CSV gives, per ``External code``, the vendor (``VendorName``, ``Vendor``), the ``Centre`` and the ``ED`` and
``ES`` frames as **0-based** indices into the T axis (ACDC's Info.cfg numbers frames from 1). Labels:
1 = LV, 2 = Myo, 3 = RV, the reverse of ACDC; :data:`MNMS_LABELS` travels with every subject in
``SubjectPairs.label_values`` so that metrics are computed by structure name.
``Training/Unlabeled`` (vendor C subjects without labels) is not read.

Policies for data that do not match (each raises or logs naming the file or code; never a silent wrong pair):

- CSV missing: :class:`DatasetError` naming the path where it was expected.
- A code in the CSV without a subject folder (e.g. the unlabeled training subjects, or a partial copy):
  skipped, with one logged warning listing the codes.
- A subject folder without a CSV row: :class:`DatasetError` naming the folder. Without the row the ED/ES
  frames are unknown, and guessing them could pair the wrong frames.
- ED or ES frame outside the cine, or a frame without labels in ``_gt``: :class:`DatasetError` naming the file,
  the frame and the frames that do hold labels (a 1-based CSV would show up here).
- Unreadable, truncated or non-finite files, a label volume whose shape differs from its image, unexpected
  label values: :class:`DatasetError` naming the file (shared checks of :func:`~gsmorph_tf.data.nifti.load_nifti`
  and :func:`~gsmorph_tf.data.subjects.validate_label_map`).

Cropping, scaling and pair building are those of :func:`~gsmorph_tf.data.preprocessing.make_pairs` (ES = moving,
ED = fixed), exactly as for ACDC.
"""
import csv
import logging
import pathlib

import numpy as np

from gsmorph_tf.data.acdc import CardiacDataset
from gsmorph_tf.data.nifti import DatasetError, load_nifti
from gsmorph_tf.data.preprocessing import make_pairs
from gsmorph_tf.data.subjects import find_subject_folders, split_subjects, validate_label_map

MNMS_LABELS = {"LV": 1, "Myo": 2, "RV": 3}
MNMS_CSV_NAME = "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv"
MNMS_SPLIT_DIRS = ("Training/Labeled", "Validation", "Testing")

_REQUIRED_COLUMNS = ("External code", "ED", "ES")
_EXPECTED_LAYOUT = ("expected <CODE>/<CODE>_sa.nii.gz and <CODE>_sa_gt.nii.gz folders under its "
                    "Training/Labeled/, Validation/ and Testing/ folders")

_log = logging.getLogger(__name__)


def find_mnms_subjects(root):
    """Subject folders of an M&Ms tree, sorted by code.

    Every folder directly under ``root/Training/Labeled``, ``root/Validation`` and ``root/Testing`` (hidden
    ones aside) is a subject; its name is the subject's ``External code``. The official split is not kept: subjects are
    pooled and split by :func:`load_mnms`.

    Returns:
        list of ``pathlib.Path``, sorted by folder name (the code).

    Raises:
        DatasetError: ``root`` is missing or not a folder, holds no subject folder (the message says which
            layout was expected), or one code appears in two places.
    """
    # Hidden folders (.ipynb_checkpoints and the like) are not subjects.
    return find_subject_folders(root, MNMS_SPLIT_DIRS, lambda name: not name.startswith("."), "M&Ms", "subject",
                                _EXPECTED_LAYOUT)


def read_mnms_csv(path):
    """Read the M&Ms information CSV.

    Args:
        path: ``211230_M&Ms_Dataset_information_diagnosis_opendataset.csv`` (or a copy with the same columns).

    Returns:
        dict ``External code -> row``; each row is a dict of all the CSV's columns (header names stripped of
        spaces) as strings, except ``"ED"`` and ``"ES"``, which are ints: 0-based frame indices.

    Raises:
        DatasetError: naming ``path``, if the file is missing, lacks one of the columns ``External code``,
            ``ED``, ``ES``, or (naming the line and code too) a code is empty or repeated, or ED/ES is not a
            non-negative integer or ED equals ES.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: M&Ms information CSV not found; expected it in the dataset root with "
                           f"the columns {', '.join(_REQUIRED_COLUMNS)} (0-based ED/ES frames)")
    # utf-8-sig drops a byte-order mark that spreadsheet programs put in front of the first header.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in _REQUIRED_COLUMNS if name not in header]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing}; found {header}")
        rows = {}
        for line_number, values in enumerate(reader, start=2):
            if not any(value.strip() for value in values):
                continue
            row = {name: value.strip() for name, value in zip(header, values)}
            code = row.get("External code", "")
            if not code:
                raise DatasetError(f"{path}, line {line_number}: empty 'External code'")
            if code in rows:
                raise DatasetError(f"{path}, line {line_number}: code {code} listed twice; expected one row "
                                   "per subject")
            for key in ("ED", "ES"):
                value = row.get(key, "")
                if not (value.isascii() and value.isdigit()):
                    raise DatasetError(f"{path}, line {line_number} ({code}): {key} must be a non-negative "
                                       f"integer frame index (0-based), got {value!r}")
                row[key] = int(value)
            if row["ED"] == row["ES"]:
                raise DatasetError(f"{path}, line {line_number} ({code}): ED and ES are the same frame "
                                   f"{row['ED']}; expected two different frames")
            rows[code] = row
    return rows


def _frame(volume, frame, key, path):
    """Frame ``frame`` of a ``[X, Y, Z, T]`` volume, naming ``path`` if the T axis is too short."""
    if frame >= volume.shape[3]:
        raise DatasetError(f"{path}: {key} frame {frame} (0-based, from the CSV) is outside the "
                           f"{volume.shape[3]} frames 0..{volume.shape[3] - 1} of this cine")
    return volume[..., frame]


def load_mnms_subject(subject_dir, ed, es, crop_size=(128, 128), crop_center="labels"):
    """Load one M&Ms subject as ES->ED slice pairs (ES frame = moving, ED frame = fixed).

    Args:
        subject_dir: a ``<CODE>`` folder holding ``<CODE>_sa.nii.gz`` and ``<CODE>_sa_gt.nii.gz``.
        ed, es: 0-based frame indices into the T axis (the CSV's ``ED`` and ``ES``).
        crop_size: ``(h, w)`` in-plane size of the slices in pixels.
        crop_center: ``labels``, ``motion`` (on the whole cine) or ``image``; see
            :mod:`gsmorph_tf.data.preprocessing`.

    Returns:
        :class:`~gsmorph_tf.data.subjects.SubjectPairs` named by the code, with ``[Z, h, w]`` arrays,
        ``spacing_mm = (z, x, y)`` in mm from the cine's header and ``label_values = MNMS_LABELS``.

    Raises:
        DatasetError: naming the file, if a file is missing, unreadable or non-finite, a volume is not 4-D,
            the label volume's shape or values are wrong, a frame is outside the cine, or the ED or ES frame
            has no labels.
    """
    subject_dir = pathlib.Path(subject_dir)
    if not subject_dir.is_dir():
        raise DatasetError(f"{subject_dir}: subject folder not found")
    code = subject_dir.name
    image_path = subject_dir / f"{code}_sa.nii.gz"
    label_path = subject_dir / f"{code}_sa_gt.nii.gz"
    for path, what in ((image_path, "short-axis cine"), (label_path, "label volume")):
        if not path.is_file():
            raise DatasetError(f"{path}: {what} not found")
    image, zooms, _ = load_nifti(image_path, expected_ndim=4)
    labels, _, _ = load_nifti(label_path, expected_ndim=4)
    labels = validate_label_map(labels, image.shape, MNMS_LABELS, label_path)
    frames = {key: (_frame(image, index, key, image_path), _frame(labels, index, key, label_path))
              for key, index in (("ED", ed), ("ES", es))}
    for key, index in (("ED", ed), ("ES", es)):
        if not frames[key][1].any():
            labelled = np.flatnonzero(labels.reshape(-1, labels.shape[3]).any(axis=0)).tolist()
            raise DatasetError(f"{label_path}: {key} frame {index} (0-based, from the CSV) has no labels; "
                               f"labels are in frame(s) {labelled}")
    (ed_image, ed_labels), (es_image, es_labels) = frames["ED"], frames["ES"]
    return make_pairs(code, es_image, ed_image, es_labels, ed_labels, zooms[:3], MNMS_LABELS, crop_size,
                      crop_center, image if crop_center == "motion" else None)


def load_mnms(root, crop_size=(128, 128), fractions=(0.75, 0.05, 0.20), seed=0, crop_center="labels"):
    """Load and validate every labelled M&Ms subject under ``root``, split by subject.

    Training/Labeled, Validation and Testing subjects are pooled and split by
    :func:`~gsmorph_tf.data.subjects.split_subjects` over subjects sorted by code (as for ACDC; the GSMorph
    protocol is a 75/5/20 % subject split, not the challenge's). All subjects are loaded before anything is
    returned, so bad data stops the run before training. CSV codes without a folder are skipped with a
    logged warning; see the module docstring for every policy.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` lists of ``SubjectPairs``.

    Raises:
        DatasetError: for a missing CSV or data directory, fewer than 3 subjects, or listing every bad
            subject found (each message names its folder or file), including folders without a CSV row.
    """
    root = pathlib.Path(root)
    folders = find_mnms_subjects(root)
    table = read_mnms_csv(root / MNMS_CSV_NAME)
    codes = {folder.name for folder in folders}
    without_folder = sorted(set(table) - codes)
    if without_folder:
        _log.warning("M&Ms: %d subject(s) listed in %s have no folder under %s; skipped: %s",
                     len(without_folder), root / MNMS_CSV_NAME, ", ".join(MNMS_SPLIT_DIRS),
                     ", ".join(without_folder))
    if len(folders) < 3:
        raise DatasetError(f"{root}: found {len(folders)} subject folder(s), expected at least 3 to split "
                           "into train/val/test")
    subjects, problems = [], []
    # Gather every problem first: one run tells the user about all bad subjects, not just the first.
    for folder in folders:
        row = table.get(folder.name)
        if row is None:
            problems.append(f"{folder}: no row for code {folder.name} in {root / MNMS_CSV_NAME}; its ED/ES "
                            "frames are unknown")
            continue
        try:
            subjects.append(load_mnms_subject(folder, row["ED"], row["ES"], crop_size, crop_center))
        except DatasetError as error:
            problems.append(str(error))
    if problems:
        raise DatasetError(f"{len(problems)} bad M&Ms subject(s) under {root}:\n  " + "\n  ".join(problems))
    train, val, test = split_subjects(subjects, fractions, seed)
    return {"train": train, "val": val, "test": test}


#: The ``mnms`` entry of :data:`gsmorph_tf.registry.DATASETS`.
DATASET = CardiacDataset(load_mnms)
