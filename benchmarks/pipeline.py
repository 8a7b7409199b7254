"""The Learn2Reg streaming pipeline: volumes per second it delivers vs what a train step consumes, and peak
memory as the number of scans grows.

Each line is measured in a fresh subprocess, so timings and peaks do not mix:

1. **Delivery**: ``--volumes`` synthetic volumes of ``--size`` (smooth random intensities, float32, written as
   ``.nii.gz`` to a temporary folder, as Learn2Reg distributes images) streamed by
   :func:`gsmorph_tf.data.streaming.pair_dataset` (batch 1, all ordered pairs, ``max`` scaling): volumes per
   second after one warm-up batch, over ``--delivery_pairs`` pairs.
2. **Consumption**: one train step of the GSMorph 3D U-Net (``build_gsmorph_unet`` +
   ``GradientSurgeryModel``, batch 1, MSE, surgery ``none``: one backward pass, the cheapest step, so the
   fastest consumer) at ``--size``, median of ``--steps`` after a warm-up; it consumes 2 volumes a step.
   ``--train_step_ms`` gives the figure instead of measuring it (the step needs about 12 GB and tens of
   seconds on a CPU at 160x192x160).
3. **Memory**: process peak RSS (``resource.getrusage``) streaming ``--memory_pairs`` pairs (batch 1) from
   20 and from 200 volumes of ``--memory_size``, against a process that first loads the same volumes into
   memory (what an in-memory loader holds) and then draws the same pairs.

Usage: ``python benchmarks/pipeline.py [--size=160x192x160] [--volumes=6] [--train_step_ms=...]``
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import nibabel as nib
import numpy as np
from absl import app, flags
from scipy import ndimage

flags.DEFINE_string("size", "160x192x160", "Volume size D x H x W of the delivery and train-step measurements.")
flags.DEFINE_integer("volumes", 6, "Volumes written for the delivery measurement.", lower_bound=2)
flags.DEFINE_integer("delivery_pairs", 10, "Pairs timed for the delivery measurement (after one warm-up).",
                     lower_bound=1)
flags.DEFINE_float("train_step_ms", None, "Train-step time in ms at --size; measured when not given.")
flags.DEFINE_integer("steps", 2, "Timed train steps (median) after one warm-up.", lower_bound=1)
flags.DEFINE_string("memory_size", "64x64x64", "Volume size of the memory measurement.")
flags.DEFINE_list("memory_volumes", ["20", "200"], "Numbers of volumes of the memory measurement.")
flags.DEFINE_integer("memory_pairs", 400, "Pairs streamed in each memory measurement.", lower_bound=1)
flags.DEFINE_string("_child", None, "Internal: run one measurement and print JSON.")
FLAGS = flags.FLAGS


def parse_shape(text):
    shape = tuple(int(v) for v in text.lower().split("x"))
    if len(shape) != 3 or min(shape) < 1:
        raise app.UsageError("size %r must be D x H x W" % text)
    return shape


def write_volumes(folder, count, shape, seed=0):
    """``count`` volumes of smooth random intensities in [0, 1000] (Gaussian-blurred noise, sigma 2 voxels:
    an MRI-like spectrum, so gzip compresses them about as much as scans), float32 ``.nii.gz``, 1 mm."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        noise = np.random.default_rng([seed, index]).standard_normal(shape, dtype=np.float32)
        volume = ndimage.gaussian_filter(noise, 2.0)
        volume = 1000.0 * (volume - volume.min()) / (volume.max() - volume.min())
        paths.append(folder / ("scan_%04d_0000.nii.gz" % index))
        nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(paths[-1]))
    return paths


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_delivery(folder, pairs):
    """Volumes per second the stream delivers from the files in ``folder`` (after one warm-up batch)."""
    import tensorflow as tf

    from gsmorph_tf.data.streaming import pair_dataset

    paths = sorted(pathlib.Path(folder).glob("*.nii.gz"))
    iterator = iter(pair_dataset(paths, batch_size=1, seed=0))
    next(iterator)
    start = time.perf_counter()
    for _ in range(pairs):
        float(tf.reduce_sum(next(iterator)["moving"]))
    seconds = time.perf_counter() - start
    return {"volumes_per_s": 2 * pairs / seconds, "pairs": pairs, "files": len(paths)}


def measure_train_step(shape, steps):
    """Median ms of one GSMorph U-Net train step (batch 1, MSE, surgery none) at ``shape``."""
    import tensorflow as tf

    from gsmorph_tf.core.model import GradientSurgeryModel
    from gsmorph_tf.evaluate.timing import median_ms
    from gsmorph_tf.models.networks import build_gsmorph_unet

    tf.keras.utils.set_random_seed(0)
    model = GradientSurgeryModel(build_gsmorph_unet(shape), similarity="mse", reg_penalty="l2", surgery="none",
                                 lam=0.01, conflict_diagnostics=False)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-4))
    rng = np.random.default_rng(0)
    batch = {"moving": tf.constant(rng.random((1, *shape, 1), np.float32)),
             "fixed": tf.constant(rng.random((1, *shape, 1), np.float32))}
    train_step = tf.function(model.train_step)
    return {"train_step_ms": median_ms(lambda: float(train_step(batch)["sim_loss"]), steps),
            "peak_rss_mb": _peak_rss_mb()}


def measure_memory(folder, mode, pairs):
    """Peak RSS streaming ``pairs`` pairs from the files in ``folder`` (``stream``), or after loading them
    all into memory first and drawing the same pairs from there (``in_memory``)."""
    import tensorflow as tf

    from gsmorph_tf.data import learn2reg
    from gsmorph_tf.data.streaming import epoch_pairs, pair_dataset

    paths = sorted(pathlib.Path(folder).glob("*.nii.gz"))
    if mode == "stream":
        dataset = pair_dataset(paths, batch_size=1, pairs_per_epoch=pairs, seed=0)
    else:
        volumes = [learn2reg.read_image(path) for path in paths]

        def drawn():
            for moving, fixed in epoch_pairs(len(volumes), 0, 0, pairs_per_epoch=pairs):
                yield {"moving": volumes[moving][None, ..., None], "fixed": volumes[fixed][None, ..., None]}
        spec = tf.TensorSpec((1, *volumes[0].shape, 1), tf.float32)
        dataset = tf.data.Dataset.from_generator(drawn, output_signature={"moving": spec, "fixed": spec})
    count = 0
    for batch in dataset:
        count += int(batch["moving"].shape[0])
    return {"mode": mode, "files": len(paths), "pairs": count, "peak_rss_mb": _peak_rss_mb()}


def run_child(*args):
    """Run this script with ``--_child`` in a fresh process; its JSON result, or an error line."""
    done = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError("measurement %s failed (exit %d): %s" % (args, done.returncode,
                                                                    done.stderr.strip().splitlines()[-3:]))
    return json.loads(lines[0][len("RESULT "):])


def main(argv):
    del argv
    if FLAGS._child:
        kind, *rest = FLAGS._child.split(":")
        if kind == "delivery":
            result = measure_delivery(rest[0], FLAGS.delivery_pairs)
        elif kind == "train_step":
            result = measure_train_step(parse_shape(rest[0]), FLAGS.steps)
        else:
            result = measure_memory(rest[1], rest[0], FLAGS.memory_pairs)
        print("RESULT " + json.dumps(result))
        return
    from gsmorph_tf.evaluate.timing import machine_description

    shape = parse_shape(FLAGS.size)
    print("machine: %s" % machine_description())
    print("each figure measured in a fresh process\n")
    with tempfile.TemporaryDirectory(prefix="pipeline_benchmark_") as tmp:
        start = time.perf_counter()
        paths = write_volumes(os.path.join(tmp, "delivery"), FLAGS.volumes, shape)
        size_mb = sum(p.stat().st_size for p in paths) / len(paths) / 2 ** 20
        print("wrote %d volumes of %s (float32 .nii.gz, %.1f MB each on disk) in %.1f s"
              % (len(paths), FLAGS.size, size_mb, time.perf_counter() - start))
        delivery = run_child("--_child=delivery:%s" % os.path.join(tmp, "delivery"),
                             "--delivery_pairs=%d" % FLAGS.delivery_pairs)
        print("delivery:    %.2f volumes/s  (stream, batch 1, %d pairs after one warm-up pair)"
              % (delivery["volumes_per_s"], delivery["pairs"]))
        if FLAGS.train_step_ms is None:
            step = run_child("--_child=train_step:%s" % FLAGS.size, "--steps=%d" % FLAGS.steps)
            step_ms, how = step["train_step_ms"], "measured, median of %d, peak RSS %.0f MB" % (
                FLAGS.steps, step["peak_rss_mb"])
        else:
            step_ms, how = FLAGS.train_step_ms, "given by --train_step_ms"
        consumption = 2000.0 / step_ms
        print("consumption: %.3f volumes/s  (GSMorph U-Net train step, batch 1, surgery none: %.0f ms, %s)"
              % (consumption, step_ms, how))
        print("delivery / consumption: %.1f x  (above 1: the stream keeps the train step fed)\n"
              % (delivery["volumes_per_s"] / consumption))

        memory_shape = parse_shape(FLAGS.memory_size)
        print("peak RSS, %d pairs of %s volumes (batch 1):" % (FLAGS.memory_pairs, FLAGS.memory_size))
        print("%-10s %12s %16s" % ("volumes", "stream MB", "in memory MB"))
        for count in (int(v) for v in FLAGS.memory_volumes):
            folder = os.path.join(tmp, "memory_%d" % count)
            write_volumes(folder, count, memory_shape, seed=1)
            peaks = [run_child("--_child=memory:%s:%s" % (mode, folder), "--memory_pairs=%d" % FLAGS.memory_pairs)
                     for mode in ("stream", "in_memory")]
            print("%-10d %12.0f %16.0f" % (count, peaks[0]["peak_rss_mb"], peaks[1]["peak_rss_mb"]))
        volume_mb = np.prod(memory_shape) * 4 / 2 ** 20
        print("(one volume is %.2f MB as float32 in memory)" % volume_mb)


if __name__ == "__main__":
    app.run(main)
