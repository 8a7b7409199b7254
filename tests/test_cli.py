"""Entry-point plumbing (gsmorph_tf.cli): flagfiles found in flags/ by name, nested ones too, with a clear
error listing the available ones; dataset settings as flags."""
import os
import subprocess
import sys

import pytest
from absl import flags

from gsmorph_tf import cli
from gsmorph_tf.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def flags_dir(tmp_path):
    folder = tmp_path / "flags"
    folder.mkdir()
    (folder / "base.flags").write_text("# shared settings\n--lam=0.3\n")
    (folder / "top.flags").write_text("--flagfile=base.flags\n--seed=7\n")
    return folder


def test_a_bare_name_is_looked_up_in_the_flags_folder(flags_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.resolve_flagfile("top.flags", flags_dir) == str(flags_dir / "top.flags")
    (tmp_path / "top.flags").write_text("--seed=1\n")   # a file where it is named wins
    assert cli.resolve_flagfile("top.flags", flags_dir) == "top.flags"


def test_a_missing_flagfile_lists_the_available_ones(flags_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(flags.CantOpenFlagFileError, match="acdc.flag: not found here nor in .*base.flags, top.flags"):
        cli.resolve_flagfile("acdc.flag", flags_dir)
    with pytest.raises(flags.CantOpenFlagFileError, match="sub/top.flags: not found here;"):
        cli.resolve_flagfile("sub/top.flags", flags_dir)


def test_nested_flagfiles_are_resolved_too(flags_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "FLAGS_DIR", flags_dir)
    values = flags.FlagValues()
    flags.DEFINE_float("lam", 0.0, "", flag_values=values)
    flags.DEFINE_integer("seed", 0, "", flag_values=values)
    original = flags.FlagValues._get_flag_file_lines
    try:
        cli._install_flagfile_lookup()
        values(["prog", "--flagfile=top.flags"])
    finally:
        flags.FlagValues._get_flag_file_lines = original
    assert (values.lam, values.seed) == (0.3, 7)


def test_run_train_reads_a_project_flagfile_named_from_anywhere(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "run_train.py"), "--flagfile=acdc.flags",
                           "--data_dir=%s" % (tmp_path / "ACDC"), "--output_dir=%s" % (tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    # acdc.flags was read: the ACDC loader looked for the data and named the folder.
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error:" in done.stderr and "ACDC data directory" in done.stderr and str(tmp_path / "ACDC") in done.stderr
    assert not os.path.exists(tmp_path / "run")


def test_dataset_settings_of_another_dataset_are_refused():
    values = flags.FlagValues()
    for entry_option in ("phantom_subjects", "brain_subjects", "pairs_per_epoch"):
        flags.DEFINE_integer(entry_option, None, "", flag_values=values)
    flags.DEFINE_float("phantom_size", None, "", flag_values=values)
    flags.DEFINE_list("phantom_slices", None, "", flag_values=values)
    flags.DEFINE_list("brain_shape", None, "", flag_values=values)
    flags.DEFINE_float("brain_max_displacement", None, "", flag_values=values)
    values(["prog", "--brain_subjects=8", "--pairs_per_epoch=3"])
    assert cli.dataset_options_from_flags(values, "brain") == {"brain_subjects": 8, "pairs_per_epoch": 3}
    with pytest.raises(ConfigError, match="--brain_subjects is a setting of dataset=brain, not of dataset=phantom"):
        cli.dataset_options_from_flags(values, "phantom")
    values.unparse_flags()
    values(["prog", "--pairs_per_epoch=3"])  # one flag shared by the datasets in the Learn2Reg layout
    assert cli.dataset_options_from_flags(values, "learn2reg") == {"pairs_per_epoch": 3}
    with pytest.raises(ConfigError, match="--pairs_per_epoch is a setting of dataset=brain or learn2reg, not of "
                                          "dataset=acdc"):
        cli.dataset_options_from_flags(values, "acdc")
