"""The index: one row per image, raw tri-state labels under canonical finding names.

Written by ``cxrkit index`` as one Parquet file; its schema metadata says how it was made (dataset,
root folder, source files and their SHA-256, cxrkit version) and carries the dataset's bounding
boxes when it has any.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError, preview
from cxrkit.core.fileio import read_tagged_parquet, sha256_file, write_tagged_parquet
from cxrkit.core.findings import FINDINGS

log = logging.getLogger(__name__)

#: The columns every index has, before the finding columns.
META_COLUMNS: tuple[str, ...] = (
    "path",  # image path relative to the index's root folder, "/"-separated
    "patient_id",
    "study_id",
    "view",  # frontal / lateral / other / <NA>
    "projection",  # AP / PA / LL / LATERAL / ... / <NA>, as the dataset spells it, upper case
    "sex",  # F / M / <NA>
    "age",  # years, float, NaN when unknown
    "dataset",
    "official_split",  # the dataset's own split: train / valid / test / train_val / <NA>
)
BOX_COLUMNS: tuple[str, ...] = ("path", "finding", "x", "y", "w", "h")
_META_KEY = b"cxrkit"


@dataclass
class Index:
    """An index in memory.

    Attributes:
        frame: one row per image: :data:`META_COLUMNS`, then one float32 column per finding
            with 1 (positive), 0 (negative), -1 (uncertain) or NaN (not mentioned).
        meta: how it was made: ``dataset``, ``root``, ``findings``, ``sources`` (file → sha256),
            ``images_checked``, ``missing_dropped``, ``cxrkit_version``, ``created``.
        boxes: bounding boxes (:data:`BOX_COLUMNS`, pixel coordinates of the original image).
    """

    frame: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    boxes: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(BOX_COLUMNS)))

    @property
    def findings(self) -> list[str]:
        return list(self.meta.get("findings") or finding_columns(self.frame))

    @property
    def root(self) -> Path:
        return Path(self.meta["root"])

    def __len__(self) -> int:
        return len(self.frame)


def finding_columns(frame: pd.DataFrame) -> list[str]:
    """The finding columns of an index frame, in canonical order, then any custom ones."""
    canonical = [f for f in FINDINGS if f in frame.columns]
    custom = [c for c in frame.columns if c not in META_COLUMNS and c not in FINDINGS]
    return canonical + custom


def make_frame(meta_cols: dict[str, Any], labels: dict[str, np.ndarray], n: int) -> pd.DataFrame:
    """Assemble an index frame with the standard column order and dtypes."""
    data: dict[str, Any] = {}
    for col in META_COLUMNS:
        value = meta_cols.get(col)
        if col == "age":
            data[col] = (
                np.full(n, np.nan, np.float32)
                if value is None
                else pd.to_numeric(pd.Series(value), errors="coerce").to_numpy(np.float32)
            )
        else:
            data[col] = pd.array(
                [pd.NA] * n if value is None else np.asarray(value, object), dtype="string"
            )
    frame = pd.DataFrame(data)
    for name, values in labels.items():
        frame[name] = np.asarray(values, np.float32)
    return frame


def parse_tristate(
    values: pd.Series, column: str, source: str, *, booleans: bool = False
) -> np.ndarray:
    """Parse a label column into float32 1 / 0 / -1 / NaN, or raise one clear line.

    Accepts numbers (``1``, ``1.0``, ``-1``...) and blanks; with ``booleans`` also
    true/false/yes/no (any case).
    """
    s = values.astype("string").str.strip()
    s = s.mask(s == "", pd.NA)
    if booleans:
        low = s.str.lower()
        s = s.mask(low.isin(["true", "yes", "t", "y"]), "1").mask(
            low.isin(["false", "no", "f", "n"]), "0"
        )
    num = pd.to_numeric(s, errors="coerce")
    bad = (num.notna() & ~num.isin([1, 0, -1])) | (s.notna() & num.isna())
    if bad.any():
        pos = np.flatnonzero(bad.to_numpy())
        examples = [f"'{values.iloc[i]}' (row {i + 1})" for i in pos[:3]]
        allowed = "1/0/-1/blank" + ("/true/false" if booleans else "")
        raise CxrkitError(
            f"{source}: column '{column}' has {len(pos)} value(s) outside {allowed}, e.g. "
            f"{', '.join(examples)}. Fix those cells or drop the column from the labels."
        )
    return num.to_numpy(np.float32, na_value=np.nan)


def require_columns(frame: pd.DataFrame, columns: list[str], source: str, hint: str) -> None:
    """Raise one clear line naming the missing columns and the ones found instead."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CxrkitError(
            f"{source}: missing column(s) {preview([repr(m) for m in missing])}; found "
            f"{preview([repr(str(c)) for c in frame.columns], 8)}. {hint}"
        )


def check_rows(frame: pd.DataFrame, source: str) -> None:
    """Refuse an empty index or duplicate image paths."""
    if frame.empty:
        raise CxrkitError(
            f"{source}: the dataset has no image rows. Check that the label file is not empty."
        )
    dup = frame["path"].duplicated(keep=False)
    if dup.any():
        paths = frame.loc[dup, "path"].drop_duplicates()
        raise CxrkitError(
            f"{source}: {len(paths)} image path(s) appear more than once "
            f"(first: {preview(paths.tolist(), 3)}). Each image must be listed once: "
            "remove the duplicate rows."
        )


def check_images(
    frame: pd.DataFrame, root: Path, *, drop_missing: bool
) -> tuple[pd.DataFrame, int]:
    """Check every image exists under ``root``; drop the missing ones or raise one clear line."""
    root_s = str(root)
    exists = np.fromiter(
        (os.path.isfile(os.path.join(root_s, p)) for p in frame["path"].tolist()), bool, len(frame)
    )
    n_missing = int((~exists).sum())
    if n_missing == 0:
        return frame, 0
    first = frame.loc[~exists, "path"].tolist()
    if not drop_missing:
        raise CxrkitError(
            f"{n_missing:,} of {len(frame):,} images are missing under '{root}' (first: "
            f"{preview(first, 3)}). Check the root folder, or pass --drop-missing to index the "
            "rest, or --no-check-images to index the label files alone."
        )
    log.warning(
        "dropped %d of %d rows whose image is missing (first: %s)",
        n_missing,
        len(frame),
        preview(first, 3),
    )
    kept = frame.loc[exists].reset_index(drop=True)
    if kept.empty:
        raise CxrkitError(
            f"none of the {len(frame)} images exist under '{root}': check the root folder."
        )
    return kept, n_missing


def finalize(
    frame: pd.DataFrame,
    *,
    dataset: str,
    root: Path,
    sources: list[Path],
    check: bool,
    drop_missing: bool,
    boxes: pd.DataFrame | None = None,
    extra: dict[str, Any] | None = None,
) -> Index:
    """The common last step of every adapter: checks, image existence, provenance."""
    source = f"{dataset} index of '{root}'"
    check_rows(frame, source)
    n_dropped = 0
    if check:
        frame, n_dropped = check_images(frame, root, drop_missing=drop_missing)
    meta = {
        "dataset": dataset,
        "root": str(root.resolve()),
        "findings": finding_columns(frame),
        "sources": {p.name: sha256_file(p) for p in sources},
        "images_checked": bool(check),
        "missing_dropped": n_dropped,
        "n_rows": len(frame),
        "cxrkit_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    if boxes is None:
        boxes = pd.DataFrame(columns=list(BOX_COLUMNS))
    return Index(frame=frame, meta=meta, boxes=boxes.reset_index(drop=True))


def write_index(index: Index, path: str | os.PathLike[str]) -> Path:
    """Write an index to Parquet atomically, with its provenance in the schema metadata."""
    meta = dict(index.meta)
    meta["boxes"] = index.boxes.to_dict(orient="list") if len(index.boxes) else None
    return write_tagged_parquet(index.frame, path, _META_KEY, meta)


def read_index(path: str | os.PathLike[str]) -> Index:
    """Read an index written by :func:`write_index`; a file that is not one is a clear error."""
    frame, meta = read_tagged_parquet(
        path, _META_KEY, "index file", f"cxrkit index DATASET ROOT --out {path}"
    )
    boxes_d = meta.pop("boxes", None)
    boxes = pd.DataFrame(boxes_d) if boxes_d else pd.DataFrame(columns=list(BOX_COLUMNS))
    for col in META_COLUMNS:
        if col != "age" and col in frame.columns:
            frame[col] = frame[col].astype("string")
    return Index(frame=frame, meta=meta, boxes=boxes)


def index_fingerprint(frame: pd.DataFrame) -> str:
    """SHA-256 of the index's identity: its image paths and patients, in order.

    Artifacts made from an index (splits, caches) record it, so that one made for another index,
    or for the same index with rows added, removed or reordered, is refused instead of misused.
    """
    import hashlib

    h = hashlib.sha256()
    for col in ("path", "patient_id"):
        h.update("\x1f".join(frame[col].astype(str).tolist()).encode())
        h.update(b"\x1e")
    return h.hexdigest()
