"""Box tables (NIH ``BBox_List_2017.csv`` and the synthetic datasets' boxes) and their geometry.

:func:`read_box_table` reads a box file into :data:`cxrkit.data.index.BOX_COLUMNS` (boxes in the
original image's pixels), :func:`group_boxes` groups it per image and finding, and :func:`map_box`
moves boxes to the network input's pixels exactly as :func:`cxrkit.data.imaging.resize_square` moves
the image.

Box coordinates are continuous: pixel (row r, column c) covers ``[c, c + 1) × [r, r + 1)``, so a box
``(x, y, w, h)`` spans ``[x, x + w) × [y, y + h)`` and a pixel belongs to it when its centre does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.core.errors import CxrkitError, preview
from cxrkit.data.imaging import placement
from cxrkit.data.index import BOX_COLUMNS


def map_box(box_xywh: Any, orig_hw: Sequence[int], size: int, fit: str) -> np.ndarray:
    """Move boxes from original-image pixels to the pixels of ``resize_square(img, size, fit)``.

    Args:
        box_xywh: (4,) or (N, 4) boxes ``x, y, w, h`` (NIH's ``Bbox [x,y,w,h]``).
        orig_hw: (H, W) of the original image.
        size: the square side of the network input.
        fit: ``pad``, ``crop`` or ``stretch``, as the model artifact's ``fit``.

    Returns:
        float64 boxes of the same shape, clipped to the input square; a box (or its part) outside
        the square after ``crop`` keeps zero width or height.
    """
    b = np.asarray(box_xywh, dtype=np.float64)
    if b.shape[-1:] != (4,) or b.ndim > 2:
        raise ValueError(f"boxes must have shape (4,) or (N, 4), got {b.shape}")
    sx, sy, ox, oy = placement(orig_hw, size, fit).scale_offset()
    x0 = np.clip(b[..., 0] * sx + ox, 0, size)
    y0 = np.clip(b[..., 1] * sy + oy, 0, size)
    x1 = np.clip((b[..., 0] + b[..., 2]) * sx + ox, 0, size)
    y1 = np.clip((b[..., 1] + b[..., 3]) * sy + oy, 0, size)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=-1)


# ---- box tables ----------------------------------------------------------------------------------


class _SameName(dict):
    """A locations mapping that leaves every image name as written."""

    def get(self, key: Any, default: Any = None) -> Any:
        return key


def read_box_table(path: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """Read a ``BBox_List_2017.csv``-format box file (NIH's, or a synthetic dataset's).

    Columns ``Image Index, Finding Label, Bbox [x,y,w,h]`` (x, y, w, h in four columns; trailing
    empty columns allowed); finding names become canonical (``Infiltrate`` → ``Infiltration``,
    ``Effusion`` → ``Pleural Effusion``). Reuses :func:`cxrkit.data.adapters.nih.read_boxes`.

    Args:
        path: the box file.
        root: the dataset folder: image names are then resolved to paths relative to it as the
            NIH index stores them (``images_001/images/…``); ``None`` keeps the names as written.

    Returns:
        DataFrame with :data:`cxrkit.data.index.BOX_COLUMNS` (``path, finding, x, y, w, h``), boxes in the
        original image's pixels: the same layout as ``Index.boxes``.
    """
    from cxrkit.data.adapters.nih import image_locations, read_boxes

    path = Path(path)
    if not path.is_file():
        raise CxrkitError(
            f"box file '{path}' does not exist. Pass a BBox_List_2017.csv-format file "
            "(Image Index, Finding Label, x, y, w, h)."
        )
    locations = image_locations(Path(root)) if root is not None else _SameName()
    try:
        table = read_boxes(path, locations)
    except CxrkitError as e:
        raise CxrkitError(
            f"'{path}' does not read as a BBox_List_2017.csv-format box file (Image Index, Finding "
            f"Label, x, y, w, h): {str(e).removeprefix(f'{path}: ')}"
        ) from None
    return table.loc[:, list(BOX_COLUMNS)].reset_index(drop=True)


def group_boxes(table: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """``{path: {finding: (N, 4) float64 boxes}}`` from a :data:`BOX_COLUMNS` table, in table order."""
    missing = [c for c in BOX_COLUMNS if c not in table.columns]
    if missing:
        raise CxrkitError(
            f"box table lacks columns {preview(missing)}: expected {', '.join(BOX_COLUMNS)}."
        )
    out: dict[str, dict[str, np.ndarray]] = {}
    for (p, f), g in table.groupby(["path", "finding"], sort=False):
        out.setdefault(str(p), {})[str(f)] = g[["x", "y", "w", "h"]].to_numpy(np.float64)
    return out
