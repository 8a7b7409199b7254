"""The ``ulae`` entry of :data:`gsmorph_tf.registry.MODELS`: ULAE-net trained by gsmorph_tf's
:class:`~gsmorph_tf.model.GradientSurgeryModel` (``surgery=none``: the paper's ``L_sim + lam L_reg``;
any other mode: ULAE with gradient surgery, no lambda). The framework imports this module by name, on first
use, so ``gsmorph_tf`` never depends on ``ulae_tf``.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

from gsmorph_tf.models.gsmorph import surgery_training_model
from gsmorph_tf.plugins import ModelPlugin
from ulae_tf.networks import build_ulae_net


class ULAEModel(ModelPlugin):
    """ULAE-net (:func:`ulae_tf.networks.build_ulae_net`, 16 base channels), 2D or 3D."""

    def build_network(self, config, inshape):
        return build_ulae_net(inshape)

    def build_training_model(self, config, network):
        return surgery_training_model(config, network)

    def method_name(self, config, chosen=None):
        return "ULAE-net" + ("" if config.surgery == "none" else " + gradient surgery (%s)" % config.surgery)


MODEL = ULAEModel()
