"""Reading NIfTI volumes with nibabel, turning every kind of bad file into one clear error.

Dataset loaders run before training starts; a file that is missing, truncated or full of NaN must stop the
run there with a message that names the file, not hours later inside ``fit``.
"""
import gzip
import pathlib
import zlib

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from gsmorph_tf.errors import DatasetError  # noqa: F401  (re-exported: loaders raise it from here)


# What nibabel and the gzip stream can raise on a damaged file: a header nibabel cannot parse
# (ImageFileError, HeaderDataError), a truncated gzip stream (EOFError), corrupt compressed data
# (zlib.error, gzip.BadGzipFile), a short uncompressed file (OSError, ValueError from the reshape).
_READ_ERRORS = (ImageFileError, HeaderDataError, EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError)


def load_nifti(path, expected_ndim=None):
    """Read one NIfTI file.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        expected_ndim: number of array dimensions the caller needs (3 for one frame of a short-axis
            stack); ``None`` accepts any.

    Returns:
        ``(array, zooms, affine)``: the voxel array in nibabel's order (``[X, Y, Z(, T)]``), float32 when the
        file stores (or scales to) floating point and the stored integer type otherwise (label maps);
        the voxel size in mm for each array axis, from the header; the 4x4 voxel-to-world affine.

    Raises:
        DatasetError: naming ``path``, if it is missing, unreadable or corrupt, has another number of
            dimensions than ``expected_ndim``, or holds NaN or infinite voxels.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: NIfTI file not found")
    try:
        image = nib.load(str(path))
        # The header loads lazily; the voxel data (where truncation shows) is only read here.
        array = np.asanyarray(image.dataobj)
        zooms = tuple(float(z) for z in image.header.get_zooms()[:array.ndim])
        affine = np.asarray(image.affine, dtype=np.float64)
    except _READ_ERRORS as error:
        raise DatasetError(f"{path}: cannot read as NIfTI ({type(error).__name__}: {error}); "
                           "expected a readable .nii/.nii.gz file (is it truncated or corrupt?)") from error
    if expected_ndim is not None and array.ndim != expected_ndim:
        raise DatasetError(f"{path}: expected a {expected_ndim}-D volume, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
        if not np.all(np.isfinite(array)):
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise DatasetError(f"{path}: {bad} voxel(s) are NaN or infinite; expected finite values")
    return array, zooms, affine


def read_nifti_header(path):
    """Shape and voxel size of one NIfTI file from its header alone (no voxel is read: fast on .nii.gz).

    Args:
        path: ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``(shape, zooms)``: the array shape in nibabel's order (``[X, Y, Z(, T)]``) and the voxel size in mm
        for each array axis.

    Raises:
        DatasetError: naming ``path``, if it is missing or its header cannot be read. A file whose voxel data
            is truncated passes here; :func:`load_nifti` finds it when the volume is read.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: NIfTI file not found")
    try:
        image = nib.load(str(path))
        shape = tuple(int(s) for s in image.shape)
        zooms = tuple(float(z) for z in image.header.get_zooms()[:len(shape)])
    except _READ_ERRORS as error:
        raise DatasetError(f"{path}: cannot read the NIfTI header ({type(error).__name__}: {error}); "
                           "expected a readable .nii/.nii.gz file") from error
    return shape, zooms
