"""The model's window in a volume: where it takes its voxels from and where results are pasted back.

NumPy only. The window is training's crop (:func:`gsmorph_tf.data.preprocessing.crop_or_pad`) applied to an
array of voxel indices, so cropping and pasting back use exactly training's crop and its rounding.
"""
import numpy as np

from gsmorph_tf.data.preprocessing import crop_or_pad


def crop_indices(shape, center, size):
    """Where the model's window takes its voxels from: flat indices into an ``[X, Y, Z]`` volume.

    The window is :func:`~gsmorph_tf.data.preprocessing.crop_or_pad`'s, applied to an array of voxel indices, so
    cropping and pasting back use exactly training's crop (and its rounding).

    Args:
        shape: ``(X, Y, Z)`` volume shape.
        center: ``(x, y)`` for a 2D model (in-plane, every slice) or ``(x, y, z)`` for a 3D one, in voxels.
        size: the model's input shape, ``(H, W)`` or ``(H, W, D)``.

    Returns:
        int64 ``[Z, H, W]`` (2D: slices first, as the model's batch) or ``[H, W, D]`` (3D); -1 marks
        padding outside the volume.
    """
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    window = crop_or_pad(np.transpose(index, (2, 0, 1)), center[:2], size[:2], fill=-1)  # [Z, H, W]
    if len(size) == 2:
        return window
    # Cut along Z with the same function: put Z in-plane next to W, whose second cut (size W around
    # W // 2) keeps it as it is.
    return crop_or_pad(np.transpose(window, (1, 2, 0)), (size[1] // 2, center[2]), size[1:], fill=-1)


def take(volume, index, fill=0):
    """``volume``'s voxels at ``index`` (from :func:`crop_indices`), ``fill`` where index is -1."""
    return np.where(index >= 0, volume.reshape(-1)[np.maximum(index, 0)], fill).astype(volume.dtype)


def paste(volume, index, values):
    """Copy of ``volume`` with ``values`` (shaped like ``index``) written back where index is not -1."""
    out = np.array(volume, copy=True, order="C")  # nibabel arrays are Fortran-ordered: C makes reshape a view
    inside = index >= 0
    out.reshape(-1)[index[inside]] = values[inside]
    return out

