"""ULAE-net vs the GSMorph U-Net in 3D: forward time, start-up and train-step time, peak memory, export time;
multi-window loss cost.

For each network and volume size (batch 1) a fresh subprocess builds the network through its registry entry and
measures:

- the forward pass (``forward``: the traced call evaluation runs,
  :func:`gsmorph_tf.evaluate.evaluation.inference_call`; ``predict``: the same pair through Keras' ``predict``,
  which builds a ``tf.data`` pipeline per call);
- the start-up of training (building the training model and its first step through Keras' train function, as
  ``fit`` runs it: mostly tracing) and one train step, with the 3D protocol of ``flags/oasis_protocol.flags``
  (``--surgery``, by default ``none`` with lam 1, L2 smoothness, ULAE's multi-window NCC with the ``--ncc``
  formula, zero padding; ULAE-net with the reference's objective), in float32 or ``--mixed_precision``;
- the process's peak memory, read after training and before Keras' ``predict`` and the export: resident set size
  on CPU, ``tf.config.experimental.get_memory_info`` peak on a GPU;
- the time to export the network as the SavedModel TF Serving loads
  (:func:`gsmorph_tf.serve.export.export_saved_model`; ``--noexport``: not measured).

Train steps run Keras' train function on one iterator over the batch, as ``fit`` runs them;
``--runner=train_on_batch`` uses ``train_on_batch`` instead, a new ``tf.data`` iterator per call, with which about
half of the calls waited until about 630 ms after they began on our 2-core machine (``docs/results/speed.md``).
The median step is printed with the fastest and slowest.

Then the loss alone (``loss`` lines), forward + gradient with respect to the moved image, with the ``--ncc``
formula: multi-window NCC (11, 9, 7) and single-window NCC (9), each with window sums by separable box
filtering (:func:`gsmorph_tf.core.losses.box_sums`, what training uses) and by the direct ``w^3`` convolution
(:func:`gsmorph_tf.core.losses.box_sums_direct`, what voxelmorph's NCC and the ULAE reference code compute, and
what this project used before), with the ratios multi / single.

``--recompute`` measures ULAE-net with gradient checkpointing: its shared encoder and its three decoders each
wrapped in ``tf.recompute_grad`` (their activations recomputed in the backward pass instead of kept). Measured on
the 2-core AMD EPYC, float32, 80x96x80, reference NCC (``--sizes=80x96x80 --steps=2 --ncc=reference``): peak RSS
3712 MB without, 3571 MB with (-4 %), train step 2165 and 2745 ms (+27 %); not material, so training has no such
option (with grappler's graph rewrites switched off it was no better: 4017 and 4109 MB).

``--surgery=layerwise`` measures the train steps with GSMorph's gradient surgery (no lambda, two backward passes):
the 3D U-Net is then GSMorph-3D. ``--output`` also writes every result, the settings and the machine to a JSON
file (:mod:`benchmarks.gpu_session` collects them so).

Usage: ``python benchmarks/ulae.py [--sizes=80x96x80,160x192x160] [--steps=3] [--parts=networks,loss]
[--networks=gsmorph,ulae] [--surgery=layerwise] [--ncc=voxelmorph] [--mixed_precision] [--recompute]
[--runner=train_on_batch] [--noexport] [--output=results.json]``
"""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from gsmorph_tf.config import NCC_FORMULAS

#: What the script can measure (``--parts``).
PARTS = ("networks", "loss")
#: The networks of the ``networks`` part (``--networks``), by registry name.
NETWORKS = ("gsmorph", "ulae")

flags.DEFINE_list("sizes", ["80x96x80", "160x192x160"], "Volume sizes D x H x W (multiples of 16).")
flags.DEFINE_integer("steps", 3, "Timed repetitions (median) after one warm-up.", lower_bound=1)
flags.DEFINE_list("parts", list(PARTS), "What to measure, comma-separated: networks = forward, train step and "
                  "memory of each network; loss = the NCC losses alone.")
flags.DEFINE_enum("ncc", NCC_FORMULAS[0], NCC_FORMULAS, "Local NCC formula of the train step and the loss lines "
                  "(see gsmorph_tf.core.losses.local_ncc).")
flags.DEFINE_boolean("mixed_precision", False, "Train the networks in mixed_float16 (loss scaling; GPUs only: "
                     "TensorFlow's CPU kernels have no float16 MaxPool3D, so both networks fail on a CPU).")
flags.DEFINE_enum("runner", "train_function", ["train_function", "train_on_batch"], "How each train step is run: "
                  "Keras' train function on one iterator, as fit runs it, or train_on_batch, which builds a new "
                  "tf.data iterator on every call (kept to reproduce the slow calls described in "
                  "docs/results/speed.md).")
flags.DEFINE_list("networks", list(NETWORKS), "Networks of the networks part, by registry name: gsmorph (the 3D "
                  "U-Net) and ulae (ULAE-net).")
flags.DEFINE_enum("surgery", "none", ["none", "layerwise"], "Gradient surgery of the measured train steps: none (the "
                  "lambda-weighted sum, lam 1) or layerwise (GSMorph's, no lambda: the U-Net is then GSMorph-3D).")
flags.DEFINE_boolean("export", True, "Also time the export of each network as a SavedModel (the export s column).")
flags.DEFINE_string("output", None, "Also write every result, the settings and the machine to this JSON file "
                    "(atomically).")
flags.DEFINE_boolean("recompute", False, "ULAE-net only: wrap its encoder and decoders in tf.recompute_grad (gradient "
                     "checkpointing), to measure what that saves.")
flags.register_validator("parts", lambda parts: bool(parts) and set(parts) <= set(PARTS),
                         "--parts takes networks, loss or both (comma-separated)")
flags.register_validator("networks", lambda names: bool(names) and set(names) <= set(NETWORKS),
                         "--networks takes gsmorph, ulae or both (comma-separated)")
flags.DEFINE_string("_child", None, "Internal: run one measurement 'network:size' and print JSON.")
FLAGS = flags.FLAGS


def _peak_memory_mb(tf):
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20, "GPU peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "process peak RSS"


def with_recomputation(builder):
    """``builder`` (of a Keras model called on a list of tensors) made to return a model whose call runs the built
    one inside ``tf.recompute_grad``: its activations are recomputed during the backward pass, not stored."""
    import tensorflow as tf

    class Recomputed(tf.keras.Model):
        def __init__(self, inner):
            super().__init__(name=inner.name + "_recomputed")
            self.inner = inner

        def call(self, inputs):
            return tf.recompute_grad(lambda *tensors: self.inner(list(tensors)))(*inputs)

    return lambda *args, **kwargs: Recomputed(builder(*args, **kwargs))


def measure(network_name, shape, steps, formula, mixed_precision, recompute=False, runner="train_function",
            surgery="none", export=True):
    """Forward and train-step median ms (and the fastest and slowest step), the start-up of training (s from
    building the training model to the end of its first step, most of it tracing the step), peak memory and the
    export's time (s) for one network at one shape (this process), built and trained through its registry entry with
    the 3D protocol of ``flags/oasis_protocol.flags`` (batch 1, ``surgery`` (``none``: lambda 1), L2 smoothness,
    multi-window NCC with ``formula``, zero padding; ULAE-net with the reference's objective: ``warp3``, PyTorch's
    initialisation), in mixed precision if asked; ``export_s`` None unless ``export``. ``runner``:
    ``train_function`` (:func:`gsmorph_tf.evaluate.timing.keras_train_step`, as ``fit`` runs a step) or
    ``train_on_batch``."""
    import tensorflow as tf

    from gsmorph_tf.config import TrainConfig
    from gsmorph_tf.evaluate.evaluation import inference_call
    from gsmorph_tf.evaluate.timing import keras_train_step, median_ms, times_ms
    from gsmorph_tf.models.networks import count_trainable_parameters
    from gsmorph_tf.registry import MODELS
    from gsmorph_tf.serve.export import export_saved_model

    own = {"ulae_moved": "warp3", "ulae_init": "pytorch"} if network_name == "ulae" else {}
    if recompute:
        from ulae_tf import networks

        networks.build_uncoupled_encoder = with_recomputation(networks.build_uncoupled_encoder)
        networks.build_step_decoder = with_recomputation(networks.build_step_decoder)
    config = TrainConfig(model=network_name, dataset="brain", data_dir="(random volumes)", surgery=surgery, lam=1.0,
                         similarity="multi_ncc", ncc=formula, reg_penalty="l2", warp_padding="zeros",
                         learning_rate=1e-4, batch_size=1, conflict_diagnostics=False, mixed_precision=mixed_precision,
                         **own).validate()
    plugin = MODELS.load(network_name)
    network = plugin.build_network(config, shape)
    rng = np.random.default_rng(0)
    batch = {"moving": tf.constant(rng.random((1, *shape, 1), np.float32)),
             "fixed": tf.constant(rng.random((1, *shape, 1), np.float32))}
    forward = inference_call(network)  # what evaluation and the study's inference times run
    forward_ms = median_ms(lambda: float(tf.reduce_sum(forward(batch["moving"], batch["fixed"])[1])), steps)
    started = time.perf_counter()
    model = plugin.build_training_model(config, network)
    if runner == "train_on_batch":
        step = lambda: model.train_on_batch(batch, return_dict=True)  # noqa: E731  (blocks: returns floats)
    else:
        step = keras_train_step(model, batch)  # Keras' train function on one iterator, as fit runs it
    step()  # traced, then run once
    first_step_s = time.perf_counter() - started
    step_times = times_ms(step, steps, warmup=1)
    memory, memory_kind = _peak_memory_mb(tf)
    # Keras' predict on the same pair, after the peak is read (its own trace would add to the training's memory)
    predict_ms = median_ms(lambda: network.predict(batch, verbose=0), steps)
    export_s = None
    if export:
        with tempfile.TemporaryDirectory() as scratch:  # the SavedModel TF Serving loads (three signatures traced)
            started = time.perf_counter()
            export_saved_model(network, os.path.join(scratch, network_name))
            export_s = time.perf_counter() - started
    params = count_trainable_parameters(network)
    return {"network": network_name, "surgery": surgery, "mixed_precision": mixed_precision, "shape": list(shape),
            "parameters": params, "forward_ms": forward_ms,
            "predict_ms": predict_ms, "export_s": export_s, "first_step_s": first_step_s,
            "train_step_ms": float(np.median(step_times)),
            "train_step_range_ms": [min(step_times), max(step_times)], "peak_mb": memory, "memory_kind": memory_kind}


#: The loss lines' columns: (key, windows, weights, window sums). ``direct``: the w^3 convolution.
LOSSES = (("multi_fast", (11, 9, 7), (1.0, 0.5, 0.25), "box_sums"), ("single_fast", (9,), (1.0,), "box_sums"),
          ("multi_direct", (11, 9, 7), (1.0, 0.5, 0.25), "box_sums_direct"),
          ("single_direct", (9,), (1.0,), "box_sums_direct"))


def loss_cost(shape, steps, formula):
    """Median ms of forward + gradient (with respect to the moved image) of each of :data:`LOSSES`."""
    import tensorflow as tf

    from gsmorph_tf.core import losses
    from gsmorph_tf.evaluate.timing import median_ms

    rng = np.random.default_rng(0)
    fixed, moved = (tf.constant(rng.random((1, *shape, 1), np.float32)) for _ in range(2))
    result = {}
    for name, windows, weights, sums in LOSSES:
        # Both images are arguments, as in a train step (not constants the graph optimiser could fold).
        @tf.function
        def value_and_grad(fixed, moved, windows=windows, weights=weights, sums=getattr(losses, sums)):
            with tf.GradientTape() as tape:
                tape.watch(moved)
                value = losses.windowed_ncc_loss(fixed, moved, windows, weights, formula, window_sums=sums)
            return value, tape.gradient(value, moved)
        result[name] = median_ms(lambda f=value_and_grad: float(f(fixed, moved)[0]), steps)
    return result


def parse_shape(text):
    shape = tuple(int(v) for v in text.lower().split("x"))
    if len(shape) != 3 or any(s <= 0 or s % 16 for s in shape):
        raise app.UsageError("size %r must be D x H x W, multiples of 16" % text)
    return shape


def main(argv):
    del argv
    if FLAGS._child:
        network_name, size = FLAGS._child.split(":")
        shape = parse_shape(size)
        result = (loss_cost(shape, FLAGS.steps, FLAGS.ncc) if network_name == "loss"
                  else measure(network_name, shape, FLAGS.steps, FLAGS.ncc, FLAGS.mixed_precision,
                               FLAGS.recompute and network_name == "ulae", FLAGS.runner, FLAGS.surgery,
                               FLAGS.export))
        print("RESULT " + json.dumps(result))
        return
    from gsmorph_tf.evaluate.timing import machine_description

    print("machine: %s" % machine_description())
    print("batch 1, median of %d steps after one warm-up (run by %s); each line measured in a fresh process; "
          "NCC formula %s; surgery %s; %s%s\n" % (
              FLAGS.steps, FLAGS.runner, FLAGS.ncc, FLAGS.surgery,
              "mixed_float16" if FLAGS.mixed_precision else "float32",
              "; ULAE-net with its encoder and decoders recomputed (tf.recompute_grad)" if FLAGS.recompute else ""))
    if "networks" in FLAGS.parts:
        print("%-8s %-12s %10s %12s %12s %14s %14s %17s %12s %10s" % (
            "network", "size", "params", "forward ms", "predict ms", "first step s", "train step ms", "step min-max ms",
            "peak MB", "export s"))
    names = (tuple(FLAGS.networks) if "networks" in FLAGS.parts else ()) + (("loss",) if "loss" in FLAGS.parts else ())
    results = []
    for size in FLAGS.sizes:
        shape = parse_shape(size)
        for network_name in names:
            done = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child=%s:%s" % (network_name, size),
                                   "--steps=%d" % FLAGS.steps, "--ncc=%s" % FLAGS.ncc,
                                   "--mixed_precision=%s" % FLAGS.mixed_precision, "--recompute=%s" % FLAGS.recompute,
                                   "--runner=%s" % FLAGS.runner, "--surgery=%s" % FLAGS.surgery,
                                   "--export=%s" % FLAGS.export],
                                  capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                error = (done.stderr.strip().splitlines() or ["no output"])[-1]
                print("%-8s %-12s failed (exit %d): %s" % (network_name, size, done.returncode, error))
                results.append({"network": network_name, "size": size, "failed": "exit %d: %s"
                                % (done.returncode, error)})
                continue
            r = json.loads(lines[0][7:])
            results.append(dict(r, network=network_name, size=size))
            if network_name == "loss":
                print("%-8s %-12s NCC forward + gradient: separable sums: multi-window (11,9,7) %.1f ms, single (9) "
                      "%.1f ms, multi/single %.2f; direct w^3 convolution: multi %.1f ms, single %.1f ms, "
                      "multi/single %.2f; separable multi / direct single %.2f"
                      % ("loss", size, r["multi_fast"], r["single_fast"], r["multi_fast"] / r["single_fast"],
                         r["multi_direct"], r["single_direct"], r["multi_direct"] / r["single_direct"],
                         r["multi_fast"] / r["single_direct"]))
            else:
                print("%-8s %-12s %10s %12.1f %12.1f %14.1f %14.1f %17s %12.0f %10s  (%s)" % (
                    network_name, size, "{:,}".format(r["parameters"]), r["forward_ms"], r["predict_ms"],
                    r["first_step_s"], r["train_step_ms"], "%.0f-%.0f" % tuple(r["train_step_range_ms"]),
                    r["peak_mb"], "-" if r["export_s"] is None else "%.1f" % r["export_s"], r["memory_kind"]))
    if FLAGS.output:
        from gsmorph_tf.evaluate.evaluation import write_json

        write_json(FLAGS.output, {"machine": machine_description(), "steps": FLAGS.steps, "runner": FLAGS.runner,
                                  "ncc": FLAGS.ncc, "surgery": FLAGS.surgery, "mixed_precision": FLAGS.mixed_precision,
                                  "recompute": FLAGS.recompute, "results": results})


if __name__ == "__main__":
    app.run(main)
