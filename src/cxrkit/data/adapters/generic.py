"""Any CSV of image paths and label columns.

Label columns hold 1 / 0 / -1 / blank or true / false (yes / no); their names are mapped to
canonical finding names (``Effusion`` → ``Pleural Effusion``). A name that is not a known finding
is an error with a suggestion, unless ``allow_new_findings`` keeps it as a custom finding.

A CSV is outside data: a row with fewer fields than the header is refused (naming its line) rather
than read as blank labels, and a path that leaves the image root (absolute, a drive letter, or
climbing out with ``..``) is refused unless ``allow_outside`` is given.
"""

from __future__ import annotations

import csv
import logging
import posixpath
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.core.errors import CxrkitError, did_you_mean
from cxrkit.core.findings import FINDINGS, canonical_name
from cxrkit.data.index import Index, finalize, make_frame, parse_tristate, require_columns

log = logging.getLogger(__name__)

_VIEWS = {
    "frontal": "frontal",
    "lateral": "lateral",
    "pa": "frontal",
    "ap": "frontal",
    "ll": "lateral",
    "rl": "lateral",
    "lat": "lateral",
}
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}


def _parse_label_spec(spec: str | Sequence[str] | None) -> list[tuple[str, str | None]]:
    """``"Effusion,Heart=Cardiomegaly"`` → [("Effusion", None), ("Heart", "Cardiomegaly")]."""
    if spec is None:
        return []
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    out = []
    for item in items:
        col, _, name = item.partition("=")
        out.append((col.strip(), name.strip() or None))
    return out


def _check_row_lengths(path: Path) -> None:
    """Refuse a row with fewer fields than the header (pandas would fill them with blanks)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        for row in reader:
            if row and len(row) < len(header):
                raise CxrkitError(
                    f"{path}: line {reader.line_num} has {len(row)} field(s), the header has "
                    f"{len(header)}: a short row would be read as blank labels. Fix the CSV."
                )


_DRIVE = re.compile(r"^[A-Za-z]:")


def _outside(paths: pd.Series) -> np.ndarray:
    """Which relative paths leave the image root: absolute, drive-lettered, or climbing with ``..``."""
    return np.array(
        [
            p.startswith("/")
            or bool(_DRIVE.match(p))
            or posixpath.normpath(p).split("/")[0] == ".."
            for p in paths
        ],
        bool,
    )


def index_generic(
    root: Path,
    *,
    check_images: bool = True,
    drop_missing: bool = False,
    path_col: str = "path",
    labels: str | Sequence[str] | None = None,
    patient_col: str | None = None,
    study_col: str | None = None,
    view_col: str | None = None,
    sex_col: str | None = None,
    age_col: str | None = None,
    image_root: str | Path | None = None,
    allow_new_findings: bool = False,
    allow_outside: bool = False,
) -> Index:
    """Index a CSV file (``root``); image paths are relative to ``image_root`` (default: its folder).

    Args:
        path_col: the column of image paths.
        labels: label columns, ``COL`` or ``COL=Canonical Name``, comma-separated; default: every
            column whose name is a known finding.
        patient_col, study_col, view_col, sex_col, age_col: optional metadata columns. Without a
            patient column each image counts as its own patient (splits cannot group by patient:
            a warning says so).
        allow_new_findings: keep label names that are not canonical findings as custom findings.
        allow_outside: accept image paths outside the image root.
    """
    if root.is_dir():
        raise CxrkitError(
            f"'{root}' is a folder: the generic dataset takes the CSV file itself as ROOT."
        )
    source = str(root)
    try:
        df = pd.read_csv(root, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CxrkitError(f"{source}: cannot be read as CSV ({first}).") from None
    _check_row_lengths(root)
    opt_cols = {
        "patient": patient_col,
        "study": study_col,
        "view": view_col,
        "sex": sex_col,
        "age": age_col,
    }
    wanted = [path_col] + [c for c in opt_cols.values() if c]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise CxrkitError(
            f"{source}: "
            + did_you_mean(missing[0], list(df.columns), what="column")
            + " Name the right column with the --path-col / --patient-col ... options."
        )
    spec = _parse_label_spec(labels)
    if not spec:
        spec = [
            (c, None) for c in df.columns if c not in wanted and canonical_name(c, strict=False)
        ]
        if not spec:
            raise CxrkitError(
                f"{source}: no column is named after a known finding; name the label columns with "
                "--labels COL[,COL=Finding ...]."
            )
    require_columns(df, [c for c, _ in spec], source, "Fix the --labels option.")
    label_cols: dict[str, np.ndarray] = {}
    for col, name in spec:
        target = name or col
        canon = canonical_name(target, strict=False)
        if canon is None:
            if not allow_new_findings:
                raise CxrkitError(
                    f"{source}: label column '{col}': "
                    + did_you_mean(target, FINDINGS, what="finding")
                    + " Map it with --labels 'COL=Finding', or pass --allow-new-findings to keep it."
                )
            canon = target
        if canon in label_cols:
            raise CxrkitError(
                f"{source}: two label columns map to the finding '{canon}'; keep one."
            )
        label_cols[canon] = parse_tristate(df[col], col, source, booleans=True)
    paths = df[path_col].str.strip().str.replace("\\", "/", regex=False)
    outside = _outside(paths)
    if outside.any() and not allow_outside:
        first = int(np.flatnonzero(outside)[0])
        raise CxrkitError(
            f"{source}: {int(outside.sum()):,} row(s) name images outside the image root (first "
            f"at line {first + 2}: '{paths.iloc[first][:80]}'); paths must be relative to it. Pass "
            "--allow-outside if that is intended."
        )
    if patient_col is None:
        log.warning(
            "%s: no patient column: each image counts as its own patient, so splits cannot "
            "keep a patient's images together (pass --patient-col)",
            source,
        )
    patient = df[patient_col].str.strip() if patient_col else paths
    if patient_col and (patient == "").any():
        bad = np.flatnonzero((patient == "").to_numpy())
        raise CxrkitError(
            f"{source}: {len(bad):,} row(s) have no patient id in '{patient_col}' (first at row "
            f"{bad[0] + 2}); every image needs its patient to keep splits leak-free. Fill them in."
        )
    view = df[view_col].str.strip().str.lower().map(_VIEWS) if view_col else None
    meta = {
        "path": paths,
        "patient_id": patient,
        "study_id": df[study_col].str.strip() if study_col else paths,
        "view": view,
        "projection": df[view_col].str.strip().str.upper() if view_col else None,
        "sex": df[sex_col].str.strip().str.lower().map(_SEX) if sex_col else None,
        "age": df[age_col] if age_col else None,
        "dataset": np.full(len(df), "generic", object),
    }
    frame = make_frame(meta, label_cols, len(df))
    img_root = Path(image_root) if image_root else root.parent
    if not img_root.is_dir():
        raise CxrkitError(
            f"image root '{img_root}' is not a folder: pass --image-root with the images' folder."
        )
    return finalize(
        frame,
        dataset="generic",
        root=img_root,
        sources=[root],
        check=check_images,
        drop_missing=drop_missing,
        extra={"csv": str(root.resolve())},
    )
