"""A missing optional dependency: one line naming the install command that works where the user is."""
import sys

import pytest

from gsmorph_tf import extras
from gsmorph_tf.cli import reporting_missing_extras


def make_checkout(root, venv=True):
    """A source checkout at ``root`` (a setup.py), with a virtualenv ``.venv`` holding python and pip."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "setup.py").write_text("")
    if venv:
        (root / ".venv" / "bin").mkdir(parents=True)
        for name in ("python", "pip"):
            (root / ".venv" / "bin" / name).write_text("")
    return root


def test_install_command_in_a_checkout_uses_its_virtualenv(tmp_path):
    root = make_checkout(tmp_path / "gsmorph-tf")
    python = root / ".venv" / "bin" / "python"
    assert extras.install_command("brain", python, root, root) == '.venv/bin/pip install -e ".[brain]"'
    assert (extras.install_command("brain", python, tmp_path, root)
            == 'cd %s && .venv/bin/pip install -e ".[brain]"' % root)


def test_install_command_with_another_interpreter_or_without_a_checkout(tmp_path):
    root = make_checkout(tmp_path / "gsmorph-tf", venv=False)
    python = tmp_path / "elsewhere" / "bin" / "python"
    assert (extras.install_command("baselines", python, root, root)
            == '%s -m pip install -e ".[baselines]"' % python)
    installed = tmp_path / "site-packages"  # the package installed from a wheel: no setup.py next to it
    installed.mkdir()
    assert extras.install_command("brain", python, root, installed) == '%s -m pip install "gsmorph-tf[brain]"' % python


def test_missing_module_is_one_error_naming_package_and_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "nilearn", None)   # makes `import nilearn...` raise ImportError
    monkeypatch.setitem(sys.modules, "nilearn.datasets", None)  # also when imported earlier
    with pytest.raises(extras.MissingExtraError) as caught:
        extras.import_extra("nilearn.datasets", "brain", "nilearn", "the brain task")
    message = str(caught.value)
    assert message.startswith("the brain task needs nilearn (Python module 'nilearn.datasets'), which is not "
                              "installed; install the brain extra with: ")
    assert message.endswith('pip install -e ".[brain]"') and "\n" not in message
    assert isinstance(caught.value, ImportError)


def test_entry_points_print_a_missing_extra_as_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "SimpleITK", None)

    def main(argv):
        extras.import_extra("SimpleITK", "baselines", "SimpleITK", "Demons")

    assert reporting_missing_extras(main)(["run_x.py"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Demons needs SimpleITK")
    assert 'pip install -e ".[baselines]"' in lines[0] and "Traceback" not in captured.err
