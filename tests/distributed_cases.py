"""Distributed training cases that need a fresh process; run by tests/test_distribute.py.

Logical CPU devices and multi-worker collectives must be set up before TensorFlow initialises its devices,
which the rest of the test suite has long done in its own process; so each case runs here, in a subprocess,
and prints one line ``RESULT <json>`` for the test to check.

    python tests/distributed_cases.py mirrored                      # 2 logical CPUs: global vs single device
    TF_CONFIG=... python tests/distributed_cases.py multi_worker --backup_dir=D --epochs=1
"""
import argparse
import json
import os
import sys

from gsmorph_tf import distribute  # the package import selects legacy Keras before TensorFlow loads

import numpy as np
import tensorflow as tf
import voxelmorph as vxm
from scipy import ndimage

from gsmorph_tf.models import hypermorph
from gsmorph_tf.model import GradientSurgeryModel
from gsmorph_tf.networks import build_gsmorph_unet
from gsmorph_tf.surgery import project_gradients

SIZE = 16
GLOBAL_BATCH = 8
#: SGD step: large enough that one step changes the weights by ~1e-2 of their norm (see "step_rel"), so a
#: 1e-5 agreement of the weights says the steps agree to ~1e-3, and a step twice too large cannot pass.
LEARNING_RATE = 20.0


def pairs(n=GLOBAL_BATCH, size=SIZE, seed=0):
    """Smooth random images; the first half shifted down, the second half shifted right, so the two replicas
    of a 2-way split see different motions (and different gradient conflicts)."""
    rng = np.random.default_rng(seed)
    fixed = ndimage.gaussian_filter(rng.random((n, size, size)), sigma=(0, 2, 2))
    moving = np.concatenate([np.roll(fixed[: n // 2], 2, axis=1), np.roll(fixed[n // 2:], -2, axis=2)])
    scale = lambda a: ((a - a.min()) / (a.max() - a.min()))[..., None].astype(np.float32)  # noqa: E731
    return {"moving": scale(moving), "fixed": scale(fixed)}


def small_network(size=SIZE):
    """A BatchNorm-free registration network: three 3x3 convs -> flow -> voxelmorph's SpatialTransformer.
    With no batch statistics, a replica's forward pass depends on its own examples only. The flow head has
    no bias: a constant displacement has no spatial gradient, so the smoothness gradient of a head bias is
    zero up to rounding and the projection's choice for that group would be decided by rounding noise (on
    one device as well), which no comparison at 1e-5 could survive."""
    moving = tf.keras.Input((size, size, 1), name="moving")
    fixed = tf.keras.Input((size, size, 1), name="fixed")
    x = tf.keras.layers.Concatenate()([moving, fixed])
    for i in range(2):
        x = tf.keras.layers.Conv2D(8, 3, padding="same", name="conv%d" % i)(x)
        x = tf.keras.layers.LeakyReLU(0.2)(x)
    flow = tf.keras.layers.Conv2D(2, 3, padding="same", name="flow", use_bias=False,
                                  kernel_initializer=tf.keras.initializers.RandomNormal(stddev=0.1, seed=3))(x)
    moved = vxm.layers.SpatialTransformer(name="moved")([moving, flow])
    return tf.keras.Model([moving, fixed], [moved, flow])


def bn_network(size=SIZE):
    """The GSMorph U-Net (BatchNorm after every conv), two levels, with a head large enough for a visible step."""
    network = build_gsmorph_unet((size, size), features=(4, 8))
    head = network.get_layer("flow").kernel
    head.assign(tf.random.stateless_normal(head.shape, seed=[4, 0], stddev=0.05))
    return network


def one_step(strategy, build, initial, mode, convert=None):
    """Trainable weights after one ``fit`` step (SGD) on the global batch, model built under ``strategy``."""
    with strategy.scope():
        network = build()
        network.set_weights(initial)
        if convert is not None:
            network = convert(network)
        model = GradientSurgeryModel(network, similarity="mse", reg_penalty="l2", surgery=mode, lam=0.5)
        model.compile(optimizer=tf.keras.optimizers.SGD(LEARNING_RATE))
    data = tf.data.Dataset.from_tensor_slices(pairs()).batch(GLOBAL_BATCH)
    model.fit(data, epochs=1, verbose=0)
    return [v.numpy() for v in network.trainable_variables], network


def per_replica_step(build, initial, mode, replicas=2):
    """The step of a naive distributed train_step, computed on one device: each replica's slice gets its two
    gradients (losses scaled by 1/replicas, so step sizes are right), projects them on its own, and the
    optimizer sums the projected gradients (its usual aggregation). BatchNorm, if any, sees the slice only,
    as unsynchronised BatchNorm does under MirroredStrategy."""
    network = build()
    network.set_weights(initial)
    model = GradientSurgeryModel(network, similarity="mse", reg_penalty="l2", surgery=mode, lam=0.5)
    variables = network.trainable_variables
    data = pairs()
    size = GLOBAL_BATCH // replicas
    total = [tf.zeros_like(v) for v in variables]
    for r in range(replicas):
        with tf.GradientTape(persistent=True) as tape:
            sim, reg = model.compute_losses(data["moving"][r * size:(r + 1) * size],
                                            data["fixed"][r * size:(r + 1) * size], training=True)
            sim, reg = sim / replicas, reg / replicas
        projected = project_gradients(tape.gradient(sim, variables), tape.gradient(reg, variables), mode,
                                      lam=0.5, groups=model.groups)
        total = [t + g for t, g in zip(total, projected)]
    return [v.numpy() - LEARNING_RATE * g.numpy() for v, g in zip(variables, total)]


def compare(start, reference, other):
    """How far ``other``'s step is from ``reference``'s (lists of trainable tensors, same start), as
    norms over all trainable weights: ``weights_rel`` = |w_other - w_ref| / |w_ref|, ``update_rel`` =
    |step_other - step_ref| / |step_ref|, ``step_rel`` = |step_ref| / |w_start|."""
    flat = lambda ws: np.concatenate([np.ravel(w).astype(np.float64) for w in ws])  # noqa: E731
    w0, ref, oth = flat(start), flat(reference), flat(other)
    step = ref - w0
    return {"weights_rel": float(np.linalg.norm(oth - ref) / np.linalg.norm(ref)),
            "update_rel": float(np.linalg.norm((oth - w0) - step) / np.linalg.norm(step)),
            "step_rel": float(np.linalg.norm(step) / np.linalg.norm(w0))}


def case_mirrored():
    strategy = distribute.create_strategy("mirrored", cpu_replicas=2)
    single = tf.distribute.get_strategy()
    result = {"replicas": strategy.num_replicas_in_sync, "modes": {}}
    tf.keras.utils.set_random_seed(0)
    start = small_network().get_weights()
    for mode in ("layerwise", "pcgrad", "none"):
        reference, _ = one_step(single, small_network, start, mode)
        mirrored, _ = one_step(strategy, small_network, start, mode)
        result["modes"][mode] = {"global": compare(start, reference, mirrored)}
        if mode != "none":  # a weighted sum is linear: per-replica and global agree, nothing to show
            naive = per_replica_step(small_network, start, mode)
            result["modes"][mode]["per_replica"] = compare(start, reference, naive)

    # BatchNorm: surgery none, so that only the batch statistics can make the steps differ.
    tf.keras.utils.set_random_seed(1)
    start = bn_network().get_weights()
    start_trainable = [w for w, v in zip(start, bn_network().weights) if v.trainable]
    reference, _ = one_step(single, bn_network, start, "none")
    synced, network = one_step(strategy, bn_network, start, "none", convert=distribute.synchronize_batch_norm)
    local_bn = per_replica_step(bn_network, start, "none")
    layers = distribute.batch_norm_layers(network)
    result["sync_bn"] = {"bn_layers": len(layers), "synchronized": sum(bool(b.synchronized) for b in layers),
                         "finite": bool(all(np.isfinite(w).all() for w in synced)),
                         "synchronized_vs_single": compare(start_trainable, reference, synced),
                         "local_bn_vs_single": compare(start_trainable, reference, local_bn)}

    # HyperMorph: one backward pass and the optimizer's own sum over replicas; same lambda on every replica.
    tf.keras.utils.set_random_seed(2)
    start = hypermorph.build_hypermorph((SIZE, SIZE)).get_weights()
    steps = []
    for where in (single, strategy):
        with where.scope():
            network = hypermorph.build_hypermorph((SIZE, SIZE))
            network.set_weights(start)
            model = hypermorph.HyperMorphModel(network, seed=1)
            model.compile(optimizer=tf.keras.optimizers.SGD(1.0))
        model.fit(tf.data.Dataset.from_tensor_slices(pairs()).batch(GLOBAL_BATCH), epochs=1, verbose=0)
        steps.append([v.numpy() for v in network.trainable_variables])
    result["hypermorph"] = compare(start, *steps)  # HyperVxmDense: all weights trainable
    return result


class RecordIterations(tf.keras.callbacks.Callback):
    """Records the optimizer's step count when training begins (after BackupAndRestore restored it)."""

    def on_train_begin(self, logs=None):
        self.at_begin = int(self.model.optimizer.iterations.numpy())


def case_multi_worker(backup_dir, epochs):
    strategy = distribute.create_strategy("multi_worker")
    with strategy.scope():
        tf.keras.utils.set_random_seed(0)
        network = small_network()
        model = GradientSurgeryModel(network, surgery="layerwise")
        model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    data = tf.data.Dataset.from_tensor_slices(pairs()).batch(4).with_options(options)  # 2 steps per epoch
    record = RecordIterations()
    history = model.fit(data, epochs=epochs, verbose=0, callbacks=[
        tf.keras.callbacks.BackupAndRestore(backup_dir, delete_checkpoint=False), record])
    # Every worker runs the writing code; only the chief's file lands in export/.
    with distribute.chief_write_dir(os.path.join(os.path.dirname(backup_dir), "export"), strategy) as target:
        with open(os.path.join(target, "written_by.txt"), "w", encoding="utf-8") as f:
            f.write(str(strategy.cluster_resolver.task_id))
    return {"chief": distribute.is_chief(strategy), "replicas": strategy.num_replicas_in_sync,
            "iterations_at_begin": record.at_begin, "iterations": int(model.optimizer.iterations.numpy()),
            "epochs_run": len(history.history.get("sim_loss", [])),
            "weights_sum": float(sum(np.sum(v.numpy(), dtype=np.float64) for v in network.trainable_variables))}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=("mirrored", "multi_worker"))
    parser.add_argument("--backup_dir")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    result = case_mirrored() if args.case == "mirrored" else case_multi_worker(args.backup_dir, args.epochs)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
