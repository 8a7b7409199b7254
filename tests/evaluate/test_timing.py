"""gsmorph_tf.evaluate.timing: where a benchmark ran (CPU model and vector extensions) and the median timer."""
import itertools

from gsmorph_tf.evaluate import timing

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme sse4_2 avx avx2 fma bmi2
processor\t: 1
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme sse4_2 avx avx2 fma bmi2
"""


def test_cpu_description_names_model_and_vector_extensions(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    assert timing.cpu_description(str(path)) == "AMD EPYC 7B13 64-Core Processor (sse4_2 avx avx2 fma)"


def test_cpu_description_without_cpuinfo_falls_back_to_the_platform(tmp_path):
    assert timing.cpu_description(str(tmp_path / "absent")).strip() != ""


def test_machine_description_names_cores_and_tensorflow():
    text = timing.machine_description()
    assert "CPU cores" in text and "TensorFlow" in text


def test_median_ms_skips_warmup_and_takes_the_median(monkeypatch):
    clock = itertools.count(0.0, 0.001)  # every perf_counter() call advances 1 ms
    calls = []
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    assert timing.median_ms(lambda: calls.append(1), steps=3, warmup=2) == 1.0
    assert len(calls) == 5


def test_keras_train_step_runs_fits_train_function_one_step_a_call():
    import numpy as np
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, input_shape=(3,))])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="mse")
    x = np.random.default_rng(0).random((4, 3), np.float32)
    step = timing.keras_train_step(model, (x, x.sum(axis=1, keepdims=True)))
    losses = [step()["loss"] for _ in range(3)]
    assert all(isinstance(loss, float) for loss in losses)
    assert int(model.optimizer.iterations.numpy()) == 3  # one optimiser step per call, on the same batch
    assert losses[2] < losses[0]
