"""Test-time instance optimisation: fine-tune a trained network on the one pair it registers, then register it.

A trained network is only as good as its training domain; refining it on each test pair (uniGradICON's
``--io_iterations``, the Learn2Reg leaders) closes part of the gap. Here the refinement is **the training step
itself**: a copy of the network is wrapped in its model's training model, built by the same registry code
training uses (:meth:`gsmorph_tf.plugins.ModelPlugin.build_training_model`; for ``gsmorph`` and ``ulae`` a
:class:`~gsmorph_tf.core.model.GradientSurgeryModel` with the run's similarity, smoothness penalty, surgery mode,
grouping and, for surgery ``none``, lambda; Adam at a fine-tuning rate, :data:`DEFAULT_LEARNING_RATE` unless
given), and Keras ``fit`` runs ``steps`` of its ``train_step`` on the pair. So a GSMorph run still has no lambda
to choose at test time: the similarity and smoothness gradients are projected as in training.

What is refined and what is not:

- **a copy**: the caller's network is never modified. The copy is rebuilt by the model's registry entry (as
  training builds it) and gets the caller's weights; every pair starts again from them, with a fresh Adam
  (moments and step counter zero), so pairs do not influence each other and the order does not matter.
- **BatchNorm is frozen** (``trainable = False`` on every BatchNormalization layer of the copy, so Keras runs
  it in inference mode even in the training step): it normalises with the trained moving statistics and its
  scale and offset are not updated; the convolutions are. Why: the refined registration is then exactly the
  function the steps optimised (the prediction runs BatchNorm in inference mode too), whereas in training mode
  the steps would optimise a network normalised by one pair's own statistics (one volume, or one subject's
  slices: nothing like training's batches) and drag the moving statistics toward them, so the prediction
  would not be the optimised function.
- **one batch**: the pair's items together (a 2D subject's slice pairs, or one 3D volume pair) in every step.

``steps = 0`` returns the plain prediction (the copy, unchanged, predicted as :func:`gsmorph_tf.evaluate.evaluation.
predict_pairs` predicts). Given the seed the result is deterministic and does not depend on the order of the
pairs: the surgery's random parts (``agr_rand``) are stateless, seeded by the run's seed and the step counter, which
is reset per pair, and nothing else in the step draws random numbers.

Models whose served network is not the trained one (HyperMorph: its lambda is chosen after training and frozen
into the served network, and its training step draws lambda) are refused.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses
import time

import numpy as np
import tensorflow as tf

from gsmorph_tf.errors import ConfigError
from gsmorph_tf.evaluate.evaluation import predict_pairs
from gsmorph_tf.registry import MODELS

#: Adam's default learning rate for the refinement, chosen on the phantom demo's validation subjects
#: (``benchmarks/instance_optimisation.py --split=validation``, GSMorph and VoxelMorph, 3 seeds): of 3e-5, 1e-4,
#: 3e-4, 1e-3 and 3e-3, 1e-3 gave the best mean validation Dice after 50 steps and after 10 steps for both methods;
#: 3e-3 wrecked one GSMorph seed. Not the run's training rate: at the demo's 5e-3 Adam's first steps move every
#: weight by about 5e-3, which wrecks a trained network (10 steps: Dice 78.4 -> 46.3 %, NJD 0.09 -> 20 %).
#: The test split's figures at 1e-3 and 1e-4: docs/results/instance-optimisation.md.
DEFAULT_LEARNING_RATE = 1e-3


@dataclasses.dataclass
class InstanceResult:
    """One refined registration.

    Attributes:
        moved: ``[B, *vol]`` float32, the moving images warped by the refined network.
        flow: ``[B, *vol, ndim]`` float32, displacement in voxels along the array axes ('ij').
        seconds: wall-clock time of the refinement and the prediction (not of building the optimiser, which
            :class:`InstanceOptimizer` does once; the first pair also traces the training step).
        steps: training steps taken.
        sim_loss, reg_loss: the training model's mean similarity and smoothness losses over the steps (Keras'
            epoch logs); None for ``steps = 0``.
    """
    moved: np.ndarray
    flow: np.ndarray
    seconds: float
    steps: int
    sim_loss: float | None = None
    reg_loss: float | None = None


def check_refinable(config):
    """Raise ConfigError, naming the model, when its served network is not the network its training step
    trains (a model that chooses settings after training: HyperMorph)."""
    if MODELS.load(config.model).chosen_for_serving:
        raise ConfigError("instance optimisation needs a model served as it is trained; %s chooses %s after "
                          "training and trains with another step" % (config.model, ", ".join(
                              MODELS.load(config.model).chosen_for_serving.values())))


def freeze_batch_norm(network):
    """Set ``trainable = False`` on every BatchNormalization layer of ``network`` (nested models included): Keras
    then runs them in inference mode, training step included (see the module docstring). Returns how many."""
    frozen = 0
    for layer in network.submodules:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.trainable = False
            frozen += 1
    return frozen


class InstanceOptimizer:
    """Refines copies of one trained network pair by pair (build once, call :meth:`register` per pair).

    Args:
        network: the trained Keras network ``[moving, fixed] -> [moved, flow, ...]`` (never modified).
        config: its run's :class:`~gsmorph_tf.config.TrainConfig` (model, loss settings, surgery, lambda, grouping,
            learning rate, seed).
        learning_rate: Adam's learning rate for the refinement; None: :data:`DEFAULT_LEARNING_RATE`.
        seed: seed of each pair's refinement; None: the run's ``seed``.

    Attributes:
        config: ``config`` with the refinement's learning rate and seed (what the training model is built from).
        copy: the refined network (BatchNorm frozen); model: its training model.

    Raises:
        ConfigError: see :func:`check_refinable`; a learning rate that is not > 0.
    """

    def __init__(self, network, config, learning_rate=None, seed=None):
        check_refinable(config)
        self.seed = config.seed if seed is None else int(seed)
        self.learning_rate = DEFAULT_LEARNING_RATE if learning_rate is None else float(learning_rate)
        if not self.learning_rate > 0:
            raise ConfigError("instance learning rate must be > 0, got %g" % self.learning_rate)
        self.config = config = dataclasses.replace(config, learning_rate=self.learning_rate, seed=self.seed)
        # Seeded once, here, not per pair: tf.random.set_seed clears the runtime's kernel caches, so every pair
        # would pay for instantiating the traced step again (about 25 s per 3D ULAE-net pair at 32x48x32). The
        # step's own random parts (agr_rand) are stateless, seeded by the run's seed and the step counter, which
        # reset() puts back to 0: the pairs stay deterministic and independent of their order.
        tf.keras.utils.set_random_seed(self.seed)
        entry = MODELS.load(config.model)
        self.network = network
        # The copy: built by the registry as training builds it, then given the caller's weights.
        self.copy = entry.build_network(config, tuple(network.inputs[0].shape[1:-1]))
        self.copy.set_weights(network.get_weights())
        self.frozen_batch_norm = freeze_batch_norm(self.copy)  # before the step's variable groups are made
        self.model = entry.build_training_model(config, self.copy)
        self.weights = [w.numpy() for w in self.copy.weights]
        # The registry's training model has its optimizer's slots built: Adam's zero moments, step 0.
        self.optimizer_state = [v.numpy() for v in self.model.optimizer.variables]

    def reset(self):
        """The copy back to the trained weights, the optimiser back to its initial state."""
        for weight, value in zip(self.copy.weights, self.weights):
            weight.assign(value)
        for variable, value in zip(self.model.optimizer.variables, self.optimizer_state):
            variable.assign(value)

    def register(self, moving, fixed, steps, batch_size=32):
        """Refine a fresh copy on the pair for ``steps`` training steps, then register the pair with it.

        Args:
            moving, fixed: ``[B, *vol]`` float32 images in [0, 1] (no channel axis, as
                :func:`~gsmorph_tf.evaluate.evaluation.predict_pairs` takes them): all ``B`` items form the one batch of
                every step.
            steps: training steps, >= 0 (0: the trained network's own prediction).
            batch_size: items per prediction batch.

        Returns:
            :class:`InstanceResult`.
        """
        steps = int(steps)
        if steps < 0:
            raise ValueError("steps must be >= 0, got %d" % steps)
        moving = np.asarray(moving, np.float32)
        fixed = np.asarray(fixed, np.float32)
        start = time.perf_counter()
        self.reset()
        logs = {}
        if steps:
            pair = tf.data.Dataset.from_tensors({"moving": moving[..., None], "fixed": fixed[..., None]})
            history = self.model.fit(pair.repeat(steps), epochs=1, steps_per_epoch=steps, verbose=0)
            logs = {key: float(values[-1]) for key, values in history.history.items()}
        moved, flow = predict_pairs(self.copy, moving, fixed, batch_size)
        return InstanceResult(moved=moved, flow=flow, seconds=time.perf_counter() - start, steps=steps,
                              sim_loss=logs.get("sim_loss"), reg_loss=logs.get("reg_loss"))

    def predictor(self, steps, batch_size=32):
        """A predictor ``f(moving, fixed) -> (moved, flow)`` (as :func:`gsmorph_tf.evaluate.evaluation.keras_predictor`)
        refining every call's pair for ``steps`` steps."""
        def predict(moving, fixed):
            result = self.register(moving, fixed, steps, batch_size)
            return result.moved, result.flow
        return predict


def instance_register(network, config, moving, fixed, steps, learning_rate=None, seed=None):
    """Refine a copy of ``network`` on one pair for ``steps`` training steps and register the pair with it.

    One call builds the copy and its training model (and traces the step): to refine many pairs (frames of a
    sequence, a test split) build one :class:`InstanceOptimizer` and call its :meth:`~InstanceOptimizer.register`.

    Args:
        network, config, learning_rate, seed: see :class:`InstanceOptimizer`.
        moving, fixed, steps: see :meth:`InstanceOptimizer.register`.

    Returns:
        :class:`InstanceResult`.
    """
    return InstanceOptimizer(network, config, learning_rate, seed).register(moving, fixed, steps)
