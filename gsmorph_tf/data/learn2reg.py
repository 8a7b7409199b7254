"""Learn2Reg datasets as distributed (OASIS, LUMIR, AbdomenCTCT, NLST, ...): reading, checking, splitting.

The layout::

    <root>/<NAME>_dataset.json   tensorImageShape {"0": [D, H, W]}, labels {"0": {"0": "background", ...}},
                                 training [{"image": "./imagesTr/X_0000.nii.gz", "label": "./labelsTr/..."}],
                                 optional training_paired_images [{"fixed": ..., "moving": ...}],
                                 registration_val [{"fixed": ..., "moving": ...}],
                                 optional test [{"image": ..., "label": ...}] and registration_test
    <root>/imagesTr/, labelsTr/, imagesTs/, labelsTs/

Paths in the JSON are relative to the root (``./imagesTr/...``). An image's label file is the ``label`` of its
entry in ``training`` or ``test``; an image named only in a pair, or an entry without ``label``, has none.

Arrays keep the NIfTI voxel order ``[X, Y, Z]``, used as ``[D, H, W]``: a displacement field predicted on
these arrays (voxels, channel k along array axis k, ``moved(x) = moving(x + u(x))``) is in Learn2Reg's own
submission convention (``disp_<fixed>_<moving>.nii.gz`` of shape ``[*tensorImageShape, 3]``), which warps the
moving labels with ``map_coordinates(moving, identity + disp)``.

Checks run in two stages: :func:`read_task` checks the JSON, that every listed file exists, and every shape
from the NIfTI headers alone (seconds for hundreds of files), so a broken dataset stops the run before
training; the voxels themselves (finite intensities, label values the JSON names) are checked when a volume
is read, or up front for every file by :func:`validate_voxels`. Every error names the file (and the JSON key).

NumPy and nibabel only: nothing here imports TensorFlow (the ``tf.data`` stream is
:mod:`gsmorph_tf.data.streaming`).
"""
import collections.abc
import dataclasses
import json
import os
import pathlib

import numpy as np

from gsmorph_tf.data.nifti import load_nifti, read_nifti_header
from gsmorph_tf.data.preprocessing import scale_to_unit
from gsmorph_tf.data.subjects import SubjectPairs
from gsmorph_tf.errors import DatasetError

#: ``intensity_norm`` settings: ``max`` divides each volume by its maximum (our choice: the ULAE-net reference
#: code does not say how its volumes were scaled); ``percentile`` maps each volume's minimum to 0 and its 99.5th
#: percentile to 1, clipped (the cardiac loaders' scaling).
INTENSITY_NORMS = ("max", "percentile")

_EXPECTED_LAYOUT = ("expected <root>/<NAME>_dataset.json with tensorImageShape, labels, training and "
                    "registration_val (the Learn2Reg layout), images in imagesTr/ and labels in labelsTr/")


@dataclasses.dataclass(frozen=True)
class Scan:
    """One image of a task and its label map.

    Attributes:
        image: path of the image file.
        label: path of its label file, or None when the JSON lists none.
    """
    image: pathlib.Path
    label: pathlib.Path | None = None

    @property
    def stem(self):
        """File name without ``.nii.gz`` / ``.nii``, e.g. ``"OASIS_0001_0000"``."""
        name = self.image.name
        for suffix in (".nii.gz", ".nii"):
            if name.endswith(suffix):
                return name[:-len(suffix)]
        return name


@dataclasses.dataclass(frozen=True)
class Learn2RegTask:
    """A task's ``<NAME>_dataset.json``, read and checked (see :func:`read_task`). Pairs are ``(moving, fixed)``.

    Attributes:
        json_path: the dataset JSON; its folder is the dataset root.
        name: the JSON's ``name``, or the file name's ``<NAME>``.
        shape: ``tensorImageShape``: ``(D, H, W)`` of every image, voxels.
        label_names: label integer -> name from ``labels``, background (0) excluded; empty if the JSON has none.
        training, test: the ``training`` and ``test`` entries.
        training_pairs: ``training_paired_images`` (empty for tasks trained on pairs of any two images).
        val_pairs, test_pairs: ``registration_val`` and ``registration_test`` (empty if absent).
    """
    json_path: pathlib.Path
    name: str
    shape: tuple[int, int, int]
    label_names: dict[int, str]
    training: tuple[Scan, ...]
    test: tuple[Scan, ...]
    training_pairs: tuple[tuple[Scan, Scan], ...]
    val_pairs: tuple[tuple[Scan, Scan], ...]
    test_pairs: tuple[tuple[Scan, Scan], ...]

    @property
    def root(self):
        return self.json_path.parent

    @property
    def paired(self):
        """True when the task lists its training pairs (``training_paired_images``, e.g. NLST's inhale/exhale)."""
        return bool(self.training_pairs)

    def scans(self):
        """Every distinct scan the task names (entries and pair members), in JSON order."""
        found = {}
        for scan in (*self.training, *self.test,
                     *(s for pairs in (self.training_pairs, self.val_pairs, self.test_pairs) for pair in pairs
                       for s in pair)):
            found.setdefault(scan.image, scan)
        return list(found.values())

    def relative(self, path):
        """``path`` as the JSON writes it (``./imagesTr/...``), for records and messages."""
        return "./" + pathlib.Path(os.path.relpath(path, self.root)).as_posix()


# --- reading the JSON ---------------------------------------------------------------------------------------

def find_dataset_json(data_dir):
    """The one ``<NAME>_dataset.json`` in ``data_dir``.

    Raises:
        DatasetError: naming the folder, if it is missing, holds no such file, or holds several.
    """
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        state = "is not a directory" if root.exists() else "does not exist"
        raise DatasetError(f"{root}: Learn2Reg data directory {state}; {_EXPECTED_LAYOUT}")
    found = sorted(root.glob("*_dataset.json"))
    if not found:
        raise DatasetError(f"{root}: no *_dataset.json found; {_EXPECTED_LAYOUT}")
    if len(found) > 1:
        raise DatasetError(f"{root}: several dataset files {[p.name for p in found]}; expected exactly one "
                           "<NAME>_dataset.json")
    return found[0]


def _key_error(json_path, key, expected, got=None):
    shown = "" if got is None else f", got {json.dumps(got)[:200]}"
    return DatasetError(f"{json_path}: key {key}: expected {expected}{shown}")


def _parse_shape(data, json_path):
    shapes = data.get("tensorImageShape")
    if shapes is None:
        raise DatasetError(f"{json_path}: key tensorImageShape is missing; expected e.g. "
                           '{"0": [160, 224, 192]}')
    shape = shapes.get("0") if isinstance(shapes, dict) else None
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise _key_error(json_path, 'tensorImageShape["0"]', "three positive integers [D, H, W]", shapes)
    return tuple(shape)


def _parse_labels(data, json_path):
    """``{integer: name}`` of ``labels["0"]`` without background; ``{}`` when the JSON has no labels."""
    labels = data.get("labels")
    if labels is None or labels == {}:
        return {}
    names = labels.get("0") if isinstance(labels, dict) else None
    if not isinstance(names, dict):
        raise _key_error(json_path, 'labels["0"]', 'a mapping of label integers to names, e.g. {"0": '
                         '"background", "1": "..."}', labels)
    out = {}
    for key, name in names.items():
        try:
            value = int(key)
        except ValueError:
            value = None
        if value is None or value < 0 or str(value) != key.strip() or not isinstance(name, str) or not name:
            raise _key_error(json_path, f'labels["0"]["{key}"]', "a non-negative integer key and a name", name)
        if value != 0:
            out[value] = name
    names_seen = collections.Counter(out.values())
    repeated = sorted(name for name, count in names_seen.items() if count > 1)
    if repeated:
        raise _key_error(json_path, 'labels["0"]', f"one integer per structure name; {repeated} named twice")
    return dict(sorted(out.items()))


def _resolve(root, value, json_path, key):
    if not isinstance(value, str) or not value.strip():
        raise _key_error(json_path, key, "a file path relative to the dataset root, e.g. ./imagesTr/X_0000.nii.gz",
                         value)
    if os.path.isabs(value):
        raise _key_error(json_path, key, "a path relative to the dataset root (./imagesTr/...), not an "
                         "absolute path", value)
    return pathlib.Path(os.path.normpath(root / value))


def _listed(data, key, json_path, required, expected):
    """The list under ``key`` of the dataset JSON (``[]`` when absent and not ``required``); DatasetError naming
    the file and key when a required key is missing or the value is not a list (``expected`` describes it)."""
    entries = data.get(key)
    if entries is None:
        if required:
            raise DatasetError(f"{json_path}: key {key} is missing; {_EXPECTED_LAYOUT}")
        return []
    if not isinstance(entries, list):
        raise _key_error(json_path, key, expected, entries)
    return entries


def _parse_entries(data, key, json_path, required):
    entries = _listed(data, key, json_path, required, 'a list of {"image": ..., "label": ...}')
    scans = []
    for index, entry in enumerate(entries):
        where = f"{key}[{index}]"
        if not isinstance(entry, dict) or "image" not in entry:
            raise _key_error(json_path, where, 'an entry {"image": ..., "label": ...} ("label" optional)', entry)
        image = _resolve(json_path.parent, entry["image"], json_path, where + ".image")
        label = (None if entry.get("label") is None
                 else _resolve(json_path.parent, entry["label"], json_path, where + ".label"))
        scans.append(Scan(image, label))
    return tuple(scans)


def _parse_pairs(data, key, json_path, required, listed):
    pairs = _listed(data, key, json_path, required, 'a list of {"fixed": ..., "moving": ...}')
    out = []
    for index, pair in enumerate(pairs):
        where = f"{key}[{index}]"
        if not isinstance(pair, dict) or "fixed" not in pair or "moving" not in pair:
            raise _key_error(json_path, where, 'a pair {"fixed": ..., "moving": ...}', pair)
        moving, fixed = (_resolve(json_path.parent, pair[role], json_path, f"{where}.{role}")
                         for role in ("moving", "fixed"))
        out.append((listed.get(moving, Scan(moving)), listed.get(fixed, Scan(fixed))))
    return tuple(out)


def _read_dataset_json(data_dir):
    """``(path, parsed object)`` of the dataset JSON in ``data_dir``; errors name the file."""
    json_path = find_dataset_json(data_dir)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{json_path}: cannot read as JSON ({type(error).__name__}: {error})") from error
    if not isinstance(data, dict):
        raise DatasetError(f"{json_path}: expected a JSON object with the keys tensorImageShape, labels, training "
                           f"and registration_val, got {type(data).__name__}")
    return json_path, data


def read_task(data_dir):
    """Read ``<data_dir>/<NAME>_dataset.json`` and check the files it lists, from their headers only.

    Checks: the JSON parses and has the keys of the layout in the right form; every image and label file it
    names exists and has a readable NIfTI header; every image has the shape ``tensorImageShape`` and every
    label map the shape of its image. No voxel is read (see :func:`validate_voxels` for that).

    Args:
        data_dir: the dataset root.

    Returns:
        :class:`Learn2RegTask`.

    Raises:
        DatasetError: naming the JSON file and key, or the image or label file, for anything wrong.
    """
    json_path, data = _read_dataset_json(data_dir)
    shape = _parse_shape(data, json_path)
    label_names = _parse_labels(data, json_path)
    training = _parse_entries(data, "training", json_path, required=True)
    test = _parse_entries(data, "test", json_path, required=False)
    listed = {}
    for scan in (*training, *test):
        if scan.image in listed and listed[scan.image] != scan:
            raise DatasetError(f"{json_path}: {scan.image} is listed twice with different labels "
                               f"({listed[scan.image].label} and {scan.label})")
        listed[scan.image] = scan
    name = data.get("name") if isinstance(data.get("name"), str) else json_path.name[:-len("_dataset.json")]
    task = Learn2RegTask(
        json_path=json_path, name=name, shape=shape, label_names=label_names, training=training, test=test,
        training_pairs=_parse_pairs(data, "training_paired_images", json_path, False, listed),
        val_pairs=_parse_pairs(data, "registration_val", json_path, True, listed),
        test_pairs=_parse_pairs(data, "registration_test", json_path, False, listed))
    if not training:
        raise _key_error(json_path, "training", "at least one image", [])
    for scan in task.scans():
        check_scan_header(scan, shape, json_path)
    return task


def check_scan_header(scan, shape, json_path):
    """Check one scan from its headers: the image has ``shape`` (``tensorImageShape`` of ``json_path``) and its
    label map, if any, the image's shape.

    Raises:
        DatasetError: naming the image or label file.
    """
    image_shape, _ = read_nifti_header(scan.image)
    if image_shape != tuple(shape):
        raise DatasetError(f"{scan.image}: image has shape {image_shape}, expected tensorImageShape "
                           f"{list(shape)} of {json_path}")
    if scan.label is not None:
        label_shape, _ = read_nifti_header(scan.label)
        if label_shape != image_shape:
            raise DatasetError(f"{scan.label}: label volume has shape {label_shape}, expected the shape of its "
                               f"image {scan.image} {image_shape}")


# --- structures and label groups ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LabelMapping:
    """How label maps as stored become the label maps that are scored.

    Attributes:
        label_values: structure name -> integer in the mapped label maps (background 0 excluded).
        lookup: ``[max stored label + 1]`` int32: stored integer -> mapped integer (0 = background, or a
            stored label that no group takes).
        stored_values: the stored integers the dataset JSON names (background excluded), grouped or not.
        source: the dataset JSON, named in messages.
    """
    label_values: dict[str, int]
    lookup: np.ndarray
    stored_values: frozenset
    source: str

    def apply(self, labels, path):
        """Map one stored label volume (any integer-valued array) read from ``path``.

        Returns:
            int32 array of ``labels``' shape.

        Raises:
            DatasetError: naming ``path``, for non-integer values or integers the dataset JSON does not name.
        """
        labels = np.asarray(labels)
        if np.issubdtype(labels.dtype, np.floating) and not np.all(labels == np.round(labels)):
            raise DatasetError(f"{path}: label volume holds non-integer values; expected integer labels")
        present = np.unique(labels).astype(np.int64).tolist()
        unknown = [v for v in present if v != 0 and v not in self.stored_values]
        if unknown:
            raise DatasetError(f"{path}: label values {unknown[:10]} are not named in {self.source}; expected 0 "
                               f"(background) or one of {sorted(self.stored_values)[:20]}")
        return self.lookup[labels.astype(np.int64)]


def label_mapping(task, label_groups=None):
    """The structures scored on a task: the JSON's labels, or named groups of them.

    Without groups every label of the JSON is one structure, named as there, with its stored integer. With
    ``label_groups``, a JSON file ``{"group name": [label names or integers], ...}``, each group becomes one
    structure (integers 1, 2, ... in the file's order) made of the labels it lists, e.g. Mindboggle's cortical
    labels merged into five lobes as in ULAE-net's paper; a label no group lists becomes background and is not
    scored.

    Args:
        task: :class:`Learn2RegTask`.
        label_groups: path of the groups file, or None.

    Returns:
        :class:`LabelMapping`.

    Raises:
        DatasetError: naming the groups file, if it is unreadable or malformed, a group is empty, names a label
            the dataset does not have (or background), or two groups share a label.
    """
    names = task.label_names
    size = max(names, default=0) + 1
    if label_groups is None:
        return LabelMapping({name: value for value, name in names.items()}, np.arange(size, dtype=np.int32),
                            frozenset(names), str(task.json_path))
    path = pathlib.Path(label_groups)
    try:
        groups = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the label groups as JSON ({type(error).__name__}: {error})") \
            from error
    if not isinstance(groups, dict) or not groups:
        raise DatasetError(f"{path}: expected a JSON object {{\"group name\": [label names or integers], ...}}")
    by_name = {name: value for value, name in names.items()}
    lookup = np.zeros(size, dtype=np.int32)
    owner = {}
    label_values = {}
    for index, (group, members) in enumerate(groups.items(), start=1):
        if not isinstance(members, list) or not members:
            raise DatasetError(f"{path}: group {group!r} must list at least one label name or integer, got "
                               f"{json.dumps(members)[:200]}")
        for member in members:
            value = member if isinstance(member, int) and not isinstance(member, bool) else by_name.get(member)
            if value not in names:
                raise DatasetError(f"{path}: group {group!r} lists {member!r}, which is not a label of "
                                   f"{task.json_path} (labels: {_label_list(names)})")
            if value in owner:
                raise DatasetError(f"{path}: label {names[value]!r} ({value}) is in both groups {owner[value]!r} "
                                   f"and {group!r}; groups must not overlap")
            owner[value] = group
            lookup[value] = index
        label_values[group] = index
    return LabelMapping(label_values, lookup, frozenset(names), str(task.json_path))


def _label_list(names, limit=12):
    items = [f"{value}={name}" for value, name in names.items()]
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "") or "none"


# --- reading volumes ------------------------------------------------------------------------------------------

def normalise_intensity(volume, method, source):
    """Scale one image volume's intensities.

    Args:
        volume: image array (any shape).
        method: ``max``: ``x / max(x)`` (our choice for ULAE-net's protocol; a volume of positive intensities
            lands in [0, 1] with its background kept at 0); ``percentile``: the cardiac loaders' scaling
            (:func:`~gsmorph_tf.data.preprocessing.scale_to_unit`), minimum -> 0 and 99.5th percentile -> 1,
            clipped, over this volume alone (pairs are formed on the fly, so there is no pair to share a range).
        source: the file, for messages.

    Returns:
        float32 array of ``volume``'s shape.

    Raises:
        DatasetError: naming ``source``, for ``max`` on a volume whose maximum is not positive.
        ValueError: an unknown ``method``.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if method == "max":
        peak = float(volume.max())
        if peak <= 0:
            raise DatasetError(f"{source}: intensity_norm=max needs a positive maximum intensity, got {peak}; "
                               "use intensity_norm=percentile for this data")
        return volume / np.float32(peak)
    if method == "percentile":
        # scale_to_unit pools two frames into one range; with an empty second frame the range is this volume's.
        return scale_to_unit(volume, np.zeros(0, np.float32))[0]
    raise ValueError(f"intensity_norm must be one of {INTENSITY_NORMS}, got {method!r}")


def read_image(path, intensity_norm="max", shape=None):
    """Read and scale one image volume.

    Args:
        path: NIfTI file.
        intensity_norm: one of :data:`INTENSITY_NORMS` (see :func:`normalise_intensity`).
        shape: the expected ``(D, H, W)``, or None.

    Returns:
        ``[D, H, W]`` float32.

    Raises:
        DatasetError: naming ``path``: unreadable, not 3-D, another shape than ``shape``, non-finite voxels.
    """
    image, _, _ = load_nifti(path, expected_ndim=3)
    if shape is not None and image.shape != tuple(shape):
        raise DatasetError(f"{path}: image has shape {image.shape}, expected {tuple(shape)}")
    return normalise_intensity(image, intensity_norm, path)


def read_scan(scan, mapping, intensity_norm="max"):
    """Read one scan: scaled image, mapped labels (zeros when it has none) and the voxel size.

    Returns:
        ``(image, labels, spacing_mm)``: ``[D, H, W]`` float32, ``[D, H, W]`` int32, ``(d, h, w)`` mm.

    Raises:
        DatasetError: naming the file, for anything wrong with the image or the label map.
    """
    image, zooms, _ = load_nifti(scan.image, expected_ndim=3)
    image = normalise_intensity(image, intensity_norm, scan.image)
    if scan.label is None:
        labels = np.zeros(image.shape, np.int32)
    else:
        stored, _, _ = load_nifti(scan.label, expected_ndim=3)
        if stored.shape != image.shape:
            raise DatasetError(f"{scan.label}: label volume has shape {stored.shape}, expected the shape of its "
                               f"image {scan.image} {image.shape}")
        labels = mapping.apply(stored, scan.label)
    return image, labels, zooms


def validate_voxels(task, mapping=None, intensity_norm="max"):
    """Read every file the task names and check its voxels (slow: reads the whole dataset once).

    :func:`read_task` checks headers only; this also finds truncated files, NaN or infinite intensities,
    images ``intensity_norm`` cannot scale and label values the JSON does not name, before training rather
    than when the volume is first drawn.

    Args:
        task: :class:`Learn2RegTask`.
        mapping: :class:`LabelMapping` (default: the JSON's labels).
        intensity_norm: the scaling training will use (one of :data:`INTENSITY_NORMS`).

    Raises:
        DatasetError: naming the first bad file.
    """
    mapping = mapping or label_mapping(task)
    for scan in task.scans():
        read_scan(scan, mapping, intensity_norm)


# --- splits ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Learn2RegSplits:
    """Train, validation and test of a task. Pairs are ``(moving, fixed)``.

    Attributes:
        train_images: the images training draws from.
        train_pairs: ``(moving, fixed)`` indices into ``train_images``; None means every ordered pair of two
            distinct images (``N (N - 1)`` pairs, drawn on the fly, never listed).
        val, test: evaluation pairs of :class:`Scan`.
        record: what was used, for the run to write out (JSON-serialisable; paths as the JSON writes them).
    """
    train_images: tuple[Scan, ...]
    train_pairs: tuple[tuple[int, int], ...] | None
    val: tuple[tuple[Scan, Scan], ...]
    test: tuple[tuple[Scan, Scan], ...]
    record: dict

    @property
    def n_train_pairs(self):
        n = len(self.train_images)
        return n * (n - 1) if self.train_pairs is None else len(self.train_pairs)


def _find_atlas(task, atlas):
    path = pathlib.Path(atlas)
    if not path.is_absolute() and not path.exists():
        path = task.root / path  # as the JSON writes it: ./imagesTr/...
    path = pathlib.Path(os.path.normpath(path))
    listed = {scan.image: scan for scan in (*task.training, *task.test)}
    scan = listed.get(path, Scan(path))
    check_scan_header(scan, task.shape, task.json_path)
    return scan


def _unlabelled(pairs):
    return [scan for pair in pairs for scan in pair if scan.label is None]


def _distinct(scans, leave_out=None):
    return [scan for scan in dict.fromkeys(scans) if scan != leave_out]


def _split_paired(task, evaluated, test_pairs, test_fraction, rng):
    """Training images and ``(moving, fixed)`` index pairs of a paired task, and its test pairs (held out here
    when ``test_pairs`` is None). A training pair sharing an image with an evaluated pair is dropped."""
    candidates = [pair for pair in task.training_pairs if not any(scan.image in evaluated for scan in pair)]
    if test_pairs is None:
        n_test = max(1, round(test_fraction * len(candidates)))
        if len(candidates) - n_test < 1:
            raise DatasetError(f"{task.json_path}: {len(candidates)} training pair(s) left after the validation "
                               "pairs; too few to hold out a test split and train")
        held = sorted(rng.choice(len(candidates), n_test, replace=False).tolist())
        test_pairs = tuple(candidates[i] for i in held)
        held_images = {scan.image for pair in test_pairs for scan in pair}
        candidates = [pair for pair in candidates if not any(scan.image in held_images for scan in pair)]
    if not candidates:
        raise DatasetError(f"{task.json_path}: no training pair left after holding out the validation and test "
                           "pairs")
    images = _distinct(scan for pair in candidates for scan in pair)
    index = {scan: i for i, scan in enumerate(images)}
    return images, tuple((index[m], index[f]) for m, f in candidates), test_pairs


def _split_subjects(task, evaluated, test_pairs, test_rule, atlas_scan, test_fraction, rng):
    """Training subjects of an unpaired task and its test pairs (held out here when ``test_pairs`` is None,
    recording the subjects in ``test_rule``)."""
    subjects = [scan for scan in task.training if scan.image not in evaluated]
    smallest = 1 if atlas_scan else 2
    if test_pairs is None:
        n_test = max(smallest, round(test_fraction * len(subjects)))
        if len(subjects) - n_test < smallest:
            raise DatasetError(f"{task.json_path}: {len(subjects)} training image(s) left after the validation "
                               f"images{' and the atlas' if atlas_scan else ''}; too few to hold out {n_test} "
                               "test subject(s) and train")
        order = rng.permutation(len(subjects))
        held = [subjects[i] for i in order[:n_test]]
        subjects = [subjects[i] for i in sorted(order[n_test:])]
        test_rule["subjects"] = [task.relative(scan.image) for scan in held]
        test_pairs = (tuple((atlas_scan, scan) for scan in held) if atlas_scan else
                      tuple((held[k + 1], held[k]) for k in range(len(held) - 1)))
    elif atlas_scan is not None:
        test_pairs = tuple((atlas_scan, scan)
                           for scan in _distinct((s for pair in test_pairs for s in pair), atlas_scan))
    if len(subjects) < smallest:
        raise DatasetError(f"{task.json_path}: {len(subjects)} training image(s) left after holding out the "
                           f"validation and test images; need at least {smallest}")
    return subjects, test_pairs


def make_splits(task, atlas=None, test_fraction=0.2, seed=0):
    """Split a task into training, validation and test.

    - **Training**, unpaired tasks: every ordered pair of two distinct training images (``N (N - 1)``, drawn
      on the fly by :mod:`~gsmorph_tf.data.streaming`); paired tasks: ``training_paired_images``. Images that
      appear in a validation or test pair (and the atlas) are held out of training; for paired tasks a
      training pair touching one is dropped.
    - **Validation**: ``registration_val``.
    - **Test**: ``registration_test`` when every image of it has a label file (the test pairs are then held out
      of training like the validation pairs); otherwise a seeded hold-out of ``test_fraction`` of the
      training subjects (paired tasks: of the training pairs), taken before training pairs are formed. The
      held-out subjects are registered in consecutive pairs of a seeded order, ``moving = s[k + 1]``,
      ``fixed = s[k]``, as Learn2Reg's own ``registration_val`` lists do (each subject in at most two pairs).
    - **Atlas** (``atlas`` given; unpaired tasks): atlas-to-subject, every pair is ``(moving = atlas,
      fixed = subject)``. The flow then lives on the subject's grid, so warping the atlas labels with it
      segments the subject (atlas-based segmentation) and Dice is scored against each subject's own labels,
      as Learn2Reg scores ``moving -> fixed``. Training pairs the atlas with every training subject;
      validation and test pair it with each distinct image of their pairs (or of the held-out subjects),
      since a network trained with one moving image is evaluated with that image.

    Args:
        task: :class:`Learn2RegTask`.
        atlas: path of the atlas image (absolute, from the current folder, or relative to the dataset root as
            the JSON writes it), or None. A listed image brings its label file.
        test_fraction: fraction of the training subjects (pairs) held out when the test split cannot come
            from ``registration_test``; in (0, 1).
        seed: seed of that hold-out.

    Returns:
        :class:`Learn2RegSplits`, whose ``record`` says which test rule was used and why.

    Raises:
        DatasetError: naming the JSON or the atlas file: an atlas on a paired task, or too few images left to
            train on (or to hold out).
        ValueError: ``test_fraction`` outside (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    atlas_scan = None
    if atlas is not None:
        if task.paired:
            raise DatasetError(f"{task.json_path}: an atlas was given but the task is paired "
                               "(training_paired_images); atlas-to-subject training needs an unpaired task")
        atlas_scan = _find_atlas(task, atlas)
    rel = task.relative
    record = {"task": task.name, "dataset_json": str(task.json_path),
              "mode": "paired" if task.paired else ("atlas_to_subject" if atlas_scan else "unpaired"),
              "atlas": None if atlas_scan is None else str(atlas_scan.image)}

    unlabelled = _unlabelled(task.test_pairs)
    if task.test_pairs and not unlabelled:
        test_rule = {"source": "registration_test"}
        test_pairs = task.test_pairs
    else:
        reason = ("the JSON has no registration_test" if not task.test_pairs else
                  f"registration_test images have no label file (e.g. {rel(unlabelled[0].image)})")
        test_rule = {"source": "held_out_training", "reason": reason, "fraction": test_fraction, "seed": seed}
        test_pairs = None
    evaluated = {scan.image for pair in (*task.val_pairs, *(test_pairs or ())) for scan in pair}
    if atlas_scan is not None:
        evaluated.add(atlas_scan.image)
    rng = np.random.default_rng(seed)
    if task.paired:
        images, train_pairs, test_pairs = _split_paired(task, evaluated, test_pairs, test_fraction, rng)
        val_pairs = task.val_pairs
        pairs_rule = "training_paired_images"
    else:
        subjects, test_pairs = _split_subjects(task, evaluated, test_pairs, test_rule, atlas_scan, test_fraction,
                                               rng)
        if atlas_scan is not None:
            images = [atlas_scan, *subjects]
            train_pairs = tuple((0, j) for j in range(1, len(images)))
            val_pairs = tuple((atlas_scan, scan)
                              for scan in _distinct((s for pair in task.val_pairs for s in pair), atlas_scan))
            pairs_rule = "atlas (moving) to every training subject (fixed)"
        else:
            images, train_pairs = subjects, None
            val_pairs = task.val_pairs
            pairs_rule = "every ordered pair of two distinct training images"

    splits = Learn2RegSplits(train_images=tuple(images), train_pairs=train_pairs, val=tuple(val_pairs),
                             test=tuple(test_pairs), record=record)
    record["train"] = {"images": len(images), "pairs": splits.n_train_pairs, "pairs_rule": pairs_rule,
                       "held_out": sorted({rel(scan.image) for pair in (*val_pairs, *test_pairs) for scan in pair
                                           if scan != atlas_scan})}
    record["val"] = {"source": "registration_val" + (" images, paired with the atlas" if atlas_scan else ""),
                     "pairs": [[rel(m.image), rel(f.image)] for m, f in val_pairs]}
    record["test"] = {**test_rule, "pairs": [[rel(m.image), rel(f.image)] for m, f in test_pairs]}
    record["pair_order"] = "[moving, fixed]"
    return splits


# --- evaluation pairs -----------------------------------------------------------------------------------------

class EvaluationPairs(collections.abc.Sequence):
    """Validation or test pairs read from disk one at a time, when indexed (nothing is held between items).

    Item ``i`` is a :class:`~gsmorph_tf.data.subjects.SubjectPairs` with one volume (as the 3D brain task):
    ``moving``, ``fixed`` ``[1, D, H, W]`` float32 (each volume scaled on its own by ``intensity_norm``),
    ``moving_labels``, ``fixed_labels`` ``[1, D, H, W]`` int32 mapped by ``mapping`` (zeros for an image
    without labels), ``spacing_mm`` the fixed image's voxel size (the flow lives on its grid), subject
    ``"<moving stem>_to_<fixed stem>"``. Slicing gives another :class:`EvaluationPairs`.
    (:class:`gsmorph_tf.data.streaming.StreamedEvaluationPairs` adds a ``tf.data`` stream of the pairs.)
    """

    def __init__(self, pairs, mapping, intensity_norm="max", shape=None):
        if intensity_norm not in INTENSITY_NORMS:
            raise ValueError(f"intensity_norm must be one of {INTENSITY_NORMS}, got {intensity_norm!r}")
        self.pairs = tuple(pairs)
        self.mapping = mapping
        self.intensity_norm = intensity_norm
        self._shape = None if shape is None else tuple(int(v) for v in shape)

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return type(self)(self.pairs[index], self.mapping, self.intensity_norm, self._shape)
        moving_scan, fixed_scan = self.pairs[index]
        moving, moving_labels, _ = read_scan(moving_scan, self.mapping, self.intensity_norm)
        fixed, fixed_labels, spacing = read_scan(fixed_scan, self.mapping, self.intensity_norm)
        return SubjectPairs(subject=pair_name(moving_scan, fixed_scan), moving=moving[None], fixed=fixed[None],
                            moving_labels=moving_labels[None], fixed_labels=fixed_labels[None],
                            spacing_mm=tuple(spacing), label_values=dict(self.mapping.label_values))

    @property
    def subjects(self):
        """The items' names, without reading anything."""
        return [pair_name(m, f) for m, f in self.pairs]

    @property
    def pair_count(self):
        """Pairs in the split, without reading any volume."""
        return len(self.pairs)

    @property
    def shape(self):
        """``(D, H, W)`` of the volumes (``tensorImageShape``)."""
        if self._shape is None:
            self._shape = read_nifti_header(self.pairs[0][0].image)[0]
        return self._shape

    @property
    def label_values(self):
        """Structure name -> integer in the mapped label maps."""
        return dict(self.mapping.label_values)


def pair_name(moving, fixed):
    """``"<moving stem>_to_<fixed stem>"``."""
    return f"{moving.stem}_to_{fixed.stem}"


# --- everything at once ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Learn2RegData:
    """A task read, checked and split: what a training run needs (see :func:`load_learn2reg`)."""
    task: Learn2RegTask
    splits: Learn2RegSplits
    mapping: LabelMapping
    intensity_norm: str
    val: EvaluationPairs
    test: EvaluationPairs

    @property
    def record(self):
        """The split record plus the structures and the intensity scaling, for the run to write out."""
        return {**self.splits.record, "intensity_norm": self.intensity_norm,
                "structures": dict(self.mapping.label_values), "tensorImageShape": list(self.task.shape)}


def load_learn2reg(data_dir, atlas=None, label_groups=None, intensity_norm="max", test_fraction=0.2, seed=0,
                   validate_all_voxels=False):
    """Read, check (headers; every voxel too with ``validate_all_voxels``) and split a Learn2Reg task.

    Args:
        data_dir: the dataset root.
        atlas, test_fraction, seed: see :func:`make_splits`.
        label_groups: path of a label-groups JSON (see :func:`label_mapping`), or None.
        intensity_norm: one of :data:`INTENSITY_NORMS`.
        validate_all_voxels: also read every file now (:func:`validate_voxels`).

    Returns:
        :class:`Learn2RegData`; ``val`` and ``test`` are lazy :class:`EvaluationPairs`, and the training images
        and pairs (``splits``) feed :func:`gsmorph_tf.data.streaming.training_dataset`.

    Raises:
        DatasetError: naming the file (and JSON key) for anything wrong with the data.
    """
    if intensity_norm not in INTENSITY_NORMS:
        raise ValueError(f"intensity_norm must be one of {INTENSITY_NORMS}, got {intensity_norm!r}")
    task = read_task(data_dir)
    mapping = label_mapping(task, label_groups)
    if validate_all_voxels:
        validate_voxels(task, mapping, intensity_norm)
    splits = make_splits(task, atlas=atlas, test_fraction=test_fraction, seed=seed)
    return Learn2RegData(task=task, splits=splits, mapping=mapping, intensity_norm=intensity_norm,
                         val=EvaluationPairs(splits.val, mapping, intensity_norm, task.shape),
                         test=EvaluationPairs(splits.test, mapping, intensity_norm, task.shape))


def read_tensor_shape(data_dir):
    """``tensorImageShape`` of the dataset JSON in ``data_dir`` (the JSON alone, no image is opened).

    Raises:
        DatasetError: naming the folder or the JSON file.
    """
    json_path, data = _read_dataset_json(data_dir)
    return _parse_shape(data, json_path)
