"""Training throughput of the GSMorph network with 1 and 2 (or more) data-parallel replicas.

For each replica count, in its own process (logical devices are fixed per process): the paper's U-Net at
``--size`` with a global batch of ``--batch_size``, trained by :class:`GradientSurgeryModel` (surgery
``--surgery``, Adam) under

- 1 replica: the default strategy (one device: today's single-GPU or CPU training);
- N > 1 replicas: ``MirroredStrategy`` over N GPUs when the machine has them, otherwise over N logical CPU
  devices (``--cpu_replicas``), which share the same cores: on a CPU this measures the overhead of the
  distributed step (all-reduces, per-replica work), not a speed-up.

Prints ms per step (median after warm-up), steps per second, images (pairs) per second, the speed-up over
1 replica, and the machine. The global batch is the same for every row, so each step does the same work.

Usage: ``python benchmarks/scaling.py [--size=128] [--batch_size=32] [--steps=10] [--replicas=1,2]
[--surgery=layerwise] [--mixed_precision]``
"""
import json
import subprocess
import sys

from absl import app, flags

flags.DEFINE_integer("size", 128, "Image side (pixels).")
flags.DEFINE_integer("batch_size", 32, "Global batch: pairs per step, split over the replicas.")
flags.DEFINE_integer("steps", 10, "Timed steps per configuration (after 3 warm-up steps).")
flags.DEFINE_list("replicas", ["1", "2"], "Replica counts to measure, each in its own process.")
flags.DEFINE_string("surgery", "layerwise", "Surgery mode of the train step.")
flags.DEFINE_bool("mixed_precision", False, "mixed_float16 body + LossScaleOptimizer (for GPUs; slow on CPUs).")
flags.DEFINE_integer("child_replicas", 0, "Internal: measure this replica count in this process.")
FLAGS = flags.FLAGS


def measure(replicas):
    """Run in a fresh process: build the strategy first, then the model; return the figures as a dict."""
    from gsmorph_tf.train import distribute  # light: TensorFlow is imported below, after the strategy choice

    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if replicas == 1:
        strategy, devices = tf.distribute.get_strategy(), "1 %s" % ("GPU" if gpus else "CPU (all cores)")
    elif gpus:
        if len(gpus) < replicas:
            return {"replicas": replicas, "skipped": "only %d GPU(s)" % len(gpus)}
        names = ["/gpu:%d" % i for i in range(replicas)]
        strategy, devices = tf.distribute.MirroredStrategy(devices=names), "%d GPUs" % replicas
    else:
        strategy = distribute.create_strategy("mirrored", cpu_replicas=replicas)
        devices = "%d logical CPUs (shared cores)" % replicas

    import numpy as np

    from gsmorph_tf.core.model import GradientSurgeryModel
    from gsmorph_tf.evaluate.timing import keras_train_step, machine_description, median_ms
    from gsmorph_tf.models.networks import build_gsmorph_unet

    rng = np.random.default_rng(0)
    shape = (FLAGS.batch_size, FLAGS.size, FLAGS.size, 1)
    batch = {"moving": rng.random(shape, np.float32), "fixed": rng.random(shape, np.float32)}
    tf.keras.utils.set_random_seed(0)
    with strategy.scope():
        network = build_gsmorph_unet((FLAGS.size, FLAGS.size),
                                     dtype_policy="mixed_float16" if FLAGS.mixed_precision else None)
        model = GradientSurgeryModel(network, surgery=FLAGS.surgery, conflict_diagnostics=False)
        optimizer = tf.keras.optimizers.Adam(5e-3)
        if FLAGS.mixed_precision:
            optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer)
    ms = median_ms(keras_train_step(model, batch, strategy), FLAGS.steps, warmup=3)
    return {"replicas": replicas, "devices": devices, "ms": ms, "steps_per_s": 1000.0 / ms,
            "images_per_s": FLAGS.batch_size * 1000.0 / ms, "machine": machine_description()}


def main(argv):
    del argv
    if FLAGS.child_replicas:
        print("RESULT " + json.dumps(measure(FLAGS.child_replicas)), flush=True)
        return
    passed = [a for a in sys.argv[1:] if not a.startswith("--replicas")]
    rows = []
    for replicas in (int(r) for r in FLAGS.replicas):
        done = subprocess.run([sys.executable, __file__, "--child_replicas=%d" % replicas] + passed,
                              capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            sys.exit("the %d-replica run failed:\n%s" % (replicas, done.stderr[-3000:]))
        rows.append(json.loads(lines[-1][len("RESULT "):]))
    measured = [r for r in rows if "skipped" not in r]
    if measured:
        print("machine: %s" % measured[0]["machine"])
    print("network: GSMorph U-Net, %dx%d, global batch %d, surgery %s%s, median of %d steps"
          % (FLAGS.size, FLAGS.size, FLAGS.batch_size, FLAGS.surgery,
             ", mixed_float16" if FLAGS.mixed_precision else "", FLAGS.steps))
    base = next((r["ms"] for r in measured if r["replicas"] == 1), None)
    print("| replicas | devices | ms / step | steps / s | images / s | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print("| %d | skipped: %s | | | | |" % (r["replicas"], r["skipped"]))
            continue
        speedup = "%.2f" % (base / r["ms"]) if base else "-"
        print("| %d | %s | %.1f | %.2f | %.1f | %s |" % (r["replicas"], r["devices"], r["ms"], r["steps_per_s"],
                                                       r["images_per_s"], speedup))


if __name__ == "__main__":
    app.run(main)
