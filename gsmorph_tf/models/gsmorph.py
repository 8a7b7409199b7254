"""The ``gsmorph`` model entry: the GSMorph paper's U-Net trained by :class:`GradientSurgeryModel`.

With ``surgery=layerwise`` this is GSMorph; ``none`` is VoxelMorph (``L_sim + lam L_reg``), ``pcgrad``
GS-PCGrad and ``agr_rand`` / ``agr_sum`` GS-Agr: one network, the surgery mode decides the method.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import tensorflow as tf

from gsmorph_tf.core.model import GradientSurgeryModel
from gsmorph_tf.models.networks import PAPER_FEATURES, build_gsmorph_unet
from gsmorph_tf.plugins import ModelPlugin
from gsmorph_tf.registry import SIMILARITIES

#: Table names of the surgery variants in the GSMorph paper.
SURGERY_METHOD_NAMES = {"layerwise": "GSMorph", "pcgrad": "GS-PCGrad", "agr_rand": "GS-Agr",
                        "agr_sum": "GS-Agr (sum)"}


#: Keras dtype policy of the network body under ``config.mixed_precision`` (the flow head stays float32).
MIXED_PRECISION_POLICY = "mixed_float16"


def build_optimizer(config):
    """The optimizer of every registered model: Adam at ``config.learning_rate`` with the reference code's
    ``torch.optim.AdamW(weight_decay=0)`` settings (with no weight decay AdamW is Adam): betas 0.9, 0.999 and
    epsilon 1e-8 added to the bias-corrected ``sqrt(v_hat)`` as PyTorch does (tf-keras' ``adaptive_epsilon``;
    its default adds epsilon 1e-7 to the uncorrected ``sqrt(v)``). With ``config.mixed_precision`` it is
    wrapped in a dynamic ``LossScaleOptimizer`` (float16 gradients would underflow unscaled)."""
    optimizer = tf.keras.optimizers.Adam(learning_rate=config.learning_rate, beta_1=0.9, beta_2=0.999,
                                         epsilon=1e-8, adaptive_epsilon=True)
    if config.mixed_precision:
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def compile_and_build(model, config, example_inputs):
    """Compile ``model`` (a training model whose ``network`` holds the weights it updates) with
    :func:`build_optimizer` and create every variable before training: the model's (called once on
    ``example_inputs``, a list of zero tensors; BackupAndRestore needs a built model to restore into) and the
    optimizer's slots (Adam's two moments per weight of ``model.network``, in the order its train step
    passes them). ``tf.function`` traces a function again when its first trace created variables, so with
    the slots created here the first training step is traced once, not twice (about half the start-up of a
    run). Returns ``model``."""
    optimizer = build_optimizer(config)
    model.compile(optimizer=optimizer)
    model(example_inputs)
    # A LossScaleOptimizer creates its own variables at construction; its inner optimizer holds the slots.
    getattr(optimizer, "inner_optimizer", optimizer).build(model.network.trainable_variables)
    return model


def surgery_training_model(config, network, moved_output=None):
    """``network`` wrapped in a compiled, built :class:`GradientSurgeryModel` with the config's similarity
    (from :data:`gsmorph_tf.registry.SIMILARITIES`), smoothness penalty, surgery mode, lambda and grouping;
    the similarity scores the network output named ``moved_output`` (None: the first)."""
    model = GradientSurgeryModel(network, similarity=SIMILARITIES.load(config.similarity)(config),
                                 reg_penalty=config.reg_penalty, surgery=config.surgery, lam=config.lam,
                                 grouping=config.grouping, seed=config.seed,
                                 conflict_diagnostics=config.conflict_diagnostics, moved_output=moved_output)
    zeros = tf.zeros((1, *network.inputs[0].shape[1:]))
    return compile_and_build(model, config, [zeros, zeros])


class GSMorphModel(ModelPlugin):
    """The paper's U-Net (:func:`gsmorph_tf.models.networks.build_gsmorph_unet`), any surgery mode; its feature
    widths times ``config.unet_width`` (2: "VoxelMorph x2", the wider baseline of ULAE-net's Table 1); its warp
    reads ``config.warp_padding`` outside the volume; with ``config.mixed_precision`` its body computes in
    float16 (:data:`MIXED_PRECISION_POLICY`)."""

    def build_network(self, config, inshape):
        features = tuple(config.unet_width * f for f in PAPER_FEATURES)
        return build_gsmorph_unet(inshape, features=features, int_steps=config.int_steps,
                                  dtype_policy=MIXED_PRECISION_POLICY if config.mixed_precision else None,
                                  warp_padding=config.warp_padding)

    def build_training_model(self, config, network):
        return surgery_training_model(config, network)

    def method_name(self, config, chosen=None):
        width = "" if config.unet_width == 1 else " x%d" % config.unet_width
        if config.surgery == "none":
            return "VoxelMorph%s (lam=%g)" % (width, config.lam)
        return SURGERY_METHOD_NAMES[config.surgery] + width


MODEL = GSMorphModel()
