"""gsmorph_tf.fileio: atomic writes, and a results file two processes fill together."""
import json

from gsmorph_tf.fileio import save_json_entry


def test_a_results_entry_keeps_what_another_process_wrote_meanwhile(tmp_path):
    path = str(tmp_path / "results.json")
    mine = save_json_entry(path, {}, "a", {"dice": 1.0})          # the file is created
    # another process (its own copy, read before "a" existed) saves its entry
    save_json_entry(path, {}, "b", {"dice": 2.0})
    mine = save_json_entry(path, mine, "c", {"dice": 3.0})
    with open(path, encoding="utf-8") as f:
        on_disk = json.load(f)
    assert on_disk == mine == {"a": {"dice": 1.0}, "b": {"dice": 2.0}, "c": {"dice": 3.0}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]   # no temp file left
