"""Frontal findings of the pleura, bones, diaphragm and support devices.

Each ``_f_<finding>(ctx, g, rng)`` draws one planted finding on a frontal view and returns its box
in the patient frame; each ``_f_<finding>_geo(g, rng)`` changes the anatomy before it is drawn.
"""

from __future__ import annotations

import math

import numpy as np

from cxrkit.synthetic.anatomy import (
    _APEX_MEDIAL,
    _OUTER,
    _dome_profile,
    _Fracture,
    _Geo,
    _lateral_u,
)
from cxrkit.synthetic.lung_findings import _lung_point, _pick_lung
from cxrkit.synthetic.raster import Box, _bbox, _bezier, _blob, _Ctx, _union


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
