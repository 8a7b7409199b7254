"""Where ULAE-net's 3D train step goes: forward + gradient time of each of its parts, against the whole step.

At ``--size`` (batch 1, the reference's objective: similarity on ``warp3``, zero padding, PyTorch's
initialisation, the reference NCC formula; ``--surgery=none``, lambda 1, the registry's ``multi_ncc``) it times,
each as one ``tf.function`` (forward and the gradient with respect to its inputs and its own weights), median
of ``--steps`` after a warm-up:

- the shared encoder (run 3 times a step, once per accumulative step);
- each step's decoder;
- one warp of an image by a full-size field (4 a step: three steps and the output ``moved``) and the
  rescaling of a coarse field (3 a step);
- the recursive composition of the three fields (once);
- the multi-window NCC and the L2 smoothness (once);
- the whole ``GradientSurgeryModel`` train step.

Prints per part: ms, times per step, ms per step and its share of the measured step; what the parts do not
account for is framework overhead and the optimiser update. Parts timed apart overlap less than inside the
step, so the shares are estimates, good enough to rank the costs.

Usage: ``python benchmarks/ulae_profile.py [--size=80x96x80] [--steps=3]``
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
from absl import app, flags

flags.DEFINE_string("size", "80x96x80", "Volume size D x H x W (multiples of 16).")
flags.DEFINE_integer("steps", 3, "Timed repetitions (median) after one warm-up.", lower_bound=1)
FLAGS = flags.FLAGS


def parse_shape(text):
    shape = tuple(int(v) for v in text.lower().split("x"))
    if len(shape) != 3 or any(s <= 0 or s % 16 for s in shape):
        raise app.UsageError("--size=%r must be D x H x W, multiples of 16" % text)
    return shape


def gradient_timer(fn, inputs, variables=()):
    """A blocking callable running ``fn(*inputs)`` forward and its gradient wrt ``inputs`` and ``variables``."""
    import tensorflow as tf

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = tf.nest.flatten(fn(*inputs))
            total = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in outputs])
        gradients = tape.gradient(total, list(inputs) + list(variables))
        return total + tf.add_n([tf.reduce_sum(g) for g in gradients if g is not None])

    return lambda: float(run())


def main(argv):
    del argv
    shape = parse_shape(FLAGS.size)
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # each part is its own tf.function: no retracing warnings
    import tensorflow as tf

    from gsmorph_tf.config import TrainConfig
    from gsmorph_tf.core.flows import RescaleFlow, compose_flows, warp
    from gsmorph_tf.core.losses import smoothness_loss
    from gsmorph_tf.evaluate.timing import machine_description, median_ms
    from gsmorph_tf.registry import SIMILARITIES
    from ulae_tf.networks import STEP_DOWNSAMPLING
    from ulae_tf.registration import MODEL

    config = TrainConfig(model="ulae", dataset="brain", surgery="none", lam=1.0, similarity="multi_ncc",
                         ncc="reference", reg_penalty="l2", warp_padding="zeros", ulae_moved="warp3",
                         ulae_init="pytorch", learning_rate=1e-4, batch_size=1)
    network = MODEL.build_network(config, shape)
    model = MODEL.build_training_model(config, network)
    rng = np.random.default_rng(0)
    image = lambda channels=1: tf.constant(rng.random((1, *shape, channels), np.float32))  # noqa: E731
    field = lambda factor=1: tf.constant(  # noqa: E731
        rng.standard_normal((1, *(s // factor for s in shape), 3)).astype(np.float32))
    moving, fixed = image(), image()
    encoder = network.get_layer("encoder")
    features = encoder([moving, fixed])
    parts = [("encoder (shared)", 3, gradient_timer(lambda m, f: encoder([m, f], training=True), (moving, fixed),
                                                    encoder.trainable_variables))]
    for step in (1, 2, 3):
        decoder = network.get_layer("step%d_decoder" % step)
        inputs = tuple(tf.constant(features[level].numpy()) for level in range(3, 2 - step, -1)) + (moving, fixed)
        parts.append(("step %d decoder" % step, 1, gradient_timer(lambda *x, d=decoder: d(list(x), training=True),
                                                                  inputs, decoder.trainable_variables)))
    for factor in STEP_DOWNSAMPLING[:2]:
        parts.append(("rescale a 1/%d field" % factor, 1,
                      gradient_timer(RescaleFlow(factor), (field(factor),))))
    parts.append(("warp an image (zeros)", 4, gradient_timer(lambda i, u: warp(i, u, "zeros"), (image(), field()))))
    parts.append(("compose 3 fields", 1, gradient_timer(lambda a, b, c: compose_flows([a, b, c], "zeros"),
                                                        (field(), field(), field()))))
    similarity = SIMILARITIES.load(config.similarity)(config)
    parts.append(("multi-window NCC", 1, gradient_timer(lambda f, m: similarity(f, m), (fixed, image()))))
    parts.append(("L2 smoothness", 1, gradient_timer(smoothness_loss("l2"), (field(),))))

    batch = {"moving": moving, "fixed": fixed}
    train_step = tf.function(model.train_step)
    step_ms = median_ms(lambda: float(train_step(batch)["sim_loss"]), FLAGS.steps)
    print("machine: %s" % machine_description())
    print("ULAE-net train step at %s, batch 1, reference objective; median of %d after a warm-up\n"
          % ("x".join(map(str, shape)), FLAGS.steps))
    print("%-26s %10s %6s %12s %8s" % ("part (forward + gradient)", "ms", "x", "ms per step", "share"))
    accounted = 0.0
    for name, count, timer in parts:
        ms = median_ms(timer, FLAGS.steps)
        accounted += count * ms
        print("%-26s %10.1f %6d %12.1f %7.1f%%" % (name, ms, count, count * ms, 100.0 * count * ms / step_ms))
    print("%-26s %10s %6s %12.1f %7.1f%%" % ("parts together", "", "", accounted, 100.0 * accounted / step_ms))
    print("%-26s %10s %6s %12.1f %7.1f%%" % ("whole train step", "", "", step_ms, 100.0))


if __name__ == "__main__":
    app.run(main)
