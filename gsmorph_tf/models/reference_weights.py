"""The official GSMorph code's weights (wulalago/GSMorph, PyTorch) in the port's network.

The reference's ``VoxelMorph`` module and :func:`gsmorph_tf.models.networks.build_gsmorph_unet` are the same network
(2D), so a reference ``state_dict`` (a trained checkpoint, or freshly initialised weights) loads tensor by
tensor::

    import torch
    state = {k: v.numpy() for k, v in torch.load("checkpoint.pth", map_location="cpu").items()}
    network = build_gsmorph_unet((128, 128), features=reference_features(state), warp_padding="zeros")
    load_reference_weights(network, state)

Mapping (:func:`reference_to_port`):

- names: ``feat_extractor.init_conv`` -> ``initial_conv``; ``feat_extractor.down_conv{k}.conv{i}`` /
  ``.norm{i}`` -> ``enc{k-1}_conv{i}`` / ``enc{k-1}_bn{i}``; ``feat_extractor.up_conv{k}`` -> ``dec{k-1}``;
  ``flow`` -> ``flow``. BatchNorm ``weight``, ``bias``, ``running_mean``, ``running_var`` -> ``gamma``,
  ``beta``, ``moving_mean``, ``moving_variance`` (both keep the running variance unbiased; both normalise a
  training batch by its biased variance). ``stn.grid``, ``device_param`` and ``num_batches_tracked`` have no
  counterpart (a step counter and constants).
- conv kernels: PyTorch ``[out, in, kh, kw]`` -> Keras ``[kh, kw, in, out]`` (both are cross-correlations
  with the same 'same' padding for 3x3).
- the first conv of each decoder block: the reference concatenates ``(skip, upsampled)``, the port
  ``(upsampled, skip)``, so that kernel's input channels are swapped in two blocks.

Flow channels need no change: channel k is the displacement along array axis k in both (rows first).
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np

#: PyTorch BatchNorm2d's state names and the Keras BatchNormalization attributes they become.
BATCHNORM_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean",
                   "running_var": "moving_variance"}
#: Reference ``state_dict`` entries with no counterpart in the port.
UNMAPPED = ("stn.grid", "device_param")


def reference_features(state):
    """The encoder widths (``cfg['FeatNum']``) of a reference ``state_dict``: the output channels of each
    ``feat_extractor.down_conv{k}.conv1`` kernel, k = 1, 2, ..."""
    features, level = [], 1
    while "feat_extractor.down_conv%d.conv1.weight" % level in state:
        features.append(int(np.shape(state["feat_extractor.down_conv%d.conv1.weight" % level])[0]))
        level += 1
    if not features:
        raise ValueError("not a GSMorph reference state_dict: no feat_extractor.down_conv1.conv1.weight among "
                         "its %d entries" % len(state))
    return tuple(features)


def reference_names(features):
    """``[(reference name, port layer, port attribute, skip channels)]`` for every mapped tensor, in the
    reference's ``state_dict`` order. ``skip channels`` is, for a decoder block's first conv kernel, how many
    of its input channels are the encoder skip (which the reference puts first), else 0."""
    names = [("feat_extractor.init_conv.weight", "initial_conv", "kernel", 0)]
    blocks = [("down_conv%d" % (level + 1), "enc%d" % level, 0) for level in range(len(features))]
    blocks += [("up_conv%d" % (level + 1), "dec%d" % level, features[level])
               for level in range(len(features) - 2, -1, -1)]
    for reference, port, skip in blocks:
        for i in (1, 2):
            conv = "feat_extractor.%s.conv%d." % (reference, i)
            names.append((conv + "weight", "%s_conv%d" % (port, i), "kernel", skip if i == 1 else 0))
            names.append((conv + "bias", "%s_conv%d" % (port, i), "bias", 0))
            names += [("feat_extractor.%s.norm%d.%s" % (reference, i, torch_name), "%s_bn%d" % (port, i), keras_name, 0)
                      for torch_name, keras_name in BATCHNORM_NAMES.items()]
    return names + [("flow.weight", "flow", "kernel", 0), ("flow.bias", "flow", "bias", 0)]


def reference_to_port(state):
    """A reference ``state_dict`` (name -> array) as the port's arrays.

    Args:
        state: mapping of the reference's tensor names to arrays (numpy, or anything ``np.asarray`` reads) in
            PyTorch's layout; a subset is fine (e.g. only the trainable tensors, or their gradients), as long
            as ``feat_extractor.down_conv{k}.conv1.weight`` tells the widths.

    Returns:
        dict ``"<layer>/<attribute>"`` (e.g. ``"enc0_conv1/kernel"``, ``"dec1_bn2/moving_variance"``) ->
        float32 array in the port's layout, for each mapped name present in ``state``.

    Raises:
        ValueError: a name in ``state`` that the network does not have (other than :data:`UNMAPPED` and
            ``num_batches_tracked``), naming it.
    """
    names = reference_names(reference_features(state))
    known = {name for name, _, _, _ in names}
    unknown = sorted(k for k in state if k not in known and k not in UNMAPPED and not k.endswith("num_batches_tracked"))
    if unknown:
        raise ValueError("reference tensors with no counterpart in the port's network: %s" % ", ".join(unknown))
    port = {}
    for name, layer, attribute, skip in names:
        if name not in state:
            continue
        value = np.asarray(state[name], dtype=np.float32)
        if attribute == "kernel":
            if value.ndim != 4:
                raise ValueError("%s: expected a 2D conv kernel [out, in, 3, 3], got shape %s" % (name, value.shape))
            if skip:
                value = np.concatenate([value[:, skip:], value[:, :skip]], axis=1)
            value = value.transpose(2, 3, 1, 0)
        port["%s/%s" % (layer, attribute)] = value
    return port


def port_variable(network, key):
    """The network's variable for a :func:`reference_to_port` key ``"<layer>/<attribute>"``."""
    layer, attribute = key.split("/")
    return getattr(network.get_layer(layer), attribute)


def load_reference_weights(network, state):
    """Assign a reference ``state_dict`` to a :func:`~gsmorph_tf.models.networks.build_gsmorph_unet` network (2D, the
    same widths). Every parameter and running statistic of the network must be in ``state``.

    Raises:
        ValueError: a missing tensor, or a shape that differs (naming the tensor and both shapes).
    """
    arrays = reference_to_port(state)
    expected = {name for name, _, _, _ in reference_names(reference_features(state))}
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError("the reference state lacks %s" % ", ".join(missing))
    for key, value in arrays.items():
        variable = port_variable(network, key)
        if tuple(variable.shape) != value.shape:
            raise ValueError("%s: the reference's tensor has shape %s (port layout), the network's %s"
                             % (key, value.shape, tuple(variable.shape)))
        variable.assign(value)
