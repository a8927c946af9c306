"""How well Grad-CAM maps localise findings: pointing game, IoU, and the loop over a box file.

:func:`pointing_game`, :func:`box_iou` and :func:`localization_scores` score (H, W) maps against boxes
in the map's pixels (see :func:`cxrkit.data.boxes.map_box`); :func:`evaluate_localization` runs
:class:`cxrkit.model.cam.ArtifactCAM` over every boxed image of a ``BBox_List_2017.csv``-format file
(``cxrkit evaluate --localization``). See ``docs/explain.md`` for the definitions and the reasons.

Box coordinates are continuous: pixel (row r, column c) covers ``[c, c + 1) × [r, r + 1)``, so a box
``(x, y, w, h)`` spans ``[x, x + w) × [y, y + h)`` and a pixel belongs to it when its centre does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrkit.core.errors import CxrkitError
from cxrkit.core.fileio import write_text_atomic
from cxrkit.data.boxes import group_boxes, map_box, read_box_table
from cxrkit.data.imaging import ImageReadError, read_image, resize_square, to_uint8
from cxrkit.model.artifact import artifact_folder, build_pipeline, load_artifact
from cxrkit.model.cam import ArtifactCAM

#: Pointing-game tolerance when none is given: Zhang et al.'s 15 px on a 1024-px image (NIH's size),
#: as a fraction of the map's long side (3.3 px at 224, 7.5 px at 512).
DEFAULT_TOLERANCE_FRACTION = 15 / 1024


# ---- localisation scores -------------------------------------------------------------------------


def _as_boxes(boxes: Any) -> np.ndarray:
    """(N, 4) float64 from a box, a list of boxes or an array; N may be 0."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.empty((0, 4))
    if b.shape[-1] != 4 or b.ndim > 2:
        raise ValueError(f"boxes must have shape (4,) or (N, 4), got {b.shape}")
    return b.reshape(-1, 4)


def _boxes(boxes: Any) -> np.ndarray:
    """The boxes with a positive area; none is an error (a score needs a target)."""
    b = _as_boxes(boxes)
    b = b[(b[:, 2] > 0) & (b[:, 3] > 0)]
    if len(b) == 0:
        raise ValueError(
            "no box with a positive area: a localisation score needs one (boxes that crop cut "
            "away have none; leave such records out)"
        )
    return b


def box_mask(boxes: Any, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels whose centre lies in any box (x, y, w, h) in the map's pixels.

    A box of positive area that covers no pixel centre still marks the pixel holding its centre.
    """
    h, w = shape
    mask = np.zeros((h, w), bool)
    for x, y, bw, bh in _as_boxes(boxes):
        if bw <= 0 or bh <= 0:
            continue
        c0, c1 = max(0, math.ceil(x - 0.5)), min(w, math.ceil(x + bw - 0.5))
        r0, r1 = max(0, math.ceil(y - 0.5)), min(h, math.ceil(y + bh - 0.5))
        if c1 <= c0 or r1 <= r0:
            cx, cy = int(x + bw / 2), int(y + bh / 2)
            if 0 <= cx < w and 0 <= cy < h:
                mask[cy, cx] = True
            continue
        mask[r0:r1, c0:c1] = True
    return mask


def _peak(heatmap: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of the map's maximum (pixel centre), None for a flat map.

    Several maximal pixels (a plateau, as bilinear upsampling makes at the borders): the one
    nearest their centroid.
    """
    top, bottom = float(heatmap.max()), float(heatmap.min())
    if not top > bottom:
        return None
    rows, cols = np.nonzero(heatmap >= top - 1e-6 * max(1.0, abs(top)))
    i = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return cols[i] + 0.5, rows[i] + 0.5


def _tolerance(heatmap: np.ndarray, tolerance: float | None) -> float:
    if tolerance is None:
        return DEFAULT_TOLERANCE_FRACTION * max(heatmap.shape)
    if tolerance < 0:
        raise CxrkitError(f"the pointing-game tolerance must be ≥ 0 pixels. Got {tolerance}.")
    return float(tolerance)


def _check_map(heatmap: Any) -> np.ndarray:
    m = np.asarray(heatmap, dtype=np.float32)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a (H, W) heatmap, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("the heatmap holds NaN or infinite values")
    return m


def pointing_game(heatmap: np.ndarray, boxes: Any, tolerance: float | None = None) -> bool:
    """Does the map's maximum fall within ``tolerance`` pixels of one of the boxes?

    The pointing game of Zhang et al. (2018, "Top-down neural attention by excitation backprop"),
    who count a hit within 15 px of the ground truth.

    Args:
        heatmap: (H, W) map.
        boxes: (4,) or (N, 4) boxes (x, y, w, h) in the map's pixels (see :func:`map_box`);
            boxes with no area are ignored, and at least one must have some.
        tolerance: pixels of the map; ``None`` for 15/1024 of its long side (Zhang's 15 px on a
            1024-px NIH image, whatever the input size).

    Returns:
        True for a hit. A flat map (no maximum, e.g. all zero) is a miss.
    """
    m = _check_map(heatmap)
    b = _boxes(boxes)
    tol = _tolerance(m, tolerance)
    peak = _peak(m)
    if peak is None:
        return False
    px, py = peak
    x0, y0 = b[:, 0], b[:, 1]
    x1, y1 = x0 + b[:, 2], y0 + b[:, 3]
    dx = np.maximum(np.maximum(x0 - px, 0), px - x1)
    dy = np.maximum(np.maximum(y0 - py, 0), py - y1)
    return bool(np.any(np.hypot(dx, dy) <= tol))


def box_iou(heatmap: np.ndarray, boxes: Any, threshold: float = 0.5) -> float:
    """IoU of the binarised map (values ≥ ``threshold`` × its maximum) and the union of the boxes.

    Args:
        heatmap: (H, W) map.
        boxes: (4,) or (N, 4) boxes (x, y, w, h) in the map's pixels, as for :func:`pointing_game`.
        threshold: fraction of the map's maximum, in (0, 1].

    Returns:
        IoU in [0, 1]; 0 for a map with no positive value.
    """
    if not 0.0 < threshold <= 1.0:
        raise CxrkitError(f"the IoU threshold must be in (0, 1]. Got {threshold}.")
    m = _check_map(heatmap)
    truth = box_mask(boxes, m.shape)
    top = float(m.max())
    pred = m >= threshold * top if top > 0 else np.zeros_like(truth)
    union = int(np.count_nonzero(pred | truth))
    return float(np.count_nonzero(pred & truth) / union) if union else 0.0


def localization_scores(
    records: Iterable[Mapping[str, Any]] | pd.DataFrame,
    *,
    threshold: float = 0.5,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Pointing-game hit rate and mean IoU per finding and overall.

    Args:
        records: one per (image, finding) with boxes: a mapping with ``finding`` and either
            ``heatmap`` (H, W) and ``boxes`` (N, 4) in the map's pixels (all of that finding's boxes
            in that image), or precomputed ``hit`` (bool) and ``iou`` (float). An iterator is
            consumed once, so maps need not be held in memory together.
        threshold, tolerance: as in :func:`box_iou` and :func:`pointing_game`.

    Returns:
        ``{"findings": {finding: {"n", "hits", "hit_rate", "mean_iou"}}, "overall": {"n", "hits",
        "hit_rate", "mean_iou", "macro_hit_rate", "macro_mean_iou"}, "threshold", "tolerance_px",
        "tolerance_fraction"}`` (the tolerance as given, or the default's fraction of the map side);
        findings in name order; overall pools every record, macro averages the findings; rates
        are None where n is 0.
    """
    rows = records.to_dict("records") if isinstance(records, pd.DataFrame) else records
    per: dict[str, list[tuple[bool, float]]] = {}
    for i, r in enumerate(rows):
        if "finding" not in r:
            raise ValueError(f"record {i} has no 'finding'")
        if "hit" in r and "iou" in r:
            hit, iou = bool(r["hit"]), float(r["iou"])
        elif "heatmap" in r and "boxes" in r:
            hit = pointing_game(r["heatmap"], r["boxes"], tolerance)
            iou = box_iou(r["heatmap"], r["boxes"], threshold)
        else:
            raise ValueError(f"record {i} needs 'heatmap' and 'boxes', or 'hit' and 'iou'")
        per.setdefault(str(r["finding"]), []).append((hit, iou))

    def summary(pairs: list[tuple[bool, float]]) -> dict[str, Any]:
        n, hits = len(pairs), sum(h for h, _ in pairs)
        return {
            "n": n,
            "hits": int(hits),
            "hit_rate": hits / n if n else None,
            "mean_iou": float(np.mean([u for _, u in pairs])) if n else None,
        }

    findings = {f: summary(per[f]) for f in sorted(per)}
    overall = summary([p for f in sorted(per) for p in per[f]])
    overall["macro_hit_rate"] = (
        float(np.mean([s["hit_rate"] for s in findings.values()])) if findings else None
    )
    overall["macro_mean_iou"] = (
        float(np.mean([s["mean_iou"] for s in findings.values()])) if findings else None
    )
    return {
        "findings": findings,
        "overall": overall,
        "threshold": threshold,
        "tolerance_px": tolerance,
        "tolerance_fraction": DEFAULT_TOLERANCE_FRACTION if tolerance is None else None,
    }


def evaluate_localization(
    artifact: str | Path,
    boxes: str | Path,
    *,
    root: str | Path | None = None,
    method: str = "gradcam",
    threshold: float = 0.5,
    out: str | Path | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Pointing-game hit rate and IoU of the Grad-CAM maps against boxes.

    Args:
        artifact: a model artifact folder (or a run folder holding ``model/``).
        boxes: a ``BBox_List_2017.csv``-format file (NIH's or a synthetic dataset's).
        root: the dataset folder the image names resolve in (default: the box file's folder).
        method: ``gradcam`` or ``gradcam++``.
        threshold: the map is binarised at this fraction of its maximum for the IoU.
        out: a folder to write ``localization.json`` into.
        progress: an optional callable ``progress(images_done)``.

    Returns:
        :func:`localization_scores`' dict plus ``images``, ``missing`` (box images not found),
        ``skipped`` (boxes of findings the model does not predict) and ``method``.
    """
    folder = artifact_folder(artifact)  # a run folder stands for its model/
    boxes = Path(boxes)
    root = Path(root) if root is not None else boxes.parent
    model, meta = load_artifact(folder)
    pipeline = build_pipeline(meta)
    cam = ArtifactCAM(model, meta, method=method)
    size = int(meta.image_size[0])
    table = group_boxes(read_box_table(boxes, root=root))
    labels = list(meta.labels)
    missing: list[str] = []
    skipped = 0
    images = 0

    def records():
        nonlocal skipped, images
        for path, by_finding in table.items():
            try:
                img = to_uint8(read_image(root / path))
            except ImageReadError:
                missing.append(path)
                continue
            images += 1
            small_img = resize_square(img, size, meta.fit)
            x = pipeline(torch.from_numpy(small_img)[None])
            for finding, b in by_finding.items():
                small = map_box(b, img.shape, size, meta.fit)
                if finding not in labels or not (small[:, 2] * small[:, 3] > 0).any():
                    skipped += 1
                    continue
                heat = cam(small_img, x, labels.index(finding))
                yield {
                    "finding": finding,
                    "hit": pointing_game(heat, small[small[:, 2] * small[:, 3] > 0]),
                    "iou": box_iou(heat, small[small[:, 2] * small[:, 3] > 0], threshold),
                }
            if progress:
                progress(1)

    scores = localization_scores(records(), threshold=threshold)
    if images == 0:
        raise CxrkitError(
            f"none of the {len(table)} boxed images was found under '{root}': pass --images-root "
            "with the dataset folder the box file's image names are in."
        )
    result = {
        **scores,
        "method": method,
        "boxes_file": str(boxes),
        "images": images,
        "missing": len(missing),
        "missing_examples": missing[:5],
        "skipped_boxes": skipped,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "localization.json", json.dumps(result, indent=2) + "\n")
    return result
