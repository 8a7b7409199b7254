"""A tiny deterministic Learn2Reg task for checking ``gsmorph_tf.evaluate.learn2reg_metrics`` against Learn2Reg's own
evaluation code: three pairs at 24 x 20 x 16 voxels with labels 1-3, fixed-image masks, landmarks, and a
submission of displacement fields. Shared by ``learn2reg_official_scores.py`` (writes it and runs their code)
and ``tests/evaluate/test_learn2reg_metrics.py`` (rebuilds it and runs ours). NumPy, SciPy and nibabel only; no
flags. It also runs their code (:func:`run_reference`) for the scripts that compare with it.

The pairs, each chosen to exercise one of their rules:

- ``0001_0000 <- 0001_0001`` (a short ``disp_0001_0001`` file name): a smooth random field, every label present;
- ``0002_0000 <- 0002_0001``: label 3 missing from the moving scan (Dice and HD95 NaN for it);
- ``0003_0000 <- 0004_0000`` (inter-subject, the long ``disp_0003_0000_0004_0000`` name): a shift of 7 voxels
  along the first axis, so the moving label 3, lying within 5 voxels of that edge, is never sampled:
  it vanishes after warping (HD95 inf, Dice 0).
"""
import json
import os
import subprocess

import nibabel as nib
import numpy as np
from scipy import ndimage

#: Task name (file prefix) and grid.
TASK = "TOY"
SHAPE = (24, 20, 16)
LABELS = (1, 2, 3)
#: Voxel size in mm of every scan (float32-exact, as NIfTI stores it).
SPACING = (1.5, 1.25, 2.0)
#: (fixed scan, moving scan) of each pair, as ``<subject>_<modality>``.
PAIRS = (("0001_0000", "0001_0001"), ("0002_0000", "0002_0001"), ("0003_0000", "0004_0000"))
LANDMARKS_PER_SCAN = 7


def _ellipsoid(centre, radii):
    grid = np.indices(SHAPE, dtype=np.float64)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1.0


def _labels(rng, with_label3=True, label3_at_edge=False):
    labels = np.zeros(SHAPE, dtype=np.uint8)
    jitter = rng.uniform(-1.0, 1.0, size=3)
    labels[_ellipsoid(np.array([12.0, 9.0, 7.5]) + jitter, (7.0, 6.0, 5.0))] = 1
    labels[_ellipsoid(np.array([13.0, 10.0, 8.0]) + jitter, (3.0, 3.5, 2.5))] = 2
    if with_label3:
        centre = (2.0, 10.0, 8.0) if label3_at_edge else (19.5, 14.0, 10.0) + jitter
        labels[_ellipsoid(centre, (2.0, 3.0, 2.5))] = 3
    return labels


def _smooth_field(rng, amplitude):
    noise = rng.normal(size=SHAPE + (3,))
    field = np.stack([ndimage.gaussian_filter(noise[..., k], 3.0) for k in range(3)], axis=-1)
    return amplitude * field / np.abs(field).max()


def make_case(seed=0):
    """The task's arrays, the same on every machine for a seed.

    Returns:
        ``{"scans": {name: {"image", "labels", "keypoints"}}, "masks": {fixed name: mask}, "disps": {(fixed,
        moving): disp}}``: images ``[D, H, W]`` float32, labels uint8, masks uint8 (0/1, with a 2 region that
        Learn2Reg's masked SDlogJ also leaves out), keypoints ``[N, 3]`` float64 voxel coordinates, disps
        ``[D, H, W, 3]`` float32 in voxels (fixed -> moving).
    """
    rng = np.random.default_rng(seed)
    scans, masks, disps = {}, {}, {}
    for index, (fixed, moving) in enumerate(PAIRS):
        fixed_labels = _labels(rng, label3_at_edge=False)
        moving_labels = _labels(rng, with_label3=index != 1, label3_at_edge=index == 2)
        disp = _smooth_field(rng, 1.5)
        if index == 2:
            disp[..., 0] += 7.0
        disp = disp.astype(np.float32)
        fixed_points = rng.uniform((3, 3, 3), np.array(SHAPE) - 4, size=(LANDMARKS_PER_SCAN, 3)).round(3)
        moving_points = (fixed_points + rng.normal(scale=1.0, size=fixed_points.shape)).round(3)
        for name, labels, points in ((fixed, fixed_labels, fixed_points), (moving, moving_labels, moving_points)):
            image = (labels * 0.25 + rng.uniform(0, 0.1, size=SHAPE)).astype(np.float32)
            scans[name] = {"image": image, "labels": labels, "keypoints": points}
        mask = (ndimage.binary_dilation(fixed_labels > 0, iterations=2)).astype(np.uint8)
        mask[fixed_labels == 2] = 2  # a value other than 1: outside the mask for Learn2Reg
        masks[fixed] = mask
        disps[(fixed, moving)] = disp
    return {"scans": scans, "masks": masks, "disps": disps}


def random_mask_pairs(count=24, shape=(16, 14, 12), seed=1):
    """``count`` pairs of irregular masks (thresholded smoothed noise, so their surfaces hold most of the 256
    neighbourhood codes), for comparing HD95 with the surface-distance package's beyond the task's labels.

    Returns:
        ``(masks_a, masks_b)``: bool ``[count, *shape]`` each; pair 0 has an empty second mask.
    """
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.normal(size=(2, count) + shape), (0, 0, 1.2, 1.2, 1.2))
    thresholds = rng.uniform(0.0, 0.15, size=(2, count, 1, 1, 1))
    masks = noise > thresholds
    masks[1, 0] = False
    return masks[0], masks[1]


def scan_path(name, folder="imagesTr"):
    """``./<folder>/TOY_<name>.nii.gz``, the relative path Learn2Reg's dataset JSON and config use."""
    return "./%s/%s_%s.nii.gz" % (folder, TASK, name)


def disp_name(fixed, moving):
    """Submission file stem of a pair: ``disp_FFFF_MMMM`` for a ``_0000 <- _0001`` pair, else the long form."""
    if fixed.endswith("_0000") and moving.endswith("_0001"):
        return "disp_%s_%s" % (fixed[:4], moving[:4])
    return "disp_%s_%s" % (fixed, moving)


def write_task(case, task_dir, submission_dir):
    """Write ``case`` as a Learn2Reg task folder (``imagesTr``, ``labelsTr``, ``masksTr``, ``keypointsTr``) and
    a submission folder (``disp_*.nii.gz``), both created.

    Returns:
        The evaluation config (a dict for Learn2Reg's ``evaluation.py -c``), with ``masked_evaluation`` False.
    """
    affine = np.diag(list(SPACING) + [1.0])
    for folder in ("imagesTr", "labelsTr", "masksTr", "keypointsTr"):
        os.makedirs(os.path.join(task_dir, folder), exist_ok=True)
    os.makedirs(submission_dir, exist_ok=True)
    for name, scan in case["scans"].items():
        nib.save(nib.Nifti1Image(scan["image"], affine), os.path.join(task_dir, scan_path(name)))
        nib.save(nib.Nifti1Image(scan["labels"], affine), os.path.join(task_dir, scan_path(name, "labelsTr")))
        np.savetxt(os.path.join(task_dir, "keypointsTr", "%s_%s.csv" % (TASK, name)), scan["keypoints"],
                   delimiter=",", fmt="%.17g")
    for name, mask in case["masks"].items():
        nib.save(nib.Nifti1Image(mask, affine), os.path.join(task_dir, scan_path(name, "masksTr")))
    for (fixed, moving), disp in case["disps"].items():
        nib.save(nib.Nifti1Image(disp, np.eye(4)), os.path.join(submission_dir, disp_name(fixed, moving) + ".nii.gz"))
    return {"task_name": TASK,
            "evaluation_methods": [{"name": "LogJacDetStd", "metric": "sdlogj"},
                                   {"name": "DSC", "metric": "dice", "labels": list(LABELS)},
                                   {"name": "HD95", "metric": "hd95", "labels": list(LABELS)},
                                   {"name": "TRE_kp", "metric": "tre", "dest": "keypoints"}],
            "expected_shape": list(SHAPE) + [3],
            "eval_pairs": [{"fixed": scan_path(f), "moving": scan_path(m)} for f, m in PAIRS],
            "masked_evaluation": False}


def write_config(config, path, masked):
    """Write ``config`` with ``masked_evaluation`` set to ``masked`` to ``path`` (JSON)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dict(config, masked_evaluation=bool(masked)), f, indent=2)


def evaluation_script(l2r_dir):
    """``<l2r_dir>/evaluation/evaluation.py``, the official evaluation of a MDL-UzL/L2R checkout; exits with a
    one-line error naming ``l2r_dir`` when it is not there."""
    script = os.path.join(l2r_dir, "evaluation", "evaluation.py")
    if not os.path.exists(script):
        raise SystemExit("error: --l2r_dir=%s has no evaluation/evaluation.py (a checkout of MDL-UzL/L2R expected)"
                         % l2r_dir)
    return script


def run_command(command, cwd=None):
    """Run ``command``; its standard output, or RuntimeError with everything it printed."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError("failed (exit %d): %s\n%s%s" % (result.returncode, " ".join(command), result.stdout,
                                                           result.stderr))
    return result.stdout


def run_reference(python, script, config, masked, submission_dir, task_dir, tmp, key, commands=None):
    """Run their ``evaluation.py`` (``script``) under ``python`` on ``submission_dir`` against ``task_dir`` with
    ``config`` (``masked_evaluation`` set to ``masked``), files named ``key`` in ``tmp``; returns the JSON it wrote.
    ``commands``: optional dict that receives the command line under ``key``, with ``tmp`` written ``<tmp>``."""
    config_path, output = os.path.join(tmp, "config_%s.json" % key), os.path.join(tmp, "%s.json" % key)
    write_config(config, config_path, masked)
    command = [python, script, "-i", submission_dir, "-d", task_dir, "-o", output, "-c", config_path]
    run_command(command, cwd=os.path.dirname(script))
    if commands is not None:
        commands[key] = " ".join(command).replace(tmp, "<tmp>")
    with open(output, encoding="utf-8") as f:
        return json.load(f)


#: Their result names (the evaluation config's, write_task) -> ours.
NAMES = {"LogJacDetStd": "sdlogj", "DSC": "dice", "HD95": "hd95", "TRE_kp": "tre"}


def write_dataset_json(task_dir):
    """``TOY_dataset.json`` for the task ``write_task`` wrote: every scan with its labels in
    ``training`` and the case's pairs as ``registration_val``."""
    scans = sorted({name for pair in PAIRS for name in pair})
    data = {"name": TASK, "tensorImageShape": {"0": list(SHAPE)},
            "labels": {"0": {"0": "background", **{str(v): "label%d" % v for v in LABELS}}},
            "training": [{"image": scan_path(n), "label": scan_path(n, "labelsTr")}
                         for n in scans],
            "registration_val": [{"fixed": scan_path(f), "moving": scan_path(m)}
                                 for f, m in PAIRS]}
    with open(os.path.join(task_dir, "%s_dataset.json" % TASK), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)


def our_scores(case, submission_dir, masked):
    """Our ``learn2reg`` scores of the files in ``submission_dir``, in their JSON's layout."""
    import nibabel as nib

    from gsmorph_tf.evaluate import learn2reg_metrics as l2r

    cases = {}
    for fixed, moving in PAIRS:
        name = disp_name(fixed, moving) + ".nii.gz"
        disp = nib.load(os.path.join(submission_dir, name)).get_fdata()
        f_scan, m_scan = case["scans"][fixed], case["scans"][moving]
        scores = l2r.pair_scores(f_scan["labels"], m_scan["labels"], disp, labels=LABELS,
                                 mask=case["masks"][fixed] if masked else None,
                                 landmarks=(f_scan["keypoints"], m_scan["keypoints"]),
                                 spacing_moving=SPACING)
        cases["%s<--%s" % (fixed, moving)] = {their: scores[ours] for their, ours in NAMES.items()}
    aggregates = {their: l2r.aggregate([cases[pair][their]["mean"] for pair in cases], ours)
                  for their, ours in NAMES.items()}
    return {"cases": cases, "aggregates": aggregates}


def largest_difference(ours, theirs):
    """The largest |ours - theirs| over every pair's mean and every aggregate (NaN == NaN and inf == inf count
    as equal; any other mismatch of NaN or inf is inf)."""
    import numpy as np

    def values(result):
        for pair in sorted(result["cases"]):
            for name in NAMES:
                yield result["cases"][pair][name]["mean"]
        for name in NAMES:
            for key in ("mean", "std", "30"):
                yield result["aggregates"][name][key]
    worst = 0.0
    for a, b in zip(values(ours), values(theirs)):
        a, b = float(a), float(b)
        if (np.isnan(a) and np.isnan(b)) or a == b:
            continue
        worst = max(worst, abs(a - b) if np.isfinite(a) and np.isfinite(b) else float("inf"))
    return worst
