"""CheXpert v1.0 and v1.0-small: ``train.csv``, ``valid.csv`` and the study-level test format.

The real files' ``Path`` starts with the dataset folder's own name
(``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``); ROOT may be that folder or
its parent. Paths in the index are relative to the dataset folder (``train/patient00001/...``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.core.errors import CxrkitError, preview
from cxrkit.core.findings import CHEXPERT_FINDINGS
from cxrkit.data.adapters import find_file, not_this_dataset
from cxrkit.data.index import Index, finalize, make_frame, parse_tristate, require_columns

log = logging.getLogger(__name__)

_META = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
_SPLIT_FILES = {
    "train": ("train.csv",),
    "valid": ("valid.csv",),
    "test": ("test.csv", "test_labels.csv", "groundtruth.csv"),
}
_SEX = {"Male": "M", "Female": "F"}
_HINT = "Is this CheXpert's own train.csv / valid.csv? Its header starts: " + ",".join(_META)


def dataset_folder(root: Path) -> Path:
    """The folder holding train.csv / valid.csv: ROOT itself or a CheXpert-* folder inside it."""
    for d in (root, root / "CheXpert-v1.0-small"):
        if (d / ".synthetic-partial").is_file():
            raise CxrkitError(
                f"'{d}' holds an unfinished synthetic dataset: re-run the same `cxrkit synth` "
                "command to finish it, then index it."
            )
    if find_file(root, "train.csv", "valid.csv", *_SPLIT_FILES["test"]):
        return root
    if root.is_dir():
        subs = sorted(
            p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("chexpert")
        )
        for sub in subs:
            if find_file(sub, "train.csv", "valid.csv"):
                return sub
    raise not_this_dataset(
        "chexpert",
        root,
        "found no train.csv or valid.csv here nor in a CheXpert-* folder inside it",
    )


def _strip_prefix(paths: pd.Series) -> pd.Series:
    """Drop the leading dataset folder name (``CheXpert-v1.0-small/``) when the path has one."""
    return paths.str.replace(r"^[^/]*[Cc]he[Xx]pert[^/]*/", "", regex=True)


def _image_rows(df: pd.DataFrame, source: str, split: str) -> tuple[dict, dict, int]:
    require_columns(df, [*_META, *CHEXPERT_FINDINGS], source, _HINT)
    rel = _strip_prefix(df["Path"].astype("string").str.strip())
    parts = rel.str.split("/", n=3, expand=True)
    if parts.shape[1] < 4 or parts[3].isna().any():
        bad = rel[parts[3].isna()].tolist() if parts.shape[1] >= 4 else rel.tolist()
        raise CxrkitError(
            f"{source}: {len(bad)} Path value(s) are not of the form "
            f"'<split>/patientNNNNN/studyN/viewN_<view>.jpg' (first: {preview(bad, 3)})."
        )
    patient = parts[1]
    view = df["Frontal/Lateral"].map({"Frontal": "frontal", "Lateral": "lateral"})
    meta = {
        "path": rel,
        "patient_id": patient,
        "study_id": patient + "/" + parts[2],
        "view": view,
        "projection": df["AP/PA"].astype("string").str.strip().str.upper().replace("", pd.NA),
        "sex": df["Sex"].map(_SEX),
        "age": df["Age"],
        "dataset": np.full(len(df), "chexpert", object),
        "official_split": np.full(len(df), split, object),
    }
    labels = {f: parse_tristate(df[f], f, source) for f in CHEXPERT_FINDINGS if f in df.columns}
    return meta, labels, len(df)


def _study_rows(
    df: pd.DataFrame, folder: Path, source: str, drop_missing: bool
) -> tuple[dict, dict, int]:
    """The test-set ground-truth format: one row per ``Study``, joined to the study's images."""
    studies = _strip_prefix(df["Study"].astype("string").str.strip().str.rstrip("/"))
    paths, owner, missing = [], [], []
    for i, study in enumerate(studies.tolist()):
        d = folder / study
        files = sorted(p.name for p in d.glob("*.jpg")) if d.is_dir() else []
        if not files:
            missing.append(study)
        paths += [f"{study}/{f}" for f in files]
        owner += [i] * len(files)
    if missing and not drop_missing:
        raise CxrkitError(
            f"{source}: {len(missing)} of {len(df)} studies have no images under '{folder}' (first: "
            f"{preview(missing, 3)}). The study-level test format takes its image rows from the study "
            "folders: put the images in place, or pass --drop-missing."
        )
    owner_a = np.asarray(owner, dtype=np.int64)
    sub = df.iloc[owner_a].reset_index(drop=True)
    rel = pd.Series(paths, dtype="string")
    parts = rel.str.split("/", expand=True)
    view = rel.str.extract(r"_(frontal|lateral)\.jpg$", flags=re.IGNORECASE)[0].str.lower()
    n = len(rel)
    meta = {
        "path": rel,
        "patient_id": parts[1] if n else rel,
        "study_id": (parts[1] + "/" + parts[2]) if n else rel,
        "view": view,
        "dataset": np.full(n, "chexpert", object),
        "official_split": np.full(n, "test", object),
    }
    labels = {f: parse_tristate(sub[f], f, source) for f in CHEXPERT_FINDINGS if f in sub.columns}
    return meta, labels, n


def index_chexpert(root: Path, *, check_images: bool = True, drop_missing: bool = False) -> Index:
    """Index a CheXpert folder: every one of train.csv, valid.csv and a test CSV that is present.

    ``official_split`` records which file a row came from (``train`` / ``valid`` / ``test``).
    """
    folder = dataset_folder(root)
    metas, sources = [], []
    for split, names in _SPLIT_FILES.items():
        path = find_file(folder, *names)
        if path is None:
            continue
        source = str(path)
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise CxrkitError(f"{source}: cannot be read as CSV ({e}).") from None
        sources.append(path)
        if df.empty:
            log.warning("%s has a header but no rows", path)
            continue
        if "Study" in df.columns and "Path" not in df.columns:
            require_columns(
                df, ["Study", *CHEXPERT_FINDINGS], source, "Is this the CheXpert test ground truth?"
            )
            meta, labels, n = _study_rows(df, folder, source, drop_missing)
        else:
            meta, labels, n = _image_rows(df, source, split)
        metas.append(make_frame(meta, labels, n))
    if not metas:
        raise CxrkitError(
            f"chexpert index of '{folder}': the label files have no image rows "
            f"({', '.join(p.name for p in sources)}). Check that they are not empty."
        )
    frame = pd.concat(metas, ignore_index=True) if len(metas) > 1 else metas[0]
    for f in CHEXPERT_FINDINGS:  # a file without a finding column leaves it unlabelled there
        if f in frame.columns:
            frame[f] = frame[f].astype(np.float32)
    return finalize(
        frame,
        dataset="chexpert",
        root=folder,
        sources=sources,
        check=check_images,
        drop_missing=drop_missing,
    )
