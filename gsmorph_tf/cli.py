"""What the ``run_*.py`` entry points share. They pass flag values in; nothing here reads a flag's value.

Light to import (no TensorFlow), so ``--help`` answers at once:

- :func:`run_app`: ``absl.app.run`` with two things users expect: a flagfile named without a folder is also
  looked up in the project's ``flags/`` folder (``--flagfile=acdc.flags`` from anywhere), and a console
  script (``gsmorph-train --help``) lists the entry point's flags as ``python run_train.py --help`` does;
- :func:`define_dataset_options`: the datasets' own settings (:mod:`gsmorph_tf.registry`) as flags;
- :func:`define_instance_flags`: ``--instance_steps`` and ``--instance_learning_rate`` (test-time instance
  optimisation, :mod:`gsmorph_tf.train.instance`) for the entry points that register;
- :func:`fail`, :func:`quiet_logs`: one ``error: ...`` line for user errors, TensorFlow's INFO lines hidden;
  :func:`run_app` prints a missing optional dependency (:mod:`gsmorph_tf.extras`) that way too, wherever it
  is imported.
"""
import os
import pathlib
import sys

from absl import app, flags
from absl.flags import _exceptions as flag_exceptions

from gsmorph_tf.errors import ConfigError
from gsmorph_tf.extras import MissingExtraError
from gsmorph_tf.registry import DATASETS

#: The project's flagfiles (``flags/`` next to the package).
FLAGS_DIR = pathlib.Path(__file__).resolve().parent.parent / "flags"


def resolve_flagfile(name, flags_dir=None):
    """The path absl should open for ``--flagfile=<name>``.

    ``name`` itself when it exists (relative to the current folder, or absolute); otherwise, for a bare file
    name (no folder), ``flags_dir/<name>`` when that exists (``flags_dir`` None: :data:`FLAGS_DIR`).

    Raises:
        absl.flags.CantOpenFlagFileError: neither exists; the message lists the flagfiles in ``flags_dir``.
    """
    if not name or os.path.exists(name):
        return name
    flags_dir = FLAGS_DIR if flags_dir is None else flags_dir
    candidate = pathlib.Path(flags_dir) / name
    if os.path.dirname(name) == "" and candidate.is_file():
        return str(candidate)
    available = sorted(p.name for p in pathlib.Path(flags_dir).glob("*.flags"))
    raise flag_exceptions.CantOpenFlagFileError(
        "Unable to open flagfile %s: not found %s; the project's flagfiles (%s) are: %s"
        % (name, "here" if os.path.dirname(name) else "here nor in %s" % flags_dir, flags_dir,
           ", ".join(available) or "none"))


def _install_flagfile_lookup():
    """Make absl resolve every flagfile it opens with :func:`resolve_flagfile`, nested ones included.

    absl opens flagfiles (those on the command line and those a flagfile includes) in
    ``FlagValues._get_flag_file_lines``; it is wrapped once, for this process.
    """
    read = flags.FlagValues._get_flag_file_lines
    if getattr(read, "resolves_project_flagfiles", False):
        return

    def read_resolved(self, filename, parsed_file_stack=None):
        return read(self, resolve_flagfile(filename), parsed_file_stack)

    read_resolved.resolves_project_flagfiles = True
    flags.FlagValues._get_flag_file_lines = read_resolved


def run_app(main, module_name):
    """``absl.app.run(main)`` for the entry point ``module_name`` (its ``__name__``).

    Run as a console script, ``sys.argv[0]`` is the wrapper in ``bin/``, whose module defines no flag, so
    absl's ``--help`` would list none: the entry point's flags are declared key flags of ``sys.argv[0]``.
    """
    _install_flagfile_lookup()
    for flag in flags.FLAGS.get_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(reporting_missing_extras(main))


def reporting_missing_extras(main):
    """``main`` that reports a missing optional dependency (:class:`~gsmorph_tf.extras.MissingExtraError`,
    raised wherever the extra is first imported) as one ``error: ...`` line with the install command, and
    returns exit status 2, instead of a traceback."""
    def guarded(argv):
        try:
            return main(argv)
        except MissingExtraError as error:
            return fail(error)

    return guarded


def _declared_options():
    """``{option name: (option, names of the datasets declaring it)}`` over every registered dataset.

    Raises:
        ValueError: two datasets declare one name differently (one flag cannot serve both).
    """
    declared = {}
    for entry in DATASETS:
        for option in entry.options:
            if option.name in declared and declared[option.name][0] != option:
                raise ValueError("dataset setting %s is declared differently by dataset=%s and dataset=%s"
                                 % (option.name, declared[option.name][1][0], entry.name))
            declared.setdefault(option.name, (option, []))[1].append(entry.name)
    return declared


def define_dataset_options(only=None, defaults=None):
    """Define one flag per dataset setting declared in :data:`gsmorph_tf.registry.DATASETS` (default None:
    the dataset entry's default applies); a setting several datasets share is one flag. ``only``: the names of
    the datasets whose settings become flags (an entry point for one dataset); None: every dataset's.
    ``defaults``: an entry point's own defaults for some settings (``{name: value}``, applied by the entry point
    when the flag is not given), which ``--help`` then shows. Returns the flag names."""
    names = []
    for option, datasets in _declared_options().values():
        if only is not None and not set(datasets) & set(only):
            continue
        helptext = "%s (dataset=%s; default %s)" % (option.help, " or ".join(datasets),
                                                   _format_default((defaults or {}).get(option.name, option.default)))
        if option.kind == "int_list":
            flags.DEFINE_list(option.name, None, helptext)
        elif option.kind == "int":
            flags.DEFINE_integer(option.name, None, helptext, lower_bound=option.lower_bound)
        elif option.kind == "float":
            flags.DEFINE_float(option.name, None, helptext, lower_bound=option.lower_bound)
        else:
            flags.DEFINE_string(option.name, None, helptext)
        names.append(option.name)
    return names


def define_instance_flags(flag_values=flags.FLAGS):
    """Define ``--instance_steps`` (default 0, >= 0) and ``--instance_learning_rate`` (default None:
    :data:`gsmorph_tf.train.instance.DEFAULT_LEARNING_RATE`; > 0, only with ``--instance_steps`` > 0): test-time
    instance optimisation (:mod:`gsmorph_tf.train.instance`).
    ``flag_values``: where they are defined (absl's global ``FLAGS`` for an entry point). Returns the flag names."""
    flags.DEFINE_integer("instance_steps", 0, "Test-time instance optimisation: refine a copy of the trained network "
                         "on each pair (2D: one subject's slices) for this many steps of its training step (GSMorph: "
                         "gradient surgery, no lambda) before registering it; 0: the trained network as it is.",
                         lower_bound=0, flag_values=flag_values)
    flags.DEFINE_float("instance_learning_rate", None, "Adam's learning rate for --instance_steps (default 1e-3, "
                       "not the run's: a training rate such as 5e-3 wrecks a trained network).",
                       flag_values=flag_values)
    flags.register_multi_flags_validator(
        ["instance_steps", "instance_learning_rate"],
        lambda values: values["instance_learning_rate"] is None or (values["instance_steps"] > 0
                                                                    and values["instance_learning_rate"] > 0),
        "--instance_learning_rate must be > 0 and goes with --instance_steps > 0", flag_values=flag_values)
    return ["instance_steps", "instance_learning_rate"]


def _format_default(value):
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def dataset_options_from_flags(flag_values, dataset):
    """The options of ``dataset`` given on the command line (or a flagfile), converted to their types.

    A flag of another dataset's setting is refused, so a typo'd combination does not pass silently.

    Raises:
        ConfigError: naming the flag, for another dataset's setting or a value of the wrong type.
    """
    options = {}
    own = {option.name: option for option in DATASETS[dataset].options} if dataset in DATASETS else {}
    for name, (option, datasets) in _declared_options().items():
        value = flag_values[name].value if name in flag_values else None
        if value is None:
            continue
        if name not in own:
            raise ConfigError("--%s is a setting of dataset=%s, not of dataset=%s"
                              % (name, " or ".join(datasets), dataset))
        try:
            options[name] = own[name].check(value)
        except ValueError as error:
            raise ConfigError("--%s" % error) from None
    return options


def config_from_flags(flag_values, names, option_defaults=None, **settings):
    """A :class:`~gsmorph_tf.config.TrainConfig` from the flags ``names`` (each named as a config field), the
    dataset's settings given as flags over ``option_defaults`` (an entry point's own defaults for its dataset),
    and fixed ``settings``; validated.

    Raises:
        ConfigError: naming the flag or setting that is wrong.
    """
    from gsmorph_tf.config import TrainConfig

    dataset = flag_values["dataset"].value
    options = dict(option_defaults or {})
    options.update(dataset_options_from_flags(flag_values, dataset))
    values = {name: flag_values[name].value for name in names}
    return TrainConfig(dataset=dataset, dataset_options=options, **values, **settings).validate()


def quiet_logs(verbosity_given):
    """Hide TensorFlow's INFO lines (saver, tracing, absl) that bury the progress bar, unless the user asked
    for a log level with ``--verbosity``."""
    if verbosity_given:
        return
    import tensorflow as tf
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("WARNING")


def fail(error):
    """Report a user error as one ``error: ...`` line on stderr (no traceback) and return exit status 2."""
    print("error: %s" % error, file=sys.stderr)
    return 2
