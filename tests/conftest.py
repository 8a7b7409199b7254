"""Shared test helpers and settings. Test modules import the helpers with ``from conftest import ...``
(pytest puts this folder on ``sys.path``).

The tests mirror the package: one folder per stage (``core/``, ``data/``, ``models/``, ``train/``, ``evaluate/``,
``serve/``, ``register/``, ``studies/``) and ``ulae/`` for ulae_tf; the tests of the framework's top-level modules
and of the entry points are here. The folders have no ``__init__.py`` (pytest imports each test module by its
basename, with its folder on ``sys.path``), so a test module's basename must be unique across folders. ``data/``
also holds the recorded reference numbers (:data:`FIXTURES`).

Every test works on small images (32x32 slices, 16^3-32^3 volumes) and a few steps, so the whole suite
stays within minutes on 2 CPU cores.
"""
import json
import os
import re

import nibabel as nib
import numpy as np
import pytest

from gsmorph_tf.errors import DatasetError

# gsmorph_tf and TensorFlow are imported inside the helpers that need them: collecting a NumPy-only test
# module must not load TensorFlow.

#: The repository root (the entry points, ``flags/``, ``benchmarks/``), whichever folder of ``tests/`` a module is in.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The recorded reference numbers the tests compare with (``tests/data/*.npz``, ``*.json``).
FIXTURES = os.path.join(ROOT, "tests", "data")

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
    from gsmorph_tf.config import TrainConfig
    from gsmorph_tf.train import training

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


@pytest.fixture(scope="session")
def phantom_run(tmp_path_factory):
    """``(tmp, config, outcome)``: a GSMorph run of one epoch on the tiny :data:`PHANTOM` (32x32 crops, batch 4)
    by ``train_and_evaluate``, evaluated and exported (``outcome["export_dir"]``), shared by the modules that
    evaluate, export or refine a finished run. Tests write only into new folders of it."""
    from gsmorph_tf.config import TrainConfig
    from gsmorph_tf.train.training import train_and_evaluate

    tmp = tmp_path_factory.mktemp("phantom_run")
    config = TrainConfig(dataset="phantom", data_dir=str(tmp / "phantom"), output_dir=str(tmp / "run"),
                         dataset_options=PHANTOM, crop_size=32, batch_size=4, epochs=1)
    return tmp, config, train_and_evaluate(config, verbose=0, log=lambda *a: None)


def exported(tmp_path_factory, inshape, bias):
    """A GSMorph network with a non-trivial flow head, exported (a version folder): kernel ~ N(0, 0.05) so the
    field varies, and a constant shift of ``bias`` voxels so nearest-neighbour label warping visibly moves
    boundaries. Untrained."""
    from gsmorph_tf.models.networks import build_gsmorph_unet
    from gsmorph_tf.serve.export import export_saved_model

    network = build_gsmorph_unet(inshape)
    head = network.get_layer("flow")
    head.kernel.assign(np.random.default_rng(0).normal(0, 0.05, head.kernel.shape).astype(np.float32))
    head.bias.assign(np.asarray(bias, np.float32))
    return export_saved_model(network, str(tmp_path_factory.mktemp("models") / "gsmorph"))


@pytest.fixture(scope="session")
def exported_3d(tmp_path_factory):
    """The version folder of a 16^3 3D :func:`exported` model (bias 0.6, -0.7, 0.5 voxels), exported once for
    every module that registers volumes. Its provenance records no training (exported from memory)."""
    return exported(tmp_path_factory, (16, 16, 16), (0.6, -0.7, 0.5))


@pytest.fixture(scope="session")
def model_3d(exported_3d):
    """:func:`exported_3d` as a ``RegistrationModel``, shared by the registration tests."""
    from gsmorph_tf.register import RegistrationModel

    return RegistrationModel(exported_3d)


@pytest.fixture(scope="session")
def model_2d(tmp_path_factory):
    """A 32x32 :func:`exported` 2D model (flow bias 0.6, -0.7 pixels) as a ``RegistrationModel``, shared by
    the registration and apply tests."""
    from gsmorph_tf.register import RegistrationModel

    return RegistrationModel(exported(tmp_path_factory, (32, 32), (0.6, -0.7)))


#: Shape and structures of the tiny Learn2Reg tasks the tests write.
L2R_SHAPE = (16, 16, 16)
L2R_LABELS = {1: "Left", 2: "Middle", 3: "Right"}
L2R_ZOOMS = (1.5, 1.25, 2.0)


def l2r_image(index, shape=L2R_SHAPE):
    """Image ``index`` of a tiny task: 1 everywhere but voxel 0, which is ``2 + index`` (its marker). Scaled
    by its maximum, voxel 1 reads ``1 / (2 + index)``: :func:`l2r_index` tells which image a volume was."""
    image = np.ones(shape, np.float32)
    image.flat[0] = 2.0 + index
    return image


def l2r_index(volume):
    """The index of a max-scaled :func:`l2r_image` volume (any leading axes; voxel 1 of the flattened volume)."""
    return int(round(1.0 / float(np.ravel(volume)[1]))) - 2


def l2r_labels(index, shape=L2R_SHAPE):
    """Labels of image ``index``: slabs Left / Middle / Right along the first axis, shifted by ``index % 3``."""
    labels = np.zeros(shape, np.uint8)
    cut = 4 + index % 3
    labels[1:cut], labels[cut:cut + 4], labels[cut + 4:cut + 8] = 1, 2, 3
    return labels


def write_learn2reg_task(root, n_images=6, val_pairs=((5, 4),), paired=None, test_pairs=None,
                         test_labels=True, name="TOY", shape=L2R_SHAPE):
    """Write a tiny task in the Learn2Reg layout and return its JSON dict (pairs are ``(moving, fixed)``).

    ``imagesTr/TOY_<iiii>_0000.nii.gz`` for ``n_images`` images with labels in ``labelsTr/``;
    ``registration_val`` from ``val_pairs`` (indices); ``training_paired_images`` from ``paired``;
    ``test_pairs`` (indices ``0..`` of test images) adds ``imagesTs/`` (``TOY_1<iii>_0000``), ``test`` entries
    (with labels in ``labelsTs/`` when ``test_labels``) and ``registration_test``.
    """
    root.mkdir(parents=True, exist_ok=True)

    def write(folder, stem, index, with_labels):
        (root / folder).mkdir(exist_ok=True)
        save_nifti(l2r_image(index, shape), root / folder / f"{stem}.nii.gz", zooms=L2R_ZOOMS)
        entry = {"image": f"./{folder}/{stem}.nii.gz"}
        if with_labels:
            label_folder = folder.replace("images", "labels")
            (root / label_folder).mkdir(exist_ok=True)
            save_nifti(l2r_labels(index, shape), root / label_folder / f"{stem}.nii.gz", zooms=L2R_ZOOMS)
            entry["label"] = f"./{label_folder}/{stem}.nii.gz"
        return entry

    training = [write("imagesTr", f"{name}_{i:04d}_0000", i, True) for i in range(n_images)]

    def as_pairs(pairs, entries):
        return [{"fixed": entries[f]["image"], "moving": entries[m]["image"]} for m, f in pairs]

    data = {"name": name, "tensorImageShape": {"0": list(shape)},
            "labels": {"0": {"0": "background", **{str(k): v for k, v in L2R_LABELS.items()}}},
            "training": training, "registration_val": as_pairs(val_pairs, training)}
    if paired is not None:
        data["training_paired_images"] = as_pairs(paired, training)
    if test_pairs is not None:
        count = max(max(pair) for pair in test_pairs) + 1
        data["test"] = [write("imagesTs", f"{name}_{1000 + i:04d}_0000", 100 + i, test_labels) for i in range(count)]
        data["registration_test"] = as_pairs(test_pairs, data["test"])
    write_dataset_json(root, data, name)
    return data


@pytest.fixture
def task_dir(tmp_path):
    """A toy Learn2Reg task of 8 unpaired 3D images, validation pair (7, 6), in ``<tmp_path>/TOY``."""
    root = tmp_path / "TOY"
    write_learn2reg_task(root, n_images=8, val_pairs=((7, 6),))
    return root


def write_dataset_json(root, data, name="TOY"):
    """(Re)write ``<root>/<name>_dataset.json``."""
    (root / f"{name}_dataset.json").write_text(json.dumps(data, indent=2), encoding="utf-8")
