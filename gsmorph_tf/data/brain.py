"""A 3D brain registration task with a known answer, built from the MNI152 template that nilearn ships.

ULAE-net is a 3D brain method for large deformations, but no brain MRI data set can be downloaded here.
nilearn carries the skull-stripped MNI152 (ICBM 2009a, 1 mm) T1 template and its grey- and white-matter
probability maps inside its wheel, so this module builds registration pairs from them with no download.
The ``brain`` dataset entry (:class:`BrainDataset`) writes subjects in the Learn2Reg layout
(:func:`write_brain_learn2reg`) and trains on them through the ``learn2reg`` code; :func:`make_brain_pairs`
(pairs in memory with their known field) remains for scoring against a true field.

Ground truth without inverting a field. For pair ``i`` two smooth random fields are drawn: a *subject*
field ``w`` and a *registration* field ``u`` (voxels, channel k along array axis k, voxelmorph's 'ij'
convention ``moved(x) = moving(x + u(x))``). With the template ``T``::

    moving(x) = T(x + w(x))                           a subject-like anatomy
    fixed(x)  = moving(x + u(x)) = T(x + u(x) + w(x + u(x)))

``fixed`` is computed by warping ``T`` once with ``compose_flows([w, u])`` (no double interpolation), so
the true moving -> fixed displacement is exactly ``u``: warping ``moving`` by ``u`` gives ``fixed``.
Label maps are warped the same way (see :func:`warp_template`). Each image then gets its own mild smooth
multiplicative bias field and Rician noise, so the task is not an exact inverse problem.

:func:`write_brain_learn2reg` writes subjects instead of pairs (the template, each deformed by its own known
smooth field) in the Learn2Reg layout, so one code path (:mod:`gsmorph_tf.data.learn2reg`) reads them and
real data.

Array axes are the template's own ``[X, Y, Z]`` (left->right, posterior->anterior, inferior->superior), used
as ``[D, H, W]``; voxels are isotropic after resampling.
"""
import functools
import json
import os
import pathlib
import shutil

import nibabel as nib
import numpy as np
from scipy import ndimage

from gsmorph_tf import compat  # noqa: F401  (legacy Keras must be selected before TensorFlow loads)
from gsmorph_tf.core.flows import compose_flows
from gsmorph_tf.data import learn2reg, streaming
from gsmorph_tf.data.subjects import SubjectPairs, split_subjects
from gsmorph_tf.errors import DatasetError
from gsmorph_tf.extras import import_extra
from gsmorph_tf.plugins import DatasetPlugin

import tensorflow as tf
import voxelmorph as vxm

#: Integer of each structure in the label maps (0 = background, outside the brain mask).
BRAIN_LABELS = {"CSF": 1, "GM": 2, "WM": 3}

# nilearn's own brain-mask threshold on the [0, 1] template (load_mni152_brain_mask's default).
_MASK_THRESHOLD = 0.2
# Fraction of each axis the brain's bounding box may fill after resampling; the rest is background margin
# so that deformed anatomy does not leave the volume.
_BRAIN_FILL = 0.9
# Correlation length (Gaussian sigma) of the random fields, as a fraction of the largest volume axis: 12
# voxels (about 2.6 cm) at the default 80 x 96 x 80 grid, so the fields bend whole lobes, not single gyri.
# With the default 8-voxel largest displacement the fields have no folds (measured: NJD 0 %).
_FIELD_SMOOTHNESS = 1.0 / 8.0
# Bias field: multiplicative exp(b), |b| <= 0.1 (about +-10 %), smoother than the deformations.
_BIAS_AMPLITUDE = 0.1
_BIAS_SMOOTHNESS = 1.0 / 4.0
# Standard deviation of each of the two Gaussian channels of the Rician noise, in [0, 1] intensity units.
_NOISE_SIGMA = 0.02


def _import_nilearn_datasets():
    return import_extra("nilearn.datasets", "brain", "nilearn", "the brain task (MNI152 template)")


@functools.lru_cache(maxsize=1)
def _template_1mm():
    """The shipped 1 mm MNI152 T1 (scaled to [0, 1]) and its GM and WM probabilities, ``[X, Y, Z]`` float32.

    Read once per process (about 1.5 s, mostly gunzip); the arrays are read-only so the cache stays valid.
    """
    datasets = _import_nilearn_datasets()
    arrays = tuple(np.asarray(image.get_fdata(dtype=np.float32)) for image in (
        datasets.load_mni152_template(resolution=1), datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1)))
    for array in arrays:
        array.flags.writeable = False
    return arrays


def load_mni152(shape=(80, 96, 80)):
    """The MNI152 T1 template with CSF/GM/WM labels, resampled to ``shape`` with isotropic voxels.

    The brain's bounding box (template > 0.2, nilearn's brain-mask threshold) is cut out of the 1 mm
    template and zoomed by one factor for all axes so that it fills at most 90 % of each axis of ``shape``
    (linear interpolation after a Gaussian anti-aliasing blur of sigma ``(1 / factor - 1) / 2`` mm, as
    scikit-image's ``rescale`` does); it is then centred in ``shape`` and padded with background.
    The T1 and the GM/WM probabilities are resampled alike; the mask and labels are decided on the
    resampled maps (a partial-volume decision, steadier than nearest-neighbour sampling of 1 mm labels at
    coarse grids): inside the mask, each voxel takes the largest of ``csf = 1 - gm - wm`` (clipped at 0),
    ``gm`` and ``wm``. nilearn ships no CSF map, so "CSF" is the brain mask minus GM and WM: ventricles,
    sulci and the mask's partial-volume rim.

    Args:
        shape: ``(D, H, W)`` output grid in voxels, along the template's X, Y, Z axes.

    Returns:
        ``(t1, labels, mask, spacing_mm)``: ``t1`` ``[D, H, W]`` float32 in [0, 1] (0 outside the brain);
        ``labels`` ``[D, H, W]`` int32 with :data:`BRAIN_LABELS` (0 = background); ``mask`` ``[D, H, W]``
        bool, equal to ``labels > 0``; ``spacing_mm`` the ``(d, h, w)`` voxel size in mm (all equal).

    Raises:
        gsmorph_tf.extras.MissingExtraError: nilearn is not installed (an ImportError naming the ``brain``
            extra's install command).
        ValueError: ``shape`` is not three positive sizes.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (D, H, W), got {shape}")
    t1, gm, wm = _template_1mm()
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(t1 > _MASK_THRESHOLD))
    box_size = np.array([b.stop - b.start for b in box])
    factor = float(np.min(_BRAIN_FILL * np.array(shape) / box_size))

    def resample(volume):
        blurred = ndimage.gaussian_filter(volume[box], sigma=max(0.0, (1.0 / factor - 1.0) / 2.0))
        zoomed = ndimage.zoom(blurred, factor, order=1, grid_mode=True, mode="grid-constant")
        out = np.zeros(shape, np.float32)
        offset = [(s - z) // 2 for s, z in zip(shape, zoomed.shape)]
        out[tuple(slice(o, o + z) for o, z in zip(offset, zoomed.shape))] = zoomed
        return out

    t1, gm, wm = (resample(volume) for volume in (t1, gm, wm))
    t1 = np.clip(t1 / t1.max(), 0.0, 1.0)
    mask = t1 > _MASK_THRESHOLD
    csf = np.clip(1.0 - gm - wm, 0.0, None)
    labels = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.int32)
    labels[~mask] = 0
    t1[~mask] = 0.0  # the blur spreads a faint halo outside the brain; background is 0 as in the template
    spacing = 1.0 / factor
    return t1.astype(np.float32), labels, mask, (spacing, spacing, spacing)


def _smooth_noise(shape, channels, smoothness, rng):
    """``[*shape, channels]`` white Gaussian noise blurred by a Gaussian of sigma ``smoothness`` voxels.

    The noise lives on a lattice of spacing ``smoothness / 2`` voxels that reaches ``3 * smoothness`` beyond
    the volume (so the field has no edge effects); the blur is a sum of Gaussians centred on the lattice
    points, evaluated at the voxel centres axis by axis (separable, so cheap for large ``smoothness``).
    """
    step = smoothness / 2.0
    kernels = []
    for size in shape:
        centres = np.arange(-3.0 * smoothness, size - 1 + 3.0 * smoothness + step, step)
        distance = (np.arange(size)[:, None] - centres[None, :]) / smoothness
        kernels.append(np.exp(-0.5 * distance ** 2).astype(np.float32))
    field = rng.standard_normal((*(k.shape[1] for k in kernels), channels), dtype=np.float32)
    for axis, kernel in enumerate(kernels):
        field = np.moveaxis(np.tensordot(kernel, field, axes=([1], [axis])), 0, axis)
    return field


def random_smooth_field(shape, max_displacement, smoothness, rng):
    """A random smooth displacement field with a set largest displacement.

    White Gaussian noise (one channel per axis) blurred by a Gaussian of sigma ``smoothness`` voxels, then
    scaled so that the largest displacement vector has length ``max_displacement``.

    Args:
        shape: ``(D, H, W)`` grid in voxels (any number of axes).
        max_displacement: ``max_x |u(x)|`` (Euclidean length of the vector) in voxels.
        smoothness: correlation length, the Gaussian's sigma in voxels (larger = smoother).
        rng: ``numpy.random.Generator``; the field is a function of its state.

    Returns:
        ``[*shape, len(shape)]`` float32 displacement in voxels, channel k along array axis k.
    """
    field = _smooth_noise(tuple(shape), len(shape), smoothness, rng)
    return (field * (max_displacement / np.linalg.norm(field, axis=-1).max())).astype(np.float32)


def _warp(volume, flow):
    """``volume(x + flow(x))`` with linear interpolation (voxelmorph; border values outside the grid).

    Args:
        volume: ``[*vol, C]`` array; flow: ``[*vol, ndim]`` displacement in voxels (array or tensor).

    Returns:
        ``[*vol, C]`` float32 array.
    """
    volume = tf.convert_to_tensor(volume, tf.float32)
    return vxm.utils.transform(volume, flow, interp_method="linear", indexing="ij").numpy()


def warp_template(template, labels, subject_flow, registration_flow):
    """One noise-free moving/fixed pair whose true moving -> fixed displacement is ``registration_flow``.

    ``moving = T(x + w(x))`` and ``fixed = T(x + u(x) + w(x + u(x)))``, the latter in one warp by
    ``compose_flows([w, u])``, both with linear interpolation. Label maps are warped alike by linear
    interpolation of their one-hot channels, then argmax: this places label boundaries to a fraction of a
    voxel, where nearest-neighbour sampling can move them by half a voxel (at the default grid it raises
    the GM and WM Dice of a perfect registration from about 90 % to 92 %).

    Args:
        template: ``[D, H, W]`` float32 image ``T``; labels: ``[D, H, W]`` int32 label map of ``T``.
        subject_flow: ``w``, ``[D, H, W, 3]`` voxels; registration_flow: ``u``, ``[D, H, W, 3]`` voxels.

    Returns:
        ``(moving, fixed, moving_labels, fixed_labels)``, each ``[D, H, W]`` (float32, float32, int32, int32).
    """
    subject_flow = tf.convert_to_tensor(subject_flow, tf.float32)
    composed = compose_flows([subject_flow[None], tf.convert_to_tensor(registration_flow[None], tf.float32)])[0]
    (moving, moving_labels), (fixed, fixed_labels) = (warp_image_and_labels(template, labels, flow)
                                                      for flow in (subject_flow, composed))
    return moving, fixed, moving_labels, fixed_labels


def warp_image_and_labels(image, labels, flow):
    """``image(x + flow(x))`` (linear) and its label map warped alike (linear interpolation of the one-hot
    channels, then argmax; see :func:`warp_template`).

    Args:
        image: ``[D, H, W]`` float32; labels: ``[D, H, W]`` int32; flow: ``[D, H, W, 3]`` voxels.

    Returns:
        ``(image, labels)`` warped, ``[D, H, W]`` float32 and int32.
    """
    # Image and one-hot labels as channels of one volume: one interpolation pass per warp.
    one_hot = labels[..., None] == np.arange(int(labels.max()) + 1)
    warped = _warp(np.concatenate([image[..., None], one_hot], axis=-1), flow)
    return warped[..., 0], np.argmax(warped[..., 1:], axis=-1).astype(np.int32)


def add_intensity_changes(image, rng):
    """Mild acquisition differences: a smooth bias field (about +-10 %) and Rician noise (sigma 0.02).

    Args:
        image: ``[D, H, W]`` float32 in [0, 1].
        rng: ``numpy.random.Generator``.

    Returns:
        ``[D, H, W]`` float32 clipped to [0, 1].
    """
    bias = _smooth_noise(image.shape, 1, _BIAS_SMOOTHNESS * max(image.shape), rng)[..., 0]
    biased = image * np.exp(_BIAS_AMPLITUDE * bias / np.abs(bias).max())
    real, imaginary = _NOISE_SIGMA * rng.standard_normal((2, *image.shape), dtype=np.float32)
    return np.clip(np.hypot(biased + real, imaginary), 0.0, 1.0).astype(np.float32)


def make_brain_pairs(n_pairs, shape=(80, 96, 80), max_displacement=8.0, seed=0):
    """Brain registration pairs with a known answer (see the module docstring).

    Pair ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so it does not depend on ``n_pairs``.
    Both fields have largest displacement ``max_displacement`` and Gaussian correlation length
    ``max(shape) / 8`` voxels (12 voxels, about 2.6 cm, at the default grid). The registration field must stay
    free of folds for a fair task: at the default grid and displacement its largest gradient is about 0.5
    and no voxel folds; folds appear from about ``1.3 * max(shape) / 8`` voxels (16 at the default grid).

    Args:
        n_pairs: number of pairs.
        shape: ``(D, H, W)`` grid in voxels (see :func:`load_mni152`).
        max_displacement: largest displacement of the subject and of the registration field, in voxels.
        seed: seed of the fields and the noise.

    Returns:
        List of :class:`SubjectPairs` named ``"pair000"``, ... with one volume each: ``moving`` and ``fixed``
        ``[1, D, H, W]`` float32 in [0, 1], ``moving_labels`` and ``fixed_labels`` ``[1, D, H, W]`` int32
        (:data:`BRAIN_LABELS`), ``spacing_mm`` the ``(d, h, w)`` voxel size in mm, and ``true_flow``
        ``[1, D, H, W, 3]`` float32 in voxels: ``moving(x + true_flow(x)) = fixed(x)`` before noise.
    """
    template, labels, _, spacing = load_mni152(shape)
    smoothness = _FIELD_SMOOTHNESS * max(shape)
    pairs = []
    for index in range(n_pairs):
        rng = np.random.default_rng([seed, index])
        subject_flow = random_smooth_field(shape, max_displacement, smoothness, rng)
        registration_flow = random_smooth_field(shape, max_displacement, smoothness, rng)
        moving, fixed, moving_labels, fixed_labels = warp_template(template, labels, subject_flow,
                                                                   registration_flow)
        pairs.append(SubjectPairs(
            subject=f"pair{index:03d}",
            moving=add_intensity_changes(moving, rng)[None],
            fixed=add_intensity_changes(fixed, rng)[None],
            moving_labels=moving_labels[None],
            fixed_labels=fixed_labels[None],
            spacing_mm=spacing,
            label_values=dict(BRAIN_LABELS),
            true_flow=registration_flow[None],
        ))
    return pairs


def load_brain(n_pairs=20, shape=(80, 96, 80), max_displacement=8.0, fractions=(0.75, 0.05, 0.20), seed=0):
    """The brain task split into train, validation and test pairs.

    Args:
        n_pairs: number of pairs in all (at least 3).
        shape: ``(D, H, W)`` grid in voxels.
        max_displacement: largest displacement of the random fields, voxels (see :func:`make_brain_pairs`).
        fractions: ``(train, val, test)`` fractions (see :func:`~gsmorph_tf.data.subjects.split_subjects`).
        seed: seed of the pairs (:func:`make_brain_pairs`) and of the split.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` lists of :class:`SubjectPairs`.
    """
    pairs = make_brain_pairs(n_pairs, shape, max_displacement=max_displacement, seed=seed)
    train, val, test = split_subjects(pairs, fractions, seed)
    return {"train": train, "val": val, "test": test}


def write_brain_learn2reg(root, n_subjects, shape=(80, 96, 80), max_displacement=8.0, val_subjects=3, seed=0,
                          name="MNIBrain"):
    """Write synthetic brain subjects as a Learn2Reg dataset, so they are read by the same code as real data.

    Subject ``i`` is the template warped by its own smooth random field ``w_i`` (largest displacement
    ``max_displacement`` voxels, correlation length ``max(shape) / 8``, as :func:`make_brain_pairs`), labels
    CSF / GM / WM warped alike (:func:`warp_image_and_labels`), then a mild bias field and Rician noise
    (:func:`add_intensity_changes`). Everything of subject ``i`` is drawn from
    ``numpy.random.default_rng([seed, i, 1])``: the dataset is a function of its arguments, and subject ``i``
    does not depend on ``n_subjects``. Between two subjects ``i -> j`` the true field is ``w_i^-1 o w_j``
    (not written: it has no closed form); the task is scored by its labels, as Learn2Reg's.

    Layout written (see :mod:`gsmorph_tf.data.learn2reg`): ``imagesTr/<name>_<iiii>_0000.nii.gz`` (float32 in
    [0, 1]) and ``labelsTr/`` (uint8, :data:`BRAIN_LABELS`), affines of the isotropic voxel size in mm, and
    ``<name>_dataset.json`` with ``tensorImageShape``, ``labels``, ``training`` (every subject) and
    ``registration_val``: consecutive pairs of the last ``val_subjects`` subjects (``fixed = s[k]``,
    ``moving = s[k + 1]``, as Learn2Reg's OASIS lists them). There is no ``registration_test``, so the test
    split is a seeded hold-out of training subjects. The folder is written under a temporary sibling name
    and renamed when complete, so a reader never sees half a dataset.

    Args:
        root: folder to create (must not exist).
        n_subjects: number of subjects, at least ``val_subjects + 4`` (two to hold out for test, two to train).
        shape: ``(D, H, W)`` grid in voxels (see :func:`load_mni152`).
        max_displacement: largest displacement of each subject's field, voxels.
        val_subjects: subjects of the validation pairs, at least 2.
        seed: seed of the subjects.
        name: task name (file prefix and the JSON's ``name``).

    Returns:
        ``root`` as a ``pathlib.Path``.

    Raises:
        FileExistsError: ``root`` exists.
        ValueError: too few subjects.
    """
    root = pathlib.Path(root)
    if root.exists():
        raise FileExistsError(f"{root}: already exists; write_brain_learn2reg only creates new datasets")
    if val_subjects < 2 or n_subjects < val_subjects + 4:
        raise ValueError(f"need val_subjects >= 2 and n_subjects >= val_subjects + 4 (two test, two training "
                         f"subjects), got n_subjects={n_subjects}, val_subjects={val_subjects}")
    template, labels, _, spacing = load_mni152(shape)
    affine = np.diag([*spacing, 1.0])
    smoothness = _FIELD_SMOOTHNESS * max(shape)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for folder in ("imagesTr", "labelsTr"):
            (tmp / folder).mkdir(parents=True)
        training = []
        for index in range(n_subjects):
            rng = np.random.default_rng([seed, index, 1])
            field = random_smooth_field(shape, max_displacement, smoothness, rng)
            image, subject_labels = warp_image_and_labels(template, labels, field)
            file_name = f"{name}_{index:04d}_0000.nii.gz"
            nib.save(nib.Nifti1Image(add_intensity_changes(image, rng), affine), str(tmp / "imagesTr" / file_name))
            nib.save(nib.Nifti1Image(subject_labels.astype(np.uint8), affine), str(tmp / "labelsTr" / file_name))
            training.append({"image": f"./imagesTr/{file_name}", "label": f"./labelsTr/{file_name}"})
        val = training[n_subjects - val_subjects:]
        description = {
            "name": name,
            "description": (f"Synthetic: the MNI152 template (nilearn) deformed by seeded smooth random fields "
                            f"(gsmorph_tf.data.brain.write_brain_learn2reg, seed {seed}, largest displacement "
                            f"{max_displacement} voxels)"),
            "tensorImageShape": {"0": [int(s) for s in shape]},
            "labels": {"0": {"0": "background", **{str(v): k for k, v in BRAIN_LABELS.items()}}},
            "modality": {"0": "T1"},
            "numTraining": n_subjects,
            "training": training,
            "registration_val": [{"fixed": val[k]["image"], "moving": val[k + 1]["image"]}
                                 for k in range(len(val) - 1)],
        }
        (tmp / f"{name}_dataset.json").write_text(json.dumps(description, indent=4), encoding="utf-8")
        os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


#: Version of what :func:`write_brain_learn2reg` writes, part of the folder name: a change that alters the
#: written subjects bumps it, so an old folder is never read as the new task.
BRAIN_FORMAT_VERSION = 1


def brain_dataset_dir(config):
    """Where the brain task of ``config`` is written: ``<data_dir>/MNIBrain_v<format>_<n>subjects_<D>x<H>x<W>_
    disp<max displacement>_seed<data seed>``, so other settings never read another task's files."""
    shape = "x".join(str(int(s)) for s in config.option("brain_shape"))
    name = "MNIBrain_v%d_%dsubjects_%s_disp%g_seed%d" % (
        BRAIN_FORMAT_VERSION, config.option("brain_subjects"), shape, config.option("brain_max_displacement"),
        config.data_seed)
    return pathlib.Path(config.data_dir) / name


class BrainDataset(DatasetPlugin):
    """The ``brain`` entry of :data:`gsmorph_tf.registry.DATASETS`: ``brain_subjects`` synthetic subjects
    written by :func:`write_brain_learn2reg` under ``data_dir`` on first use (:func:`brain_dataset_dir`), then
    read, split and streamed by the ``learn2reg`` dataset's code (:mod:`gsmorph_tf.data.learn2reg`,
    :mod:`gsmorph_tf.data.streaming`), as real
    data: training on every ordered pair of distinct training subjects (``pairs_per_epoch`` of them per
    epoch), validation on the ``registration_val`` pairs of the last 3 subjects, test on a seeded hold-out of
    ``test_fraction`` of the others."""

    def load(self, config, generate=True):
        streaming.check_test_fraction(config.option("test_fraction"))
        root = brain_dataset_dir(config)
        if not root.exists():
            if not generate:
                raise DatasetError(f"{root}: the brain task is not there; a training run with the same settings "
                                   "writes it")
            write_brain_learn2reg(root, config.option("brain_subjects"), shape=self.network_shape(config),
                                  max_displacement=config.option("brain_max_displacement"), seed=config.data_seed)
        data = learn2reg.load_learn2reg(root, test_fraction=config.option("test_fraction"), seed=config.data_seed)
        return streaming.training_splits(data, config.option("pairs_per_epoch"))

    def network_shape(self, config):
        return tuple(int(s) for s in config.option("brain_shape"))


DATASET = BrainDataset()
