"""Fast, deterministic synthetic chest radiographs with planted findings.

The renderer draws a grayscale radiograph of a synthetic patient with OpenCV primitives and a few
vectorised numpy passes: soft tissue, lungs, heart and mediastinum, spine, ribs, clavicles, lung
markings, diaphragm and gastric bubble, then any planted findings, then a per-image pose, exposure
and quantum noise. Bright means dense (bone, soft tissue, fluid), dark means air.

A patient is an :class:`Anatomy`, sampled once with :func:`sample_anatomy`; every study of the
patient is rendered from it, so a patient's images look alike (same body, heart, ribs and lung
markings) while the pose, inspiration, exposure and noise change per image. :func:`render` draws one
image and returns the boxes of the planted findings.

Geometry is written in the patient frame: ``x`` and ``y`` are fractions of the image side, ``x``
to the image's right (the patient's left on a PA film), ``y`` down. One similarity transform per
image (zoom, small rotation, shift) maps the patient frame onto the pixels of every raster, so the
pose costs nothing extra and the boxes follow it exactly.

Speed: smooth anatomy and findings are drawn at half resolution (for sizes above 96 px) and
upsampled once; thin devices and pleural lines are drawn at full resolution. Randomness comes only
from the ``rng`` passed in and from the anatomy's own seed, so the same inputs give the same bytes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from cxrkit.core.findings import FINDINGS, NO_FINDING, canonical_name

__all__ = ["RENDERABLE_FINDINGS", "VIEWS", "Anatomy", "render", "sample_anatomy"]

#: Every finding :func:`render` can plant ("No Finding" means nothing is planted).
RENDERABLE_FINDINGS: tuple[str, ...] = tuple(f for f in FINDINGS if f != NO_FINDING)

#: The views :func:`render` draws.
VIEWS: tuple[str, ...] = ("frontal", "lateral")

_ORDER: dict[str, int] = {f: i for i, f in enumerate(RENDERABLE_FINDINGS)}
_VIEW_ALIASES: dict[str, str] = {
    "frontal": "frontal",
    "pa": "frontal",
    "ap": "frontal",
    "lateral": "lateral",
    "lat": "lateral",
    "ll": "lateral",
}
_SHIFT = 4  # fixed-point bits for sub-pixel drawing with OpenCV
_FIX = float(1 << _SHIFT)
_MIN_SIZE, _MAX_SIZE = 16, 2048
_AA = cv2.LINE_AA

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the patient frame


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """One synthetic patient's body; every study of the patient is rendered from it.

    Lengths are fractions of the image side in the patient frame, before the per-image pose.

    Attributes:
        seed: Seeds the patient's own lung-marking (vessel) tree and parenchymal texture.
        center_x: Horizontal position of the midline.
        apex_y: Vertical position of the lung apices.
        lung_height: Apex to costophrenic angle.
        lung_width: Width of each lung, from the mediastinum to the lateral chest wall.
        mediastinum_width: Half-width of the upper mediastinum.
        chest_wall: Soft tissue between the lung and the skin (body habitus).
        heart_ratio: Cardiothoracic ratio (normal 0.39-0.47).
        heart_height: Height of the heart shadow as a fraction of the lung height.
        heart_offset: How far the heart's centre sits toward the patient's left, as a fraction
            of the heart's width.
        heart_tilt: Tilt of the heart's long axis, in degrees.
        dome_height: Height of the diaphragm domes as a fraction of the lung height.
        right_dome_raise: How much higher the right hemidiaphragm sits than the left.
        rib_spacing: Vertical spacing of the posterior ribs, as a fraction of the lung height.
        rib_curve: Curvature of the posterior ribs.
        clavicle_y: Level of the clavicles relative to the apices.
        soft_tissue: Density of soft tissue.
        bone_density: Multiplier on the density of bone.
        marking_strength: Multiplier on the conspicuity of the lung markings.
        breast: Density of the breast shadows (0 for none).
        trachea_shift: Deviation of the trachea from the midline.
    """

    seed: int
    center_x: float
    apex_y: float
    lung_height: float
    lung_width: float
    mediastinum_width: float
    chest_wall: float
    heart_ratio: float
    heart_height: float
    heart_offset: float
    heart_tilt: float
    dome_height: float
    right_dome_raise: float
    rib_spacing: float
    rib_curve: float
    clavicle_y: float
    soft_tissue: float
    bone_density: float
    marking_strength: float
    breast: float
    trachea_shift: float


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Sample one synthetic patient.

    Args:
        rng: The source of randomness; the same generator state gives the same patient.

    Returns:
        A frozen, hashable :class:`Anatomy`.
    """
    u = rng.uniform
    return Anatomy(
        seed=int(rng.integers(0, 2**31 - 1)),
        center_x=float(u(0.475, 0.525)),
        apex_y=float(u(0.11, 0.17)),
        lung_height=float(u(0.54, 0.63)),
        lung_width=float(u(0.255, 0.305)),
        mediastinum_width=float(u(0.048, 0.064)),
        chest_wall=float(u(0.03, 0.075)),
        heart_ratio=float(u(0.39, 0.47)),
        heart_height=float(u(0.46, 0.56)),
        heart_offset=float(u(0.12, 0.2)),
        heart_tilt=float(u(-12.0, 6.0)),
        dome_height=float(u(0.07, 0.12)),
        right_dome_raise=float(u(0.005, 0.03)),
        rib_spacing=float(u(0.09, 0.105)),
        rib_curve=float(u(0.085, 0.115)),
        clavicle_y=float(u(-0.02, 0.03)),
        soft_tissue=float(u(0.44, 0.52)),
        bone_density=float(u(0.8, 1.2)),
        marking_strength=float(u(0.75, 1.25)),
        breast=float(u(0.035, 0.08)) if rng.random() < 0.45 else 0.0,
        trachea_shift=float(u(-0.008, 0.008)),
    )


# --------------------------------------------------------------------------------------------
# Lung shape in lung-local (u, v) coordinates: u from the mediastinum (0) to the lateral chest wall
# (1), v from the apex (0) to the costophrenic angle (1).
# --------------------------------------------------------------------------------------------

_PHI = np.linspace(0.0, np.pi / 2, 20)
_OUTER = np.stack([0.16 + 0.84 * np.sin(_PHI) ** 0.75, 1.0 - np.cos(_PHI) ** 0.85], axis=1)
_APEX_MEDIAL = np.array([[0.0, 0.13], [0.012, 0.07], [0.05, 0.025], [0.1, 0.005]])
_DOME_W = np.linspace(0.0, 1.0, 16)  # 0 at the costophrenic angle, 1 at the mediastinum
_HILUM_UV = np.array([0.08, 0.45])


def _dome_profile(w: np.ndarray) -> np.ndarray:
    """Height of the diaphragm dome (0..1) at ``w = 1 - u``: steep laterally, half height medially."""
    w = np.asarray(w, dtype=np.float64)
    inner = np.sin(np.pi / 2 * np.minimum(w / 0.55, 1.0))
    outer = 1.0 - 0.5 * ((np.maximum(w, 0.55) - 0.55) / 0.45) ** 2
    return np.where(w <= 0.55, inner, outer)


_DOME_SHAPE = _dome_profile(_DOME_W)


def _lung_uv(dome: float) -> np.ndarray:
    """Closed lung outline in (u, v) for a diaphragm dome of height ``dome`` (fraction of v)."""
    dia = np.stack([1.0 - _DOME_W, 1.0 - dome * _DOME_SHAPE], axis=1)
    return np.concatenate([_APEX_MEDIAL, _OUTER, [[0.985, 1.03]], dia])


def _lateral_u(v: np.ndarray) -> np.ndarray:
    """u of the lateral lung border at height v."""
    return np.interp(v, _OUTER[:, 1], _OUTER[:, 0])


_N_TREES = 48  # a library of vessel trees; each patient gets one, mirrored and stretched


def _inside_uv(u: float, v: float) -> bool:
    """Whether (u, v) lies inside a typical lung, away from the pleura and the diaphragm."""
    if v < 0.05 or u < 0.0:
        return False
    w = 1.0 - u
    dome = (
        math.sin(math.pi / 2 * min(w / 0.55, 1.0))
        if w <= 0.55
        else 1 - 0.5 * ((w - 0.55) / 0.45) ** 2
    )
    if v > 1.0 - 0.1 * dome - 0.03:
        return False
    return u <= float(np.interp(v, _OUTER[:, 1], _OUTER[:, 0])) - 0.05


@functools.lru_cache(maxsize=_N_TREES)
def _vessel_tree(index: int) -> tuple[tuple[tuple[np.ndarray, list[tuple[int, int]]], ...], ...]:
    """Vessel tree ``index`` of the library: per lung, per branching level, points and pieces.

    Returns:
        ``tree[lung][level] = (points (N, 2) in lung (u, v), [(start, stop), ...] per polyline)``.
    """
    out = []
    for lung in (0, 1):
        rng = np.random.default_rng([index, 7919, lung])
        levels: list[list[list[tuple[float, float]]]] = [[], [], []]
        stack = []
        n_main = int(rng.integers(7, 10))
        angles = np.linspace(-1.3, 1.3, n_main) + rng.normal(0.0, 0.1, n_main)
        for a in angles:
            start = _HILUM_UV + rng.normal(0.0, 0.015, 2)
            stack.append(
                (float(start[0]), float(start[1]), float(a), float(rng.uniform(0.16, 0.24)), 0)
            )
        while stack:
            u, v, a, length, level = stack.pop()
            steps = 6 if level == 0 else 4
            step = length / steps
            pts = [(u, v)]
            jit = rng.normal(0.0, 0.22, steps)
            for j in range(steps):
                a += jit[j]
                u, v = u + step * math.cos(a) / 0.29, v + step * math.sin(a) / 0.6
                if not _inside_uv(u, v):
                    break
                pts.append((u, v))
            if len(pts) < 2:
                continue
            levels[level].append(pts)
            if level < 2:
                p_child = 0.4 if level == 0 else 0.3
                for k in range(1, len(pts) - 1):
                    for sign in (-1.0, 1.0):
                        if rng.random() < p_child:
                            stack.append(
                                (
                                    pts[k][0],
                                    pts[k][1],
                                    a + sign * rng.uniform(0.35, 0.8),
                                    length * rng.uniform(0.45, 0.75),
                                    level + 1,
                                )
                            )
        per_level = []
        for lines in levels:
            pieces, at = [], 0
            for p in lines:
                pieces.append((at, at + len(p)))
                at += len(p)
            pts = np.array([q for p in lines for q in p], dtype=np.float64).reshape(-1, 2)
            per_level.append((pts, pieces))
        out.append(tuple(per_level))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Cached noise fields
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=3)
def _grain(size: int) -> np.ndarray:
    """Unit white noise of shape (2*size, 2*size); images take random crops of it."""
    return np.random.default_rng(20240607 + size).standard_normal((2 * size, 2 * size), np.float32)


@functools.lru_cache(maxsize=6)
def _mottle(res: int) -> np.ndarray:
    """Low-frequency unit noise of shape (2*res, 2*res): soft-tissue and parenchymal unevenness."""
    small = max(8, res // 4)
    base = np.random.default_rng(4242 + res).standard_normal((2 * small, 2 * small), np.float32)
    base = cv2.GaussianBlur(base, (0, 0), max(0.8, small * 0.02))
    base = cv2.resize(base, (2 * res, 2 * res), interpolation=cv2.INTER_CUBIC)
    base -= base.mean()
    base /= base.std() + 1e-6
    return base


@functools.lru_cache(maxsize=6)
def _parenchyma(res: int) -> np.ndarray:
    """Fine band-pass unit noise of shape (2*res, 2*res): the grain of aerated lung."""
    base = np.random.default_rng(777 + res).standard_normal((2 * res, 2 * res), np.float32)
    fine = cv2.GaussianBlur(base, (0, 0), max(0.9, res * 0.007))
    base = fine - cv2.GaussianBlur(base, (0, 0), max(2.5, res * 0.02))
    base /= base.std() + 1e-6
    return base


# --------------------------------------------------------------------------------------------
# Drawing machinery
# --------------------------------------------------------------------------------------------


class _Frame:
    """Maps patient-frame points to pixel coordinates of a raster of side ``res``."""

    def __init__(self, res: int, zoom: float, theta: float, shift: tuple[float, float]) -> None:
        c, s = math.cos(theta), math.sin(theta)
        rot = np.array([[c, -s], [s, c]])
        centre = np.array([0.5, 0.5])
        self.res = res
        self.scale = res * zoom
        self.deg = math.degrees(theta)
        self.a = res * zoom * rot
        self.b = res * (centre + np.asarray(shift) - zoom * rot @ centre) - 0.5

    def px(self, pts: np.ndarray) -> np.ndarray:
        """Pixel coordinates (pixel centres at integers) of ``pts`` (N, 2)."""
        return np.asarray(pts, dtype=np.float64) @ self.a.T + self.b

    def thick(self, t: float) -> int:
        """A line thickness in whole pixels (at least 1) for a length ``t`` in the patient frame."""
        return max(1, int(round(t * self.scale)))


class _Raster:
    """A uint8 drawing surface over a region of a canvas, in patient-frame coordinates.

    Anti-aliased drawing blends into what is already there, so a raster doubles as a painter's
    canvas (the value replaces what is under it) and as an additive layer (see :meth:`_Ctx.add`).
    """

    __slots__ = ("frame", "img", "x0", "y0", "blur", "empty", "_a16", "_b16")

    def __init__(self, frame: _Frame, box: Box | None = None, blur: float = 0.0) -> None:
        self.frame, self.blur = frame, blur
        res = frame.res
        if box is None:
            x0, y0, x1, y1 = 0, 0, res, res
        else:
            corners = frame.px(
                np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]])
            )
            pad = 3.0 * blur * frame.scale + 2.0
            x0 = max(0, int(math.floor(corners[:, 0].min() - pad)))
            y0 = max(0, int(math.floor(corners[:, 1].min() - pad)))
            x1 = min(res, int(math.ceil(corners[:, 0].max() + pad)) + 1)
            y1 = min(res, int(math.ceil(corners[:, 1].max() + pad)) + 1)
        self.empty = x1 <= x0 or y1 <= y0
        self.x0, self.y0 = x0, y0
        self.img = np.zeros((max(1, y1 - y0), max(1, x1 - x0)), np.uint8)
        self._a16 = frame.a.T * _FIX
        self._b16 = (frame.b - (x0, y0)) * _FIX

    def fix(self, pts: np.ndarray) -> np.ndarray:
        """Fixed-point pixel coordinates of ``pts`` (N, 2) relative to this raster."""
        p = np.asarray(pts, dtype=np.float64) @ self._a16
        p += self._b16
        return np.rint(p, out=p).astype(np.int32)

    def _fix_many(self, pts: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(pts) == 1:
            return [self.fix(pts[0])]
        fixed = self.fix(np.concatenate(pts))
        ends = np.cumsum([len(p) for p in pts])
        return [fixed[e - len(p) : e] for p, e in zip(pts, ends, strict=True)]

    def poly(self, pts: np.ndarray, color: float = 255) -> None:
        """Fill one polygon."""
        cv2.fillPoly(self.img, [self.fix(pts)], color, _AA, _SHIFT)

    def polys(self, pts: Sequence[np.ndarray], color: float = 255) -> None:
        """Fill several polygons (their union)."""
        if len(pts):
            cv2.fillPoly(self.img, self._fix_many(pts), color, _AA, _SHIFT)

    def line(self, pts: np.ndarray, thick: float, color: float = 255, closed: bool = False) -> None:
        """Draw one polyline of thickness ``thick`` (patient-frame units)."""
        cv2.polylines(
            self.img, [self.fix(pts)], closed, color, self.frame.thick(thick), _AA, _SHIFT
        )

    def lines(
        self, pts: Sequence[np.ndarray], thick: float, color: float = 255, closed: bool = False
    ) -> None:
        """Draw several polylines of the same thickness and colour."""
        if len(pts):
            cv2.polylines(
                self.img, self._fix_many(pts), closed, color, self.frame.thick(thick), _AA, _SHIFT
            )

    def pieces(
        self, pts: np.ndarray, pieces: Sequence[tuple[int, int]], thick: float, color: float
    ) -> None:
        """Draw the polylines ``pts[a:b]`` for each ``(a, b)`` in ``pieces``."""
        if len(pieces):
            fixed = self.fix(pts)
            cv2.polylines(
                self.img,
                [fixed[a:b] for a, b in pieces],
                False,
                color,
                self.frame.thick(thick),
                _AA,
                _SHIFT,
            )

    def ellipse(
        self,
        center: Sequence[float],
        axes: Sequence[float],
        angle: float = 0.0,
        color: float = 255,
        thick: float | None = None,
        start: float = 0.0,
        end: float = 360.0,
    ) -> None:
        """Draw a filled ellipse, or its outline (or an arc) when ``thick`` is given."""
        c = self.fix(np.array([center]))[0]
        ax = (
            max(0, int(round(axes[0] * self.frame.scale * _FIX))),
            max(0, int(round(axes[1] * self.frame.scale * _FIX))),
        )
        t = -1 if thick is None else self.frame.thick(thick)
        cv2.ellipse(
            self.img,
            (int(c[0]), int(c[1])),
            ax,
            angle + self.frame.deg,
            start,
            end,
            color,
            t,
            _AA,
            _SHIFT,
        )


def _ellipse_pts(
    center: Sequence[float], axes: Sequence[float], n: int = 12, angle: float = 0.0
) -> np.ndarray:
    """Outline points (n, 2) of an ellipse, for batching many small ellipses into one call."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    if angle:
        ca, sa = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        x, y = x * ca - y * sa, x * sa + y * ca
    return np.stack([center[0] + x, center[1] + y], axis=1)


def _chaikin(pts: np.ndarray, rounds: int = 2) -> np.ndarray:
    """Smooth a closed polygon by corner cutting."""
    for _ in range(rounds):
        nxt = np.roll(pts, -1, axis=0)
        pts = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], axis=1).reshape(-1, 2)
    return pts


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-like blur; stack blur (cost independent of sigma) for wide kernels."""
    if sigma < 0.35:
        return img
    if sigma < 2.5:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    k = 2 * max(1, int(round(2.45 * sigma - 1.0))) + 1
    return cv2.stackBlur(img, (k, k))


def _blob(
    center: Sequence[float],
    radius: float,
    rng: np.random.Generator,
    irregular: float = 0.15,
    aspect: float = 1.0,
    n: int = 28,
) -> np.ndarray:
    """An irregular closed outline (n, 2) around ``center`` with mean radius ``radius``."""
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 6):
        r += irregular / k * rng.normal() * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    r = radius * np.clip(r, 0.45, 1.8)
    return np.stack([center[0] + r * np.cos(t) * aspect, center[1] + r * np.sin(t)], axis=1)


def _bbox(pts: np.ndarray, pad: float = 0.0) -> Box:
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return (lo[0] - pad, lo[1] - pad, hi[0] + pad, hi[1] + pad)


def _union(*boxes: Box) -> Box:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _bezier(
    p0: Sequence[float], p1: Sequence[float], p2: Sequence[float], n: int = 16
) -> np.ndarray:
    """Points (n, 2) of a quadratic Bezier curve."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


class _Ctx:
    """Per-image drawing state: the mid-resolution canvas, the full-resolution pass, lung masks.

    Canvases hold density in units of 1/255 (so a raster value of 255 added with weight ``w``
    raises the density by ``w``).
    """

    def __init__(self, size: int, zoom: float, theta: float, shift: tuple[float, float]) -> None:
        self.size = size
        self.res = size if size <= 96 else (size + 1) // 2
        self.mid = _Frame(self.res, zoom, theta, shift)
        self.fine = _Frame(size, zoom, theta, shift)
        self.base = _Raster(self.mid)  # painter's canvas for the anatomy, density * 255
        self.canvas = np.zeros((1, 1), np.float32)  # set by :meth:`start_adding`
        self.full: np.ndarray | None = None  # the upsampled canvas, once the fine pass starts
        self.lung_outlines: list[np.ndarray] = []
        self.occluders: list[np.ndarray] = []  # heart and mediastinum, in front of the lungs
        self._masks: dict[int, np.ndarray] = {}
        self.later: list[Callable[[], None]] = []
        self.boxes: dict[str, Box] = {}

    def paint(self, pts: np.ndarray, density: float) -> None:
        """Paint a polygon of the given density over the anatomy (replacing what is there)."""
        self.base.poly(pts, int(round(255 * min(max(density, 0.0), 1.0))))

    def start_adding(self) -> None:
        """Finish painting: the painted anatomy becomes the float canvas layers are added to."""
        self.canvas = self.base.img.astype(np.float32)

    def layer(self, box: Box | None = None, blur: float = 0.0, fine: bool = False) -> _Raster:
        """A blank uint8 raster covering ``box`` (padded for ``blur``) on the mid or fine canvas."""
        return _Raster(self.fine if fine else self.mid, box, blur)

    def lung_mask(self, which: int) -> np.ndarray:
        """Mid-resolution uint8 mask of lung ``which`` (index into lung_outlines; -1 for all).

        Lung hidden behind the heart and mediastinum counts for a fifth, so that an opacity there
        shows much less than in the open lung.
        """
        if which not in self._masks:
            r = _Raster(self.mid)
            r.polys(self.lung_outlines if which < 0 else [self.lung_outlines[which]])
            if self.occluders:
                occ = _Raster(self.mid)
                occ.polys(self.occluders)
                r.img = cv2.subtract(r.img, cv2.multiply(occ.img, r.img, scale=0.8 / 255.0))
            self._masks[which] = r.img
        return self._masks[which]

    def add(self, r: _Raster, weight: float, clip: int | None = None) -> None:
        """Add ``weight * raster / 255`` in density (blurred by the raster's blur) to its canvas.

        Args:
            r: The raster.
            weight: Density added where the raster is 255; negative for air.
            clip: Restrict to a lung (index into ``lung_outlines``; -1 for all lungs).
        """
        if r.empty:
            return
        img = _blur(r.img, r.blur * r.frame.scale)
        h, w = img.shape
        if clip is not None:
            mask = self.lung_mask(clip)[r.y0 : r.y0 + h, r.x0 : r.x0 + w]
            img = cv2.multiply(img, mask, scale=1.0 / 255.0)
        target = self.full if r.frame is self.fine else self.canvas
        assert target is not None
        sub = target[r.y0 : r.y0 + h, r.x0 : r.x0 + w]
        target[r.y0 : r.y0 + h, r.x0 : r.x0 + w] = cv2.addWeighted(
            sub, 1.0, img, float(weight), 0.0, dtype=cv2.CV_32F
        )

    def box(self, name: str, box: Box) -> None:
        self.boxes[name] = box


# --------------------------------------------------------------------------------------------
# Frontal geometry
# --------------------------------------------------------------------------------------------


@dataclass
class _Fracture:
    """A planted fracture: which bone, where it breaks, how the fragment is displaced."""

    clavicle: bool
    lung: int  # side: 0 image left, 1 image right
    first: int  # first broken rib (rib fractures)
    count: int  # adjacent ribs broken
    split: int  # index of the break along the bone's polyline
    dx: float
    dy: float
    callus: float  # radius of the healing callus, 0 for none
    sites: list[tuple[float, float]] = field(default_factory=list)  # filled in when drawn


class _Geo:
    """The frontal geometry of one image: anatomy, inspiration and anatomy-changing findings."""

    def __init__(self, a: Anatomy, inspiration: float) -> None:
        self.a = a
        self.cx = a.center_x
        self.y0 = a.apex_y
        self.h = a.lung_height + inspiration
        self.heights = [self.h, self.h]  # per lung: 0 = image left (patient right), 1 = image right
        self.med = a.mediastinum_width
        self.w = a.lung_width
        self.wall = a.chest_wall
        self.ctr = a.heart_ratio
        self.heart_height = a.heart_height
        self.domes = [a.dome_height + a.right_dome_raise / self.h, a.dome_height]
        self.lucency = 0.3
        self.markings = a.marking_strength
        self.mediastinum_widen = 1.0
        self.collapse = [1.0, 1.0]  # per lung: 1 = expanded, < 1 = collapsed by a pneumothorax
        self.ptx_lung = -1  # the lung with a pneumothorax, if any
        self.fracture: _Fracture | None = None
        self.heart: np.ndarray = np.zeros((0, 2))

    @property
    def bw(self) -> float:
        """Half-width of the body at the chest."""
        return self.med + self.w + self.wall

    def side_sign(self, lung: int) -> float:
        return -1.0 if lung == 0 else 1.0

    def uv(self, lung: int, uv: np.ndarray, collapsed: bool = False) -> np.ndarray:
        """Patient-frame points of lung-local (u, v) points of lung ``lung``."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        c = self.collapse[lung]
        if collapsed and c < 1.0:
            uv = _HILUM_UV + c * (uv - _HILUM_UV)
        s = self.side_sign(lung)
        x = self.cx + s * (self.med + uv[:, 0] * self.w)
        y = self.y0 + uv[:, 1] * self.heights[lung]
        return np.stack([x, y], axis=1)

    def outline(self, lung: int, collapsed: bool = False) -> np.ndarray:
        return self.uv(lung, _lung_uv(self.domes[lung]), collapsed)

    def base(self, lung: int) -> float:
        """y of the costophrenic angle of ``lung``."""
        return self.y0 + self.heights[lung]

    def dome_top(self, lung: int) -> float:
        return self.base(lung) - self.domes[lung] * self.heights[lung]

    def lung_box(self, lung: int, v0: float = 0.0, v1: float = 1.0) -> Box:
        """Box of lung ``lung`` between heights ``v0`` and ``v1`` (0 apex, 1 costophrenic angle)."""
        s = self.side_sign(lung)
        xa = self.cx + s * self.med
        xb = self.cx + s * (self.med + self.w)
        hl = self.heights[lung]
        return (min(xa, xb), self.y0 + v0 * hl, max(xa, xb), self.y0 + v1 * hl)

    def build_heart(self) -> None:
        """The heart shadow: right atrial border, left ventricular curve, apex on the diaphragm."""
        pts = _chaikin(_HEART_CTRL, 2)
        tilt = math.radians(self.a.heart_tilt)
        c, s = math.cos(tilt), math.sin(tilt)
        pts = pts @ np.array([[c, s], [-s, c]])
        width = self.ctr * 2.0 * (self.med + self.w)
        height = self.heart_height * self.h
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        pts = (pts - lo) / (hi - lo) * (width, height)
        right = self.cx - (0.5 - self.a.heart_offset) * width
        bottom = self.base(1) - 0.4 * self.domes[1] * self.heights[1] + 0.03
        self.heart = pts + (right, bottom - height)


#: Heart outline control points: x in heart widths, y in heart heights from the top, the patient's
#: right (image left) border first, then the base, then the left border back up.
_HEART_CTRL = np.array(
    [
        [-0.22, 0.0],
        [-0.3, 0.2],
        [-0.38, 0.5],
        [-0.36, 0.82],
        [-0.27, 1.0],
        [0.1, 1.04],
        [0.5, 1.02],
        [0.62, 0.93],
        [0.64, 0.76],
        [0.59, 0.54],
        [0.47, 0.34],
        [0.3, 0.16],
        [0.18, 0.04],
        [0.08, -0.01],
    ]
)


# --------------------------------------------------------------------------------------------
# Frontal anatomy
# --------------------------------------------------------------------------------------------


def _frontal_base(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> None:
    """Paint soft tissue, lungs, mediastinum and heart; add airway, bones, markings, texture."""
    a = g.a
    t = a.soft_tissue
    cx, y0, bw, h = g.cx, g.y0, g.bw, g.h

    # Body: neck, shoulders running off the film, axillae, chest wall.
    right = np.array(
        [
            [0.08, -0.1],
            [0.09, y0 - 0.13],
            [0.2, y0 - 0.1],
            [bw - 0.02, y0 - 0.06],
            [bw + 0.06, y0 - 0.03],
            [0.62, y0 + 0.0],
            [0.62, y0 + 0.08],
            [bw + 0.02, y0 + 0.19],
            [bw + 0.004, y0 + 0.45],
            [bw + 0.02, 1.1],
        ]
    )
    body = np.concatenate([right, right[::-1] * (-1.0, 1.0)]) + (cx, 0.0)
    ctx.paint(body, t)
    if rng.random() < 0.55:  # arms at the sides, apart from the chest wall
        gap = rng.uniform(0.015, 0.05)
        for s in (-1.0, 1.0):
            arm = np.array(
                [
                    [bw + 0.03, y0 + 0.05],
                    [0.7, y0 + 0.05],
                    [0.7, 1.1],
                    [bw + gap + 0.03, 1.1],
                    [bw + gap, y0 + 0.3],
                ]
            )
            ctx.paint(arm * (s, 1.0) + (cx, 0.0), t * 0.92)

    # Abdomen (a little thicker than the chest wall) under the domes.
    top = min(g.dome_top(0), g.dome_top(1)) - 0.02
    xl, low = g.med + g.w, max(g.base(0), g.base(1)) + 0.15
    belly = np.array(
        [
            [-xl, top],
            [xl, top],
            [bw + 0.03, low],
            [bw + 0.03, 1.1],
            [-bw - 0.03, 1.1],
            [-bw - 0.03, low],
        ]
    )
    ctx.paint(belly + (cx, 0.0), t + 0.1)

    # Lungs.
    ctx.lung_outlines = [g.outline(0), g.outline(1)]
    for o in ctx.lung_outlines:
        ctx.paint(o, t - g.lucency)

    # Mediastinum with aortic knob, pulmonary trunk and SVC (optionally widened), then the heart.
    g.build_heart()
    heart_top = float(g.heart[:, 1].min())
    ys = np.linspace(y0 - 0.14, heart_top + 0.05, 16)
    tt = (ys - y0) / h
    widen = 1.0 + (g.mediastinum_widen - 1.0) * np.exp(-(((tt - 0.3) / 0.2) ** 2))
    hw_r = g.med * widen + 0.026 * np.exp(-(((tt - 0.27) / 0.06) ** 2))
    hw_r += 0.012 * np.exp(-(((tt - 0.4) / 0.05) ** 2))
    hw_l = g.med * widen + 0.008 * np.exp(-(((tt - 0.22) / 0.12) ** 2))
    medi = np.concatenate(
        [np.stack([cx - hw_l, ys], axis=1), np.stack([cx + hw_r, ys], axis=1)[::-1]]
    )
    ctx.paint(medi, t + 0.12)
    ctx.paint(g.heart, t + 0.12)
    ctx.occluders = [medi, g.heart]
    ctx.start_adding()

    # Trachea and main bronchi.
    carina = np.array([cx + a.trachea_shift, y0 + 0.3 * h])
    tr = ctx.layer((cx - 0.12, -0.1, cx + 0.12, carina[1] + 0.1), blur=0.004)
    tr.line(np.array([[cx + a.trachea_shift * 0.3, -0.05], carina]), 0.03)
    tr.lines(
        [np.array([carina, carina + (-0.07, 0.05)]), np.array([carina, carina + (0.075, 0.065)])],
        0.018,
    )
    ctx.add(tr, -0.1)

    # Gastric bubble under the left hemidiaphragm.
    if rng.random() < 0.8:
        c = (cx + g.med + g.w * rng.uniform(0.3, 0.55), g.dome_top(1) + rng.uniform(0.045, 0.07))
        gb = ctx.layer((c[0] - 0.07, c[1] - 0.05, c[0] + 0.07, c[1] + 0.05), blur=0.005)
        gb.ellipse(c, (rng.uniform(0.03, 0.055), rng.uniform(0.018, 0.03)))
        ctx.add(gb, -rng.uniform(0.12, 0.22))

    # Extra soft tissue: apical caps, denser lung bases, breast shadows.
    soft = ctx.layer(blur=0.03)
    for lung in (0, 1):
        s = g.side_sign(lung)
        soft.ellipse((cx + s * (g.med + 0.4 * g.w), y0 + 0.02), (0.15, 0.06), color=150)
        soft.ellipse(tuple(g.uv(lung, (0.3, 0.8))[0]), (0.55 * g.w, 0.3 * h), color=80)
        if a.breast > 0:
            c = (cx + s * (g.med + 0.55 * g.w), g.base(lung) - 0.04)
            soft.ellipse(c, (0.17, 0.1), color=int(min(255, 255 * a.breast / 0.08)))
    ctx.add(soft, 0.08)

    _frontal_bones(ctx, g)
    _frontal_markings(ctx, g)
    _add_mottle(ctx, a)


def _add_mottle(ctx: _Ctx, a: Anatomy) -> None:
    """Uneven soft tissue and parenchyma: a patient-fixed crop of low-frequency noise."""
    m = _mottle(ctx.res)
    oy, ox = (a.seed // 7) % ctx.res, (a.seed // 131) % ctx.res
    d = ctx.canvas
    cv2.scaleAdd(np.ascontiguousarray(m[oy : oy + ctx.res, ox : ox + ctx.res]), 3.0, d, dst=d)


_RIB_PSI = np.linspace(math.acos(-0.3), -0.38, 15)  # posterior rib: spine end to lateral end
_RIB_T = np.linspace(0.0, 1.0, 8)[:, None]  # anterior rib parameter


def _ribs(g: _Geo, lung: int) -> tuple[np.ndarray, np.ndarray]:
    """Posterior ribs (11, 15, 2) and anterior ribs (11, 8, 2) of one side."""
    s = g.side_sign(lung)
    i = np.arange(11)[:, None]
    y_i = g.y0 - 0.04 + i * g.a.rib_spacing * g.h
    xi_lat = g.med + g.w + 0.25 * g.wall
    big_a = (xi_lat - 0.03) / 1.24
    big_b = g.a.rib_curve * (1.0 + 0.06 * i)
    y = y_i + 0.954 * big_b - big_b * np.sin(_RIB_PSI)
    xi = np.broadcast_to(0.03 + 0.3 * big_a + big_a * np.cos(_RIB_PSI), y.shape)
    post = np.stack([g.cx + s * xi, y], axis=2)
    xi0, y0 = xi[:, -1:], y[:, -1:]  # lateral ends
    xi1 = 0.1 + 0.008 * i
    y1 = y0 + 0.55 * (xi0 - xi1)
    t = _RIB_T.T
    ax = (1 - t) ** 2 * xi0 + 2 * (1 - t) * t * (0.5 * (xi0 + xi1)) + t**2 * xi1
    ay = (1 - t) ** 2 * y0 + 2 * (1 - t) * t * (0.5 * (y0 + y1) + 0.02) + t**2 * y1
    ant = np.stack([g.cx + s * ax, ay], axis=2)
    return post, ant


def _frontal_bones(ctx: _Ctx, g: _Geo) -> None:
    a = g.a
    cx, y0, h = g.cx, g.y0, g.h
    bones = ctx.layer(blur=0.002)
    fx = g.fracture
    # Spine: vertebral bodies with disc spaces, and pedicles.
    vh = 0.042 * h / 0.6
    ys = y0 - 0.15 + vh * np.arange(int((1.25 - y0) / vh) + 1)[:, None]
    quad = np.array([[-0.031, 0.0], [0.031, 0.0], [0.033, 0.8], [-0.033, 0.8]])
    bodies = np.stack([cx + quad[:, 0] + 0 * ys, ys + quad[:, 1] * vh], axis=2)
    bones.polys(list(bodies), 32)
    ring = _ellipse_pts((0.0, 0.0), (0.0075, 0.011), 10)
    ped = [ring + (cx + s * 0.025, y + vh * 0.3) for y in ys[:, 0] for s in (-1.0, 1.0)]
    bones.lines(ped, 0.003, 60, closed=True)
    # Ribs and clavicles.
    for lung in (0, 1):
        s = g.side_sign(lung)
        post, ant = _ribs(g, lung)
        post_l = list(post)
        if fx is not None and not fx.clavicle and fx.lung == lung:
            k, ribs = fx.split, range(fx.first, fx.first + fx.count)
            fx.sites = [(float(post[i, k, 0]), float(post[i, k, 1])) for i in ribs]
            post_l = [p for i, p in enumerate(post_l) if i not in ribs]
            for i in ribs:
                post_l += [post[i, :k], post[i, k + 1 :] + (fx.dx, fx.dy)]
        bones.lines(post_l, 0.021, 125)
        bones.lines(list(ant[:8]), 0.017, 55)
        tcl = np.linspace(0.0, 1.0, 10)
        xs = cx + s * (0.045 + tcl * (g.med + g.w - 0.02))
        ys_c = y0 + a.clavicle_y + 0.035 - 0.075 * tcl + 0.012 * np.sin(tcl * 2 * np.pi)
        clav = np.stack([xs, ys_c], axis=1)
        if fx is not None and fx.clavicle and fx.lung == lung:
            k = fx.split
            site = 0.5 * (clav[k] + clav[k + 1])
            fx.sites = [(float(site[0]), float(site[1]))]
            bones.lines([clav[: k + 1], clav[k + 1 :] + (fx.dx, fx.dy)], 0.026, 210)
        else:
            bones.line(clav, 0.026, 210)
        head = (cx + s * (g.bw + 0.045), y0 - 0.02)
        bones.ellipse(head, (0.06, 0.065), color=110)
        bones.ellipse(head, (0.06, 0.065), color=150, thick=0.005)
        scap = np.array(
            [[cx + s * (g.bw - 0.005), y0 - 0.02], [cx + s * (g.med + 0.72 * g.w), y0 + 0.36 * h]]
        )
        bones.line(scap, 0.006, 45)
    ctx.add(bones, 0.16 * a.bone_density)
    if fx is not None and fx.callus > 0:  # healing callus: a dense fusiform lump on the rib
        callus = ctx.layer(_bbox(np.array(fx.sites), 2 * fx.callus), blur=0.003)
        for site in fx.sites:
            callus.ellipse(site, (fx.callus, fx.callus * 0.7), angle=15.0 * g.side_sign(fx.lung))
        ctx.add(callus, 0.22 * a.bone_density)


def _frontal_markings(ctx: _Ctx, g: _Geo) -> None:
    """Hilar shadows and the branching vessel tree of each lung (following a collapsed lung)."""
    seed = g.a.seed
    tree = _vessel_tree(seed % _N_TREES)
    swap = (seed // _N_TREES) % 2
    su = 0.9 + 0.2 * ((seed * 2654435761) % 1000) / 1000.0
    sv = 0.9 + 0.2 * ((seed * 40503) % 997) / 997.0
    r = ctx.layer(blur=0.004)
    for lung in (0, 1):
        hil = g.uv(lung, _HILUM_UV, collapsed=True)[0]
        r.ellipse((hil[0] + g.side_sign(lung) * 0.012, hil[1]), (0.02, 0.045), color=150)
        for level, (thick, color) in enumerate(((0.0075, 210), (0.0048, 150), (0.0032, 100))):
            pts, pieces = tree[lung ^ swap][level]
            if len(pts):
                uv = _HILUM_UV + (pts - _HILUM_UV) * (su, sv)
                r.pieces(g.uv(lung, uv, collapsed=True), pieces, thick, color)
    ctx.add(r, 0.16 * g.markings, clip=-1)
    # Parenchymal grain, only where the lung is aerated (not in a pneumothorax).
    aerated = ctx.layer()
    aerated.polys([g.outline(0, collapsed=True), g.outline(1, collapsed=True)])
    grain = _parenchyma(ctx.res)
    oy, ox = (g.a.seed // 13) % ctx.res, (g.a.seed // 17) % ctx.res
    crop = grain[oy : oy + ctx.res, ox : ox + ctx.res]
    tex = cv2.multiply(crop, aerated.img, scale=4.0 * g.markings / 255.0, dtype=cv2.CV_32F)
    cv2.add(ctx.canvas, tex, dst=ctx.canvas)


# --------------------------------------------------------------------------------------------
# Frontal findings
# --------------------------------------------------------------------------------------------


def _pick_lung(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2))


def _lung_point(
    g: _Geo,
    lung: int,
    rng: np.random.Generator,
    u: tuple[float, float] = (0.3, 0.8),
    v: tuple[float, float] = (0.25, 0.8),
) -> np.ndarray:
    """A random point of a lung: ``v`` from apex to base, ``u`` as a fraction of the local width."""
    vv = rng.uniform(*v)
    umax = float(_lateral_u(np.array(vv)))
    uu = rng.uniform(u[0], u[1]) * umax
    return g.uv(lung, np.array([uu, vv]))[0]


def _haze(
    ctx: _Ctx,
    g: _Geo,
    rng: np.random.Generator,
    lung: int,
    center: np.ndarray,
    radius: float,
    weight: float,
    blur: float,
) -> Box:
    """An ill-defined patch: an irregular blob, heavily blurred, inside one lung."""
    pts = _blob(center, radius, rng, 0.35)
    r = ctx.layer(_bbox(pts), blur=blur)
    r.poly(pts)
    ctx.add(r, weight, clip=lung)
    return _bbox(pts, 0.4 * blur)


def _f_cardiomegaly_geo(g: _Geo, rng: np.random.Generator) -> None:
    g.ctr = rng.uniform(0.56, 0.68)
    g.heart_height *= rng.uniform(1.02, 1.12)


def _f_emphysema_geo(g: _Geo, rng: np.random.Generator) -> None:
    k = rng.uniform(1.08, 1.14)
    g.h *= k
    g.heights = [x * k for x in g.heights]
    g.w *= rng.uniform(1.02, 1.06)
    flat = rng.uniform(0.15, 0.4)
    g.domes = [x * flat for x in g.domes]
    g.ctr *= rng.uniform(0.85, 0.93)
    g.lucency += rng.uniform(0.06, 0.09)
    g.markings *= 0.55


def _f_ecm_geo(g: _Geo, rng: np.random.Generator) -> None:
    g.mediastinum_widen = rng.uniform(1.8, 2.5)


def _f_ecm(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    top = g.y0 + 0.08 * g.h
    half = g.med * g.mediastinum_widen + 0.03
    return (g.cx - half, top, g.cx + half, float(g.heart[:, 1].min()) + 0.03)


def _f_cardiomegaly(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    x0, y0, x1, _ = _bbox(g.heart)
    return (x0, y0, x1, min(g.heart[:, 1].max(), g.base(1)))


def _f_lung_opacity(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    boxes = []
    lungs = [0, 1] if rng.random() < 0.25 else [_pick_lung(rng)]
    for lung in lungs:
        c = _lung_point(g, lung, rng, v=(0.3, 0.82))
        rad = rng.uniform(0.055, 0.095)
        weight = rng.uniform(0.7, 0.95) * g.lucency
        boxes.append(_haze(ctx, g, rng, lung, c, rad, weight, rad * 0.28))
    return _union(*boxes)


def _round_lesion(
    ctx: _Ctx,
    g: _Geo,
    rng: np.random.Generator,
    radius: float,
    density: float,
    irregular: float,
    blur: float,
) -> Box:
    """A round opacity (nodule, lesion, mass) in one lung; ``density`` relative to the lung's."""
    lung = _pick_lung(rng)
    c = _lung_point(g, lung, rng, u=(0.25, 0.75), v=(0.2, 0.75))
    pts = _blob(c, radius, rng, irregular, aspect=rng.uniform(0.85, 1.15))
    r = ctx.layer(_bbox(pts), blur=blur)
    r.poly(pts)
    ctx.add(r, density * g.lucency, clip=lung)
    return _bbox(pts, radius * 0.12 + blur)


def _f_lung_lesion(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    return _round_lesion(ctx, g, rng, rng.uniform(0.034, 0.052), rng.uniform(0.7, 0.9), 0.3, 0.004)


def _f_nodule(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    return _round_lesion(ctx, g, rng, rng.uniform(0.02, 0.03), rng.uniform(0.85, 1.05), 0.12, 0.002)


def _f_mass(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    return _round_lesion(ctx, g, rng, rng.uniform(0.065, 0.1), rng.uniform(0.85, 1.05), 0.3, 0.004)


def _f_edema(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    boxes = []
    weight = rng.uniform(0.55, 0.75) * g.lucency
    for lung in (0, 1):
        c = g.uv(lung, np.array([rng.uniform(0.22, 0.32), rng.uniform(0.48, 0.58)]))[0]
        rx, ry = g.w * rng.uniform(0.45, 0.6), g.h * rng.uniform(0.2, 0.27)
        r = ctx.layer((c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry), blur=0.045)
        r.ellipse(c, (rx, ry), angle=g.side_sign(lung) * rng.uniform(-15, 5))
        ctx.add(r, weight, clip=lung)
        boxes.append((c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry))
        if rng.random() < 0.6:  # Kerley B lines at the lateral bases
            k = ctx.layer(g.lung_box(lung, 0.6, 1.0), blur=0.002)
            for _ in range(int(rng.integers(3, 7))):
                vv = rng.uniform(0.72, 0.9)
                ul = float(_lateral_u(np.array(vv)))
                k.line(g.uv(lung, np.array([[ul, vv], [ul - 0.09, vv]])), 0.004)
            ctx.add(k, 0.5 * g.lucency, clip=lung)
    return _union(*boxes)


def _f_consolidation(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    lung = _pick_lung(rng)
    c = _lung_point(g, lung, rng, u=(0.3, 0.75), v=(0.3, 0.8))
    rad = rng.uniform(0.06, 0.1)
    pts = _blob(c, rad, rng, 0.5, aspect=rng.uniform(0.8, 1.3), n=40)
    r = ctx.layer(_bbox(pts), blur=0.008)
    r.poly(pts)
    ctx.add(r, rng.uniform(0.8, 1.05) * g.lucency, clip=lung)
    if rng.random() < 0.6:  # air bronchograms
        ab = ctx.layer(_bbox(pts), blur=0.002)
        for _ in range(int(rng.integers(2, 4))):
            p = c + rng.normal(0.0, rad * 0.15, 2)
            ang = rng.uniform(0, 2 * np.pi)
            q = p + rad * 0.6 * np.array([math.cos(ang), math.sin(ang)])
            q2 = q + rad * 0.3 * np.array([math.cos(ang + 0.5), math.sin(ang + 0.5)])
            ab.line(np.array([p, q, q2]), 0.005)
        ctx.add(ab, -0.2 * g.lucency, clip=lung)
    return _bbox(pts, 0.01)


def _f_pneumonia(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    lung = _pick_lung(rng)
    c = _lung_point(g, lung, rng, u=(0.35, 0.7), v=(0.58, 0.85))
    spread = rng.uniform(0.04, 0.065)
    pts = c + rng.normal(0.0, 1.0, (int(rng.integers(8, 14)), 2)) * [spread, spread * 0.8]
    radii = rng.uniform(0.02, 0.04, len(pts))
    box = _union(
        *[(p[0] - q, p[1] - q, p[0] + q, p[1] + q) for p, q in zip(pts, radii, strict=True)]
    )
    r = ctx.layer(box, blur=0.012)
    for p, q in zip(pts, radii, strict=True):
        r.poly(_blob(p, q, rng, 0.3, n=14))
    ctx.add(r, rng.uniform(0.6, 0.8) * g.lucency, clip=lung)
    return (box[0] - 0.01, box[1] - 0.01, box[2] + 0.01, box[3] + 0.01)


def _f_atelectasis(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    """Plate-like (discoid) bands in the lower zones, or a collapsed lower lobe (a basal wedge)."""
    lung = _pick_lung(rng)
    density = rng.uniform(0.75, 0.95) * g.lucency
    if rng.random() < 0.25:  # segmental collapse: a wedge from the hilum to the basal pleura
        v0, v1 = rng.uniform(0.62, 0.72), rng.uniform(0.86, 0.95)
        wedge = np.array(
            [
                [0.12, rng.uniform(0.45, 0.55)],
                [float(_lateral_u(np.array(v0))) - 0.02, v0],
                [float(_lateral_u(np.array(v1))) - 0.02, v1],
            ]
        )
        pts = g.uv(lung, _chaikin(wedge, 1))
        r = ctx.layer(_bbox(pts), blur=0.006)
        r.poly(pts)
        ctx.add(r, density, clip=lung)
        return _bbox(pts, 0.01)
    boxes = []
    n = 1 if rng.random() < 0.6 else 2
    r = ctx.layer(g.lung_box(lung, 0.45, 1.0), blur=0.004)
    for _ in range(n):
        vv = rng.uniform(0.6, 0.86)
        ul = float(_lateral_u(np.array(vv)))
        u0, u1 = rng.uniform(0.12, 0.3) * ul, rng.uniform(0.7, 0.92) * ul
        dv = rng.uniform(-0.06, 0.06)
        seg = g.uv(
            lung,
            np.array([[u0, vv - dv], [(u0 + u1) / 2, vv + rng.normal(0, 0.01)], [u1, vv + dv]]),
        )
        thick = rng.uniform(0.02, 0.03)
        r.line(seg, thick)
        boxes.append(_bbox(seg, thick + 0.008))
    ctx.add(r, density, clip=lung)
    return _union(*boxes)


def _f_pneumothorax_geo(g: _Geo, rng: np.random.Generator) -> None:
    g.ptx_lung = _pick_lung(rng)
    g.collapse[g.ptx_lung] = rng.uniform(0.58, 0.82)


def _f_pneumothorax(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    """A lucent rim without markings at the apex and lateral wall, and a visceral pleural line."""
    lung = g.ptx_lung
    full, coll = ctx.lung_outlines[lung], g.outline(lung, collapsed=True)
    r = ctx.layer(_bbox(full), blur=0.003)
    r.poly(full)
    r.poly(coll, 0)
    ctx.add(r, -rng.uniform(0.08, 0.12), clip=lung)
    # The visceral pleural line: the collapsed lung's apical and lateral edge.
    n_apex = len(_APEX_MEDIAL)
    edge = coll[1 : n_apex + len(_OUTER) - 2]

    def pleural_line() -> None:
        fine = ctx.layer(_bbox(edge), blur=0.0, fine=True)
        fine.line(edge, 0.0035)
        ctx.add(fine, 0.12)

    ctx.later.append(pleural_line)
    # The box: the lucent rim along the apex and lateral wall.
    rim = np.concatenate([full[: n_apex + len(_OUTER)], edge])
    return _bbox(rim)


def _f_effusion(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    lungs = [0, 1] if rng.random() < 0.35 else [_pick_lung(rng)]
    boxes = []
    for lung in lungs:
        top = rng.uniform(0.56, 0.8)
        men = rng.uniform(0.1, 0.18)
        u = np.linspace(-0.1, 1.1, 17)
        w = 1.0 - np.clip(u, 0.0, 1.0)
        v = top + men * w**1.5 - 0.06 * np.exp(-w / 0.1)
        poly = np.concatenate([np.stack([u, v], axis=1), [[1.1, 1.25], [-0.1, 1.25]]])
        pts = g.uv(lung, poly)
        density = rng.uniform(1.1, 1.35) * g.lucency
        r = ctx.layer(_bbox(pts), blur=0.01)
        r.poly(pts)
        ctx.add(r, 0.8 * density, clip=lung)
        pts = g.uv(lung, poly - (0.0, 0.05))
        r = ctx.layer(_bbox(pts), blur=0.025)
        r.poly(pts)
        ctx.add(r, 0.2 * density, clip=lung)
        x0, y0, x1, _ = _bbox(g.uv(lung, np.array([[0.0, top - 0.06], [1.0, top - 0.06]])))
        boxes.append((x0, y0 - 0.01, x1 + 0.01, g.base(lung) + 0.01))
    return _union(*boxes)


def _f_pleural_other(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    """Calcified pleural plaques: dense plates along the chest wall and diaphragm, some en face."""
    boxes = []
    r = ctx.layer(blur=0.002)
    for _ in range(int(rng.integers(3, 7))):
        lung = _pick_lung(rng)
        kind = rng.random()
        if kind < 0.55:  # in profile along the lateral wall
            v = rng.uniform(0.3, 0.85)
            vs = np.linspace(v, v + rng.uniform(0.08, 0.16), 5)
            uv = np.stack([_lateral_u(vs) - 0.035, vs], axis=1)
        elif kind < 0.8:  # on the diaphragm
            u0 = rng.uniform(0.25, 0.6)
            us = np.linspace(u0, u0 + rng.uniform(0.15, 0.25), 5)
            uv = np.stack([us, 1.0 - g.domes[lung] * _dome_profile(1.0 - us) - 0.03], axis=1)
        else:  # en face: an irregular "holly leaf"
            c = _lung_point(g, lung, rng, u=(0.45, 0.85), v=(0.35, 0.85))
            pts = _blob(c, rng.uniform(0.018, 0.03), rng, 0.6, n=16)
            r.poly(pts, 200)
            boxes.append(_bbox(pts, 0.006))
            continue
        pts = g.uv(lung, uv)
        thick = rng.uniform(0.013, 0.02)
        r.line(pts, thick)
        boxes.append(_bbox(pts, thick + 0.006))
    ctx.add(r, rng.uniform(0.45, 0.6))
    return _union(*boxes)


def _f_pleural_thickening(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    lungs = [0, 1] if rng.random() < 0.3 else [_pick_lung(rng)]
    boxes = []
    for lung in lungs:
        apical = rng.random() < 0.3
        v0, v1 = (0.0, 0.25) if apical else sorted(rng.uniform(0.15, 0.92, 2))
        if v1 - v0 < 0.3 and not apical:
            v1 = min(0.95, v0 + 0.3)
        thick = rng.uniform(0.024, 0.038)
        inset = 0.4 * thick
        if apical:
            uv = np.concatenate([_APEX_MEDIAL[1:], _OUTER[_OUTER[:, 1] < v1]])
            pts = g.uv(lung, uv + (-0.5 * inset / g.w, inset / g.heights[lung]))
        else:
            vs = np.linspace(v0, v1, 12)
            pts = g.uv(lung, np.stack([_lateral_u(vs) - inset / g.w, vs], axis=1))
        r = ctx.layer(_bbox(pts, thick), blur=0.005)
        r.line(pts, thick)
        ctx.add(r, rng.uniform(0.7, 0.85) * g.lucency, clip=lung)
        boxes.append(_bbox(pts, thick * 0.5 + 0.004))
    return _union(*boxes)


def _f_fracture_geo(g: _Geo, rng: np.random.Generator) -> None:
    lung = _pick_lung(rng)
    s = g.side_sign(lung)
    if rng.random() < 0.3:  # clavicle, the lateral fragment displaced downward
        g.fracture = _Fracture(
            clavicle=True,
            lung=lung,
            first=0,
            count=1,
            split=int(rng.integers(3, 6)),
            dx=-s * rng.uniform(0.0, 0.012),
            dy=rng.uniform(0.03, 0.045),
            callus=0.0,
        )
    else:  # one to three adjacent posterior ribs, lateral half, each with a step
        g.fracture = _Fracture(
            clavicle=False,
            lung=lung,
            first=int(rng.integers(2, 7)),
            count=int(rng.choice([1, 1, 2, 3])),
            split=int(rng.integers(3, 8)),
            dx=s * rng.uniform(-0.006, 0.006),
            dy=float(rng.choice([-1.0, 1.0]) * rng.uniform(0.018, 0.028)),
            callus=rng.uniform(0.022, 0.032) if rng.random() < 0.9 else 0.0,
        )


def _f_fracture(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    assert g.fracture is not None and g.fracture.sites
    return _bbox(np.array(g.fracture.sites), 0.04)


def _f_support_devices(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    cx, y0, h = g.cx, g.y0, g.h
    carina = np.array([cx + g.a.trachea_shift, y0 + 0.3 * h])
    kinds = [
        k
        for k, p in (
            ("ett", 0.55),
            ("ng", 0.4),
            ("cvc", 0.5),
            ("pacer", 0.3),
            ("ecg", 0.35),
            ("wires", 0.15),
        )
        if rng.random() < p
    ]
    if not any(k in kinds for k in ("ett", "ng", "cvc", "pacer")):
        kinds.append(("ett", "cvc", "ng")[int(rng.integers(0, 3))])
    items: list[tuple[str, np.ndarray, float, float]] = []  # kind, points, thickness, weight
    if "ett" in kinds:
        tip = carina + [rng.normal(0, 0.004), -rng.uniform(0.03, 0.07)]
        pts = np.array([[cx + rng.normal(0, 0.01), -0.05], [cx, y0 - 0.05], tip])
        items.append(("band", pts, 0.014, 0.13))
        items.append(("line", pts + [0.005, 0.0], 0.0035, 0.35))
    if "ng" in kinds:
        below = g.dome_top(1) + rng.uniform(0.05, 0.09)
        pts = np.concatenate(
            [
                np.array([[cx - 0.01, -0.05], [cx - 0.006, carina[1]]]),
                _bezier(
                    (cx - 0.004, g.base(1) - 0.12),
                    (cx + 0.01, below + 0.02),
                    (cx + g.med + rng.uniform(0.06, 0.14), below),
                    10,
                ),
            ]
        )
        items.append(("line", pts, 0.005, 0.35))
    if "cvc" in kinds:
        s = -1.0 if rng.random() < 0.65 else 1.0
        start = (cx + s * (g.med + g.w * rng.uniform(0.5, 0.75)), y0 + g.a.clavicle_y + 0.03)
        bend = (cx + s * (g.med + 0.02), y0 + 0.08)
        tip = (cx - g.med * 0.6, y0 + rng.uniform(0.28, 0.4) * h)
        pts = np.concatenate([[[start[0] + s * 0.12, start[1] - 0.06]], _bezier(start, bend, tip)])
        items.append(("line", pts, 0.0045, 0.42))
    if "pacer" in kinds:
        s = 1.0 if rng.random() < 0.7 else -1.0
        c = np.array([cx + s * (g.med + g.w * rng.uniform(0.45, 0.7)), y0 + rng.uniform(0.02, 0.1)])
        box = np.array([[-0.035, -0.024], [0.035, -0.024], [0.035, 0.024], [-0.035, 0.024]]) + c
        items.append(("box", box, 0.0, 0.8))
        rv = np.array([float(g.heart[:, 0].mean()), float(g.heart[:, 1].max()) - 0.04])
        lead = np.concatenate(
            [
                _bezier(c, (cx, y0 + 0.05), (cx - g.med, y0 + 0.35 * h)),
                _bezier((cx - g.med, y0 + 0.35 * h), (cx - g.med, rv[1]), rv),
            ]
        )
        items.append(("line", lead, 0.005, 0.5))
    if "ecg" in kinds:
        for _ in range(int(rng.integers(2, 5))):
            lung = _pick_lung(rng)
            p = _lung_point(g, lung, rng, u=(0.3, 1.0), v=(0.05, 0.9))
            items.append(("ring", np.array([p]), 0.012, 0.45))
            wire = _bezier(p, p + rng.normal(0, 0.08, 2), p + rng.normal(0, 0.15, 2), 10)
            items.append(("line", wire, 0.0025, 0.2))
    if "wires" in kinds:
        for k in range(int(rng.integers(4, 7))):
            p = np.array([cx + rng.normal(0, 0.004), y0 + 0.1 + k * 0.065])
            items.append(("ring", np.array([p]), 0.009, 0.6))
    box = _union(*[_bbox(p, t + 0.01) for _, p, t, _ in items])

    def draw() -> None:
        for kind, pts, thick, weight in items:
            r = ctx.layer(_bbox(pts, thick + 0.01), fine=True, blur=0.0015)
            if kind == "box":
                r.poly(pts)
            elif kind == "ring":
                r.ellipse(pts[0], (thick, thick), thick=0.004)
                r.ellipse(pts[0], (thick * 0.3, thick * 0.3))
            else:
                r.line(pts, thick)
            ctx.add(r, weight)

    ctx.later.append(draw)
    return box


def _f_infiltration(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    lungs = [0, 1] if rng.random() < 0.35 else [_pick_lung(rng)]
    boxes = []
    for lung in lungs:
        c = _lung_point(g, lung, rng, u=(0.3, 0.7), v=(0.3, 0.8))
        rad = rng.uniform(0.07, 0.11)
        box = (c[0] - rad, c[1] - rad * 1.2, c[0] + rad, c[1] + rad * 1.2)
        r = ctx.layer(box, blur=rad * 0.3)
        r.ellipse(c, (rad * 0.8, rad))
        ctx.add(r, rng.uniform(0.45, 0.6) * g.lucency, clip=lung)
        net = ctx.layer(box, blur=0.003)
        k = int(rng.integers(25, 40))
        p0 = c + rng.normal(0, 1, (k, 2)) * [rad * 0.5, rad * 0.6]
        ang = rng.uniform(0, np.pi, k)
        ln = rng.uniform(0.01, 0.025, k)
        p1 = p0 + np.stack([np.cos(ang) * ln, np.sin(ang) * ln], axis=1)
        net.lines([np.array([a, b]) for a, b in zip(p0, p1, strict=True)], 0.0045)
        ctx.add(net, rng.uniform(0.5, 0.7) * g.lucency, clip=lung)
        boxes.append(box)
    return _union(*boxes)


def _f_fibrosis_geo(g: _Geo, rng: np.random.Generator) -> None:
    k = rng.uniform(0.92, 0.97)
    g.h *= k
    g.heights = [x * k for x in g.heights]


def _f_fibrosis(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    """Reticulation: a net of short crooked lines, basal and peripheral, both lungs."""
    boxes = []
    weight = rng.uniform(0.5, 0.65) * g.lucency
    for lung in (0, 1):
        r = ctx.layer(g.lung_box(lung, 0.3, 1.0), blur=0.0025)
        k = int(rng.integers(35, 55))
        vv = 1.0 - rng.power(2.0, k) * 0.6
        uu = _lateral_u(vv) * (1.0 - rng.power(1.6, k) * 0.7)
        p0 = g.uv(lung, np.stack([uu, vv], axis=1))
        ang = rng.uniform(0, 2 * np.pi, k)[:, None] + np.cumsum(
            rng.choice([-1.0, 1.0], (k, 5)) * rng.uniform(0.8, 1.6, (k, 5)), axis=1
        )
        step = rng.uniform(0.01, 0.018, (k, 5))
        walk = np.cumsum(np.stack([np.cos(ang) * step, np.sin(ang) * step], axis=2), axis=1)
        paths = np.concatenate([p0[:, None, :], p0[:, None, :] + walk], axis=1)
        r.lines(list(paths), 0.0035)
        ctx.add(r, weight, clip=lung)
        hz = ctx.layer(g.lung_box(lung, 0.45, 1.0), blur=0.03)
        hz.poly(g.uv(lung, np.array([[0.3, 1.0], [1.0, 1.0], [0.95, 0.55], [0.6, 0.6]])))
        ctx.add(hz, 0.25 * g.lucency, clip=lung)
        boxes.append(g.lung_box(lung, 0.35, 1.0))
    return _union(*boxes)


def _f_emphysema(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    if rng.random() < 0.5:  # bullae
        r = ctx.layer(blur=0.003)
        for _ in range(int(rng.integers(1, 4))):
            lung = _pick_lung(rng)
            c = _lung_point(g, lung, rng, u=(0.4, 0.8), v=(0.1, 0.4))
            rad = rng.uniform(0.025, 0.05)
            r.ellipse(c, (rad, rad * rng.uniform(0.8, 1.0)))
        ctx.add(r, -0.05, clip=-1)
    return _union(g.lung_box(0), g.lung_box(1))


def _f_hernia(ctx: _Ctx, g: _Geo, rng: np.random.Generator) -> Box:
    rad = rng.uniform(0.045, 0.075)
    c = (g.cx + rng.uniform(-0.015, 0.05), g.dome_top(1) - rad * rng.uniform(0.45, 0.8))
    soft = ctx.layer((c[0] - rad, c[1] - rad, c[0] + rad, c[1] + rad), blur=0.004)
    soft.ellipse(c, (rad * rng.uniform(1.0, 1.25), rad))
    ctx.add(soft, 0.1)
    level = c[1] + rad * rng.uniform(-0.3, 0.15)
    t = np.linspace(0.0, np.pi, 20)
    arc = np.stack([c[0] - 0.85 * rad * np.cos(t), c[1] - 0.85 * rad * np.sin(t)], axis=1)
    air = arc[arc[:, 1] <= level]
    if len(air) >= 2:
        half = math.sqrt(max((0.85 * rad) ** 2 - (level - c[1]) ** 2, 1e-8))
        air = np.concatenate([[[c[0] - half, level]], air, [[c[0] + half, level]]])
        gas = ctx.layer(_bbox(air), blur=0.0025)
        gas.poly(air)
        ctx.add(gas, -rng.uniform(0.22, 0.3))
    return (c[0] - rad * 1.25, c[1] - rad, c[0] + rad * 1.25, c[1] + rad)


#: Findings that change the anatomy itself; applied before the anatomy is drawn.
_GEO_EFFECTS: dict[str, Callable[[_Geo, np.random.Generator], None]] = {
    "Enlarged Cardiomediastinum": _f_ecm_geo,
    "Cardiomegaly": _f_cardiomegaly_geo,
    "Emphysema": _f_emphysema_geo,
    "Pneumothorax": _f_pneumothorax_geo,
    "Fracture": _f_fracture_geo,
    "Fibrosis": _f_fibrosis_geo,
}

#: How each finding is drawn on a frontal view; each returns its box in the patient frame.
_FRONTAL: dict[str, Callable[[_Ctx, _Geo, np.random.Generator], Box]] = {
    "Enlarged Cardiomediastinum": _f_ecm,
    "Cardiomegaly": _f_cardiomegaly,
    "Lung Opacity": _f_lung_opacity,
    "Lung Lesion": _f_lung_lesion,
    "Edema": _f_edema,
    "Consolidation": _f_consolidation,
    "Pneumonia": _f_pneumonia,
    "Atelectasis": _f_atelectasis,
    "Pneumothorax": _f_pneumothorax,
    "Pleural Effusion": _f_effusion,
    "Pleural Other": _f_pleural_other,
    "Fracture": _f_fracture,
    "Support Devices": _f_support_devices,
    "Infiltration": _f_infiltration,
    "Mass": _f_mass,
    "Nodule": _f_nodule,
    "Emphysema": _f_emphysema,
    "Fibrosis": _f_fibrosis,
    "Pleural Thickening": _f_pleural_thickening,
    "Hernia": _f_hernia,
}


def _render_frontal(
    ctx: _Ctx,
    a: Anatomy,
    names: list[str],
    rngs: dict[str, np.random.Generator],
    inspiration: float,
    rng: np.random.Generator,
) -> None:
    """Draw a PA view: anatomy changed by the findings first, then each finding, boxes recorded."""
    g = _Geo(a, inspiration)
    for name in names:
        if name in _GEO_EFFECTS:
            _GEO_EFFECTS[name](g, rngs[name])
    _frontal_base(ctx, g, rng)
    for name in names:
        ctx.box(name, _FRONTAL[name](ctx, g, rngs[name]))


# --------------------------------------------------------------------------------------------
# Lateral view (simplified): anterior to the image's left, spine to the right.
# --------------------------------------------------------------------------------------------


_LATERAL_BLOBS: dict[str, tuple[tuple[float, float], float, float, float]] = {
    # radius range, density (fraction of lung lucency), blur, irregularity
    "Lung Opacity": ((0.05, 0.09), 0.5, 0.03, 0.35),
    "Lung Lesion": ((0.03, 0.05), 0.65, 0.004, 0.3),
    "Edema": ((0.1, 0.14), 0.55, 0.05, 0.2),
    "Consolidation": ((0.06, 0.1), 0.8, 0.008, 0.5),
    "Pneumonia": ((0.05, 0.08), 0.6, 0.015, 0.4),
    "Atelectasis": ((0.03, 0.05), 0.6, 0.006, 0.2),
    "Infiltration": ((0.07, 0.1), 0.4, 0.03, 0.35),
    "Mass": ((0.06, 0.09), 0.85, 0.004, 0.3),
    "Nodule": ((0.018, 0.03), 0.8, 0.002, 0.12),
    "Fibrosis": ((0.08, 0.12), 0.35, 0.02, 0.3),
    "Pleural Other": ((0.02, 0.04), 0.6, 0.003, 0.2),
    "Pleural Thickening": ((0.03, 0.05), 0.45, 0.006, 0.2),
}


def _render_lateral(
    ctx: _Ctx,
    a: Anatomy,
    names: list[str],
    rngs: dict[str, np.random.Generator],
    inspiration: float,
    rng: np.random.Generator,
) -> None:
    """A simplified left lateral view: anterior to the image's left, the spine on the right."""
    t = a.soft_tissue
    xc = a.center_x
    dep = (a.mediastinum_width + a.lung_width + a.chest_wall) * 0.78
    xa, xp = xc - dep, xc + dep  # anterior and posterior skin
    y0 = a.apex_y - 0.01
    h = a.lung_height + inspiration + 0.02
    lucency, dome, hs, markings = 0.3, a.dome_height, 1.0, a.marking_strength
    if "Emphysema" in names:
        h *= 1.1
        dome *= 0.3
        lucency += 0.07
        markings *= 0.5
    if "Cardiomegaly" in names:
        hs = rngs["Cardiomegaly"].uniform(1.2, 1.35)
    base = y0 + h
    wall = a.chest_wall * 0.7 + 0.02
    la, lp = xa + wall, xp - wall  # anterior and posterior lung borders

    body = np.array(
        [
            [xc - 0.07, -0.1],
            [xc - 0.09, y0 - 0.06],
            [xa + 0.03, y0 + 0.1],
            [xa, y0 + 0.35],
            [xa - 0.015, 1.1],
            [xp + 0.02, 1.1],
            [xp + 0.005, y0 + 0.45],
            [xp - 0.01, y0 + 0.1],
            [xc + 0.16, y0 - 0.07],
            [xc + 0.1, -0.1],
        ]
    )
    ctx.paint(_chaikin(body, 2), t)
    belly = np.array(
        [
            [la, base - dome * h - 0.06],
            [lp, base - 0.04],
            [xp + 0.004, base],
            [xp + 0.02, 1.1],
            [xa - 0.015, 1.1],
            [xa - 0.004, base - 0.1],
        ]
    )
    ctx.paint(belly, t + 0.1)
    lung_ctrl = np.array(
        [
            [xc + 0.02, y0 - 0.01],
            [xc - 0.1, y0 + 0.03],
            [la + 0.02, y0 + 0.22],
            [la, y0 + 0.5 * h],
            [la + 0.02, base - 0.1],
            [la + 0.16, base - 0.1 - dome * h * 0.7],
            [xc + 0.1, base - dome * h * 0.45],
            [lp, base + 0.02],
            [lp + 0.005, y0 + 0.6 * h],
            [lp - 0.01, y0 + 0.25 * h],
            [xc + 0.13, y0 + 0.03],
        ]
    )
    lungs = _chaikin(lung_ctrl, 2)
    ctx.lung_outlines = [lungs]
    ctx.paint(lungs, t - lucency)
    hc = (la + 0.12 * hs, base - 0.15 * hs)
    hr = (0.14 * hs * a.heart_ratio / 0.43, 0.11 * hs)
    heart = _ellipse_pts(hc, hr, 32, angle=-35.0)
    occluders = [heart]
    if "Enlarged Cardiomediastinum" in names:
        k = rngs["Enlarged Cardiomediastinum"].uniform(0.06, 0.09)
        occluders.append(_ellipse_pts((xc - 0.03, y0 + 0.32 * h), (k, 0.15), 24))
    for o in occluders:
        ctx.paint(o, t + 0.12)
    ctx.occluders = occluders
    ctx.start_adding()

    soft = ctx.layer(blur=0.03)  # arms raised over the upper chest
    soft.ellipse((xc + 0.02, y0 + 0.02), (0.26, 0.12), color=200)
    ctx.add(soft, 0.1)
    air = ctx.layer((xc - 0.12, -0.1, xc + 0.1, y0 + 0.4 * h), blur=0.004)  # trachea
    air.line(
        np.array([[xc - 0.05, -0.05], [xc - 0.01, y0 + 0.1], [xc + 0.02, y0 + 0.33 * h]]), 0.03
    )
    ctx.add(air, -0.1)
    aorta = ctx.layer(blur=0.006)
    arch = _bezier((hc[0] + 0.04, hc[1] - hr[1]), (xc - 0.02, y0 + 0.02), (lp - 0.1, y0 + 0.3 * h))
    aorta.line(np.concatenate([arch, [[lp - 0.1, base]]]), 0.04)
    ctx.add(aorta, 0.05)

    bones = ctx.layer(blur=0.002)
    vh = 0.042 * h / 0.6
    ys = y0 - 0.14 + vh * np.arange(int((1.25 - y0) / vh) + 1)
    sx = lp - 0.07 + 0.025 * np.sin((ys - y0) * 2.2)
    quad = np.array([[-0.038, 0.0], [0.038, 0.005], [0.038, 0.8], [-0.038, 0.78]])
    bones.polys(
        [
            np.stack([x + quad[:, 0], y + quad[:, 1] * vh], axis=1)
            for x, y in zip(sx, ys, strict=True)
        ],
        150,
    )
    bones.polys(
        [
            _ellipse_pts((x + 0.07, y + vh * 0.4), (0.028, 0.013), 10)
            for x, y in zip(sx, ys, strict=True)
        ],
        50,
    )
    bones.line(np.array([[xa + 0.012, y0 + 0.06], [xa + 0.02, y0 + 0.52 * h]]), 0.018, 110)
    ribs = [
        _bezier(
            (lp + 0.02, y0 + 0.05 + i * 0.06),
            (xc, y0 + 0.1 + i * 0.06),
            (la + 0.02, y0 + 0.2 + i * 0.065),
            10,
        )
        for i in range(9)
    ]
    bones.lines(ribs, 0.012, 40)
    ctx.add(bones, 0.16 * a.bone_density)

    seed = a.seed
    tree = _vessel_tree(seed % _N_TREES)
    mk = ctx.layer(blur=0.004)
    hil = np.array([xc + 0.01, y0 + 0.45 * h])
    mk.ellipse(hil, (0.035, 0.05), color=150)
    for lung in (0, 1):
        for level, (thick, color) in enumerate(((0.0075, 200), (0.0048, 140), (0.0032, 95))):
            pts, pieces = tree[lung][level]
            if len(pts):
                xy = np.stack(
                    [
                        hil[0] + (pts[:, 0] - 0.08) * (lp - la) * 0.55 * (1 - 2 * lung),
                        y0 + pts[:, 1] * h,
                    ],
                    axis=1,
                )
                mk.pieces(xy, pieces, thick, color)
    ctx.add(mk, 0.14 * markings, clip=0)

    if "Pleural Effusion" in names:
        r_ = rngs["Pleural Effusion"]
        lvl = base - r_.uniform(0.06, 0.18)
        uu = np.linspace(0.0, 1.0, 12)
        curve = np.stack([la + (lp - la) * uu, lvl + 0.12 * (1 - uu) ** 2 - 0.04 * uu**4], axis=1)
        poly = np.concatenate([curve, [[lp + 0.05, 1.1], [la, 1.1]]])
        r = ctx.layer(_bbox(poly), blur=0.01)
        r.poly(poly)
        ctx.add(r, 1.2 * lucency, clip=0)
    if "Hernia" in names:
        r_ = rngs["Hernia"]
        rad = r_.uniform(0.045, 0.07)
        c = (hc[0] + hr[0] * 0.9 + rad, base - dome * h * 0.5 - rad * 0.6)
        r = ctx.layer((c[0] - rad, c[1] - rad, c[0] + rad, c[1] + rad), blur=0.004)
        r.ellipse(c, (rad, rad))
        ctx.add(r, 0.12)
        gas = ctx.layer((c[0] - rad, c[1] - rad, c[0] + rad, c[1]), blur=0.003)
        gas.ellipse(c, (rad * 0.8, rad * 0.8), start=180, end=360)
        ctx.add(gas, -0.25)
    if "Pneumothorax" in names:
        r_ = rngs["Pneumothorax"]
        r = ctx.layer((la, y0, xc + 0.1, y0 + 0.4 * h), blur=0.01)
        r.ellipse((la + 0.05, y0 + 0.18 * h), (r_.uniform(0.05, 0.09), 0.14))
        ctx.add(r, -0.06, clip=0)
    if "Support Devices" in names:
        r_ = rngs["Support Devices"]
        pts = np.array(
            [[xc - 0.05, -0.05], [xc - 0.01, y0 + 0.1], [xc + 0.012, y0 + r_.uniform(0.18, 0.28)]]
        )

        def draw(pts: np.ndarray = pts) -> None:
            r = ctx.layer(_bbox(pts, 0.02), fine=True, blur=0.0015)
            r.line(pts, 0.012)
            ctx.add(r, 0.2)

        ctx.later.append(draw)
    if "Fracture" in names:
        r_ = rngs["Fracture"]
        c = (xa + 0.017, y0 + r_.uniform(0.1, 0.4) * h)
        r = ctx.layer((c[0] - 0.03, c[1] - 0.03, c[0] + 0.03, c[1] + 0.03), blur=0.003)
        r.ellipse(c, (0.018, 0.012))
        ctx.add(r, 0.15)
    for name in names:
        if name in _LATERAL_BLOBS:
            r_ = rngs[name]
            (r0, r1), dens, blur, irr = _LATERAL_BLOBS[name]
            c = (r_.uniform(la + 0.08, lp - 0.1), y0 + r_.uniform(0.2, 0.8) * h)
            pts = _blob(c, r_.uniform(r0, r1), r_, irr)
            r = ctx.layer(_bbox(pts), blur=blur)
            r.poly(pts)
            ctx.add(r, dens * lucency, clip=0)
    _add_mottle(ctx, a)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _canonical(findings: Sequence[str]) -> list[str]:
    if isinstance(findings, str):
        findings = [findings]
    names: set[str] = set()
    for raw in findings:
        name = canonical_name(str(raw), strict=False)
        if name is None:
            raise ValueError(
                f"unknown finding {raw!r}: the renderer knows {', '.join(RENDERABLE_FINDINGS)}"
            )
        if name != NO_FINDING:
            names.add(name)
    return sorted(names, key=_ORDER.__getitem__)


def render(
    anatomy: Anatomy,
    findings: Sequence[str],
    *,
    size: int,
    view: str = "frontal",
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, tuple[float, float, float, float]]]:
    """Render one synthetic chest radiograph of ``anatomy`` with ``findings`` planted.

    Args:
        anatomy: The patient, from :func:`sample_anatomy`.
        findings: Canonical finding names (or any spelling :func:`canonical_name` knows);
            "No Finding" plants nothing. Order and duplicates do not matter.
        size: Side of the square output image in pixels (16-2048; designed for 32-1024).
        view: "frontal" (PA/AP) or "lateral".
        rng: Source of the per-image variation (pose, inspiration, exposure, gamma, noise) and of
            the findings' placement. The same generator state gives the same bytes, and two images
            rendered from the same state differ only by the findings planted.

    Returns:
        ``(image, boxes)``: a ``uint8`` array of shape ``(size, size)``, and for a frontal view a
        map from each planted finding to its box ``(x, y, w, h)`` in pixels of this image
        (inside the image, non-empty). Lateral views return no boxes.

    Raises:
        ValueError: An unknown finding or view, or a size out of range.
    """
    names = _canonical(findings)
    view_key = _VIEW_ALIASES.get(str(view).strip().lower())
    if view_key is None:
        raise ValueError(f"unknown view {view!r}: expected one of {', '.join(VIEWS)}")
    size = int(size)
    if not _MIN_SIZE <= size <= _MAX_SIZE:
        raise ValueError(f"size {size} out of range: expected {_MIN_SIZE} to {_MAX_SIZE} pixels")

    # Per-image variation, drawn in a fixed order whatever the findings.
    zoom = float(rng.uniform(0.93, 1.07))
    theta = math.radians(float(np.clip(rng.normal(0.0, 2.5), -6.0, 6.0)))
    shift = (float(rng.uniform(-0.035, 0.035)), float(rng.uniform(-0.03, 0.03)))
    inspiration = float(rng.uniform(-0.025, 0.025))
    contrast = float(rng.uniform(0.9, 1.1))
    offset = float(rng.uniform(0.04, 0.12))
    knee = float(rng.uniform(0.4, 0.5))
    slope = float(rng.uniform(2.5, 4.0))
    gamma = float(rng.uniform(0.85, 1.15))
    noise_sigma = float(rng.uniform(0.006, 0.02))
    noise_at = rng.integers(0, size, 2)
    marker = float(rng.random())
    detail_rng = np.random.default_rng(int(rng.integers(0, 2**63 - 1)))
    finding_seed = int(rng.integers(0, 2**63 - 1))
    rngs = {n: np.random.default_rng([finding_seed, _ORDER[n]]) for n in names}

    ctx = _Ctx(size, zoom, theta, shift)
    if view_key == "frontal":
        _render_frontal(ctx, anatomy, names, rngs, inspiration, detail_rng)
    else:
        _render_lateral(ctx, anatomy, names, rngs, inspiration, detail_rng)

    if ctx.res != size:
        ctx.full = cv2.resize(ctx.canvas, (size, size), interpolation=cv2.INTER_LINEAR)
    else:
        ctx.full = ctx.canvas
    for op in ctx.later:
        op()

    # Quantum noise: relative noise falls where more photons arrive (dark, air-filled areas).
    grain = _grain(size)
    noise = grain[noise_at[0] : noise_at[0] + size, noise_at[1] : noise_at[1] + size]
    noise = cv2.multiply(noise, ctx.full, scale=noise_sigma * 255.0 / 120.0)
    img = cv2.addWeighted(ctx.full, contrast, noise, contrast, 255.0 * offset, dtype=cv2.CV_8U)
    img = cv2.LUT(img, _film_curve(knee, slope, gamma))
    if marker < 0.5 and size >= 32:
        scale = size / 300.0
        x = int(size * (0.06 if marker < 0.25 else 0.86))
        cv2.putText(
            img,
            "L" if marker < 0.4 else "R",
            (x, int(size * 0.1)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            235,
            max(1, size // 160),
            _AA,
        )

    boxes: dict[str, tuple[float, float, float, float]] = {}
    if view_key == "frontal":
        for name in names:
            boxes[name] = _to_pixels(ctx, ctx.boxes[name])
    return img, boxes


def _film_curve(knee: float, slope: float, gamma: float) -> np.ndarray:
    """Lookup table from density (0-255) to brightness: an S-shaped film curve (toe, linear part,
    shoulder), then a gamma."""
    x = np.linspace(0.0, 1.0, 256)
    y = 1.0 / (1.0 + np.exp(-slope * (x - knee)))
    y = (y - y[0]) / (y[-1] - y[0])
    return np.round(255.0 * y**gamma).astype(np.uint8)


def _to_pixels(ctx: _Ctx, box: Box) -> tuple[float, float, float, float]:
    """A patient-frame box as (x, y, w, h) in pixels of the output, through the image's pose."""
    f = ctx.fine
    corners = np.array([[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]])
    p = f.px(corners) + 0.5  # pixel edges
    size = float(ctx.size)
    x0 = float(np.clip(p[:, 0].min(), 0.0, size - 1.0))
    y0 = float(np.clip(p[:, 1].min(), 0.0, size - 1.0))
    x1 = float(np.clip(p[:, 0].max(), x0 + 1.0, size))
    y1 = float(np.clip(p[:, 1].max(), y0 + 1.0, size))
    return (round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2))
