"""Tracking motion through a whole cardiac cine with an exported registration model (``run_track.py``).

Input: a 4-D short-axis cine ``[X, Y, Z, T]`` with its end-diastolic (ED) frame and ED label map, as distributed
by ACDC (:func:`read_acdc_cine`), M&Ms (:func:`read_mnms_cine`) or as any 4-D NIfTI (:func:`read_cine`); frames
are 0-based here (ACDC's Info.cfg counts from 1, the M&Ms CSV from 0). Every file, shape, frame number and label
map (values, and on the cine's grid) is checked by the readers, before a model is loaded.

Field convention (the one of :mod:`gsmorph_tf.register` and DESIGN.md): the field of frame t is ``u_t`` on frame
t's grid (every frame shares the cine's grid), in voxels along i, j, k, such that
``ED_warped(x) = ED(x + u_t(x))`` matches frame t: it pulls the ED frame (and its labels) onto frame t. It is the
model run with **fixed = frame t and moving = the ED frame**, so no field has to be inverted; ``u_ED = 0``.
Two ways to get it (``strategy``):

``direct``
    every frame registered with the ED frame: ``u_t = f(moving=ED, fixed=t)``;
``composed`` (frame to frame)
    consecutive frames registered, ``v_t = f(moving=t-1, fixed=t)``, and composed along the cycle from ED:
    ``u_t = v_t + u_{t-1} o v_t`` (:func:`gsmorph_tf.core.flows.compose_flows`, voxelmorph's linear transform);
    frames before ED are reached by going on past the last frame to frame 0 (the cycle repeats).

README "Tracking motion through a cine" has which propagates the ED labels better on the phantom, by how much;
:data:`DEFAULT_STRATEGY` is that one.

Registration is :func:`~gsmorph_tf.register.register_volumes` on the raw frames (each pair scaled jointly to
[0, 1], as training), through one window for every frame, so the fields are comparable: placed by the motion
rule over the whole cine for 2D models (:func:`~gsmorph_tf.data.preprocessing.motion_center`, slice by slice
registration), at the image centre for 3D models. Outside the window the field is 0.

Outputs in ``output_dir``, on the cine's grid (its affine and header), ``<name>`` the patient / subject code or
the cine's file stem (:func:`output_paths`):

``<name>_flows.nii.gz``
    float32 ``[X, Y, Z, T, 3]``: frame t's ``u_t`` (voxels, components along i, j, k; 0 along k for 2D models).
``<name>_labels.nii.gz``
    uint8 ``[X, Y, Z, T]``: the ED labels warped by ``u_t`` into every frame (one-hot linear, as ``run_apply.py``'s
    default, :func:`~gsmorph_tf.register.apply.warp_label_map`); frame ED holds the ED labels themselves.
``<name>_volumes.csv``, ``<name>_volumes.png``
    LV / Myo / RV volume (ml) of every frame's propagated labels (voxel volume from the header's zooms).
``<name>_summary.json``
    EDV, ESV, EF of LV and RV (ES = the frame of minimum LV volume, and at the given ES frame when known),
    myocardial mass, and the ES check where the ES frame has manual labels (:func:`summarise`).

Memory is flat in the number of frames: frames are registered one at a time, and only the field of the frame
before is kept (for ``composed``); the 4-D outputs are written frame by frame into ``np.memmap`` temp files in
``output_dir`` (Fortran order, as NIfTI stores them), which are then written as NIfTI to temp names and renamed.
The cine itself is held in memory as read, and placing the window reads it once more as a float64 temporary
(:func:`~gsmorph_tf.data.preprocessing.motion_map`'s temporal std), freed before the first registration. Nothing
half-written is left: every file goes through a temp name, and the memmaps are deleted.

Import it as ``from gsmorph_tf.register import track``. Like :mod:`gsmorph_tf.register.learn2reg` it builds on
:func:`~gsmorph_tf.register.register_volumes`, so the package does not import it (that would be an import cycle).
"""
from gsmorph_tf import compat  # noqa: F401  (legacy Keras before TensorFlow)

import dataclasses
import json
import os
import pathlib
import time

import nibabel as nib
import numpy as np
import tensorflow as tf

from gsmorph_tf.core.flows import compose_flows
from gsmorph_tf.data.acdc import ACDC_LABELS, read_info_cfg
from gsmorph_tf.data.mnms import MNMS_LABELS, read_mnms_csv
from gsmorph_tf.data.nifti import DatasetError, load_nifti
from gsmorph_tf.data.preprocessing import image_center, motion_center
from gsmorph_tf.data.subjects import validate_label_map
from gsmorph_tf.evaluate.metrics import dice_per_structure, hd95_per_structure
from gsmorph_tf.fileio import atomic_save_figure, atomic_save_nifti, atomic_write_text
from gsmorph_tf.register import register_volumes
from gsmorph_tf.register.apply import warp_label_map
from gsmorph_tf.register.files import nifti_stem
from gsmorph_tf.register.world import Grid

__all__ = ["Cine", "DEFAULT_STRATEGY", "LABEL_CONVENTIONS", "MYOCARDIAL_DENSITY_G_PER_ML", "STRATEGIES",
           "ejection_fraction", "frame_order", "output_paths", "read_acdc_cine", "read_cine", "read_mnms_cine",
           "register_frame", "structure_volumes_ml", "summarise", "track_cine", "track_fields", "track_window"]

#: Ways to get each frame's field (module docstring).
STRATEGIES = ("direct", "composed")
#: The strategy that propagated the ED labels better on the phantom (README "Tracking motion through a cine").
DEFAULT_STRATEGY = "direct"
#: Label conventions by dataset (DESIGN.md): structure name -> integer.
LABEL_CONVENTIONS = {"acdc": ACDC_LABELS, "mnms": MNMS_LABELS}
#: Myocardial tissue density (g/ml) turning the ED myocardial volume into a mass: the value used for left
#: ventricular mass in cardiac MR (SCMR post-processing recommendations, Schulz-Menger et al., JCMR 2020) and
#: in the ACDC challenge's clinical indices (Bernard et al., IEEE TMI 2018).
MYOCARDIAL_DENSITY_G_PER_ML = 1.05
#: Structures reported, in this order.
STRUCTURES = ("LV", "Myo", "RV")

_SUFFIXES = {"flows": "_flows.nii.gz", "labels": "_labels.nii.gz", "volumes_csv": "_volumes.csv",
             "volumes_png": "_volumes.png", "summary": "_summary.json"}
_DESCRIPTIONS = {"flows": "u_t per frame t, voxels i,j,k: ED_warped(x)=ED(x+u_t(x)) on frame t",
                 "labels": "ED labels warped into each frame (one-hot linear)"}


@dataclasses.dataclass
class Cine:
    """A validated 4-D cine and what is known about it.

    Attributes:
        name: prefix of the output files (patient folder, M&Ms code or the cine's file stem).
        path: the cine file.
        frames: ``[X, Y, Z, T]`` as stored (float32, or the stored integer type).
        affine: 4 x 4 voxel-to-world (mm); header: the cine's NIfTI header.
        label_values: structure name -> integer (:data:`LABEL_CONVENTIONS`).
        ed: 0-based ED frame; es: 0-based ES frame or None.
        ed_labels, es_labels: int32 ``[X, Y, Z]`` label maps of those frames, or None.
    """
    name: str
    path: str
    frames: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header
    label_values: dict
    ed: int
    es: int | None = None
    ed_labels: np.ndarray | None = None
    es_labels: np.ndarray | None = None

    @property
    def zooms(self):
        """Voxel size (mm) along X, Y, Z from the header."""
        return tuple(float(z) for z in self.header.get_zooms()[:3])


def _read_4d(path, what="cine"):
    frames, _, affine = load_nifti(path)
    if frames.ndim != 4 or frames.shape[3] < 2:
        raise DatasetError("%s: shape %s; expected a 4-D %s [X, Y, Z, T] with T >= 2 frames (a 3-D file is one "
                           "frame: register two frames with run_register.py)" % (path, frames.shape, what))
    return frames, affine, nib.load(str(path)).header


def _check_frame(frame, n_frames, what, source):
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= frame < n_frames:
        raise DatasetError("%s: %s frame %r (0-based) is outside the %d frames 0..%d of this cine"
                           % (source, what, frame, n_frames, n_frames - 1))
    return int(frame)


def _labels_on_grid(labels, affine, path, frames, cine_affine, cine_path, label_values, source=None):
    """``labels`` (one frame's map) checked against the cine's frame grid and the label convention: int32."""
    grid, frame_grid = Grid(labels.shape[:3], affine), Grid(frames.shape[:3], cine_affine)
    if labels.ndim != 3 or not grid.same_as(frame_grid):
        raise DatasetError("%s: label map of shape %s (%s) is not on the frame grid of the cine %s (%s); expected "
                           "a 3-D label map with the frames' shape and affine"
                           % (path, labels.shape, grid.describe() if labels.ndim >= 3 else "",
                              cine_path, frame_grid.describe()))
    return validate_label_map(labels, frames.shape[:3], label_values, source or path)


def read_acdc_cine(patient_dir):
    """An ACDC patient folder as distributed: ``patientNNN_4d.nii.gz``, ``Info.cfg`` (ED, ES 1-based) and the ED
    and ES label maps ``patientNNN_frameXX_gt.nii.gz``. Labels 1 = RV, 2 = Myo, 3 = LV.

    Returns:
        :class:`Cine` with 0-based ``ed`` and ``es`` and both label maps.

    Raises:
        DatasetError: naming the file, for a missing folder or file, a bad Info.cfg, a cine that is not 4-D, a
            frame outside the cine, or a label map off the frame grid or with unexpected values.
    """
    folder = pathlib.Path(patient_dir)
    if not folder.is_dir():
        raise DatasetError("%s: patient folder not found; expected an ACDC patientNNN folder" % folder)
    info = read_info_cfg(folder / "Info.cfg")
    cine_path = folder / ("%s_4d.nii.gz" % folder.name)
    frames, affine, header = _read_4d(cine_path)
    labels = {}
    for key in ("ED", "ES"):
        _check_frame(info[key] - 1, frames.shape[3], "%s (Info.cfg: %d, 1-based)" % (key, info[key]), cine_path)
        path = folder / ("%s_frame%02d_gt.nii.gz" % (folder.name, info[key]))
        array, _, label_affine = load_nifti(path)
        labels[key] = _labels_on_grid(array, label_affine, path, frames, affine, cine_path, ACDC_LABELS)
    return Cine(name=folder.name, path=str(cine_path), frames=frames, affine=affine, header=header,
                label_values=ACDC_LABELS, ed=info["ED"] - 1, es=info["ES"] - 1, ed_labels=labels["ED"],
                es_labels=labels["ES"])


def read_mnms_cine(subject_dir, csv_path):
    """An M&Ms subject folder as distributed: ``<CODE>_sa.nii.gz`` and ``<CODE>_sa_gt.nii.gz`` (4-D, labels in the
    ED and ES frames), ED and ES from the information CSV (0-based). Labels 1 = LV, 2 = Myo, 3 = RV.

    Raises:
        DatasetError: naming the file, for a missing folder, file or CSV row, a volume that is not 4-D, label
            volumes off the cine's grid, a frame outside the cine, or an ED/ES frame without labels.
    """
    folder = pathlib.Path(subject_dir)
    if not folder.is_dir():
        raise DatasetError("%s: subject folder not found; expected an M&Ms <CODE> folder" % folder)
    code = folder.name
    row = read_mnms_csv(csv_path).get(code)
    if row is None:
        raise DatasetError("%s: no row for code %s; its ED/ES frames are unknown" % (csv_path, code))
    cine_path, label_path = folder / ("%s_sa.nii.gz" % code), folder / ("%s_sa_gt.nii.gz" % code)
    frames, affine, header = _read_4d(cine_path)
    label_frames, label_affine, _ = _read_4d(label_path, "label volume")
    if label_frames.shape[3] != frames.shape[3]:
        raise DatasetError("%s: %d frames; expected the %d frames of the cine %s"
                           % (label_path, label_frames.shape[3], frames.shape[3], cine_path))
    labels = {}
    for key in ("ED", "ES"):
        frame = _check_frame(row[key], frames.shape[3], "%s (CSV, 0-based)" % key, cine_path)
        source = "%s (frame %d)" % (label_path, frame)
        labels[key] = _labels_on_grid(label_frames[..., frame], label_affine, label_path, frames, affine,
                                      cine_path, MNMS_LABELS, source)
        if not labels[key].any():
            raise DatasetError("%s: %s frame %d (0-based, from %s) has no labels" % (label_path, key, frame, csv_path))
    return Cine(name=code, path=str(cine_path), frames=frames, affine=affine, header=header, label_values=MNMS_LABELS,
                ed=row["ED"], es=row["ES"], ed_labels=labels["ED"], es_labels=labels["ES"])


def read_cine(path, ed_frame, ed_labels=None, es_frame=None, es_labels=None, labels="acdc"):
    """Any 4-D NIfTI cine ``[X, Y, Z, T]`` with a 0-based ED frame, optional 3-D label maps of the ED and ES frames on
    the frames' grid, and the label convention ``labels`` (``acdc`` or ``mnms``, :data:`LABEL_CONVENTIONS`).

    Raises:
        DatasetError: naming the file or value, for a file that is missing or not 4-D, a frame outside the cine,
            ES labels without an ES frame, or a label map off the frame grid or with unexpected values.
    """
    if labels not in LABEL_CONVENTIONS:
        raise ValueError("labels must be one of %s, got %r" % (", ".join(LABEL_CONVENTIONS), labels))
    if es_labels is not None and es_frame is None:
        raise DatasetError("%s: ES labels need the ES frame they annotate (es_frame)" % es_labels)
    frames, affine, header = _read_4d(path)
    label_values = LABEL_CONVENTIONS[labels]
    ed = _check_frame(ed_frame, frames.shape[3], "ED", path)
    es = None if es_frame is None else _check_frame(es_frame, frames.shape[3], "ES", path)
    maps = {}
    for key, label_path in (("ED", ed_labels), ("ES", es_labels)):
        if label_path is not None:
            array, _, label_affine = load_nifti(label_path)
            maps[key] = _labels_on_grid(array, label_affine, label_path, frames, affine, path, label_values)
    return Cine(name=nifti_stem(path), path=str(path), frames=frames, affine=affine, header=header,
                label_values=label_values, ed=ed, es=es, ed_labels=maps.get("ED"), es_labels=maps.get("ES"))


def track_window(model, frames):
    """The window centre (voxels) for every frame of ``frames [X, Y, Z, T]``: the motion rule over the whole cine
    for a 2D model (``(x, y)``, slices averaged), the image centre for a 3D one."""
    if model.ndim == 2:
        return motion_center(np.transpose(frames, (3, 2, 0, 1)), model.inshape, 2)
    return image_center(frames.shape[:3])


def register_frame(model, moving, fixed, center):
    """The one registration of the tracking: ``u [X, Y, Z, 3]`` (voxels) on ``fixed``'s grid with
    ``moved(x) = moving(x + u(x))``, through the window at ``center`` (both frames scaled jointly, as
    :func:`~gsmorph_tf.register.register_volumes`)."""
    return register_volumes(model, moving, fixed, center=center).flow_voxels


def frame_order(ed, n_frames):
    """Frames in processing order: ED, then along the cycle past the last frame back to frame 0."""
    return [(ed + step) % n_frames for step in range(n_frames)]


def track_fields(model, cine, center, strategy=DEFAULT_STRATEGY):
    """Yield ``(t, u_t)`` for every frame in :func:`frame_order`: ``u_t [X, Y, Z, 3]`` float32 voxels, pulling the ED
    frame onto frame t (module docstring); only the previous frame's field is kept."""
    if strategy not in STRATEGIES:
        raise ValueError("strategy must be one of %s, got %r" % (", ".join(STRATEGIES), strategy))
    order = frame_order(cine.ed, cine.frames.shape[3])
    ed_frame = cine.frames[..., cine.ed]
    flow = np.zeros(cine.frames.shape[:3] + (3,), np.float32)
    yield cine.ed, flow
    for previous, t in zip(order, order[1:]):
        if strategy == "direct":
            flow = register_frame(model, ed_frame, cine.frames[..., t], center)
        else:
            step = register_frame(model, cine.frames[..., previous], cine.frames[..., t], center)
            flow = compose_flows([tf.constant(flow[None]), tf.constant(step[None])]).numpy()[0]
        yield t, flow


def structure_volumes_ml(labels, label_values, zooms):
    """Volume (ml) of each structure of ``labels [X, Y, Z]``: voxel count x the voxel volume ``prod(zooms)`` mm^3
    / 1000. Returns ``{name: ml}`` for :data:`STRUCTURES`."""
    voxel_ml = float(np.prod(zooms[:3])) / 1000.0
    return {name: int(np.count_nonzero(labels == label_values[name])) * voxel_ml for name in STRUCTURES}


def ejection_fraction(edv, esv):
    """``100 (EDV - ESV) / EDV`` in %, NaN when EDV is 0."""
    return 100.0 * (edv - esv) / edv if edv > 0 else float("nan")


def _ventricle(volumes, structure, ed, es):
    edv, esv = volumes[ed][structure], volumes[es][structure]
    return {"EDV_ml": edv, "ESV_ml": esv, "EF_percent": ejection_fraction(edv, esv)}


def summarise(volumes, cine, propagated_es=None):
    """The clinical indices of one tracked cine.

    Args:
        volumes: ``{frame: {structure: ml}}`` of the propagated labels, every frame.
        cine: the :class:`Cine` (ED, ES, manual labels, zooms).
        propagated_es: the propagated label map ``[X, Y, Z]`` at ``cine.es`` (for the ES check), or None.

    Returns:
        dict: ``ed_frame``, ``es_frame`` (minimum LV volume), ``LV`` and ``RV`` (EDV, ESV, EF at that ES; both
        ventricles at the LV's ES frame), ``myocardial_mass_g`` (ED Myo volume x
        :data:`MYOCARDIAL_DENSITY_G_PER_ML`); with a known ES frame ``at_given_es`` (the same at it); with manual
        ES labels ``es_check``: Dice (fraction) and HD95 (mm) per structure of the propagated vs the manual ES
        labels, the EF of the manual ED/ES labels and the error (propagated - manual, EF points) per ventricle.
    """
    es_min = min(volumes, key=lambda t: (volumes[t]["LV"], t))
    summary = {"ed_frame": cine.ed, "es_frame": es_min,
               "LV": _ventricle(volumes, "LV", cine.ed, es_min), "RV": _ventricle(volumes, "RV", cine.ed, es_min),
               "myocardial_mass_g": volumes[cine.ed]["Myo"] * MYOCARDIAL_DENSITY_G_PER_ML}
    if cine.es is not None:
        summary["at_given_es"] = {"es_frame": cine.es, "LV": _ventricle(volumes, "LV", cine.ed, cine.es),
                                  "RV": _ventricle(volumes, "RV", cine.ed, cine.es)}
    if cine.es_labels is not None and propagated_es is not None:
        manual = {cine.ed: structure_volumes_ml(cine.ed_labels, cine.label_values, cine.zooms),
                  cine.es: structure_volumes_ml(cine.es_labels, cine.label_values, cine.zooms)}
        values = {name: cine.label_values[name] for name in STRUCTURES}
        check = {"es_frame": cine.es, "dice": dice_per_structure(propagated_es, cine.es_labels, values),
                 "hd95_mm": hd95_per_structure(propagated_es, cine.es_labels, values, cine.zooms)}
        for ventricle in ("LV", "RV"):
            manual_ef = _ventricle(manual, ventricle, cine.ed, cine.es)["EF_percent"]
            check["EF_manual_%s" % ventricle] = manual_ef
            check["EF_error_%s" % ventricle] = summary["at_given_es"][ventricle]["EF_percent"] - manual_ef
        summary["es_check"] = check
    return summary


def output_paths(output_dir, name):
    """``{key: path}`` of the files :func:`track_cine` writes (keys: flows, labels, volumes_csv, volumes_png,
    summary; without ED labels only flows and summary are written)."""
    return {key: os.path.join(output_dir, name + suffix) for key, suffix in _SUFFIXES.items()}


def _memmap(output_dir, name, shape, dtype):
    path = os.path.join(output_dir, ".%s.tmp-%d.dat" % (name, os.getpid()))
    return path, np.memmap(path, dtype=dtype, mode="w+", shape=shape, order="F")


def _save_nifti(array, cine, description, path, zooms):
    image = nib.Nifti1Image(array, cine.affine, header=cine.header.copy())
    image.set_data_dtype(array.dtype)
    image.header.set_slope_inter(None, None)
    image.header.set_zooms(zooms)
    image.header["descrip"] = description
    atomic_save_nifti(image, path)


def _volumes_csv(volumes):
    lines = ["frame," + ",".join("%s_ml" % name for name in STRUCTURES)]
    lines += ["%d,%s" % (t, ",".join("%.4f" % volumes[t][name] for name in STRUCTURES)) for t in sorted(volumes)]
    return "\n".join(lines) + "\n"


def _plot_volumes(volumes, summary, cine, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = sorted(volumes)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in STRUCTURES:
        ax.plot(frames, [volumes[t][name] for t in frames], marker="o", markersize=3, label=name)
    ax.axvline(cine.ed, color="0.5", linestyle="--", linewidth=1)
    ax.axvline(summary["es_frame"], color="0.5", linestyle=":", linewidth=1)
    ax.set_xlabel("frame (0-based; dashed ED, dotted ES = minimum LV volume)")
    ax.set_ylabel("volume (ml)")
    ax.set_title("%s: ED labels propagated to every frame" % cine.name)
    ax.legend()
    fig.tight_layout()
    try:
        atomic_save_figure(fig, path)
    finally:
        plt.close(fig)


def track_cine(model, cine, output_dir, strategy=DEFAULT_STRATEGY, show_progress=False):
    """Register every frame of ``cine`` and write the outputs (module docstring) to ``output_dir``.

    Args:
        model: :class:`~gsmorph_tf.register.RegistrationModel`.
        cine: a :class:`Cine` from one of the readers.
        strategy: ``direct`` or ``composed`` (:data:`STRATEGIES`).
        show_progress: a Keras progress bar over the frames.

    Returns:
        ``(paths, summary)``: ``{key: path}`` written and the summary dict (as in ``<name>_summary.json``, which
        also records the cine, strategy, window centre, label convention and seconds per frame).
    """
    shape = cine.frames.shape
    n_frames = shape[3]
    center = track_window(model, cine.frames)
    paths = output_paths(output_dir, cine.name)
    with_labels = cine.ed_labels is not None
    os.makedirs(output_dir, exist_ok=True)
    temps = []
    try:
        flow_temp, flows = _memmap(output_dir, cine.name + "_flows", shape + (3,), np.float32)
        temps.append(flow_temp)
        if with_labels:
            label_temp, labels = _memmap(output_dir, cine.name + "_labels", shape, np.uint8)
            temps.append(label_temp)
        volumes, propagated_es = {}, None
        bar = tf.keras.utils.Progbar(n_frames, unit_name="frame") if show_progress else None
        start = time.perf_counter()
        for done, (t, flow) in enumerate(track_fields(model, cine, center, strategy), 1):
            flows[..., t, :] = flow
            if with_labels:
                warped = cine.ed_labels if t == cine.ed else warp_label_map(cine.ed_labels, flow, "onehot")
                labels[..., t] = warped
                volumes[t] = structure_volumes_ml(warped, cine.label_values, cine.zooms)
                if t == cine.es:
                    propagated_es = np.array(warped)
            if bar is not None:
                bar.update(done)
        seconds_per_frame = (time.perf_counter() - start) / max(n_frames - 1, 1)
        frame_zooms = tuple(float(z) for z in cine.header.get_zooms()[:4])
        _save_nifti(flows, cine, _DESCRIPTIONS["flows"], paths["flows"], frame_zooms + (1.0,))
        summary = {"cine": cine.path, "strategy": strategy, "window_center_voxels": [float(c) for c in center],
                   "model_input": list(model.inshape), "label_values": dict(cine.label_values),
                   "seconds_per_frame": seconds_per_frame}
        if with_labels:
            _save_nifti(labels, cine, _DESCRIPTIONS["labels"], paths["labels"], frame_zooms)
            summary.update(summarise(volumes, cine, propagated_es))
            atomic_write_text(paths["volumes_csv"], _volumes_csv(volumes))
            _plot_volumes(volumes, summary, cine, paths["volumes_png"])
        else:
            summary.update({"ed_frame": cine.ed, "es_frame": cine.es})
            paths = {key: paths[key] for key in ("flows", "summary")}
        atomic_write_text(paths["summary"], json.dumps(summary, indent=1, allow_nan=True) + "\n")
    finally:
        for temp in temps:
            if os.path.exists(temp):
                os.remove(temp)
    return paths, summary


def format_report(summary):
    """A few printed lines: EDV/ESV/EF, myocardial mass and the ES check of a :func:`track_cine` summary."""
    if "LV" not in summary:
        return "No ED labels: fields only (no volumes)."
    lines = ["ED frame %d, ES frame %d (minimum LV volume)%s; %.2f s per frame (%s)"
             % (summary["ed_frame"], summary["es_frame"],
                "; given ES frame %d" % summary["at_given_es"]["es_frame"] if "at_given_es" in summary else "",
                summary["seconds_per_frame"], summary["strategy"])]
    for ventricle in ("LV", "RV"):
        v = summary[ventricle]
        line = "  %s: EDV %.1f ml, ESV %.1f ml, EF %.1f %%" % (ventricle, v["EDV_ml"], v["ESV_ml"], v["EF_percent"])
        if "at_given_es" in summary:
            line += " (at the given ES: ESV %.1f ml, EF %.1f %%)" % (summary["at_given_es"][ventricle]["ESV_ml"],
                                                                  summary["at_given_es"][ventricle]["EF_percent"])
        lines.append(line)
    lines.append("  myocardial mass %.1f g (ED Myo volume x %.2f g/ml)"
                 % (summary["myocardial_mass_g"], MYOCARDIAL_DENSITY_G_PER_ML))
    if "es_check" in summary:
        check = summary["es_check"]
        lines.append("  ES check (propagated vs manual ES labels): " + ", ".join(
            "%s Dice %.3f HD95 %.1f mm" % (name, check["dice"][name], check["hd95_mm"][name]) for name in STRUCTURES))
        lines.append("  EF error vs the manual ED/ES labels: LV %+.1f points (manual %.1f %%), RV %+.1f points "
                     "(manual %.1f %%)" % (check["EF_error_LV"], check["EF_manual_LV"], check["EF_error_RV"],
                                           check["EF_manual_RV"]))
    return "\n".join(lines)
