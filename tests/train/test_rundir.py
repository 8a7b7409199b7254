"""A run directory one run at a time: a live run's lock refuses a second run, a killed run's lock does not;
a run killed with SIGKILL resumes after its last completed epoch and exports exactly once. (Resuming in the
middle of training, epochs 1-2 then 3, is tested in test_training.py.)"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from conftest import PHANTOM, ROOT
from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.train import rundir


#: Holds the lock of the run directory argv[1] until killed (prints "locked" once it holds it).
HOLD_LOCK = """
import sys, time
sys.path.insert(0, %r)
from gsmorph_tf.train import rundir
with rundir.locked(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
""" % ROOT

#: run_train.py (argv[1:] are its flags), killed with SIGKILL right after the first epoch's checkpoint is saved.
KILLED_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
sys.path.insert(0, %r)
import gsmorph_tf
import tensorflow as tf
save = tf.keras.callbacks.BackupAndRestore.on_epoch_end
def save_then_die(self, epoch, logs=None):
    save(self, epoch, logs)
    os.kill(os.getpid(), signal.SIGKILL)
tf.keras.callbacks.BackupAndRestore.on_epoch_end = save_then_die
import run_train
sys.argv = ["run_train.py", *sys.argv[1:]]
run_train.run()
""" % ROOT


def tiny_config(tmp_path, **overrides):
    settings = dict(dataset="phantom", data_dir=str(tmp_path / "phantom"), output_dir=str(tmp_path / "run"),
                    crop_size=32, batch_size=4, epochs=1, learning_rate=1e-3, surgery="none",
                    conflict_diagnostics=False, dataset_options=PHANTOM)
    settings.update(overrides)
    return TrainConfig(**settings)


def as_flags(config):
    """``run_train.py`` flags giving ``config`` (the settings :func:`tiny_config` changes)."""
    flags = ["--%s=%s" % (name, getattr(config, name)) for name in
             ("dataset", "data_dir", "output_dir", "crop_size", "batch_size", "epochs", "learning_rate", "surgery",
              "conflict_diagnostics")]
    return flags + ["--%s=%s" % item for item in config.dataset_options.items()]


@pytest.fixture
def lock_holder(tmp_path):
    """A live process holding the lock of ``tmp_path/run``; yields the Popen."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "run")], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_run_on_a_live_run_dir_is_refused_naming_the_holder(tmp_path, lock_holder):
    from gsmorph_tf.train.training import train_and_evaluate

    config = tiny_config(tmp_path)
    expected = r"output_dir %s is in use by another run: pid %d on host %s" % (
        config.output_dir, lock_holder.pid, socket.gethostname())
    with pytest.raises(ConfigError, match=expected):
        train_and_evaluate(config, verbose=0, log=lambda *args: None)
    assert not os.path.exists(tmp_path / "phantom")  # refused before the data was read (or generated)
    assert not os.path.exists(tmp_path / "run" / "config.json")
    with pytest.raises(ConfigError, match=expected):  # the lock itself, past the up-front check
        with rundir.locked(config.output_dir):
            pass


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path, lock_holder):
    lock_holder.send_signal(signal.SIGKILL)
    lock_holder.wait()
    assert os.path.exists(tmp_path / "run" / rundir.LOCK_NAME)  # the file stays; the kernel dropped the lock
    rundir.check_not_in_use(str(tmp_path / "run"))
    with rundir.locked(str(tmp_path / "run")) as path:
        assert json.loads(open(path).read())["pid"] == os.getpid()


def test_export_is_reserved_before_it_is_written(tmp_path):
    run, base = tmp_path / "run", tmp_path / "run" / "export" / "gsmorph"
    run.mkdir()
    calls = []

    def export(version):
        calls.append(version)
        (base / str(version)).mkdir(parents=True)
        return str(base / str(version))

    def killed_while_exporting(version):
        calls.append(version)
        raise KeyboardInterrupt

    # Killed while exporting: the version was reserved, its folder never renamed into place.
    with pytest.raises(KeyboardInterrupt):
        rundir.export_once(str(run), str(base), 2, killed_while_exporting)
    assert json.loads((run / rundir.EXPORT_RECORD).read_text())["version"] == 1
    (base / ".tmp-1-99999").mkdir(parents=True)  # what a SIGKILL during tf.saved_model.save leaves
    assert rundir.export_once(str(run), str(base), 2, export) == str(base / "1")
    assert calls == [1, 1] and not (base / ".tmp-1-99999").exists()
    # Exported (a kill right after the rename looks the same): a re-run exports nothing.
    assert rundir.export_once(str(run), str(base), 2, export) == str(base / "1")
    assert calls == [1, 1]
    # More epochs trained: a new version.
    assert rundir.export_once(str(run), str(base), 3, export) == str(base / "2")
    assert sorted(os.listdir(base)) == ["1", "2"]


def test_a_run_killed_after_its_epoch_checkpoint_resumes_there_and_exports_once(tmp_path):
    """Killed after the checkpoint of its (only) epoch, before evaluating and exporting: the re-run starts
    after that epoch (it trains nothing: a run that restarted would train epoch 1 again) and exports version
    1; a re-run of the finished run exports nothing more."""
    from gsmorph_tf.train.training import train_and_evaluate

    config = tiny_config(tmp_path)
    killed = subprocess.run([sys.executable, "-c", KILLED_AFTER_FIRST_CHECKPOINT, *as_flags(config)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run" / "export")

    lines = []
    resumed = train_and_evaluate(config, verbose=0, log=lines.append)  # the lock did not outlive the killed run
    assert "Resuming %s: 1 of 1 epochs completed, nothing left to train" % config.output_dir in lines
    assert resumed["history"] == {}
    assert resumed["export_dir"] == str(tmp_path / "run" / "export" / "gsmorph_phantom" / "1")

    again = train_and_evaluate(config, verbose=0, log=lambda *args: None)
    assert again["history"] == {} and again["export_dir"] == resumed["export_dir"]
    assert os.listdir(tmp_path / "run" / "export" / "gsmorph_phantom") == ["1"]
