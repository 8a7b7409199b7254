"""The registries: every model, dataset and similarity loss, named once and looked up by that name.

This module is light (no TensorFlow, no numpy): an entry names the module that implements it, as
``"package.module:attribute"``, and that module is imported only when the entry is used. So ``--help`` and
settings validation stay instant, and a model package that builds on the framework (``ulae_tf``) is named
here rather than imported by it: dependencies run one way, ``ulae_tf -> gsmorph_tf``.

What an entry points at (interfaces in :mod:`gsmorph_tf.plugins`):

- a **model**: a :class:`~gsmorph_tf.plugins.ModelPlugin` (builds the network and its training model, names
  the method in tables, prepares it for evaluation and serving);
- a **dataset**: a :class:`~gsmorph_tf.plugins.DatasetPlugin` (loads and splits the data, gives the network's
  input shape); the entry also declares the dataset's own settings (:class:`Option`), which become
  ``run_train.py`` flags and ``TrainConfig.dataset_options``;
- a **similarity**: a function ``f(config) -> loss(fixed, moved) -> scalar``.

Adding a model or a dataset = one new module plus one ``add`` line below.
"""
import dataclasses
import importlib


class RegistryError(KeyError):
    """An unknown name; the message lists the registered ones."""

    def __str__(self):
        return self.args[0]


@dataclasses.dataclass(frozen=True)
class Option:
    """A dataset's own setting: a ``run_train.py`` flag ``--<name>`` and a key of ``dataset_options``.

    Attributes:
        name: flag and key name, e.g. ``phantom_subjects``.
        default: default value (int, float, str, or a tuple of ints for ``kind="int_list"``).
        help: one line for ``--help``.
        kind: ``int``, ``float``, ``string`` or ``int_list`` (comma-separated on the command line).
        lower_bound: smallest allowed value (each element for ``int_list``), or None.
        length: required number of elements of an ``int_list``, or None.
        multiple_of: each element of an ``int_list`` must be a multiple of this, or None.
        choices: the values a ``string`` option takes, or None for any string.

    Two datasets may declare the same option (one flag serves both) only with equal declarations.
    """
    name: str
    default: object
    help: str
    kind: str = "int"
    lower_bound: float | None = None
    length: int | None = None
    multiple_of: int | None = None
    choices: tuple | None = None

    def check(self, value):
        """``value`` converted to the option's type; raises ``ValueError`` naming the option otherwise."""
        try:
            if self.kind == "int_list":
                items = value.split(",") if isinstance(value, str) else list(value)
                value = tuple(int(v) for v in items)
                elements = value
            elif self.kind == "string":
                value = "" if value is None else str(value)
                elements = ()
            else:
                value = int(value) if self.kind == "int" else float(value)
                elements = (value,)
        except (TypeError, ValueError):
            raise ValueError("%s must be %s, got %r" % (self.name, self._expected(), value)) from None
        if self.choices is not None and value not in self.choices:
            raise ValueError("%s must be one of %s, got %r" % (self.name, ", ".join(self.choices), value))
        if self.length is not None and len(elements) != self.length:
            raise ValueError("%s must be %s, got %r" % (self.name, self._expected(), value))
        for element in elements:
            if self.lower_bound is not None and element < self.lower_bound:
                raise ValueError("%s must be %s, got %r" % (self.name, self._expected(), value))
            if self.multiple_of and element % self.multiple_of:
                raise ValueError("%s must be %s, got %r" % (self.name, self._expected(), value))
        return value

    def _expected(self):
        parts = {"int": "an integer", "float": "a number", "int_list": "comma-separated integers"}[self.kind]
        if self.length is not None:
            parts = "%d %s" % (self.length, parts)
        if self.lower_bound is not None:
            parts += " >= %g" % self.lower_bound
        if self.multiple_of:
            parts += " that are multiples of %d" % self.multiple_of
        return parts


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered thing: its name, where it is implemented, a line of help.

    Attributes:
        name: the registry key (a flag value, e.g. ``--model=ulae``).
        target: ``"package.module:attribute"``, imported by :meth:`load`.
        help: one line shown in ``--help``.
    """
    name: str
    target: str
    help: str

    def load(self):
        """Import the implementing module and return the named attribute."""
        module, _, attribute = self.target.partition(":")
        return getattr(importlib.import_module(module), attribute)


@dataclasses.dataclass(frozen=True)
class ModelEntry(Entry):
    """A model, with the settings it accepts (checked before any data is read).

    Attributes:
        ndims: spatial dimensions it is built for (2, 3).
        surgeries: surgery modes its training model takes (None: every mode).
        similarities: similarity losses it takes (None: every registered one).
        batch_norm: its network has BatchNormalization layers (``sync_batchnorm`` applies).
        mixed_precision: its network takes a mixed dtype policy with float32 outputs, and its training model
            a ``LossScaleOptimizer`` (``mixed_precision`` applies).
        settings: the model settings (``gsmorph_tf.config.MODEL_SETTINGS``) it takes, e.g. ``unet_width``
            (builds its U-Net that many times wider) or ``warp_padding``; other models refuse them.
    """
    ndims: tuple = (2, 3)
    surgeries: tuple | None = None
    similarities: tuple | None = None
    batch_norm: bool = False
    mixed_precision: bool = False
    settings: tuple = ()


@dataclasses.dataclass(frozen=True)
class DatasetEntry(Entry):
    """A dataset, with its dimensionality and its own settings.

    Attributes:
        ndim: 2 (short-axis slice pairs) or 3 (volumes).
        needs_data_dir: False for data made in memory (no folder to read).
        options: the dataset's own settings (:class:`Option`).
    """
    ndim: int = 2
    needs_data_dir: bool = True
    options: tuple = ()


class Registry:
    """Entries of one kind by name, in registration order."""

    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def add(self, entry):
        if entry.name in self._entries:
            raise ValueError("%s %r is registered twice" % (self.kind, entry.name))
        self._entries[entry.name] = entry
        return entry

    def names(self):
        return tuple(self._entries)

    def __contains__(self, name):
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def __getitem__(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError("unknown %s %r; registered: %s" % (self.kind, name, ", ".join(self._entries))) \
                from None

    def load(self, name):
        """The implementation of entry ``name`` (imports its module)."""
        return self[name].load()


MODELS = Registry("model")
DATASETS = Registry("dataset")
SIMILARITIES = Registry("similarity")

MODELS.add(ModelEntry("gsmorph", "gsmorph_tf.models.gsmorph:MODEL",
                      "the GSMorph paper's U-Net (1,968,002 parameters in 2D at 128x128), any surgery mode",
                      batch_norm=True, mixed_precision=True, settings=("unet_width", "warp_padding")))
MODELS.add(ModelEntry("hypermorph", "gsmorph_tf.models.hypermorph:MODEL",
                      "HyperMorph baseline (voxelmorph's HyperVxmDense, lambda chosen on validation)",
                      ndims=(2,), surgeries=("none",), similarities=("mse", "ncc")))
MODELS.add(ModelEntry("ulae", "ulae_tf.registration:MODEL",
                      "ULAE-net: uncoupled encoder, 3 accumulative warping steps, recursive flow composition",
                      mixed_precision=True, settings=("warp_padding", "ulae_moved", "ulae_init")))

_CARDIAC_HELP = "2D ES->ED short-axis slice pairs cropped around the heart"
DATASETS.add(DatasetEntry("phantom", "gsmorph_tf.data.phantom:DATASET",
                          "synthetic cine-MRI phantom in the ACDC layout, generated into --data_dir on first use",
                          options=(
                              Option("phantom_subjects", 20, "Phantom: number of subjects.", lower_bound=3),
                              Option("phantom_slices", 8, "Phantom: short-axis slices per subject.",
                                     lower_bound=1),
                              Option("phantom_size", 192, "Phantom: in-plane size (pixels).", lower_bound=32))))
DATASETS.add(DatasetEntry("acdc", "gsmorph_tf.data.acdc:DATASET",
                          "ACDC as published (patientNNN folders): " + _CARDIAC_HELP))
DATASETS.add(DatasetEntry("mnms", "gsmorph_tf.data.mnms:DATASET",
                          "M&Ms as distributed (CSV + Training/Validation/Testing): " + _CARDIAC_HELP))
#: Settings shared by the datasets read in the Learn2Reg layout (one flag each, see :class:`Option`).
PAIRS_PER_EPOCH = Option("pairs_per_epoch", 0, "Learn2Reg layout: training pairs drawn per epoch (0: one pass over "
                         "all of them, N(N-1) for N training images).", lower_bound=0)
TEST_FRACTION = Option("test_fraction", 0.2, "Learn2Reg layout: fraction of the training subjects held out as the "
                       "test split when registration_test has no labels.", kind="float", lower_bound=1e-6)
DATASETS.add(DatasetEntry("brain", "gsmorph_tf.data.brain:DATASET",
                          "synthetic 3D brain subjects (nilearn's MNI152 template under known deformations) "
                          'written in the Learn2Reg layout under --data_dir on first use (pip install -e ".[brain]")',
                          ndim=3,
                          options=(
                              Option("brain_subjects", 16, "Brain: number of synthetic subjects.", lower_bound=7),
                              Option("brain_shape", (80, 96, 80), "Brain: volume shape D,H,W (voxels, "
                                     "multiples of 16).", kind="int_list", lower_bound=16, length=3,
                                     multiple_of=16),
                              Option("brain_max_displacement", 8.0, "Brain: largest displacement of the random "
                                     "deformations (voxels).", kind="float", lower_bound=1e-6),
                              PAIRS_PER_EPOCH, TEST_FRACTION)))
DATASETS.add(DatasetEntry("learn2reg", "gsmorph_tf.data.streaming:DATASET",
                          "3D inter-subject registration on a dataset in the Learn2Reg layout (OASIS, LUMIR, "
                          "AbdomenCTCT, NLST, or your own): <data_dir>/<NAME>_dataset.json, imagesTr/, labelsTr/",
                          ndim=3,
                          options=(
                              Option("atlas", "", "Learn2Reg: atlas image (moving) registered to every subject "
                                     "(fixed), as the JSON writes it (./imagesTr/...) or a path; empty: every ordered "
                                     "pair of distinct training images.", kind="string"),
                              Option("label_groups", "", "Learn2Reg: JSON file {\"group\": [label names or "
                                     "integers], ...} merging labels into named groups for scoring; empty: every "
                                     "label of the dataset JSON.", kind="string"),
                              Option("intensity_norm", "max", "Learn2Reg: max = divide each volume by its maximum "
                                     "(our choice; the ULAE-net reference does not say how it scaled); percentile = "
                                     "minimum to 0, 99.5th percentile to 1, clipped (the cardiac loaders).",
                                     kind="string", choices=("max", "percentile")),
                              PAIRS_PER_EPOCH, TEST_FRACTION)))

SIMILARITIES.add(Entry("mse", "gsmorph_tf.core.losses:mse_from_config", "mean squared intensity difference"))
SIMILARITIES.add(Entry("ncc", "gsmorph_tf.core.losses:ncc_from_config",
                       "local NCC over a --ncc_window cube, --ncc formula"))
SIMILARITIES.add(Entry("multi_ncc", "ulae_tf.losses:multi_ncc_from_config",
                       "ULAE's -sum_i gamma^(i-1) NCC_{w_i} over --ncc_windows with --ncc_gamma, --ncc formula"))
