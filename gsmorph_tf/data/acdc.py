"""ACDC (Automated Cardiac Diagnosis Challenge, Bernard et al. 2018) loader, reading the files as published.

Layout: ``<root>/[training|testing]/patientNNN/`` holding ``Info.cfg`` (``ED: 1``, ``ES: 12``, ...) and, for
the ED and ES frames, ``patientNNN_frameXX.nii.gz`` with its label map ``patientNNN_frameXX_gt.nii.gz``
(``XX`` the 1-based frame number, two digits), and the whole cine ``patientNNN_4d.nii.gz`` ``[X, Y, Z, T]``
(read only to centre the crop on the motion, ``crop_center="motion"``). Volumes are ``[X, Y, Z]`` short-axis
stacks. Labels: 1 = RV, 2 = Myo, 3 = LV. The project's synthetic phantom is written in the same layout.
"""
import pathlib
import re

from gsmorph_tf.data.nifti import DatasetError, load_nifti
from gsmorph_tf.plugins import DatasetPlugin
from gsmorph_tf.data.preprocessing import make_pairs
from gsmorph_tf.data.subjects import find_subject_folders, split_subjects, validate_label_map

ACDC_LABELS = {"RV": 1, "Myo": 2, "LV": 3}

_PATIENT_DIR = re.compile(r"patient\d+")
_SPLIT_DIRS = ("training", "testing")
_EXPECTED_LAYOUT = ("expected patientNNN folders (each with Info.cfg and patientNNN_frameXX[_gt].nii.gz) "
                    "directly under it or under its training/ and testing/ folders")
_INFO_TYPES = {"ED": int, "ES": int, "NbFrame": int, "Group": str, "Height": float, "Weight": float}


def find_acdc_subjects(root):
    """Patient folders of an ACDC tree, sorted by name.

    Looks for ``patientNNN`` folders directly under ``root`` and under ``root/training`` and
    ``root/testing``, so both the published archive and a flat copy work.

    Returns:
        list of ``pathlib.Path``, sorted by folder name.

    Raises:
        DatasetError: ``root`` is missing or not a folder, holds no patient folder (the message says which
            layout was expected), or one patient name appears in two places.
    """
    return find_subject_folders(root, ("", *_SPLIT_DIRS), _PATIENT_DIR.fullmatch, "ACDC", "patient",
                                _EXPECTED_LAYOUT)


def read_info_cfg(path):
    """Parse a patient's ``Info.cfg`` (``key: value`` lines).

    Returns:
        dict with ``"ED"`` and ``"ES"`` (int, 1-based frame numbers), and, where the file has them,
        ``"Group"`` (str), ``"Height"`` (float, cm), ``"NbFrame"`` (int), ``"Weight"`` (float, kg); other
        keys are kept as strings.

    Raises:
        DatasetError: naming ``path``, if the file is missing, a line is not ``key: value``, ED or ES is
            missing, a frame number is not a positive integer (or exceeds NbFrame), or a number does not parse.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: Info.cfg not found; expected a file with lines like 'ED: 1' and 'ES: 12'")
    info = {}
    for line_number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise DatasetError(f"{path}, line {line_number}: expected 'key: value', got {line!r}")
        convert = _INFO_TYPES.get(key, str)
        try:
            info[key] = convert(value)
        except ValueError:
            raise DatasetError(f"{path}, line {line_number}: {key} must be {convert.__name__}, "
                               f"got {value!r}") from None
    for key in ("ED", "ES"):
        if key not in info:
            raise DatasetError(f"{path}: no '{key}:' line; expected the {key} frame number (1-based)")
        if info[key] < 1 or ("NbFrame" in info and info[key] > info["NbFrame"]):
            raise DatasetError(f"{path}: {key} frame {info[key]} is outside 1..{info.get('NbFrame', 'NbFrame')}")
    return info


def _load_frame(patient_dir, frame):
    """Image and label volumes of one frame, checked: ``([X, Y, Z] float32, zooms, [X, Y, Z] int32, gt path)``."""
    stem = f"{patient_dir.name}_frame{frame:02d}"
    image_path = patient_dir / f"{stem}.nii.gz"
    label_path = patient_dir / f"{stem}_gt.nii.gz"
    for path, what in ((image_path, "image"), (label_path, "label map")):
        if not path.is_file():
            raise DatasetError(f"{path}: {what} of frame {frame} (from Info.cfg) not found")
    image, zooms, _ = load_nifti(image_path, expected_ndim=3)
    labels, _, _ = load_nifti(label_path, expected_ndim=3)
    labels = validate_label_map(labels, image.shape, ACDC_LABELS, label_path)
    return image, zooms, labels, label_path


def load_acdc_subject(patient_dir, crop_size=(128, 128), crop_center="labels"):
    """Load one ACDC patient as ES->ED slice pairs (ES frame = moving, ED frame = fixed).

    Args:
        patient_dir: a ``patientNNN`` folder.
        crop_size: ``(h, w)`` in-plane size of the slices in pixels.
        crop_center: ``labels``, ``motion`` (reads ``patientNNN_4d.nii.gz``) or ``image``; see
            :mod:`gsmorph_tf.data.preprocessing`.

    Returns:
        :class:`~gsmorph_tf.data.subjects.SubjectPairs` with ``[Z, h, w]`` arrays, ``spacing_mm = (z, x, y)`` from
        the ED image header and ``label_values = ACDC_LABELS``.

    Raises:
        DatasetError: naming the file, for a missing or bad Info.cfg, a missing/unreadable/non-finite frame
            image or label file, a label volume whose shape differs from its image, ES and ED volumes of
            different shapes, or ED labels without foreground; with ``motion`` also for a missing, unreadable
            or mis-shaped cine.
    """
    patient_dir = pathlib.Path(patient_dir)
    if not patient_dir.is_dir():
        raise DatasetError(f"{patient_dir}: patient folder not found")
    info = read_info_cfg(patient_dir / "Info.cfg")
    es_image, _, es_labels, _ = _load_frame(patient_dir, info["ES"])
    ed_image, ed_zooms, ed_labels, ed_label_path = _load_frame(patient_dir, info["ED"])
    if es_image.shape != ed_image.shape:
        raise DatasetError(f"{patient_dir}: ES frame {info['ES']} has shape {es_image.shape} but ED frame "
                           f"{info['ED']} has {ed_image.shape}; expected one stack geometry")
    if not ed_labels.any():
        raise DatasetError(f"{ed_label_path}: ED label map has no foreground; the crop is centred on it")
    cine = None
    if crop_center == "motion":
        cine_path = patient_dir / f"{patient_dir.name}_4d.nii.gz"
        if not cine_path.is_file():
            raise DatasetError(f"{cine_path}: 4D cine not found; crop_center=motion centres the crop on the "
                               "cine's motion (use crop_center=labels or image without it)")
        cine, _, _ = load_nifti(cine_path, expected_ndim=4)
        if cine.shape[:3] != ed_image.shape:
            raise DatasetError(f"{cine_path}: cine has shape {cine.shape}; expected [X, Y, Z, T] with the frames' "
                               f"[X, Y, Z] = {ed_image.shape}")
    return make_pairs(patient_dir.name, es_image, ed_image, es_labels, ed_labels, ed_zooms, ACDC_LABELS,
                      crop_size, crop_center, cine)


def load_acdc(root, crop_size=(128, 128), fractions=(0.75, 0.05, 0.20), seed=0, crop_center="labels"):
    """Load and validate every ACDC patient under ``root``, split by subject.

    All patients are loaded before anything is returned, so bad data stops the run before training. The
    split is that of :func:`~gsmorph_tf.data.subjects.split_subjects` over patients sorted by name.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` lists of ``SubjectPairs``.

    Raises:
        DatasetError: listing every bad file found (each message names its file), for a missing or
            empty ``root``, or for fewer than 3 patients.
    """
    folders = find_acdc_subjects(root)
    if len(folders) < 3:
        raise DatasetError(f"{root}: found {len(folders)} patient folder(s), expected at least 3 to split "
                           "into train/val/test")
    subjects, problems = [], []
    # Gather every problem first: one run tells the user about all bad files, not just the first.
    for folder in folders:
        try:
            subjects.append(load_acdc_subject(folder, crop_size, crop_center))
        except DatasetError as error:
            problems.append(str(error))
    if problems:
        raise DatasetError(f"{len(problems)} bad ACDC patient(s) under {root}:\n  " + "\n  ".join(problems))
    train, val, test = split_subjects(subjects, fractions, seed)
    return {"train": train, "val": val, "test": test}


class CardiacDataset(DatasetPlugin):
    """A 2D cardiac dataset of ES->ED slice pairs cropped to ``config.crop_size`` around the heart (placed by
    ``config.crop_center``), read by ``loader(root, crop_size, seed=..., crop_center=...)`` (``load_acdc``,
    ``load_mnms``)."""

    def __init__(self, loader):
        self.loader = loader

    def load(self, config, generate=True):
        return self.loader(config.data_dir, crop_size=self.network_shape(config), seed=config.data_seed,
                           crop_center=config.crop_center)

    def network_shape(self, config):
        return (config.crop_size, config.crop_size)


#: The ``acdc`` entry of :data:`gsmorph_tf.registry.DATASETS`.
DATASET = CardiacDataset(load_acdc)
