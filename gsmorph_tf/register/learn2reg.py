"""A Learn2Reg submission: every pair of a task's ``registration_val`` (or ``registration_test``) registered with
an exported 3D SavedModel, one displacement file per pair, checked and zipped.

Each pair's volumes are read and scaled one by one as Learn2Reg training fed them
(:func:`gsmorph_tf.data.learn2reg.read_image` with the model's ``intensity_norm``, see
:func:`trained_intensity_norm`), not jointly like the cardiac files of :func:`~gsmorph_tf.register.register_files`,
and registered by :func:`~gsmorph_tf.register.register_volumes` through the model's window (the image centre;
for a model trained on the task the window is the whole volume; outside a smaller window the displacement is
zero).

Files written to ``<output_dir>/``:

``displacements/disp_<fixed>_<moving>.nii.gz``
    ``[*tensorImageShape, 3]`` float32 on the fixed grid (the fixed image's affine, which Learn2Reg ignores):
    the displacement ``u`` in voxels, component k along array axis k, mapping fixed to moving, i.e.
    ``moved(x) = moving(x + u(x))``, which is how the evaluation warps the moving labels
    (``map_coordinates(moving_seg, identity + disp)``). Names: :func:`displacement_names`. Both versions of the
    evaluation read a ``.nii.gz`` with nibabel's ``get_fdata`` (any numeric type, as float64; utils.py
    ``load_disp``): float32 is read back exactly.
``submission.zip``
    those files at the zip's top level (the evaluation reads ``<input>/disp_*.nii.gz``; grand-challenge
    unpacks an upload into that folder).

Everything is written to a temp folder and a temp zip first; the folder is checked (:func:`check_submission`)
before it is zipped, then both are renamed into place (replacing an earlier run's), so an interrupted or
failed run leaves the previous submission (or nothing) behind.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses
import os
import re
import shutil
import tempfile
import zipfile

import nibabel as nib
import numpy as np
import tensorflow as tf

from gsmorph_tf.data.learn2reg import INTENSITY_NORMS, Scan, read_image
from gsmorph_tf.data.nifti import load_nifti
from gsmorph_tf.data.preprocessing import image_center
from gsmorph_tf.errors import DatasetError, SavedModelError
from gsmorph_tf.register import register_volumes

#: The pair lists of a dataset JSON a submission can be made for.
PAIR_LISTS = ("registration_val", "registration_test")
#: Folder of the displacement files and the zip, inside the output folder.
FIELDS_DIR = "displacements"
SUBMISSION_ZIP = "submission.zip"
DESCRIPTION = "Learn2Reg disp: voxels, array axes, fixed grid, moved(x)=moving(x+u(x))"

# <TASK>_<case>_<modality>.nii.gz: the evaluation reads the case and the modality from the path's characters
# [-16:-12] and [-11:-7] (L2R evaluation/evaluation.py lines 42-43, evaluation/L2RTest/evaluation.py 36-37).
_LEARN2REG_NAME = re.compile(r"_(\d{4})_(\d{4})\.nii\.gz$")


@dataclasses.dataclass(frozen=True)
class SubmissionPair:
    """One listed pair and the file name(s) its displacement is written under.

    Attributes:
        moving, fixed: :class:`~gsmorph_tf.data.learn2reg.Scan`.
        names: file names in the submission (one or two, see :func:`displacement_names`).
    """
    moving: Scan
    fixed: Scan
    names: tuple[str, ...]


def case_and_modality(path):
    """``("0395", "0000")`` for ``.../OASIS_0395_0000.nii.gz``: the case and modality the evaluation reads.

    Raises:
        DatasetError: naming ``path``, if its name does not end in ``_<4 digits>_<4 digits>.nii.gz``.
    """
    found = _LEARN2REG_NAME.search(os.path.basename(str(path)))
    if found is None:
        raise DatasetError(f"{path}: expected a Learn2Reg image name <TASK>_<4-digit case>_<4-digit modality>.nii.gz "
                           "(the evaluation reads the displacement file's name from those characters)")
    return found.group(1), found.group(2)


def displacement_names(fixed, moving):
    """The ``disp_*.nii.gz`` file names under which both versions of the official evaluation find the
    displacement of the pair ``fixed`` <- ``moving`` (image paths or names, see :func:`case_and_modality`).

    With ``F``, ``M`` the cases and ``f``, ``m`` the modalities (MDL-UzL/L2R at 8847509):

    - the current ``evaluation/evaluation.py`` (lines 45-59) finds ``disp_F_M`` only when ``(f, m) ==
      ("0000", "0001")``, and ``disp_F_f_M_m`` always;
    - the older grand-challenge container ``evaluation/L2RTest/evaluation.py`` (lines 41-49, 75-86) takes
      ``disp_F_M`` when ``f == m`` or ``(f, m) == ("0000", "0001")`` (and then only that name), and
      ``disp_F_f_M_m`` otherwise.

    Hence: ``0000``/``0001`` pairs (NLST's exhale/inhale) get ``disp_F_M``; same-modality pairs (OASIS's
    ``_0000``/``_0000``), which the two versions name differently, get both names (the same file twice); every
    other pair gets ``disp_F_f_M_m``.

    Returns:
        tuple of one or two file names, the short form first.
    """
    (fixed_case, fixed_modality), (moving_case, moving_modality) = case_and_modality(fixed), case_and_modality(moving)
    short = f"disp_{fixed_case}_{moving_case}.nii.gz"
    long = f"disp_{fixed_case}_{fixed_modality}_{moving_case}_{moving_modality}.nii.gz"
    if (fixed_modality, moving_modality) == ("0000", "0001"):
        return (short,)
    if fixed_modality == moving_modality:
        return (short, long)
    return (long,)


def submission_pairs(task, pair_list="registration_val"):
    """The pairs of ``pair_list`` with their file names.

    Args:
        task: :class:`~gsmorph_tf.data.learn2reg.Learn2RegTask` (read by ``read_task``, which has checked every
            listed file's header).
        pair_list: one of :data:`PAIR_LISTS`.

    Returns:
        list of :class:`SubmissionPair` in JSON order.

    Raises:
        DatasetError: naming the dataset JSON, if the list is empty or absent, an image name is not a Learn2Reg
            name, or two pairs would write the same file.
    """
    if pair_list not in PAIR_LISTS:
        raise ValueError(f"pair_list must be one of {PAIR_LISTS}, got {pair_list!r}")
    listed = task.val_pairs if pair_list == "registration_val" else task.test_pairs
    if not listed:
        raise DatasetError(f"{task.json_path}: {pair_list} lists no pairs; expected a list of "
                           '{"fixed": ..., "moving": ...} to register')
    pairs, owner = [], {}
    for index, (moving, fixed) in enumerate(listed):
        pair = SubmissionPair(moving, fixed, displacement_names(fixed.image, moving.image))
        for name in pair.names:
            if name in owner:
                raise DatasetError(f"{task.json_path}: {pair_list}[{index}] ({task.relative(fixed.image)} <- "
                                   f"{task.relative(moving.image)}) would write {name}, as {pair_list}"
                                   f"[{owner[name]}] does; expected one file per pair")
            owner[name] = index
        pairs.append(pair)
    return pairs


def trained_intensity_norm(provenance):
    """The ``intensity_norm`` a model was trained with, from its export's provenance
    (:mod:`gsmorph_tf.serve.provenance`: ``training.dataset_options.intensity_norm`` of a ``learn2reg`` run), or
    None when the export does not record one (a model trained on another dataset, or exported from memory)."""
    training = (provenance or {}).get("training") or {}
    if training.get("dataset") != "learn2reg":
        return None
    value = (training.get("dataset_options") or {}).get("intensity_norm", training.get("intensity_norm"))
    return value if value in INTENSITY_NORMS else None


def resolve_intensity_norm(model, given=None):
    """The intensity scaling to register with: the one the model was trained with, or ``given``.

    Raises:
        SavedModelError: naming the model, if its export does not record the scaling and none is given, or
            ``given`` differs from the recorded one.
    """
    recorded = trained_intensity_norm(model.provenance)
    if recorded is None and given is None:
        raise SavedModelError(f"{model.path}: the export does not record the intensity_norm the model was trained "
                              f"with (not a learn2reg training run); give it with --intensity_norm "
                              f"({' or '.join(INTENSITY_NORMS)})")
    if recorded is not None and given is not None and given != recorded:
        raise SavedModelError(f"{model.path}: trained with intensity_norm={recorded} (its provenance), but "
                              f"intensity_norm={given} was given; leave it out to use the model's own")
    return recorded or given


def check_model(model):
    """Raise SavedModelError naming the model unless it is a 3D model (Learn2Reg tasks are volumes)."""
    if model.ndim != 3:
        raise SavedModelError(f"{model.path}: a {model.ndim}D model (input {model.inshape}); a Learn2Reg "
                              "submission needs a 3D model trained on volumes")


def window_note(model, shape):
    """One line saying where the model's window sits when its input is not the volume's ``shape``; None when
    it is (a model trained on the task sees whole volumes)."""
    if tuple(model.inshape) == tuple(shape):
        return None
    size, volume = "x".join(map(str, model.inshape)), "x".join(map(str, shape))
    padded = any(m > s for m, s in zip(model.inshape, shape))
    return (f"Note: the model's input {size} is not tensorImageShape {volume}: each pair is registered in one "
            f"{size} window centred on voxel {tuple(int(c) for c in image_center(shape))}"
            f"{' (zero-padded where it leaves the volume)' if padded else ''}; the displacement is zero outside it")


def register_pair(model, pair, intensity_norm, shape):
    """The displacement of one pair: ``[*shape, 3]`` float32, voxels, fixed grid (see the module docstring).

    Raises:
        DatasetError: naming the file, for an unreadable image, another shape than ``shape``, non-finite voxels
            or a volume ``intensity_norm`` cannot scale.
    """
    moving = read_image(pair.moving.image, intensity_norm, shape)
    fixed = read_image(pair.fixed.image, intensity_norm, shape)
    return register_volumes(model, moving, fixed, joint_scaling=False).flow_voxels


def check_displacement_file(path, shape):
    """Check one written displacement file: readable, ``[*shape, 3]``, stored as float32, finite.

    Raises:
        DatasetError: naming ``path`` and what was expected.
    """
    field, _, _ = load_nifti(path)  # readable, finite (errors name the file)
    if field.shape != (*shape, 3):
        raise DatasetError(f"{path}: displacement of shape {field.shape}, expected tensorImageShape + [3] = "
                           f"{(*shape, 3)}")
    stored = nib.load(str(path)).get_data_dtype()
    if stored != np.float32:
        raise DatasetError(f"{path}: displacement stored as {stored}, expected float32")


def check_submission(folder, pairs, shape):
    """Check a submission folder: exactly the files of ``pairs`` (nothing missing, nothing else), each valid
    (:func:`check_displacement_file`).

    Raises:
        DatasetError: naming the folder (missing or extra files) or the bad file.
    """
    expected = {name for pair in pairs for name in pair.names}
    present = set(os.listdir(folder))
    if present != expected:
        missing, extra = sorted(expected - present), sorted(present - expected)
        raise DatasetError(f"{folder}: expected exactly the {len(expected)} displacement files of the listed pairs"
                           + (f"; missing {missing[:5]}" if missing else "") + (f"; unexpected {extra[:5]}" if extra else ""))
    for name in sorted(expected):
        check_displacement_file(os.path.join(folder, name), shape)


def write_zip(folder, zip_path):
    """Zip every file of ``folder`` at the zip's top level (stored: ``.nii.gz`` is compressed already), through
    a temp name and a rename. Returns the names in the zip."""
    names = sorted(os.listdir(folder))
    tmp = "%s.tmp-%d" % (zip_path, os.getpid())
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for name in names:
                archive.write(os.path.join(folder, name), arcname=name)
        os.replace(tmp, zip_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return names


@dataclasses.dataclass(frozen=True)
class Submission:
    """What :func:`write_submission` wrote: the displacement folder, the zip and the file names in it."""
    folder: str
    zip_path: str
    names: tuple[str, ...]


def write_submission(model, task, pairs, output_dir, intensity_norm, show_progress=True):
    """Register every pair and write the submission (see the module docstring).

    Every image of ``pairs`` is read (and its intensities scaled) once before the first registration, so a bad
    volume stops the run before any work; nothing is written until every field is checked.

    Args:
        model: 3D :class:`~gsmorph_tf.register.RegistrationModel`.
        task: :class:`~gsmorph_tf.data.learn2reg.Learn2RegTask`.
        pairs: :func:`submission_pairs` of the task.
        output_dir: where ``displacements/`` and ``submission.zip`` go (created if needed).
        intensity_norm: the model's scaling (:func:`resolve_intensity_norm`).
        show_progress: a Keras progress bar over the pairs.

    Returns:
        :class:`Submission`.

    Raises:
        SavedModelError: a model that is not 3D. DatasetError: naming the bad file.
    """
    check_model(model)
    for path in dict.fromkeys(scan.image for pair in pairs for scan in (pair.moving, pair.fixed)):
        read_image(path, intensity_norm, task.shape)  # validate only; re-read when registered
    os.makedirs(output_dir, exist_ok=True)
    folder, zip_path = os.path.join(output_dir, FIELDS_DIR), os.path.join(output_dir, SUBMISSION_ZIP)
    scratch = tempfile.mkdtemp(prefix=".%s.tmp-" % FIELDS_DIR, dir=output_dir)
    try:
        bar = tf.keras.utils.Progbar(len(pairs), unit_name="pair") if show_progress else None
        for done, pair in enumerate(pairs, 1):
            flow = register_pair(model, pair, intensity_norm, task.shape)
            fixed = nib.load(str(pair.fixed.image))
            image = nib.Nifti1Image(flow.astype(np.float32), fixed.affine)
            image.set_data_dtype(np.float32)
            image.header["descrip"] = DESCRIPTION
            first = os.path.join(scratch, pair.names[0])
            nib.save(image, first)
            for name in pair.names[1:]:
                shutil.copyfile(first, os.path.join(scratch, name))
            if bar is not None:
                bar.update(done)
        check_submission(scratch, pairs, task.shape)
        names = write_zip(scratch, zip_path)
        old = folder + ".old-%d" % os.getpid()
        if os.path.exists(folder):
            os.replace(folder, old)
        os.replace(scratch, folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Submission(folder=folder, zip_path=zip_path, names=tuple(names))
