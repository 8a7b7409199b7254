"""One script for a lent GPU: the 3D train steps at the ULAE paper's size in float32 and mixed precision with their
peak GPU memory, then the 3D study at a larger size than the CPU's for the time left.

    python benchmarks/gpu_session.py --output_dir=$OUT               # on the GPU machine
    python benchmarks/gpu_session.py --output_dir=/tmp/gpu --quick   # anywhere: the same parts at 16^3, no GPU needed

The parts, in order, each in its own process, so that one part running out of memory does not stop the next:

1. **environment**: the machine (:func:`gsmorph_tf.evaluate.timing.machine_description`), TensorFlow's version and
   the GPUs it sees. Without ``--quick``, a machine on which TensorFlow sees no GPU stops the script here (exit 2),
   before any long work.
2. **steps** (``benchmarks/ulae.py --parts=networks --ncc=reference``, batch 1, at ``--sizes``, 160x192x160 by
   default): ULAE-net with the reference's objective (surgery none) and GSMorph-3D (the 3D U-Net with layer-wise
   gradient surgery), each in float32 and in mixed_float16: forward, start-up, train step (median of ``--steps``),
   peak GPU memory (``tf.config.experimental.get_memory_info``); no export (left out to keep the session within
   one 10-minute device call; ``benchmarks/ulae.py`` measures it). A measurement that fails (out of memory,
   say) is kept with its error and tried again by the next call. ``--quick`` on a CPU measures no mixed-precision
   step (TensorFlow has no float16 ``MaxPool3D`` on CPUs) and says so.
3. **study**: ``run_deformation_study.py --flagfile=<--study_flagfile>`` (by default
   ``flags/deformation_study_64.flags``: the CPU study's protocol at 64x96x64) with ``--record_dir`` for
   ``--study_minutes``, then stopped (SIGINT, then SIGKILL after a minute); its checkpoints and data go to
   ``--work_dir``. Every run it finished is kept in the record folder, which the script packs into
   ``study_records.tar.gz``: unpack it in the repository's root (``tar -xzf study_records.tar.gz``) and commit it,
   and the next session's call resumes the study there: the record folder's runs are read back, not trained. A run
   stopped unfinished starts again in the next call (its checkpoints stay on the lent machine).

It writes ``gpu_session.json`` (the environment, every step measurement, the study's progress; atomically, after
each part) and ``study_records.tar.gz`` to ``--output_dir``: two files, within what a device call brings back. A
second call on the same ``--output_dir`` skips the step measurements already in ``gpu_session.json``.

``--quick`` runs the same parts on anything: steps at 16x16x16 (one step), the study on an 8-subject brain task at
16^3 (its Initial row) with its record folder in ``--work_dir``: a test of the script, not a measurement.
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

from absl import app, flags

from gsmorph_tf.cli import fail, resolve_flagfile, run_app
from gsmorph_tf.errors import ConfigError
from gsmorph_tf.fileio import atomic_write_with

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_string("output_dir", None, "Folder of gpu_session.json and study_records.tar.gz (on the device: $OUT).")
flags.DEFINE_boolean("quick", False, "Test the script: every part at 16^3 (about two minutes on 2 CPU cores), with or "
                     "without a GPU.")
flags.DEFINE_list("sizes", ["160x192x160"], "Volume sizes of the step measurements, D x H x W (multiples of 16).")
flags.DEFINE_integer("steps", 3, "Timed train steps per measurement (median) after one warm-up.", lower_bound=1)
flags.DEFINE_string("study_flagfile", "deformation_study_64.flags", "Flagfile of the study part (in flags/ or a path).")
flags.DEFINE_string("record_dir", "results/deformation_study_64", "The study's record folder: finished runs are read "
                    "back from it and kept in it (relative paths: to the repository).")
flags.DEFINE_string("work_dir", "runs/gpu_session", "Folder of the study's checkpoints and data (relative paths: to "
                    "the repository).")
flags.DEFINE_float("study_minutes", 4.0, "Minutes the study part may run before it is stopped; 0: no study.",
                   lower_bound=0.0)
flags.mark_flag_as_required("output_dir")
FLAGS = flags.FLAGS

#: The step measurements: (key, registry network, surgery, mixed precision).
MEASUREMENTS = (("ulae_float32", "ulae", "none", False), ("gsmorph3d_float32", "gsmorph", "layerwise", False),
                ("ulae_mixed", "ulae", "none", True), ("gsmorph3d_mixed", "gsmorph", "layerwise", True))
#: The study's settings in ``--quick`` mode (after its flagfile): a tiny brain task and its Initial row, enough to
#: test the part's start, stop, records and archive (the study's training is tested in tests/studies).
QUICK_STUDY = ["--brain_subjects=8", "--brain_shape=16,16,16", "--brain_max_displacement=2", "--test_fraction=0.6",
               "--methods=Initial", "--magnitudes="]
#: Seconds the study is given to stop after SIGINT before it is killed.
STOP_GRACE_S = 60
SESSION_JSON, RECORDS_TAR = "gpu_session.json", "study_records.tar.gz"
#: Why ``--quick`` on a CPU measures no mixed-precision step.
NO_FLOAT16_3D = "no GPU: TensorFlow's CPU kernels have no float16 MaxPool3D, which both 3D networks use"


def environment():
    """The machine, TensorFlow's version and the GPUs TensorFlow sees (this process)."""
    import tensorflow as tf

    from gsmorph_tf.evaluate.timing import machine_description

    gpus = tf.config.list_physical_devices("GPU")
    details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
    return {"machine": machine_description(), "tensorflow": tf.__version__,
            "gpus": [d.get("device_name", gpu.name) for gpu, d in zip(gpus, details)],
            "cuda_build": tf.test.is_built_with_cuda()}


def measure_steps(network, surgery, mixed, sizes, steps):
    """One row of :data:`MEASUREMENTS` through ``benchmarks/ulae.py`` (its output streamed): its result dicts, one
    per size, each with ``failed`` where that measurement failed (out of memory, say)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "steps.json")
        command = [sys.executable, os.path.join(ROOT, "benchmarks", "ulae.py"), "--parts=networks", "--ncc=reference",
                   "--networks=%s" % network, "--surgery=%s" % surgery, "--mixed_precision=%s" % mixed,
                   "--sizes=%s" % ",".join(sizes), "--steps=%d" % steps, "--noexport", "--output=%s" % path]
        done = subprocess.run(command, cwd=ROOT)
        if done.returncode or not os.path.exists(path):
            return [{"network": network, "size": size, "failed": "benchmarks/ulae.py exit %d" % done.returncode}
                    for size in sizes]
        with open(path, encoding="utf-8") as f:
            return json.load(f)["results"]


def run_study(flagfile, record_dir, work_dir, output_dir, minutes, quick):
    """The study part: ``run_deformation_study.py`` for at most ``minutes``, then stopped. Returns its progress:
    ``{"flagfile", "record_dir", "minutes", "stopped_at_time_limit", "exit", "finished_runs": [paths]}``; the record
    folder is packed into :data:`RECORDS_TAR` in ``output_dir`` (atomically), under its path in the repository."""
    command = [sys.executable, os.path.join(ROOT, "run_deformation_study.py"), "--flagfile=%s" % flagfile,
               "--output_dir=%s" % os.path.join(work_dir, "study"), "--record_dir=%s" % record_dir]
    if quick:
        command += ["--data_dir=%s" % os.path.join(work_dir, "data")] + QUICK_STUDY
    process = subprocess.Popen(command, cwd=ROOT)
    stopped = False
    try:
        process.wait(timeout=60.0 * minutes)
    except subprocess.TimeoutExpired:
        stopped = True
        print("gpu_session: the study ran its %g minutes; stopping it (it resumes in the next call)" % minutes,
              flush=True)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    from gsmorph_tf.studies.deformation_study import kept_runs

    finished = sorted(os.path.join(run, "study_run.json") for run in kept_runs(record_dir))
    if os.path.isdir(record_dir):
        inside = os.path.abspath(record_dir).startswith(ROOT + os.sep)
        name = os.path.relpath(record_dir, ROOT) if inside else os.path.basename(record_dir)

        def pack(tmp):
            with tarfile.open(tmp, "w:gz") as tar:
                tar.add(record_dir, arcname=name)
        atomic_write_with(os.path.join(output_dir, RECORDS_TAR), pack, ".tar.gz")
    return {"flagfile": flagfile, "record_dir": record_dir, "minutes": minutes, "stopped_at_time_limit": stopped,
            "exit": process.returncode, "finished_runs": finished}


def _in_repository(path):
    return path if os.path.isabs(path) else os.path.join(ROOT, path)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    from gsmorph_tf.evaluate.evaluation import write_json

    output_dir, work_dir = os.path.abspath(FLAGS.output_dir), _in_repository(FLAGS.work_dir)
    record_dir = os.path.join(work_dir, "records") if FLAGS.quick else _in_repository(FLAGS.record_dir)
    sizes, steps = (["16x16x16"], 1) if FLAGS.quick else (FLAGS.sizes, FLAGS.steps)
    try:
        try:
            flagfile = os.path.abspath(resolve_flagfile(FLAGS.study_flagfile))
        except flags.CantOpenFlagFileError as error:
            raise ConfigError("--study_flagfile: %s" % error) from error
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, SESSION_JSON)
        session = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                session = json.load(f)
        started = time.time()
        env = session["environment"] = environment()
        print("gpu_session: %s; GPUs: %s" % (env["machine"], ", ".join(env["gpus"]) or "none"), flush=True)
        if not env["gpus"] and not FLAGS.quick:
            raise ConfigError("TensorFlow %s sees no GPU on this machine (%s); the session measures GPU steps and "
                              "memory (--quick runs its parts without one)" % (env["tensorflow"], env["machine"]))
    except ConfigError as error:
        return fail(error)
    session["quick"] = FLAGS.quick
    write_json(path, session)
    measured = session.setdefault("steps", {})
    for key, network, surgery, mixed in MEASUREMENTS:
        if key in measured and all("parameters" in r for r in measured[key]):
            print("gpu_session: %s measured in an earlier call" % key, flush=True)
            continue
        if mixed and not env["gpus"]:  # --quick on a CPU
            print("gpu_session: %s not measured: no GPU" % key, flush=True)
            measured[key] = [{"network": network, "size": size, "not_measured": NO_FLOAT16_3D} for size in sizes]
        else:
            print("gpu_session: steps of %s (%s)" % (key, ", ".join(sizes)), flush=True)
            measured[key] = measure_steps(network, surgery, mixed, sizes, steps)
        write_json(path, session)
    if FLAGS.study_minutes > 0:
        print("gpu_session: the study (%s) for %g minutes" % (flagfile, FLAGS.study_minutes), flush=True)
        session["study"] = run_study(flagfile, record_dir, work_dir, output_dir, FLAGS.study_minutes, FLAGS.quick)
        print("gpu_session: %d finished runs in %s" % (len(session["study"]["finished_runs"]), record_dir), flush=True)
    session["seconds"] = time.time() - started
    write_json(path, session)
    print("gpu_session: wrote %s" % path)
    return 0


if __name__ == "__main__":
    run_app(main, __name__)
