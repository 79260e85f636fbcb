"""Deterministic, procedurally generated DEMO images (synthetic, NOT medical data).

The demo data set lets ``kedro run`` and the fast unit tests work on a fresh clone
without downloading anything. Every image is drawn from scratch with numpy and
OpenCV primitives: none of it is derived from, or traced over, real patient images.

Public API
----------
``synthetic_chest_xray(rng, size, label)``
    One posteroanterior chest radiograph (uint8, ``size x size``) and its lung mask
    (uint8, 0 or 255). ``label`` is one of :data:`CXR_CLASSES`:

    * ``normal``: clear lungs.
    * ``covid``: bilateral, peripheral, lower-zone patchy ground-glass opacities.
    * ``bacterial``: dense lobar consolidation, usually one lung, sharp border along
      a fissure, air bronchograms.
    * ``viral``: diffuse bilateral perihilar interstitial / reticular pattern.

    The mask is the visible lung field, as in the Shenzhen / Montgomery and
    COVID-19 Radiography Database masks: it excludes the heart and mediastinum and
    includes the parts of the lungs covered by opacities.

``synthetic_ct_slice(rng, size, label)``
    One axial chest CT slice in a lung window (uint8). ``label`` is ``covid``
    (peripheral, posterior, bilateral ground-glass / consolidation) or ``non_covid``
    (clear lungs or a minor finding: small nodule, scar, emphysema, basal atelectasis).

``generate_demo_dataset(...)``
    A whole data set as ``{relative path: PNG bytes}``, in the COVID-19 Radiography
    Database layout::

        README_SYNTHETIC.txt
        cxr/<class>/images/synthetic_cxr_p0007_1.png
        cxr/<class>/masks/synthetic_cxr_p0007_1.png     (same name as the image)
        ct/<class>/synthetic_ct_s0012_3.png

    with ``<class>`` in :data:`CXR_CLASSES` for ``cxr`` and :data:`CT_CLASSES` for ``ct``.

File naming rule (the data split derives group ids from it)
-----------------------------------------------------------
Every file name matches :data:`SYNTHETIC_NAME_PATTERN`::

    synthetic_<modality>_<group>_<index>.png

* ``<modality>`` is ``cxr`` or ``ct``.
* ``<group>`` is the synthetic patient: ``p`` + 4 (or more) digits for radiographs
  (``p0007``: patient 7) and ``s`` + 4 (or more) digits for CT scans (``s0012``:
  scan 12). Numbers are unique within a modality across all classes, and all
  images of one group share a class.
* ``<index>`` counts the images of that group from 1: the n-th radiograph of the
  patient, or the n-th slice of the scan.

Images of one group show the same synthetic anatomy (and the same lesions for a
radiograph) with a different position, exposure and noise, or another level of the
same scan, so a split must keep a group on one side. The group id is
``<modality>_<group>`` (e.g. ``cxr_p0007``), see :func:`synthetic_group_id`.

Determinism
-----------
Images depend only on the seed and the arguments. The code avoids every source of
run-to-run or machine-to-machine variation: it uses numpy ``Generator`` streams
derived from the seed, only elementwise IEEE arithmetic on float arrays (no
transcendental ufuncs, float reductions or BLAS, whose SIMD code paths round
differently on different CPUs), integer cumulative sums, scalar ``math`` functions,
and only the bit-exact OpenCV operations on uint8 images (drawing, ``GaussianBlur``,
``resize`` with ``INTER_LINEAR_EXACT``, connected components). Pixels are therefore
identical on every machine (a test re-runs the generator with numpy's and OpenCV's
SIMD paths switched off); the PNG bytes are identical for the same OpenCV build (the
PNG compressor ships inside the pinned wheel).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

__all__ = [
    "CT_CLASSES",
    "CXR_CLASSES",
    "SYNTHETIC_NAME_PATTERN",
    "generate_demo_dataset",
    "synthetic_chest_xray",
    "synthetic_ct_slice",
    "synthetic_group_id",
]

CXR_CLASSES: tuple[str, ...] = ("normal", "covid", "bacterial", "viral")
#: Radiograph lesions are drawn this many times denser than their "realistic" fill. At
#: 1.0 a small CNN at 64 px (40 images per class, 15 epochs) reached 0.50 balanced
#: accuracy of four classes on other synthetic patients (chance 0.25); at 2.5 (30 per
#: class, 20 epochs) 0.80. tests/demo/test_learnability.py keeps the classes learnable.
LESION_CONSPICUITY = 2.5
CT_CLASSES: tuple[str, ...] = ("covid", "non_covid")

#: ``synthetic_<modality>_<group>_<index>.png``; groups: ``modality``, ``group``, ``index``.
SYNTHETIC_NAME_PATTERN = re.compile(
    r"^synthetic_(?P<modality>cxr|ct)_(?P<group>[ps]\d{4,})_(?P<index>\d+)\.png$"
)

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
_F32 = np.float32


def synthetic_group_id(filename: str) -> str | None:
    """Group (synthetic patient or scan) id of a demo file name, e.g. ``cxr_p0007``.

    Accepts a bare name or a path; returns None for names that do not follow the
    synthetic naming rule (see the module docstring).
    """
    name = filename.replace("\\", "/").rsplit("/", 1)[-1]
    match = SYNTHETIC_NAME_PATTERN.match(name)
    if match is None:
        return None
    return f"{match['modality']}_{match['group']}"


# --------------------------------------------------------------------------------------
# Small deterministic building blocks
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Affine:
    """x' = a*x + b*y + tx, y' = c*x + d*y + ty on normalised [0, 1] coordinates."""

    a: float = 1.0
    b: float = 0.0
    c: float = 0.0
    d: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    @staticmethod
    def make(sx: float, sy: float, rot_deg: float, tx: float, ty: float) -> _Affine:
        """Scale and rotate about the image centre, then shift."""
        cos, sin = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
        a, b, c, d = cos * sx, -sin * sy, sin * sx, cos * sy
        return _Affine(a, b, c, d, 0.5 - a * 0.5 - b * 0.5 + tx, 0.5 - c * 0.5 - d * 0.5 + ty)

    def __call__(self, pts: np.ndarray) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64)
        x, y = pts[..., 0], pts[..., 1]
        return np.stack([self.a * x + self.b * y + self.tx, self.c * x + self.d * y + self.ty], -1)

    @property
    def scale(self) -> float:
        return math.sqrt(abs(self.a * self.d - self.b * self.c))

    @property
    def angle_deg(self) -> float:
        return math.degrees(math.atan2(self.c, self.a))


_IDENTITY = _Affine()


@lru_cache(maxsize=8)
def _unit_circle(n: int) -> np.ndarray:
    pts = [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]
    return np.array(pts, dtype=np.float64)


def _ellipse(cx: float, cy: float, ax: float, ay: float, angle_deg: float = 0.0, n: int = 40):
    """Polygon of an ellipse (normalised coordinates)."""
    u = _unit_circle(n)
    cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    x, y = u[:, 0] * ax, u[:, 1] * ay
    return np.stack([cx + x * cos - y * sin, cy + x * sin + y * cos], -1)


def _circles(centres: np.ndarray, radii: np.ndarray, n: int = 12) -> list[np.ndarray]:
    """Polygons of many circles at once."""
    u = _unit_circle(n)
    pts = centres[:, None, :] + radii[:, None, None] * u[None, :, :]
    return list(pts)


def _spline(points, samples: int = 8, closed: bool = True) -> np.ndarray:
    """Uniform Catmull-Rom spline through control points (closed or open)."""
    p = np.asarray(points, dtype=np.float64)
    if closed:
        p0, p1, p2, p3 = np.roll(p, 1, 0), p, np.roll(p, -1, 0), np.roll(p, -2, 0)
    else:
        ext = np.concatenate([p[:1], p, p[-1:]], 0)
        p0, p1, p2, p3 = ext[:-3], ext[1:-2], ext[2:-1], ext[3:]
    t = (np.arange(samples, dtype=np.float64) / samples)[None, :, None]
    t2 = t * t
    t3 = t2 * t
    p0, p1, p2, p3 = (q[:, None, :] for q in (p0, p1, p2, p3))
    out = 0.5 * (
        2.0 * p1
        + (p2 - p0) * t
        + (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3) * t2
        + (3.0 * p1 - p0 - 3.0 * p2 + p3) * t3
    )
    out = out.reshape(-1, 2)
    if not closed:
        out = np.concatenate([out, p[-1:]], 0)
    return out


class _Canvas:
    """A uint8 drawing surface addressed in normalised coordinates through an affine."""

    def __init__(self, size: int, tf: _Affine = _IDENTITY):
        self.size = size
        self.tf = tf
        self.img = np.zeros((size, size), np.uint8)

    def px(self, pts) -> np.ndarray:
        xy = self.tf(pts)
        return np.rint((xy * self.size - 0.5) * _ONE).astype(np.int32)

    def px_many(self, arrays) -> list[np.ndarray]:
        """``px`` of several point arrays with one transform."""
        if len(arrays) == 0:
            return []
        arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
        allp = self.px(np.concatenate(arrays, 0))
        return np.split(allp, np.cumsum([len(a) for a in arrays])[:-1])

    def poly(self, pts, value: float, aa: bool = True) -> _Canvas:
        cv2.fillPoly(
            self.img, [self.px(pts)], int(value), cv2.LINE_AA if aa else cv2.LINE_8, _SHIFT
        )
        return self

    def polys(self, pts_list, value: float, aa: bool = True) -> _Canvas:
        cv2.fillPoly(
            self.img,
            self.px_many(pts_list),
            int(value),
            cv2.LINE_AA if aa else cv2.LINE_8,
            _SHIFT,
        )
        return self

    def width_px(self, width: float) -> int:
        return max(1, int(round(width * self.size * self.tf.scale)))

    def line(self, pts, value: float, width: float, closed: bool = False) -> _Canvas:
        """Polyline; ``width`` is in normalised units (before the affine's scale)."""
        cv2.polylines(
            self.img, [self.px(pts)], closed, int(value), self.width_px(width), cv2.LINE_AA, _SHIFT
        )
        return self

    def lines(self, paths, value: float, width: float, closed: bool = False) -> _Canvas:
        """Several polylines of one value and width in a single draw call."""
        cv2.polylines(
            self.img,
            self.px_many(paths),
            closed,
            int(value),
            self.width_px(width),
            cv2.LINE_AA,
            _SHIFT,
        )
        return self

    def segments(self, p0, p1, values, widths) -> _Canvas:
        """Many straight segments; one draw call per (value, pixel width) pair."""
        if len(p0) == 0:
            return self
        pairs = np.stack([self.px(p0), self.px(p1)], 1)
        wpx = np.maximum(1, np.rint(np.asarray(widths) * (self.size * self.tf.scale)))
        keys = np.asarray(values, dtype=np.int64) * 1000 + wpx.astype(np.int64)
        for key in np.unique(keys).tolist():
            sel = pairs[keys == key]
            cv2.polylines(self.img, list(sel), False, key // 1000, key % 1000, cv2.LINE_AA, _SHIFT)
        return self


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a uint8 image (OpenCV's 8-bit path is bit-exact on every CPU)."""
    if sigma_px < 0.3:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma_px, borderType=cv2.BORDER_REPLICATE)


def _soft(size: int, sigma: float, paint, tf: _Affine = _IDENTITY) -> np.ndarray:
    """Paint shapes, blur by ``sigma`` (fraction of the image size), return float32 in [0, 1].

    Wide blurs are computed on a smaller canvas and enlarged with the bit-exact
    linear resize, which keeps them cheap.
    """
    sigma_px = sigma * size
    factor = 1
    while sigma_px / (factor * 2) >= 2.0 and size // (factor * 2) >= 16:
        factor *= 2
    small = size // factor
    canvas = _Canvas(small, tf)
    paint(canvas)
    img = _blur(canvas.img, sigma_px / factor)
    if factor > 1:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR_EXACT)
    return _unit(img)


def _unit(img_u8: np.ndarray) -> np.ndarray:
    return img_u8.astype(_F32) * _F32(1.0 / 255.0)


@lru_cache(maxsize=32)
def _bspline_weights(size: int, cells: int):
    t = (np.arange(size, dtype=np.float64) + 0.5) * (cells / size)
    k = np.floor(t).astype(np.intp)
    f = t - k
    f2 = f * f
    f3 = f2 * f
    g = 1.0 - f
    w = (
        g * g * g / 6.0,
        (3.0 * f3 - 6.0 * f2 + 4.0) / 6.0,
        (-3.0 * f3 + 3.0 * f2 + 3.0 * f + 1.0) / 6.0,
        f3 / 6.0,
    )
    return k, tuple(wi.astype(_F32) for wi in w)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise (cubic B-spline through a ``cells``-wide random grid), std ~1."""
    cells = max(2, int(cells))
    grid = rng.standard_normal((cells + 3, cells + 3), dtype=_F32) * _F32(1.9)
    k, w = _bspline_weights(size, cells)
    rows = w[0][None, :] * grid[:, k]
    for j in range(1, 4):
        rows += w[j][None, :] * grid[:, k + j]
    out = w[0][:, None] * np.take(rows, k, axis=0)
    for j in range(1, 4):
        out += w[j][:, None] * np.take(rows, k + j, axis=0)
    return out


@lru_cache(maxsize=8)
def _coords(size: int):
    c = (np.arange(size, dtype=_F32) + _F32(0.5)) / _F32(size)
    return c[None, :], c[:, None]


def _sample_points(rng: np.random.Generator, weights_u8: np.ndarray, n: int) -> np.ndarray:
    """Draw ``n`` points (normalised x, y) with probability proportional to integer weights."""
    w = weights_u8.astype(np.int64).ravel()
    cum = np.cumsum(w)
    total = int(cum[-1])
    side = weights_u8.shape[0]
    if total == 0:
        return np.full((n, 2), 0.5)
    idx = np.searchsorted(cum, rng.integers(0, total, size=n), side="right")
    y, x = np.divmod(idx, side)
    jitter = rng.random((n, 2))
    return (np.stack([x, y], -1) + jitter) / side


def _tree(rng, root, angle, length, width, depth, spread=(14.0, 34.0), shrink=0.72):
    """Random branching tree of straight segments (for vessels / bronchi).

    Returns start points, end points and level (0 = trunk) of every segment.
    """
    n_branches = 2**depth - 1
    bends = rng.normal(0.0, 9.0, n_branches).tolist()
    turns = rng.uniform(spread[0], spread[1], (n_branches, 2)).tolist()
    grow = rng.uniform(0.8, 1.15, (n_branches, 2)).tolist()
    starts, ends, levels = [], [], []
    stack = [(root[0], root[1], angle, length, 0)]
    i = 0
    while stack:
        x, y, ang, ln, lev = stack.pop()
        # two slightly bent pieces per branch look less like a star
        bend = ang + bends[i]
        mx = x + 0.5 * ln * math.cos(math.radians(ang))
        my = y + 0.5 * ln * math.sin(math.radians(ang))
        ex = mx + 0.5 * ln * math.cos(math.radians(bend))
        ey = my + 0.5 * ln * math.sin(math.radians(bend))
        starts += [(x, y), (mx, my)]
        ends += [(mx, my), (ex, ey)]
        levels += [lev, lev]
        if lev + 1 < depth:
            for j, sgn in enumerate((-1.0, 1.0)):
                stack.append((ex, ey, bend + sgn * turns[i][j], ln * shrink * grow[i][j], lev + 1))
        i += 1
    widths = [width * (0.62**lev) for lev in levels]
    return np.array(starts), np.array(ends), levels, widths


def _lut_u8(points) -> np.ndarray:
    return np.clip(np.rint(np.asarray(points, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------
# Chest radiograph
# --------------------------------------------------------------------------------------

# Control points of the lungs in normalised image coordinates (x right, y down) before
# the per-patient transform. "right" is the patient's right lung, on the image's left.
_RIGHT_LUNG = np.array(
    [
        (0.330, 0.120), (0.262, 0.150), (0.195, 0.240), (0.152, 0.370), (0.132, 0.510),
        (0.120, 0.650), (0.112, 0.750), (0.118, 0.815), (0.170, 0.790), (0.250, 0.745),
        (0.330, 0.722), (0.405, 0.738), (0.455, 0.770), (0.458, 0.630), (0.447, 0.480),
        (0.440, 0.340), (0.428, 0.220), (0.392, 0.140),
    ]
)  # fmt: skip
# Patient's left lung, mirrored (x -> 1 - x) when drawn. Its medial border runs behind
# the heart; the heart shadow then cuts the cardiac notch out of the visible lung.
_LEFT_LUNG = np.array(
    [
        (0.338, 0.132), (0.270, 0.162), (0.202, 0.252), (0.160, 0.382), (0.140, 0.522),
        (0.128, 0.665), (0.120, 0.770), (0.126, 0.838), (0.180, 0.810), (0.262, 0.770),
        (0.340, 0.752), (0.415, 0.762), (0.462, 0.785), (0.468, 0.630), (0.455, 0.480),
        (0.448, 0.340), (0.436, 0.225), (0.400, 0.152),
    ]
)  # fmt: skip
_LOWER_IDX = np.arange(6, 13)  # lateral-base, costophrenic angle and diaphragm points


@dataclass
class _CxrPatient:
    label: str
    right: np.ndarray
    left: np.ndarray
    mediastinum: np.ndarray
    carina_y: float
    sx: float
    sy: float
    rot: float
    tx: float
    ty: float
    body_wall: float
    shoulder_y: float
    arms: bool
    breasts: float
    bubble: tuple[float, float, float, float] | None
    rib_y0: np.ndarray
    rib_width: float
    clav_y: float
    clav_tilt: float
    brightness: float
    contrast: float
    gamma: float
    vessel_seed: int
    lesion_seed: int
    marker: int
    lesions: dict
    vessels: tuple | None = None


def _sample_cxr_patient(rng: np.random.Generator) -> _CxrPatient:
    """Anatomy and acquisition style of one synthetic patient (no lesions yet)."""
    right = _RIGHT_LUNG + rng.normal(0.0, 0.006, _RIGHT_LUNG.shape)
    left = _LEFT_LUNG + rng.normal(0.0, 0.006, _LEFT_LUNG.shape)
    # lung size and shape: width, apex height, inspiration (diaphragm level)
    for lung in (right, left):
        lung[:, 0] = 0.5 - (0.5 - lung[:, 0]) * rng.uniform(0.9, 1.1)
        lung[:, 1] = 0.45 + (lung[:, 1] - 0.45) * rng.uniform(0.92, 1.08)
    dia = rng.uniform(-0.05, 0.05)
    right[_LOWER_IDX, 1] += dia + rng.normal(0.0, 0.008)
    left[_LOWER_IDX, 1] += dia + rng.uniform(0.0, 0.03)
    left[:, 0] = 1.0 - left[:, 0]

    # mediastinum and heart silhouette: trachea/SVC, right atrium, diaphragm, left
    # ventricle (apex), left atrial appendage, pulmonary trunk, aortic knob
    mw = rng.uniform(0.042, 0.058)
    xr = rng.uniform(0.415, 0.44)  # right heart border
    xl = rng.uniform(0.64, 0.71)  # left ventricular apex
    hd = dia * 0.8 + rng.uniform(-0.015, 0.015)  # the heart rests on the diaphragm
    kx, ky = rng.uniform(0.585, 0.61), rng.uniform(0.28, 0.32)
    med = np.array(
        [
            (0.5 - mw, -0.25), (0.5 - mw, 0.12), (0.5 - mw - 0.01, 0.28), (0.5 - mw - 0.014, 0.42),
            (xr + 0.012, 0.5 + hd), (xr, 0.6 + hd), (xr + 0.004, 0.69 + hd), (xr + 0.02, 0.77 + hd),
            (0.5, 0.85 + hd), (xl - 0.04, 0.83 + hd), (xl, 0.76 + hd), (xl - 0.008, 0.68 + hd),
            (xl * 0.5 + 0.3, 0.59 + hd), (0.6, 0.52 + hd * 0.5), (0.597, 0.45), (0.59, 0.39),
            (kx, ky + 0.025), (kx - 0.004, ky - 0.025), (0.5 + mw + 0.012, 0.22),
            (0.5 + mw, 0.12), (0.5 + mw, -0.25),
        ]
    )  # fmt: skip
    med = med + np.r_[rng.normal(0.0, 0.004, (len(med), 2))]

    y0 = np.cumsum(np.r_[rng.uniform(0.06, 0.1), rng.uniform(0.05, 0.062, 9)]) + 0.02
    return _CxrPatient(
        label="normal",
        right=right,
        left=left,
        mediastinum=med,
        carina_y=rng.uniform(0.36, 0.42),
        sx=rng.uniform(0.9, 1.06),
        sy=rng.uniform(0.9, 1.06),
        rot=rng.normal(0.0, 2.0),
        tx=rng.uniform(-0.03, 0.03),
        ty=rng.uniform(-0.04, 0.05),
        body_wall=rng.uniform(0.05, 0.085),
        shoulder_y=rng.uniform(0.0, 0.07),
        arms=bool(rng.random() < 0.6),
        breasts=float(rng.uniform(0.04, 0.1)) if rng.random() < 0.4 else 0.0,
        bubble=(
            (rng.uniform(0.63, 0.72), rng.uniform(0.05, 0.085), rng.uniform(0.02, 0.04), 0.0)
            if rng.random() < 0.65
            else None
        ),
        rib_y0=y0,
        rib_width=rng.uniform(0.019, 0.026),
        clav_y=rng.uniform(0.13, 0.19),
        clav_tilt=rng.uniform(0.04, 0.09),
        brightness=rng.uniform(-0.04, 0.04),
        contrast=rng.uniform(0.9, 1.1),
        gamma=rng.uniform(0.85, 1.2),
        vessel_seed=int(rng.integers(2**62)),
        lesion_seed=int(rng.integers(2**62)),
        marker=int(rng.integers(0, 4)),
        lesions={},
    )


@lru_cache(maxsize=1)
def _lung_zone_weights() -> tuple[np.ndarray, np.ndarray]:
    """Template-space helpers on a 64x64 grid: (lower-zone weight, lateral weight)."""
    n = 64
    c = (np.arange(n) + 0.5) / n
    y = np.clip((c - 0.1) / 0.75, 0.0, 1.0)[:, None] * np.ones((1, n))
    x = np.abs(c - 0.5)[None, :] * np.ones((n, 1))
    lateral = np.clip((x - 0.05) / 0.35, 0.0, 1.0)
    return y, lateral


def _template_masks(right: np.ndarray, left: np.ndarray, n: int = 64):
    masks = []
    for lung in (right, left):
        cv = _Canvas(n)
        cv.poly(_spline(lung), 255, aa=False)
        masks.append(cv.img)
    return masks


def _sample_cxr_lesions(rng, label: str, right: np.ndarray, left: np.ndarray) -> dict:
    """Lesion geometry in template coordinates (moves with the patient's anatomy)."""
    if label == "normal":
        return {}
    m_right, m_left = _template_masks(right, left)
    lower, lateral = _lung_zone_weights()
    if label == "covid":
        # peripheral and basal: weight = lateral^2 * lower^2 inside the lung
        w = lateral * lateral * (0.15 + lower * lower)
        patches = []
        n_total = int(rng.integers(6, 13))
        n_right = max(1, min(n_total - 1, int(rng.binomial(n_total, 0.5))))
        for mask, n_side in ((m_right, n_right), (m_left, n_total - n_right)):
            weights = np.rint((mask > 0) * w * 255.0).astype(np.uint8)
            for x, y in _sample_points(rng, weights, n_side):
                patches.append(
                    (x, y, rng.uniform(0.045, 0.11), rng.uniform(0.04, 0.08),
                     rng.uniform(0, 180), rng.uniform(0.55, 1.0))
                )  # fmt: skip
        return {
            "patches": patches,
            "density": float(rng.uniform(0.7, 0.95)),
            "paving": float(rng.uniform(0.0, 0.5)),
        }
    if label == "bacterial":
        side = "right" if rng.random() < 0.62 else "left"
        lung = right if side == "right" else left
        ys = lung[:, 1]
        top, bottom = float(ys.min()), float(ys.max())
        lobe = rng.choice(["lower", "upper", "middle"] if side == "right" else ["lower", "upper"])
        if lobe == "upper":
            fissure_y = top + (bottom - top) * rng.uniform(0.38, 0.5)
            cy = top + (fissure_y - top) * rng.uniform(0.45, 0.75)
        elif lobe == "middle":
            fissure_y = top + (bottom - top) * rng.uniform(0.45, 0.55)
            cy = fissure_y + rng.uniform(0.07, 0.14)
        else:
            fissure_y = top + (bottom - top) * rng.uniform(0.45, 0.62)
            cy = fissure_y + rng.uniform(0.1, 0.2)
        cx_med = float(lung[_LOWER_IDX[-1], 0])
        cx_lat = float(lung[_LOWER_IDX[0], 0])
        if lobe == "middle":
            cx = cx_med + (cx_lat - cx_med) * rng.uniform(0.2, 0.45)
        else:
            cx = cx_med + (cx_lat - cx_med) * rng.uniform(0.35, 0.7)
        second = None
        if rng.random() < 0.15:
            other = left if side == "right" else right
            ox = float(other[_LOWER_IDX[0], 0] * 0.55 + other[_LOWER_IDX[-1], 0] * 0.45)
            oy = float(other[:, 1].max() - rng.uniform(0.08, 0.16))
            second = (ox, oy, rng.uniform(0.04, 0.07), rng.uniform(0.3, 0.5))
        return {
            "side": side,
            "lobe": str(lobe),
            "fissure": (fissure_y, rng.uniform(-0.12, 0.12), rng.uniform(-0.25, 0.25)),
            "center": (cx, cy),
            "extent": (rng.uniform(0.12, 0.2), rng.uniform(0.1, 0.2)),
            "density": float(rng.uniform(0.62, 0.9)),
            "second": second,
            "bronchi_seed": int(rng.integers(2**62)),
        }
    if label == "viral":
        return {
            "density": float(rng.uniform(0.4, 0.6)),
            "spread": float(rng.uniform(0.09, 0.16)),
            "cells": int(rng.integers(44, 60)),
            "haze": float(rng.uniform(0.06, 0.14)),
        }
    raise ValueError(f"unknown chest X-ray label {label!r}; expected one of {CXR_CLASSES}")


def _attach_cxr_lesions(p: _CxrPatient, rng: np.random.Generator, label: str) -> None:
    p.label = label
    p.lesions = _sample_cxr_lesions(rng, label, p.right, p.left)
    p.lesion_seed = int(rng.integers(2**62))


def _body_outline(p: _CxrPatient, side: float) -> np.ndarray:
    """Half torso (neck, shoulder, chest wall) for side -1 (image left) or +1 (image right)."""
    w = p.body_wall
    sy = p.shoulder_y
    pts = [
        (0.40, -0.2), (0.39, sy - 0.06), (0.3, sy - 0.01), (0.16, sy + 0.01), (0.04, sy + 0.05),
        (-0.05, sy + 0.1), (0.112 - w, 0.3), (0.104 - w, 0.55), (0.1 - w, 0.8),
        (0.09 - w, 1.2), (0.5, 1.2), (0.5, -0.2),
    ]  # fmt: skip
    arr = np.array(pts)
    if side > 0:
        arr[:, 0] = 1.0 - arr[:, 0]
    return arr


def _rib_paths(p: _CxrPatient) -> tuple[list[np.ndarray], list[np.ndarray]]:
    posterior, anterior = [], []
    for i, y0 in enumerate(p.rib_y0):
        narrow = 0.62 + 0.38 * min(1.0, i / 4.0)  # upper ribs are short and tight
        ctrl = np.array(
            [(0.47, y0), (0.40, y0 - 0.04), (0.30, y0 - 0.036), (0.21, y0 + 0.0),
             (0.145, y0 + 0.065), (0.11, y0 + 0.16)]
        )  # fmt: skip
        ctrl[:, 0] = 0.5 - (0.5 - ctrl[:, 0]) * narrow
        ctrl[:, 1] = y0 + (ctrl[:, 1] - y0) * (0.55 + 0.45 * narrow)
        ant = np.array(
            [(0.108, y0 + 0.16), (0.16, y0 + 0.235), (0.25, y0 + 0.285), (0.33, y0 + 0.31)]
        )
        ant[:, 0] = 0.5 - (0.5 - ant[:, 0]) * narrow
        for side in (-1.0, 1.0):
            for src, dst in ((ctrl, posterior), (ant, anterior)):
                q = src.copy()
                if side > 0:
                    q[:, 0] = 1.0 - q[:, 0]
                dst.append(_spline(q, samples=6, closed=False))
    return posterior, anterior


def _two_lungs(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest connected parts (slivers cut off by the heart border go)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 3:
        return mask
    keep = 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA], kind="stable")[:2]
    return np.where(np.isin(labels, keep), 255, 0).astype(np.uint8)


def _cxr_vessel_tree(p: _CxrPatient):
    """Pulmonary vessels of the patient (template coordinates), computed once."""
    if p.vessels is None:
        vrng = np.random.default_rng(p.vessel_seed)
        a_all, b_all, values, widths = [], [], [], []
        for (hx, hy), base_angle in (((0.445, 0.46), 180.0), ((0.56, 0.47), 0.0)):
            sgn = 1.0 if base_angle == 0 else -1.0
            for k in range(10):
                ang = base_angle + (k - 4.5) * 17.0 * sgn + vrng.normal(0, 7)
                root = (hx + sgn * vrng.uniform(-0.01, 0.02), hy + vrng.uniform(-0.06, 0.06))
                a, b, lev, wid = _tree(vrng, root, ang, vrng.uniform(0.05, 0.075), 0.0075, 5)
                a_all.append(a)
                b_all.append(b)
                values += [230 - 30 * v for v in lev]
                widths += wid
        p.vessels = (np.concatenate(a_all), np.concatenate(b_all), values, widths)
    return p.vessels


def _render_cxr(p: _CxrPatient, rng: np.random.Generator, size: int):
    S = size
    tf = _Affine.make(
        p.sx * rng.uniform(0.98, 1.02),
        p.sy * rng.uniform(0.98, 1.02),
        p.rot + rng.normal(0.0, 1.0),
        p.tx + rng.normal(0.0, 0.01),
        p.ty + rng.normal(0.0, 0.01),
    )
    X, Y = _coords(S)
    right, left = _spline(p.right), _spline(p.left)
    mediastinum = _spline(p.mediastinum)

    def paint_mediastinum(c: _Canvas):
        c.poly(mediastinum, 255)

    # ---- masks --------------------------------------------------------------------
    full = _Canvas(S, tf).polys([right, left], 255, aa=False).img
    medi = _Canvas(S, tf)
    paint_mediastinum(medi)
    mask = _two_lungs(np.where(medi.img >= 128, 0, full).astype(np.uint8))

    lung_soft = _unit(_blur(full, 0.004 * S))
    lung_depth = _soft(S, 0.05, lambda c: c.polys([right, left], 255), tf)
    med_soft = _unit(_blur(medi.img, 0.005 * S))

    # ---- soft tissue ---------------------------------------------------------------
    def paint_body(c: _Canvas):
        c.polys([_body_outline(p, -1), _body_outline(p, 1)], 255)
        if p.arms:
            for s in (-1.0, 1.0):
                arm = np.array([(-0.3, p.shoulder_y + 0.05), (0.035, p.shoulder_y + 0.1),
                                (0.03, 0.62), (-0.3, 0.7)])  # fmt: skip
                if s > 0:
                    arm[:, 0] = 1.0 - arm[:, 0]
                c.poly(arm, 200)

    body = _soft(S, 0.012, paint_body, tf)
    centre = np.clip(_F32(1.0) - (X - _F32(0.5)) * (X - _F32(0.5)) * _F32(3.0), 0.0, 1.0)
    tissue = body * (_F32(0.62) + _F32(0.3) * centre)
    if p.breasts > 0:
        br = _soft(
            S,
            0.03,
            lambda c: c.polys(
                [_ellipse(0.26, 0.74, 0.15, 0.11, -10), _ellipse(0.74, 0.75, 0.15, 0.11, 10)], 255
            ),
            tf,
        )
        tissue = tissue + _F32(p.breasts) * br

    # ---- pathology: fraction of lung air replaced by fluid / tissue -----------------
    severity = _F32(rng.uniform(0.8, 1.2))  # drawn for every label: same image stream
    fill = np.clip(_cxr_lesion_fill(p, tf, S, lung_soft, severity) * _F32(LESION_CONSPICUITY), 0.0, 0.97)

    # ---- air: lungs and airways ---------------------------------------------------
    depth = _F32(0.45) + _F32(0.55) * lung_depth
    air = lung_soft * depth * (_F32(1.0) - fill) * (_F32(1.0) - _F32(0.8) * med_soft)

    def paint_airway(c: _Canvas):
        carina = (0.502, p.carina_y)
        c.line([(0.5, -0.1), (0.5, 0.2), carina], 255, 0.03)
        c.line([carina, (0.47, p.carina_y + 0.04), (0.445, p.carina_y + 0.075)], 160, 0.018)
        c.line([carina, (0.535, p.carina_y + 0.045), (0.565, p.carina_y + 0.09)], 160, 0.016)

    airway = _soft(S, 0.008, paint_airway, tf)

    # ---- vessels and hila ----------------------------------------------------------
    vcan = _Canvas(S, tf).segments(*_cxr_vessel_tree(p))
    vessels = _unit(_blur(vcan.img, 0.0035 * S))
    hila = _soft(
        S,
        0.018,
        lambda c: c.polys(
            [_ellipse(0.455, 0.46, 0.03, 0.05), _ellipse(0.55, 0.46, 0.03, 0.05)], 255
        ),
        tf,
    )

    # ---- bones -----------------------------------------------------------------------
    posterior, anterior = _rib_paths(p)
    ribs_c = _Canvas(S, tf)
    ribs_c.lines(posterior, 255, p.rib_width).lines(posterior, 150, p.rib_width * 0.55)
    ribs_c.lines(anterior, 160, p.rib_width * 0.85).lines(anterior, 100, p.rib_width * 0.45)
    ribs = _unit(_blur(ribs_c.img, 0.003 * S))

    clav_c = _Canvas(S, tf)
    for s in (-1.0, 1.0):
        q = np.array([(0.455, p.clav_y + 0.01), (0.4, p.clav_y + 0.005), (0.32, p.clav_y - p.clav_tilt * 0.4),
                      (0.24, p.clav_y - p.clav_tilt * 0.9), (0.15, p.clav_y - p.clav_tilt)])  # fmt: skip
        if s > 0:
            q[:, 0] = 1.0 - q[:, 0]
        path = _spline(q, 6, closed=False)
        clav_c.line(path, 255, 0.03)
        clav_c.line(path, 170, 0.016)
        # scapula: faint medial border over the upper lateral lung
        scap = np.array([(0.2, p.clav_y), (0.16, 0.3), (0.15, 0.45), (0.17, 0.52)])
        if s > 0:
            scap[:, 0] = 1.0 - scap[:, 0]
        clav_c.line(_spline(scap, 6, closed=False), 60, 0.01)
        if p.arms:
            hum = _ellipse(-0.005, p.shoulder_y + 0.11, 0.055, 0.065, 0, 32)
            if s > 0:
                hum[:, 0] = 1.0 - hum[:, 0]
            clav_c.poly(hum, 80)
            clav_c.line(hum, 110, 0.008, closed=True)
    clav = _unit(_blur(clav_c.img, 0.003 * S))

    spine_c = _Canvas(S, tf)
    spine_c.poly(np.array([(0.462, -0.2), (0.538, -0.2), (0.542, 1.2), (0.458, 1.2)]), 70)
    step = 0.047
    bodies, pedicles, processes = [], [], []
    for yk in np.arange(-0.02, 1.05, step) + (p.rib_y0[0] % step):
        w = 0.036 + 0.008 * yk
        h = step * 0.8
        bodies.append(
            np.array([(0.5 - w, yk), (0.5 + w, yk), (0.5 + w, yk + h), (0.5 - w, yk + h)])
        )
        for s in (-1.0, 1.0):
            pedicles.append(_ellipse(0.5 + s * w * 0.78, yk + step * 0.3, 0.008, 0.012, 0, 16))
        processes.append(_ellipse(0.5, yk + step * 0.55, 0.006, 0.012, 0, 12))
    spine_c.polys(bodies, 110).polys(processes, 150).lines(pedicles, 180, 0.004, closed=True)
    spine = _unit(_blur(spine_c.img, 0.004 * S))

    # ---- composition (attenuation-like units) ----------------------------------------
    a = _F32(0.04) + _F32(0.8) * tissue
    a = a - _F32(0.42) * air - _F32(0.08) * airway * (_F32(1.0) - lung_soft * _F32(0.5))
    a = a + _F32(0.1) * med_soft * body
    a = a + _F32(0.06) * hila + _F32(0.085) * vessels * lung_soft * (_F32(1.0) - fill)
    # bones show best against lung air; over thick soft tissue the film is saturated
    bone_vis = body * (_F32(0.35) + _F32(0.65) * lung_depth)
    a = a + _F32(0.11) * ribs * bone_vis + _F32(0.11) * clav * body
    a = a + _F32(0.06) * spine * body
    a = a + _F32(0.025) * lung_soft * _smooth_noise(rng, S, S // 10)  # parenchymal texture
    # liver and spleen under the domes: as dense as the heart, which merges into them
    rb, lb = p.right[_LOWER_IDX], p.left[_LOWER_IDX]
    below = np.concatenate(
        [rb[1:-1], lb[::-1][1:-1], [(1.2, 0.95), (1.2, 1.3), (-0.2, 1.3), (-0.2, 0.95)]]
    )
    abdomen = _soft(S, 0.012, lambda c: c.poly(below, 255), tf)
    a = a + _F32(0.1) * abdomen * body
    if p.bubble is not None:
        bx, bw, bh, _ = p.bubble
        dome = float(p.left[_LOWER_IDX, 1].max())
        bub = _soft(S, 0.006, lambda c: c.poly(_ellipse(bx, dome + bh + 0.02, bw, bh), 255), tf)
        a = a - _F32(0.12) * bub
    # exposure gradient (heel effect) and film fog
    grad = _F32(rng.uniform(-0.04, 0.04)) * (Y - _F32(0.5)) + _F32(rng.uniform(-0.03, 0.03)) * (
        X - _F32(0.5)
    )
    a = a + grad + _F32(0.025) * _smooth_noise(rng, S, 6)
    # quantum mottle: fine noise plus a little correlated noise
    sigma = rng.uniform(0.008, 0.018)
    a = a + _F32(sigma) * rng.standard_normal((S, S), dtype=_F32)
    a = a + _F32(sigma * 0.5) * _smooth_noise(rng, S, S // 4)
    if p.marker < 2:
        mark = _Canvas(S)
        scale = S / 512.0
        org = (int(S * (0.86 if p.marker == 0 else 0.07)), int(S * 0.09))
        cv2.putText(mark.img, "L" if p.marker == 0 else "R", org, cv2.FONT_HERSHEY_SIMPLEX,
                    1.1 * scale, 255, max(1, int(round(3 * scale))), cv2.LINE_AA)  # fmt: skip
        a = a + _F32(0.6) * _unit(mark.img)

    image = _tone_map(a, p, rng)
    return image, mask


def _tone_map(a: np.ndarray, p: _CxrPatient, rng: np.random.Generator) -> np.ndarray:
    """Film-like characteristic curve through a 1024-entry lookup table."""
    lo, hi = -0.1, 1.2
    n = 1024
    gamma = p.gamma * rng.uniform(0.95, 1.05)
    contrast = p.contrast * rng.uniform(0.96, 1.04)
    bright = p.brightness + rng.uniform(-0.02, 0.02)
    v = lo + (hi - lo) * np.arange(n, dtype=np.float64) / (n - 1)
    v = np.clip((v - 0.02) * contrast + bright, 0.0, 1.12) / 1.12
    y = np.array([math.pow(x, gamma) for x in v.tolist()]) * 1.12
    # soft shoulder: highlights compress, the densest parts stay just below white
    y = y / (1.0 + 0.25 * y * y)
    lut = y / (1.12 / (1.0 + 0.25 * 1.12 * 1.12)) * 0.97 + 0.015
    table = _lut_u8(lut)
    idx = np.rint((np.clip(a, lo, hi) - _F32(lo)) * _F32((n - 1) / (hi - lo))).astype(np.intp)
    return table[idx]


def _cxr_lesion_fill(
    p: _CxrPatient, tf: _Affine, S: int, lung_soft: np.ndarray, severity: np.float32
) -> np.ndarray:
    """Map in [0, 1]: fraction of lung air replaced by the disease (0 for normal)."""
    les = p.lesions
    rng = np.random.default_rng(p.lesion_seed)
    if p.label == "normal" or not les:
        return np.zeros((S, S), _F32)

    if p.label == "covid":

        def paint(c: _Canvas):
            for x, y, ax, ay, ang, v in les["patches"]:
                c.poly(_ellipse(x, y, ax, ay, ang, 28), 255 * v)

        patches = _soft(S, 0.022, paint, tf)
        # patchy, mottled ground glass with a faint reticular (crazy paving) component
        mottle = np.clip(_F32(0.75) + _F32(0.25) * _smooth_noise(rng, S, 14), 0.0, 1.0)
        net = _smooth_noise(rng, S, max(8, S // 10))
        lines = np.clip(_F32(1.0) - np.abs(net) * _F32(3.0), 0.0, 1.0)
        tex = mottle + _F32(les["paving"]) * _F32(0.45) * lines
        fill = _F32(les["density"]) * severity * patches * tex * lung_soft
        return np.clip(fill, 0.0, 0.9)

    if p.label == "bacterial":
        side = les["side"]
        fy, slope, curve = les["fissure"]
        cx, cy = les["center"]
        ex, ey = les["extent"]
        sgn = 1.0 if side == "left" else -1.0
        xs = np.linspace(0.0, 1.0, 24)
        fiss = np.stack(
            [xs, fy + slope * sgn * (xs - 0.5) + curve * (xs - 0.5) * (xs - 0.5) * 0.5], -1
        )
        above = les["lobe"] == "upper"
        edge_y = -0.3 if above else 1.3
        region = np.concatenate([fiss, [(1.0, edge_y), (0.0, edge_y)]], 0)
        # the horizontal fissure (right upper / middle lobe) gives a sharp border
        sharp = 0.0025 if side == "right" and les["lobe"] != "lower" else 0.016
        lobe = _soft(S, sharp, lambda c: c.poly(region, 255), tf)
        env = _soft(S, 0.03, lambda c: c.poly(_ellipse(cx, cy, ex, ey, 0.0, 32), 255), tf)
        lung_side = _Canvas(S, tf).poly(_spline(p.right if side == "right" else p.left), 255).img
        side_soft = _unit(_blur(lung_side, 0.004 * S))
        tex = np.clip(_F32(0.88) + _F32(0.12) * _smooth_noise(rng, S, 20), 0.0, 1.0)
        fill = _F32(les["density"]) * severity * lobe * env * tex * side_soft
        # air bronchograms: dark branching lines inside the consolidation
        brng = np.random.default_rng(les["bronchi_seed"])
        bc = _Canvas(S, tf)
        hil = (0.445, 0.46) if side == "right" else (0.555, 0.47)
        ang0 = math.degrees(math.atan2(cy - hil[1], cx - hil[0]))
        for k in range(3):
            a0, b0, lev, wid = _tree(brng, hil, ang0 + (k - 1) * 22.0, 0.09, 0.007, 3, (12, 25))
            bc.segments(a0, b0, [255] * len(lev), wid)
        bronch = _unit(_blur(bc.img, 0.0025 * S))
        fill = fill * (_F32(1.0) - _F32(0.45) * bronch)
        if les["second"] is not None:
            ox, oy, r, d = les["second"]
            sec = _soft(S, 0.025, lambda c: c.poly(_ellipse(ox, oy, r, r * 0.8), 255), tf)
            fill = fill + _F32(d) * sec * lung_soft
        return np.clip(fill, 0.0, 0.95)

    if p.label == "viral":
        spread = les["spread"]

        def paint(c: _Canvas):
            c.polys([_ellipse(0.4, 0.5, spread * 1.1, spread * 1.6),
                     _ellipse(0.6, 0.51, spread * 1.1, spread * 1.6)], 255)  # fmt: skip

        perihilar = _soft(S, 0.07, paint, tf)
        net = _smooth_noise(rng, S, les["cells"])
        net2 = _smooth_noise(rng, S, les["cells"] * 3 // 2)
        lines = np.clip(_F32(1.0) - np.abs(net) * _F32(3.0), 0.0, 1.0)
        lines2 = np.clip(net2 - _F32(0.8), 0.0, 1.0)  # reticulonodular dots
        # peribronchial thickening: thick streaks radiating from the hila
        sc = _Canvas(S, tf)
        for hilum, base in (((0.445, 0.46), 180.0), ((0.56, 0.47), 0.0)):
            for k in range(13):
                ang = base + (k - 6) * 14.0 * (1 if base == 0 else -1) + rng.normal(0, 6)
                a0, b0, lev, wid = _tree(
                    rng, hilum, ang, rng.uniform(0.05, 0.08), 0.008, 4, (12, 28)
                )
                sc.segments(a0, b0, [200] * len(lev), wid)
        streaks = _unit(_blur(sc.img, 0.005 * S))
        pattern = _F32(0.45) * lines + _F32(0.3) * lines2 + _F32(0.35) * streaks
        dens = _F32(les["density"]) * severity
        fill = (_F32(les["haze"]) + dens * (_F32(0.25) + perihilar) * pattern) * lung_soft
        return np.clip(fill, 0.0, 0.8)

    raise ValueError(f"unknown chest X-ray label {p.label!r}")


def synthetic_chest_xray(
    rng: np.random.Generator, size: int, label: str
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic PA chest radiograph and lung mask.

    Args:
        rng: random generator; the result depends only on its state.
        size: side of the square images in pixels (>= 32).
        label: one of :data:`CXR_CLASSES`.

    Returns:
        ``(image, mask)``: uint8 ``size x size`` arrays; the mask holds 0 and 255.

    The anatomy, the image variation and the lesions come from three independent
    child streams, so two calls from generators in the same state differ only by the
    pathology of their labels.
    """
    if label not in CXR_CLASSES:
        raise ValueError(f"unknown chest X-ray label {label!r}; expected one of {CXR_CLASSES}")
    if size < 32:
        raise ValueError("size must be at least 32 pixels")
    anatomy_seed, image_seed, lesion_seed = (int(s) for s in rng.integers(0, 2**62, size=3))
    patient = _sample_cxr_patient(np.random.default_rng(anatomy_seed))
    _attach_cxr_lesions(patient, np.random.default_rng(lesion_seed), label)
    return _render_cxr(patient, np.random.default_rng(image_seed), size)


# --------------------------------------------------------------------------------------
# Chest CT (axial slice, lung window)
# --------------------------------------------------------------------------------------

_HU_LO, _HU_STEP = -1024.0, 8.0  # uint8 canvases hold HU as (HU - _HU_LO) / _HU_STEP


def _hu(value: float) -> int:
    return int(min(255, max(0, round((value - _HU_LO) / _HU_STEP))))


@dataclass
class _CtPatient:
    body: tuple[float, float, float, float]  # cx, cy, ax, ay
    fat: float
    cavity: tuple[float, float, float, float]
    heart_scale: float
    heart_shift: float
    window: tuple[float, float]
    noise: float
    sx: float
    rot: float
    tx: float
    ty: float
    table: bool
    arms_up: bool
    shape_seed: int


def _sample_ct_patient(rng: np.random.Generator) -> _CtPatient:
    bw = rng.uniform(0.4, 0.46)
    bh = bw * rng.uniform(0.62, 0.75)
    cy = rng.uniform(0.48, 0.53)
    fat = rng.uniform(0.008, 0.035)
    wall = fat + rng.uniform(0.018, 0.03)
    return _CtPatient(
        body=(0.5, cy, bw, bh),
        fat=fat,
        # the back lies flat on the table (at cy + 0.9 bh) with thick paraspinal muscles
        cavity=(0.5, cy - 0.012, bw - wall, bh * 0.9 - wall - 0.012),
        heart_scale=rng.uniform(0.85, 1.15),
        heart_shift=rng.uniform(-0.02, 0.02),
        window=(rng.uniform(-660.0, -520.0), rng.uniform(1000.0, 1300.0)),
        noise=rng.uniform(12.0, 30.0),
        sx=rng.uniform(1.04, 1.14),
        rot=rng.normal(0.0, 2.0),
        tx=rng.uniform(-0.02, 0.02),
        ty=rng.uniform(-0.02, 0.02),
        table=bool(rng.random() < 0.7),
        arms_up=bool(rng.random() < 0.8),
        shape_seed=int(rng.integers(2**62)),
    )


# Right lung (image left) in cavity units: u lateral (-1 = right wall), v antero-posterior
# (-1 = anterior); the left lung mirrors it with a deeper indentation for the heart.
_CT_LUNG_UV = np.array(
    [
        (-0.07, -0.9), (-0.45, -0.95), (-0.78, -0.7), (-0.96, -0.2), (-0.93, 0.35),
        (-0.76, 0.78), (-0.48, 0.98), (-0.2, 1.0), (-0.17, 0.74), (-0.27, 0.42),
        (-0.33, 0.08), (-0.3, -0.25), (-0.15, -0.68),
    ]
)  # fmt: skip
_CT_MEDIAL = np.array(
    [0.5, 0.2, 0, 0, 0, 0, 0, 0, 0, 0, 0.3, 1.0, 1.0]
)  # heart indentation weights


def _ct_lungs(p: _CtPatient, z: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Both lung outlines at level z (0 = apex, 1 = base) as closed control polygons."""
    kx, ky, ax, ay = p.cavity
    heart = 0.2 * p.heart_scale * min(1.0, max(0.0, (z - 0.3) / 0.25))
    lungs = []
    for side in (-1.0, 1.0):  # -1: patient's right lung on the image left
        uv = _CT_LUNG_UV + rng.normal(0.0, 0.02, _CT_LUNG_UV.shape)
        u = uv[:, 0] - _CT_MEDIAL * heart * (0.45 if side < 0 else 1.0)
        u = np.minimum(u, -0.1)
        lungs.append(np.stack([kx - side * u * ax, ky + uv[:, 1] * ay], -1))
    return lungs


def _render_ct(p: _CtPatient, rng: np.random.Generator, size: int, z: float, label: str):
    S = size
    level_scale = 0.86 + 0.14 * math.sin(math.pi * min(1.0, 0.2 + z * 0.8))  # smaller near the apex
    tf = _Affine.make(
        p.sx * level_scale, p.sx * level_scale, p.rot + rng.normal(0.0, 0.5), p.tx, p.ty
    )
    X, Y = _coords(S)
    cx, cy, bw, bh = p.body
    c = _Canvas(S, tf)
    # table, body (fat), muscle
    if p.table:
        ty = cy + bh + 0.035
        c.line(
            _spline([(0.08, ty - 0.03), (0.5, ty), (0.92, ty - 0.03)], 8, False), _hu(-300), 0.008
        )
        c.line(
            _spline([(0.1, ty + 0.015), (0.5, ty + 0.045), (0.9, ty + 0.015)], 8, False),
            _hu(-600),
            0.004,
        )
    body = _ellipse(cx, cy, bw, bh, 0, 64)
    body[:, 1] = np.minimum(body[:, 1], cy + bh * 0.9)  # flattened back on the table
    c.poly(body, _hu(40))
    c.poly(_ellipse(cx, cy, bw - 0.004, bh - 0.004, 0, 64), _hu(-100))
    mus = _ellipse(cx, cy + 0.005, bw - p.fat, bh - p.fat, 0, 64)
    c.poly(mus, _hu(45))
    if not p.arms_up:
        for s in (-1.0, 1.0):
            c.poly(_ellipse(cx + s * (bw + 0.05), cy, 0.045, 0.08, 0, 32), _hu(40))
            c.poly(_ellipse(cx + s * (bw + 0.05), cy, 0.015, 0.02, 0, 16), _hu(700))
    # scapulae: thin bones behind the posterior-lateral ribs
    kx, ky, ax, ay = p.cavity
    for s in (-1.0, 1.0):
        sc = np.array([(kx + s * ax * 0.55, ky + ay * 1.12), (kx + s * ax * 0.85, ky + ay * 0.9),
                       (kx + s * ax * 1.05, ky + ay * 0.55)])  # fmt: skip
        c.line(_spline(sc, 6, False), _hu(500), 0.008)
    # ribs: cortical arcs around the cavity
    ribs = []
    for s in (-1.0, 1.0):
        for t0 in np.arange(-140.0, 140.0, 32.0) + rng.uniform(-6.0, 6.0):
            if abs(t0) < 30:
                continue
            ts = [math.radians(t0 + d) for d in (0.0, 7.0, 14.0)]
            r = 1.03
            ribs.append(np.stack([kx + s * ax * r * np.array([math.sin(t) for t in ts]),
                                  ky - ay * r * np.array([math.cos(t) for t in ts])], -1))  # fmt: skip
    c.lines(ribs, _hu(650), 0.011)
    c.poly(_ellipse(kx, ky - ay * 1.02, 0.025, 0.012, 0, 16), _hu(500))  # sternum
    # mediastinum, then lungs, then the structures that indent them
    c.poly(_ellipse(kx, ky, ax, ay, 0, 48), _hu(40))
    lungs = [
        _spline(q) for q in _ct_lungs(p, z, np.random.default_rng([p.shape_seed, int(z * 1000)]))
    ]
    lung_hu = -860.0 + rng.normal(0.0, 15.0)
    c.polys(lungs, _hu(lung_hu))
    hs = p.heart_scale
    mx = kx + p.heart_shift
    if z > 0.45:  # heart
        c.poly(_ellipse(mx + 0.03, ky - ay * 0.35, 0.1 * hs, 0.075 * hs, -30, 40), _hu(45))
    else:  # great vessels and airway
        c.poly(_ellipse(mx - 0.03, ky - ay * 0.35, 0.032, 0.032, 0, 24), _hu(45))  # ascending aorta
        c.poly(_ellipse(mx + 0.035, ky - ay * 0.3, 0.035, 0.03, 0, 24), _hu(40))  # pulmonary trunk
        tr = 0.02 if z < 0.38 else 0.012
        c.poly(_ellipse(kx, ky + ay * 0.15, tr, tr * 0.9, 0, 20), _hu(-990))  # trachea/bronchi
    c.poly(_ellipse(kx + 0.045, ky + ay * 0.52, 0.026, 0.026, 0, 24), _hu(48))  # descending aorta
    c.poly(_ellipse(kx - 0.005, ky + ay * 0.42, 0.012, 0.01, 0, 16), _hu(20))  # oesophagus
    # spine: vertebral body, canal, posterior elements
    vy = ky + ay * 0.8
    c.poly(_ellipse(kx, vy, 0.045, 0.04, 0, 32), _hu(700))
    c.poly(_ellipse(kx, vy, 0.037, 0.032, 0, 32), _hu(260))
    c.line([(kx - 0.03, vy + 0.06), (kx, vy + 0.045), (kx + 0.03, vy + 0.06)], _hu(650), 0.012)
    c.line([(kx, vy + 0.06), (kx, vy + 0.1)], _hu(650), 0.01)
    c.poly(_ellipse(kx, vy + 0.052, 0.016, 0.012, 0, 16), _hu(30))

    # lung-only mask for vessels and lesions
    lung_mask = _Canvas(S, tf).polys(lungs, 255).img
    lung_mask = np.where(np.abs(c.img.astype(np.int16) - _hu(lung_hu)) <= 1, lung_mask, 0).astype(
        np.uint8
    )
    lung_f = _unit(_blur(lung_mask, 0.003 * S))

    # vessels: branching from the hila; in-plane branches are lines, the others are cut
    # across and show as dots
    vc = _Canvas(S, tf)
    dots = []
    for side in (-1.0, 1.0):
        hil = (kx + side * ax * 0.24, ky + ay * 0.05)
        for k in range(6):
            ang = (0.0 if side > 0 else 180.0) + side * (k - 2.5) * 32.0 + rng.normal(0.0, 8.0)
            a0, b0, lev, wid = _tree(rng, hil, ang, rng.uniform(0.07, 0.1), 0.008, 4, (20, 45))
            r = rng.random(len(lev))
            keep = r < 0.3
            vc.segments(a0[keep], b0[keep], [255 - 45 * v for v, k_ in zip(lev, keep, strict=True) if k_],
                        [w for w, k_ in zip(wid, keep, strict=True) if k_])  # fmt: skip
            cut = (r >= 0.3) & (r < 0.75)
            dots += _circles(b0[cut], np.asarray(wid)[cut] * 0.45, 10)
    vc.polys(dots, 255)
    vessels = _unit(_blur(vc.img, 0.0025 * S))

    # blur the anatomy a little (partial volume): blur the uint8 canvas, bit-exact
    hu = _blur(c.img, 0.0035 * S).astype(_F32) * _F32(_HU_STEP) + _F32(_HU_LO)
    # dependent (posterior) density gradient and parenchymal texture inside the lungs
    grad = np.clip((Y - _F32(cy - 0.1)) * _F32(3.0), 0.0, 1.0)
    hu = hu + lung_f * (_F32(40.0) * grad + _F32(18.0) * _smooth_noise(rng, S, S // 12))
    hu = hu + lung_f * vessels * _F32(800.0)
    hu = hu + _ct_lesions(rng, S, tf, lungs, lung_mask, lung_f, label, p)

    # noise (slightly correlated, like reconstructed CT noise) and the lung window
    hu = hu + _F32(p.noise) * (
        rng.standard_normal((S, S), dtype=_F32) + _F32(0.6) * _smooth_noise(rng, S, S // 3)
    )
    level, width = p.window
    lo = level - width / 2.0
    out = np.clip(np.rint((hu - _F32(lo)) * _F32(255.0 / width)), 0, 255).astype(np.uint8)
    return out


def _ct_lesions(rng, S, tf, lungs, lung_mask, lung_f, label, p: _CtPatient) -> np.ndarray:
    """HU added by the findings of the slice."""
    tpl = _Canvas(64).polys(lungs, 255, aa=False).img
    # high inside the lung just under the pleura, fading towards the hilum
    edge = (tpl > 0) * (255 - _blur(tpl, 5.0).astype(np.int16))
    kx, ky, ax, ay = p.cavity
    post = np.clip((np.arange(64)[:, None] + 0.5) / 64.0 - (ky - ay * 0.6), 0.0, 1.0) * 2.0 + 0.3
    if label == "covid":
        w = np.clip(edge * post, 0, 255).astype(np.uint8)
        n = int(rng.integers(4, 10))
        pts = _sample_points(rng, w, n)
        if rng.random() < 0.9:  # bilateral: mirror some lesions into the other lung
            m = pts[: n // 2].copy()
            m[:, 0] = 2 * kx - m[:, 0]
            pts = np.concatenate([pts, m + rng.normal(0.0, 0.02, m.shape)], 0)
        shapes, dense = [], []
        for x, y in pts.tolist():
            ang = math.degrees(math.atan2(y - ky, x - kx)) + 90.0  # along the pleura
            big, small = rng.uniform(0.05, 0.11), rng.uniform(0.025, 0.05)
            # a lesion is a cluster of overlapping blobs: irregular outline
            for _ in range(int(rng.integers(2, 5))):
                ox, oy = rng.normal(0.0, big * 0.45), rng.normal(0.0, small * 0.5)
                ca, sa = math.cos(math.radians(ang)), math.sin(math.radians(ang))
                e = _ellipse(x + ox * ca - oy * sa, y + ox * sa + oy * ca,
                             big * rng.uniform(0.5, 0.9), small * rng.uniform(0.6, 1.0),
                             ang + rng.normal(0.0, 15.0), 20)  # fmt: skip
                (dense if rng.random() < 0.15 else shapes).append(e)
        ggo = _soft(S, 0.012, lambda c: c.polys(shapes + dense, 255), tf)
        cons = _soft(S, 0.008, lambda c: c.polys(dense, 255) if dense else None, tf)
        net = _smooth_noise(rng, S, S // 6)
        paving = np.clip(_F32(1.0) - np.abs(net) * _F32(3.0), 0.0, 1.0)
        mottle = np.clip(_F32(0.75) + _F32(0.3) * _smooth_noise(rng, S, 24), 0.0, 1.0)
        amp = _F32(rng.uniform(380.0, 560.0))
        hu = (amp * mottle + _F32(rng.uniform(0.0, 150.0)) * paving) * ggo + _F32(450.0) * cons
        return hu * lung_f
    if label == "non_covid":
        kind = rng.choice(["clear", "clear", "nodule", "scar", "emphysema", "atelectasis"])
        if kind == "clear":
            return np.zeros((S, S), _F32)
        if kind == "nodule":
            ((x, y),) = _sample_points(rng, (tpl > 0).astype(np.uint8), 1)
            r = rng.uniform(0.006, 0.014)
            nod = _soft(S, 0.002, lambda c: c.poly(_ellipse(x, y, r, r, 0, 20), 255), tf)
            return _F32(880.0) * nod * lung_f
        if kind == "scar":
            ((x, y),) = _sample_points(rng, np.clip(edge, 0, 255).astype(np.uint8), 1)
            ang = rng.uniform(0, math.pi)
            ln = rng.uniform(0.03, 0.06)
            seg = [
                (x - ln * math.cos(ang), y - ln * math.sin(ang)),
                (x + ln * math.cos(ang), y + ln * math.sin(ang)),
            ]
            sc = _soft(S, 0.002, lambda c: c.line(seg, 255, 0.004), tf)
            return _F32(700.0) * sc * lung_f
        if kind == "emphysema":
            pts = _sample_points(rng, (tpl > 0).astype(np.uint8), 12)
            bul = _soft(
                S, 0.002,
                lambda c: c.polys([_ellipse(x, y, r, r, 0, 16) for (x, y), r in
                                   zip(pts.tolist(), rng.uniform(0.006, 0.018, 12).tolist(), strict=True)], 255),
                tf,
            )  # fmt: skip
            return _F32(-110.0) * bul * lung_f
        # thin dependent (posterior) atelectasis band
        band = np.clip(_coords(S)[1] - _F32(ky + ay * 0.55), 0.0, 0.05) * _F32(20.0)
        return _F32(250.0) * band * lung_f
    raise ValueError(f"unknown CT label {label!r}; expected one of {CT_CLASSES}")


def synthetic_ct_slice(rng: np.random.Generator, size: int, label: str) -> np.ndarray:
    """Synthetic axial chest CT slice in a lung window (uint8, ``size x size``).

    ``label`` is ``covid`` (peripheral, posterior, mostly bilateral ground-glass
    opacities, sometimes with crazy paving or consolidation) or ``non_covid`` (clear
    lungs or one minor finding).
    """
    if label not in CT_CLASSES:
        raise ValueError(f"unknown CT label {label!r}; expected one of {CT_CLASSES}")
    if size < 32:
        raise ValueError("size must be at least 32 pixels")
    anatomy_seed, image_seed = (int(s) for s in rng.integers(0, 2**62, size=2))
    patient = _sample_ct_patient(np.random.default_rng(anatomy_seed))
    irng = np.random.default_rng(image_seed)
    z = float(irng.uniform(0.3, 0.8))
    return _render_ct(patient, irng, size, z, label)


# --------------------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------------------

_README = """SYNTHETIC DEMO DATA - NOT MEDICAL DATA
======================================

Every image in this folder was drawn by a program
(covid_imaging.demo.synthetic.generate_demo_dataset). No image comes from, or is
traced over, a real patient. The data exists so that the pipelines and tests run
on a fresh clone; models trained on it say nothing about real radiographs or CT
scans and must never be used for any medical purpose. The radiograph lesions are
drawn exaggerated (x{conspicuity} denser) so that small demo classifiers can learn them.

How it was made
---------------
generator    : covid_imaging.demo.synthetic (procedural numpy / OpenCV drawing)
call         : generate_demo_dataset(n_per_class={n_per_class}, cxr_size={cxr_size},
               n_ct_per_class={n_ct_per_class}, ct_size={ct_size}, seed={seed},
               images_per_patient={images_per_patient})
seed         : {seed}
chest X-rays : {n_per_class} per class, {cxr_size} x {cxr_size} px, classes {cxr_classes};
               {images_per_patient} image(s) per synthetic patient
CT slices    : {n_ct_per_class} per class, {ct_size} x {ct_size} px, classes {ct_classes};
               {images_per_patient} slice(s) per synthetic scan
files        : {n_cxr} radiographs + {n_cxr} lung masks, {n_ct} CT slices

Layout (COVID-19 Radiography Database style)
--------------------------------------------
cxr/<class>/images/synthetic_cxr_pNNNN_K.png   radiograph K of synthetic patient NNNN
cxr/<class>/masks/synthetic_cxr_pNNNN_K.png    its lung mask (0 / 255, same name)
ct/<class>/synthetic_ct_sNNNN_K.png            slice K of synthetic scan NNNN

Images of one patient / scan share their anatomy (and lesions), so data splits must
group them: the group id is "<modality>_<pNNNN or sNNNN>", e.g. cxr_p0007.

What the classes look like
--------------------------
X-ray normal    : clear lungs
X-ray covid     : bilateral, peripheral, lower-zone patchy ground-glass opacities
X-ray bacterial : dense lobar consolidation, usually in one lung, air bronchograms
X-ray viral     : diffuse bilateral perihilar interstitial / reticular pattern
CT covid        : peripheral, posterior ground glass (crazy paving, consolidation)
CT non_covid    : clear lungs or one minor finding (nodule, scar, emphysema,
                  basal atelectasis)

Re-running the generator with the same seed and parameters gives the same pixels.
"""


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img, _PNG_PARAMS)
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _groups(n_images: int, per_group: int) -> list[int]:
    """Number of images of each group: full groups, then the remainder."""
    full, rest = divmod(n_images, per_group)
    return [per_group] * full + ([rest] if rest else [])


def generate_demo_dataset(
    n_per_class: int = 40,
    cxr_size: int = 256,
    n_ct_per_class: int = 30,
    ct_size: int = 256,
    seed: int = 42,
    images_per_patient: int = 2,
) -> dict[str, bytes]:
    """Generate the synthetic demo data set as ``{relative path: PNG bytes}``.

    Args:
        n_per_class: radiographs per chest X-ray class (each with a mask).
        cxr_size: side of the radiographs and masks in pixels.
        n_ct_per_class: CT slices per CT class.
        ct_size: side of the CT slices in pixels.
        seed: the only source of randomness; same seed, same images.
        images_per_patient: radiographs per synthetic patient and slices per
            synthetic scan (the last group of a class may hold fewer).

    Returns:
        A dict with ``README_SYNTHETIC.txt`` and the PNG files; the layout and the
        file naming rule are described in the module docstring.

    Each synthetic patient / scan draws from its own generator, keyed by
    ``(seed, modality, class, group index within the class)``, so changing the
    number of images of one class does not change the images of the others.
    """
    if n_per_class < 0 or n_ct_per_class < 0:
        raise ValueError("image counts must be >= 0")
    if images_per_patient < 1:
        raise ValueError("images_per_patient must be >= 1")
    files: dict[str, bytes] = {}

    patient = 0
    for ci, label in enumerate(CXR_CLASSES):
        for gi, count in enumerate(_groups(n_per_class, images_per_patient)):
            base = np.random.SeedSequence([seed, 1, ci, gi])
            anatomy_ss, lesion_ss, *image_ss = base.spawn(2 + count)
            p = _sample_cxr_patient(np.random.default_rng(anatomy_ss))
            _attach_cxr_lesions(p, np.random.default_rng(lesion_ss), label)
            for k in range(count):
                image, mask = _render_cxr(p, np.random.default_rng(image_ss[k]), cxr_size)
                name = f"synthetic_cxr_p{patient:04d}_{k + 1}.png"
                files[f"cxr/{label}/images/{name}"] = _png(image)
                files[f"cxr/{label}/masks/{name}"] = _png(mask)
            patient += 1

    scan = 0
    for ci, label in enumerate(CT_CLASSES):
        for gi, count in enumerate(_groups(n_ct_per_class, images_per_patient)):
            base = np.random.SeedSequence([seed, 2, ci, gi])
            anatomy_ss, level_ss, *image_ss = base.spawn(2 + count)
            p = _sample_ct_patient(np.random.default_rng(anatomy_ss))
            lrng = np.random.default_rng(level_ss)
            # neighbouring levels of one scan, between the aortic arch and the bases
            z0 = float(lrng.uniform(0.3, 0.8 - 0.06 * (count - 1) if count > 1 else 0.8))
            step = float(lrng.uniform(0.03, 0.06))
            for k in range(count):
                z = min(0.8, z0 + step * k)
                image = _render_ct(p, np.random.default_rng(image_ss[k]), ct_size, z, label)
                files[f"ct/{label}/synthetic_ct_s{scan:04d}_{k + 1}.png"] = _png(image)
            scan += 1

    n_cxr = n_per_class * len(CXR_CLASSES)
    readme = _README.format(
        conspicuity=LESION_CONSPICUITY,
        seed=seed,
        n_per_class=n_per_class,
        cxr_size=cxr_size,
        cxr_classes=", ".join(CXR_CLASSES),
        images_per_patient=images_per_patient,
        n_ct_per_class=n_ct_per_class,
        ct_size=ct_size,
        ct_classes=", ".join(CT_CLASSES),
        n_cxr=n_cxr,
        n_ct=n_ct_per_class * len(CT_CLASSES),
    )
    return {"README_SYNTHETIC.txt": readme.encode("utf-8"), **files}
