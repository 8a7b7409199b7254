"""The bridge to ULAE-net's reference code (wanghaostu/ULAE-net, PyTorch, folder ``ULAE/``): its weights in our
network, and the synthetic pairs of the step-level comparison (``benchmarks/reference_ulae_steps.py`` and
``tests/ulae/test_ulae_reference_steps.py``).

Only NumPy is imported here, so the comparison's generator, which runs under a Python with PyTorch and without
TensorFlow, shares :func:`smooth_pairs` with the test; the weight functions take a network already built by
:func:`ulae_tf.networks.build_ulae_net`.

**Names.** The reference's ``ULAE(2, 3, b, True, shape)`` holds one encoder and three steps
``acc1``, ``acc2``, ``acc3`` (``Accumulative_Enhancement_1..3``). The encoder's modules are attributes of every
step, so its ``state_dict`` holds each encoder tensor three times, under ``acc1.``, ``acc2.`` and ``acc3.``
(``named_parameters()`` lists it once, under ``acc1.``); they are one tensor. Per encoder level ``l`` (1-4) and
step ``k`` (1-3), reference module -> our layer (:mod:`ulae_tf.blocks`; encoder layers in the ``encoder``
model, decoder layers in ``step{k}_decoder``):

==================================  ==========================================================================
``acc*.fec{l}.0``                   ``fixed_down{l}_conv`` (fixed path, stride 2, no bias)
``acc*.mec{l}.conv``                ``moving_down{l}_pool_conv`` (global-pool branch, 1x1)
``acc*.mec{l}.conv2``               ``moving_down{l}_3x3_conv``
``acc*.mec{l}.ab1``                 ``moving_down{l}_1x1_conv``
``acc*.mec{l}.ab6/ab12/ab18``       ``moving_down{l}_rate{d,2d,3d}_conv`` (dilation d = 4, 3, 2, 1 by level)
``acc*.mec{l}.out``                 ``moving_down{l}_fuse`` (1x1, 7 inputs -> 1)
``acc*.fusion{l}.0``                ``skip{l}_conv`` (moving and fixed features of the level, no bias)
``acc{k}.dc0.0``, ``dc1.0``         ``dec4_conv``, ``dec3_conv`` (from the deepest level up)
``acc{k}.dc2.0`` (k >= 2)           ``dec2_conv``
``acc{k}.dc3.0`` (k = 3)            ``dec1_conv``
``acc{k}.dc4.0``, ``dc5.0``         ``refine1_conv``, ``refine2_conv``
``acc{k}.dc6.0``                    ``dec_pair_conv`` (with the average-pooled moving and fixed images)
``acc{k}.output``                   ``flow_head``
==================================  ==========================================================================

Each reference module's ``weight`` is our ``kernel``, ``bias`` our ``bias``; the ``.0`` modules are the convs
of ``Sequential(Conv3d, InstanceNorm3d, LeakyReLU)`` blocks (InstanceNorm without parameters). The ``state_dict``
also holds the sampling grids of the reference's spatial transformers (``acc{k}.transform.grid``,
``transformer.grid``, ``[1, 3, *shape]`` identity coordinates): buffers, not weights, which our warps compute.

**Layouts.** PyTorch's ``Conv3d`` weight is ``[out, in, D, H, W]`` (OIDHW) on ``[B, C, D, H, W]`` images;
Keras' ``Conv3D`` kernel is ``[D, H, W, in, out]`` (DHWIO) on ``[B, D, H, W, C]``. Both cross-correlate and
keep the spatial axes in the same order, so a kernel is the weight transposed (:func:`to_keras_layout`); a
displacement field's channel k is along array axis k in both.
"""
import numpy as np

from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow, for the importers that use both)

#: The reference's steps, whose modules its ``state_dict`` names ``acc1.``, ``acc2.``, ``acc3.``.
STEPS = (1, 2, 3)
#: Reference decoder module -> our decoder layer, and the first step that has it.
DECODER_MODULES = (("dc0.0", "dec4_conv", 1), ("dc1.0", "dec3_conv", 1), ("dc2.0", "dec2_conv", 2),
                   ("dc3.0", "dec1_conv", 3), ("dc4.0", "refine1_conv", 1), ("dc5.0", "refine2_conv", 1),
                   ("dc6.0", "dec_pair_conv", 1), ("output", "flow_head", 1))
#: The ASPP-style dilated branches of the reference's ``Uncoupled_Encoding_Block``, in increasing dilation.
DILATED_BRANCHES = ("ab6", "ab12", "ab18")
#: Buffers of the reference's ``state_dict`` that are not weights: its spatial transformers' sampling grids.
GRID_BUFFERS = tuple("acc%d.transform.grid" % k for k in STEPS) + ("transformer.grid",)


def to_keras_layout(weight):
    """A PyTorch ``Conv3d`` weight ``[out, in, D, H, W]`` as a Keras ``Conv3D`` kernel ``[D, H, W, in, out]``; a
    bias (1-D) unchanged."""
    weight = np.asarray(weight)
    return weight.transpose(2, 3, 4, 1, 0) if weight.ndim == 5 else weight


def to_reference_layout(kernel):
    """The inverse of :func:`to_keras_layout`: a Keras ``Conv3D`` kernel as a PyTorch ``Conv3d`` weight."""
    kernel = np.asarray(kernel)
    return kernel.transpose(4, 3, 0, 1, 2) if kernel.ndim == 5 else kernel


def _encoder_modules(encoder):
    """``(reference module under acc*., our layer)`` for the shared encoder, in the reference's order: the moving
    path's blocks ``mec1..4``, the fixed path's ``fec1..4``, then ``fusion1..4``."""
    levels = sorted({int(layer.name[len("fixed_down"):].split("_")[0])
                     for layer in encoder.layers if layer.name.startswith("fixed_down")})
    for level in levels:
        moving = "moving_down%d" % level
        dilated = sorted((layer for layer in encoder.layers if layer.name.startswith(moving + "_rate")
                          and layer.name.endswith("_conv")), key=lambda layer: layer.dilation_rate[0])
        yield "mec%d.conv" % level, encoder.get_layer(moving + "_pool_conv")
        yield "mec%d.conv2" % level, encoder.get_layer(moving + "_3x3_conv")
        yield "mec%d.ab1" % level, encoder.get_layer(moving + "_1x1_conv")
        yield from (("mec%d.%s" % (level, branch), layer) for branch, layer in zip(DILATED_BRANCHES, dilated))
        yield "mec%d.out" % level, encoder.get_layer(moving + "_fuse")
    yield from (("fec%d.0" % level, encoder.get_layer("fixed_down%d_conv" % level)) for level in levels)
    yield from (("fusion%d.0" % level, encoder.get_layer("skip%d_conv" % level)) for level in levels)


def reference_variables(network):
    """Every trainable variable of a 3D ULAE network with the reference tensor it holds.

    Args:
        network: a model from :func:`ulae_tf.networks.build_ulae_net` with a 3D ``inshape``.

    Returns:
        A list of ``(names, variable)`` in the order of the reference's ``named_parameters()``: ``names`` is the
        tuple of ``state_dict`` names of that tensor, the first being the one ``named_parameters()`` uses
        (encoder tensors have one name per step, ``acc1.`` first; decoder tensors one). Each of the network's
        trainable variables appears once.

    Raises:
        ValueError: ``network`` is not 3D (the reference code is 3D only).
    """
    if len(network.inputs[0].shape) != 5:
        raise ValueError("the ULAE reference code is 3D; network %s takes inputs of shape %s"
                         % (network.name, network.inputs[0].shape))
    modules = [(tuple("acc%d.%s" % (k, name) for k in STEPS), layer)
               for name, layer in _encoder_modules(network.get_layer("encoder"))]
    for step in STEPS:
        decoder = network.get_layer("step%d_decoder" % step)
        modules += [(("acc%d.%s" % (step, name),), decoder.get_layer(ours))
                    for name, ours, first_step in DECODER_MODULES if step >= first_step]
    pairs = []
    for prefixes, layer in modules:
        pairs.append((tuple(p + ".weight" for p in prefixes), layer.kernel))
        if layer.use_bias:
            pairs.append((tuple(p + ".bias" for p in prefixes), layer.bias))
    return pairs


def load_reference_weights(network, state):
    """Set a 3D ULAE network's weights to the reference code's.

    Args:
        network: a model from :func:`ulae_tf.networks.build_ulae_net` (3D) with the reference's base channel
            count (the reference's ``basic_channel``).
        state: mapping of the reference's ``state_dict`` names (see the module notes) to arrays in PyTorch's
            layout, e.g. ``{k: v.numpy() for k, v in model.state_dict().items()}``, or ``named_parameters()``
            (encoder tensors under ``acc1.`` only). An encoder tensor may appear under any of ``acc1.``,
            ``acc2.``, ``acc3.``; all its copies must be equal. The grid buffers (:data:`GRID_BUFFERS`) may be
            present and must have the shape ``[1, 3, *image shape]``; their values are not used.

    Returns:
        ``network``, its weights replaced (float32).

    Raises:
        ValueError: naming the tensor, if a tensor of the network is missing from ``state``, has another shape,
            or has unequal copies; or if ``state`` holds a name that is not one of the reference's.
    """
    pairs = reference_variables(network)
    grid_shape = (1, 3, *network.inputs[0].shape[1:-1])
    known = {name for names, _ in pairs for name in names} | set(GRID_BUFFERS)
    unknown = sorted(set(state) - known)
    if unknown:
        raise ValueError("state holds %d tensor(s) that the ULAE reference does not have: %s"
                         % (len(unknown), ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")))
    for name in GRID_BUFFERS:
        if name in state and tuple(np.shape(state[name])) != grid_shape:
            raise ValueError("state[%r] has shape %s; the network's images %s need %s"
                             % (name, tuple(np.shape(state[name])), grid_shape[2:], grid_shape))
    values = []
    for names, variable in pairs:
        present = [name for name in names if name in state]
        if not present:
            raise ValueError("state has no tensor %s (our %s)" % (names[0], variable.name))
        shape = tuple(variable.shape)
        expected = (shape[4], shape[3], *shape[:3]) if len(shape) == 5 else shape  # PyTorch's layout
        value = np.asarray(state[present[0]], np.float32)
        for name in present:
            if tuple(np.shape(state[name])) != expected:
                raise ValueError("state[%r] has shape %s; our %s needs %s (PyTorch layout)"
                                 % (name, tuple(np.shape(state[name])), variable.name, expected))
            if not np.array_equal(np.asarray(state[name], np.float32), value):
                raise ValueError("state[%r] differs from state[%r]: the reference shares that encoder tensor "
                                 "between its steps" % (name, present[0]))
        values.append(to_keras_layout(value))
    for (_, variable), value in zip(pairs, values):
        variable.assign(value)
    return network


def smooth_volume(shape, cells, rng):
    """A smooth random volume in [0, 1]: uniform values on a corner-aligned lattice of ``cells + 1`` points per
    axis, interpolated linearly to ``shape`` voxels, then scaled to span [0, 1].

    Element-wise float64 arithmetic only (no BLAS), so NumPy gives the same numbers on any machine.

    Args:
        shape: volume shape in voxels, every size >= 2.
        cells: lattice cells per axis (larger = more detail).
        rng: ``numpy.random.Generator``.

    Returns:
        ``shape`` float64 array, minimum 0 and maximum 1.
    """
    volume = rng.random((cells + 1,) * len(shape))
    for axis, size in enumerate(shape):
        position = np.arange(size) * (cells / (size - 1))
        lower = np.minimum(np.floor(position).astype(int), cells - 1)
        weight = (position - lower).reshape([-1 if a == axis else 1 for a in range(len(shape))])
        volume = (np.take(volume, lower, axis=axis) * (1.0 - weight)
                  + np.take(volume, lower + 1, axis=axis) * weight)
    return (volume - volume.min()) / (volume.max() - volume.min())


def smooth_pairs(count, shape, seed):
    """``count`` (moving, fixed) pairs of smooth volumes in [0, 1] that share a structure: each image is a common
    coarse volume plus half its own finer one, rescaled to [0, 1] (:func:`smooth_volume`).

    Returns:
        ``[count, 2, *shape]`` float32, ``[:, 0]`` the moving images, ``[:, 1]`` the fixed ones; a function of
        ``(count, shape, seed)`` only.
    """
    rng = np.random.default_rng(seed)
    pairs = np.empty((count, 2, *shape), np.float32)
    for pair in pairs:
        common = smooth_volume(shape, 4, rng)
        for image in range(2):
            volume = common + 0.5 * smooth_volume(shape, 6, rng)
            pair[image] = (volume - volume.min()) / (volume.max() - volume.min())
    return pairs
