"""Training on several devices or machines with ``tf.distribute``: strategies by name, logical CPU replicas,
chief-only writing and synchronised BatchNorm.

Importing this module does not load TensorFlow (``--help`` of an entry point stays instant); the functions
that need it import it, after :mod:`gsmorph_tf.compat` has selected legacy Keras.

How gradient surgery runs under a strategy is :class:`gsmorph_tf.core.model.GradientSurgeryModel`'s business: it
all-reduces the similarity and the smoothness gradients separately and projects once on the global ones.

Typical use (the strategy is created first, before any other TensorFlow work)::

    strategy = create_strategy("mirrored")            # or "multi_worker" with TF_CONFIG set
    with strategy.scope():
        network = build_gsmorph_unet(inshape)
        model = GradientSurgeryModel(network)
        model.compile(optimizer=tf.keras.optimizers.Adam(5e-3))
    model.fit(dataset_with_global_batch, ...)
"""
import contextlib
import json
import os
import shutil
import tempfile

# The strategy names belong to the settings vocabulary (light, for --help).
from gsmorph_tf.config import STRATEGIES  # noqa: F401  (re-exported)

#: The strategies this process created, by (name, cpu_replicas): see :func:`create_strategy`.
_CREATED = {}

_TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                      '"task": {"type": "worker", "index": 0}}')


def _tensorflow():
    from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)
    import tensorflow as tf

    return tf


def read_tf_config(environ=None):
    """Parse and check the ``TF_CONFIG`` environment variable of a multi-worker job.

    Args:
        environ: mapping to read instead of ``os.environ`` (tests).

    Returns:
        ``{"cluster": {task_type: ["host:port", ...]}, "task": {"type": str, "index": int}}``.

    Raises:
        ValueError: ``TF_CONFIG`` is missing, is not JSON, or its cluster/task do not fit together; the
            message names ``TF_CONFIG``, what is wrong and shows a valid example.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "")
    hint = "; expected e.g. TF_CONFIG='%s' (the same cluster on every worker, its own task index)" % (
        _TF_CONFIG_EXAMPLE)
    if not raw.strip():
        raise ValueError("strategy multi_worker needs the TF_CONFIG environment variable, which is not set" + hint)
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError("TF_CONFIG is not valid JSON (%s): %r%s" % (error, raw, hint)) from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError("TF_CONFIG has no 'cluster' mapping of task types to address lists: %r%s" % (raw, hint))
    for task_type, addresses in cluster.items():
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and ":" in a for a in addresses)):
            raise ValueError("TF_CONFIG cluster[%r] must be a non-empty list of 'host:port' strings, got %r%s"
                             % (task_type, addresses, hint))
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError("TF_CONFIG has no 'task' with 'type' and 'index': %r%s" % (raw, hint))
    if task["type"] not in cluster:
        raise ValueError("TF_CONFIG task type %r is not in the cluster (%s)%s"
                         % (task["type"], ", ".join(sorted(cluster)), hint))
    index = task["index"]
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise ValueError("TF_CONFIG task index %r is out of range for the %d %r address(es)%s"
                         % (index, len(cluster[task["type"]]), task["type"], hint))
    return {"cluster": cluster, "task": {"type": task["type"], "index": index}}


def _is_chief_task(task_type, task_id, has_chief_task):
    """The multi-worker convention: the ``chief`` task, or worker 0 of a cluster without one."""
    if task_type is None:
        return True  # not a multi-worker job
    if task_type == "chief":
        return True
    return task_type == "worker" and int(task_id) == 0 and not has_chief_task


def is_chief(strategy=None, environ=None):
    """Whether this process is the one that writes a run's files (checkpoints, logs, exports).

    Args:
        strategy: a ``tf.distribute`` strategy; its cluster resolver decides (``MultiWorkerMirroredStrategy``).
            None: read ``TF_CONFIG`` (absent: a single-process run, which is always the chief).
        environ: mapping to read instead of ``os.environ`` (tests).

    Returns:
        True on the chief (``chief`` task, or ``worker`` 0 when the cluster has no chief) and in any
        single-process run; False on the other workers.
    """
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and getattr(resolver, "task_type", None) is not None:
        return _is_chief_task(resolver.task_type, resolver.task_id,
                              "chief" in resolver.cluster_spec().as_dict())
    if strategy is not None:
        return True  # one process: default or MirroredStrategy
    environ = os.environ if environ is None else environ
    if not environ.get("TF_CONFIG", "").strip():
        return True
    config = read_tf_config(environ)
    return _is_chief_task(config["task"]["type"], config["task"]["index"], "chief" in config["cluster"])


@contextlib.contextmanager
def chief_write_dir(path, strategy=None):
    """Where this worker writes what belongs in directory ``path``: ``path`` itself on the chief, a fresh
    temporary directory on the other workers, deleted when the block ends.

    Every worker must run the writing code (saving reads variables that need all workers' cooperation, and
    the workers must issue the same collective operations in the same order), but only the chief's copy may
    land in ``path``; this is the pattern of TensorFlow's multi-worker Keras tutorial. The temporary
    directory is outside ``path`` so an interrupted worker leaves nothing in the run directory. (Keras'
    ``BackupAndRestore`` already does this for its own checkpoints.)

    Example::

        with chief_write_dir(os.path.join(run_dir, "export"), strategy) as target:
            network.save(os.path.join(target, "model"))

    Yields:
        The directory to write into (created if needed).
    """
    if is_chief(strategy):
        os.makedirs(path, exist_ok=True)
        yield path
        return
    temporary = tempfile.mkdtemp(prefix="gsmorph_nonchief_")
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def configure_cpu_replicas(n):
    """Split the CPU into ``n`` logical devices so ``MirroredStrategy`` can run ``n`` replicas without GPUs.

    The replicas share the same cores: this is for testing distributed code paths, not for speed.
    It must run before TensorFlow initialises its devices, i.e. before any tensor, model, dataset or
    strategy is created in this process (importing TensorFlow is fine).

    Returns:
        The names of the ``n`` logical CPU devices (``/device:CPU:0`` ...).

    Raises:
        ValueError: ``n < 1``, or the machine has GPUs (mirror over them instead).
        RuntimeError: TensorFlow already initialised its devices with another CPU layout.
    """
    if int(n) < 1:
        raise ValueError("cpu_replicas must be >= 1, got %r" % (n,))
    n = int(n)
    tf = _tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        raise ValueError("cpu_replicas=%d splits the CPU for machines without GPUs, but this one has %d GPU(s) (%s): "
                         "drop cpu_replicas to mirror over the GPUs" % (n, len(gpus), ", ".join(g.name for g in gpus)))
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as error:
        existing = tf.config.list_logical_devices("CPU")
        if len(existing) != n:
            raise RuntimeError(
                "cpu_replicas=%d: TensorFlow already initialised its devices (%d logical CPU device(s)), so the "
                "CPU can no longer be split. Call configure_cpu_replicas / create_strategy(cpu_replicas=...) at "
                "the start of the program, before any tensor, model, dataset or strategy is created (%s)"
                % (n, len(existing), error)) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def create_strategy(name="default", cpu_replicas=0):
    """The ``tf.distribute`` strategy called ``name``.

    Args:
        name: ``default`` (``tf.distribute.get_strategy()``: one device, no distribution); ``mirrored``
            (``MirroredStrategy``: one replica per local GPU, or the CPU); ``multi_worker``
            (``MultiWorkerMirroredStrategy``: synchronous data parallelism across the machines that
            ``TF_CONFIG`` lists, all local GPUs on each).
        cpu_replicas: with ``mirrored``, split the CPU into this many logical devices and mirror over them
            (no GPU needed; see :func:`configure_cpu_replicas`). 0: off.

    Create the strategy at the start of the program: ``cpu_replicas`` and ``multi_worker`` need TensorFlow's
    devices not yet initialised. A second call with the same arguments returns the same strategy (several
    runs in one process, e.g. a study): two strategies over the same devices would draw the same keys for
    their collective operations and mix them up.

    Raises:
        ValueError: unknown ``name``, ``cpu_replicas`` with another strategy than ``mirrored`` or on a machine
            with GPUs, or a missing or malformed ``TF_CONFIG`` for ``multi_worker``.
        RuntimeError: ``cpu_replicas`` asked for after TensorFlow initialised its devices.
    """
    if name not in STRATEGIES:
        raise ValueError("unknown strategy %r; valid strategies are: %s" % (name, ", ".join(STRATEGIES)))
    if cpu_replicas and name != "mirrored":
        raise ValueError("cpu_replicas=%r only applies to strategy mirrored, got strategy %r" % (cpu_replicas, name))
    if name == "multi_worker":
        read_tf_config()  # fail with a clear message before TensorFlow tries to reach the cluster
    tf = _tensorflow()
    if name == "default":
        return tf.distribute.get_strategy()
    key = (name, int(cpu_replicas or 0))
    if key not in _CREATED:
        if name == "mirrored" and cpu_replicas:
            _CREATED[key] = tf.distribute.MirroredStrategy(devices=configure_cpu_replicas(cpu_replicas))
        elif name == "mirrored":
            _CREATED[key] = tf.distribute.MirroredStrategy()
        else:
            _CREATED[key] = tf.distribute.MultiWorkerMirroredStrategy()
    return _CREATED[key]


def synchronize_batch_norm(network):
    """A copy of ``network`` whose BatchNormalization layers use the global batch's statistics.

    Each replica normally normalises with the mean and variance of its own slice of the batch, so with
    small per-replica batches training differs from one device. ``BatchNormalization(synchronized=True)``
    all-reduces the statistics across replicas (in training only; inference uses the moving averages as
    before). The copy has the same layers, names and weights (moving statistics included); nested
    functional models are converted too.

    Call it inside ``strategy.scope()`` so the copy's variables are mirrored, and train the copy.

    Args:
        network: a functional or Sequential Keras model (``tf.keras.models.clone_model`` rebuilds it).

    Returns:
        The converted model (a new object; ``network`` is unchanged).

    Raises:
        ValueError: ``network`` is a subclassed model, which cannot be cloned layer by layer.
    """
    tf = _tensorflow()
    if not getattr(network, "_is_graph_network", False):
        raise ValueError("synchronize_batch_norm needs a functional or Sequential model; %r is subclassed: build "
                         "its BatchNormalization layers with synchronized=True instead" % network.name)

    def clone_layer(layer):
        if isinstance(layer, tf.keras.Model) and getattr(layer, "_is_graph_network", False):
            return synchronize_batch_norm(layer)
        config = layer.get_config()
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            config["synchronized"] = True
            if config.get("fused"):
                config["fused"] = None  # fused kernels compute local statistics only
        return layer.__class__.from_config(config)

    clone = tf.keras.models.clone_model(network, clone_function=clone_layer)
    clone.set_weights(network.get_weights())
    return clone


def batch_norm_layers(network):
    """All BatchNormalization layers of ``network``, nested models included (to check a conversion)."""
    tf = _tensorflow()
    found = []
    for layer in network.layers:
        if isinstance(layer, tf.keras.Model):
            found.extend(batch_norm_layers(layer))
        elif isinstance(layer, tf.keras.layers.BatchNormalization):
            found.append(layer)
    return found
