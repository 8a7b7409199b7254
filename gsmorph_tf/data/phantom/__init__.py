"""Synthetic short-axis cardiac cine-MRI (bSSFP-like) written to disk in the ACDC layout.

Neither ACDC nor M&Ms can be downloaded here, so the project's embedded default dataset is this seeded phantom.
It is written exactly like ACDC's ``training`` folder, so the ACDC loader reads it unchanged::

    <root>/phantom.json                                        generation parameters (see below)
    <root>/training/patientNNN/Info.cfg                        ED, ES (1-based frames), Group, Height, NbFrame, Weight
    <root>/training/patientNNN/patientNNN_4d.nii.gz            int16 [X, Y, Z, T], all frames
    <root>/training/patientNNN/patientNNN_frameXX.nii.gz       int16 [X, Y, Z], the ED and ES frames
    <root>/training/patientNNN/patientNNN_frameXX_gt.nii.gz    uint8 [X, Y, Z]: 0 background, 1 RV, 2 Myo, 3 LV

Modules: :mod:`.anatomy` (drawing a subject), :mod:`.render` (frames and labels), :mod:`.storage` (the
ACDC-layout files, the manifest, atomic generation); this package holds the ``phantom`` dataset entry.

Arrays are indexed ``[X, Y, Z(, T)]``: X and Y in-plane (square pixels), Z the short-axis slices from base
(z = 0) to apex. Header zooms are ``(pixel mm, pixel mm, slice mm[, frame ms])`` and the affine is
``diag(pixel, pixel, slice, 1)``. Intensities are int16, blood pool around 800-1000.

Anatomy is analytic: every structure is a signed-distance shape in millimetres, evaluated at the *material*
(end-diastolic) position of each pixel. A frame at contraction ``c`` (0 at ED, 1 at ES) maps each pixel back
to its ED position through three smooth, invertible maps -- a global heart motion (translation, base-to-apex
twist, elliptical stretch) that fades out away from the heart, an incompressible radial LV contraction (the
cavity loses a fraction of its area, the myocardium keeps its area and so thickens), and an RV free-wall
contraction -- so image, labels and texture always move together and the surroundings move little.
"""
from gsmorph_tf.data.acdc import CardiacDataset, load_acdc
from gsmorph_tf.data.phantom.anatomy import GROUPS
from gsmorph_tf.data.phantom.storage import PHANTOM_FORMAT_VERSION, PHANTOM_MANIFEST, generate_phantom_dataset

__all__ = ["DATASET", "GROUPS", "PHANTOM_FORMAT_VERSION", "PHANTOM_MANIFEST", "PHANTOM_SEED", "PhantomDataset",
           "generate_phantom_dataset"]

#: The phantom of a run is always drawn with this seed, so the training seed changes the run, not the data.
PHANTOM_SEED = 0


class PhantomDataset(CardiacDataset):
    """The ``phantom`` entry of :data:`gsmorph_tf.registry.DATASETS`: generated into ``config.data_dir`` on
    first use (seed :data:`PHANTOM_SEED`, sizes from the ``phantom_*`` options), then read as ACDC."""

    def __init__(self):
        super().__init__(load_acdc)

    def load(self, config, generate=True):
        if generate:
            generate_phantom_dataset(config.data_dir, n_subjects=config.option("phantom_subjects"),
                                     n_slices=config.option("phantom_slices"),
                                     image_size=config.option("phantom_size"), seed=PHANTOM_SEED)
        return super().load(config)


DATASET = PhantomDataset()
