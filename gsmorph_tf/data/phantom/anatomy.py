"""The phantom's subjects: anatomy, motion and appearance drawn from a seed (lengths in mm, angles in radians).

NumPy only. :func:`draw_subject` draws everything one subject needs; :mod:`.render` turns it into frames.
"""
from dataclasses import dataclass

import numpy as np

GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")

#: The phantom of a run is always drawn with this seed, so the training seed changes the run, not the data.

# Field of view (mm) is about 1.3-1.8 mm x 192 px whatever image_size is, so the anatomy always fits.
_REFERENCE_SIZE = 192


@dataclass(frozen=True)


class SubjectAnatomy:
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


def subject_generators(seed, n_subjects):
    """One independent random generator per subject; subject i's stream does not depend on n_subjects."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(n_subjects)]


def draw_subject(rng, n_slices, image_size, n_frames):
    """Draw one subject's anatomy, motion and appearance (see :class:`SubjectAnatomy` for units)."""
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

    return SubjectAnatomy(
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


def _rotate(vector, angle):
    """Rotate 2-vectors (..., 2) counter-clockwise by ``angle`` radians."""
    cos, sin = np.cos(angle), np.sin(angle)
    vector = np.asarray(vector, dtype=float)
    return np.stack([cos * vector[..., 0] - sin * vector[..., 1], sin * vector[..., 0] + cos * vector[..., 1]], -1)


def smoothstep(x):
    """0 below 0, 1 above 1, a C1 cubic in between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)
