"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` (or its 2020 revision), images, boxes, official lists.

Quirks handled here: two header names contain unquoted commas (``OriginalImage[Width,Height]``),
so the header is matched by position, not parsed; labels are pipe-separated NIH names mapped to
canonical ones (``Effusion`` → ``Pleural Effusion``); images sit in ``images/`` or spread over
``images_001/images/`` … ``images_012/images/`` as the official archives unpack; the official
``train_val_list.txt`` / ``test_list.txt`` are recorded as ``official_split`` (``train_val`` /
``test``); ``BBox_List_2017.csv`` boxes (in the original 1024-px image's pixels) are kept with the
index.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.core.errors import CxrkitError, did_you_mean, preview
from cxrkit.core.findings import NIH_NAMES, canonical_name
from cxrkit.data.adapters import find_file, not_this_dataset
from cxrkit.data.index import BOX_COLUMNS, Index, finalize, make_frame

log = logging.getLogger(__name__)

LABEL_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
COLUMNS = (
    "Image Index",
    "Finding Labels",
    "Follow-up #",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
)


def image_locations(root: Path) -> dict[str, str]:
    """Map image file name → path relative to ``root`` over ``images/`` and ``images_NNN/images/``."""
    found: dict[str, str] = {}
    dirs = (
        [root / "images"]
        + sorted(root.glob("images_*/images"))
        + sorted(p for p in root.glob("images_*") if p.is_dir())
    )
    for d in dirs:
        if not d.is_dir():
            continue
        rel = d.relative_to(root).as_posix()
        with os.scandir(d) as it:
            for entry in it:
                if entry.name.endswith(".png") and entry.name not in found:
                    found[entry.name] = f"{rel}/{entry.name}"
    return found


def read_data_entry(path: Path) -> pd.DataFrame:
    """Read the label CSV, matching its first seven header names by position."""
    source = str(path)
    try:
        header = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].tolist()
        try:
            df = pd.read_csv(path, header=None, skiprows=1, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:  # a header and no rows
            df = pd.DataFrame(columns=range(len(COLUMNS)))
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise CxrkitError(f"{source}: cannot be read as the NIH label CSV ({e}).") from None
    header = [str(h).strip() for h in header]
    wrong = [
        (i, want, got)
        for i, (want, got) in enumerate(zip(COLUMNS, header + [""] * 7, strict=False))
        if want != got
    ]
    if wrong or df.shape[1] < len(COLUMNS):
        i, want, got = wrong[0] if wrong else (len(header), COLUMNS[len(header)], "")
        raise CxrkitError(
            f"{source}: column {i + 1} is '{got}', expected '{want}'. The NIH label file starts: "
            f"{','.join(COLUMNS)}. Use the Data_Entry_2017 file as NIH distributes it."
        )
    df = df.iloc[:, : len(COLUMNS)]
    df.columns = list(COLUMNS)
    return df


def parse_finding_labels(labels: pd.Series, source: str) -> dict[str, np.ndarray]:
    """One 0/1 column per canonical NIH finding from the pipe-separated ``Finding Labels``."""
    dummies = labels.str.strip().str.get_dummies(sep="|")
    unknown = [c for c in dummies.columns if c not in NIH_NAMES]
    if unknown:
        name = unknown[0]
        raise CxrkitError(
            f"{source}: 'Finding Labels' has an unknown label; "
            + did_you_mean(name, [k for k in NIH_NAMES], what="NIH label")
            + " Fix the label file."
        )
    return {
        canon: (
            dummies[nih].to_numpy(np.float32)
            if nih in dummies.columns
            else np.zeros(len(labels), np.float32)
        )
        for nih, canon in NIH_NAMES.items()
    }


def read_boxes(path: Path, locations: dict[str, str], default_dir: str = "images") -> pd.DataFrame:
    """Read a ``BBox_List_2017.csv``-format file (trailing empty columns allowed)."""
    source = str(path)
    try:
        df = pd.read_csv(path, header=None, skiprows=1, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise CxrkitError(f"{source}: cannot be read as a BBox_List_2017 file ({e}).") from None
    if df.shape[1] < 6:
        raise CxrkitError(
            f"{source}: expected 6 columns 'Image Index,Finding Label,Bbox [x,y,w,h]', found {df.shape[1]}."
        )
    df = df.iloc[:, :6]
    names = df[1].str.strip()
    canon = [canonical_name(n, strict=False) for n in names]
    if None in canon:
        bad = names[[c is None for c in canon]].iloc[0]
        raise CxrkitError(f"{source}: " + did_you_mean(bad, list(NIH_NAMES), what="box finding"))
    image = df[0].str.strip()
    coords = df[[2, 3, 4, 5]].apply(pd.to_numeric, errors="coerce")
    if coords.isna().any().any():
        row = int(np.flatnonzero(coords.isna().any(axis=1).to_numpy())[0])
        raise CxrkitError(f"{source}: row {row + 2} has a non-numeric box coordinate.")
    return pd.DataFrame(
        {
            "path": [locations.get(i, i if "/" in i else f"{default_dir}/{i}") for i in image],
            "finding": canon,
            "x": coords[2].to_numpy(np.float32),
            "y": coords[3].to_numpy(np.float32),
            "w": coords[4].to_numpy(np.float32),
            "h": coords[5].to_numpy(np.float32),
        },
        columns=list(BOX_COLUMNS),
    )


def _read_list(path: Path | None) -> set[str]:
    if path is None:
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def index_nih(root: Path, *, check_images: bool = True, drop_missing: bool = False) -> Index:
    """Index an NIH ChestX-ray14 folder (label CSV at ROOT, images under it)."""
    label_file = find_file(root, *LABEL_FILES) if root.is_dir() else None
    if label_file is None:
        raise not_this_dataset("nih", root, f"found no {' or '.join(LABEL_FILES)}")
    source = str(label_file)
    df = read_data_entry(label_file)
    names = df["Image Index"].str.strip()
    locations = image_locations(root)
    paths = [locations.get(n, f"images/{n}") for n in names]
    view_pos = df["View Position"].str.strip().str.upper()
    sex = df["Patient Gender"].str.strip().str.upper().where(lambda s: s.isin(["M", "F"]))
    age = pd.to_numeric(df["Patient Age"].str.extract(r"(\d+)")[0], errors="coerce")
    patient = pd.to_numeric(df["Patient ID"], errors="coerce")
    if patient.isna().any():
        bad = df.loc[patient.isna(), "Patient ID"].tolist()
        raise CxrkitError(f"{source}: 'Patient ID' must be a number; found {preview(bad, 3)}.")
    train_val = _read_list(find_file(root, "train_val_list.txt"))
    test = _read_list(find_file(root, "test_list.txt"))
    both = train_val & test
    if both:
        raise CxrkitError(
            f"{len(both):,} image(s) are in both train_val_list.txt and test_list.txt (first: "
            f"{preview(sorted(both), 3)}); the official lists must be disjoint. Use NIH's own files."
        )
    if train_val or test:
        uncovered = int((~names.isin(train_val | test)).sum())
        if uncovered:
            log.warning(
                "%d of %d images are in neither train_val_list.txt nor test_list.txt: "
                "they get no official split",
                uncovered,
                len(names),
            )
    official = np.where(
        names.isin(test), "test", np.where(names.isin(train_val), "train_val", None)
    )
    meta = {
        "path": paths,
        "patient_id": patient.astype(np.int64).astype(str),
        "study_id": names.str.replace(r"\.png$", "", regex=True),
        "view": np.where(
            view_pos.isin(["AP", "PA"]),
            "frontal",
            np.where(view_pos.isin(["LL", "RL", "LATERAL"]), "lateral", None),
        ),
        "projection": view_pos.replace("", pd.NA),
        "sex": sex,
        "age": age,
        "dataset": np.full(len(df), "nih", object),
        "official_split": official if (train_val or test) else None,
    }
    labels = parse_finding_labels(df["Finding Labels"], source)
    frame = make_frame(meta, labels, len(df))
    sources = [label_file] + [
        p
        for p in (find_file(root, "train_val_list.txt"), find_file(root, "test_list.txt"))
        if p is not None
    ]
    box_file = find_file(root, "BBox_List_2017.csv")
    boxes = read_boxes(box_file, locations) if box_file else None
    if box_file:
        sources.append(box_file)
    return finalize(
        frame,
        dataset="nih",
        root=root,
        sources=sources,
        check=check_images,
        drop_missing=drop_missing,
        boxes=boxes,
    )
