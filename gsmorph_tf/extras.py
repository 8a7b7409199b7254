"""Optional dependencies (setup.py's extras) and the one-line error a missing one gives.

An extra's library is imported where it is first needed, through :func:`import_extra`; when it is missing,
:class:`MissingExtraError` says what needs it and the install command that works here: from a source
checkout (this package next to its ``setup.py``), ``pip install -e ".[<extra>]"`` run in the checkout with the
pip of the running interpreter (``.venv/bin/pip`` for the virtualenv ``make install`` builds), else
``python -m pip install "gsmorph-tf[<extra>]"``. The entry points print it as one ``error: ...`` line
(:func:`gsmorph_tf.cli.run_app`). No TensorFlow import.
"""
import importlib
import os
import pathlib
import sys

#: The checkout this package would be installed from (``setup.py`` next to the package), if it is one.
SOURCE_ROOT = pathlib.Path(__file__).resolve().parent.parent


class MissingExtraError(ImportError):
    """A library of an optional extra is not installed; the message names the install command."""


def _relative_or_absolute(path, start):
    """``path`` relative to ``start`` when it lies inside it, else absolute (for a command a user types)."""
    path, start = pathlib.Path(path), pathlib.Path(start)
    return str(path.relative_to(start)) if path.is_relative_to(start) else str(path)


def install_command(extra, executable=None, cwd=None, source_root=None):
    """The shell command that installs ``extra`` into the running interpreter's environment.

    Args:
        extra: the extra's name in setup.py (``baselines``, ``brain``, ...).
        executable, cwd, source_root: the interpreter (default ``sys.executable``), the current folder
            (default ``os.getcwd()``) and the source checkout (default :data:`SOURCE_ROOT`; None-like when it
            holds no ``setup.py``): parameters only so the three cases can be tested.

    Returns:
        e.g. ``.venv/bin/pip install -e ".[brain]"`` (in the checkout, its virtualenv), ``cd /src/gsmorph-tf &&
        /opt/venv/bin/python -m pip install -e ".[brain]"`` (elsewhere), or ``/usr/bin/python3 -m pip install
        "gsmorph-tf[brain]"`` (installed without a checkout).
    """
    executable = pathlib.Path(executable or sys.executable)
    cwd = pathlib.Path(cwd or os.getcwd()).resolve()
    root = pathlib.Path(source_root or SOURCE_ROOT).resolve()
    if not (root / "setup.py").is_file():
        return '%s -m pip install "gsmorph-tf[%s]"' % (executable, extra)
    pip = executable.parent / "pip"
    installer = (_relative_or_absolute(pip, root) if pip.is_file() and executable.parent.parent.is_relative_to(root)
                 else "%s -m pip" % executable)
    command = '%s install -e ".[%s]"' % (installer, extra)
    return command if cwd == root else "cd %s && %s" % (root, command)


def import_extra(module, extra, package, needed_for):
    """Import ``module`` of the optional ``extra``, or raise :class:`MissingExtraError` saying how to install it.

    Args:
        module: the Python module (``nilearn.datasets``, ``SimpleITK``, ``ants``).
        extra: the setup.py extra that installs it.
        package: its name on PyPI (``nilearn``, ``SimpleITK``, ``antspyx``).
        needed_for: what needs it, for the message (``the brain task``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError("%s needs %s (Python module '%s'), which is not installed; install the %s extra "
                                "with: %s" % (needed_for, package, module, extra, install_command(extra))) from error
