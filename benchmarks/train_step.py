"""Training-step and inference speed of the GSMorph network: surgery ``none`` vs ``layerwise``.

Prints, for the paper's network at 128x128 with batch 32 (flags change both):
- ms per training step with surgery ``none`` (one backward pass of L_sim + lam L_reg: the VoxelMorph floor)
  and ``layerwise`` (GSMorph: two backward passes + projection), and their ratio;
- ms spent in the projection alone (``project_gradients`` + conflict statistics on real gradients) and its
  share of the GSMorph step;
- inference ms per pair (batch 1 and per pair at batch 32);
- the machine it ran on (CPU model and its vector extensions);
- with ``--reference_dir`` (a checkout of wulalago/GSMorph) and ``--reference_python`` (a Python with PyTorch),
  the reference's own LayerWise step (``benchmarks/reference_step.py``) timed right after ours, same size,
  batch and thread count, and the ratio: absolute figures differ several-fold between machines, so compare
  only figures from one run.

Usage: ``python benchmarks/train_step.py [--size=128] [--batch_size=32] [--steps=10]
[--reference_dir=/path/GSMorph --reference_python=/path/to/python]``
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags

from gsmorph_tf.core.model import GradientSurgeryModel
from gsmorph_tf.core.surgery import group_cosines, project_gradients
from gsmorph_tf.evaluate.timing import machine_description, median_ms
from gsmorph_tf.models.networks import build_gsmorph_unet

flags.DEFINE_integer("size", 128, "Image side (pixels).")
flags.DEFINE_integer("batch_size", 32, "Pairs per training step.")
flags.DEFINE_integer("steps", 10, "Timed steps per measurement (after 3 warm-up steps).")
flags.DEFINE_string("reference_dir", None, "Checkout of wulalago/GSMorph: also time the reference's step.")
flags.DEFINE_string("reference_python", None, "Python interpreter with PyTorch for --reference_dir.")
flags.register_multi_flags_validator(
    ["reference_dir", "reference_python"], lambda f: (f["reference_dir"] is None) == (f["reference_python"] is None),
    "--reference_dir and --reference_python go together")
FLAGS = flags.FLAGS


def step_ms(mode, batch, steps):
    """Median ms of one compiled ``train_step`` for a surgery mode."""
    tf.keras.utils.set_random_seed(0)
    network = build_gsmorph_unet((FLAGS.size, FLAGS.size))
    model = GradientSurgeryModel(network, surgery=mode, lam=0.01, conflict_diagnostics=False)
    model.compile(optimizer=tf.keras.optimizers.Adam(5e-3))
    train_step = tf.function(model.train_step)

    def run():
        logs = train_step(batch)
        float(logs["sim_loss"])  # wait for the step to finish
    return median_ms(run, steps, warmup=3), model


def projection_ms(model, batch, steps):
    """Median ms of the projection and conflict statistics alone, on the model's real gradients."""
    variables = model.network.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        sim, reg = model.compute_losses(batch["moving"], batch["fixed"], training=True)
    sim_grads, reg_grads = tape.gradient(sim, variables), tape.gradient(reg, variables)

    @tf.function
    def project(sim_grads, reg_grads):
        out = project_gradients(sim_grads, reg_grads, "layerwise", groups=model.groups)
        return out, group_cosines(sim_grads, reg_grads, model.groups)

    def run():
        out, cos = project(sim_grads, reg_grads)
        float(tf.reduce_sum(cos) + tf.reduce_sum(out[-1]))
    return median_ms(run, steps, warmup=3)


def inference_ms(network, batch, steps):
    """Median ms per pair at batch 1 and at the full batch."""
    predict = tf.function(lambda m, f: network([m, f], training=False))

    def run_batch(m, f):
        return lambda: float(tf.reduce_sum(predict(m, f)[1]))
    one = median_ms(run_batch(batch["moving"][:1], batch["fixed"][:1]), steps, warmup=3)
    full = median_ms(run_batch(batch["moving"], batch["fixed"]), steps, warmup=3)
    return one, full / int(batch["moving"].shape[0])


def reference_ms():
    """Median ms of the reference's LayerWise step (``benchmarks/reference_step.py`` in a subprocess)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_step.py")
    command = [FLAGS.reference_python, script, "--ref", FLAGS.reference_dir, "--size", str(FLAGS.size),
               "--batch", str(FLAGS.batch_size), "--steps", str(FLAGS.steps), "--threads", str(os.cpu_count())]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit("the reference step failed (%s):\n%s" % (" ".join(command), result.stderr[-2000:]))
    figures = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    print("reference (PyTorch %s)" % figures["reference_torch"])
    return float(figures["reference_layerwise_ms"])


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    shape = (FLAGS.batch_size, FLAGS.size, FLAGS.size, 1)
    batch = {"moving": tf.constant(rng.random(shape, np.float32)), "fixed": tf.constant(rng.random(shape, np.float32))}
    print("machine: %s" % machine_description())
    print("network: GSMorph U-Net, %dx%d, batch %d, median of %d steps" % (FLAGS.size, FLAGS.size,
                                                                          FLAGS.batch_size, FLAGS.steps))
    none_ms, _ = step_ms("none", batch, FLAGS.steps)
    layerwise_ms, model = step_ms("layerwise", batch, FLAGS.steps)
    project = projection_ms(model, batch, FLAGS.steps)
    one, per_pair = inference_ms(model.network, batch, FLAGS.steps)
    print("train step, surgery=none      : %8.1f ms" % none_ms)
    print("train step, surgery=layerwise : %8.1f ms" % layerwise_ms)
    print("ratio layerwise / none        : %8.2f" % (layerwise_ms / none_ms))
    print("projection + conflict stats   : %8.1f ms (%.1f %% of the layerwise step)"
          % (project, 100.0 * project / layerwise_ms))
    print("inference, batch 1            : %8.1f ms per pair" % one)
    print("inference, batch %-3d          : %8.1f ms per pair" % (FLAGS.batch_size, per_pair))
    if FLAGS.reference_dir:
        reference = reference_ms()
        print("reference LayerWise step      : %8.1f ms" % reference)
        print("ours / reference (layerwise)  : %8.2f" % (layerwise_ms / reference))


if __name__ == "__main__":
    app.run(main)
