"""Shared test helpers and settings. Test modules import the helpers with ``from conftest import ...``
(pytest puts this folder on ``sys.path``).

Every test works on small images (32x32 slices, 16^3-32^3 volumes) and a few steps, so the whole suite
stays within minutes on 2 CPU cores.
"""
import re

import nibabel as nib
import numpy as np
import pytest

from gsmorph_tf.errors import DatasetError

# gsmorph_tf and TensorFlow are imported inside the helpers that need them: collecting a NumPy-only test
# module must not load TensorFlow.

#: A tiny phantom (``dataset_options`` of a ``TrainConfig(dataset="phantom")``): 4 subjects (split 2/1/1)
#: of 2 slices at 48 px, cropped to 32x32 by the tests.
PHANTOM = {"phantom_subjects": 4, "phantom_slices": 2, "phantom_size": 48}

#: Voxel size (mm) of the NIfTI files the dataset tests write: ACDC-like in-plane pixels, 8 mm slices.
ZOOMS = (1.5, 1.25, 8.0)


def save_nifti(array, path, zooms=ZOOMS):
    """Write ``array`` as NIfTI with a diagonal affine of ``zooms`` (mm per axis; extra axes get 1)."""
    diagonal = list(zooms[:3]) + [1.0] * (4 - len(zooms[:3]))
    nib.save(nib.Nifti1Image(array, np.diag(diagonal)), str(path))


def raises_naming(path, match=None, error=DatasetError):
    """``pytest.raises`` for an ``error`` whose message names ``path`` (and then matches ``match``)."""
    pattern = re.escape(str(path)) + (".*" + match if match else "")
    return pytest.raises(error, match=pattern)


def tiny_subject(rng, name):
    """A 4-slice 32x32 subject of random images, the fixed image a shifted copy; empty label maps."""
    from gsmorph_tf.data.subjects import SubjectPairs

    images = rng.random((4, 32, 32)).astype(np.float32)
    labels = np.zeros((4, 32, 32), np.int32)
    return SubjectPairs(subject=name, moving=images, fixed=np.roll(images, 2, axis=1), moving_labels=labels,
                        fixed_labels=labels, spacing_mm=(8.0, 1.5, 1.5), label_values={"RV": 1, "Myo": 2, "LV": 3})


def train_one_epoch(run_dir, **settings):
    """One epoch of real training (BackupAndRestore writes the checkpoints). Returns the network and its
    weights ``{name: value}`` before training."""
    from gsmorph_tf import training
    from gsmorph_tf.config import TrainConfig

    config = TrainConfig(dataset="phantom", data_dir=str(run_dir / "unused"), output_dir=str(run_dir),
                         crop_size=32, batch_size=4, epochs=1, **settings)
    config.save(str(run_dir / "config.json"))
    network = training.build_network(config, (32, 32))
    model = training.build_model(config, network)
    initial = {w.name: w.numpy().copy() for w in network.weights}
    splits = {"train": [tiny_subject(np.random.default_rng(3), "s1")], "val": []}
    training.fit(model, splits, config, str(run_dir), verbose=0)
    return network, initial


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A GSMorph run after one epoch, with the weights before and after it."""
    run_dir = tmp_path_factory.mktemp("run")
    network, initial = train_one_epoch(run_dir)
    return run_dir, initial, {w.name: w.numpy() for w in network.weights}
