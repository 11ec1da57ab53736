"""The slide painter: builds one slide's class map and haematoxylin / eosin
concentration maps (tissue, tumour lesions, nuclei, fat vacuoles, collagen
fibres) and composes them into RGB. One class: its methods share the layout
fields and the random generator, in painting order."""

from __future__ import annotations

import numpy as np

from sae1n.datasets.asap_writer import AnnotationPolygon
from sae1n.demo.paint_tools import (
    CLASS_EOSIN,
    CLASS_HAEMATOXYLIN,
    CLASS_NAMES,
    E_STEPS_PER_UNIT,
    E_VECTOR,
    FAT,
    FIBRE_EOSIN,
    GERMINAL,
    H_STEPS_PER_UNIT,
    H_VECTOR,
    LYMPH,
    STROMA,
    TUMOR,
    class_lut,
    fill_polygons,
    jittered_grid,
    radial_polygons,
    resize_image,
    smooth_noise,
    stain_lut,
)


class SlidePainter:
    """Builds the class map and the H / E concentration maps of one slide.

    Smooth layout fields live at 1/8 resolution, fat cells at 1/4 and fibres at
    1/2; they reach full resolution as uint8 images (cv2's uint8 resize is far
    faster than float), so a 4096x4096 slide paints in about a second.
    """

    LOW = 8  # resolution factor of the smooth layout fields

    def __init__(self, width: int, height: int, rng: np.random.Generator):
        self.w, self.h, self.rng = width, height, rng
        self.lw, self.lh = -(-width // self.LOW), -(-height // self.LOW)
        self.labels = np.zeros((height, width), np.uint8)
        self.tissue_alpha = np.zeros((height, width), np.uint8)  # 0..255 soft tissue mask
        self.tissue_low = np.zeros((self.lh, self.lw), bool)
        self.tumor_styles: list[tuple[float, ...]] = []
        self.angle_low = (
            rng.uniform(0, np.pi) + 0.8 * smooth_noise(rng, (self.lh, self.lw), 24.0)
        ).astype(np.float32)

    def _up_mask(self, field_low: np.ndarray, value: int = 255, gain: float = 96.0) -> np.ndarray:
        """Full-resolution uint8 mask (``value`` where ``field > 0``, else 0) with a
        smooth outline: the field is offset into uint8 around 128, upsampled
        linearly, then thresholded."""
        import cv2

        f8 = np.clip(field_low * gain + 128.0, 0, 255).astype(np.uint8)
        return cv2.threshold(resize_image(f8, self.w, self.h), 128, value, cv2.THRESH_BINARY)[1]

    # ------------------------------------------------------------- layout
    def paint_tissue(self) -> None:
        """Irregular tissue pieces (about 30-55% of the slide) split into stroma,
        fat and lymphocyte-dense areas."""
        import cv2

        rng, lw, lh = self.rng, self.lw, self.lh
        yy, xx = np.mgrid[0:lh, 0:lw].astype(np.float32)
        field_ = np.full((lh, lw), -1.0, np.float32)
        n_pieces = int(rng.choice([1, 2, 2, 3, 3, 4]))
        base = 0.42 * min(lw, lh) / np.sqrt(n_pieces)
        for _ in range(n_pieces):
            cx, cy = rng.uniform(0.25, 0.75) * lw, rng.uniform(0.25, 0.75) * lh
            ang = rng.uniform(0, np.pi)
            a = base * rng.uniform(0.8, 1.35)
            b = a * rng.uniform(0.5, 1.0)
            dx, dy = xx - cx, yy - cy
            u = (dx * np.cos(ang) + dy * np.sin(ang)) / a
            v = (-dx * np.sin(ang) + dy * np.cos(ang)) / b
            theta = np.arctan2(v, u)
            wobble = np.zeros_like(theta)
            for k in range(2, 7):
                wobble += rng.normal(0, 0.12 / np.sqrt(k)) * np.cos(
                    k * theta + rng.uniform(0, 2 * np.pi)
                )
            field_ = np.maximum(field_, 1.0 - np.sqrt(u * u + v * v) / (1.0 + wobble))
        field_ += 0.10 * smooth_noise(rng, (lh, lw), 6.0) + 0.04 * smooth_noise(
            rng, (lh, lw), 2.0
        )
        # keep tissue off the slide edges
        margin = np.minimum(np.minimum(xx, lw - 1 - xx), np.minimum(yy, lh - 1 - yy))
        field_ -= np.clip(1.0 - margin / (0.06 * min(lw, lh)), 0, 1) * 2.0
        field_ -= float(np.quantile(field_, 1.0 - rng.uniform(0.36, 0.58)))
        self.tissue_low = field_ > 0
        tissue = self._up_mask(field_, gain=400.0)
        self.tissue_alpha = cv2.GaussianBlur(tissue, (0, 0), 0.8)

        # fat and lymphocyte blobs inside the tissue, the rest is stroma
        fat_f = smooth_noise(rng, (lh, lw), 14.0)
        lymph_f = smooth_noise(rng, (lh, lw), 10.0)
        if self.tissue_low.any():
            fat_f -= float(np.quantile(fat_f[self.tissue_low], 1 - rng.uniform(0.05, 0.16)))
            lymph_f -= float(np.quantile(lymph_f[self.tissue_low], 1 - rng.uniform(0.10, 0.28)))
        labels = cv2.max(self._up_mask(lymph_f, LYMPH), self._up_mask(fat_f, FAT))
        lymph_low = self.tissue_low & (lymph_f > 0)
        if lymph_low.any() and rng.random() < 0.7:
            # germinal centres: paler, larger nuclei in the cores of lymphoid areas,
            # a normal-tissue look-alike that keeps the tumour task from being trivial
            gc_f = lymph_f - float(np.quantile(lymph_f[lymph_low], 1 - rng.uniform(0.15, 0.4)))
            labels = cv2.max(labels, self._up_mask(gc_f, GERMINAL))
        labels = cv2.max(labels, cv2.threshold(tissue, 128, STROMA, cv2.THRESH_BINARY)[1])
        self.labels = cv2.bitwise_and(labels, tissue)

    def paint_tumor_regions(self) -> list[AnnotationPolygon]:
        """One to three tumour regions inside the tissue: the first the largest,
        the others small; a quarter of slides carry only small lesions. Returns
        the polygons (plus, sometimes, an exclusion hole in the largest)."""
        import cv2

        rng = self.rng
        tissue_px = float(self.tissue_low.sum()) * self.LOW**2
        if rng.random() < 0.25:  # micro-metastasis-like lesions only
            total = rng.uniform(0.02, 0.07)
            n = int(rng.choice([1, 2]))
        else:
            total = rng.uniform(0.12, 0.38)
            n = int(rng.choice([1, 1, 2, 2, 3]))
        shares = np.ones(1)
        if n > 1:
            shares = np.sort(rng.dirichlet(np.full(n, 1.5)))[::-1]
            shares[1:] = np.minimum(shares[1:], 0.25)  # extra lesions clearly smaller
            shares /= shares.sum()
        free = self.tissue_low.astype(np.uint8)  # low-res tissue not yet taken by a lesion
        lesions: list[tuple[np.ndarray, np.ndarray, float]] = []  # (centre, outline, r)
        holes: list[np.ndarray] = []
        mean_radial = 0.81  # mean of the radial profile of _lesion_outline
        for share in shares:
            dist = cv2.distanceTransform(free, cv2.DIST_L2, 5)
            r = np.sqrt(total * share * tissue_px / np.pi) / mean_radial
            r = float(np.clip(r, 60.0, 0.45 * min(self.w, self.h)))
            centre = self._free_spot(dist, r)
            if centre is None:
                continue
            room = float(dist[int(centre[1] / self.LOW), int(centre[0] / self.LOW)]) * self.LOW
            r = min(r, max(60.0, room))
            lesions.append((centre, self._lesion_outline(centre, r), r))
            # lesions never touch: the next one must fit beside this one and its rim
            low_c = (int(centre[0] / self.LOW), int(centre[1] / self.LOW))
            cv2.circle(free, low_c, int((r + 40) / self.LOW) + 1, 0, -1)
            if len(lesions) == 1 and r > 320 and rng.random() < 0.4:
                hole_c = centre + rng.uniform(-0.2, 0.2, 2) * r
                hole_r = np.array([r * rng.uniform(0.15, 0.25)])
                holes.append(
                    radial_polygons(rng, hole_c[None], hole_r, n_vertices=40, irregularity=0.15)[0]
                )
        polygons: list[AnnotationPolygon] = []
        # tissue always covers each lesion plus a thin rim of stroma; all rims go
        # first so no rim can paint over another lesion
        for centre, verts, r in lesions:
            rim = centre + (verts - centre) * (1.0 + 16.0 / r)
            fill_polygons(self.tissue_alpha, rim[None], 255, antialias=False)
            fill_polygons(self.labels, rim[None], STROMA, antialias=False)
        for i, (_, verts, _) in enumerate(lesions):
            polygons.append(
                AnnotationPolygon(verts, "_0" if i == 0 or rng.random() < 0.5 else "_1")
            )
            fill_polygons(self.labels, verts[None], TUMOR + i, antialias=False)
            # each lesion has its own grade: nuclear size, density, darkness, lymphocytes
            self.tumor_styles.append(
                (
                    rng.uniform(5.5, 8.5),  # mean nuclear radius (px)
                    rng.uniform(0.65, 0.95),  # share of grid spots holding a cell
                    rng.uniform(1.15, 1.6),  # rim haematoxylin
                    rng.uniform(0.5, 0.7),  # core / rim haematoxylin
                    rng.uniform(0.03, 0.15),  # share of infiltrating lymphocytes
                )
            )
        for hole in holes:
            polygons.insert(1, AnnotationPolygon(hole, "_2"))
            fill_polygons(self.labels, hole[None], STROMA, antialias=False)
        return polygons

    def _free_spot(self, dist: np.ndarray, r: float) -> np.ndarray | None:
        """A level-0 centre whose disc of radius ~r lies inside the tissue (the
        deepest tissue point when no disc that large fits; None without tissue)."""
        need = r / self.LOW
        while need > 2:
            ys, xs = np.nonzero(dist >= need)
            if len(xs):
                j = int(self.rng.integers(len(xs)))
                jitter = self.rng.uniform(0, self.LOW, 2)
                return np.array([xs[j] * self.LOW + jitter[0], ys[j] * self.LOW + jitter[1]])
            need *= 0.8
        if dist.max() <= 0:
            return None
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        return np.array([(x + 0.5) * self.LOW, (y + 0.5) * self.LOW])

    def _lesion_outline(self, centre: np.ndarray, r: float) -> np.ndarray:
        """Irregular lesion outline (V, 2), radius between 0.62 r and r."""
        rng = self.rng
        n_vertices = int(np.clip(2 * np.pi * r / 24, 24, 160))
        theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
        wobble = np.zeros(n_vertices)
        for k in range(2, 9):
            wobble += rng.normal(0, 1.0 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        wobble += rng.normal(0, 0.04, n_vertices)  # ragged edge
        wobble = (wobble - wobble.min()) / (np.ptp(wobble) + 1e-9)
        radius = r * (0.62 + 0.38 * wobble)
        return np.stack([centre[0] + radius * np.cos(theta), centre[1] + radius * np.sin(theta)], 1)

    # ------------------------------------------------------------- cells
    def _sample(self, cls: int, spacing: float, jitter: float, keep: float) -> np.ndarray:
        """Cell centres of class ``cls``: a jittered grid thinned to ``keep``."""
        pts, labels = self._grid_labels(spacing, jitter)
        return pts[(labels == cls) & (self.rng.random(len(pts)) < keep)]

    def _grid_labels(self, spacing: float, jitter: float) -> tuple[np.ndarray, np.ndarray]:
        pts = jittered_grid(self.rng, self.w, self.h, spacing, jitter)
        xi = np.clip(pts[:, 0].astype(np.int64), 0, self.w - 1)
        yi = np.clip(pts[:, 1].astype(np.int64), 0, self.h - 1)
        return pts, self.labels[yi, xi]

    def _nuclei(self) -> np.ndarray:
        """uint8 haematoxylin map of all nuclei (H * H_STEPS_PER_UNIT)."""
        rng = self.rng
        nuc = np.zeros((self.h, self.w), np.uint8)

        def draw(polys, h_values):
            q = np.clip(np.round(h_values * H_STEPS_PER_UNIT / 4.0) * 4.0, 0, 255).astype(np.uint8)
            for v in np.unique(q):  # one fill per grey level
                fill_polygons(nuc, polys[q == v], int(v))

        # stroma: sparse elongated fibroblast nuclei along the fibres
        pts = self._sample(STROMA, 30.0, 0.45, 0.45)
        n = len(pts)
        angle = self._angle_at(pts) + rng.normal(0, 0.25, n)
        polys = radial_polygons(
            rng,
            pts,
            rng.uniform(3.0, 4.2, n),
            n_vertices=12,
            irregularity=0.08,
            aspect=rng.uniform(5.0, 11.0, n),
            angle=angle,
        )
        draw(polys, rng.uniform(1.05, 1.45, n))

        # lymphocytes: small, round, very dark, densely packed
        pts = self._sample(LYMPH, 10.5, 0.3, 0.88)
        n = len(pts)
        polys = radial_polygons(
            rng,
            pts,
            rng.uniform(3.4, 4.4, n),
            n_vertices=10,
            irregularity=0.05,
            aspect=rng.uniform(1.0, 1.25, n),
        )
        draw(polys, rng.uniform(1.9, 2.4, n))

        # a few flattened nuclei on fat membranes
        pts = self._sample(FAT, 60.0, 0.5, 0.3)
        n = len(pts)
        polys = radial_polygons(
            rng, pts, rng.uniform(2.5, 3.2, n), n_vertices=10, aspect=rng.uniform(4, 7, n)
        )
        draw(polys, rng.uniform(1.2, 1.6, n))

        # germinal centres: medium, paler, irregular nuclei mixed with lymphocytes
        pts = self._sample(GERMINAL, 13.0, 0.35, 0.9)
        n = len(pts)
        small = rng.random(n) < 0.3
        radius = np.where(small, rng.uniform(3.4, 4.2, n), rng.uniform(5.0, 6.8, n))
        polys = radial_polygons(
            rng, pts, radius, n_vertices=14, irregularity=0.12, aspect=rng.uniform(1.0, 1.5, n)
        )
        draw(polys, np.where(small, rng.uniform(1.8, 2.3, n), rng.uniform(1.0, 1.4, n)))

        # tumour: large pleomorphic vesicular nuclei (dark rim, pale core, nucleolus),
        # styled per lesion, with some infiltrating lymphocytes
        pts, labels = self._grid_labels(17.0, 0.42)
        inside = labels >= TUMOR
        pts, region = pts[inside], labels[inside].astype(np.int64) - TUMOR
        if len(self.tumor_styles):
            style = np.asarray(self.tumor_styles)[np.minimum(region, len(self.tumor_styles) - 1)]
        else:
            style = np.zeros((0, 5))
        kept = rng.random(len(pts)) < style[:, 1]
        pts, style = pts[kept], style[kept]
        til = rng.random(len(pts)) < style[:, 4]
        n = int(til.sum())
        polys = radial_polygons(rng, pts[til], rng.uniform(3.4, 4.4, n), n_vertices=10)
        draw(polys, rng.uniform(1.9, 2.4, n))
        pts, style = pts[~til], style[~til]
        n = len(pts)
        radius = np.clip(rng.lognormal(np.log(style[:, 0]), 0.2), 4.5, 13.0)
        shape = {
            "aspect": rng.uniform(1.0, 1.9, n),
            "angle": rng.uniform(0, np.pi, n),
            "irregularity": rng.uniform(0.08, 0.22, n),
            "n_vertices": 18,
        }
        rim = style[:, 2] * rng.uniform(0.9, 1.1, n)
        seed = int(rng.integers(2**63))  # the core reuses the outline's harmonics
        outer = radial_polygons(np.random.default_rng(seed), pts, radius, **shape)
        inner = radial_polygons(np.random.default_rng(seed), pts, radius * 0.7, **shape)
        draw(outer, rim)
        draw(inner, rim * style[:, 3])
        has = rng.random(n) < 0.7
        k = int(has.sum())
        nucleoli = radial_polygons(
            rng, pts[has] + rng.normal(0, 1.2, (k, 2)), rng.uniform(1.2, 2.0, k), n_vertices=8
        )
        draw(nucleoli, rng.uniform(1.8, 2.3, k))
        return nuc

    def _vacuoles(self) -> np.ndarray:
        """uint8 mask (0..255) of fat-cell vacuoles: Voronoi cells at 1/4
        resolution separated by thin membranes."""
        import cv2

        rng, q = self.rng, 4
        qw, qh = -(-self.w // q), -(-self.h // q)
        fat_q = self.labels[::q, ::q] == FAT  # after tumour painting: no fat inside lesions
        if not fat_q.any():
            return np.zeros((self.h, self.w), np.uint8)
        spacing = rng.uniform(15.0, 21.0)  # 60-84 px at level 0
        seeds = jittered_grid(rng, qw, qh, spacing, 0.4).astype(np.int64)
        seeds = seeds[
            (seeds[:, 0] >= 0) & (seeds[:, 0] < qw) & (seeds[:, 1] >= 0) & (seeds[:, 1] < qh)
        ]
        img = np.ones((qh, qw), np.uint8)
        img[seeds[:, 1], seeds[:, 0]] = 0
        _, cells = cv2.distanceTransformWithLabels(
            img, cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_CCOMP
        )
        cells = cells.astype(np.float32)
        membrane = cv2.dilate(cells, None) != cv2.erode(cells, None)
        fat_inner = cv2.erode(fat_q.view(np.uint8), None).view(bool)
        vac_q = (fat_inner & ~membrane).view(np.uint8) * np.uint8(255)
        vac_q = cv2.GaussianBlur(vac_q, (0, 0), 0.6)  # rounder corners, smoother membranes
        return resize_image(vac_q, self.w, self.h)

    def _angle_at(self, pts: np.ndarray) -> np.ndarray:
        xi = np.clip((pts[:, 0] / self.LOW).astype(np.int64), 0, self.lw - 1)
        yi = np.clip((pts[:, 1] / self.LOW).astype(np.int64), 0, self.lh - 1)
        return self.angle_low[yi, xi].astype(float)

    def _fibres(self) -> np.ndarray:
        """uint8 (0..255) wavy collagen bundles: noise smeared along the local
        fibre direction at 1/4 resolution, blended over four orientations."""
        import cv2

        rng, q = self.rng, 4
        qw, qh = -(-self.w // q), -(-self.h // q)
        noise = rng.standard_normal((qh, qw), dtype=np.float32)
        out = np.zeros((qh, qw), np.float32)
        length = 11
        c = length // 2
        steps = np.linspace(-c, c, 4 * length)
        weights = [np.cos(self.angle_low - t) ** 8 for t in np.arange(4) * (np.pi / 4)]
        total = sum(weights) + 1e-6
        for t, wgt in zip(np.arange(4) * (np.pi / 4), weights, strict=True):
            kernel = np.zeros((length, length), np.float32)
            kernel[
                np.round(c + steps * np.sin(t)).astype(int),
                np.round(c + steps * np.cos(t)).astype(int),
            ] = 1.0
            kernel /= kernel.sum()
            smeared = cv2.filter2D(noise, -1, kernel, borderType=cv2.BORDER_REFLECT)
            smeared *= resize_image((wgt / total).astype(np.float32), qw, qh)
            out += smeared
        out /= out.std() + 1e-6
        pattern = np.clip(128.0 + 80.0 * out, 0, 255).astype(np.uint8)
        return resize_image(pattern, self.w, self.h)

    # ------------------------------------------------------------- compose
    def compose(self) -> np.ndarray:
        """Turn the class map into H and E maps (8-bit fixed point), then RGB."""
        import cv2

        rng = self.rng
        labels = self.labels
        # multiplicative grain in 1/128 units: 0.75..1.25
        grain = rng.integers(96, 161, size=(self.h // 2 + 1, self.w // 2 + 1), dtype=np.uint8)
        grain = resize_image(grain, self.w, self.h)
        alpha = cv2.multiply(self.tissue_alpha, 255 - self._vacuoles(), scale=1 / 255)

        # eosin: matrix per class plus collagen bundles in stroma
        e = cv2.LUT(labels, class_lut(CLASS_EOSIN, E_STEPS_PER_UNIT))
        fib = cv2.bitwise_and(self._fibres(), cv2.compare(labels, STROMA, cv2.CMP_EQ))
        e = cv2.add(e, cv2.multiply(fib, fib, scale=E_STEPS_PER_UNIT * FIBRE_EOSIN / 255**2))
        del fib
        e = cv2.multiply(e, cv2.flip(grain, -1), scale=1 / 128)
        e = cv2.multiply(e, alpha, scale=rng.uniform(0.75, 1.25) / 255)

        # haematoxylin: cytoplasm per class plus grainy nuclei (chromatin texture)
        h_class = cv2.LUT(labels, class_lut(CLASS_HAEMATOXYLIN, H_STEPS_PER_UNIT))
        h = cv2.add(cv2.multiply(self._nuclei(), grain, scale=1 / 128), h_class)
        h = cv2.multiply(h, alpha, scale=rng.uniform(0.82, 1.18) / 255)

        index = h.astype(np.uint16)
        index <<= 8
        index |= e
        rgba = stain_lut(H_VECTOR, E_VECTOR)[index].view(np.uint8).reshape(self.h, self.w, 4)
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB)

    def class_fractions(self) -> dict[str, float]:
        """Area fraction of each tissue class within the tissue."""
        counts = np.bincount(self.labels[::2, ::2].ravel(), minlength=256).astype(float)
        counts[TUMOR] = counts[TUMOR:].sum()
        tissue = counts[1 : TUMOR + 1].sum()
        if tissue == 0:
            return {}
        return {name: float(counts[i] / tissue) for i, name in enumerate(CLASS_NAMES) if i}

    @property
    def tissue_fraction(self) -> float:
        """Tissue area as a fraction of the slide."""
        return float(np.count_nonzero(self.labels[::2, ::2]) / self.labels[::2, ::2].size)


