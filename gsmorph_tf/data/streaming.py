"""Training pairs streamed from disk with ``tf.data``: volumes read in parallel, paired on the fly, never cached.

For 3D datasets of hundreds of scans (Learn2Reg's OASIS: 414 images of 160x224x192 in ``imagesTr``, 394 after
its 20 validation images, so 154,842 ordered pairs) neither the volumes nor the pairs belong in memory. Here a
pair is only two indices into a list of files: each epoch draws its ``(moving, fixed)`` indices from a seeded
generator (:func:`epoch_pairs`), and ``tf.data`` reads the two volumes with nibabel in parallel threads
(``num_parallel_calls=AUTOTUNE``), scales them, batches and prefetches. Memory holds the batches in flight,
whatever the number of scans.

This module also holds the ``learn2reg`` dataset entry (:data:`DATASET`, :class:`Learn2RegDataset`): a task
read and split by :mod:`gsmorph_tf.data.learn2reg` (NumPy and nibabel only), its splits served as streams
(:class:`StreamedTrainingPairs`, :class:`StreamedEvaluationPairs`).
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras must be selected before TensorFlow loads)

import itertools

import numpy as np
import tensorflow as tf

from gsmorph_tf.data import learn2reg
from gsmorph_tf.data.nifti import read_nifti_header
from gsmorph_tf.errors import ConfigError, DatasetError
from gsmorph_tf.plugins import DatasetPlugin, StreamedSplit


def _epoch_length(n_images, pairs, pairs_per_epoch):
    """``(pairs in one pass, pairs in one epoch)``; refuses an empty epoch."""
    total = n_images * (n_images - 1) if pairs is None else len(pairs)
    if total < 1:
        raise ValueError(f"no pair to draw: {n_images} image(s) and "
                         f"{'all ordered pairs of distinct images' if pairs is None else 'no listed pair'}")
    count = total if pairs_per_epoch is None else int(pairs_per_epoch)
    if count < 1:
        raise ValueError(f"pairs_per_epoch must be positive, got {pairs_per_epoch}")
    return total, count


def epoch_pairs(n_images, seed, epoch, pairs=None, pairs_per_epoch=None):
    """The ``(moving, fixed)`` indices of one epoch, generated one at a time (O(n_images) memory).

    Without ``pairs``, every ordered pair of two distinct images: one pass yields each of the ``n (n - 1)``
    pairs exactly once. A pass runs in ``n - 1`` rounds; round ``s`` pairs image ``r[i]`` (moving) with
    ``r[(i + s) mod n]`` (fixed) for every ``i``, where ``r`` is a random relabelling of the images drawn per
    pass; the rounds come in random order and the ``n`` pairs of a round in random order. Every image is
    moving once and fixed once per round, so any stretch of an epoch uses the images evenly.

    With ``pairs``, a random order of those pairs per pass.

    An epoch of ``pairs_per_epoch`` pairs runs as many passes as it needs (the last one cut short), each in a
    new order. The order is a function of ``(seed, epoch)`` alone.

    Args:
        n_images: number of images.
        seed: integer seed.
        epoch: epoch number (0-based), so each epoch has its own order.
        pairs: sequence of ``(moving, fixed)`` index pairs, or None for all ordered pairs of distinct images.
        pairs_per_epoch: pairs in the epoch; None: one pass (``n (n - 1)``, or ``len(pairs)``).

    Yields:
        ``(moving, fixed)`` tuples of ints.
    """
    total, count = _epoch_length(n_images, pairs, pairs_per_epoch)
    rng = np.random.default_rng([seed, epoch])
    drawn = 0
    while True:
        if pairs is None:
            relabel = rng.permutation(n_images)
            for shift in rng.permutation(np.arange(1, n_images)):
                for i in rng.permutation(n_images):
                    yield int(relabel[i]), int(relabel[(i + shift) % n_images])
                    drawn += 1
                    if drawn == count:
                        return
        else:
            for k in rng.permutation(total):
                yield int(pairs[k][0]), int(pairs[k][1])
                drawn += 1
                if drawn == count:
                    return


def pair_dataset(image_paths, batch_size, pairs=None, pairs_per_epoch=None, seed=0, intensity_norm="max",
                 shape=None, drop_remainder=False, first_epoch=0):
    """A ``tf.data.Dataset`` of registration pairs streamed from NIfTI files.

    One pass over the dataset is one epoch of ``pairs_per_epoch`` pairs (see :func:`epoch_pairs`); every new
    pass (Keras starts one per epoch) draws the next epoch's order: the k-th pass of a dataset built with
    ``first_epoch=e`` is epoch ``e + k``. Each volume is read when its pair comes up, by
    :func:`gsmorph_tf.data.learn2reg.read_image` (nibabel) in parallel ``tf.numpy_function`` calls, checked
    (shape, finite voxels; errors name the file) and scaled on its own by ``intensity_norm``. Nothing is cached.

    Args:
        image_paths: NIfTI files, all of one 3-D shape.
        batch_size: pairs per batch.
        pairs, pairs_per_epoch, seed: see :func:`epoch_pairs`.
        intensity_norm: one of :data:`gsmorph_tf.data.learn2reg.INTENSITY_NORMS`.
        shape: ``(D, H, W)`` of the volumes; None reads it from the first file's header.
        drop_remainder: drop each epoch's last partial batch.
        first_epoch: the epoch number of the first pass (to continue an order after resuming at that epoch).

    Returns:
        Dataset of ``{"moving": [B, D, H, W, 1], "fixed": [B, D, H, W, 1]}`` float32, prefetched, of known
        cardinality (batches per epoch).
    """
    paths = [str(p) for p in image_paths]
    if not paths:
        raise ValueError("pair_dataset needs at least one image path, got none")
    if intensity_norm not in learn2reg.INTENSITY_NORMS:
        raise ValueError(f"intensity_norm must be one of {learn2reg.INTENSITY_NORMS}, got {intensity_norm!r}")
    if pairs is not None:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if pairs.size and (pairs.min() < 0 or pairs.max() >= len(paths)):
            raise ValueError(f"pairs index images 0..{len(paths) - 1}, got indices {pairs.min()}..{pairs.max()}")
    shape = tuple(int(s) for s in (shape if shape is not None else read_nifti_header(paths[0])[0]))
    _, count = _epoch_length(len(paths), pairs, pairs_per_epoch)
    epochs = itertools.count(first_epoch)

    def indices():
        for moving, fixed in epoch_pairs(len(paths), seed, next(epochs), pairs, pairs_per_epoch):
            yield np.array([moving, fixed], np.int32)

    def read(index):
        # Looked up on the module at call time, so tests can count reads through a patched reader.
        return learn2reg.read_image(paths[int(index)], intensity_norm, shape)

    def load(pair):
        volumes = []
        for role in (0, 1):
            volume = tf.numpy_function(read, [pair[role]], tf.float32, name="read_nifti")
            volume.set_shape(shape)
            volumes.append(volume[..., tf.newaxis])
        return {"moving": volumes[0], "fixed": volumes[1]}

    dataset = tf.data.Dataset.from_generator(indices, output_signature=tf.TensorSpec([2], tf.int32))
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def training_dataset(data, batch_size, seed=0, pairs_per_epoch=None, drop_remainder=False, first_epoch=0):
    """The training stream of a Learn2Reg task (:func:`gsmorph_tf.data.learn2reg.load_learn2reg`).

    Unpaired tasks draw every ordered pair of distinct training images, paired tasks their listed pairs, atlas
    mode the atlas with every training subject (see :func:`~gsmorph_tf.data.learn2reg.make_splits`); the
    default epoch is one pass over those pairs. Other arguments as :func:`pair_dataset`.
    """
    splits = data.splits
    return pair_dataset([scan.image for scan in splits.train_images], batch_size, pairs=splits.train_pairs,
                        pairs_per_epoch=pairs_per_epoch, seed=seed, intensity_norm=data.intensity_norm,
                        shape=data.task.shape, drop_remainder=drop_remainder, first_epoch=first_epoch)


# --- the learn2reg dataset entry: its splits as streams -------------------------------------------------------

class StreamedEvaluationPairs(learn2reg.EvaluationPairs, StreamedSplit):
    """Validation or test pairs (:class:`~gsmorph_tf.data.learn2reg.EvaluationPairs`: read one pair per item)
    that also stream as ``tf.data`` batches, for Keras' validation loss (:meth:`batches`)."""

    def batches(self, batch_size, seed=0, drop_remainder=False, first_epoch=0):
        images = list(dict.fromkeys(scan.image for pair in self.pairs for scan in pair))
        index = {image: i for i, image in enumerate(images)}
        return pair_dataset(images, batch_size, pairs=[(index[m.image], index[f.image]) for m, f in self.pairs],
                            seed=seed, intensity_norm=self.intensity_norm, shape=self.shape,
                            drop_remainder=drop_remainder, first_epoch=first_epoch)


class StreamedTrainingPairs(StreamedSplit):
    """The training pairs of a task (:attr:`~gsmorph_tf.data.learn2reg.Learn2RegSplits.train_pairs`), streamed
    from disk by :func:`training_dataset`: nothing is read until training pulls a batch.

    Args:
        data: :class:`~gsmorph_tf.data.learn2reg.Learn2RegData`.
        pairs_per_epoch: pairs drawn per epoch; None: one pass over all training pairs.
    """

    def __init__(self, data, pairs_per_epoch=None):
        self.data = data
        self.pairs_per_epoch = pairs_per_epoch

    @property
    def pair_count(self):
        return self.pairs_per_epoch or self.data.splits.n_train_pairs

    @property
    def shape(self):
        return tuple(self.data.task.shape)

    @property
    def label_values(self):
        return dict(self.data.mapping.label_values)

    def batches(self, batch_size, seed=0, drop_remainder=False, first_epoch=0):
        return training_dataset(self.data, batch_size, seed=seed, pairs_per_epoch=self.pairs_per_epoch,
                                drop_remainder=drop_remainder, first_epoch=first_epoch)


#: Every size of a volume must be a multiple of this: the registered networks halve the grid four times.
NETWORK_SIZE_MULTIPLE = 16


def training_splits(data, pairs_per_epoch=0):
    """A loaded task as the framework's splits (see :meth:`gsmorph_tf.plugins.DatasetPlugin.load`).

    Args:
        data: :class:`~gsmorph_tf.data.learn2reg.Learn2RegData`.
        pairs_per_epoch: training pairs drawn per epoch; 0: one pass over all of them.

    Returns:
        ``{"train": StreamedTrainingPairs, "val": StreamedEvaluationPairs, "test": StreamedEvaluationPairs,
        "record": dict}``; the record (:attr:`~gsmorph_tf.data.learn2reg.Learn2RegData.record`) says which
        test rule was used, and why.

    Raises:
        DatasetError: naming the dataset JSON, if a size of ``tensorImageShape`` is not a multiple of
            :data:`NETWORK_SIZE_MULTIPLE`.
    """
    shape = data.task.shape
    if any(size % NETWORK_SIZE_MULTIPLE for size in shape):
        raise DatasetError(f"{data.task.json_path}: tensorImageShape {list(shape)} has a size that is not a multiple "
                           f"of {NETWORK_SIZE_MULTIPLE}; the networks halve the grid four times, so crop or pad the "
                           "volumes (and their labels) to multiples of 16")
    train = StreamedTrainingPairs(data, pairs_per_epoch or None)
    record = data.record
    record["train"] = {**record["train"], "pairs_per_epoch": train.pair_count}
    val, test = (StreamedEvaluationPairs(pairs.pairs, data.mapping, data.intensity_norm, shape)
                 for pairs in (data.val, data.test))
    return {"train": train, "val": val, "test": test, "record": record}


def check_test_fraction(value):
    """Raise :class:`~gsmorph_tf.errors.ConfigError` unless the ``test_fraction`` setting is in (0, 1)."""
    if not 0.0 < value < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1) (a fraction of the training subjects), got {value}")


class Learn2RegDataset(DatasetPlugin):
    """The ``learn2reg`` entry of :data:`gsmorph_tf.registry.DATASETS`:
    :func:`~gsmorph_tf.data.learn2reg.load_learn2reg` on ``config.data_dir`` with the options ``atlas``,
    ``label_groups``, ``intensity_norm``, ``test_fraction`` (seeded by ``config.data_seed``) and
    ``pairs_per_epoch``. Every file is checked from its header before training starts; training pairs are
    streamed, evaluation pairs read one at a time."""

    def load(self, config, generate=True):
        check_test_fraction(config.option("test_fraction"))
        data = learn2reg.load_learn2reg(config.data_dir, atlas=config.option("atlas") or None,
                                        label_groups=config.option("label_groups") or None,
                                        intensity_norm=config.option("intensity_norm"),
                                        test_fraction=config.option("test_fraction"), seed=config.data_seed)
        return training_splits(data, config.option("pairs_per_epoch"))

    def network_shape(self, config):
        return learn2reg.read_tensor_shape(config.data_dir)


DATASET = Learn2RegDataset()
