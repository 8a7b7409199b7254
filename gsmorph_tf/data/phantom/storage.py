"""Writing the phantom to disk in the ACDC layout, atomically, and recognising a phantom already there.

Layout (exactly ACDC's ``training`` folder, so the ACDC loader reads it unchanged)::

    <root>/phantom.json                                        generation parameters and format version
    <root>/training/patientNNN/Info.cfg                        ED, ES (1-based frames), Group, Height, NbFrame, Weight
    <root>/training/patientNNN/patientNNN_4d.nii.gz            int16 [X, Y, Z, T], all frames
    <root>/training/patientNNN/patientNNN_frameXX.nii.gz       int16 [X, Y, Z], the ED and ES frames
    <root>/training/patientNNN/patientNNN_frameXX_gt.nii.gz    uint8 [X, Y, Z]: 0 background, 1 RV, 2 Myo, 3 LV

Arrays are indexed ``[X, Y, Z(, T)]``: X and Y in-plane (square pixels), Z the short-axis slices from base
(z = 0) to apex. Header zooms are ``(pixel mm, pixel mm, slice mm[, frame ms])`` and the affine is
``diag(pixel, pixel, slice, 1)``. Intensities are int16, blood pool around 800-1000.
"""
import json
import os
import pathlib
import shutil
import tempfile

import nibabel as nib
import numpy as np

from gsmorph_tf.data.nifti import DatasetError
from gsmorph_tf.data.phantom.anatomy import draw_subject, subject_generators
from gsmorph_tf.data.phantom.render import render_cycle

# Bump when the generated data change for the same parameters, so an old phantom on disk is not mistaken
# for a current one. 2: through-plane motion, partial-volume slabs, papillary muscles and trabeculae, flow.
PHANTOM_FORMAT_VERSION = 2
PHANTOM_MANIFEST = "phantom.json"


def generate_phantom_dataset(root, n_subjects=20, n_slices=8, image_size=192, n_frames=10, seed=0):
    """Write the phantom under ``root`` in the ACDC layout and return ``root`` as a :class:`pathlib.Path`.

    Each subject ``patientNNN`` (001, 002, ...) draws its own anatomy, group, spacing, motion and appearance
    from ``seed``; subject ``i`` depends only on ``seed`` and the image parameters, not on ``n_subjects``.
    The same arguments give byte-identical arrays.

    Args:
        root: directory to create (or an empty one). Written atomically: everything goes to a hidden sibling
            ``.<name>.partial-*`` that is renamed into place, so an interrupted run never leaves a half-written
            dataset (only a process killed outright can leave that sibling behind; it is safe to delete).
        n_subjects: number of subjects (>= 1).
        n_slices: short-axis slices per volume, base to apex (>= 1); slice thickness 8-10 mm. The stack starts
            8-13 mm below the ED valve plane and the LV cavity ends near its last slice (at least 50 mm from the
            valve plane for short stacks).
        image_size: X size in pixels (>= 32); Y is 1.0-1.17 x larger. The field of view is 250-350 mm, so
            the pixel spacing is 1.3-1.8 mm at the default 192 px and scales as 192 / image_size.
        n_frames: frames per cardiac cycle (>= 2). ED is frame 1, ES at 35-45 % of the cycle.
        seed: integer seed.

    Returns:
        ``pathlib.Path(root)``. If ``root`` already holds a complete phantom made with the same arguments it
        is returned untouched.

    Raises:
        ValueError: an argument is out of range, or ``root`` exists and holds a phantom made with other
            arguments, an incomplete phantom, or anything that is not a phantom (nothing is ever deleted).
    """
    root = pathlib.Path(root)
    parameters = _check_parameters(n_subjects, n_slices, image_size, n_frames, seed)
    if _existing_phantom_matches(root, parameters):
        return root

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix="." + root.name + ".partial-", dir=root.parent))
    try:
        subjects_summary = []
        for index, rng in enumerate(subject_generators(seed, n_subjects)):
            subject = draw_subject(rng, n_slices, image_size, n_frames)
            name = "patient%03d" % (index + 1)
            _write_subject(staging / "training" / name, name, subject)
            subjects_summary.append({"name": name, "group": subject.group, "shape": list(subject.shape),
                                     "pixel_mm": round(subject.pixel_mm, 4), "slice_mm": round(subject.slice_mm, 4),
                                     "ed_frame": 1, "es_frame": subject.es_index + 1})
        manifest = {"generator": __package__, "format_version": PHANTOM_FORMAT_VERSION, "parameters": parameters,
                    "subjects": subjects_summary}
        # The manifest is written last: a directory with a manifest is a complete phantom.
        (staging / PHANTOM_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset should be readable like any other
        try:
            os.replace(staging, root)  # atomic; also replaces an empty directory left at root
        except OSError:
            # Another process may have finished the same phantom first; anything else is reported.
            if _existing_phantom_matches(root, parameters):
                return root
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


def _check_parameters(n_subjects, n_slices, image_size, n_frames, seed):
    """Validate the arguments and return them as the dict recorded in the manifest."""
    minimum = {"n_subjects": 1, "n_slices": 1, "image_size": 32, "n_frames": 2, "seed": 0}
    values = {"n_subjects": n_subjects, "n_slices": n_slices, "image_size": image_size, "n_frames": n_frames,
              "seed": seed}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum[name]:
            raise ValueError("generate_phantom_dataset: %s must be an integer >= %d, got %r"
                             % (name, minimum[name], value))
    return {name: int(value) for name, value in values.items()}


def _existing_phantom_matches(root, parameters):
    """True if ``root`` holds a complete phantom made with ``parameters``; False if ``root`` is absent or empty.

    Raises:
        ValueError: ``root`` holds something else (other parameters, an incomplete phantom, other files).
    """
    if not root.exists():
        return False
    if not root.is_dir():
        raise DatasetError("phantom root %s exists and is not a directory" % root)
    manifest_path = root / PHANTOM_MANIFEST
    if not manifest_path.is_file():
        if any(root.iterdir()):
            raise DatasetError("phantom root %s already holds files that are not a phantom (no %s); choose an "
                             "empty or new directory" % (root, PHANTOM_MANIFEST))
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        recorded = dict(manifest["parameters"])
        version = manifest["format_version"]
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError("phantom root %s has an unreadable %s (%s)" % (root, PHANTOM_MANIFEST, error)) from None
    if version != PHANTOM_FORMAT_VERSION:
        raise DatasetError("phantom root %s was made by phantom format version %r, this is version %d; delete it "
                         "or choose another root" % (root, version, PHANTOM_FORMAT_VERSION))
    differences = ["%s=%r (requested %r)" % (name, recorded.get(name), value)
                   for name, value in parameters.items() if recorded.get(name) != value]
    if differences:
        raise DatasetError("phantom root %s holds a phantom made with different parameters: %s; delete it or "
                         "choose another root" % (root, ", ".join(differences)))
    for entry in manifest.get("subjects", []):
        folder = root / "training" / entry["name"]
        expected = [folder / "Info.cfg", folder / ("%s_4d.nii.gz" % entry["name"])]
        for frame in (entry["ed_frame"], entry["es_frame"]):
            expected += [folder / ("%s_frame%02d.nii.gz" % (entry["name"], frame)),
                         folder / ("%s_frame%02d_gt.nii.gz" % (entry["name"], frame))]
        missing = [str(path) for path in expected if not path.is_file()]
        if missing:
            raise DatasetError("phantom root %s is incomplete (missing %s); delete it and generate again"
                             % (root, ", ".join(missing)))
    if len(manifest.get("subjects", [])) != parameters["n_subjects"]:
        raise DatasetError("phantom root %s lists %d subjects in %s, expected %d; delete it and generate again"
                         % (root, len(manifest.get("subjects", [])), PHANTOM_MANIFEST, parameters["n_subjects"]))
    return True


def _write_subject(folder, name, subject):
    """Render all frames of one subject and write its ACDC folder."""
    folder.mkdir(parents=True)
    frames, labels = render_cycle(subject)
    affine = np.diag([subject.pixel_mm, subject.pixel_mm, subject.slice_mm, 1.0])
    for t, label in labels.items():
        _save(frames[..., t], affine, folder / ("%s_frame%02d.nii.gz" % (name, t + 1)))
        _save(label, affine, folder / ("%s_frame%02d_gt.nii.gz" % (name, t + 1)))
    _save(frames, affine, folder / ("%s_4d.nii.gz" % name), frame_ms=subject.frame_ms)
    (folder / "Info.cfg").write_text(
        "ED: 1\nES: %d\nGroup: %s\nHeight: %.1f\nNbFrame: %d\nWeight: %.1f\n"
        % (subject.es_index + 1, subject.group, subject.height_cm, subject.n_frames, subject.weight_kg))


def _save(array, affine, path, frame_ms=None):
    """Write ``array`` as NIfTI-1 with its own dtype (no scaling), zooms from ``affine`` (+ frame time in ms)."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    if frame_ms is not None:
        image.header.set_zooms(tuple(np.diag(affine)[:3]) + (frame_ms,))
    image.header.set_xyzt_units("mm", "msec")
    nib.save(image, str(path))
