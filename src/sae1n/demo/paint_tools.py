"""The painter's colour model and drawing primitives: tissue class ids, H&E
stain vectors and the optical-density -> RGB lookup tables (Beer-Lambert),
smooth noise fields, resizing, random outlines, polygon filling, jittered grids."""

from __future__ import annotations

import numpy as np

# Tissue classes of the painted label map.
# Ids rise with painting precedence (fat over lymph over stroma), so a max composes them.
# Tumour region k (0-based) is painted as TUMOR + k so each lesion keeps its own style.
BACKGROUND, STROMA, LYMPH, GERMINAL, FAT, TUMOR = 0, 1, 2, 3, 4, 5
CLASS_NAMES = ("background", "stroma", "lymph", "germinal_centre", "fat", "tumor")

# Normalised stain optical-density vectors (R, G, B), typical H&E values.
H_VECTOR = np.array([0.5626, 0.7201, 0.4062])
E_VECTOR = np.array([0.2159, 0.8012, 0.5581])
GLASS_OD = np.array([0.028, 0.032, 0.022])  # background: slightly off-white glass
# Concentrations are quantised to 8 bits to colour through a 2-D lookup table.
H_STEPS_PER_UNIT = 80.0
E_STEPS_PER_UNIT = 128.0

# Per-class cytoplasm / matrix stain (used where no nucleus or vacuole is drawn).
CLASS_HAEMATOXYLIN = np.array([0.0, 0.05, 0.16, 0.14, 0.04, 0.16], np.float32)
CLASS_EOSIN = np.array([0.0, 0.18, 0.30, 0.30, 0.55, 0.42], np.float32)
FIBRE_EOSIN = 0.9  # extra eosin at the brightest collagen fibres (squared profile)


def od_to_rgb(od: np.ndarray) -> np.ndarray:
    return np.clip(np.round(255.0 * np.exp(-(np.asarray(od) + GLASS_OD))), 0, 255).astype(np.uint8)


def stain_lut(h_vector: np.ndarray, e_vector: np.ndarray) -> np.ndarray:
    """(65536,) uint32 packed RGBA for every quantised (H, E) pair."""
    h = np.arange(256) / H_STEPS_PER_UNIT
    e = np.arange(256) / E_STEPS_PER_UNIT
    od = h[:, None, None] * h_vector + e[None, :, None] * e_vector
    rgb = od_to_rgb(od).reshape(-1, 3).astype(np.uint32)
    return rgb[:, 0] | (rgb[:, 1] << 8) | (rgb[:, 2] << 16) | np.uint32(255 << 24)


def class_lut(per_class: np.ndarray, steps_per_unit: float) -> np.ndarray:
    """256-entry uint8 lookup table: class id -> quantised stain concentration."""
    values = np.clip(np.round(per_class * steps_per_unit), 0, 255)
    lut = np.full(256, values[-1], np.uint8)  # ids past the table: tumour regions
    lut[: len(values)] = values
    return lut


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise, rescaled to zero mean and unit variance."""
    import cv2

    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    return (noise - noise.mean()) / (noise.std() + 1e-8)


def resize_image(img: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def radial_polygons(
    rng: np.random.Generator,
    centres: np.ndarray,
    radius: np.ndarray,
    *,
    n_vertices: int,
    irregularity: np.ndarray | float = 0.1,
    aspect: np.ndarray | float = 1.0,
    angle: np.ndarray | None = None,
    harmonics: int = 4,
) -> np.ndarray:
    """(N, V, 2) closed star-shaped outlines: radius modulated by random low
    harmonics (irregularity = their amplitude), stretched by ``aspect`` along
    ``angle``. All N shapes in one vectorised step."""
    n = len(centres)
    theta = np.linspace(0.0, 2 * np.pi, n_vertices, endpoint=False)
    k = np.arange(2, 2 + harmonics)
    amp = rng.normal(size=(n, harmonics)) / np.sqrt(k) * np.asarray(irregularity).reshape(-1, 1)
    phase = rng.uniform(0, 2 * np.pi, size=(n, harmonics))
    wobble = np.einsum("nk,nkv->nv", amp, np.cos(k[None, :, None] * theta + phase[..., None]))
    r = np.asarray(radius, float).reshape(-1, 1) * np.clip(1.0 + wobble, 0.45, 1.6)
    stretch = np.sqrt(np.asarray(aspect, float)).reshape(-1, 1)
    x = r * np.cos(theta) * stretch
    y = r * np.sin(theta) / stretch
    if angle is None:
        angle = rng.uniform(0, np.pi, size=n)
    ca, sa = np.cos(angle).reshape(-1, 1), np.sin(angle).reshape(-1, 1)
    pts = np.stack([x * ca - y * sa, x * sa + y * ca], axis=-1)
    return pts + np.asarray(centres, float)[:, None, :]


def fill_polygons(img: np.ndarray, polygons: np.ndarray, value, antialias: bool = True) -> None:
    """Fill (N, V, 2) float polygons into ``img`` with sub-pixel precision."""
    import cv2

    if len(polygons) == 0:
        return
    pts = list(np.round(np.asarray(polygons) * 16).astype(np.int32))
    cv2.fillPoly(img, pts, value, cv2.LINE_AA if antialias else cv2.LINE_8, 4)


def jittered_grid(
    rng: np.random.Generator, width: int, height: int, spacing: float, jitter: float
) -> np.ndarray:
    """(N, 2) points on a grid of ``spacing`` px, each moved by up to ``jitter * spacing``."""
    xs = np.arange(spacing / 2, width, spacing)
    ys = np.arange(spacing / 2, height, spacing)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    grid += rng.uniform(-jitter, jitter, size=grid.shape) * spacing
    return grid

