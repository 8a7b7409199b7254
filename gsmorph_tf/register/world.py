"""Images in world space: grids (array shape + NIfTI affine), a moving image resampled into the fixed image's
space, and the displacement field as ITK, ANTs and 3D Slicer read it.

Conventions. A NIfTI affine maps voxel indices ``(i, j, k)`` to world coordinates in mm, RAS+ (x grows to the
subject's Right, y to Anterior, z to Superior). ITK (SimpleITK, ANTs, 3D Slicer) works in LPS+: the same
points with x and y negated. Our registration's field ``u`` is in voxels along the fixed image's voxel axes,
``moved(x) = moving(x + u(x))`` (:mod:`gsmorph_tf.register`); ITK's displacement field is the same map as
physical vectors: at the fixed point ``p = A x`` (A the fixed affine), ``T(p) = p + d(p)`` is the moving
point, ``d = diag(-1, -1, 1) @ A[:3, :3] @ u`` in mm (LPS), stored on the fixed image's grid. A moving image
on another grid is resampled into the fixed space by physical position, so the ITK field also applies to the
original moving file.

NumPy and nibabel; SimpleITK (the ``baselines`` extra) only for the transform file
(:func:`displacement_field_transform`, :func:`save_transform`).
"""
import dataclasses

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to

from gsmorph_tf.extras import import_extra

#: RAS <-> LPS: x and y change sign (the map is its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclasses.dataclass(frozen=True, eq=False)
class Grid:
    """Where an image's voxels are: ``shape`` ``(X, Y, Z)`` and the 4x4 voxel-to-world (RAS, mm) ``affine``."""
    shape: tuple
    affine: np.ndarray

    @property
    def zooms(self):
        """Voxel size in mm along each array axis (the affine's column lengths)."""
        return tuple(float(z) for z in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def orientation(self):
        """Axis codes such as ``RAS`` or ``LPS`` (:func:`nibabel.aff2axcodes`): where each array axis points."""
        return "".join(nib.aff2axcodes(self.affine))

    def bounds(self):
        """World bounding box ``(low [3], high [3])`` in mm of the voxels' extent (centres +- half a voxel)."""
        corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in self.shape[:3]], indexing="ij")).reshape(3, -1)
        world = self.affine[:3, :3] @ corners + self.affine[:3, 3:]
        return world.min(axis=1), world.max(axis=1)

    def overlaps(self, other):
        """Whether the world bounding boxes of the two grids share a volume."""
        low, high = self.bounds()
        other_low, other_high = other.bounds()
        return bool(np.all(np.maximum(low, other_low) < np.minimum(high, other_high)))

    def same_as(self, other, atol=1e-3):
        """Same shape and affine (within ``atol`` mm): voxel i of one is voxel i of the other."""
        return tuple(self.shape) == tuple(other.shape) and np.allclose(self.affine, other.affine, atol=atol)

    def describe(self, box=False):
        """``20x18x17 voxels of 1.2x0.9x3 mm, RAS`` (``box``: and the world bounding box in mm)."""
        text = "%s voxels of %s mm, %s" % ("x".join(map(str, self.shape)),
                                          "x".join("%.4g" % z for z in self.zooms), self.orientation)
        if box:
            low, high = self.bounds()
            text += ", world box [%s] to [%s] mm" % (", ".join("%.1f" % v for v in low),
                                                     ", ".join("%.1f" % v for v in high))
        return text


def resample_to(array, source, target, order, cval=0.0):
    """``array`` (on grid ``source``) resampled at the voxel centres of grid ``target``, by their affines
    (:func:`nibabel.processing.resample_from_to`).

    As ITK does, a point inside ``source``'s voxels (within half a voxel of its outermost centres) takes the
    nearest edge values for the missing neighbours; a point outside them gets ``cval``. (scipy's ``constant``
    mode would give ``cval`` from the outermost centres on, so a grid sharing ``source``'s edge would lose its
    border to rounding.)

    Args:
        array: ``source.shape`` array.
        source, target: :class:`Grid`.
        order: 1 linear (images), 0 nearest neighbour (label maps: only input values occur).
        cval: value where ``target`` lies outside ``source``.

    Returns:
        ``target.shape`` array of ``array``'s dtype.
    """
    image = nib.Nifti1Image(np.asarray(array), source.affine)
    resampled = np.asarray(resample_from_to(image, (tuple(target.shape), target.affine), order=order,
                                            mode="nearest").dataobj)
    to_source = np.linalg.solve(source.affine, target.affine)  # target voxel -> source voxel
    points = np.tensordot(to_source[:3, :3], np.indices(target.shape, dtype=np.float64), axes=1)
    points += to_source[:3, 3].reshape(3, 1, 1, 1)
    inside = np.all((points >= -0.5) & (points <= np.reshape(source.shape, (3, 1, 1, 1)) - 0.5), axis=0)
    return np.where(inside, resampled, np.asarray(cval, resampled.dtype))


def itk_displacement(flow_voxels, affine):
    """ITK's displacement vectors for our field: ``[X, Y, Z, 3]`` float32 in mm, LPS, fixed -> moving.

    Args:
        flow_voxels: ``[X, Y, Z, 3]`` displacement in voxels along the fixed image's voxel axes i, j, k.
        affine: the fixed image's 4x4 voxel-to-world (RAS) affine.
    """
    matrix = RAS_TO_LPS @ np.asarray(affine, np.float64)[:3, :3]
    return (np.asarray(flow_voxels, np.float64) @ matrix.T).astype(np.float32)


def itk_field_nifti(flow_voxels, affine, header=None):
    """Our field as a NIfTI displacement field for ANTs, ITK and 3D Slicer: ``[X, Y, Z, 1, 3]`` float32 vectors
    (:func:`itk_displacement`), intent VECTOR (1007), on the fixed grid (``affine``; ``header``: the fixed
    image's, copied)."""
    field = itk_displacement(flow_voxels, affine)[:, :, :, None, :]
    image = nib.Nifti1Image(field, affine, header=None if header is None else header.copy())
    image.set_data_dtype(np.float32)
    image.header.set_intent("vector")
    return image


def itk_geometry(affine):
    """ITK's ``(origin, spacing, direction)`` (LPS; direction row-major, 9 values) of a NIfTI affine's grid."""
    affine = np.asarray(affine, np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    direction = RAS_TO_LPS @ affine[:3, :3] / spacing
    return tuple(RAS_TO_LPS @ affine[:3, 3]), tuple(spacing), tuple(direction.ravel())


def import_simpleitk():
    """SimpleITK, or :class:`~gsmorph_tf.extras.MissingExtraError` naming the ``baselines`` extra."""
    return import_extra("SimpleITK", "baselines", "SimpleITK", "writing an ITK transform file (--itk_transform)")


def displacement_field_transform(flow_voxels, affine):
    """Our field as a SimpleITK ``DisplacementFieldTransform`` (float64 vectors of :func:`itk_displacement`
    on the fixed grid). Needs SimpleITK (the ``baselines`` extra)."""
    sitk = import_simpleitk()
    # GetImageFromArray reads the array axes in reverse (z, y, x); a vector image keeps the last axis as pixels.
    field = sitk.GetImageFromArray(np.transpose(itk_displacement(flow_voxels, affine), (2, 1, 0, 3))
                                   .astype(np.float64), isVector=True)
    origin, spacing, direction = itk_geometry(affine)
    field.SetOrigin(origin)
    field.SetSpacing(spacing)
    field.SetDirection(direction)
    return sitk.DisplacementFieldTransform(field)



def save_transform(transform, path):
    """``sitk.WriteTransform``: the format follows ``path``'s extension (``.h5``: HDF5)."""
    import_simpleitk().WriteTransform(transform, path)
