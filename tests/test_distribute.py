"""tf.distribute: strategies by name, chief-only writing, gradient surgery on the global gradients under
MirroredStrategy and MultiWorkerMirroredStrategy, synchronised BatchNorm, mixed precision.

Cases that need 2 logical CPU devices or a multi-worker cluster run in subprocesses
(tests/distributed_cases.py): TensorFlow's devices are fixed once initialised, and the rest of the suite
initialises them in this process.
"""
import json
import os
import socket
import subprocess
import sys

import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from gsmorph_tf import distribute
from gsmorph_tf.model import GradientSurgeryModel
from gsmorph_tf.networks import build_gsmorph_unet

import distributed_cases  # tests/ is on sys.path (see conftest.py): the subprocesses' data and comparison

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = os.path.join(REPO, "tests", "distributed_cases.py")

#: Distributed and single-device steps must agree to float32 rounding (measured: ~1e-7 of the weights,
#: ~1e-6 of the step); the steps are ~5 % of the weights, so a wrong step size or projection cannot pass.
WEIGHTS_RTOL = 1e-5
UPDATE_RTOL = 1e-4


def case_env(**extra):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)  # only the multi-worker case gets one, its own
    env.update(extra)
    return env


def result_of(output, what):
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, "%s printed no RESULT line; its output ends with:\n%s" % (what, output[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


def run_processes(commands, envs, timeout):
    """Start all commands at once, wait for all (killing every one still running on timeout or error);
    return their (returncode, stdout + stderr)."""
    processes = [subprocess.Popen(c, env=e, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for c, e in zip(commands, envs)]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, out) for p, out in zip(processes, outputs)]


@pytest.fixture(scope="module")
def mirrored():
    """Results of tests/distributed_cases.py mirrored: 2 logical CPU replicas against one device."""
    [(code, output)] = run_processes([[sys.executable, CASES, "mirrored"]], [case_env()], timeout=900)
    assert code == 0, output[-3000:]
    return result_of(output, "the mirrored case")


# ---- strategies, TF_CONFIG, chief ------------------------------------------------------------------------

def test_importing_distribute_does_not_load_tensorflow():
    code = "import sys, gsmorph_tf.distribute; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], env=case_env(), capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize("raw, message", [
    (None, "TF_CONFIG environment variable, which is not set"),
    ("{cluster", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "'host:port'"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "task type 'chief' is not in"),
    ('{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 2}}', "index 2 is out of range"),
])
def test_malformed_tf_config_is_named(raw, message):
    environ = {} if raw is None else {"TF_CONFIG": raw}
    with pytest.raises(ValueError, match=message) as error:
        distribute.read_tf_config(environ)
    assert "TF_CONFIG" in str(error.value)


def test_multi_worker_without_tf_config_fails_before_touching_tensorflow(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.create_strategy("multi_worker")


def test_strategy_names_and_options_are_checked():
    with pytest.raises(ValueError, match="valid strategies are: default, mirrored, multi_worker"):
        distribute.create_strategy("horovod")
    with pytest.raises(ValueError, match="only applies to strategy mirrored"):
        distribute.create_strategy("default", cpu_replicas=2)
    assert distribute.create_strategy("default").num_replicas_in_sync == 1


def test_cpu_replicas_after_tensorflow_started_is_a_clear_error():
    tf.constant(0.0)  # TensorFlow has initialised its devices (one CPU) by now
    with pytest.raises(RuntimeError, match="before any tensor, model, dataset or strategy is created"):
        distribute.configure_cpu_replicas(3)
    assert len(distribute.configure_cpu_replicas(len(tf.config.list_logical_devices("CPU")))) >= 1  # no change: fine


def cluster(task_type, index, types=("worker",)):
    spec = {t: ["localhost:%d" % (1000 + i) for i in range(2)] for t in types}
    return {"TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": task_type, "index": index}})}


def test_chief_is_worker_zero_or_the_chief_task():
    assert distribute.is_chief(environ={})  # no cluster: a single process writes
    assert distribute.is_chief(environ=cluster("worker", 0))
    assert not distribute.is_chief(environ=cluster("worker", 1))
    assert distribute.is_chief(environ=cluster("chief", 0, types=("chief", "worker")))
    assert not distribute.is_chief(environ=cluster("worker", 0, types=("chief", "worker")))
    assert distribute.is_chief(tf.distribute.get_strategy())


def test_chief_write_dir_writes_only_on_the_chief(tmp_path, monkeypatch):
    target = tmp_path / "export"
    monkeypatch.setenv("TF_CONFIG", cluster("worker", 1)["TF_CONFIG"])
    with distribute.chief_write_dir(str(target)) as where:
        (open(os.path.join(where, "model.txt"), "w")).close()
        assert os.path.exists(os.path.join(where, "model.txt"))
    assert not os.path.exists(where) and not target.exists()  # the worker's copy is gone, nothing in the run dir
    monkeypatch.setenv("TF_CONFIG", cluster("worker", 0)["TF_CONFIG"])
    with distribute.chief_write_dir(str(target)) as where:
        (open(os.path.join(where, "model.txt"), "w")).close()
    assert where == str(target) and (target / "model.txt").exists()


# ---- (a), (b): gradient surgery on the global gradients ---------------------------------------------------

@pytest.mark.parametrize("mode", ["layerwise", "pcgrad", "none"])
def test_mirrored_step_equals_single_device_step(mirrored, mode):
    assert mirrored["replicas"] == 2
    found = mirrored["modes"][mode]["global"]
    assert found["step_rel"] > 1e-2  # the step is large enough for the comparison to mean something
    assert found["weights_rel"] < WEIGHTS_RTOL
    assert found["update_rel"] < UPDATE_RTOL


@pytest.mark.parametrize("mode", ["layerwise", "pcgrad"])
def test_per_replica_projection_would_be_caught(mirrored, mode):
    """Projecting each replica's gradients and summing (even with correctly scaled losses) is a different
    step (measured: ~10 % of the step, ~6e-3 of the weights): the test above can fail."""
    naive = mirrored["modes"][mode]["per_replica"]
    assert naive["weights_rel"] > 100 * WEIGHTS_RTOL
    assert naive["update_rel"] > 100 * UPDATE_RTOL


def test_hypermorph_step_is_scaled_to_the_global_batch(mirrored):
    """One backward pass per replica, summed by the optimizer: same step as one device (a missing 1/2 would
    double it, update_rel = 1)."""
    assert mirrored["hypermorph"]["update_rel"] < UPDATE_RTOL


# ---- (c): two workers on localhost ------------------------------------------------------------------------

def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def launch_workers(backup_dir, epochs, ports):
    spec = {"worker": ["localhost:%d" % p for p in ports]}
    envs = [case_env(TF_CONFIG=json.dumps({"cluster": spec, "task": {"type": "worker", "index": i}}))
            for i in range(len(ports))]
    command = [sys.executable, CASES, "multi_worker", "--backup_dir=%s" % backup_dir, "--epochs=%d" % epochs]
    done = run_processes([command] * len(ports), envs, timeout=420)
    for i, (code, output) in enumerate(done):
        assert code == 0, "worker %d failed:\n%s" % (i, output[-3000:])
    return [result_of(output, "worker %d" % i) for i, (_, output) in enumerate(done)]


def test_two_workers_train_checkpoint_on_the_chief_and_resume(tmp_path):
    backup = tmp_path / "backup"
    first = launch_workers(backup, epochs=1, ports=free_ports(2))
    assert [r["chief"] for r in first] == [True, False]
    assert all(r["replicas"] == 2 and r["iterations_at_begin"] == 0 and r["iterations"] == 2 for r in first)
    assert first[0]["weights_sum"] == first[1]["weights_sum"]  # the workers hold the same model
    # One checkpoint, written by the chief; the other worker's temporary copy was removed.
    assert sorted(os.listdir(backup)) == ["chief"]
    assert [f for f in os.listdir(backup / "chief") if f.endswith(".index")] == ["ckpt-1.index"]
    assert os.listdir(tmp_path / "export") == ["written_by.txt"]
    assert (tmp_path / "export" / "written_by.txt").read_text() == "0"

    second = launch_workers(backup, epochs=2, ports=free_ports(2))  # a new launch of the same job
    assert all(r["iterations_at_begin"] == 2 and r["iterations"] == 4 and r["epochs_run"] == 1 for r in second)
    assert second[0]["weights_sum"] == second[1]["weights_sum"] != first[0]["weights_sum"]


# ---- (d): mixed precision ---------------------------------------------------------------------------------

def test_mixed_precision_network_keeps_outputs_float32_and_default_is_unchanged():
    default = build_gsmorph_unet((16, 16), features=(4, 8))
    assert {layer.dtype_policy.name for layer in default.layers} == {"float32"}
    mixed = build_gsmorph_unet((16, 16), features=(4, 8), dtype_policy="mixed_float16")
    assert mixed.get_layer("enc0_conv1").compute_dtype == "float16"
    assert mixed.get_layer("enc0_bn1").compute_dtype == "float16"
    assert mixed.get_layer("flow").compute_dtype == mixed.get_layer("moved").compute_dtype == "float32"
    assert all(v.dtype == tf.float32 for v in mixed.weights)
    assert [o.dtype for o in mixed.outputs] == [tf.float32, tf.float32]
    assert sum(int(np.prod(v.shape)) for v in mixed.trainable_variables) == sum(
        int(np.prod(v.shape)) for v in default.trainable_variables)


def well_defined(variables):
    """Indices of tensors whose gradients are not zero in exact arithmetic. Excluded: biases of convs that
    BatchNorm follows (BatchNorm removes them) and the flow head's bias (a constant displacement has no
    spatial gradient, so its g_reg is rounding noise): for these the projection's choice is decided by
    rounding, which float16 changes (measured: their steps are ~1e-7, a 100x-different noise)."""
    return [i for i, v in enumerate(variables)
            if not (v.name.endswith("bias:0") and ("_conv" in v.name or v.name.startswith("flow")))]


def mixed_precision_step(policy, start, initial_scale=None):
    network = build_gsmorph_unet((16, 16), features=(4, 8), dtype_policy=policy)
    network.set_weights(start)
    optimizer = tf.keras.optimizers.SGD(1.0)
    if policy is not None:
        kwargs = {} if initial_scale is None else {"initial_scale": initial_scale}
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer, **kwargs)
    model = GradientSurgeryModel(network, surgery="layerwise", lam=0.5)
    model.compile(optimizer=optimizer)
    data = tf.data.Dataset.from_tensor_slices(distributed_cases.pairs()).batch(8)
    model.fit(data, epochs=1, verbose=0)
    return network, optimizer


def test_mixed_precision_step_is_finite_close_to_float32_and_skips_overflow():
    tf.keras.utils.set_random_seed(1)
    network = build_gsmorph_unet((16, 16), features=(4, 8))
    head = network.get_layer("flow").kernel
    head.assign(tf.random.stateless_normal(head.shape, seed=[4, 0], stddev=0.05))
    start = network.get_weights()
    initial = [v.numpy() for v in network.trainable_variables]
    keep = well_defined(network.trainable_variables)
    pick = lambda ws: [ws[i] for i in keep]  # noqa: E731

    reference, _ = mixed_precision_step(None, start)
    mixed, optimizer = mixed_precision_step("mixed_float16", start)
    assert float(optimizer.loss_scale) == 2.0 ** 15  # both losses were scaled, the step was taken
    mixed_weights = [v.numpy() for v in mixed.trainable_variables]
    assert all(np.isfinite(w).all() for w in mixed_weights)
    found = distributed_cases.compare(pick(initial), pick([v.numpy() for v in reference.trainable_variables]),
                                      pick(mixed_weights))
    # float16 keeps 11 significant bits (unit roundoff 4.9e-4); activations are rounded in each of the ~10
    # layers forward and again backward, and the conflict decisions see the rounded gradients. Measured:
    # 7e-3 of the step. 3e-2 leaves room across machines; a missing unscale (x 32768) or a skipped step
    # (update_rel 1) is far outside it.
    assert found["update_rel"] < 3e-2

    # A loss scale so large that float16 gradients overflow: the step is skipped, the scale halved.
    overflowed, optimizer = mixed_precision_step("mixed_float16", start, initial_scale=2.0 ** 40)
    assert float(optimizer.loss_scale) == 2.0 ** 39
    assert all(np.array_equal(w, v.numpy()) for w, v in zip(initial, overflowed.trainable_variables))


# ---- (e): synchronised BatchNorm --------------------------------------------------------------------------

def test_sync_batchnorm_conversion_trains_like_one_device(mirrored):
    found = mirrored["sync_bn"]
    assert found["bn_layers"] == found["synchronized"] == 6
    assert found["finite"]
    # With global batch statistics the 2-replica step is the one-device step (surgery none) ...
    assert found["synchronized_vs_single"]["update_rel"] < UPDATE_RTOL
    # ... while per-replica statistics give another step (measured ~10 %).
    assert found["local_bn_vs_single"]["update_rel"] > 100 * UPDATE_RTOL


def test_sync_batchnorm_copies_weights_and_refuses_subclassed_models():
    network = build_gsmorph_unet((16, 16), features=(4, 8))
    converted = distribute.synchronize_batch_norm(network)
    assert [layer.name for layer in converted.layers] == [layer.name for layer in network.layers]
    assert all(np.array_equal(a, b) for a, b in zip(network.get_weights(), converted.get_weights()))
    assert all(layer.synchronized for layer in distribute.batch_norm_layers(converted))
    assert not any(layer.synchronized for layer in distribute.batch_norm_layers(network))

    class Subclassed(tf.keras.Model):
        def call(self, inputs):
            return inputs

    with pytest.raises(ValueError, match="subclassed"):
        distribute.synchronize_batch_norm(Subclassed())
