"""``tf.data`` pipelines over in-memory subjects (:class:`~gsmorph_tf.data.subjects.SubjectPairs`)."""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras must be selected before TensorFlow loads)

import numpy as np
import tensorflow as tf


def make_dataset(pairs, batch_size, shuffle, seed=0, drop_remainder=False):
    """A finite ``tf.data.Dataset`` over all slices of all subjects (one pass = one epoch).

    Args:
        pairs: list of :class:`SubjectPairs` with one common in-plane size ``H x W``.
        batch_size: slices per batch; the last batch may be smaller unless ``drop_remainder``.
        shuffle: shuffle slices across subjects, reshuffled every epoch (seeded by ``seed``).
        seed: shuffle seed.
        drop_remainder: drop the last partial batch of every epoch (the GSMorph reference's ``drop_last``).

    Returns:
        Dataset of dicts ``{"moving": [B, H, W, 1] float32, "fixed": [B, H, W, 1] float32}``, prefetched.

    Raises:
        ValueError: ``pairs`` is empty or the subjects have different in-plane sizes.
    """
    if not pairs:
        raise ValueError("make_dataset needs at least one SubjectPairs, got none")
    sizes = {p.subject: p.moving.shape[1:] for p in pairs}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"all subjects must share one in-plane size to be batched, got {sizes}")
    moving = np.concatenate([p.moving for p in pairs]).astype(np.float32)[..., np.newaxis]
    fixed = np.concatenate([p.fixed for p in pairs]).astype(np.float32)[..., np.newaxis]
    dataset = tf.data.Dataset.from_tensor_slices({"moving": moving, "fixed": fixed})
    if shuffle:
        dataset = dataset.shuffle(len(moving), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
