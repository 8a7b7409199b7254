"""Timing helpers for the speed figures (``benchmarks/``) and the paper comparison's Table 2.

Every figure is printed with :func:`machine_description`: absolute times differ several-fold between
machines, so compare only figures measured in one run on one machine.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import os
import platform
import time

import numpy as np
import tensorflow as tf


#: The CPU vector extensions that decide convolution speed on CPUs (oneDNN picks its kernels by them).
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_description(cpuinfo="/proc/cpuinfo"):
    """CPU model and its vector extensions (of :data:`VECTOR_EXTENSIONS`) read from ``cpuinfo``, e.g.
    ``"AMD EPYC 7B13 (sse4_2 avx avx2 fma)"``; the platform's processor name where there is no such file."""
    cpu, extensions = platform.processor() or platform.machine(), []
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return cpu
    for line in lines:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            extensions = [name for name in VECTOR_EXTENSIONS if name in present]
            break
    return "%s (%s)" % (cpu, " ".join(extensions) or "no SSE4.2/AVX")


def machine_description():
    """CPU model, its vector extensions and cores, GPUs if any, TensorFlow version and whether its oneDNN CPU
    kernels are on (:mod:`gsmorph_tf.compat`): where and how timings were measured."""
    cpu = cpu_description()
    gpus = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.list_physical_devices("GPU")]
    return "%s, %d CPU cores, %s, TensorFlow %s, oneDNN %s" % (
        cpu, os.cpu_count(), "GPU: " + ", ".join(gpus) if gpus else "no GPU", tf.__version__,
        "on" if onednn_enabled() else "off")


def onednn_enabled():
    """Whether this TensorFlow process runs its oneDNN CPU kernels (TensorFlow's own test utilities read the same
    flag, which depends on the CPU and ``TF_ENABLE_ONEDNN_OPTS``)."""
    from tensorflow.python.util import _pywrap_util_port  # no public API tells it

    return bool(_pywrap_util_port.IsMklEnabled())


def times_ms(fn, steps, warmup=1):
    """Wall-clock ms of each of ``steps`` calls of ``fn()`` (a list, in call order), after ``warmup`` untimed calls
    (tracing, first allocations). ``fn`` must block until its work is done (e.g. convert a result to a Python
    float)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(1000.0 * (time.perf_counter() - start))
    return times


def median_ms(fn, steps, warmup=1):
    """Median wall-clock ms of ``fn()`` over ``steps`` calls, after ``warmup`` untimed calls (as :func:`times_ms`)."""
    return float(np.median(times_ms(fn, steps, warmup)))


def keras_train_step(model, batch, strategy=None):
    """One training step of the compiled Keras ``model`` on ``batch``, run as ``fit`` runs it, to time.

    Keras' train function (the traced ``train_step``) on one iterator that repeats ``batch`` (a dict or tuple of
    arrays, batch first), distributed by ``strategy`` when given. Returns a callable that runs one step, blocks
    until it is done and returns its logs as Python floats. ``train_on_batch`` is not used: it builds a new
    ``tf.data`` iterator on every call, and on our 2-core AMD EPYC about half of such calls then ended about
    630 ms after they began whatever the step (a 350 ms ULAE-net step at 32x48x32 included, the CPUs idle
    meanwhile), which ``fit``, iterating one dataset per epoch, does not do
    (``docs/results/speed.md``, "The two groups of step times").
    """
    data = tf.data.Dataset.from_tensors(batch).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(data) if strategy is not None else data)
    train_function = model.make_train_function()

    def step():
        return {name: float(value) for name, value in train_function(iterator).items()}
    return step


def compiled_predictor(network):
    """A predictor (see :func:`gsmorph_tf.evaluate.evaluation.evaluate_predictor`) running the whole stack in one
    call of the network's traced inference function (:func:`gsmorph_tf.evaluate.evaluation.inference_call`):
    no per-call Keras ``predict`` overhead, so per-pair times measure the network."""
    from gsmorph_tf.evaluate.evaluation import inference_call

    call = inference_call(network)

    def predict(moving, fixed):
        moved, flow = call(tf.constant(moving[..., None], tf.float32), tf.constant(fixed[..., None], tf.float32))
        return moved.numpy()[..., 0], flow.numpy()
    return predict


def pair_by_pair(predict, times_ms):
    """Wrap a predictor to run one pair at a time, appending each pair's wall-clock ms to ``times_ms``."""
    def run(moving, fixed):
        moved, flows = [], []
        for m, f in zip(moving, fixed):
            start = time.perf_counter()
            out_moved, out_flow = predict(m[None], f[None])
            times_ms.append(1000.0 * (time.perf_counter() - start))
            moved.append(out_moved[0])
            flows.append(out_flow[0])
        return np.stack(moved), np.stack(flows)
    return run
