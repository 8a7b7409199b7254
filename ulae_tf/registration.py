"""The ``ulae`` entry of :data:`gsmorph_tf.registry.MODELS`: ULAE-net trained by gsmorph_tf's
:class:`~gsmorph_tf.core.model.GradientSurgeryModel` (``surgery=none``: the paper's ``L_sim + lam L_reg``;
any other mode: ULAE with gradient surgery, no lambda). The framework imports this module by name, on first
use, so ``gsmorph_tf`` never depends on ``ulae_tf``.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

from gsmorph_tf.models.gsmorph import MIXED_PRECISION_POLICY, surgery_training_model
from gsmorph_tf.plugins import ModelPlugin
from ulae_tf.networks import build_ulae_net

#: The network output ULAE's similarity scores, by ``config.ulae_moved``: the image warped once by the composed
#: field (ours), or the third step's output, the image resampled three times (the reference's ``warp3``).
SCORED_OUTPUT = {"composed": "moved", "warp3": "step3_moved"}


class ULAEModel(ModelPlugin):
    """ULAE-net (:func:`ulae_tf.networks.build_ulae_net`, 16 base channels), 2D or 3D, with the config's
    ``warp_padding``, ``ulae_init`` and ``ulae_moved`` (the reference's objective: ``zeros``, ``pytorch``,
    ``warp3``); with ``config.mixed_precision`` the encoder and decoders compute in float16."""

    def build_network(self, config, inshape):
        return build_ulae_net(inshape, warp_padding=config.warp_padding, init=config.ulae_init,
                              dtype_policy=MIXED_PRECISION_POLICY if config.mixed_precision else None)

    def build_training_model(self, config, network):
        return surgery_training_model(config, network, moved_output=SCORED_OUTPUT[config.ulae_moved])

    def method_name(self, config, chosen=None):
        return "ULAE-net" + ("" if config.surgery == "none" else " + gradient surgery (%s)" % config.surgery)


MODEL = ULAEModel()
