"""``TrainConfig``: every setting of one training run, validated before anything is read or written.

``run_train.py`` turns its absl flags into a ``TrainConfig`` once; library code takes the config (or plain
arguments) and never reads flags. The config is saved as ``config.json`` in the run's output directory so an
interrupted run can be resumed only with the same settings.
"""
import dataclasses
import json
import math
import os

from gsmorph_tf.fileio import atomic_write_text
from gsmorph_tf.losses import REG_PENALTIES, SIMILARITIES
from gsmorph_tf.surgery import GROUPINGS, SURGERY_MODES

DATASETS = ("phantom", "acdc", "mnms", "brain")
MODELS = ("gsmorph", "hypermorph", "ulae")

#: Similarity losses: voxelmorph's MSE and NCC, and ULAE-net's multi-window NCC.
SIMILARITY_CHOICES = SIMILARITIES + ("multi_ncc",)

#: Settings that may change between an interrupted run and its resumption (more epochs, another place).
RESUMABLE_CHANGES = ("epochs", "output_dir")


class ConfigError(ValueError):
    """An invalid setting or combination of settings; the message names the setting and what is expected."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. Units: learning rate per Adam step, sizes in pixels/voxels, epochs as full passes."""

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
    reg_penalty: str = "l2"
    int_steps: int = 0
    learning_rate: float = 5e-3
    batch_size: int = 32
    epochs: int = 500
    seed: int = 0
    crop_size: int = 128
    conflict_diagnostics: bool = True
    log_every_n_steps: int = 1
    phantom_subjects: int = 20
    phantom_slices: int = 8
    phantom_size: int = 192
    brain_pairs: int = 20
    brain_shape: tuple = (80, 96, 80)
    brain_max_displacement: float = 8.0

    @classmethod
    def from_dict(cls, values):
        """Inverse of :meth:`to_dict` (JSON turns tuples into lists)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def network_shape(self):
        """Spatial shape of the network's inputs: the brain volume, or the square cardiac crop."""
        return tuple(self.brain_shape) if self.dataset == "brain" else (self.crop_size, self.crop_size)

    def validate(self):
        """Raise :class:`ConfigError` for the first invalid setting; return ``self``."""
        choices = {"dataset": DATASETS, "model": MODELS, "surgery": SURGERY_MODES, "grouping": GROUPINGS,
                   "similarity": SIMILARITY_CHOICES, "reg_penalty": REG_PENALTIES}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError("%s=%r is not one of: %s" % (name, getattr(self, name), ", ".join(valid)))
        if not self.data_dir and self.dataset != "brain":  # brain pairs are made in memory
            raise ConfigError("data_dir is empty: give the dataset root (for dataset=phantom, the folder the "
                              "phantom is generated into)")
        if not self.output_dir:
            raise ConfigError("output_dir is empty")
        positive = ("learning_rate", "batch_size", "epochs", "ncc_window", "log_every_n_steps",
                    "phantom_subjects", "phantom_slices", "phantom_size")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError("%s must be a positive number, got %r" % (name, value))
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ConfigError("lam must be >= 0, got %r" % self.lam)
        if self.int_steps < 0:
            raise ConfigError("int_steps must be >= 0, got %r" % self.int_steps)
        if self.crop_size <= 0 or self.crop_size % 16:
            raise ConfigError("crop_size must be a positive multiple of 16 (the U-Net pools 4 times), got %r"
                              % self.crop_size)
        if not self.ncc_windows or any(int(w) != w or w < 1 for w in self.ncc_windows):
            raise ConfigError("ncc_windows must be positive integers, got %r" % (self.ncc_windows,))
        if not (math.isfinite(self.ncc_gamma) and self.ncc_gamma > 0):
            raise ConfigError("ncc_gamma must be > 0, got %r" % self.ncc_gamma)
        if self.dataset == "brain":
            if len(self.brain_shape) != 3 or any(int(s) != s or s <= 0 or s % 16 for s in self.brain_shape):
                raise ConfigError("brain_shape must be 3 positive multiples of 16, got %r" % (self.brain_shape,))
            if self.brain_pairs < 3 or not self.brain_max_displacement > 0:
                raise ConfigError("brain_pairs must be >= 3 and brain_max_displacement > 0, got %r and %r"
                                  % (self.brain_pairs, self.brain_max_displacement))
            if self.model == "hypermorph":
                raise ConfigError("model=hypermorph is built for the 2D cardiac task; use gsmorph or ulae on brain")
        if self.model == "hypermorph" and self.similarity not in SIMILARITIES:
            raise ConfigError("model=hypermorph takes similarity %s, not %r" % (" or ".join(SIMILARITIES),
                                                                               self.similarity))
        if self.model == "hypermorph" and self.surgery != "none":
            raise ConfigError("model=hypermorph trains one network for every smoothness weight (lambda drawn per "
                              "batch) and takes no gradient surgery: use surgery=none, not %r" % self.surgery)
        if self.phantom_subjects < 3 and self.dataset == "phantom":
            raise ConfigError("phantom_subjects must be >= 3 (train/val/test split), got %r" % self.phantom_subjects)
        return self

    def to_dict(self):
        return dataclasses.asdict(self)

    def save(self, path):
        """Write the config as JSON (temp file, then rename: never half-written)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def check_resumable(self, path):
        """Compare with the ``config.json`` of an earlier run in the same output dir.

        Raises:
            ConfigError: a setting other than :data:`RESUMABLE_CHANGES` differs; resuming would silently
                mix two experiments in one checkpoint.
        """
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        now = json.loads(json.dumps(self.to_dict()))  # compare in JSON form: tuples as lists
        differences = ["%s: %r before, %r now" % (key, previous[key], value)
                       for key, value in now.items()
                       if key in previous and key not in RESUMABLE_CHANGES and previous[key] != value]
        if differences:
            raise ConfigError("%s holds a run with other settings (%s); use another --output_dir or the same "
                              "settings to resume it" % (os.path.dirname(path) or ".", "; ".join(differences)))
