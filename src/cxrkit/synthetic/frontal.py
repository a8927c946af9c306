"""The frontal (PA/AP) view: body, lungs, mediastinum and heart, bones, lung markings, findings.

:func:`_render_frontal` applies the findings that change the anatomy (:data:`_GEO_EFFECTS`), paints
the anatomy, then draws each finding (:data:`_FRONTAL`) and records its box.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np

from cxrkit.synthetic.anatomy import (
    _HILUM_UV,
    _N_TREES,
    Anatomy,
    _add_mottle,
    _Geo,
    _parenchyma,
    _vessel_tree,
)
from cxrkit.synthetic.chest_findings import (
    _f_effusion,
    _f_fracture,
    _f_fracture_geo,
    _f_hernia,
    _f_pleural_other,
    _f_pleural_thickening,
    _f_pneumothorax,
    _f_pneumothorax_geo,
    _f_support_devices,
)
from cxrkit.synthetic.lung_findings import (
    _f_atelectasis,
    _f_cardiomegaly,
    _f_cardiomegaly_geo,
    _f_consolidation,
    _f_ecm,
    _f_ecm_geo,
    _f_edema,
    _f_emphysema,
    _f_emphysema_geo,
    _f_fibrosis,
    _f_fibrosis_geo,
    _f_infiltration,
    _f_lung_lesion,
    _f_lung_opacity,
    _f_mass,
    _f_nodule,
    _f_pneumonia,
)
from cxrkit.synthetic.raster import Box, _bbox, _Ctx, _ellipse_pts


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
