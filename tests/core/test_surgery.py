"""The gradient-surgery rule on hand-made gradients (numbers checkable by hand)."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from gsmorph_tf.core.surgery import SURGERY_MODES, group_cosines, project_gradients, variable_groups


def t(values):
    return tf.constant(values, tf.float32)


def as_numpy(grads):
    return [None if g is None else g.numpy() for g in grads]


def test_conflicting_pair_is_projected_orthogonal_to_reg():
    # <[1, 0], [-1, 1]> = -1, ||g_reg||^2 = 2: g = [1, 0] - (-1 / 2) [-1, 1] = [0.5, 0.5]
    (g,) = project_gradients([t([1.0, 0.0])], [t([-1.0, 1.0])], "layerwise")
    np.testing.assert_allclose(g.numpy(), [0.5, 0.5])
    assert float(tf.reduce_sum(g * t([-1.0, 1.0]))) == pytest.approx(0.0)


def test_agreeing_pair_keeps_similarity_gradient():
    (g,) = project_gradients([t([1.0, 2.0])], [t([1.0, 0.0])], "layerwise")
    np.testing.assert_array_equal(g.numpy(), [1.0, 2.0])


def test_each_variable_is_its_own_group_by_default():
    sim = [t([1.0, 0.0]), t([3.0])]
    reg = [t([-1.0, 1.0]), t([1.0])]
    first, second = as_numpy(project_gradients(sim, reg, "layerwise"))
    np.testing.assert_allclose(first, [0.5, 0.5])  # conflicting group projected
    np.testing.assert_allclose(second, [3.0])      # agreeing group kept


def test_pcgrad_differs_from_layerwise_when_groups_disagree():
    # Group 0 conflicts (dot -1), group 1 agrees (dot +3): the whole-network dot is +2 > 0, so PCGrad keeps
    # g_sim everywhere while the layer-wise rule still projects group 0.
    sim = [t([1.0, 0.0]), t([3.0])]
    reg = [t([-1.0, 1.0]), t([1.0])]
    pcgrad = as_numpy(project_gradients(sim, reg, "pcgrad"))
    layerwise = as_numpy(project_gradients(sim, reg, "layerwise"))
    np.testing.assert_array_equal(pcgrad[0], [1.0, 0.0])
    np.testing.assert_array_equal(pcgrad[1], [3.0])
    assert not np.allclose(pcgrad[0], layerwise[0])


def test_pcgrad_projects_the_concatenated_gradient_when_it_conflicts():
    # Whole-network dot = -2 + 1 = -1, ||g_reg||^2 = 4 + 1 = 5: g = g_sim + 1/5 g_reg
    sim = [t([1.0]), t([1.0])]
    reg = [t([-2.0]), t([1.0])]
    out = as_numpy(project_gradients(sim, reg, "pcgrad"))
    np.testing.assert_allclose(np.concatenate(out), [1.0 - 0.4, 1.0 + 0.2], rtol=1e-6)


def test_explicit_groups_pool_their_members():
    # As one group the pair above agrees overall (dot +2), so nothing is projected.
    sim = [t([1.0, 0.0]), t([3.0])]
    reg = [t([-1.0, 1.0]), t([1.0])]
    out = as_numpy(project_gradients(sim, reg, "layerwise", groups=[[0, 1]]))
    np.testing.assert_array_equal(out[0], [1.0, 0.0])


def test_none_is_weighted_sum():
    (g,) = project_gradients([t([1.0, 2.0])], [t([10.0, -20.0])], "none", lam=0.1)
    np.testing.assert_allclose(g.numpy(), [2.0, 0.0])


@pytest.mark.parametrize("mode", SURGERY_MODES)
def test_zero_regulariser_gradient_never_gives_nan(mode):
    (g,) = project_gradients([t([1.0, -2.0])], [t([0.0, 0.0])], mode, seed=3)
    assert np.all(np.isfinite(g.numpy()))
    # Projections leave g_sim alone; GS-Agr (as the reference) finds no sign agreement with a zero g_reg, and
    # its noise scale mean(|agree * g_sim|) is then 0: the step is zero.
    expected = [0.0, 0.0] if mode.startswith("agr") else [1.0, -2.0]
    np.testing.assert_allclose(g.numpy(), expected)


def test_missing_gradients():
    sim = [t([1.0]), None, None]
    reg = [None, t([2.0]), None]
    out = project_gradients(sim, reg, "none", lam=0.5)
    np.testing.assert_allclose(out[0].numpy(), [1.0])  # missing g_reg counts as zero
    np.testing.assert_allclose(out[1].numpy(), [1.0])  # missing g_sim counts as zero
    assert out[2] is None


def test_agr_sum_keeps_only_elements_whose_signs_agree():
    # Signs agree at 0 and at 3 (both zero); disagree at 1; g_reg exactly 0 at 2 is a disagreement, as in the
    # reference (sign(3) = 1 != sign(0) = 0).
    (g,) = project_gradients([t([1.0, -2.0, 3.0, 0.0])], [t([1.0, 1.0, 0.0, 0.0])], "agr_sum")
    np.testing.assert_array_equal(g.numpy(), [1.0, 0.0, 0.0, 0.0])


def test_agr_works_on_the_whole_network_not_per_group():
    # Groups are ignored: the same elements are kept whatever the grouping.
    sim, reg = [t([1.0, -2.0]), t([3.0])], [t([1.0, 1.0]), t([-1.0])]
    for groups in (None, [[0, 1]]):
        first, second = project_gradients(sim, reg, "agr_sum", groups=groups)
        np.testing.assert_array_equal(first.numpy(), [1.0, 0.0])
        np.testing.assert_array_equal(second.numpy(), [0.0])


def test_agr_rand_replaces_disagreeing_elements_with_scaled_seeded_noise():
    n = 20000
    sim = np.ones(n, np.float32) * 2.0
    sim[n // 2:] = -2.0
    sim[0] = 4.0
    reg = np.ones(n, np.float32)  # the negative half disagrees
    # Noise std = mean(|agree * g_sim|) over ALL n elements of the network (the zeroed half included), spread
    # over two tensors: (4 + 2 * (n/2 - 1)) / n.
    half = n // 2
    (a1, a2) = project_gradients([t(sim[:half]), t(sim[half:])], [t(reg[:half]), t(reg[half:])], "agr_rand", seed=7)
    (b1, b2) = project_gradients([t(sim[:half]), t(sim[half:])], [t(reg[:half]), t(reg[half:])], "agr_rand", seed=7)
    (_, c2) = project_gradients([t(sim[:half]), t(sim[half:])], [t(reg[:half]), t(reg[half:])], "agr_rand", seed=8)
    np.testing.assert_array_equal(a1.numpy(), sim[:half])      # agreeing elements kept
    np.testing.assert_array_equal(a2.numpy(), b2.numpy())      # reproducible for a seed
    assert not np.array_equal(a2.numpy(), c2.numpy())          # another seed, other noise
    expected_std = (4.0 + 2.0 * (half - 1)) / n
    noise = a2.numpy()
    assert abs(noise.mean()) < 0.05 * expected_std
    assert noise.std() == pytest.approx(expected_std, rel=0.05)


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="layerwise") as info:
        project_gradients([t([1.0])], [t([1.0])], "gradnorm")
    assert "gradnorm" in str(info.value)


def test_misaligned_and_bad_groups_are_rejected():
    with pytest.raises(ValueError, match="aligned"):
        project_gradients([t([1.0])], [t([1.0]), t([1.0])], "layerwise")
    with pytest.raises(ValueError, match="out of range"):
        project_gradients([t([1.0])], [t([1.0])], "layerwise", groups=[[0, 5]])
    with pytest.raises(ValueError, match="more than one group"):
        project_gradients([t([1.0]), t([1.0])], [t([1.0]), t([1.0])], "layerwise", groups=[[0, 1], [1]])


def test_group_cosines():
    cos = group_cosines([t([1.0, 0.0]), t([2.0]), t([1.0])], [t([-1.0, 1.0]), t([4.0]), t([0.0])]).numpy()
    np.testing.assert_allclose(cos, [-1.0 / np.sqrt(2.0), 1.0, 0.0], rtol=1e-6)


def test_rule_runs_inside_tf_function():
    @tf.function
    def step(s, r):
        return project_gradients([s], [r], "layerwise")[0]

    np.testing.assert_allclose(step(t([1.0, 0.0]), t([-1.0, 1.0])).numpy(), [0.5, 0.5])


def test_variable_and_layer_grouping_cover_every_variable_once():
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3),
                                 tf.keras.layers.BatchNormalization(), tf.keras.layers.Dense(2, use_bias=False)])
    assert variable_groups(model, "variable") == [[0], [1], [2], [3], [4]]
    assert variable_groups(model, "layer") == [[0, 1], [2, 3], [4]]
    with pytest.raises(ValueError, match="variable, layer"):
        variable_groups(model, "block")
