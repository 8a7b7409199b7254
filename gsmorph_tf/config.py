"""``TrainConfig``: every setting of one training run, validated before anything is read or written.

``run_train.py`` turns its absl flags into a ``TrainConfig`` once; library code takes the config (or plain
arguments) and never reads flags. The config is saved as ``config.json`` in the run's output directory so an
interrupted run can be resumed only with the same settings.

Light to import (no TensorFlow): it holds the vocabulary of settings (surgery modes, groupings, penalties) and
checks names against :mod:`gsmorph_tf.registry`, so ``--help`` and validation are instant.
"""
import dataclasses
import json
import math
import os

from gsmorph_tf.errors import ConfigError
from gsmorph_tf.fileio import atomic_write_text
from gsmorph_tf.registry import DATASETS, MODELS, SIMILARITIES

#: Local NCC formulas (see gsmorph_tf.core.losses.local_ncc): ``voxelmorph``, voxelmorph 0.2's NCC, which clamps the
#: local covariance and variances (flat windows score 1, anti-correlated windows pass no gradient; our default);
#: ``reference``, the ULAE-net reference code's ``cross^2 / (I_var * J_var + 1e-5)``, no clamps.
NCC_FORMULAS = ("voxelmorph", "reference")

#: Surgery modes. ``none``: weighted sum (VoxelMorph); ``layerwise``: GSMorph; ``pcgrad``: the same rule on
#: the whole network at once (GS-PCGrad); ``agr_rand`` / ``agr_sum``: element-wise sign agreement (GS-Agr).
SURGERY_MODES = ("none", "layerwise", "pcgrad", "agr_rand", "agr_sum")

#: How trainable tensors are grouped for the layer-wise rule: each tensor alone, or all tensors of one layer.
GROUPINGS = ("variable", "layer")

#: Spatial-gradient penalties of the smoothness loss (voxelmorph ``Grad``).
REG_PENALTIES = ("l1", "l2")

#: How evaluation scores a registration (see gsmorph_tf.evaluate.evaluation): ``volume``, one row per subject (its
#: stack or volume as one); ``paper``, one row per 2D slice pair (the GSMorph reference code's protocol).
METRIC_PROTOCOLS = ("volume", "paper")

#: Which scores evaluation computes (see gsmorph_tf.evaluate.evaluation): ``ours`` (Dice %, HD95 mm, MSE, NJD,
#: SDlogJ, by a protocol above) or ``learn2reg`` (the Learn2Reg challenge's own, gsmorph_tf.evaluate.learn2reg_metrics;
#: 3D pairs).
METRIC_SETS = ("ours", "learn2reg")

#: Device strategies (see :mod:`gsmorph_tf.train.distribute`): ``default``, one device; ``mirrored``, the GPUs (or
#: logical CPUs) of one machine; ``multi_worker``, the machines that ``TF_CONFIG`` lists.
STRATEGIES = ("default", "mirrored", "multi_worker")

#: Where 2D cardiac crops are centred (gsmorph_tf.data.preprocessing): ``labels``, the centroid of the ED labels
#: (the paper protocol); ``motion``, the maximum of the smoothed temporal standard deviation of the cine
#: (label-free, as at deployment); ``image``, the image centre.
CROP_CENTERS = ("labels", "motion", "image")

#: What the networks' warps read outside the volume (see gsmorph_tf.core.flows.warp): ``border``, the nearest border
#: voxel (voxelmorph's); ``zeros``, 0 (PyTorch ``grid_sample``'s, both papers' reference codes).
WARP_PADDINGS = ("border", "zeros")

#: Which moved image ULAE-net's similarity scores: ``composed``, the moving image warped once by the composed
#: field (our variant); ``warp3``, the image resampled by the three step fields in sequence (the reference's).
ULAE_MOVED = ("composed", "warp3")

#: How ULAE-net's convolutions start (flow heads excepted): ``keras`` (Keras' defaults) or ``pytorch`` (PyTorch's
#: defaults, the reference's).
ULAE_INITS = ("keras", "pytorch")

#: Settings only some models take: each model's registry entry lists its own (``ModelEntry.settings``); another
#: model refuses a value other than the default.
MODEL_SETTINGS = ("unet_width", "warp_padding", "ulae_moved", "ulae_init")

#: Settings that may change between an interrupted run and its resumption: more epochs (or another stopping rule),
#: another place, what to profile, another number of logical CPU devices (as the number of GPUs may change). Not ``strategy``,
#: ``sync_batchnorm`` or ``mixed_precision``: they change what a step computes (which examples BatchNorm's
#: statistics see, float16), so a run resumes under the settings it started with.
RESUMABLE_CHANGES = ("epochs", "output_dir", "profile_batch", "cpu_replicas", "early_stopping_patience",
                     "early_stopping_min_delta")

__all__ = ["CROP_CENTERS", "ConfigError", "GROUPINGS", "METRIC_PROTOCOLS", "METRIC_SETS", "MODEL_SETTINGS",
           "NCC_FORMULAS", "PATH_SETTINGS", "REG_PENALTIES", "RESUMABLE_CHANGES", "STRATEGIES", "SURGERY_MODES",
           "TrainConfig", "ULAE_INITS", "ULAE_MOVED", "WARP_PADDINGS", "check_profile_batch"]


def check_profile_batch(steps):
    """``steps`` as ``(first, last)`` profiled steps, or ``()`` for none.

    Takes ``()`` / None, one step ``N`` (a ``(N, N)`` range) or ``(first, last)``, each a positive integer or
    its string (as ``--profile_batch=10,12`` gives them), ``first <= last``.

    Raises:
        ConfigError: naming the value and what is expected.
    """
    if steps is None or steps == () or steps == []:
        return ()
    values = (steps,) if isinstance(steps, (int, str)) else tuple(steps)
    expected = ("profile_batch takes one training step or a range 'first,last' of steps (positive integers, "
                "first <= last, e.g. 10,12), got %r" % (steps,))
    try:
        numbers = tuple(int(str(value).strip()) for value in values)
    except ValueError:
        raise ConfigError(expected) from None
    if len(numbers) == 1:
        numbers = numbers * 2
    if len(numbers) != 2 or min(numbers) < 1 or numbers[0] > numbers[1]:
        raise ConfigError(expected)
    return numbers


#: Settings that name a folder: the same folder written relative or absolute (or through a link) is the same setting.
PATH_SETTINGS = ("data_dir",)


def _same_setting(key, before, now):
    """Whether a stored setting and the current one agree; :data:`PATH_SETTINGS` compare as resolved paths (a relative
    one taken from the current directory), so a run started with ``data_cache/brain`` resumes with its absolute path."""
    if key in PATH_SETTINGS and before and now:
        return os.path.realpath(before) == os.path.realpath(now)
    return before == now


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. Units: learning rate per Adam step, sizes in pixels/voxels, epochs as full passes.

    ``seed`` fixes initialisation, shuffling and noise, and the subject split unless ``split_seed`` is set.
    ``drop_last`` drops an epoch's last partial batch (the reference code's ``drop_last=True``).

    Devices (:mod:`gsmorph_tf.train.distribute`): ``strategy`` is ``default`` (one device), ``mirrored`` (the GPUs
    of one machine; with ``cpu_replicas`` > 0, that many logical CPU devices) or ``multi_worker`` (the
    machines ``TF_CONFIG`` lists); ``batch_size`` is the global batch, split over the replicas.
    ``sync_batchnorm`` makes BatchNorm use the global batch's statistics; ``mixed_precision`` computes the
    network body in float16 with loss scaling (GPUs).

    Similarity: ``ncc_window`` (``ncc``) and ``ncc_windows`` weighted 1, ``ncc_gamma``, ``ncc_gamma^2``, ...
    (``multi_ncc``) are window sides in voxels; ``ncc`` is the local NCC formula of both (:data:`NCC_FORMULAS`).

    ``early_stopping_patience``: with ``N`` > 0, training stops once validation Dice (``val_dice``, %) has not
    improved on its best by more than ``early_stopping_min_delta`` points for ``N`` epochs in a row
    (:class:`gsmorph_tf.train.training.ValidationPlateau`); ``epochs`` is then the most it trains. 0 trains every epoch.

    ``profile_batch``: ``(first, last)`` training steps (1-based, counted from the start of this process's
    ``fit``) that TensorBoard's profiler traces; ``()`` traces none.

    Model settings (:data:`MODEL_SETTINGS`; a model whose registry entry does not list one refuses a value other
    than its default): ``unet_width`` multiplies the U-Net's feature widths (2: "VoxelMorph x2", ULAE-net's
    wider baseline); ``warp_padding`` is what the networks' warps read outside the volume
    (:data:`WARP_PADDINGS`); ``ulae_moved`` and ``ulae_init`` choose ULAE-net's scored image and initialisation
    (:data:`ULAE_MOVED`, :data:`ULAE_INITS`). The defaults are our variants; ``flags/ulae_*.flags`` set the
    reference's (``warp3``, ``zeros``, ``pytorch``).

    ``dataset_options`` holds the chosen dataset's own settings (declared by its registry entry, e.g.
    ``phantom_subjects`` or ``brain_shape``); missing ones take the entry's defaults.
    """

    dataset: str = "phantom"
    data_dir: str = ""
    output_dir: str = "runs/gsmorph"
    model: str = "gsmorph"
    surgery: str = "layerwise"
    grouping: str = "variable"
    lam: float = 0.01
    similarity: str = "mse"
    ncc_window: int = 9
    ncc_windows: tuple = (11, 9, 7)
    ncc_gamma: float = 0.5
    ncc: str = "voxelmorph"
    reg_penalty: str = "l1"
    int_steps: int = 0
    unet_width: int = 1
    warp_padding: str = "border"
    ulae_moved: str = "composed"
    ulae_init: str = "keras"
    learning_rate: float = 5e-3
    batch_size: int = 32
    epochs: int = 500
    early_stopping_patience: int = 0
    early_stopping_min_delta: float = 0.0
    seed: int = 0
    split_seed: int | None = None
    drop_last: bool = True
    metric_protocol: str = "volume"
    crop_size: int = 128
    crop_center: str = "labels"
    conflict_diagnostics: bool = True
    log_every_n_steps: int = 1
    strategy: str = "default"
    cpu_replicas: int = 0
    sync_batchnorm: bool = False
    mixed_precision: bool = False
    profile_batch: tuple = ()
    dataset_options: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        try:  # one form, (first, last), whatever form it was given in; validate() reports a bad one
            object.__setattr__(self, "profile_batch", check_profile_batch(self.profile_batch))
        except ConfigError:
            pass
        # Fill in the dataset's defaults so every run records all of its dataset's settings.
        if self.dataset in DATASETS:
            options = {option.name: option.default for option in DATASETS[self.dataset].options}
            options.update(self.dataset_options)
            object.__setattr__(self, "dataset_options", options)

    @property
    def data_seed(self):
        """Seed of the subject split (and of synthetic data made in memory): ``split_seed``, or ``seed`` when
        it is None. A multi-seed study fixes ``split_seed`` so every seed is scored on the same subjects."""
        return self.seed if self.split_seed is None else self.split_seed

    def option(self, name):
        """The value of the dataset setting ``name`` (see :mod:`gsmorph_tf.registry`)."""
        return self.dataset_options[name]

    @classmethod
    def from_dict(cls, values):
        """Inverse of :meth:`to_dict` (JSON turns tuples into lists). Dataset settings that earlier versions
        stored at the top level (``phantom_subjects``, ``brain_shape``, ...) are moved into ``dataset_options``."""
        values = dict(values)
        options = dict(values.pop("dataset_options", {}) or {})
        fields = {field.name for field in dataclasses.fields(cls)}
        for key in [k for k in values if k not in fields]:
            options[key] = values.pop(key)
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**values, dataset_options={k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})

    def validate(self):
        """Raise :class:`ConfigError` for the first invalid setting; return ``self``."""
        choices = {"dataset": DATASETS.names(), "model": MODELS.names(), "surgery": SURGERY_MODES,
                   "grouping": GROUPINGS, "similarity": SIMILARITIES.names(), "ncc": NCC_FORMULAS,
                   "reg_penalty": REG_PENALTIES, "metric_protocol": METRIC_PROTOCOLS, "crop_center": CROP_CENTERS,
                   "strategy": STRATEGIES, "warp_padding": WARP_PADDINGS, "ulae_moved": ULAE_MOVED,
                   "ulae_init": ULAE_INITS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError("%s=%r is not one of: %s" % (name, getattr(self, name), ", ".join(valid)))
        dataset, model = DATASETS[self.dataset], MODELS[self.model]
        if not self.data_dir and dataset.needs_data_dir:
            raise ConfigError("data_dir is empty: give the dataset root (for dataset=phantom, the folder the "
                              "phantom is generated into)")
        if not self.output_dir:
            raise ConfigError("output_dir is empty")
        positive = ("learning_rate", "batch_size", "epochs", "ncc_window", "log_every_n_steps")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError("%s must be a positive number, got %r" % (name, value))
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError("lam must be >= 0, got %r" % self.lam)
        if not (isinstance(self.unet_width, int) and self.unet_width >= 1):
            raise ConfigError("unet_width must be a positive integer, got %r" % (self.unet_width,))
        for name in MODEL_SETTINGS:
            default = TrainConfig.__dataclass_fields__[name].default
            if getattr(self, name) != default and name not in model.settings:
                raise ConfigError("model=%s does not take %s: %s must be %r, got %r; models that take it: %s"
                                  % (self.model, name, name, default, getattr(self, name),
                                     ", ".join(m.name for m in MODELS if name in m.settings)))
        if not (isinstance(self.early_stopping_patience, int) and self.early_stopping_patience >= 0):
            raise ConfigError("early_stopping_patience must be an integer >= 0 (epochs; 0: off), got %r"
                              % (self.early_stopping_patience,))
        if not (math.isfinite(self.early_stopping_min_delta) and self.early_stopping_min_delta >= 0):
            raise ConfigError("early_stopping_min_delta must be >= 0 (Dice points), got %r"
                              % self.early_stopping_min_delta)
        if self.int_steps < 0:
            raise ConfigError("int_steps must be >= 0, got %r" % self.int_steps)
        if self.crop_size <= 0 or self.crop_size % 16:
            raise ConfigError("crop_size must be a positive multiple of 16 (the U-Net pools 4 times), got %r"
                              % self.crop_size)
        if not self.ncc_windows or any(int(w) != w or w < 1 for w in self.ncc_windows):
            raise ConfigError("ncc_windows must be positive integers, got %r" % (self.ncc_windows,))
        if not (math.isfinite(self.ncc_gamma) and self.ncc_gamma > 0):
            raise ConfigError("ncc_gamma must be > 0, got %r" % self.ncc_gamma)
        check_profile_batch(self.profile_batch)
        known = {option.name: option for option in dataset.options}
        unknown = sorted(set(self.dataset_options) - set(known))
        if unknown:
            raise ConfigError("dataset=%s has no setting %s; its settings are: %s"
                              % (self.dataset, ", ".join(unknown), ", ".join(known) or "none"))
        for name, option in known.items():
            try:
                option.check(self.dataset_options[name])
            except ValueError as error:
                raise ConfigError(str(error)) from None
        if self.crop_center != "labels" and dataset.ndim != 2:
            raise ConfigError("crop_center=%s places the crop of 2D cardiac slices; dataset=%s is %dD and is not "
                              "cropped: leave crop_center=labels" % (self.crop_center, self.dataset, dataset.ndim))
        if self.metric_protocol == "paper" and dataset.ndim != 2:
            raise ConfigError("metric_protocol=paper scores 2D slice pairs; dataset=%s is %dD: use volume"
                              % (self.dataset, dataset.ndim))
        if dataset.ndim not in model.ndims:
            raise ConfigError("model=%s is built for %s data; dataset=%s is %dD: use %s"
                              % (self.model, " or ".join("%dD" % n for n in model.ndims), self.dataset,
                                 dataset.ndim, " or ".join(m.name for m in MODELS if dataset.ndim in m.ndims)))
        if model.similarities is not None and self.similarity not in model.similarities:
            raise ConfigError("model=%s takes similarity %s, not %r" % (self.model, " or ".join(model.similarities),
                                                                       self.similarity))
        if model.surgeries is not None and self.surgery not in model.surgeries:
            raise ConfigError("model=%s takes surgery=%s, not %r" % (self.model, " or ".join(model.surgeries),
                                                                    self.surgery))
        self._validate_devices(model)
        return self

    def _validate_devices(self, model):
        """The settings of :mod:`gsmorph_tf.train.distribute` and mixed precision, for the registry entry ``model``."""
        if not (isinstance(self.cpu_replicas, int) and self.cpu_replicas >= 0):
            raise ConfigError("cpu_replicas must be an integer >= 0, got %r" % (self.cpu_replicas,))
        if self.cpu_replicas and self.strategy != "mirrored":
            raise ConfigError("cpu_replicas=%d splits the CPU for strategy=mirrored; strategy=%s does not use it: "
                              "set strategy=mirrored or cpu_replicas=0" % (self.cpu_replicas, self.strategy))
        if self.cpu_replicas and self.batch_size % self.cpu_replicas:
            raise ConfigError("batch_size=%d is the global batch, split evenly over the cpu_replicas=%d replicas: "
                              "use a multiple of %d" % (self.batch_size, self.cpu_replicas, self.cpu_replicas))
        if self.sync_batchnorm and self.strategy == "default":
            raise ConfigError("sync_batchnorm synchronises BatchNorm across replicas; strategy=default has one: "
                              "set strategy=mirrored or multi_worker, or sync_batchnorm=False")
        if self.sync_batchnorm and not model.batch_norm:
            raise ConfigError("sync_batchnorm: model=%s has no BatchNorm layers (models with BatchNorm: %s)"
                              % (self.model, ", ".join(m.name for m in MODELS if m.batch_norm) or "none"))
        if self.mixed_precision and not model.mixed_precision:
            raise ConfigError("mixed_precision is not available for model=%s (models that support it: %s)"
                              % (self.model, ", ".join(m.name for m in MODELS if m.mixed_precision) or "none"))

    def replace_for_model(self, **changes):
        """``dataclasses.replace(self, **changes)`` with the model settings (:data:`MODEL_SETTINGS`) that the
        resulting config's model does not take put back to their defaults: a comparison's shared settings
        (e.g. ULAE-net's ``ulae_moved``) then reach the rows whose model takes them and no other."""
        config = dataclasses.replace(self, **changes)
        foreign = {name: TrainConfig.__dataclass_fields__[name].default for name in MODEL_SETTINGS
                   if name not in MODELS[config.model].settings and name not in changes}
        return dataclasses.replace(config, **foreign)

    def to_dict(self):
        return dataclasses.asdict(self)

    def save(self, path):
        """Write the config as JSON (temp file, then rename: never half-written)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def check_resumable(self, path, may_change=RESUMABLE_CHANGES):
        """Compare with the ``config.json`` of an earlier run in the same output dir (or another saved config).

        Raises:
            ConfigError: a setting other than ``may_change`` (default :data:`RESUMABLE_CHANGES`) differs;
                resuming would silently mix two experiments in one checkpoint (or study).
        """
        with open(path, encoding="utf-8") as f:
            stored = json.load(f)
        # Compare in JSON form (tuples as lists), the stored settings read as this version reads them: a
        # setting the earlier run's version did not have counts with its default.
        previous = json.loads(json.dumps(TrainConfig.from_dict(stored).to_dict()))
        now = json.loads(json.dumps(self.to_dict()))
        differences = ["%s: %r before, %r now" % (key, previous[key], value) for key, value in now.items()
                       if key not in may_change and not _same_setting(key, previous[key], value)]
        if differences:
            raise ConfigError("%s holds a run with other settings (%s); use another --output_dir or the same "
                              "settings to resume it" % (os.path.dirname(path) or ".", "; ".join(differences)))
