"""ULAE-net's multi-window similarity loss, on gsmorph_tf's local NCC (:mod:`gsmorph_tf.core.losses`).

The five maps ``I, J, I^2, J^2, IJ`` are computed once and their window sums taken by separable box filtering
for each window (:func:`gsmorph_tf.core.losses.windowed_ncc_loss`). Two NCC formulas: ``voxelmorph`` (voxelmorph
0.2's, which clamps the local covariance and variances, our default) and ``reference`` (the reference code's
``cross^2 / (I_var * J_var + 1e-5)``); see :func:`gsmorph_tf.core.losses.local_ncc`.
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

from gsmorph_tf.core.losses import check_ncc_formula, check_ncc_window, windowed_ncc_loss

#: The paper's NCC window sides (voxels), largest first, and the weight decay between them.
PAPER_WINDOWS = (11, 9, 7)
PAPER_GAMMA = 0.5


def multi_window_ncc(windows=PAPER_WINDOWS, gamma=PAPER_GAMMA, formula="voxelmorph"):
    """The multi-window loss ``L_sim = - sum_i gamma^(i-1) NCC_{w_i}`` (Shu et al., MICCAI 2021; the reference
    code's ``multi_window_loss``, whose three terms its training script adds up).

    Args:
        windows: NCC window sides in voxels (cubic windows), weighted 1, gamma, gamma^2, ... in this order.
        gamma: weight ratio between consecutive windows, > 0.
        formula: local NCC formula, one of :data:`gsmorph_tf.core.losses.NCC_FORMULAS`.

    Returns:
        ``f(fixed, moved) -> scalar``: images ``[B, *vol, 1]`` (2D or 3D); the weighted sum of the negative
        local NCCs (each the mean over batch and voxels of the squared local correlation, in [-1, 0]). Lower is
        better; usable as ``GradientSurgeryModel(similarity=...)``.
    """
    windows = tuple(check_ncc_window(w) for w in windows)
    if not windows:
        raise ValueError("windows must be one or more window sides, got %r" % (windows,))
    if gamma <= 0:
        raise ValueError("gamma must be > 0, got %r" % (gamma,))
    check_ncc_formula(formula)
    weights = tuple(gamma ** i for i in range(len(windows)))
    return lambda fixed, moved: windowed_ncc_loss(fixed, moved, windows, weights, formula)


def multi_ncc_from_config(config):
    """The ``multi_ncc`` entry of :data:`gsmorph_tf.registry.SIMILARITIES`: :func:`multi_window_ncc` with the
    config's ``ncc_windows``, ``ncc_gamma`` and ``ncc`` formula."""
    return multi_window_ncc(windows=tuple(config.ncc_windows), gamma=config.ncc_gamma, formula=config.ncc)
