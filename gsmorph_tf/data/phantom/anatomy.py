"""One phantom subject: its anatomy, motion and appearance drawn from a random generator, and the heart's
geometry along its long axis.

Units: lengths in mm, angles in radians. Two coordinate systems:

- the *image frame*: in-plane positions ``(x, y)`` in mm from the first voxel's centre along the array axes;
- the *long axis* ``s``: mm from the end-diastolic (ED) mitral valve plane towards the apex. The ventricles
  lie at ``s > 0`` (up to the epicardial apex), the atria and the aortic root at ``s < 0``. At ED slice
  ``k``'s centre is at ``s = first_slice_mm + k * slice_mm``; in later frames the base descends towards the
  apex, so a slice shows other material (see :func:`Subject.descent_profile`).

In-plane heart shapes are written in the *heart frame*: origin on the LV long axis, x pointing from the LV
centre to the RV.
"""
from dataclasses import dataclass

import numpy as np

GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")

# The field of view (mm) is about 1.3-1.8 mm x 192 px whatever image_size is, so the anatomy always fits.
REFERENCE_SIZE = 192


@dataclass(frozen=True)
class CrossSections:
    """Heart geometry at M long-axis positions ``s``; every field is a float32 array over those positions.

    ``centre`` is (M, 2) image mm; the others are (M,) mm or radians. A radius <= 0 means the structure is
    absent at that position.
    """

    s: np.ndarray
    centre: np.ndarray  # LV axis, ED image frame
    endo: np.ndarray  # mean endocardial radius (compact wall); 0 beyond the cavity tip
    epi: np.ndarray  # mean epicardial radius; 0 beyond the apex
    rv_width: np.ndarray  # radial width of the RV cavity
    twist: np.ndarray  # ES rotation
    papillary: np.ndarray  # papillary muscle radius
    band: np.ndarray  # ED width of the trabecular band inside the endocardium
    trabeculae: np.ndarray  # 0..1, how far the trabeculae reach across the band
    contraction: np.ndarray  # 0..1: 1 in the ventricles, 0 in the atria (they do not squeeze in systole)

    def select(self, index):
        """The cross-sections at ``index`` (any numpy index of the positions), e.g. one per image sample."""
        return CrossSections(**{name: getattr(self, name)[index] for name in self.__dataclass_fields__})


@dataclass(frozen=True)
class Subject:
    """Everything drawn for one subject (see the module docstring for units and frames)."""

    group: str
    shape: tuple  # (X, Y, Z) voxels
    pixel_mm: float
    slice_mm: float  # slice thickness and spacing (contiguous slabs)
    n_frames: int
    es_index: int  # 0-based
    frame_ms: float
    height_cm: float
    weight_kg: float
    # long axis
    first_slice_mm: float  # s of slice 0's centre at ED
    cavity_tip_mm: float  # end of the LV cavity
    apex_mm: float  # epicardial apex
    rv_end_mm: float  # end of the RV cavity
    axis_centre: np.ndarray  # (2,) image mm of the LV axis at s = 0
    axis_drift: np.ndarray  # (2,) in-plane drift of the LV axis, mm per mm of s (the stack is oblique)
    valve_tilt: np.ndarray  # (2,) heart frame: the valve plane lies at s = valve_tilt . (x, y)
    # ventricles
    endo_radius: float  # basal endocardial radius
    wall_mm: float  # basal wall thickness
    rv_width: float  # basal RV cavity width
    heart_angle: float  # direction of the RV from the LV centre, image frame
    endo_ellipticity: float  # relative amplitude of the cavity's cos(2 angle) shape
    ellipticity_angle: float
    septal_thickening: float  # relative extra wall thickness on the septum (HCM)
    rv_offset: float  # RV ellipse centre, as a fraction of the epicardial radius
    rv_wrap: float  # how far the RV horns reach around the LV, relative to the RV width
    # papillary muscles and trabeculae (inside the LV cavity, labelled LV as in ACDC)
    papillary_angles: tuple  # heart frame
    papillary_radius: float
    papillary_range: tuple  # (first, last) s of the muscles
    papillary_gap: float  # ED blood gap between a muscle and the trabecular band
    papillary_thickening: float  # relative growth of a muscle's cross-section radius at ES (it shortens)
    trabecular_band: float  # ED width of the blood-and-trabeculae band along the compact wall
    es_band: float  # width the band closes to at ES
    trabecula_count: int
    trabecula_width: float  # half width of one strand
    trabecula_phase: float  # angular offset of the strands, in strand spacings
    trabecula_reach: np.ndarray  # (20,) fraction of the band strand i crosses at most (the first count used)
    # above the valve plane, heart frame: (x, y, radius) of the left atrium, right atrium and aortic root
    atria: tuple
    # motion (values at ES; frame t is at contraction c(t) between 0 = ED and 1 = ES)
    area_loss: float  # fraction of LV cavity area lost at ES
    hypokinesis: float  # 0..1 reduction of contraction in an infarcted sector (MINF)
    hypokinesis_angle: float
    rv_contraction: float  # k: near the septum the RV's ES radial thickness is 1 / (1 + k) of ED
    es_translation: np.ndarray  # (2,) mm
    es_stretch: float  # area-preserving ES stretch: 1 + e along es_stretch_angle, 1 / (1 + e) across
    es_stretch_angle: float
    twist_base: float  # ES rotation at the valve plane; the apex turns the other way
    twist_apex: float
    base_descent: float  # mm the valve plane moves towards the apex at ES
    apex_descent: float  # fraction of base_descent the apex moves
    atrial_fade: float  # mm above the valve plane over which the descent fades out (the atria stretch)
    # surroundings
    fat_angle: float  # direction of the thickest epicardial fat
    body_centre: np.ndarray  # (2,) image mm
    body_angle: float
    body_axes: tuple  # (lateral, antero-posterior) semi-axes
    fat_mm: float
    muscle_mm: float
    lungs: tuple  # ((l, a, semi_l, semi_a), (l, a, semi_l, semi_a)) body frame
    liver: tuple  # (l, a, semi_l, semi_a) body frame, at the apex
    # appearance
    tissue_jitter: np.ndarray  # (8,) multiplicative contrast per tissue (subject-specific contrast)
    blood_es_change: float  # relative change of the blood signal at ES (slower flow: darker)
    flow_amplitude: float  # std of the relative blood-signal inhomogeneity (flow), not attached to tissue
    intensity_drift: float  # relative global intensity change at ES
    noise_sigma: float  # Rician noise, relative to unit intensity
    texture_seed: int
    bias_coefficients: np.ndarray  # (6,) static coil bias field
    bias_es_coefficients: np.ndarray  # (6,) change of the bias field at ES (breathing position)

    def cross_sections(self, s):
        """Heart geometry at long-axis positions ``s`` (mm, any 1-D array); see :class:`CrossSections`.

        The cavity and the epicardium are half-ellipsoids from the valve plane (s = 0) to the cavity tip and
        the apex; the RV ends earlier; the papillary muscles are columns over ``papillary_range``.
        """
        s = np.asarray(s, dtype=float)
        ventricle = np.maximum(s, 0.0)
        endo = self.endo_radius * np.sqrt(np.clip(1.0 - (ventricle / self.cavity_tip_mm) ** 2, 0.0, None))
        epi = (self.endo_radius + self.wall_mm) * np.sqrt(np.clip(1.0 - (ventricle / self.apex_mm) ** 2, 0.0, None))
        rv = self.rv_width * np.sqrt(np.clip(1.0 - (ventricle / self.rv_end_mm) ** 2, 0.0, None))
        first, last = self.papillary_range
        middle, half = 0.5 * (first + last), 0.5 * (last - first)
        papillary = self.papillary_radius * np.sqrt(np.clip(1.0 - ((s - middle) / half) ** 2, 0.0, None))
        band = np.minimum(self.trabecular_band, 0.3 * endo)
        # Trabeculae are sparse at the base and coarse towards the apex.
        trabeculae = np.clip((ventricle / self.cavity_tip_mm - 0.15) / 0.35, 0.0, 1.0)
        twist = self.twist_base + (self.twist_apex - self.twist_base) * np.clip(ventricle / self.apex_mm, 0.0, 1.0)
        contraction = np.clip((s + 5.0) / 10.0, 0.0, 1.0)
        centre = self.axis_centre[None, :] + s[:, None] * self.axis_drift[None, :]
        fields = dict(s=s, centre=centre, endo=endo, epi=epi, rv_width=rv, twist=twist, papillary=papillary,
                      band=band, trabeculae=trabeculae, contraction=contraction)
        return CrossSections(**{name: value.astype(np.float32) for name, value in fields.items()})

    def descent_profile(self):
        """Through-plane motion: knots ``(s, w)`` of a piecewise-linear profile; material at ``s`` moves
        ``c * base_descent * w(s)`` mm towards the apex at contraction ``c``.

        ``w`` is 1 at the valve plane, falls linearly to ``apex_descent`` at the apex (which barely moves)
        and to 0 over ``atrial_fade`` mm above the valve plane (the atria stretch, their roofs stay).
        """
        return (np.array([-self.atrial_fade, 0.0, self.apex_mm]), np.array([0.0, 1.0, self.apex_descent]))


def subject_generators(seed, n_subjects):
    """One independent random generator per subject; subject i's stream does not depend on n_subjects."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(n_subjects)]


def draw_subject(rng, n_slices, image_size, n_frames):
    """Draw one subject's anatomy, motion and appearance (see :class:`Subject` for units)."""
    group = GROUPS[rng.integers(len(GROUPS))]
    pixel_mm = rng.uniform(1.3, 1.8) * REFERENCE_SIZE / image_size
    slice_mm = rng.uniform(8.0, 10.0)
    shape = (image_size, int(round(image_size * rng.choice([1.0, 13 / 12, 7 / 6]))), n_slices)
    es_fraction = rng.uniform(0.35, 0.45)
    es_index = int(np.clip(round(es_fraction * n_frames), 1, n_frames - 1))
    heart_rate = rng.uniform(55.0, 90.0)

    # Group-specific LV size (basal endocardial radius), wall and contraction. All keep the ES/ED cavity
    # area ratio of a mid slice within 0.55-0.67 (33-45 % area loss, inside ACDC's 30-50 %).
    endo_radius, wall, area_loss = rng.uniform(21.0, 25.0), rng.uniform(7.0, 9.5), rng.uniform(0.39, 0.45)
    septal_thickening, hypokinesis = 0.0, 0.0
    rv_width, rv_contraction = rng.uniform(15.0, 21.0), rng.uniform(0.45, 0.75)
    base_descent, papillary_radius = rng.uniform(11.0, 15.0), rng.uniform(4.0, 5.5)
    # DCM and MINF hearts pump weakly on both sides and shorten less along the long axis.
    if group == "DCM":
        endo_radius, wall, area_loss = rng.uniform(27.0, 31.0), rng.uniform(7.0, 8.0), rng.uniform(0.33, 0.37)
        rv_contraction, base_descent = rng.uniform(0.35, 0.6), rng.uniform(8.0, 11.0)
    elif group == "MINF":
        endo_radius, wall, area_loss = rng.uniform(24.0, 28.0), rng.uniform(7.0, 8.5), rng.uniform(0.33, 0.39)
        hypokinesis, rv_contraction = rng.uniform(0.5, 0.8), rng.uniform(0.35, 0.6)
        base_descent = rng.uniform(9.0, 12.0)
    elif group == "HCM":
        endo_radius, wall, area_loss = rng.uniform(18.0, 21.0), rng.uniform(9.0, 10.5), rng.uniform(0.41, 0.45)
        septal_thickening = rng.uniform(0.15, 0.35)
    elif group == "RV":
        rv_width, rv_contraction = rng.uniform(22.0, 28.0), rng.uniform(0.4, 0.6)

    # Long axis: slice 0's centre lies 8-13 mm below the ED valve plane, so at ES, after the base has
    # descended, its slab straddles the valve plane. The cavity tip lies near the last slice (at least 50 mm
    # from the valve plane for short stacks), the epicardial apex a wall thickness beyond it.
    first_slice = rng.uniform(8.0, 13.0)
    last_slice = first_slice + (n_slices - 1) * slice_mm
    cavity_tip = max(last_slice + rng.uniform(-2.0, 5.0), 50.0)
    apex = cavity_tip + rng.uniform(0.6, 0.8) * wall
    rv_end = rng.uniform(0.8, 0.92) * cavity_tip
    tilt_angle = rng.uniform(0.0, 2 * np.pi)
    valve_tilt = rng.uniform(0.05, 0.15) * np.array([np.cos(tilt_angle), np.sin(tilt_angle)])

    field_of_view = np.array(shape[:2]) * pixel_mm
    body_angle = rng.uniform(-0.35, 0.35) + np.pi  # anterior roughly towards -X
    heart_in_body = np.array([rng.uniform(20.0, 35.0), rng.uniform(5.0, 20.0)])
    offset_direction = rng.uniform(0.0, 2 * np.pi)
    heart_centre = field_of_view / 2 + rng.uniform(0.06, 0.15) * field_of_view.min() * np.array(
        [np.cos(offset_direction), np.sin(offset_direction)])
    # Stacks are not exactly along the LV long axis: the centre drifts a few mm from base to apex.
    axis_drift = rng.normal(0.0, 3.0, size=2) / max(last_slice - first_slice, 50.0)
    axis_centre = heart_centre - first_slice * axis_drift
    body_centre = heart_centre - _rotate(heart_in_body, body_angle)
    # RV lies anterior-right of the LV: in the body frame (lateral = patient left, anterior) about (-1, 1).
    heart_angle = body_angle + np.deg2rad(135.0 + rng.uniform(-20.0, 20.0))

    twist_base, twist_apex = np.deg2rad(rng.uniform(-5.0, -1.0)), np.deg2rad(rng.uniform(1.0, 5.0))
    if rng.random() < 0.5:
        twist_base, twist_apex = -twist_base, -twist_apex
    translation_angle = rng.uniform(0.0, 2 * np.pi)
    es_translation = rng.uniform(2.0, 5.0) * np.array([np.cos(translation_angle), np.sin(translation_angle)])

    # Papillary muscles: anterolateral and posteromedial, on the free wall, over the mid-ventricle.
    papillary_angles = tuple(np.deg2rad(np.array([140.0, 220.0]) + rng.normal(0.0, 8.0, size=2)))
    papillary_range = (rng.uniform(0.2, 0.3) * cavity_tip, rng.uniform(0.75, 0.85) * cavity_tip)
    # Atria and aortic root above the valve plane (heart frame, mm): LA away from the RV, RA beyond the RV
    # side, the aortic root between them.
    epi_radius = endo_radius + wall
    atria = ((-0.35 * epi_radius, rng.uniform(-0.2, 0.2) * epi_radius, rng.uniform(0.8, 1.0) * endo_radius),
             (0.9 * epi_radius + 0.5 * rv_width, rng.uniform(-0.6, -0.3) * epi_radius, rng.uniform(0.6, 0.8)
              * endo_radius),
             (0.45 * epi_radius, rng.uniform(0.35, 0.6) * epi_radius, rng.uniform(10.0, 13.0)))

    body_axes = (rng.uniform(150.0, 180.0), rng.uniform(105.0, 125.0))
    lungs = ((rng.uniform(70.0, 85.0), rng.uniform(-15.0, 5.0), rng.uniform(40.0, 50.0), rng.uniform(60.0, 75.0)),
             (rng.uniform(-85.0, -70.0), rng.uniform(-15.0, 5.0), rng.uniform(45.0, 55.0), rng.uniform(60.0, 75.0)))
    liver = (rng.uniform(-70.0, -45.0), rng.uniform(-25.0, 5.0), rng.uniform(55.0, 70.0), rng.uniform(45.0, 60.0))

    return Subject(
        group=group, shape=shape, pixel_mm=float(pixel_mm), slice_mm=float(slice_mm), n_frames=n_frames,
        es_index=es_index, frame_ms=float(60000.0 / heart_rate / n_frames),
        height_cm=float(round(rng.uniform(150.0, 195.0), 1)), weight_kg=float(round(rng.uniform(50.0, 110.0), 1)),
        first_slice_mm=float(first_slice), cavity_tip_mm=float(cavity_tip), apex_mm=float(apex),
        rv_end_mm=float(rv_end), axis_centre=axis_centre, axis_drift=axis_drift, valve_tilt=valve_tilt,
        endo_radius=float(endo_radius), wall_mm=float(wall), rv_width=float(rv_width),
        heart_angle=float(heart_angle), endo_ellipticity=rng.uniform(0.0, 0.08),
        ellipticity_angle=rng.uniform(0.0, np.pi), septal_thickening=septal_thickening,
        rv_offset=rng.uniform(0.6, 0.8), rv_wrap=rng.uniform(0.8, 1.1),
        papillary_angles=papillary_angles, papillary_radius=float(papillary_radius),
        papillary_range=papillary_range, papillary_gap=rng.uniform(0.0, 0.3),
        papillary_thickening=rng.uniform(0.2, 0.4),
        trabecular_band=rng.uniform(2.5, 4.5), es_band=rng.uniform(0.1, 0.4),
        trabecula_count=int(rng.integers(12, 21)), trabecula_width=rng.uniform(0.5, 0.9),
        trabecula_phase=rng.uniform(0.0, 1.0), trabecula_reach=rng.uniform(0.4, 1.0, size=20), atria=atria,
        area_loss=area_loss, hypokinesis=hypokinesis, hypokinesis_angle=rng.uniform(0.5 * np.pi, 1.5 * np.pi),
        rv_contraction=rv_contraction, es_translation=es_translation, es_stretch=rng.uniform(0.05, 0.12),
        es_stretch_angle=rng.uniform(0.0, np.pi), twist_base=twist_base, twist_apex=twist_apex,
        base_descent=float(base_descent), apex_descent=rng.uniform(0.0, 0.1), atrial_fade=rng.uniform(30.0, 45.0),
        fat_angle=rng.uniform(0.0, 2 * np.pi), body_centre=body_centre, body_angle=float(body_angle),
        body_axes=body_axes, fat_mm=rng.uniform(6.0, 15.0), muscle_mm=rng.uniform(8.0, 14.0), lungs=lungs,
        liver=liver, tissue_jitter=rng.uniform(0.85, 1.15, size=8), blood_es_change=rng.uniform(-0.2, 0.05),
        flow_amplitude=rng.uniform(0.08, 0.16), intensity_drift=rng.uniform(-0.04, 0.04),
        noise_sigma=rng.uniform(0.03, 0.07), texture_seed=int(rng.integers(2 ** 31)),
        bias_coefficients=rng.normal(0.0, 0.2, size=6), bias_es_coefficients=rng.normal(0.0, 0.03, size=6))


def _rotate(vector, angle):
    """Rotate 2-vectors (..., 2) counter-clockwise by ``angle`` radians."""
    cos, sin = np.cos(angle), np.sin(angle)
    vector = np.asarray(vector, dtype=float)
    return np.stack([cos * vector[..., 0] - sin * vector[..., 1], sin * vector[..., 0] + cos * vector[..., 1]], -1)
