"""The gsmorph model entry: the reference's optimizer step by hand, and the paper's method names."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import numpy as np
import pytest
import tensorflow as tf

from gsmorph_tf.config import TrainConfig
from gsmorph_tf.models.gsmorph import MODEL, build_optimizer


def test_adam_step_is_pytorchs_adamw_without_weight_decay():
    # PyTorch's first step: m_hat = g, v_hat = g^2, update = lr * g / (|g| + eps). With a gradient of the size of
    # eps the placement of eps matters: 1e-3 * 1e-7 / (1e-7 + 1e-8) here, 2.4e-4 with tf-keras' default.
    optimizer = build_optimizer(TrainConfig(learning_rate=1e-3))
    variable = tf.Variable([0.0])
    optimizer.apply_gradients([(tf.constant([1e-7]), variable)])
    assert float(variable.numpy()[0]) == pytest.approx(-1e-3 * 1e-7 / (1e-7 + 1e-8), rel=1e-4)


@pytest.mark.parametrize("settings, name", [
    (dict(surgery="layerwise"), "GSMorph"), (dict(surgery="pcgrad"), "GS-PCGrad"), (dict(surgery="agr_rand"), "GS-Agr"),
    (dict(surgery="none", lam=0.01), "VoxelMorph (lam=0.01)")])
def test_method_names_are_the_papers(settings, name):
    assert MODEL.method_name(TrainConfig(**settings)) == name


def test_training_model_takes_the_configs_losses():
    network = MODEL.build_network(TrainConfig(), (16, 16))
    model = MODEL.build_training_model(TrainConfig(surgery="none", lam=0.3, reg_penalty="l1"), network)
    flow = np.zeros((1, 16, 16, 2), np.float32)
    flow[..., 0] = np.arange(16)[:, None] * 0.5
    assert float(model.regularizer_fn(tf.constant(flow))) == pytest.approx(0.125)   # l1: (0.25 + 0) / 2
    assert model.lam == 0.3 and model.surgery == "none"


def test_optimizer_slots_are_built_up_front_and_checkpoints_of_lazily_built_ones_restore(tmp_path, monkeypatch):
    """The training model comes with Adam's slots, so the first step is traced once (a tf.function that creates
    variables is traced twice); a checkpoint written when the slots came with the first step (runs trained
    before this) restores into it variable by variable, moments included."""
    from gsmorph_tf.models import gsmorph

    config = TrainConfig(surgery="pcgrad", learning_rate=1e-3)
    moving, fixed = (tf.random.stateless_uniform((1, 16, 16, 1), seed=(s, 0)) for s in (1, 2))
    model = MODEL.build_training_model(config, MODEL.build_network(config, (16, 16)))
    assert len(model.optimizer.variables) == 1 + 2 * len(model.network.trainable_variables)  # step, m and v
    model.train_on_batch([moving, fixed])
    assert model.train_function.experimental_get_tracing_count() == 1

    def lazily_built(model, config, example_inputs):  # what the entries did before
        model.compile(optimizer=build_optimizer(config))
        model(example_inputs)
        return model

    with monkeypatch.context() as patch:
        patch.setattr(gsmorph, "compile_and_build", lazily_built)
        old = MODEL.build_training_model(config, MODEL.build_network(config, (16, 16)))
    for _ in range(2):
        old.train_on_batch([moving, fixed])
    assert old.train_function.experimental_get_tracing_count() == 2
    path = tf.train.Checkpoint(model=old).write(str(tmp_path / "old"))   # what BackupAndRestore keeps

    new = MODEL.build_training_model(config, MODEL.build_network(config, (16, 16)))
    tf.train.Checkpoint(model=new).read(path).assert_existing_objects_matched()
    # Slot names differ ("Adam/m/..." when made inside apply_gradients); checkpoints match objects, not names.
    assert [v.name.replace("Adam/", "") for v in old.optimizer.variables] == [v.name for v in new.optimizer.variables]
    for restored, saved in zip(new.optimizer.variables + new.network.weights,
                               old.optimizer.variables + old.network.weights):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy())
    assert int(new.optimizer.iterations) == 2
