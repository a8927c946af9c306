"""The lateral view (simplified): anterior to the image's left, the spine on the right.

The lateral view draws the same patient with its findings as simple shapes; it records no boxes.
"""

from __future__ import annotations

import numpy as np

from cxrkit.synthetic.anatomy import _N_TREES, Anatomy, _add_mottle, _vessel_tree
from cxrkit.synthetic.raster import _bbox, _bezier, _blob, _chaikin, _Ctx, _ellipse_pts

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
