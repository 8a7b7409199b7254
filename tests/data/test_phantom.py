"""Tests of the synthetic cine-MRI phantom (gsmorph_tf.data.phantom): ACDC layout, geometry, motion, what makes
its pairs hard (through-plane motion, papillary muscles, partial volume, blood signal, contrast), safety."""
import dataclasses
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from gsmorph_tf.data.phantom import PHANTOM_FORMAT_VERSION, generate_phantom_dataset, storage
from gsmorph_tf.data.phantom.anatomy import draw_subject, subject_generators
from gsmorph_tf.data.phantom.render import Renderer, contraction_curve, material_long_axis, slab_positions
from gsmorph_tf.data.preprocessing import crop_or_pad, label_centroid
from gsmorph_tf.evaluate import metrics

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
    # bSSFP contrast, at ED and after the ES motion: labels and image moved together. At ES the LV label also
    # holds the papillary muscles and trabeculae pressed against the wall (labelled LV, as in ACDC), so its
    # mean is lower.
    for s in subjects:
        for image, labels, ratio in ((s["ed_image"], s["ed_labels"], 2.5), (s["es_image"], s["es_labels"], 2.0)):
            myo = image[labels == MYO].mean()
            assert image[labels == LV].mean() > ratio * myo
            assert image[labels == RV].mean() > ratio * myo


def test_systole_shrinks_the_lv_cavity_and_thickens_the_wall(subjects):
    # Mid slices (1 and 2 of 4): the cavity loses area while the myocardium keeps at least its area (it
    # thickens; the ES slice also shows slightly more basal, wider anatomy, see the through-plane test).
    for s in subjects:
        ed, es = s["ed_labels"][..., 1:3], s["es_labels"][..., 1:3]
        assert 0.55 <= np.sum(es == LV) / np.sum(ed == LV) <= 0.8
        assert 1.0 <= np.sum(es == MYO) / np.sum(ed == MYO) <= 1.3
        assert np.sum(s["es_labels"] == RV) < np.sum(s["ed_labels"] == RV)


def test_identity_dice_leaves_room_for_registration(subjects):
    dices = []
    for s in subjects:
        ed = _crop_around_ed_centroid(s["ed_labels"], s["ed_labels"])
        es = _crop_around_ed_centroid(s["es_labels"], s["ed_labels"])
        dice = np.mean([metrics.dice(ed, es, k) for k in (LV, MYO, RV)])
        assert 0.45 <= dice <= 0.75
        dices.append(dice)
    assert 0.5 <= np.mean(dices) <= 0.7


def test_contraction_curve_rises_to_es_then_relaxes():
    c = contraction_curve(10, 4)
    assert c[0] == 0.0 and c[4] == 1.0
    assert np.all(np.diff(c[:5]) > 0) and np.all(np.diff(c[4:]) < 0) and c[-1] > 0.0


def test_cycle_moves_away_from_ed_until_es_then_back(subjects):
    # Mean absolute change from the ED frame inside the ED heart: grows until ES, then shrinks.
    for s in subjects:
        cine = s["cine"].astype(float)
        heart = s["ed_labels"] > 0
        change = [np.abs(cine[..., t] - cine[..., 0])[heart].mean() for t in range(cine.shape[3])]
        es = s["es"] - 1
        assert np.all(np.diff(change[:es + 1]) > 0) and np.all(np.diff(change[es:]) < 0), change


def test_surroundings_move_much_less_than_the_heart(subjects):
    for s in subjects:
        change = np.abs(s["es_image"].astype(float) - s["ed_image"].astype(float))
        centre = np.argwhere(s["ed_labels"] > 0)[:, :2].mean(axis=0)
        i, j = np.indices(change.shape[:2])
        distance_mm = np.hypot(i - centre[0], j - centre[1]) * s["pixel_mm"]
        near, far = change[distance_mm < 40.0], change[distance_mm > 100.0]
        # Far from the heart only the noise (and a global intensity drift of a few %) differs between frames.
        assert far.mean() < 0.5 * near.mean()


def _drawn_subject(seed=1, index=0, n_slices=6, image_size=128, n_frames=6):
    return draw_subject(subject_generators(seed, index + 1)[index], n_slices, image_size, n_frames)


def test_base_descends_towards_the_apex_and_the_apex_barely_moves():
    s = _drawn_subject()
    descent, apex = s.base_descent, s.apex_mm
    assert 8.0 <= descent <= 15.0
    z = np.linspace(-20.0, apex + 10.0, 50)
    np.testing.assert_allclose(material_long_axis(s, z, 0.0), z)  # ED: every slice shows its own position
    # At ES the valve plane (material s = 0) lies `descent` mm towards the apex, the apex only
    # apex_descent * descent mm (<= 1.5 mm): a fixed slice shows material up to `descent` mm more basal.
    np.testing.assert_allclose(material_long_axis(s, descent, 1.0), 0.0, atol=1e-9)
    np.testing.assert_allclose(material_long_axis(s, apex + s.apex_descent * descent, 1.0), apex, atol=1e-9)
    assert np.all(np.diff(material_long_axis(s, z, 1.0)) > 0)  # no folding along the long axis
    ventricles = np.linspace(descent, apex, 20)  # ES positions of the valve plane ... apex
    shift = ventricles - material_long_axis(s, ventricles, 1.0)
    assert np.all(np.diff(shift) < 0) and shift[-1] <= 1.5


def test_slabs_average_planes_through_the_slice_thickness():
    s = _drawn_subject()
    planes = slab_positions(s)
    assert planes.shape == (6, 5)
    centres = s.first_slice_mm + s.slice_mm * np.arange(6)
    np.testing.assert_allclose(planes.mean(axis=1), centres)
    np.testing.assert_allclose(planes[:, -1] - planes[:, 0], 0.8 * s.slice_mm)  # 5 planes, thickness / 5 apart
    np.testing.assert_allclose(planes[:, 2], centres)  # labels come from the central plane


def test_basal_slice_shows_less_ventricle_at_es(subjects):
    # The base descends 8-15 mm: the most basal slice (8-13 mm below the ED valve plane) reaches the atria
    # at ES and loses much of its labelled ventricle, while mid slices keep most of theirs.
    for s in subjects:
        ed, es = s["ed_labels"] > 0, s["es_labels"] > 0
        assert es[..., 0].sum() < 0.75 * ed[..., 0].sum()
        for z in (1, 2):
            assert es[..., z].sum() >= 0.75 * ed[..., z].sum()


def _dark_islands(image, labels):
    """Dark (below halfway between the Myo and LV medians) connected regions of >= 5 pixels that lie wholly
    inside the LV label, i.e. surrounded by blood; and the fraction of the LV label that is dark."""
    dark = image < 0.5 * (np.median(image[labels == LV]) + np.median(image[labels == MYO]))
    regions, count = ndimage.label(dark)
    islands = [r for r in range(1, count + 1)
               if np.all(labels[regions == r] == LV) and np.sum(regions == r) >= 5]
    return len(islands), dark[labels == LV].mean()


@pytest.mark.parametrize("index", [0, 1, 2])
def test_papillary_muscles_stand_in_the_ed_pool_and_merge_with_the_wall_at_es(index):
    s = _drawn_subject(index=index)
    renderer = Renderer(s)
    # A slice whose central plane shows the middle of the muscles at ED and at ES.
    centres = slab_positions(s)[:, 2]
    middle = 0.5 * sum(s.papillary_range)
    z = np.argmin(np.maximum(np.abs(centres - middle), np.abs(material_long_axis(s, centres, 1.0) - middle)))
    ed_image, ed_labels = renderer.render(0.0, True)
    es_image, es_labels = renderer.render(1.0, True)
    ed_islands, _ = _dark_islands(ed_image[..., z], ed_labels[..., z])
    es_islands, es_dark = _dark_islands(es_image[..., z], es_labels[..., z])
    assert ed_islands >= 1  # dark muscle cross-sections with bright blood all around
    assert es_islands == 0  # every dark region of the LV touches the wall...
    assert es_dark >= 0.1  # ...and at least 10 % of the ES LV label is dark muscle


def test_partial_volume_where_the_cavity_ends_inside_the_slab():
    # The cavity ends exactly at the last slice's centre: the central plane (labels) has no cavity, but 2 of
    # the 5 planes averaged into the slice do, so the LV axis pixel is ~40 % of the way from myocardium to
    # blood, labelled Myo.
    s = _drawn_subject()
    last = slab_positions(s)[-1, 2]
    s = dataclasses.replace(s, cavity_tip_mm=float(last), apex_mm=float(last) + 8.0)
    image, labels = Renderer(s).render(0.0, True)
    i, j = np.rint(s.cross_sections(np.array([last])).centre[0] / s.pixel_mm).astype(int)
    assert labels[i, j, -1] == MYO and not np.any(labels[..., -1] == LV)
    myo = np.median(image[..., -1][labels[..., -1] == MYO])
    blood = np.median(image[..., -2][labels[..., -2] == LV])
    fraction = (image[i - 1:i + 2, j - 1:j + 2, -1].mean() - myo) / (blood - myo)
    assert 0.15 < fraction < 0.75


def test_blood_signal_and_global_intensity_change_between_frames():
    s = _drawn_subject()
    still = dataclasses.replace(s, flow_amplitude=0.0, blood_es_change=0.0, intensity_drift=0.0,
                                bias_es_coefficients=np.zeros(6))
    z = 2

    def frames(subject):
        renderer = Renderer(subject)
        (ed, ed_labels), (es, es_labels) = renderer.render(0.0, True), renderer.render(1.0, True)
        # Blood in both frames, away from edges and muscles.
        pool = ndimage.binary_erosion((ed_labels[..., z] == LV) & (es_labels[..., z] == LV), iterations=2)
        pool &= (ed[..., z] > 0.8 * np.median(ed[..., z][pool])) & (es[..., z] > 0.8 * np.median(es[..., z][pool]))
        return ed[..., z], es[..., z], pool

    # ES blood 20 % darker (slower flow): the pool's median drops by ~20 %.
    ed, es, pool = frames(dataclasses.replace(still, blood_es_change=-0.2))
    assert abs(np.median(es[pool]) / np.median(ed[pool]) - 0.8) < 0.06
    # Flow inhomogeneity fixed in the image, different at ED and ES: the ES/ED ratio varies across the pool.
    ed, es, pool = frames(still)
    steady = np.std(np.log(es[pool] / ed[pool]))
    ed, es, pool = frames(dataclasses.replace(still, flow_amplitude=0.15))
    assert np.std(np.log(es[pool] / ed[pool])) > 2 * steady
    # Global drift: far from the heart (which barely moves), ES = ED x (1 + intensity_drift).
    renderer = Renderer(dataclasses.replace(still, intensity_drift=0.05))
    (ed, labels), (es, _) = renderer.render(0.0, True), renderer.render(1.0, False)
    i, j = np.indices(ed.shape[:2])
    centre = np.argwhere(labels[..., z] > 0).mean(axis=0)
    far = (np.hypot(i - centre[0], j - centre[1]) * s.pixel_mm > 100.0) & (ed[..., z] > 0.2)
    np.testing.assert_allclose(np.median(es[..., z][far] / ed[..., z][far]), 1.05, atol=0.002)


def _myocardium_to_blood(subject):
    """Median Myo / median LV intensity of the noise-free ED frame with the flow inhomogeneity switched off."""
    image, labels = Renderer(dataclasses.replace(subject, flow_amplitude=0.0)).render(0.0, True)
    return np.median(image[labels == MYO]) / np.median(image[labels == LV])


def test_contrast_differs_between_subjects():
    # Each subject draws its own tissue contrast (x 0.85-1.15 per tissue around myocardium 0.26, blood 1.1):
    # the myocardium-to-blood ratio differs between subjects; with the contrast fixed it is ~one value.
    drawn = [_drawn_subject(index=index) for index in range(3)]
    ratios = [_myocardium_to_blood(s) for s in drawn]
    fixed = [_myocardium_to_blood(dataclasses.replace(s, tissue_jitter=np.ones(8))) for s in drawn]
    assert max(ratios) - min(ratios) > 0.025, ratios
    assert max(fixed) - min(fixed) < 0.015, fixed


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
    assert manifest["parameters"] == TINY and manifest["format_version"] == PHANTOM_FORMAT_VERSION
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
