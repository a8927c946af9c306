"""Drawing primitives of the synthetic renderer: pose frames, uint8 rasters, the per-image canvas.

Geometry is written in the patient frame (``x``, ``y`` as fractions of the image side); a
:class:`_Frame` maps it onto the pixels of a raster through the image's pose, :class:`_Raster` draws
anti-aliased OpenCV polygons, lines and ellipses in fixed point, and :class:`_Ctx` holds one image's
canvases (the painted anatomy, additive layers, the full-resolution pass, the lung masks). Also the
small shape helpers (blobs, ellipses, Bezier curves, corner cutting, boxes) and the film curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import cv2
import numpy as np

_SHIFT = 4  # fixed-point bits for sub-pixel drawing with OpenCV
_FIX = float(1 << _SHIFT)
_AA = cv2.LINE_AA

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the patient frame


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
