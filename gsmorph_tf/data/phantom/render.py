"""Rendering a phantom subject: image and label frames at a contraction, noise.

Anatomy is analytic: every structure is a signed-distance shape in millimetres, evaluated at the *material*
(end-diastolic) position of each pixel; see :mod:`gsmorph_tf.data.phantom` for the motion model.
"""
import numpy as np
from scipy import ndimage

from gsmorph_tf.data.acdc import ACDC_LABELS
from gsmorph_tf.data.phantom.anatomy import smoothstep


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


def _fill(image, signed_distance, value, pixel_mm):
    """Paint ``value`` where ``signed_distance`` (mm, negative inside) < 0, with a one-pixel partial-volume edge."""
    coverage = np.clip(0.5 - signed_distance / pixel_mm, 0.0, 1.0)
    image += coverage * (value - image)


class Renderer:
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
            return 1.0 - s.hypokinesis * smoothstep((towards - 0.5) / 0.3)

        circle = np.linspace(0.0, 2 * np.pi, 720, endpoint=False)
        mean = pattern(np.cos(circle), np.sin(circle)).mean()
        return (pattern(cos_a, sin_a) / mean).astype(np.float32)

    @staticmethod
    def _rv_sector(cos_a):
        # 1 facing the RV, fading to 0 beyond ~100 degrees either side (past the RV insertion points).
        return smoothstep((cos_a + 0.35) / 0.6)

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
        fat_width = 1.0 + 5.0 * smoothstep(0.5 + 0.5 * (cos_a * np.float32(np.cos(s.fat_angle))
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
