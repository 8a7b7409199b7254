"""The ``learn2reg`` dataset entry end to end on a tiny task written by the test (16^3 volumes): run_train's
settings, the splits it trains, validates and tests on, streamed training, structures and label groups named in
every output, and run_benchmark's ULAE-net comparison (Initial and VoxelMorph only: the cheap rows)."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os
import subprocess
import sys
from unittest import mock

import pytest

from conftest import ROOT, raises_naming, write_learn2reg_task
from gsmorph_tf.config import ConfigError, TrainConfig
from gsmorph_tf.data import learn2reg, streaming
from gsmorph_tf.registry import DATASETS
from gsmorph_tf.studies import paper_comparison

#: Two groups, one named with a space (TensorBoard tags replace it), one label listed by integer.
GROUPS = {"Outer slabs": ["Left", 3], "Centre": ["Middle"]}


def tiny_config(tmp_path, data_dir, **options):
    return TrainConfig(dataset="learn2reg", data_dir=str(data_dir), output_dir=str(tmp_path / "run"), model="gsmorph",
                       surgery="none", lam=1.0, similarity="mse", learning_rate=1e-3, batch_size=1, epochs=1,
                       dataset_options=options)


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    """run_benchmark's 3D comparison with Initial and VoxelMorph (1 epoch of 2 streamed pairs) on a task of 6
    images (validation pair 5 -> 4, no registration_test), scored per label group."""
    tmp = tmp_path_factory.mktemp("l2r_benchmark")
    write_learn2reg_task(tmp / "task", n_images=6)
    (tmp / "groups.json").write_text(json.dumps(GROUPS))
    config = tiny_config(tmp, tmp / "task", label_groups=str(tmp / "groups.json"), pairs_per_epoch=2)
    methods = tuple(m for m in paper_comparison.comparison_methods("learn2reg") if m.name in ("Initial", "VoxelMorph"))
    # Training must consume the stream from disk: the in-memory pipeline is never asked for a pair.
    with mock.patch("gsmorph_tf.train.training.make_dataset", side_effect=AssertionError("pairs materialised")):
        records = paper_comparison.run_paper_comparison(config, str(tmp / "bench"), methods, log=lambda *a: None)
    return tmp, records


def test_run_train_flags_give_the_learn2reg_settings_of_the_oasis_flagfiles(tmp_path):
    # As run_app parses them: the nested flagfile (oasis_protocol.flags) is found in the project's flags/.
    code = ("import json, run_train; from gsmorph_tf import cli; cli._install_flagfile_lookup(); "
            "run_train.FLAGS(['run_train', '--flagfile=gsmorph_oasis.flags', "
            "'--data_dir=/data/OASIS', '--label_groups=lobes.json', '--atlas=./imagesTr/A.nii.gz']); "
            "print(json.dumps(run_train.config_from_flags().validate().to_dict()))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads(done.stdout)
    assert (config["dataset"], config["model"], config["surgery"]) == ("learn2reg", "gsmorph", "layerwise")
    assert (config["similarity"], config["ncc_windows"], config["ncc_gamma"]) == ("multi_ncc", [11, 9, 7], 0.5)
    assert (config["lam"], config["learning_rate"], config["batch_size"]) == (1.0, 1e-4, 1)
    assert (config["warp_padding"], config["ulae_moved"], config["ulae_init"]) == ("zeros", "composed", "keras")
    assert config["ncc"] == "reference"  # the same loss as ULAE-net's protocol
    assert config["dataset_options"] == {"atlas": "./imagesTr/A.nii.gz", "label_groups": "lobes.json",
                                         "intensity_norm": "max", "pairs_per_epoch": 2000, "test_fraction": 0.2}


@pytest.mark.parametrize("flagfile", ["ulae_oasis.flags", "ulae_brain.flags"])
def test_the_ulae_paper_flagfiles_train_the_reference_objective(tmp_path, flagfile):
    code = ("import json, run_train; from gsmorph_tf import cli; cli._install_flagfile_lookup(); "
            "run_train.FLAGS(['run_train', '--flagfile=%s', '--data_dir=/data/x']); "
            "print(json.dumps(run_train.config_from_flags().validate().to_dict()))" % flagfile)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
    config = json.loads(done.stdout)
    assert (config["model"], config["surgery"], config["lam"], config["reg_penalty"]) == ("ulae", "none", 1.0, "l2")
    assert (config["warp_padding"], config["ulae_moved"], config["ulae_init"]) == ("zeros", "warp3", "pytorch")
    assert config["ncc"] == "reference"
    assert (config["similarity"], config["ncc_windows"], config["ncc_gamma"]) == ("multi_ncc", [11, 9, 7], 0.5)


def test_the_run_holds_out_validation_images_and_records_the_test_rule(benchmark):
    tmp, _ = benchmark
    with open(tmp / "bench" / "voxelmorph" / "evaluation.json") as f:
        report = json.load(f)
    data = report["data"]
    assert data["val"]["pairs"] == [["./imagesTr/TOY_0005_0000.nii.gz", "./imagesTr/TOY_0004_0000.nii.gz"]]
    assert data["test"]["source"] == "held_out_training" and "no registration_test" in data["test"]["reason"]
    held_out = set(data["train"]["held_out"])
    assert {"./imagesTr/TOY_0005_0000.nii.gz", "./imagesTr/TOY_0004_0000.nii.gz"} <= held_out
    assert set(data["test"]["subjects"]) <= held_out
    assert data["train"]["images"] == 6 - len(held_out) == 2 and data["train"]["pairs_per_epoch"] == 2
    summary = (tmp / "bench" / "voxelmorph" / "evaluation.md").read_text()
    assert summary.startswith("Test split: a seeded hold-out of 2 training subjects (1 pairs")


def test_structures_are_the_label_groups_in_tables_json_and_tensorboard_tags(benchmark):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, records = benchmark
    run = tmp / "bench" / "voxelmorph"
    with open(run / "evaluation.json") as f:
        assert json.load(f)["structures"] == ["Outer slabs", "Centre"]
    summary = (run / "evaluation.md").read_text()
    assert "Dice Outer slabs (%)" in summary and "| Centre |" in summary and "SDlogJ" in summary
    for key in ("dice_Outer slabs", "hd95_Outer slabs", "dice_Centre", "hd95_Centre", "njd", "sdlogj"):
        assert key in records["VoxelMorph"]["summary"]
    # Identity on the held-out pair (image 0 moving, 2 fixed): the slabs shift by 2 voxels along axis 0.
    initial = records["Initial"]["summary"]
    assert initial["dice_Centre"]["mean"] == pytest.approx(50.0)
    assert initial["hd95_Centre"]["mean"] == pytest.approx(2 * 1.5)  # 2 voxels of 1.5 mm
    validation = EventAccumulator(str(run / "tensorboard" / "validation"), size_guidance={"tensors": 0})
    validation.Reload()
    tags = set(validation.Tags()["tensors"])
    assert {"epoch_dice_Outer_slabs", "epoch_hd95_Centre", "epoch_njd", "epoch_sdlogj"} <= tags


def test_the_benchmark_reports_ulae_table1_per_label_group(benchmark):
    tmp, records = benchmark
    assert list(records) == ["Initial", "VoxelMorph"]
    table = (tmp / "bench" / "table1.md").read_text()
    assert "| Structure | Initial | VoxelMorph |" in table
    for row in ("| Outer slabs |", "| Centre |", "| Mean |"):
        assert row in table
    assert records["VoxelMorph"]["parameters"] == 5_895_603  # the 3D U-Net of the GSMorph paper
    with open(tmp / "bench" / "figure3.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_ulae_table1_columns_and_the_wider_voxelmorph():
    names = [m.name for m in paper_comparison.comparison_methods("learn2reg")]
    assert names == ["Initial", "SyN", "VoxelMorph", "VoxelMorph x2", "ULAE-net", "ULAE-net + gradient surgery"]
    assert paper_comparison.comparison_methods("phantom") == paper_comparison.PAPER_METHODS
    from gsmorph_tf.models.gsmorph import MODEL

    network = MODEL.build_network(TrainConfig(unet_width=2), (16, 16))
    assert [layer.filters for layer in network.layers if layer.name.endswith("enc4_conv1")] == [512]
    with pytest.raises(ConfigError, match="unet_width must be 1"):
        TrainConfig(model="ulae", unet_width=2, data_dir="x").validate()


def test_registration_test_with_labels_is_the_test_split_and_nothing_is_read_up_front(tmp_path, monkeypatch):
    write_learn2reg_task(tmp_path / "task", n_images=5, val_pairs=((4, 3),), test_pairs=((1, 0),))
    reads = []
    monkeypatch.setattr(learn2reg, "read_scan", lambda *args: reads.append(args))
    splits = DATASETS.load("learn2reg").load(tiny_config(tmp_path, tmp_path / "task"))
    assert splits["record"]["test"]["source"] == "registration_test"
    assert splits["test"].subjects == ["TOY_1001_0000_to_TOY_1000_0000"]
    assert splits["train"].pair_count == 3 * 2  # images 0-2: images 3 and 4 are in the validation pair
    assert splits["val"].pair_count == 1 and splits["train"].shape == (16, 16, 16)
    assert reads == []  # headers only: volumes are read when a pair is used


def test_bad_learn2reg_settings_and_data_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="intensity_norm must be one of max, percentile, got 'zscore'"):
        tiny_config(tmp_path, "x", intensity_norm="zscore").validate()
    write_learn2reg_task(tmp_path / "task", n_images=6)
    assert DATASETS["learn2reg"].load() is streaming.DATASET
    with pytest.raises(ConfigError, match="test_fraction must be in"):
        DATASETS.load("learn2reg").load(tiny_config(tmp_path, tmp_path / "task", test_fraction=1.5))
    write_learn2reg_task(tmp_path / "odd", n_images=6, shape=(16, 16, 12))
    with raises_naming(tmp_path / "odd" / "TOY_dataset.json", "not a multiple of 16"):
        DATASETS.load("learn2reg").load(tiny_config(tmp_path, tmp_path / "odd"))


def test_mixed_precision_in_3d_without_a_gpu_is_refused_before_the_run_starts(tmp_path, monkeypatch):
    """TensorFlow's CPU kernels have no float16 MaxPool3D: a 3D mixed-precision run on a machine without a GPU is
    refused with the reason before its folder is made (not at its first step); 2D and float32 pass the check."""
    import tensorflow as tf

    from gsmorph_tf.train import training

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [])  # this test's machine: no GPU
    write_learn2reg_task(tmp_path / "task", n_images=6)
    for model in ("gsmorph", "ulae"):
        config = tiny_config(tmp_path, tmp_path / "task").replace_for_model(model=model, mixed_precision=True)
        with pytest.raises(ConfigError, match=r"mixed_precision needs a GPU for 3D images \(16x16x16\): TensorFlow's "
                                              "CPU kernels have no float16 MaxPool3D"):
            training.train_and_evaluate(config, verbose=0, log=lambda *a: None)
        assert not (tmp_path / "run").exists()
    two_d = {"train": [mock.Mock(moving=tf.zeros((1, 32, 32)))]}
    training.check_mixed_precision(tiny_config(tmp_path, "x").replace_for_model(mixed_precision=True), two_d)
    three_d = {"train": [mock.Mock(moving=tf.zeros((1, 16, 16, 16)))]}
    training.check_mixed_precision(tiny_config(tmp_path, "x"), three_d)   # float32: nothing to refuse
