"""Tests of the synthetic cine-MRI phantom (gsmorph_tf.data.phantom): ACDC layout, geometry, motion, safety."""
import json

import nibabel as nib
import numpy as np
import pytest

from gsmorph_tf import metrics
from gsmorph_tf.data.phantom import storage
from gsmorph_tf.data.preprocessing import crop_or_pad, label_centroid
from gsmorph_tf.data.phantom import generate_phantom_dataset

# Tiny but not degenerate: 4 slices so that slices 1-2 are "mid" slices, 6 frames so ES is frame 3.
TINY = dict(n_subjects=3, n_slices=4, image_size=96, n_frames=6, seed=3)
RV, MYO, LV = 1, 2, 3


def _read_info(folder):
    lines = (folder / "Info.cfg").read_text().splitlines()
    return [tuple(part.strip() for part in line.split(":", 1)) for line in lines]


def _load(path):
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image


def _subject(folder):
    """ED/ES frame numbers, 4D image, ED/ES images and labels of one patient folder."""
    info = dict(_read_info(folder))
    ed, es = int(info["ED"]), int(info["ES"])
    name = folder.name
    return {
        "info": info, "ed": ed, "es": es,
        "cine": _load(folder / f"{name}_4d.nii.gz")[0],
        "ed_image": _load(folder / f"{name}_frame{ed:02d}.nii.gz")[0],
        "es_image": _load(folder / f"{name}_frame{es:02d}.nii.gz")[0],
        "ed_labels": _load(folder / f"{name}_frame{ed:02d}_gt.nii.gz")[0],
        "es_labels": _load(folder / f"{name}_frame{es:02d}_gt.nii.gz")[0],
        "pixel_mm": float(_load(folder / f"{name}_frame{ed:02d}.nii.gz")[1].header.get_zooms()[0]),
    }


def _crop_around_ed_centroid(volume, ed_labels, size=128):
    """[Z, size, size] crop centred on the in-plane centroid of the ED foreground, as the loader crops."""
    return crop_or_pad(np.moveaxis(volume, -1, 0), label_centroid(np.moveaxis(ed_labels, -1, 0)), (size, size))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return generate_phantom_dataset(tmp_path_factory.mktemp("tiny") / "phantom", **TINY)


@pytest.fixture(scope="module")
def subjects(tiny_root):
    return [_subject(folder) for folder in sorted((tiny_root / "training").iterdir())]


def test_acdc_layout_and_info_cfg(tiny_root):
    folders = sorted((tiny_root / "training").iterdir())
    assert [f.name for f in folders] == ["patient001", "patient002", "patient003"]
    assert sorted(p.name for p in tiny_root.iterdir()) == ["phantom.json", "training"]
    for folder in folders:
        info = _read_info(folder)
        assert [key for key, _ in info] == ["ED", "ES", "Group", "Height", "NbFrame", "Weight"]
        info = dict(info)
        ed, es, n_frames = int(info["ED"]), int(info["ES"]), int(info["NbFrame"])
        assert ed == 1 and n_frames == TINY["n_frames"]
        assert 3 <= es <= 4  # ES at 35-45 % of a 6-frame cycle: 0-based frame 2 or 3
        assert info["Group"] in ("NOR", "MINF", "DCM", "HCM", "RV")
        assert 150.0 <= float(info["Height"]) <= 195.0 and 50.0 <= float(info["Weight"]) <= 110.0
        name = folder.name
        assert sorted(p.name for p in folder.iterdir()) == sorted([
            "Info.cfg", f"{name}_4d.nii.gz", f"{name}_frame01.nii.gz", f"{name}_frame01_gt.nii.gz",
            f"{name}_frame{es:02d}.nii.gz", f"{name}_frame{es:02d}_gt.nii.gz"])
        assert _load(folder / f"{name}_4d.nii.gz")[0].shape[3] == n_frames


def test_shapes_zooms_affine_and_dtypes(tiny_root):
    for folder in sorted((tiny_root / "training").iterdir()):
        name = folder.name
        cine, cine_nifti = _load(folder / f"{name}_4d.nii.gz")
        frame, frame_nifti = _load(folder / f"{name}_frame01.nii.gz")
        labels, labels_nifti = _load(folder / f"{name}_frame01_gt.nii.gz")
        nx, ny, nz = frame.shape
        assert nx == 96 and 96 <= ny <= 112 and nz == 4
        assert cine.shape == (nx, ny, nz, 6) and labels.shape == frame.shape
        assert cine.dtype == np.int16 and frame.dtype == np.int16 and labels.dtype == np.uint8
        pixel, pixel_y, slice_mm = frame_nifti.header.get_zooms()
        assert pixel == pixel_y
        assert 1.3 * 2 <= pixel <= 1.8 * 2  # 1.3-1.8 mm at 192 px, scaled by 192 / 96
        assert 8.0 <= slice_mm <= 10.0
        np.testing.assert_allclose(frame_nifti.affine, np.diag([pixel, pixel, slice_mm, 1.0]), rtol=1e-6)
        np.testing.assert_allclose(labels_nifti.affine, frame_nifti.affine)
        np.testing.assert_allclose(cine_nifti.affine, frame_nifti.affine)
        zooms_4d = cine_nifti.header.get_zooms()
        np.testing.assert_allclose(zooms_4d[:3], (pixel, pixel, slice_mm))
        # frame time: a 55-90 beats/min cycle split into 6 frames
        assert 60000 / 90 / 6 <= zooms_4d[3] <= 60000 / 55 / 6


def test_labels_are_acdc_values_with_all_structures_in_mid_slices(subjects):
    for s in subjects:
        for labels in (s["ed_labels"], s["es_labels"]):
            assert set(np.unique(labels)) == {0, RV, MYO, LV}
        for z in (1, 2):
            assert set(np.unique(s["ed_labels"][..., z])) == {0, RV, MYO, LV}


def test_cine_frames_equal_the_ed_and_es_files(subjects):
    for s in subjects:
        np.testing.assert_array_equal(s["cine"][..., s["ed"] - 1], s["ed_image"])
        np.testing.assert_array_equal(s["cine"][..., s["es"] - 1], s["es_image"])
        assert not np.array_equal(s["ed_image"], s["es_image"])


def test_labels_match_bright_blood_and_dark_myocardium(subjects):
    # bSSFP contrast, at ED and after the ES motion: labels and image moved together.
    for s in subjects:
        for image, labels in ((s["ed_image"], s["ed_labels"]), (s["es_image"], s["es_labels"])):
            myo = image[labels == MYO].mean()
            assert image[labels == LV].mean() > 2.5 * myo
            assert image[labels == RV].mean() > 2.5 * myo


def test_systole_shrinks_the_lv_cavity_and_thickens_the_wall(subjects):
    for s in subjects:
        ed, es = s["ed_labels"], s["es_labels"]
        lv_ratio = np.sum(es == LV) / np.sum(ed == LV)
        assert 0.5 <= lv_ratio <= 0.7  # ACDC-like 30-50 % loss of cavity area
        # The myocardium keeps its area while the cavity shrinks, so the wall thickens (not a scaling).
        assert 0.9 <= np.sum(es == MYO) / np.sum(ed == MYO) <= 1.1
        assert np.sum(es == RV) < 0.9 * np.sum(ed == RV)


def test_identity_dice_leaves_room_for_registration(subjects):
    dices = []
    for s in subjects:
        ed = _crop_around_ed_centroid(s["ed_labels"], s["ed_labels"])
        es = _crop_around_ed_centroid(s["es_labels"], s["ed_labels"])
        dice = np.mean([metrics.dice(ed, es, k) for k in (LV, MYO, RV)])
        assert 0.45 <= dice <= 0.75
        dices.append(dice)
    assert 0.5 <= np.mean(dices) <= 0.7


def test_cycle_contracts_to_es_then_relaxes(subjects):
    # Bright blood inside the ED heart, per frame: falls from ED to ES, then rises back towards ED.
    for s in subjects:
        cine = s["cine"].astype(float)
        heart = s["ed_labels"] > 0
        blood_level = 0.6 * cine[..., 0][s["ed_labels"] == LV].mean()
        counts = [np.sum(cine[..., t][heart] > blood_level) for t in range(cine.shape[3])]
        es = s["es"] - 1
        assert np.all(np.diff(counts[:es + 1]) < 0) and np.all(np.diff(counts[es:]) > 0), counts
        assert counts[es] < 0.85 * counts[0]


def test_surroundings_move_much_less_than_the_heart(subjects):
    for s in subjects:
        change = np.abs(s["es_image"].astype(float) - s["ed_image"].astype(float))
        centre = np.argwhere(s["ed_labels"] > 0)[:, :2].mean(axis=0)
        i, j = np.indices(change.shape[:2])
        distance_mm = np.hypot(i - centre[0], j - centre[1]) * s["pixel_mm"]
        near, far = change[distance_mm < 40.0], change[distance_mm > 100.0]
        # Far from the heart only the noise differs between frames.
        assert far.mean() < 0.5 * near.mean()


def test_same_seed_same_arrays_other_seed_other_arrays(tiny_root, tmp_path):
    again = generate_phantom_dataset(tmp_path / "again", **TINY)
    other = generate_phantom_dataset(tmp_path / "other", **dict(TINY, seed=4))
    for path in sorted((tiny_root / "training").rglob("*.nii.gz")):
        relative = path.relative_to(tiny_root)
        np.testing.assert_array_equal(_load(again / relative)[0], _load(path)[0])
    first = _load(tiny_root / "training/patient001/patient001_frame01.nii.gz")[0]
    other_first = _load(other / "training/patient001/patient001_frame01.nii.gz")[0]
    assert first.shape != other_first.shape or not np.array_equal(first, other_first)


def test_subject_does_not_depend_on_the_number_of_subjects(tiny_root, tmp_path):
    fewer = generate_phantom_dataset(tmp_path / "fewer", **dict(TINY, n_subjects=1))
    path = "training/patient001/patient001_4d.nii.gz"
    np.testing.assert_array_equal(_load(fewer / path)[0], _load(tiny_root / path)[0])


def test_second_call_returns_without_rewriting(tmp_path):
    root = generate_phantom_dataset(tmp_path / "phantom", **TINY)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert generate_phantom_dataset(str(root), **TINY) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before
    manifest = json.loads((root / "phantom.json").read_text())
    assert manifest["parameters"] == TINY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phantom"]  # no temporary directory left


def test_other_parameters_on_an_existing_phantom_raise(tmp_path):
    root = generate_phantom_dataset(tmp_path / "phantom", **TINY)
    with pytest.raises(ValueError, match=r"(?s)phantom.*n_frames=6 \(requested 8\)"):
        generate_phantom_dataset(root, **dict(TINY, n_frames=8))
    assert _load(root / "training/patient001/patient001_4d.nii.gz")[0].shape[3] == 6


def test_non_phantom_content_is_never_touched(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a phantom"):
        generate_phantom_dataset(root, **TINY)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_incomplete_phantom_raises(tmp_path):
    root = generate_phantom_dataset(tmp_path / "phantom", **TINY)
    (root / "training/patient002/patient002_frame01_gt.nii.gz").unlink()
    with pytest.raises(ValueError, match="incomplete.*patient002_frame01_gt"):
        generate_phantom_dataset(root, **TINY)


def test_empty_directory_is_filled(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    generate_phantom_dataset(root, **TINY)
    assert (root / "phantom.json").is_file() and len(list((root / "training").iterdir())) == 3


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def fail_on_second_subject(folder, name, subject):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(folder, name, subject)

    original = storage._write_subject
    monkeypatch.setattr(storage, "_write_subject", fail_on_second_subject)
    with pytest.raises(KeyboardInterrupt):
        generate_phantom_dataset(tmp_path / "phantom", **TINY)
    assert calls == ["patient001", "patient002"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argument, value", [("n_frames", 1), ("n_slices", 0), ("image_size", 16), ("seed", -1),
                                             ("n_subjects", 2.5)])
def test_bad_arguments_are_named(tmp_path, argument, value):
    with pytest.raises(ValueError, match=argument):
        generate_phantom_dataset(tmp_path / "phantom", **dict(TINY, **{argument: value}))
    assert list(tmp_path.iterdir()) == []
