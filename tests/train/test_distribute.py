"""tf.distribute: strategies by name, chief-only writing, gradient surgery on the global gradients under
MirroredStrategy and MultiWorkerMirroredStrategy, synchronised BatchNorm, mixed precision, and the whole run
(train_and_evaluate, run_train.py) on 2 replicas.

Cases that need 2 logical CPU devices or a multi-worker cluster run in subprocesses
(tests/train/distributed_cases.py): TensorFlow's devices are fixed once initialised, and the rest of the suite
initialises them in this process. One subprocess holds every mirrored case (one TensorFlow start-up); one
launch of two workers holds both multi-worker runs.
"""
import dataclasses
import json
import os
import socket
import subprocess
import sys

import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.core.model import GradientSurgeryModel
from gsmorph_tf.models.networks import build_gsmorph_unet
from gsmorph_tf.train import distribute
from gsmorph_tf.train.training import train_and_evaluate

import distributed_cases  # this folder is on sys.path (pytest's rootdir mode): the subprocesses' data and comparison
from conftest import ROOT

CASES = os.path.join(ROOT, "tests", "train", "distributed_cases.py")

#: Distributed and single-device steps must agree to float32 rounding (measured: ~5e-8 of the weights,
#: ~7e-7 of the step); the steps are ~5 % of the weights, so a wrong step size or projection cannot pass.
WEIGHTS_RTOL = 1e-5
UPDATE_RTOL = 1e-4


def case_env(**extra):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_CONFIG", None)  # only the multi-worker case gets one, its own
    env.update(extra)
    return env


def result_of(output, what):
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, "%s printed no RESULT line; its output ends with:\n%s" % (what, output[-3000:])
    return json.loads(lines[-1][len("RESULT "):])


class Launched:
    """Subprocesses started at once and collected later (their output goes to files: an unread pipe could
    fill up and stall them)."""

    def __init__(self, commands, envs, log_dir):
        self.logs = [open(os.path.join(log_dir, "process%d.log" % i), "w+", encoding="utf-8")
                     for i in range(len(commands))]
        self.processes = [subprocess.Popen(c, env=e, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
                          for c, e, log in zip(commands, envs, self.logs)]

    def wait(self, timeout):
        """Wait for all (killing every one still running on timeout or error); return their
        (returncode, output)."""
        try:
            for p in self.processes:
                p.wait(timeout=timeout)
        finally:
            self.kill()
        outputs = []
        for log in self.logs:
            log.seek(0)
            outputs.append(log.read())
            log.close()
        return [(p.returncode, out) for p, out in zip(self.processes, outputs)]

    def kill(self):
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module", autouse=True)
def launched(tmp_path_factory):
    """Starts the subprocess cases when this module's first test begins, so that they run while the tests
    in this process do: tests/train/distributed_cases.py mirrored (2 logical CPU replicas: a whole run, then the
    steps compared with one device) and two workers of tests/train/distributed_cases.py multi_worker on localhost.
    Returns ``{name: (Launched, folder)}``."""
    mirrored_dir, cluster_dir = tmp_path_factory.mktemp("mirrored"), tmp_path_factory.mktemp("cluster")
    ports = free_ports(2)
    spec = {"worker": ["localhost:%d" % p for p in ports]}
    envs = [case_env(TF_CONFIG=json.dumps({"cluster": spec, "task": {"type": "worker", "index": i}}))
            for i in range(len(ports))]
    worker = [sys.executable, CASES, "multi_worker", "--run_dir=%s" % (cluster_dir / "run"),
              "--own_dir=%s" % (cluster_dir / "worker1_disk")]
    cases = {"mirrored": (Launched([[sys.executable, CASES, "mirrored", "--run_dir=%s" % (mirrored_dir / "run")]],
                                   [case_env()], mirrored_dir), mirrored_dir),
             "multi_worker": (Launched([worker] * len(ports), envs, cluster_dir), cluster_dir)}
    yield cases
    for processes, _ in cases.values():
        processes.kill()


@pytest.fixture(scope="module")
def mirrored(launched):
    """The mirrored case's results and its run folder."""
    processes, folder = launched["mirrored"]
    [(code, output)] = processes.wait(timeout=300)
    assert code == 0, output[-3000:]
    return result_of(output, "the mirrored case"), folder / "run"


# ---- strategies, TF_CONFIG, chief ------------------------------------------------------------------------

def test_importing_distribute_does_not_load_tensorflow():
    code = "import sys, gsmorph_tf.train.distribute; print('tensorflow' in sys.modules)"
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


# ---- settings ---------------------------------------------------------------------------------------------

def phantom_config(tmp_path, **settings):
    return distributed_cases.phantom_config(str(tmp_path / "run"), **settings)


@pytest.mark.parametrize("settings, message", [
    (dict(model="hypermorph", surgery="none", mixed_precision=True),
     "mixed_precision is not available for model=hypermorph"),
    (dict(model="hypermorph", surgery="none", mixed_precision=True), "models that support it: gsmorph"),
    (dict(strategy="default", cpu_replicas=2), "cpu_replicas=2 splits the CPU for strategy=mirrored"),
    (dict(strategy="mirrored", cpu_replicas=-1), "cpu_replicas must be an integer >= 0"),
    (dict(sync_batchnorm=True), "sync_batchnorm synchronises BatchNorm across replicas"),
    (dict(strategy="mirrored", sync_batchnorm=True, model="ulae"), "model=ulae has no BatchNorm"),
    (dict(strategy="horovod"), "strategy='horovod' is not one of: default, mirrored, multi_worker"),
])
def test_device_settings_are_checked_before_anything_is_written(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(phantom_config(tmp_path, **settings), verbose=0, log=lambda *args: None)
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "phantom")


def test_multi_worker_without_tf_config_is_a_clear_error_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="strategy=multi_worker: .*TF_CONFIG environment variable"):
        train_and_evaluate(phantom_config(tmp_path, strategy="multi_worker"), verbose=0, log=lambda *args: None)
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "phantom")


@pytest.mark.parametrize("flags, message", [
    (["--strategy=mirrored", "--cpu_replicas=3", "--batch_size=4"], "batch_size=4 is the global batch, split "
                                                                     "evenly over the cpu_replicas=3 replicas"),
    (["--sync_batchnorm"], "sync_batchnorm synchronises BatchNorm across replicas; strategy=default has one"),
    (["--strategy=mirrored", "--mixed_precision", "--model=hypermorph", "--surgery=none"],
     "mixed_precision is not available for model=hypermorph"),
])
def test_run_train_device_flags_are_checked_at_once(tmp_path, flags, message):
    """run_train.py checks the device flags before TensorFlow loads: one error line, exit 2, nothing written."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, "run_train.py"), "--dataset=phantom",
                           "--data_dir=%s" % (tmp_path / "phantom"), "--output_dir=%s" % (tmp_path / "run"), *flags],
                          cwd=tmp_path, env=case_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: " + message in done.stderr
    assert "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "run") and not os.path.exists(tmp_path / "phantom")


def test_cpu_replicas_on_a_machine_with_gpus_is_refused(monkeypatch):
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [gpu] if kind == "GPU" else [])
    with pytest.raises(ValueError, match="cpu_replicas=2 splits the CPU for machines without GPUs, but this one "
                                         "has 1 GPU"):
        distribute.create_strategy("mirrored", cpu_replicas=2)


def test_resuming_keeps_the_strategy_but_not_the_device_count(tmp_path):
    """A run resumes under the same strategy, BatchNorm synchronisation and precision (each changes what a
    step computes); the number of devices may change, as the number of GPUs can."""
    path = str(tmp_path / "config.json")
    TrainConfig(dataset="phantom", data_dir="d", strategy="mirrored", cpu_replicas=2).save(path)
    TrainConfig(dataset="phantom", data_dir="d", strategy="mirrored", cpu_replicas=4).check_resumable(path)
    for change, message in [(dict(strategy="default", cpu_replicas=0), "strategy: 'mirrored' before, 'default' now"),
                            (dict(sync_batchnorm=True), "sync_batchnorm: False before, True now"),
                            (dict(mixed_precision=True), "mixed_precision: False before, True now")]:
        settings = dict(dict(dataset="phantom", data_dir="d", strategy="mirrored", cpu_replicas=2), **change)
        with pytest.raises(ConfigError, match=message):
            TrainConfig(**settings).check_resumable(path)


# ---- (d): mixed precision ---------------------------------------------------------------------------------

def test_mixed_precision_from_the_config_keeps_the_flow_head_and_outputs_float32():
    """The gsmorph entry with mixed_precision: float16 body, float32 flow head, transformer, weights and
    outputs, a LossScaleOptimizer; without it everything is float32 as before."""
    from gsmorph_tf.models.gsmorph import MODEL

    config = dataclasses.replace(distributed_cases.phantom_config("unused"), mixed_precision=True)
    mixed = MODEL.build_network(config, (16, 16))
    assert mixed.get_layer("enc0_conv1").compute_dtype == mixed.get_layer("enc0_bn1").compute_dtype == "float16"
    assert mixed.get_layer("flow").compute_dtype == mixed.get_layer("moved").compute_dtype == "float32"
    assert all(v.dtype == tf.float32 for v in mixed.weights)
    assert [o.dtype for o in mixed.outputs] == [tf.float32, tf.float32]
    assert isinstance(MODEL.build_training_model(config, mixed).optimizer,
                      tf.keras.mixed_precision.LossScaleOptimizer)
    plain_config = dataclasses.replace(config, mixed_precision=False)
    plain = MODEL.build_network(plain_config, (16, 16))
    assert {layer.dtype_policy.name for layer in plain.layers} == {"float32"}
    assert not isinstance(MODEL.build_training_model(plain_config, plain).optimizer,
                          tf.keras.mixed_precision.LossScaleOptimizer)
    assert sum(int(np.prod(v.shape)) for v in mixed.trainable_variables) == sum(
        int(np.prod(v.shape)) for v in plain.trainable_variables)


def well_defined(variables):
    """Indices of tensors whose gradients are not zero in exact arithmetic. Excluded: biases of convs that
    BatchNorm follows (BatchNorm removes them) and the flow head's bias (a constant displacement has no
    spatial gradient, so its g_reg is rounding noise): for these the projection's choice is decided by
    rounding, which float16 changes (measured: their steps are ~1e-7, a 100x-different noise)."""
    return [i for i, v in enumerate(variables)
            if not (v.name.endswith("bias:0") and ("_conv" in v.name or v.name.startswith("flow")))]


def mixed_precision_step(network, start, initial_scale=None):
    """One eager SGD step of ``network`` from weights ``start``; a LossScaleOptimizer for a mixed network."""
    network.set_weights(start)
    optimizer = tf.keras.optimizers.SGD(1.0)
    if network.get_layer("enc0_conv1").compute_dtype == "float16":
        kwargs = {} if initial_scale is None else {"initial_scale": initial_scale}
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer, **kwargs)
    model = GradientSurgeryModel(network, surgery="layerwise", lam=0.5)
    model.compile(optimizer=optimizer, run_eagerly=True)
    data = tf.data.Dataset.from_tensor_slices(distributed_cases.pairs()).batch(8)
    model.fit(data, epochs=1, verbose=0)
    return [v.numpy() for v in network.trainable_variables], optimizer


def test_mixed_precision_step_is_finite_close_to_float32_and_skips_overflow():
    tf.keras.utils.set_random_seed(1)
    network = build_gsmorph_unet((16, 16), features=(4, 8))
    head = network.get_layer("flow").kernel
    head.assign(tf.random.stateless_normal(head.shape, seed=[4, 0], stddev=0.05))
    start = network.get_weights()
    initial = [v.numpy() for v in network.trainable_variables]
    keep = well_defined(network.trainable_variables)
    pick = lambda ws: [ws[i] for i in keep]  # noqa: E731

    reference, _ = mixed_precision_step(network, start)
    mixed = build_gsmorph_unet((16, 16), features=(4, 8), dtype_policy="mixed_float16")
    mixed_weights, optimizer = mixed_precision_step(mixed, start)
    assert float(optimizer.loss_scale) == 2.0 ** 15  # both losses were scaled, the step was taken
    assert all(np.isfinite(w).all() for w in mixed_weights)
    found = distributed_cases.compare(pick(initial), pick(reference), pick(mixed_weights))
    # float16 keeps 11 significant bits (unit roundoff 4.9e-4); activations are rounded in each of the ~10
    # layers forward and again backward, and the conflict decisions see the rounded gradients. Measured:
    # 7e-3 of the step. 3e-2 leaves room across machines; a missing unscale (x 32768) or a skipped step
    # (update_rel 1) is far outside it.
    assert found["update_rel"] < 3e-2

    # A loss scale so large that float16 gradients overflow: the step is skipped, the scale halved.
    overflowed, optimizer = mixed_precision_step(mixed, start, initial_scale=2.0 ** 40)
    assert float(optimizer.loss_scale) == 2.0 ** 39
    assert all(np.array_equal(w, v) for w, v in zip(initial, overflowed))


# ---- (e): synchronised BatchNorm --------------------------------------------------------------------------

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


# ---- results of the subprocess cases (started at the module's first test) ----------------------------------

# ---- the whole run on 2 replicas ----------------------------------------------------------------------------

def test_a_whole_run_on_two_mirrored_replicas(mirrored):
    """train_and_evaluate with strategy=mirrored, cpu_replicas=2 on the tiny phantom (one step, 2 pairs per replica):
    trains, evaluates, checkpoints and exports like a one-device run."""
    found, run_dir = mirrored
    run = found["run"]
    assert run["replicas"] == 2 and run["chief"] and run["epochs_run"] == 1
    assert all(np.isfinite(v[0]) for v in run["history"].values())
    # The logged validation loss is the MSE of the validation pairs (not summed over replicas).
    assert run["history"]["val_sim_loss"][0] == pytest.approx(run["history"]["val_mse"][0], rel=1e-3)
    assert json.loads((run_dir / "config.json").read_text())["strategy"] == "mirrored"
    report = json.loads((run_dir / "evaluation.json").read_text())
    assert np.isfinite(report["methods"]["Model"]["summary"]["dice_mean"]["mean"])
    assert run["export_dir"] == str(run_dir / "export" / "tiny_phantom" / "1")
    assert (run_dir / "export" / "tiny_phantom" / "1" / "saved_model.pb").exists()
    assert (run_dir / "checkpoints" / "chief" / "ckpt-1.index").exists()


# ---- (a), (b): gradient surgery on the global gradients ---------------------------------------------------

@pytest.mark.parametrize("mode", ["layerwise", "pcgrad", "none"])
def test_mirrored_step_equals_single_device_step(mirrored, mode):
    """layerwise is traced into a graph (fit's usual path), pcgrad and none run eagerly."""
    found = mirrored[0]
    assert found["replicas"] == 2
    step = found["modes"][mode]["global"]
    assert step["step_rel"] > 1e-2  # the step is large enough for the comparison to mean something
    assert step["weights_rel"] < WEIGHTS_RTOL
    assert step["update_rel"] < UPDATE_RTOL


@pytest.mark.parametrize("mode", ["layerwise", "pcgrad"])
def test_per_replica_projection_would_be_caught(mirrored, mode):
    """Projecting each replica's gradients and summing (even with correctly scaled losses) is a different
    step (measured: 13 % of the step for layerwise, 11 % for pcgrad; ~6e-3 of the weights): the test above
    can fail."""
    naive = mirrored[0]["modes"][mode]["per_replica"]
    assert naive["weights_rel"] > 100 * WEIGHTS_RTOL
    assert naive["update_rel"] > 100 * UPDATE_RTOL


def test_hypermorph_step_is_scaled_to_the_global_batch(mirrored):
    """One backward pass per replica, summed by the optimizer: same step as one device (a missing 1/2 would
    double it, update_rel = 1)."""
    assert mirrored[0]["hypermorph"]["update_rel"] < UPDATE_RTOL


def test_sync_batchnorm_conversion_trains_like_one_device(mirrored):
    found = mirrored[0]["sync_bn"]
    assert found["bn_layers"] == found["synchronized"] == 6
    assert found["finite"]
    # With global batch statistics the 2-replica step is the one-device step (surgery none) ...
    assert found["synchronized_vs_single"]["update_rel"] < UPDATE_RTOL
    # ... while per-replica statistics give another step (measured: 23 % of the step).
    assert found["local_bn_vs_single"]["update_rel"] > 100 * UPDATE_RTOL


# ---- (c): two workers on localhost ------------------------------------------------------------------------

def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, files in os.walk(path) for f in files)


def test_two_workers_train_write_only_on_the_chief_and_resume(launched):
    """Two runs of the whole pipeline (a two-level GSMorph U-Net) on a 2-worker cluster; see
    tests/train/distributed_cases.py case_multi_worker."""
    processes, folder = launched["multi_worker"]
    done = processes.wait(timeout=300)
    for i, (code, output) in enumerate(done):
        assert code == 0, "worker %d failed:\n%s" % (i, output[-3000:])
    chief, worker = [result_of(output, "worker %d" % i) for i, (_, output) in enumerate(done)]
    run_dir, own_dir = folder / "run", folder / "worker1_disk"
    for key in ("first", "second"):
        assert (chief[key]["chief"], worker[key]["chief"]) == (True, False)
        assert chief[key]["replicas"] == worker[key]["replicas"] == 2
        # Every worker evaluates the same network: same weights everywhere.
        assert chief[key]["model_mse"] == worker[key]["model_mse"]
        # The logged validation loss is the MSE of the validation pairs, as the callback measures it (Keras'
        # default reduction would multiply it by the number of workers).
        history = chief[key]["history"]
        assert history["val_sim_loss"][0] == pytest.approx(history["val_mse"][0], rel=1e-3)
    # The first run: 2 steps, no export; the non-chief worker, given a folder of its own, left no file in it.
    assert chief["first"]["epochs_run"] == 1 and files_under(own_dir) == []
    # The second run (same folder, 2 epochs) restored the chief's checkpoint and trained epoch 2 only.
    assert chief["second"]["epochs_run"] == worker["second"]["epochs_run"] == 1
    assert chief["second"]["history"]["sim_loss"] != chief["first"]["history"]["sim_loss"]
    train = EventAccumulator(str(run_dir / "tensorboard" / "train"), size_guidance={"tensors": 0}).Reload()
    assert sorted({event.step for event in train.Tensors("step/sim_loss")}) == [0, 1, 2, 3]  # steps continued

    # Only the chief's files are in the run folder: its TensorBoard events (named with its process id), one
    # checkpoint folder, the evaluation and the second run's SavedModel; no worker's temporary folder.
    files = files_under(run_dir)
    events = [f for f in files if "tfevents" in f]
    assert events and all(".%d." % chief["first"]["pid"] in f for f in events)
    assert not [f for f in files if "workertemp" in f or "nonchief" in f]
    assert sorted({f.split(os.sep)[1] for f in files if f.startswith("checkpoints")}) == ["chief"]
    assert {"config.json", "evaluation.json", "evaluation.md"} <= set(files)
    assert os.listdir(run_dir / "export" / "tiny_phantom") == ["1"]
    assert chief["second"]["export_dir"] == str(run_dir / "export" / "tiny_phantom" / "1")
    assert worker["second"]["export_dir"] is None  # it saved too, into a temporary folder


def test_resuming_takes_the_data_folder_written_relative_or_absolute(tmp_path, monkeypatch):
    """A run started with a relative ``data_dir`` resumes with the same folder written absolute (and the reverse);
    another folder is still refused, naming both."""
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "config.json")
    TrainConfig(dataset="phantom", data_dir="data_cache/phantom").save(path)
    TrainConfig(dataset="phantom", data_dir=str(tmp_path / "data_cache" / "phantom")).check_resumable(path)
    absolute = str(tmp_path / "absolute.json")
    TrainConfig(dataset="phantom", data_dir=str(tmp_path / "data_cache" / "phantom")).save(absolute)
    TrainConfig(dataset="phantom", data_dir="data_cache/phantom").check_resumable(absolute)
    with pytest.raises(ConfigError, match="data_dir: 'data_cache/phantom' before, 'other' now"):
        TrainConfig(dataset="phantom", data_dir="other").check_resumable(path)
