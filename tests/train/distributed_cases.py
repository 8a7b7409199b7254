"""Distributed training cases that need a fresh process; run by tests/train/test_distribute.py.

Logical CPU devices and multi-worker collectives must be set up before TensorFlow initialises its devices,
which the rest of the test suite has long done in its own process; so each case runs here, in a subprocess,
and prints one line ``RESULT <json>`` for the test to check.

    python tests/train/distributed_cases.py mirrored --run_dir=D           # 2 logical CPUs: a run, steps vs one device
    TF_CONFIG=... python tests/train/distributed_cases.py multi_worker --run_dir=D --own_dir=E

Every case is small enough to run in seconds: 16x16 images and tiny networks for the step comparisons, each
network built once per strategy (its weights reset for every comparison), one-step fits run eagerly
(``run_eagerly``: the same ``train_step`` code without tracing it; one traced comparison checks the graph),
and the whole runs on a two-level U-Net and a phantom of 4 training pairs.
"""
import argparse
import json
import os
import sys

from gsmorph_tf.train import distribute  # the package import selects legacy Keras before TensorFlow loads

import numpy as np
import tensorflow as tf
import voxelmorph as vxm
from scipy import ndimage

from gsmorph_tf.config import TrainConfig
from gsmorph_tf.core.model import GradientSurgeryModel
from gsmorph_tf.core.surgery import project_gradients
from gsmorph_tf.models import hypermorph
from gsmorph_tf.models.gsmorph import GSMorphModel
from gsmorph_tf.models.networks import build_gsmorph_unet
from gsmorph_tf.registry import MODELS, ModelEntry
from gsmorph_tf.train import training

SIZE = 16
GLOBAL_BATCH = 8
#: SGD step: large enough that one step changes the weights by ~5e-2 of their norm (see "step_rel"), so a
#: 1e-5 agreement of the weights says the steps agree to ~1e-3, and a step twice too large cannot pass.
LEARNING_RATE = 20.0
#: The tiny phantom of tests/conftest.py (4 subjects of 2 slices: 4 training pairs), cropped to 32x32.
PHANTOM = {"phantom_subjects": 4, "phantom_slices": 2, "phantom_size": 48}


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


def small_hypermorph(size=SIZE):
    """voxelmorph's HyperVxmDense, small: a hypernetwork of 2 x 8 units (instead of 6 x 128), a two-level U-Net
    of 8 features and no integration (33k parameters instead of 980k at 16x16)."""
    return vxm.networks.HyperVxmDense((size, size), nb_hyp_layers=2, nb_hyp_units=8, name="hypermorph",
                                      nb_unet_features=[[8, 8], [8, 8, 8]], int_steps=0)


def one_step(network, initial, mode, eager=True):
    """Trainable weights after one SGD ``fit`` step on the global batch. ``network`` was built under the
    strategy to test; its weights are reset to ``initial`` first, so one network serves every comparison."""
    network.set_weights(initial)
    with network.distribute_strategy.scope():
        model = GradientSurgeryModel(network, similarity="mse", reg_penalty="l2", surgery=mode, lam=0.5)
        model.compile(optimizer=tf.keras.optimizers.SGD(LEARNING_RATE), run_eagerly=eager)
    model.fit(tf.data.Dataset.from_tensor_slices(pairs()).batch(GLOBAL_BATCH), epochs=1, verbose=0)
    return [v.numpy() for v in network.trainable_variables]


def per_replica_step(network, initial, mode, replicas=2):
    """The step of a naive distributed train_step, computed on one device: each replica's slice gets its two
    gradients (losses scaled by 1/replicas, so step sizes are right), projects them on its own, and the
    optimizer sums the projected gradients (its usual aggregation). BatchNorm, if any, sees the slice only,
    as unsynchronised BatchNorm does under MirroredStrategy."""
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


def phantom_config(run_dir, **settings):
    """A 1-epoch run on the tiny phantom (generated into ``<run_dir>/../phantom``), batch 4 of 32x32 crops."""
    values = dict(dataset="phantom", data_dir=os.path.join(os.path.dirname(run_dir), "phantom"),
                  output_dir=run_dir, crop_size=32, batch_size=4, epochs=1, learning_rate=1e-3,
                  dataset_options=PHANTOM)
    values.update(settings)
    return TrainConfig(**values)


def run_summary(outcome):
    """What the tests check of a :func:`gsmorph_tf.train.training.train_and_evaluate` outcome."""
    return {"replicas": outcome["replicas"], "chief": outcome["chief"], "export_dir": outcome["export_dir"],
            "epochs_run": len(outcome["history"]["sim_loss"]), "history": outcome["history"],
            "model_mse": outcome["results"]["Model"]["summary"]["mse"]["mean"], "pid": os.getpid()}


class TinyGSMorph(GSMorphModel):
    """The GSMorph model entry with a two-level U-Net (4 and 8 features): the whole pipeline, traced in
    seconds."""

    def build_network(self, config, inshape):
        return build_gsmorph_unet(inshape, features=(4, 8), int_steps=config.int_steps)


TINY = TinyGSMorph()


def register_tiny():
    """Add the ``tiny`` model (:class:`TinyGSMorph`) to this process's registry."""
    MODELS.add(ModelEntry("tiny", __name__ + ":TINY", "test model: two-level GSMorph U-Net", batch_norm=True))


def quiet(*args):
    """A ``log`` for train_and_evaluate that prints nothing."""


def case_mirrored(run_dir):
    """On 2 logical CPU devices: a whole run (as ``run_train.py --strategy=mirrored --cpu_replicas=2``), then
    one step under MirroredStrategy against one step on one device for each surgery mode, the naive
    per-replica projection, synchronised BatchNorm and HyperMorph."""
    # First, as run_train.py does in a fresh process: the strategy (2 logical CPUs) is created before
    # anything else touches TensorFlow's devices; train_and_evaluate gets this same strategy back.
    strategy = distribute.create_strategy("mirrored", cpu_replicas=2)
    register_tiny()
    run = training.train_and_evaluate(phantom_config(run_dir, model="tiny", strategy="mirrored", cpu_replicas=2),
                                      verbose=0, log=quiet)
    result = {"run": run_summary(run)}

    single = tf.distribute.get_strategy()
    result.update(replicas=strategy.num_replicas_in_sync, modes={})
    tf.keras.utils.set_random_seed(0)
    single_network = small_network()
    start = single_network.get_weights()
    with strategy.scope():
        mirrored_network = small_network()
    for mode in ("layerwise", "pcgrad", "none"):
        reference = one_step(single_network, start, mode)
        # layerwise: fit's usual path, the train step traced into a graph under the strategy; the others
        # eagerly (the same train_step code, without the cost of tracing it per replica).
        distributed = one_step(mirrored_network, start, mode, eager=mode != "layerwise")
        result["modes"][mode] = {"global": compare(start, reference, distributed)}
        if mode != "none":  # a weighted sum is linear: per-replica and global agree, nothing to show
            naive = per_replica_step(single_network, start, mode)
            result["modes"][mode]["per_replica"] = compare(start, reference, naive)

    # BatchNorm: surgery none, so that only the batch statistics can make the steps differ.
    tf.keras.utils.set_random_seed(1)
    single_network = bn_network()
    start = single_network.get_weights()
    start_trainable = [w for w, v in zip(start, single_network.weights) if v.trainable]
    with strategy.scope():
        synced_network = distribute.synchronize_batch_norm(bn_network())
    reference = one_step(single_network, start, "none")
    synced = one_step(synced_network, start, "none")
    local_bn = per_replica_step(single_network, start, "none")
    layers = distribute.batch_norm_layers(synced_network)
    result["sync_bn"] = {"bn_layers": len(layers), "synchronized": sum(bool(b.synchronized) for b in layers),
                         "finite": bool(all(np.isfinite(w).all() for w in synced)),
                         "synchronized_vs_single": compare(start_trainable, reference, synced),
                         "local_bn_vs_single": compare(start_trainable, reference, local_bn)}

    # HyperMorph: one backward pass and the optimizer's own sum over replicas; same lambda on every replica.
    tf.keras.utils.set_random_seed(2)
    start, steps = None, []
    for where in (single, strategy):
        with where.scope():
            network = small_hypermorph()
            start = network.get_weights() if start is None else start
            network.set_weights(start)
            model = hypermorph.HyperMorphModel(network, seed=1)
            model.compile(optimizer=tf.keras.optimizers.SGD(1.0), run_eagerly=True)
        model.fit(tf.data.Dataset.from_tensor_slices(pairs()).batch(GLOBAL_BATCH), epochs=1, verbose=0)
        steps.append([v.numpy() for v in network.trainable_variables])
    result["hypermorph"] = compare(start, *steps)  # HyperVxmDense: all weights trainable
    return result


def case_multi_worker(run_dir, own_dir):
    """Two runs of the whole pipeline on a 2-worker cluster, in one launch of the workers:

    1. a fresh 1-epoch run (no export); the chief's ``--output_dir`` is ``run_dir``, the other worker's is
       ``own_dir`` (as on a machine of its own): the chief's files land in ``run_dir``, nothing in ``own_dir``;
    2. both with ``run_dir`` (shared storage) and 2 epochs: every worker restores the chief's checkpoint,
       trains the second epoch only, and the chief exports the SavedModel.
    """
    register_tiny()
    chief = distribute.is_chief()
    settings = dict(model="tiny", strategy="multi_worker", batch_size=2)  # 4 pairs: 2 steps per epoch
    first = training.train_and_evaluate(phantom_config(run_dir if chief else own_dir, **settings), verbose=0,
                                        log=quiet, export=False)
    second = training.train_and_evaluate(phantom_config(run_dir, epochs=2, **settings), verbose=0, log=quiet)
    return {"first": run_summary(first), "second": run_summary(second)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("case", choices=("mirrored", "multi_worker"))
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--own_dir", help="multi_worker: the non-chief worker's output dir in the first run")
    args = parser.parse_args()
    result = case_mirrored(args.run_dir) if args.case == "mirrored" else case_multi_worker(args.run_dir,
                                                                                            args.own_dir)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
