"""Rendering one phantom subject: bSSFP-like frames and ACDC label maps at any point of the cardiac cycle.

A frame at contraction ``c`` (0 at ED, 1 at ES) maps every sample back to its end-diastolic (*material*)
position and evaluates the analytic anatomy there, so image, labels and tissue texture move together:

- **through the plane**: the base descends towards the apex by ``c * base_descent`` mm (11-15 mm at ES,
  8-12 mm in the weakly contracting DCM and MINF hearts), the apex barely moves, so a slice at a fixed
  position shows more basal material at ES (the basal slice can leave the ventricles for the atria);
- **in the plane**: a global heart motion (translation, base-to-apex twist, elliptical stretch) that fades out
  away from the heart; an incompressible radial LV contraction (the cavity loses area, the myocardium keeps
  its area and thickens) in which the blood between the trabeculae is squeezed out, so papillary muscles and
  trabeculae that stand apart in the ED blood pool merge with the wall at ES; an RV free-wall contraction.

Each slice is a slab ``slice_mm`` thick: its image is the mean of :data:`SUB_SLICES` planes through the slab
(partial volume: structures fade in and out at the base and apex), its labels those of the slab's central
plane. The heart is rendered plane by plane in a box around it, the rest of the body once per slice.
Appearance: tissue contrast per subject, a blood signal that changes between frames and is not attached to
tissue (flow), a smooth coil bias field that shifts a little at ES, a global intensity drift, Rician noise.
"""
import numpy as np
from scipy import ndimage

from gsmorph_tf.data.acdc import ACDC_LABELS

#: Planes averaged through each slice's thickness (odd, so the labels come from the central one).
SUB_SLICES = 5

#: Stored value of a unit-intensity tissue (blood is about 1.1).
INTENSITY_SCALE = 800.0

_RV_WALL_MM = 3.0
_ATRIAL_WALL_MM = 2.0
_TEXTURE_STEP_MM = 2.0  # long-axis spacing of the heart's tissue texture


def contraction_curve(n_frames, es_index):
    """Contraction c per frame, shape (n_frames,): 0 at ED (frame 0), 1 at ES, relaxing towards ED after.

    Systole is a half cosine; diastole returns faster at first (rapid filling) and does not reach 0 within
    the cycle, as the next ED is the first frame of the next cycle.
    """
    frames = np.arange(n_frames, dtype=float)
    systole = 0.5 * (1.0 - np.cos(np.pi * frames / es_index))
    relaxation = np.clip((frames - es_index) / (n_frames - es_index), 0.0, 1.0) ** 0.7
    diastole = 0.5 * (1.0 + np.cos(np.pi * relaxation))
    return np.where(frames <= es_index, systole, diastole)


def slab_positions(subject):
    """ED long-axis position (mm) of every plane averaged into each slice: (Z, SUB_SLICES), base to apex."""
    offsets = ((np.arange(SUB_SLICES) + 0.5) / SUB_SLICES - 0.5) * subject.slice_mm
    centres = subject.first_slice_mm + subject.slice_mm * np.arange(subject.shape[2])
    return centres[:, None] + offsets[None, :]


def material_long_axis(subject, z, c):
    """Material long-axis position ``s`` (mm, ED) seen at the fixed position ``z`` (mm) at contraction ``c``.

    Material at ``s`` lies at ``z = s + c * base_descent * w(s)`` (:meth:`Subject.descent_profile`), an
    increasing piecewise-linear map, inverted here exactly by interpolating its knots.
    """
    knots_s, knots_w = subject.descent_profile()
    knots_s = np.concatenate([[knots_s[0] - 1e3], knots_s, [knots_s[-1] + 1e3]])
    knots_w = np.concatenate([[knots_w[0]], knots_w, [knots_w[-1]]])
    knots_z = knots_s + c * subject.base_descent * knots_w
    return np.interp(z, knots_z, knots_s)


def render_cycle(subject):
    """All frames of one subject and the labels of its ED and ES frames.

    Returns:
        ``(frames, labels)``: int16 ``[X, Y, Z, T]`` (noise included, scaled by :data:`INTENSITY_SCALE`) and
        ``{t: uint8 [X, Y, Z]}`` for t = 0 (ED) and ``subject.es_index``.
    """
    renderer = Renderer(subject)
    frames = np.empty(subject.shape + (subject.n_frames,), np.int16)
    labels = {}
    for t, c in enumerate(contraction_curve(subject.n_frames, subject.es_index)):
        labelled = t in (0, subject.es_index)
        image, label = renderer.render(float(c), labelled)
        image = renderer.add_rician_noise(image)
        frames[..., t] = np.clip(np.rint(image * INTENSITY_SCALE), 0, np.iinfo(np.int16).max)
        if labelled:
            labels[t] = label
    return frames, labels


def _smoothstep(x):
    """0 below 0, 1 above 1, a C1 cubic in between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _coverage(signed_distance, pixel_mm):
    """Fraction of a pixel inside a shape (signed distance in mm, negative inside): a one-pixel ramp."""
    return np.clip(0.5 - signed_distance / pixel_mm, 0.0, 1.0)


def _fill(image, signed_distance, value, pixel_mm):
    """Paint ``value`` where ``signed_distance`` (mm, negative inside) < 0, with a one-pixel partial-volume edge."""
    image += _coverage(signed_distance, pixel_mm) * (value - image)


def _ellipse_distance(x, y, cx, cy, semi_x, semi_y):
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipse; exact for a circle."""
    u = (x - cx) / semi_x
    v = (y - cy) / semi_y
    return (np.sqrt(u * u + v * v) - 1.0) * np.minimum(semi_x, semi_y)


def _smooth_noise(rng, shape, sigma):
    """Gaussian-filtered white noise of unit standard deviation (float32)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


class _Layer:
    """Heart tissue painted over the body at N samples: premultiplied value, texture-weighted value, opacity.

    Painting ``value`` with coverage ``a`` does ``x += a * (target - x)`` on the three arrays, so
    ``value + texture_value * texture + (1 - alpha) * body`` is the heart composited over the body, with each
    tissue's texture weight applied to its own share of the sample.
    """

    def __init__(self, n):
        self.value = np.zeros(n, np.float32)
        self.texture_value = np.zeros(n, np.float32)
        self.alpha = np.zeros(n, np.float32)

    def paint(self, coverage, value, texture_weight, where=None):
        """Paint ``value`` (scalar or per sample) with ``coverage`` at all samples, or at the index ``where``."""
        for array, target in ((self.value, value), (self.texture_value, value * texture_weight),
                              (self.alpha, 1.0)):
            if where is None:
                array += coverage * (target - array)
            else:
                array[where] += coverage * (target - array[where])


class Renderer:
    """Renders one subject's frames: image [X, Y, Z] float32 and labels [X, Y, Z] uint8 at a contraction c."""

    def __init__(self, subject):
        self.subject = s = subject
        nx, ny, nz = s.shape
        p = s.pixel_mm
        self.x = np.arange(nx, dtype=np.float32) * np.float32(p)
        self.y = np.arange(ny, dtype=np.float32) * np.float32(p)
        self.slab = slab_positions(s)
        rng = np.random.default_rng(s.texture_seed)

        # Box (pixel ranges) holding the heart at every frame and plane: the farthest heart structure from the
        # LV axis, plus motion and fat, around the axis over the long-axis range the planes can show.
        rv_reach = s.endo_radius + s.wall_mm + 1.15 * s.rv_width + _RV_WALL_MM
        atrial_reach = max(np.hypot(x, y) + r + _ATRIAL_WALL_MM for x, y, r in s.atria)
        reach = 1.15 * (max(rv_reach, atrial_reach) + 6.0) + np.hypot(*s.es_translation) + 3 * p
        self.atrial_reach = atrial_reach
        # Planes above this long-axis position lie below the (tilted) valve plane everywhere in the box.
        self.highest_valve = np.hypot(*s.valve_tilt) * 1.5 * reach + s.slice_mm / SUB_SLICES
        self.s_range = (float(material_long_axis(s, self.slab.min(), 1.0)) - 1.0, float(self.slab.max()) + 1.0)
        centres = s.cross_sections(np.array(self.s_range)).centre
        low = np.floor((centres.min(axis=0) - reach) / p).astype(int)
        high = np.ceil((centres.max(axis=0) + reach) / p).astype(int) + 1
        self.box = (slice(max(low[0], 0), min(high[0], nx)), slice(max(low[1], 0), min(high[1], ny)))
        box_shape = (self.box[0].stop - self.box[0].start, self.box[1].stop - self.box[1].start)

        # Tissue texture: smooth random fields attached to the material (sampled at ED positions). The body's
        # is one field per slice; the heart's covers its box (plus a margin for motion) along the long axis.
        coarse = ndimage.gaussian_filter(rng.standard_normal(s.shape, dtype=np.float32), (6.0, 6.0, 0.7))
        fine = ndimage.gaussian_filter(rng.standard_normal(s.shape, dtype=np.float32), (1.2, 1.2, 0.0))
        self.body_texture = (0.15 * coarse / coarse.std() + 0.06 * fine / fine.std()).astype(np.float32)
        self.texture_margin = int(np.ceil(12.0 / p))
        n_long = int(np.ceil((self.s_range[1] - self.s_range[0]) / _TEXTURE_STEP_MM)) + 1
        heart_shape = (box_shape[0] + 2 * self.texture_margin, box_shape[1] + 2 * self.texture_margin, n_long)
        self.heart_texture = (0.15 * _smooth_noise(rng, heart_shape, (6.0, 6.0, 3.0))
                              + 0.06 * _smooth_noise(rng, heart_shape, (1.2, 1.2, 0.5)))
        # Blood signal (flow): smooth fields fixed in the image, one at ED and one at ES, not attached to tissue.
        flow_sigma = (8.0 / p, 8.0 / p, 0.0)
        self.flow_ed = _smooth_noise(rng, box_shape + (nz,), flow_sigma)
        self.flow_es = _smooth_noise(rng, box_shape + (nz,), flow_sigma)
        self.noise_rng = rng

        # Multiplicative bias field (coil sensitivity): smooth, a low-order polynomial in x, y, z; at ES it
        # shifts slightly (the heart and coil sit at another breathing position).
        u = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[:, None, None]
        v = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[None, :, None]
        w = np.linspace(-1.0, 1.0, nz, dtype=np.float32)[None, None, :]
        self.bias_terms = [u, v, u * v, u * u, v * v, 0.5 * w]

    def render(self, c, with_labels):
        """Image [X, Y, Z] float32 (noise-free intensities x bias) and labels [X, Y, Z] uint8 (or None)."""
        s = self.subject
        nz = s.shape[2]
        planes = material_long_axis(s, self.slab.ravel(), c)  # (Z * SUB_SLICES,) material positions
        central = planes.reshape(nz, SUB_SLICES)[:, SUB_SLICES // 2]
        image = self._body(c, s.cross_sections(central))

        sections = s.cross_sections(planes)
        i, j, m = self._heart_samples(c, sections)
        heart, texture, label_distances = self._heart(c, sections, (i, j, m), with_labels)
        composite = np.repeat(image[self.box], SUB_SLICES, axis=2)
        composite[i, j, m] = heart.value + heart.texture_value * texture + (1 - heart.alpha) * composite[i, j, m]
        image[self.box] = composite.reshape(composite.shape[:2] + (nz, SUB_SLICES)).mean(axis=3)

        coefficients = s.bias_coefficients + c * s.bias_es_coefficients
        image *= np.exp(sum(np.float32(b) * term for b, term in zip(coefficients, self.bias_terms)))
        image *= np.float32(1.0 + c * s.intensity_drift)
        labels = None
        if with_labels:
            central = m % SUB_SLICES == SUB_SLICES // 2
            sd_rv, sd_epi, sd_endo, below = (distance[central] for distance in label_distances)
            ventricle = below > 0
            values = np.zeros(sd_rv.shape, np.uint8)
            values[(sd_rv < 0) & ventricle] = ACDC_LABELS["RV"]
            values[(sd_epi < 0) & ventricle] = ACDC_LABELS["Myo"]
            values[(sd_endo < 0) & ventricle] = ACDC_LABELS["LV"]
            box_labels = np.zeros(composite.shape[:2] + (nz,), np.uint8)
            box_labels[i[central], j[central], m[central] // SUB_SLICES] = values
            labels = np.zeros(s.shape, np.uint8)
            labels[self.box] = box_labels
        return image, labels

    def material_positions(self, px, py, sections, c):
        """Map samples of the frame at contraction ``c`` to their ED positions.

        Args:
            px, py: image positions (mm) relative to the LV axis of their plane.
            sections: :class:`CrossSections` broadcastable against ``px``: one per plane along the last axis
                (``px`` [..., M]), or one per sample (``px`` [N], see :meth:`CrossSections.select`).

        Returns:
            (xh, yh, cos_a, sin_a, cos2a, sin2a, radial_scale): ED position in the heart frame (mm), the polar
            angle of the sample around the LV (unchanged by the radial maps), and d rho_ED / d rho (how many
            mm of material one mm of the frame spans radially, for partial volume), float32, shaped like ``px``
            (``radial_scale`` is the scalar 1 at ED).
        """
        s = self.subject
        f32 = np.float32
        # 1. Global heart motion, inverted: translation, per-plane twist and an area-preserving elliptical
        #    stretch about the LV axis, faded out beyond ~50 mm so the chest wall barely moves.
        dx = px - f32(c * s.es_translation[0])
        dy = py - f32(c * s.es_translation[1])
        stretch = 1.0 + c * s.es_stretch
        cos_e, sin_e = np.cos(s.es_stretch_angle), np.sin(s.es_stretch_angle)
        inverse_stretch = (np.array([[cos_e, -sin_e], [sin_e, cos_e]]) @ np.diag([1 / stretch, stretch])
                           @ np.array([[cos_e, sin_e], [-sin_e, cos_e]])).astype(f32)
        # m = inverse_stretch @ rotation(-c * twist), written out so that the twist may vary per sample.
        turn = (-c * sections.twist).astype(f32)
        cos_t, sin_t = np.cos(turn), np.sin(turn)
        m00 = inverse_stretch[0, 0] * cos_t + inverse_stretch[0, 1] * sin_t
        m01 = inverse_stretch[0, 1] * cos_t - inverse_stretch[0, 0] * sin_t
        m10 = inverse_stretch[1, 0] * cos_t + inverse_stretch[1, 1] * sin_t
        m11 = inverse_stretch[1, 1] * cos_t - inverse_stretch[1, 0] * sin_t
        fade = np.exp(-np.square(np.maximum(np.sqrt(px * px + py * py) - 50.0, 0.0) / 40.0))
        gx = px + fade * (m00 * dx + m01 * dy - px)
        gy = py + fade * (m10 * dx + m11 * dy - py)
        # Heart frame: x points from the LV centre to the RV.
        cos_h, sin_h = f32(np.cos(s.heart_angle)), f32(np.sin(s.heart_angle))
        xh = cos_h * gx + sin_h * gy
        yh = -sin_h * gx + cos_h * gy
        rho2 = xh * xh + yh * yh + f32(1e-6)
        rho = np.sqrt(rho2)
        cos_a, sin_a = xh / rho, yh / rho
        cos2a, sin2a = cos_a * cos_a - sin_a * sin_a, 2 * cos_a * sin_a
        if c == 0.0:
            return xh, yh, cos_a, sin_a, cos2a, sin2a, f32(1.0)

        # 2. Incompressible LV contraction: the cavity (radius r) loses area fraction f(angle); outside it,
        #    rho_ED^2 = rho_ES^2 + f r^2 keeps every ring's area, so the myocardium thickens. The exchanged
        #    area fades out over a few cm beyond the epicardium. Inside the cavity the trabecular band along
        #    the wall (blood between trabeculae) closes from its ED width to es_band, the rest scales, so the
        #    papillary muscles end up against the wall.
        weight = f32(c) * sections.contraction
        endo_mean = sections.endo
        endo = endo_mean * self._endo_shape(cos2a, sin2a)
        epi = endo + self._wall(sections, cos_a)
        loss = weight * f32(s.area_loss) * self._contraction_pattern(cos_a, sin_a) * endo * endo
        es_cavity = np.maximum(endo * endo - loss, f32(1e-6))
        fade = np.exp(-np.square(np.maximum(rho - epi - 5.0, 0.0) / 25.0))
        band = sections.band
        es_band = band - weight * np.maximum(band - f32(s.es_band), 0.0)
        es_radius = np.sqrt(es_cavity)
        safe_endo = np.maximum(endo, f32(1e-3))
        band_ed = 1.0 - band / safe_endo  # inner edge of the band, relative to the ED cavity radius
        band_es = 1.0 - es_band / es_radius  # the same edge relative to the ES cavity radius
        v = rho / es_radius
        inner = v <= band_es
        slope = np.where(inner, band_ed / band_es, (1.0 - band_ed) / np.maximum(1.0 - band_es, f32(1e-6)))
        u = np.where(inner, v * slope, band_ed + (v - band_es) * slope)
        in_cavity = rho2 < es_cavity
        outside = np.sqrt(rho2 + loss * fade)
        rho_ed = np.where(in_cavity, endo * u, outside)
        # 3. RV free wall contraction: in the RV sector, material beyond the septum is pulled inwards; its
        #    ES radial thickness is 1/(1 + k) of ED near the septum, saturating at k * 15 mm farther out.
        beyond = np.maximum(rho_ed - epi, 0.0)
        pull_rate = weight * f32(s.rv_contraction) * self._rv_sector(cos_a)
        pull = pull_rate * 15.0 * (1.0 - np.exp(-beyond / 15.0))
        pull *= np.exp(-np.square(np.maximum(beyond - 35.0, 0.0) / 30.0))
        radial_scale = np.where(in_cavity, endo * slope / es_radius,
                                rho / outside * (1.0 + pull_rate * np.exp(-beyond / 15.0)))
        rho_ed = rho_ed + pull
        scale = rho_ed / rho
        return xh * scale, yh * scale, cos_a, sin_a, cos2a, sin2a, radial_scale

    def _endo_shape(self, cos2a, sin2a):
        s = self.subject
        e = np.float32(s.endo_ellipticity)
        return 1.0 + e * (np.float32(np.cos(2 * s.ellipticity_angle)) * cos2a
                          + np.float32(np.sin(2 * s.ellipticity_angle)) * sin2a)

    def _wall(self, sections, cos_a):
        # The septum faces the RV (cos_a > 0); HCM thickens it. Beyond the cavity tip the "wall" is the
        # whole apical cap.
        thickening = np.float32(self.subject.septal_thickening)
        wall = (sections.epi - sections.endo).astype(np.float32)
        return wall * (1.0 + thickening * np.maximum(cos_a, 0))

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

    def _image_frame(self, xh, yh, sections):
        """Heart-frame positions (mm, around each sample's LV axis) -> image-frame positions (mm)."""
        cos_h, sin_h = np.float32(np.cos(self.subject.heart_angle)), np.float32(np.sin(self.subject.heart_angle))
        return (cos_h * xh - sin_h * yh + sections.centre[:, 0], sin_h * xh + cos_h * yh + sections.centre[:, 1])

    def _body(self, c, sections):
        """Everything outside the heart, one plane per slice (its centre): image [X, Y, Z] float32 with texture."""
        s = self.subject
        p = s.pixel_mm
        f32 = np.float32
        jitter = s.tissue_jitter.astype(f32)
        px = self.x[:, None, None] - sections.centre[:, 0]
        py = self.y[None, :, None] - sections.centre[:, 1]
        image_x, image_y = self._image_frame(*self.material_positions(px, py, sections, c)[:2], sections)
        cos_b, sin_b = f32(np.cos(s.body_angle)), f32(np.sin(s.body_angle))
        bx, by = image_x - f32(s.body_centre[0]), image_y - f32(s.body_centre[1])
        lateral = cos_b * bx + sin_b * by
        anterior = -sin_b * bx + cos_b * by
        depth = np.linspace(0.0, 1.0, s.shape[2], dtype=f32) if s.shape[2] > 1 else np.zeros(1, f32)

        image = np.zeros(s.shape, f32)
        texture_weight = np.zeros(s.shape, f32)
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

        # Texture sampled at material positions, so it moves with the tissue (nearest neighbour is enough:
        # it is smoother than a pixel at both scales).
        nx, ny, nz = s.shape
        i = np.clip(np.rint(image_x / p), 0, nx - 1).astype(np.intp)
        j = np.clip(np.rint(image_y / p), 0, ny - 1).astype(np.intp)
        image *= 1.0 + texture_weight * self.body_texture[i, j, np.arange(nz)[None, None, :]]
        return image

    def _heart_samples(self, c, sections):
        """Samples of the box that can hold heart tissue: index arrays (i, j, m) of box pixel and plane.

        A plane's heart ends at its farthest structure (RV free wall or atria, plus fat); the frame's motion
        moves it by at most its translation and stretch, and contraction only pulls material inwards.
        """
        s = self.subject
        p = s.pixel_mm
        reach = sections.epi + 1.15 * sections.rv_width + _RV_WALL_MM + 6.0
        atrial = sections.s < self.highest_valve
        reach[atrial] = np.maximum(reach[atrial], self.atrial_reach + 6.0)
        reach = (1.0 + c * s.es_stretch) * reach + c * np.hypot(*s.es_translation) + 2 * p
        rows = (self.x[self.box[0]][:, None, None] - sections.centre[:, 0]) ** 2
        cols = (self.y[self.box[1]][None, :, None] - sections.centre[:, 1]) ** 2
        return np.nonzero(rows + cols < reach ** 2)

    def _heart(self, c, sections, samples, with_labels):
        """Heart, atria and epicardial fat at the samples ``(i, j, m)`` (box pixel, plane): a :class:`_Layer`,
        the tissue texture there and, with labels, the signed distances (mm) of the RV, epicardium,
        endocardium and valve plane (positive below it) at every sample."""
        s = self.subject
        p = s.pixel_mm
        f32 = np.float32
        jitter = s.tissue_jitter.astype(f32)
        i, j, m = samples
        sections = sections.select(m)
        px = self.x[self.box[0]][i] - sections.centre[:, 0]
        py = self.y[self.box[1]][j] - sections.centre[:, 1]
        xh, yh, cos_a, sin_a, cos2a, sin2a, radial_scale = self.material_positions(px, py, sections, c)
        rho = np.sqrt(xh * xh + yh * yh)
        absent = f32(1e3)
        # Partial volume over one pixel of the frame, i.e. over radial_scale pixels of material: where systole
        # squeezes the trabecular band into a fraction of a pixel, wall, band and muscles share that pixel.
        p = np.full(len(m), p, f32) * radial_scale

        endo_mean = sections.endo
        epi_mean = sections.epi
        endo = endo_mean * self._endo_shape(cos2a, sin2a)
        epi = endo + self._wall(sections, cos_a)
        sd_endo = rho - endo + np.where(endo_mean > 0, 0.0, absent).astype(f32)
        sd_epi = rho - epi + np.where(epi_mean > 0, 0.0, absent).astype(f32)
        # RV: an ellipse centred towards the RV, minus the LV; its ED free wall lies rv_width beyond the
        # epicardium and its tangential semi-axis grows with rv_width, so it is a crescent over ~140 degrees.
        rv_width = sections.rv_width
        rv_centre = f32(s.rv_offset) * epi_mean
        rv_radial = np.maximum(epi_mean + rv_width - rv_centre, f32(1e-3))
        rv_tangential = np.maximum(np.sqrt(np.maximum(epi_mean ** 2 - rv_centre ** 2, 0.0))
                                   + f32(s.rv_wrap) * rv_width, f32(1e-3))
        sd_rv_outer = _ellipse_distance(xh, yh, rv_centre, 0.0, rv_radial, rv_tangential)
        sd_rv_outer += np.where(rv_width > 0, 0.0, absent).astype(f32)
        sd_rv = np.maximum(sd_rv_outer, -sd_epi)  # inside the RV ellipse and outside the LV
        # The valve plane: ventricles below it (below > 0), atria above; each sample's share of both.
        below = sections.s - (f32(s.valve_tilt[0]) * xh + f32(s.valve_tilt[1]) * yh)
        ventricular = np.clip(0.5 + below / f32(s.slice_mm / SUB_SLICES), 0.0, 1.0)

        layer = _Layer(len(m))
        myocardium = 0.26 * jitter[5]
        blood = self._blood(c, i, j, m)
        # Epicardial fat: 1-6 mm, thickest on one side (the atrioventricular groove in real hearts).
        fat_width = 1.0 + 5.0 * _smoothstep(0.5 + 0.5 * (cos_a * f32(np.cos(s.fat_angle))
                                                         + sin_a * f32(np.sin(s.fat_angle))))
        outline = np.minimum(sd_epi, sd_rv_outer - _RV_WALL_MM)
        # Atria and aortic root: only samples that can lie above the valve plane.
        atrial = np.nonzero(sections.s < self.highest_valve)[0]
        atria = []
        for ax, ay, radius in s.atria:
            sd = np.sqrt((xh[atrial] - f32(ax)) ** 2 + (yh[atrial] - f32(ay)) ** 2) - f32(radius)
            atria.append(sd)
            outline[atrial] = np.minimum(outline[atrial], sd - _ATRIAL_WALL_MM)
        layer.paint(_coverage(outline - fat_width, p), 0.6 * jitter[4], 0.6)
        above = 1.0 - ventricular[atrial]
        for sd in atria:
            layer.paint(_coverage(sd - _ATRIAL_WALL_MM, p[atrial]) * above, myocardium, 0.6, atrial)
            layer.paint(_coverage(sd, p[atrial]) * above, blood[atrial], 0.25, atrial)

        layer.paint(_coverage(sd_rv_outer - _RV_WALL_MM, p) * ventricular, myocardium, 0.6)  # RV free wall
        layer.paint(_coverage(sd_rv, p) * ventricular, blood, 0.25)
        layer.paint(_coverage(sd_epi, p) * ventricular, myocardium, 0.6)
        layer.paint(_coverage(sd_endo, p) * ventricular, blood, 0.25)
        # Trabeculae: thin radial strands of muscle across the band along the free wall, a little twisted
        # along the long axis; papillary muscles: two columns standing in the blood pool, thicker at ES (they
        # shorten). Both lie inside the endocardium, so they are labelled LV, as in ACDC.
        inside = np.nonzero(sd_endo < p)[0]
        rho_in, endo_in, cos_in = rho[inside], endo[inside], cos_a[inside]
        n = s.trabecula_count
        strand = (np.arctan2(sin_a[inside], cos_in) * f32(n / (2 * np.pi)) + f32(s.trabecula_phase)
                  + sections.s[inside] * f32(0.03))
        nearest = np.rint(strand)
        reach = (s.trabecula_reach.astype(f32)[nearest.astype(np.intp) % n] * _smoothstep((0.3 - cos_in) / 0.4)
                 * sections.trabeculae[inside] * sections.band[inside])
        sd_trabecula = np.maximum(np.abs(strand - nearest) * f32(2 * np.pi / n) * rho_in - f32(s.trabecula_width),
                                  np.maximum(endo_in - reach - rho_in, sd_endo[inside]))
        sd_trabecula += np.where(reach > 0, 0.0, absent).astype(f32)
        layer.paint(_coverage(sd_trabecula, p[inside]) * ventricular[inside], myocardium, 0.6, inside)
        radius = sections.papillary[inside] * f32(1.0 + c * s.papillary_thickening)
        for angle in s.papillary_angles:
            # Each muscle stands just inside the trabecular band, wherever the (elliptical) wall is there.
            wall_there = endo_mean[inside] * f32(1.0 + s.endo_ellipticity * np.cos(2 * (angle - s.ellipticity_angle)))
            distance = np.maximum(wall_there - sections.band[inside] - f32(s.papillary_gap) - radius, radius)
            sd_papillary = np.sqrt((xh[inside] - distance * f32(np.cos(angle))) ** 2
                                   + (yh[inside] - distance * f32(np.sin(angle))) ** 2) - radius
            sd_papillary += np.where(radius > 0, 0.0, absent).astype(f32)
            coverage = _coverage(np.maximum(sd_papillary, sd_endo[inside]), p[inside]) * ventricular[inside]
            layer.paint(coverage, myocardium, 0.6, inside)

        label_distances = (sd_rv, sd_epi, sd_endo, below) if with_labels else None
        return layer, self._heart_texture(xh, yh, sections), label_distances

    def _blood(self, c, i, j, m):
        """Blood signal at the samples: a level that changes at ES times smooth inhomogeneity fixed in the
        image (flow), different at ED and ES."""
        s = self.subject
        level = 1.1 * float(s.tissue_jitter[6]) * (1.0 + c * s.blood_es_change)
        k = m // SUB_SLICES
        flow = (1.0 - c) * self.flow_ed[i, j, k] + c * self.flow_es[i, j, k]
        return np.float32(level) * (1.0 + np.float32(s.flow_amplitude) * flow)

    def _heart_texture(self, xh, yh, sections):
        """Heart texture at material positions (heart frame, mm) of samples whose cross-sections are given."""
        s = self.subject
        p = s.pixel_mm
        image_x, image_y = self._image_frame(xh, yh, sections)
        nx, ny, nl = self.heart_texture.shape
        i = np.clip(np.rint(image_x / p) - (self.box[0].start - self.texture_margin), 0, nx - 1).astype(np.intp)
        j = np.clip(np.rint(image_y / p) - (self.box[1].start - self.texture_margin), 0, ny - 1).astype(np.intp)
        k = np.clip(np.rint((sections.s - self.s_range[0]) / _TEXTURE_STEP_MM), 0, nl - 1).astype(np.intp)
        return self.heart_texture[i, j, k]

    def add_rician_noise(self, image):
        """Magnitude of the image plus complex Gaussian noise (sigma relative to unit intensity)."""
        sigma = np.float32(self.subject.noise_sigma)
        real = image + sigma * self.noise_rng.standard_normal(image.shape, dtype=np.float32)
        imaginary = sigma * self.noise_rng.standard_normal(image.shape, dtype=np.float32)
        return np.sqrt(real * real + imaginary * imaginary)
