"""Folder mode: pairing NIfTI files of a moving and a fixed folder by name."""
import os

from gsmorph_tf.errors import DatasetError
from gsmorph_tf.register.files import NIFTI_SUFFIXES, nifti_stem


def find_pairs(moving_dir, fixed_dir, moving_labels_dir=None):
    """Match NIfTI files of ``moving_dir`` and ``fixed_dir`` (and ``moving_labels_dir``) by file name.

    Returns:
        Sorted list of ``(moving_path, fixed_path, labels_path or None)``.

    Raises:
        DatasetError: naming the folder, if it is missing or has no NIfTI file, a file has no partner of
            the same name in another folder, or two names share a stem (``a.nii`` and ``a.nii.gz``).
    """
    folders = {"moving": moving_dir, "fixed": fixed_dir}
    if moving_labels_dir is not None:
        folders["labels"] = moving_labels_dir
    names = {}
    for role, folder in folders.items():
        if not os.path.isdir(folder):
            raise DatasetError("%s: %s folder not found" % (folder, role))
        names[role] = sorted(name for name in os.listdir(folder) if name.endswith(NIFTI_SUFFIXES))
    if not names["moving"]:
        raise DatasetError("%s: no .nii or .nii.gz file in the moving folder" % moving_dir)
    for role, folder in folders.items():
        unmatched = sorted(set(names["moving"]) ^ set(names[role]))
        if unmatched:
            raise DatasetError("%s and %s: files without a partner of the same name: %s"
                               % (moving_dir, folder, ", ".join(unmatched)))
    stems = [nifti_stem(name) for name in names["moving"]]
    clashes = sorted({stem for stem in stems if stems.count(stem) > 1})
    if clashes:
        raise DatasetError("%s: several files for %s; expected one NIfTI file per name"
                           % (moving_dir, ", ".join(clashes)))
    return [(os.path.join(moving_dir, name), os.path.join(fixed_dir, name),
             os.path.join(moving_labels_dir, name) if moving_labels_dir is not None else None)
            for name in names["moving"]]
