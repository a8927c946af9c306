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

This module is the public entry (:func:`render`, and :class:`Anatomy` / :func:`sample_anatomy`
re-exported); the work is split by what it draws: :mod:`cxrkit.synthetic.raster` (pose frames,
rasters, the per-image canvas, shape helpers, film curve), :mod:`cxrkit.synthetic.anatomy` (the
patient, lung shape, vessel trees, noise fields, frontal geometry), :mod:`cxrkit.synthetic.frontal`
(the frontal view and its table of findings), :mod:`cxrkit.synthetic.lung_findings` and
:mod:`cxrkit.synthetic.chest_findings` (the frontal finding drawers) and
:mod:`cxrkit.synthetic.lateral` (the lateral view).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from cxrkit.core.findings import FINDINGS, NO_FINDING, canonical_name
from cxrkit.synthetic.anatomy import Anatomy, _grain, sample_anatomy
from cxrkit.synthetic.frontal import _render_frontal
from cxrkit.synthetic.lateral import _render_lateral
from cxrkit.synthetic.raster import _AA, _Ctx, _film_curve, _to_pixels

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
_MIN_SIZE, _MAX_SIZE = 16, 2048


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
