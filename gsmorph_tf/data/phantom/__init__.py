"""Synthetic short-axis cardiac cine-MRI (bSSFP-like), written to disk in the ACDC layout.

Neither ACDC nor M&Ms can be downloaded here, so the project's embedded default dataset is this seeded
phantom; the ACDC loader reads it unchanged. It is meant to be as hard to register as real ES->ED pairs:
the base descends 8-15 mm towards the apex in systole (a slice shows other anatomy at ES than at ED),
slices are 8-10 mm slabs with partial volume at the base and apex, papillary muscles and trabeculae stand
in the ED blood pool and merge with the wall at ES, the blood signal changes between frames (flow), and
contrast, bias field and intensity drift vary between subjects and frames.

- :mod:`~gsmorph_tf.data.phantom.anatomy`: a subject's anatomy, motion and appearance, drawn from a seed;
- :mod:`~gsmorph_tf.data.phantom.render`: frames and label maps at any point of the cycle;
- :mod:`~gsmorph_tf.data.phantom.storage`: the ACDC files, the manifest, atomic writing, the cache check.
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
