"""run_benchmark on tiny images: every Table 1 row, Table 2, Fig. 3, and a resumed run retrains nothing."""
import gsmorph_tf  # noqa: F401  (legacy Keras before TensorFlow)

import json
import os

import pytest

from gsmorph_tf.studies import paper_comparison
from conftest import PHANTOM
from gsmorph_tf.config import TrainConfig


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("benchmark")
    config = TrainConfig(dataset="phantom", data_dir=str(tmp / "phantom"), output_dir=str(tmp / "bench"),
                         dataset_options=PHANTOM, crop_size=32, batch_size=4,
                         epochs=1, learning_rate=1e-3)
    messages = []
    records = paper_comparison.run_paper_comparison(config, config.output_dir, log=messages.append)
    return tmp, config, records, messages


def test_every_row_of_table1_is_written(finished):
    tmp, config, records, _ = finished
    names = [m.name for m in paper_comparison.PAPER_METHODS]
    assert list(records) == names
    table = open(os.path.join(config.output_dir, "table1.md")).read()
    for name in names:
        assert "| %s |" % name in table
    # one test subject with 2 slices: every method scored every pair
    for name, record in records.items():
        assert len(record["subjects"]) == 1
        assert len(record["ms_per_pair"]) == (0 if name == "Initial" else 2)
    assert records["Initial"]["summary"]["njd"]["mean"] == 0.0
    assert records["GSMorph"]["parameters"] == records["VoxelMorph-m"]["parameters"]  # same network
    assert records["HyperMorph"]["chosen"]["hypermorph_lambda"] > 0


def test_table2_and_figure(finished):
    _, config, records, _ = finished
    table = open(os.path.join(config.output_dir, "table2.md")).read()
    assert "| SyN | - |" in table and "Measured in this run on:" in table
    assert "| GSMorph | {:,} |".format(records["GSMorph"]["parameters"]) in table
    with open(os.path.join(config.output_dir, "figure3.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(config.output_dir, "results.json")) as f:
        assert set(json.load(f)["methods"]) == set(records)


def test_rerun_reads_finished_methods_back(finished):
    _, config, records, _ = finished
    record_files = [os.path.join(config.output_dir, m.slug, "benchmark.json") for m in paper_comparison.PAPER_METHODS]
    mtimes = [os.path.getmtime(p) for p in record_files]
    messages = []
    again = paper_comparison.run_paper_comparison(config, config.output_dir, log=messages.append)
    assert [os.path.getmtime(p) for p in record_files] == mtimes
    assert not any("training" in m for m in messages)
    assert again["GSMorph"]["summary"] == records["GSMorph"]["summary"]
