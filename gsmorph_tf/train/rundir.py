"""A run directory that one run at a time may use, and a SavedModel exported exactly once per trained state.

**The lock.** A training run holds an advisory lock (``fcntl.flock``) on ``<output_dir>/run.lock`` from
before it writes ``config.json`` until it returns. A second run on the same directory is refused with a
:class:`~gsmorph_tf.errors.ConfigError` naming the directory and the holder (pid, host, start time, command,
which the holder writes into the lock file). The kernel releases the lock when the holder's process ends,
however it ends (``SIGKILL``, out of memory, a crash), so a killed run never leaves the directory locked:
the lock file stays behind, and a stale one means nothing. ``flock`` locks are per host on local file
systems; on NFS, Linux emulates them with byte-range locks that the server arbitrates. Windows has no
``fcntl``: locking a run directory there fails with an error saying so.

**Export once.** :func:`export_once` reserves the SavedModel version in ``<output_dir>/export.json``
(written atomically) *before* writing it; the SavedModel itself appears by an atomic rename
(:func:`gsmorph_tf.serve.export.export_saved_model`). A re-run of a finished run, or of a run killed while or
after exporting, finds the reservation: if the version folder exists the export is done and is not repeated;
if not (killed before the rename), the same version is written. A new version is exported only when the
trained state changed: a resumed run with a larger ``epochs``.

**Curves.** :func:`epoch_curve` reads one per-epoch scalar of a run (validation Dice, a training loss) back
from its TensorBoard events: what the studies plot, and what a resumed run's early stopping starts from.

No TensorFlow import: the lock is taken before any long work.
"""
import contextlib
import datetime
import glob
import json
import os
import shutil
import socket
import sys

from gsmorph_tf.errors import ConfigError
from gsmorph_tf.fileio import atomic_write_text

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

#: The lock file in a run directory, and the export reservation.
LOCK_NAME = "run.lock"
EXPORT_RECORD = "export.json"


def _holder_text(path):
    """What the holder wrote into the lock file at ``path``, as a phrase (or why it is unknown)."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        holder = {}
    if "pid" not in holder:
        return "a process that has not written its name yet"
    return "pid %s on host %s since %s (%s)" % (holder["pid"], holder.get("host", "?"), holder.get("started", "?"),
                                                 holder.get("command", "?"))


def _busy_error(output_dir, path):
    return ConfigError("output_dir %s is in use by another run: %s; wait for it to end (or stop it), or use "
                       "another --output_dir (lock file %s)" % (output_dir, _holder_text(path), path))


def _require_fcntl():
    if fcntl is None:
        raise ConfigError("locking a run directory needs fcntl.flock (Linux or macOS); it is not available on "
                          "%s: run under WSL or on Linux" % sys.platform)


def check_not_in_use(output_dir):
    """Raise :class:`ConfigError` naming ``output_dir`` and the holder when a live run holds its lock.

    Creates nothing (a run calls it before loading data, so a busy directory is refused at once); the lock
    itself is taken by :func:`locked`.
    """
    path = os.path.join(output_dir, LOCK_NAME)
    if not os.path.exists(path):
        return
    _require_fcntl()
    try:
        with open(path, "rb") as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)  # released when f closes
    except BlockingIOError:
        raise _busy_error(output_dir, path) from None


@contextlib.contextmanager
def locked(output_dir):
    """Hold the lock of run directory ``output_dir`` (created if needed) for the ``with`` block.

    Writes this process's pid, host, start time (UTC, ISO 8601) and command line into the lock file as JSON.

    Raises:
        ConfigError: another live process holds the lock (naming the directory and that process), or the
            platform has no ``fcntl``.
    """
    _require_fcntl()
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_NAME)
    f = open(path, "a+", encoding="utf-8")  # not truncated before the lock is ours
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy_error(output_dir, path) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                            "command": " ".join(sys.argv)}) + "\n")
        f.flush()
        yield path
    finally:
        f.close()  # closing the file releases the lock


def previous_export(output_dir, base_dir, epochs):
    """``<base_dir>/<version>`` if an earlier run of the same trained state (``epochs``) exported it, as
    ``<output_dir>/export.json`` records and the folder exists; else None (:func:`export_once` would export).
    The other workers of a multi-worker run ask it to save exactly when the chief does."""
    record_path = os.path.join(output_dir, EXPORT_RECORD)
    if not os.path.exists(record_path):
        return None
    with open(record_path, encoding="utf-8") as f:
        record = json.load(f)
    if record.get("epochs") != epochs or record.get("base_dir") != os.path.relpath(base_dir, output_dir):
        return None
    target = os.path.join(base_dir, str(int(record["version"])))
    return target if os.path.isdir(target) else None


def export_once(output_dir, base_dir, epochs, export):
    """Export the run's model at most once per trained state; return the SavedModel version folder.

    Args:
        output_dir: the run directory (holds :data:`EXPORT_RECORD`); call under :func:`locked`.
        base_dir: the model's TF Serving base path (``<output_dir>/export/<model>``).
        epochs: the epochs the exported weights were trained for (a later run with more exports anew).
        export: ``export(version) -> path`` writing version ``version`` under ``base_dir`` atomically
            (e.g. :func:`gsmorph_tf.serve.export.export_saved_model`).

    Returns:
        ``<base_dir>/<version>``: the version written now, or the one an earlier run of the same state wrote.
    """
    record_path = os.path.join(output_dir, EXPORT_RECORD)
    record = None
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
    if record and record.get("epochs") == epochs and record.get("base_dir") == os.path.relpath(base_dir, output_dir):
        version = int(record["version"])
        target = os.path.join(base_dir, str(version))
        if os.path.isdir(target):
            return target  # exported before (perhaps by a run killed right after)
    else:
        from gsmorph_tf.serve.export import existing_versions  # TensorFlow: loaded by now, the model is trained

        version = max(existing_versions(base_dir), default=0) + 1
        atomic_write_text(record_path, json.dumps({"epochs": epochs, "version": version,
                                                   "base_dir": os.path.relpath(base_dir, output_dir)}) + "\n")
    # A run killed while exporting leaves its hidden temp folder (".tmp-<version>-<pid>"): remove it.
    for stale in glob.glob(os.path.join(base_dir, ".tmp-%d-*" % version)):
        shutil.rmtree(stale, ignore_errors=True)
    return export(version)


def epoch_curve(run_dir, split="validation", tag="epoch_dice"):
    """One value per epoch of a run's TensorBoard events (``<run_dir>/tensorboard/<split>``, scalar ``tag``),
    as a list in epoch order: e.g. validation Dice (%), or ``split="train", tag="epoch_sim_loss"``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    folder = os.path.join(run_dir, "tensorboard", split)
    if not os.path.isdir(folder):
        return []
    events = EventAccumulator(folder, size_guidance={"tensors": 0}).Reload()
    if tag not in events.Tags()["tensors"]:
        return []
    by_step = {event.step: float(make_ndarray(event.tensor_proto)) for event in events.Tensors(tag)}
    return [by_step[step] for step in sorted(by_step)]
