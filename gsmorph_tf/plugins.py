"""What the framework asks of a model or a dataset: the two interfaces registry entries point at.

A training run goes config -> dataset -> model -> fit -> evaluate -> export (:mod:`gsmorph_tf.train.training`);
the dataset and the model are the only variable parts, each looked up by name in :mod:`gsmorph_tf.registry`
and implemented by one module holding one object of these classes (``DATASET = ...``, ``MODEL = ...``).
Light to import: nothing here loads TensorFlow.
"""
import abc


class DatasetPlugin(abc.ABC):
    """Reads (or makes) a dataset and splits it.

    Subclasses implement :meth:`load` and :meth:`network_shape`.
    """

    @abc.abstractmethod
    def load(self, config, generate=True):
        """Read and validate the whole dataset named by ``config`` before any training starts.

        Args:
            config: the run's :class:`~gsmorph_tf.config.TrainConfig` (``data_dir``, ``crop_size``,
                ``seed`` and ``dataset_options``).
            generate: for synthetic datasets written to disk, generate them first if absent; False reads
                what is there (evaluation of an existing run).

        Returns:
            ``{"train": ..., "val": ..., "test": ...}``: lists of :class:`~gsmorph_tf.data.subjects.SubjectPairs`
            held in memory, or :class:`StreamedSplit` objects read from disk while they are used; optionally
            ``"record"``: a JSON-serialisable dict saying how the splits were made (which file lists, which
            test rule), written to the run's ``evaluation.json`` as ``data``.

        Raises:
            DatasetError: naming the file or folder, for anything wrong with the data.
        """

    @abc.abstractmethod
    def network_shape(self, config):
        """Spatial shape of the network's inputs for this dataset and config, e.g. ``(128, 128)``."""


class StreamedSplit(abc.ABC):
    """A split a dataset reads from disk while it is used, never holding all of it in memory (3D datasets of
    hundreds of volumes). Training consumes :meth:`batches`; a split that can be evaluated is also a
    sequence of :class:`~gsmorph_tf.data.subjects.SubjectPairs`, one pair read per item."""

    @property
    @abc.abstractmethod
    def pair_count(self):
        """Registration pairs in one pass (one epoch for training), without reading any volume."""

    @property
    @abc.abstractmethod
    def shape(self):
        """Spatial shape of every volume, e.g. ``(160, 224, 192)``."""

    @property
    @abc.abstractmethod
    def label_values(self):
        """Structure name -> integer in the label maps that are scored (background 0 excluded)."""

    @abc.abstractmethod
    def batches(self, batch_size, seed=0, drop_remainder=False, first_epoch=0):
        """A ``tf.data.Dataset`` of ``{"moving": [B, *shape, 1], "fixed": [B, *shape, 1]}`` float32 batches: one
        pass is one epoch, each pass in a new seeded order (see :mod:`gsmorph_tf.data.streaming`); the first
        pass draws epoch ``first_epoch``'s order, so that a run resumed at that epoch continues its sequence."""


class ModelPlugin(abc.ABC):
    """Builds a registration network and everything the framework does with it.

    A *network* is a Keras model ``[moving, fixed, ...] -> [moved, flow, ...]`` (images ``[B, *vol, 1]``,
    flow ``[B, *vol, ndim]`` in voxels); its *training model* wraps it with a ``train_step``. Subclasses
    implement :meth:`build_network`, :meth:`build_training_model` and :meth:`method_name`; the other hooks
    default to "the network as it is".
    """

    #: Keys of ``evaluation.json``'s ``chosen`` that a finished run must hold to be served (see
    #: :meth:`serving_network`), each with what it is for messages; empty when the trained network is
    #: served as it is.
    chosen_for_serving = {}

    @abc.abstractmethod
    def build_network(self, config, inshape):
        """The network for images of spatial shape ``inshape`` (weights drawn from the current seed)."""

    @abc.abstractmethod
    def build_training_model(self, config, network):
        """The compiled, built Keras training model around ``network`` (optimizer at ``config.learning_rate``)."""

    @abc.abstractmethod
    def method_name(self, config, chosen=None):
        """The method's name in tables (the papers' names), given what :meth:`finalize` chose, if anything."""

    def monitoring_network(self, network):
        """The ``[moving, fixed] -> [moved, flow]`` network scored on the validation split after each epoch."""
        return network

    def finalize(self, config, network, splits, log=print):
        """After training: ``(network to evaluate and export, dict of what was chosen for it)``."""
        return network, {}

    def serving_network(self, network, chosen):
        """A restored network as it is served, given the run's ``chosen`` settings (see
        :attr:`chosen_for_serving`)."""
        return network
