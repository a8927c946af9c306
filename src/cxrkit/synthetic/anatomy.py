"""The synthetic patient: body measurements, lung shape, vessel trees, noise fields, geometry.

An :class:`Anatomy` is sampled once per patient (:func:`sample_anatomy`); every study of the patient
is rendered from it. The lung outline is written in lung-local ``(u, v)`` coordinates, the vessel
trees are a small cached library (each patient gets one, mirrored and stretched), and the grain,
mottle and parenchymal textures are cached noise fields that images take crops of. :class:`_Geo` is
the frontal geometry of one image: the anatomy at this inspiration, as changed by the findings.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from cxrkit.synthetic.raster import Box, _chaikin, _Ctx

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


def _add_mottle(ctx: _Ctx, a: Anatomy) -> None:
    """Uneven soft tissue and parenchyma: a patient-fixed crop of low-frequency noise."""
    m = _mottle(ctx.res)
    oy, ox = (a.seed // 7) % ctx.res, (a.seed // 131) % ctx.res
    d = ctx.canvas
    cv2.scaleAdd(np.ascontiguousarray(m[oy : oy + ctx.res, ox : ox + ctx.res]), 3.0, d, dst=d)
