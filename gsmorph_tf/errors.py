"""The exceptions a user sees as one ``error: ...`` line (no traceback), importable without TensorFlow.

Each message names the setting, file or folder that is wrong and what was expected.
"""


class ConfigError(ValueError):
    """An invalid setting or combination of settings."""


class DatasetError(ValueError):
    """Bad input data: a missing, corrupt or inconsistent file, or a layout the loader cannot read."""


class SavedModelError(ValueError):
    """A SavedModel that is missing, unreadable, or not a registration model."""
