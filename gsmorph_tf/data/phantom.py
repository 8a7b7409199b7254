"""Synthetic short-axis cardiac cine-MRI (bSSFP-like) written to disk in the ACDC layout.

Neither ACDC nor M&Ms can be downloaded here, so the project's embedded default dataset is this seeded phantom.
It is written exactly like ACDC's ``training`` folder, so the ACDC loader reads it unchanged::

    <root>/phantom.json                                        generation parameters (see below)
    <root>/training/patientNNN/Info.cfg                        ED, ES (1-based frames), Group, Height, NbFrame, Weight
    <root>/training/patientNNN/patientNNN_4d.nii.gz            int16 [X, Y, Z, T], all frames
    <root>/training/patientNNN/patientNNN_frameXX.nii.gz       int16 [X, Y, Z], the ED and ES frames
    <root>/training/patientNNN/patientNNN_frameXX_gt.nii.gz    uint8 [X, Y, Z]: 0 background, 1 RV, 2 Myo, 3 LV

Arrays are indexed ``[X, Y, Z(, T)]``: X and Y in-plane (square pixels), Z the short-axis slices from base
(z = 0) to apex. Header zooms are ``(pixel mm, pixel mm, slice mm[, frame ms])`` and the affine is
``diag(pixel, pixel, slice, 1)``. Intensities are int16, blood pool around 800-1000.

Anatomy is analytic: every structure is a signed-distance shape in millimetres, evaluated at the *material*
(end-diastolic) position of each pixel. A frame at contraction ``c`` (0 at ED, 1 at ES) maps each pixel back
to its ED position through three smooth, invertible maps -- a global heart motion (translation, base-to-apex
twist, elliptical stretch) that fades out away from the heart, an incompressible radial LV contraction (the
cavity loses a fraction of its area, the myocardium keeps its area and so thickens), and an RV free-wall
contraction -- so image, labels and texture always move together and the surroundings move little.
"""
import json
import os
import pathlib
import shutil
import tempfile
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from gsmorph_tf.data.acdc import ACDC_LABELS, CardiacDataset, load_acdc
from gsmorph_tf.data.nifti import DatasetError

GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")

#: The phantom of a run is always drawn with this seed, so the training seed changes the run, not the data.
PHANTOM_SEED = 0

# Bump when the generated data change for the same parameters, so an old phantom on disk is not mistaken
# for a current one.
PHANTOM_FORMAT_VERSION = 1
PHANTOM_MANIFEST = "phantom.json"

# Field of view (mm) is about 1.3-1.8 mm x 192 px whatever image_size is, so the anatomy always fits.
_REFERENCE_SIZE = 192
_INTENSITY_SCALE = 800.0  # stored value of a unit-intensity tissue (blood is about 1.1)


@dataclass(frozen=True)
class _Subject:
    """Everything drawn for one subject. Lengths in mm, angles in radians, image-frame positions in mm."""

    group: str
    shape: tuple  # (X, Y, Z) voxels
    pixel_mm: float
    slice_mm: float
    n_frames: int
    es_index: int  # 0-based
    frame_ms: float
    height_cm: float
    weight_kg: float
    # heart, per slice (arrays of length Z, base -> apex)
    lv_centre: np.ndarray  # (Z, 2) image mm, ED
    endo_radius: np.ndarray  # (Z,)
    wall_mm: np.ndarray  # (Z,)
    rv_width: np.ndarray  # (Z,) radial width of the RV cavity; <= 0 where there is no RV
    papillary: np.ndarray  # (Z,) 1 where papillary muscles are drawn
    twist: np.ndarray  # (Z,) ES rotation of each slice; base and apex turn opposite ways
    heart_angle: float  # direction of the RV from the LV centre, image frame
    endo_ellipticity: float  # relative amplitude of the cavity's cos(2 angle) shape
    ellipticity_angle: float
    septal_thickening: float  # relative extra wall thickness on the septum (HCM)
    rv_offset: float  # RV ellipse centre, as a fraction of the epicardial radius
    rv_wrap: float  # how far the RV horns reach around the LV, relative to the RV width
    area_loss: float  # fraction of LV cavity area lost at ES
    hypokinesis: float  # 0..1 reduction of contraction in an infarcted sector (MINF)
    hypokinesis_angle: float
    rv_contraction: float  # k: near the septum the RV's ES radial thickness is 1 / (1 + k) of ED
    es_translation: np.ndarray  # (2,) mm
    es_stretch: float  # area-preserving ES stretch: 1 + e along es_stretch_angle, 1 / (1 + e) across
    es_stretch_angle: float
    fat_angle: float  # direction of the thickest epicardial fat
    # surroundings
    body_centre: np.ndarray  # (2,) image mm
    body_angle: float
    body_axes: tuple  # (lateral, antero-posterior) semi-axes
    fat_mm: float
    muscle_mm: float
    lungs: tuple  # ((l, a, semi_l, semi_a), (l, a, semi_l, semi_a)) body frame
    liver: tuple  # (l, a, semi_l, semi_a) body frame, at the apex
    # appearance
    tissue_jitter: np.ndarray  # (8,) multiplicative intensity jitter per tissue
    noise_sigma: float
    texture_seed: int
    bias_coefficients: np.ndarray  # (6,)


def generate_phantom_dataset(root, n_subjects=20, n_slices=8, image_size=192, n_frames=10, seed=0):
    """Write the phantom under ``root`` in the ACDC layout and return ``root`` as a :class:`pathlib.Path`.

    Each subject ``patientNNN`` (001, 002, ...) draws its own anatomy, group, spacing, motion and appearance
    from ``seed``; subject ``i`` depends only on ``seed`` and the image parameters, not on ``n_subjects``.
    The same arguments give byte-identical arrays.

    Args:
        root: directory to create (or an empty one). Written atomically: everything goes to a hidden sibling
            ``.<name>.partial-*`` that is renamed into place, so an interrupted run never leaves a half-written
            dataset (only a process killed outright can leave that sibling behind; it is safe to delete).
        n_subjects: number of subjects (>= 1).
        n_slices: short-axis slices per volume, base to apex (>= 1); slice thickness 8-10 mm.
        image_size: X size in pixels (>= 32); Y is 1.0-1.17 x larger. The field of view is 250-350 mm, so
            the pixel spacing is 1.3-1.8 mm at the default 192 px and scales as 192 / image_size.
        n_frames: frames per cardiac cycle (>= 2). ED is frame 1, ES at 35-45 % of the cycle.
        seed: integer seed.

    Returns:
        ``pathlib.Path(root)``. If ``root`` already holds a complete phantom made with the same arguments it
        is returned untouched.

    Raises:
        ValueError: an argument is out of range, or ``root`` exists and holds a phantom made with other
            arguments, an incomplete phantom, or anything that is not a phantom (nothing is ever deleted).
    """
    root = pathlib.Path(root)
    parameters = _check_parameters(n_subjects, n_slices, image_size, n_frames, seed)
    if _existing_phantom_matches(root, parameters):
        return root

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix="." + root.name + ".partial-", dir=root.parent))
    try:
        subjects_summary = []
        for index, rng in enumerate(_subject_generators(seed, n_subjects)):
            subject = _draw_subject(rng, n_slices, image_size, n_frames)
            name = "patient%03d" % (index + 1)
            _write_subject(staging / "training" / name, name, subject)
            subjects_summary.append({"name": name, "group": subject.group, "shape": list(subject.shape),
                                     "pixel_mm": round(subject.pixel_mm, 4), "slice_mm": round(subject.slice_mm, 4),
                                     "ed_frame": 1, "es_frame": subject.es_index + 1})
        manifest = {"generator": __name__, "format_version": PHANTOM_FORMAT_VERSION, "parameters": parameters,
                    "subjects": subjects_summary}
        # The manifest is written last: a directory with a manifest is a complete phantom.
        (staging / PHANTOM_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        os.chmod(staging, 0o755)  # mkdtemp makes it private; the dataset should be readable like any other
        try:
            os.replace(staging, root)  # atomic; also replaces an empty directory left at root
        except OSError:
            # Another process may have finished the same phantom first; anything else is reported.
            if _existing_phantom_matches(root, parameters):
                return root
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return root


def _check_parameters(n_subjects, n_slices, image_size, n_frames, seed):
    """Validate the arguments and return them as the dict recorded in the manifest."""
    minimum = {"n_subjects": 1, "n_slices": 1, "image_size": 32, "n_frames": 2, "seed": 0}
    values = {"n_subjects": n_subjects, "n_slices": n_slices, "image_size": image_size, "n_frames": n_frames,
              "seed": seed}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum[name]:
            raise ValueError("generate_phantom_dataset: %s must be an integer >= %d, got %r"
                             % (name, minimum[name], value))
    return {name: int(value) for name, value in values.items()}


def _existing_phantom_matches(root, parameters):
    """True if ``root`` holds a complete phantom made with ``parameters``; False if ``root`` is absent or empty.

    Raises:
        ValueError: ``root`` holds something else (other parameters, an incomplete phantom, other files).
    """
    if not root.exists():
        return False
    if not root.is_dir():
        raise DatasetError("phantom root %s exists and is not a directory" % root)
    manifest_path = root / PHANTOM_MANIFEST
    if not manifest_path.is_file():
        if any(root.iterdir()):
            raise DatasetError("phantom root %s already holds files that are not a phantom (no %s); choose an "
                             "empty or new directory" % (root, PHANTOM_MANIFEST))
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        recorded = dict(manifest["parameters"])
        version = manifest["format_version"]
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError("phantom root %s has an unreadable %s (%s)" % (root, PHANTOM_MANIFEST, error)) from None
    if version != PHANTOM_FORMAT_VERSION:
        raise DatasetError("phantom root %s was made by phantom format version %r, this is version %d; delete it "
                         "or choose another root" % (root, version, PHANTOM_FORMAT_VERSION))
    differences = ["%s=%r (requested %r)" % (name, recorded.get(name), value)
                   for name, value in parameters.items() if recorded.get(name) != value]
    if differences:
        raise DatasetError("phantom root %s holds a phantom made with different parameters: %s; delete it or "
                         "choose another root" % (root, ", ".join(differences)))
    for entry in manifest.get("subjects", []):
        folder = root / "training" / entry["name"]
        expected = [folder / "Info.cfg", folder / ("%s_4d.nii.gz" % entry["name"])]
        for frame in (entry["ed_frame"], entry["es_frame"]):
            expected += [folder / ("%s_frame%02d.nii.gz" % (entry["name"], frame)),
                         folder / ("%s_frame%02d_gt.nii.gz" % (entry["name"], frame))]
        missing = [str(path) for path in expected if not path.is_file()]
        if missing:
            raise DatasetError("phantom root %s is incomplete (missing %s); delete it and generate again"
                             % (root, ", ".join(missing)))
    if len(manifest.get("subjects", [])) != parameters["n_subjects"]:
        raise DatasetError("phantom root %s lists %d subjects in %s, expected %d; delete it and generate again"
                         % (root, len(manifest.get("subjects", [])), PHANTOM_MANIFEST, parameters["n_subjects"]))
    return True


def _subject_generators(seed, n_subjects):
    """One independent random generator per subject; subject i's stream does not depend on n_subjects."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(n_subjects)]


def _draw_subject(rng, n_slices, image_size, n_frames):
    """Draw one subject's anatomy, motion and appearance (see :class:`_Subject` for units)."""
    group = GROUPS[rng.integers(len(GROUPS))]
    pixel_mm = rng.uniform(1.3, 1.8) * _REFERENCE_SIZE / image_size
    slice_mm = rng.uniform(8.0, 10.0)
    shape = (image_size, int(round(image_size * rng.choice([1.0, 13 / 12, 7 / 6]))), n_slices)
    es_fraction = rng.uniform(0.35, 0.45)
    es_index = int(np.clip(round(es_fraction * n_frames), 1, n_frames - 1))
    heart_rate = rng.uniform(55.0, 90.0)

    # Group-specific LV size (basal endocardial radius), wall and contraction. All keep the ES/ED cavity
    # area ratio within 0.55-0.67 (33-45 % area loss: inside ACDC's 30-50 % with a margin for pixelation).
    endo_radius, wall, area_loss = rng.uniform(21.0, 25.0), rng.uniform(7.0, 9.5), rng.uniform(0.39, 0.45)
    septal_thickening, hypokinesis = 0.0, 0.0
    rv_width, rv_contraction = rng.uniform(15.0, 21.0), rng.uniform(0.45, 0.75)
    # DCM and MINF hearts pump weakly on both sides.
    if group == "DCM":
        endo_radius, wall, area_loss = rng.uniform(27.0, 31.0), rng.uniform(7.0, 8.0), rng.uniform(0.33, 0.37)
        rv_contraction = rng.uniform(0.35, 0.6)
    elif group == "MINF":
        endo_radius, wall, area_loss = rng.uniform(24.0, 28.0), rng.uniform(7.0, 8.5), rng.uniform(0.33, 0.39)
        hypokinesis, rv_contraction = rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.6)
    elif group == "HCM":
        endo_radius, wall, area_loss = rng.uniform(18.0, 21.0), rng.uniform(9.0, 10.5), rng.uniform(0.41, 0.45)
        septal_thickening = rng.uniform(0.15, 0.35)
    elif group == "RV":
        rv_width, rv_contraction = rng.uniform(22.0, 28.0), rng.uniform(0.4, 0.6)

    # Long axis: the cavity is a half-ellipsoid whose tip lies just beyond the last slice; the RV ends earlier.
    depth = np.linspace(0.0, 1.0, n_slices) if n_slices > 1 else np.zeros(1)
    cavity_tip = rng.uniform(1.12, 1.25)
    endo = endo_radius * np.sqrt(1.0 - (depth / cavity_tip) ** 2)
    wall_mm = wall * (1.0 - 0.2 * depth)
    rv_end = rng.uniform(0.8, 0.92)
    rv = rv_width * np.sqrt(np.clip(1.0 - (depth / rv_end) ** 2, 0.0, None))
    rv[rv < 4.0] = 0.0  # a sliver of RV is not drawn

    field_of_view = np.array(shape[:2]) * pixel_mm
    body_angle = rng.uniform(-0.35, 0.35) + np.pi  # anterior roughly towards -X
    heart_in_body = np.array([rng.uniform(20.0, 35.0), rng.uniform(5.0, 20.0)])
    offset_direction = rng.uniform(0.0, 2 * np.pi)
    heart_centre = field_of_view / 2 + rng.uniform(0.06, 0.15) * field_of_view.min() * np.array(
        [np.cos(offset_direction), np.sin(offset_direction)])
    # Stacks are not exactly along the LV long axis: the centre drifts a few mm from base to apex.
    drift = rng.normal(0.0, 3.0, size=2)
    lv_centre = heart_centre[None, :] + depth[:, None] * drift[None, :]
    body_centre = heart_centre - _rotate(heart_in_body, body_angle)
    # RV lies anterior-right of the LV: in the body frame (lateral = patient left, anterior) about (-1, 1).
    heart_angle = body_angle + np.deg2rad(135.0 + rng.uniform(-20.0, 20.0))

    twist_base, twist_apex = np.deg2rad(rng.uniform(-5.0, -1.0)), np.deg2rad(rng.uniform(1.0, 5.0))
    if rng.random() < 0.5:
        twist_base, twist_apex = -twist_base, -twist_apex
    translation_angle = rng.uniform(0.0, 2 * np.pi)
    es_translation = rng.uniform(2.0, 5.0) * np.array([np.cos(translation_angle), np.sin(translation_angle)])

    body_axes = (rng.uniform(150.0, 180.0), rng.uniform(105.0, 125.0))
    lungs = ((rng.uniform(70.0, 85.0), rng.uniform(-15.0, 5.0), rng.uniform(40.0, 50.0), rng.uniform(60.0, 75.0)),
             (rng.uniform(-85.0, -70.0), rng.uniform(-15.0, 5.0), rng.uniform(45.0, 55.0), rng.uniform(60.0, 75.0)))
    liver = (rng.uniform(-70.0, -45.0), rng.uniform(-25.0, 5.0), rng.uniform(55.0, 70.0), rng.uniform(45.0, 60.0))

    return _Subject(
        group=group, shape=shape, pixel_mm=float(pixel_mm), slice_mm=float(slice_mm), n_frames=n_frames,
        es_index=es_index, frame_ms=float(60000.0 / heart_rate / n_frames),
        height_cm=float(round(rng.uniform(150.0, 195.0), 1)), weight_kg=float(round(rng.uniform(50.0, 110.0), 1)),
        lv_centre=lv_centre, endo_radius=endo, wall_mm=wall_mm, rv_width=rv,
        papillary=((depth > 0.15) & (depth < 0.8)).astype(float),
        twist=twist_base + (twist_apex - twist_base) * depth, heart_angle=float(heart_angle),
        endo_ellipticity=rng.uniform(0.0, 0.08), ellipticity_angle=rng.uniform(0.0, np.pi),
        septal_thickening=septal_thickening, rv_offset=rng.uniform(0.6, 0.8), rv_wrap=rng.uniform(0.8, 1.1),
        area_loss=area_loss, hypokinesis=hypokinesis, hypokinesis_angle=rng.uniform(0.5 * np.pi, 1.5 * np.pi),
        rv_contraction=rv_contraction, es_translation=es_translation, es_stretch=rng.uniform(0.05, 0.12),
        es_stretch_angle=rng.uniform(0.0, np.pi), fat_angle=rng.uniform(0.0, 2 * np.pi),
        body_centre=body_centre, body_angle=float(body_angle), body_axes=body_axes, fat_mm=rng.uniform(6.0, 15.0),
        muscle_mm=rng.uniform(8.0, 14.0), lungs=lungs, liver=liver, tissue_jitter=rng.uniform(0.9, 1.1, size=8),
        noise_sigma=rng.uniform(0.03, 0.06), texture_seed=int(rng.integers(2 ** 31)),
        bias_coefficients=rng.normal(0.0, 0.15, size=6))


def _contraction_curve(n_frames, es_index):
    """Contraction c per frame, shape (n_frames,): 0 at ED (frame 0), 1 at ES, relaxing towards ED after.

    Systole is a half cosine; diastole returns faster at first (rapid filling) and does not reach 0 within
    the cycle, as the next ED is the first frame of the next cycle.
    """
    frames = np.arange(n_frames, dtype=float)
    systole = 0.5 * (1.0 - np.cos(np.pi * frames / es_index))
    relaxation = np.clip((frames - es_index) / (n_frames - es_index), 0.0, 1.0) ** 0.7
    diastole = 0.5 * (1.0 + np.cos(np.pi * relaxation))
    return np.where(frames <= es_index, systole, diastole)


def _rotate(vector, angle):
    """Rotate 2-vectors (..., 2) counter-clockwise by ``angle`` radians."""
    cos, sin = np.cos(angle), np.sin(angle)
    vector = np.asarray(vector, dtype=float)
    return np.stack([cos * vector[..., 0] - sin * vector[..., 1], sin * vector[..., 0] + cos * vector[..., 1]], -1)


def _smoothstep(x):
    """0 below 0, 1 above 1, a C1 cubic in between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _fill(image, signed_distance, value, pixel_mm):
    """Paint ``value`` where ``signed_distance`` (mm, negative inside) < 0, with a one-pixel partial-volume edge."""
    coverage = np.clip(0.5 - signed_distance / pixel_mm, 0.0, 1.0)
    image += coverage * (value - image)


class _Renderer:
    """Renders one subject's frames: image [X, Y, Z] float32 and labels [X, Y, Z] uint8 at a contraction c."""

    def __init__(self, subject):
        self.subject = subject
        nx, ny, nz = subject.shape
        p = subject.pixel_mm
        # Pixel positions (mm) relative to each slice's ED LV centre; shape (X, Y, Z) by broadcasting.
        self.px = (np.arange(nx, dtype=np.float32) * p)[:, None, None] - subject.lv_centre[:, 0].astype(np.float32)
        self.py = (np.arange(ny, dtype=np.float32) * p)[None, :, None] - subject.lv_centre[:, 1].astype(np.float32)
        self.px = np.broadcast_to(self.px, subject.shape)
        self.py = np.broadcast_to(self.py, subject.shape)
        self.distance_to_heart = np.sqrt(self.px ** 2 + self.py ** 2)
        rng = np.random.default_rng(subject.texture_seed)
        # Smooth random texture, attached to the tissue (sampled at material positions); coarse + fine scales.
        coarse = ndimage.gaussian_filter(rng.standard_normal(subject.shape, dtype=np.float32), (6.0, 6.0, 0.7))
        fine = ndimage.gaussian_filter(rng.standard_normal(subject.shape, dtype=np.float32), (1.2, 1.2, 0.0))
        self.texture = (0.15 * coarse / coarse.std() + 0.06 * fine / fine.std()).astype(np.float32)
        self.noise_rng = rng
        # Multiplicative bias field (coil sensitivity): static, smooth, a low-order polynomial in x, y, z.
        x = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[:, None, None]
        y = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[None, :, None]
        z = np.linspace(-1.0, 1.0, nz, dtype=np.float32)[None, None, :]
        b = subject.bias_coefficients.astype(np.float32)
        self.bias = np.exp(b[0] * x + b[1] * y + b[2] * x * y + b[3] * x * x + b[4] * y * y + 0.5 * b[5] * z)

    def material_positions(self, c):
        """Map every pixel of the frame at contraction ``c`` to its ED position.

        Returns:
            (xh, yh, cos_a, sin_a, cos2a, sin2a): ED position in the heart frame (mm, x towards the RV, origin
            at the slice's LV centre) and the polar angle of the pixel around the LV (unchanged by the radial
            maps), each [X, Y, Z] float32.
        """
        s = self.subject
        # 1. Global heart motion, inverted: translation, per-slice twist and an area-preserving elliptical
        #    stretch about the LV centre, faded out beyond ~50 mm so the chest wall barely moves.
        dx = self.px - np.float32(c * s.es_translation[0])
        dy = self.py - np.float32(c * s.es_translation[1])
        stretch = 1.0 + c * s.es_stretch
        cos_e, sin_e = np.cos(s.es_stretch_angle), np.sin(s.es_stretch_angle)
        inverse_stretch = np.array([[cos_e, -sin_e], [sin_e, cos_e]]) @ np.diag([1 / stretch, stretch]) @ np.array(
            [[cos_e, sin_e], [-sin_e, cos_e]])
        m = np.einsum("ij,zjk->zik", inverse_stretch, np.stack(
            [np.stack([np.cos(-c * s.twist), -np.sin(-c * s.twist)], -1),
             np.stack([np.sin(-c * s.twist), np.cos(-c * s.twist)], -1)], -2)).astype(np.float32)
        fade = np.exp(-np.square(np.maximum(self.distance_to_heart - 50.0, 0.0) / 40.0))
        gx = self.px + fade * (m[:, 0, 0] * dx + m[:, 0, 1] * dy - self.px)
        gy = self.py + fade * (m[:, 1, 0] * dx + m[:, 1, 1] * dy - self.py)
        # Heart frame: x points from the LV centre to the RV.
        cos_h, sin_h = np.float32(np.cos(s.heart_angle)), np.float32(np.sin(s.heart_angle))
        xh = cos_h * gx + sin_h * gy
        yh = -sin_h * gx + cos_h * gy
        rho2 = xh * xh + yh * yh + np.float32(1e-6)
        rho = np.sqrt(rho2)
        cos_a, sin_a = xh / rho, yh / rho
        cos2a, sin2a = cos_a * cos_a - sin_a * sin_a, 2 * cos_a * sin_a
        if c == 0.0:
            return xh, yh, cos_a, sin_a, cos2a, sin2a

        # 2. Incompressible LV contraction: the cavity (radius r) loses area fraction f(angle); outside it,
        #    rho_ED^2 = rho_ES^2 + f r^2 keeps every ring's area, so the myocardium thickens. The exchanged
        #    area fades out over a few cm beyond the epicardium.
        endo = self._endo_radius(cos2a, sin2a)
        epi = endo + self._wall(cos_a)
        loss = np.float32(c * s.area_loss) * self._contraction_pattern(cos_a, sin_a) * endo * endo
        es_cavity = endo * endo - loss
        fade = np.exp(-np.square(np.maximum(rho - epi - 5.0, 0.0) / 25.0))
        rho2_ed = np.where(rho2 < es_cavity, rho2 * (endo * endo / es_cavity), rho2 + loss * fade)
        rho_ed = np.sqrt(rho2_ed)
        # 3. RV free wall contraction: in the RV sector, material beyond the septum is pulled inwards; its
        #    ES radial thickness is 1/(1 + k) of ED near the septum, saturating at k * 15 mm farther out.
        sector = self._rv_sector(cos_a)
        beyond = np.maximum(rho_ed - epi, 0.0)
        pull = np.float32(c * s.rv_contraction * 15.0) * sector * (1.0 - np.exp(-beyond / 15.0))
        pull *= np.exp(-np.square(np.maximum(beyond - 35.0, 0.0) / 30.0))
        rho_ed = rho_ed + pull
        scale = rho_ed / rho
        return xh * scale, yh * scale, cos_a, sin_a, cos2a, sin2a

    def _endo_radius(self, cos2a, sin2a):
        s = self.subject
        e = np.float32(s.endo_ellipticity)
        shape = 1.0 + e * (np.float32(np.cos(2 * s.ellipticity_angle)) * cos2a
                           + np.float32(np.sin(2 * s.ellipticity_angle)) * sin2a)
        return s.endo_radius.astype(np.float32) * shape

    def _wall(self, cos_a):
        # The septum faces the RV (cos_a > 0); HCM thickens it.
        thickening = np.float32(self.subject.septal_thickening)
        return self.subject.wall_mm.astype(np.float32) * (1.0 + thickening * np.maximum(cos_a, 0))

    def _contraction_pattern(self, cos_a, sin_a):
        """Relative contraction per direction, mean 1 over the circle (weaker in an infarcted sector)."""
        s = self.subject
        if s.hypokinesis == 0.0:
            return np.float32(1.0)

        def pattern(ca, sa):
            towards = ca * np.cos(s.hypokinesis_angle) + sa * np.sin(s.hypokinesis_angle)
            return 1.0 - s.hypokinesis * _smoothstep((towards - 0.5) / 0.3)

        circle = np.linspace(0.0, 2 * np.pi, 720, endpoint=False)
        mean = pattern(np.cos(circle), np.sin(circle)).mean()
        return (pattern(cos_a, sin_a) / mean).astype(np.float32)

    @staticmethod
    def _rv_sector(cos_a):
        # 1 facing the RV, fading to 0 beyond ~100 degrees either side (past the RV insertion points).
        return _smoothstep((cos_a + 0.35) / 0.6)

    def render(self, c, with_labels):
        """Image [X, Y, Z] float32 (noise-free intensities x bias) and labels [X, Y, Z] uint8 (or None)."""
        s = self.subject
        p = s.pixel_mm
        xh, yh, cos_a, sin_a, cos2a, sin2a = self.material_positions(c)
        jitter = s.tissue_jitter.astype(np.float32)

        # Surroundings, in the body frame (lateral = patient left, anterior), at the material positions.
        cos_h, sin_h = np.float32(np.cos(s.heart_angle)), np.float32(np.sin(s.heart_angle))
        image_x = cos_h * xh - sin_h * yh + s.lv_centre[:, 0].astype(np.float32)
        image_y = sin_h * xh + cos_h * yh + s.lv_centre[:, 1].astype(np.float32)
        cos_b, sin_b = np.float32(np.cos(s.body_angle)), np.float32(np.sin(s.body_angle))
        bx, by = image_x - np.float32(s.body_centre[0]), image_y - np.float32(s.body_centre[1])
        lateral = cos_b * bx + sin_b * by
        anterior = -sin_b * bx + cos_b * by
        depth = np.linspace(0.0, 1.0, s.shape[2], dtype=np.float32) if s.shape[2] > 1 else np.zeros(1, np.float32)

        image = np.zeros(s.shape, np.float32)
        texture_weight = np.zeros(s.shape, np.float32)
        body = _ellipse_distance(lateral, anterior, 0.0, 0.0, *s.body_axes)
        _fill(image, body, 0.85 * jitter[0], p)  # subcutaneous fat
        _fill(texture_weight, body, 1.0, p)
        _fill(image, body + s.fat_mm, 0.32 * jitter[1], p)  # chest-wall muscle
        _fill(image, body + s.fat_mm + s.muscle_mm, 0.42 * jitter[2], p)  # mediastinum and soft tissue
        for lung in s.lungs:
            _fill(image, _ellipse_distance(lateral, anterior, *lung), 0.06, p)
        liver_size = np.clip(0.3 + depth, 0.0, 1.0)  # the liver dome rises into the apical slices
        liver = s.liver
        _fill(image, _ellipse_distance(lateral, anterior, liver[0], liver[1], liver[2] * liver_size,
                                       liver[3] * liver_size), 0.5 * jitter[3], p)
        spine_a = -s.body_axes[1] + 35.0
        _fill(image, np.sqrt(lateral ** 2 + (anterior - spine_a) ** 2) - 17.0, 0.3, p)
        _fill(image, np.sqrt(lateral ** 2 + (anterior - spine_a) ** 2) - 9.0, 0.55, p)  # marrow
        _fill(image, np.sqrt((lateral - 18.0) ** 2 + (anterior - spine_a - 28.0) ** 2) - 10.0, 1.05, p)  # aorta

        # Heart, in the heart frame at the ED (material) positions.
        rho = np.sqrt(xh * xh + yh * yh)
        endo = self._endo_radius(cos2a, sin2a)
        epi = endo + self._wall(cos_a)
        sd_endo = rho - endo
        sd_epi = rho - epi
        # RV: an ellipse centred towards the RV, minus the LV; its ED free wall lies rv_width beyond the
        # epicardium and its tangential semi-axis grows with rv_width, so it is a crescent over ~140 degrees.
        rv_width = s.rv_width.astype(np.float32)
        epi_mean = (s.endo_radius + s.wall_mm).astype(np.float32)
        rv_centre = np.float32(s.rv_offset) * epi_mean
        rv_radial = epi_mean + rv_width - rv_centre
        rv_tangential = np.sqrt(epi_mean ** 2 - rv_centre ** 2) + np.float32(s.rv_wrap) * rv_width
        sd_rv_outer = _ellipse_distance(xh, yh, rv_centre, 0.0, rv_radial, rv_tangential)
        sd_rv_outer = np.where(rv_width > 0, sd_rv_outer, np.float32(1e3))
        sd_rv = np.maximum(sd_rv_outer, -sd_epi)  # inside the RV ellipse and outside the LV
        rv_wall = 3.0
        # Epicardial fat: 1-6 mm, thickest on one side (the atrioventricular groove in real hearts).
        fat_width = 1.0 + 5.0 * _smoothstep(0.5 + 0.5 * (cos_a * np.float32(np.cos(s.fat_angle))
                                                         + sin_a * np.float32(np.sin(s.fat_angle))))
        _fill(image, np.minimum(sd_epi, sd_rv_outer - rv_wall) - fat_width, 0.6 * jitter[4], p)
        _fill(texture_weight, np.minimum(sd_epi, sd_rv_outer - rv_wall), 0.6, p)
        myocardium = 0.26 * jitter[5]
        blood = 1.1 * jitter[6]
        _fill(image, sd_rv_outer - rv_wall, myocardium, p)  # RV free wall
        _fill(image, sd_rv, blood, p)
        _fill(texture_weight, sd_rv, 0.25, p)
        _fill(image, sd_epi, myocardium, p)
        _fill(texture_weight, sd_epi, 0.6, p)
        _fill(image, sd_endo, blood, p)
        _fill(texture_weight, sd_endo, 0.25, p)
        # Papillary muscles: dark blobs inside the cavity on the free wall, labelled LV as in ACDC.
        for angle in (np.deg2rad(140.0), np.deg2rad(220.0)):
            centre = 0.72 * s.endo_radius.astype(np.float32)
            radius = np.where(s.papillary > 0, 0.2 * s.endo_radius, 0.0).astype(np.float32)
            sd_pap = np.sqrt((xh - centre * np.float32(np.cos(angle))) ** 2
                             + (yh - centre * np.float32(np.sin(angle))) ** 2) - radius
            _fill(image, np.maximum(sd_pap, sd_endo), myocardium * 1.2, p)

        image *= 1.0 + texture_weight * self._texture_at(image_x, image_y)
        image *= self.bias
        labels = None
        if with_labels:
            labels = np.zeros(s.shape, np.uint8)
            labels[sd_rv < 0] = ACDC_LABELS["RV"]
            labels[sd_epi < 0] = ACDC_LABELS["Myo"]
            labels[sd_endo < 0] = ACDC_LABELS["LV"]
        return image, labels

    def _texture_at(self, image_x, image_y):
        """Texture sampled at material positions (image mm, [X, Y, Z]), so it moves with the tissue."""
        nx, ny, nz = self.subject.shape
        p = self.subject.pixel_mm
        i = np.clip(np.rint(image_x / p), 0, nx - 1).astype(np.intp)
        j = np.clip(np.rint(image_y / p), 0, ny - 1).astype(np.intp)
        k = np.arange(nz)[None, None, :]
        # Nearest neighbour is enough: the texture is smoother than a pixel at both scales.
        return self.texture[i, j, k]

    def add_rician_noise(self, image):
        """Magnitude of the image plus complex Gaussian noise (sigma relative to unit intensity)."""
        sigma = np.float32(self.subject.noise_sigma)
        real = image + sigma * self.noise_rng.standard_normal(image.shape, dtype=np.float32)
        imaginary = sigma * self.noise_rng.standard_normal(image.shape, dtype=np.float32)
        return np.sqrt(real * real + imaginary * imaginary)


def _ellipse_distance(x, y, cx, cy, semi_x, semi_y):
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipse; exact for a circle."""
    u = (x - cx) / semi_x
    v = (y - cy) / semi_y
    return (np.sqrt(u * u + v * v) - 1.0) * np.minimum(semi_x, semi_y)


def _write_subject(folder, name, subject):
    """Render all frames of one subject and write its ACDC folder."""
    folder.mkdir(parents=True)
    renderer = _Renderer(subject)
    contraction = _contraction_curve(subject.n_frames, subject.es_index)
    frames = np.empty(subject.shape + (subject.n_frames,), np.int16)
    labels = {}
    for t, c in enumerate(contraction):
        labelled = t in (0, subject.es_index)
        image, label = renderer.render(float(c), labelled)
        image = renderer.add_rician_noise(image)
        frames[..., t] = np.clip(np.rint(image * _INTENSITY_SCALE), 0, np.iinfo(np.int16).max)
        if labelled:
            labels[t] = label

    affine = np.diag([subject.pixel_mm, subject.pixel_mm, subject.slice_mm, 1.0])
    for t, label in labels.items():
        _save(frames[..., t], affine, folder / ("%s_frame%02d.nii.gz" % (name, t + 1)))
        _save(label, affine, folder / ("%s_frame%02d_gt.nii.gz" % (name, t + 1)))
    _save(frames, affine, folder / ("%s_4d.nii.gz" % name), frame_ms=subject.frame_ms)
    (folder / "Info.cfg").write_text(
        "ED: 1\nES: %d\nGroup: %s\nHeight: %.1f\nNbFrame: %d\nWeight: %.1f\n"
        % (subject.es_index + 1, subject.group, subject.height_cm, subject.n_frames, subject.weight_kg))


def _save(array, affine, path, frame_ms=None):
    """Write ``array`` as NIfTI-1 with its own dtype (no scaling), zooms from ``affine`` (+ frame time in ms)."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    if frame_ms is not None:
        image.header.set_zooms(tuple(np.diag(affine)[:3]) + (frame_ms,))
    image.header.set_xyzt_units("mm", "msec")
    nib.save(image, str(path))


class PhantomDataset(CardiacDataset):
    """The ``phantom`` entry of :data:`gsmorph_tf.registry.DATASETS`: generated into ``config.data_dir`` on
    first use (seed :data:`PHANTOM_SEED`, sizes from the ``phantom_*`` options), then read as ACDC."""

    def __init__(self):
        super().__init__(load_acdc)

    def load(self, config, generate=True):
        if generate:
            generate_phantom_dataset(config.data_dir, n_subjects=config.option("phantom_subjects"),
                                     n_slices=config.option("phantom_slices"),
                                     image_size=config.option("phantom_size"), seed=PHANTOM_SEED)
        return super().load(config)


DATASET = PhantomDataset()
