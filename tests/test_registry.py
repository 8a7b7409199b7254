"""The registries (gsmorph_tf.registry): every entry resolves to its interface, names are checked with a
message listing the registered ones, and settings are validated against the entries."""
import pytest

from gsmorph_tf.config import TrainConfig
from gsmorph_tf.errors import ConfigError
from gsmorph_tf.plugins import DatasetPlugin, ModelPlugin
from gsmorph_tf.registry import DATASETS, MODELS, SIMILARITIES, Option, RegistryError


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_entry_is_a_model_plugin(name):
    assert isinstance(MODELS.load(name), ModelPlugin)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_entry_is_a_dataset_plugin(name):
    assert isinstance(DATASETS.load(name), DatasetPlugin)


@pytest.mark.parametrize("name", SIMILARITIES.names())
def test_every_similarity_entry_builds_a_loss(name):
    assert callable(SIMILARITIES.load(name)(TrainConfig(similarity=name)))


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(RegistryError, match="unknown model 'voxelmorph'; registered: gsmorph, hypermorph, ulae"):
        MODELS["voxelmorph"]
    with pytest.raises(ConfigError, match="dataset='oasis' is not one of: phantom, acdc, mnms, brain, learn2reg"):
        TrainConfig(dataset="oasis", data_dir="x").validate()


def test_dataset_settings_take_the_entrys_defaults_and_are_checked():
    config = TrainConfig(dataset="phantom", data_dir="x", dataset_options={"phantom_slices": 3})
    assert config.dataset_options == {"phantom_subjects": 20, "phantom_slices": 3, "phantom_size": 192}
    with pytest.raises(ConfigError, match="phantom_subjects must be an integer >= 3, got 2"):
        TrainConfig(dataset="phantom", data_dir="x", dataset_options={"phantom_subjects": 2}).validate()
    with pytest.raises(ConfigError, match="dataset=acdc has no setting phantom_size"):
        TrainConfig(dataset="acdc", data_dir="x", dataset_options={"phantom_size": 64}).validate()


def test_an_entrys_constraints_are_checked_before_any_data_is_read():
    with pytest.raises(ConfigError, match="model=hypermorph takes surgery=none, not 'pcgrad'"):
        TrainConfig(model="hypermorph", surgery="pcgrad", data_dir="x").validate()
    with pytest.raises(ConfigError, match="model=hypermorph takes similarity mse or ncc, not 'multi_ncc'"):
        TrainConfig(model="hypermorph", surgery="none", similarity="multi_ncc", data_dir="x").validate()
    TrainConfig(dataset="brain", model="ulae", similarity="multi_ncc", data_dir="x").validate()


def test_option_conversion():
    shape = Option("shape", (16, 16, 16), "", kind="int_list", lower_bound=16, length=3, multiple_of=16)
    assert shape.check("32,16,48") == (32, 16, 48)
    for bad in ("32,16", "32,17,16", "a,b,c"):
        with pytest.raises(ValueError, match="shape must be 3 comma-separated integers >= 16 that are multiples"):
            shape.check(bad)


def test_old_run_configs_are_read_with_their_dataset_settings():
    stored = {"dataset": "brain", "brain_pairs": 4, "brain_shape": [32, 32, 32], "model": "ulae"}
    config = TrainConfig.from_dict(stored)
    assert config.dataset_options["brain_shape"] == (32, 32, 32) and config.option("brain_pairs") == 4
