"""Frontal findings of the lungs, heart and mediastinum, and the lung helpers all findings share.

Each ``_f_<finding>(ctx, g, rng)`` draws one planted finding on a frontal view and returns its box
in the patient frame; each ``_f_<finding>_geo(g, rng)`` changes the anatomy before it is drawn.
"""

from __future__ import annotations

import math

import numpy as np

from cxrkit.synthetic.anatomy import _Geo, _lateral_u
from cxrkit.synthetic.raster import Box, _bbox, _blob, _chaikin, _Ctx, _union


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
