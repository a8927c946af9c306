"""MIMIC-CXR-JPG 2.0.0: labels per study joined to one row per image.

Reads ``mimic-cxr-2.0.0-chexpert.csv(.gz)`` (or ``-negbio``), joins it on (subject_id, study_id)
with ``mimic-cxr-2.0.0-metadata.csv(.gz)``, records ``mimic-cxr-2.0.0-split.csv(.gz)`` as
``official_split`` (``validate`` is written ``valid``), and builds the paths
``files/p10/p10000032/s50414267/<dicom_id>.jpg``. Sex and age are not part of MIMIC-CXR-JPG; when
MIMIC-IV's ``patients.csv(.gz)`` sits in ROOT they are taken from it (``gender``, ``anchor_age``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit.core.errors import CxrkitError, did_you_mean
from cxrkit.core.findings import CHEXPERT_FINDINGS
from cxrkit.data.adapters import find_file, not_this_dataset
from cxrkit.data.index import Index, finalize, make_frame, parse_tristate, require_columns

log = logging.getLogger(__name__)

PREFIX = "mimic-cxr-2.0.0-"
LABELERS = ("chexpert", "negbio")
_FRONTAL = {"PA", "AP"}
_LATERAL = {"LATERAL", "LL", "RL"}


def _read(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise CxrkitError(f"{path}: cannot be read as CSV ({e}).") from None


def _ids(df: pd.DataFrame, cols: list[str], source: str) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        num = pd.to_numeric(out[c], errors="coerce")
        if num.isna().any():
            raise CxrkitError(
                f"{source}: column '{c}' must hold integer ids; found '{out.loc[num.isna(), c].iloc[0]}'."
            )
        out[c] = num.astype(np.int64)
    return out


def index_mimic(
    root: Path, *, check_images: bool = True, drop_missing: bool = False, labeler: str = "chexpert"
) -> Index:
    """Index a MIMIC-CXR-JPG folder (the one holding ``files/`` and the ``mimic-cxr-2.0.0-*`` CSVs).

    Args:
        labeler: which label file: ``chexpert`` (default) or ``negbio``.
    """
    if labeler not in LABELERS:
        raise CxrkitError(did_you_mean(labeler, LABELERS, what="MIMIC labeler"))
    label_file = find_file(root, f"{PREFIX}{labeler}.csv") if root.is_dir() else None
    meta_file = find_file(root, f"{PREFIX}metadata.csv") if root.is_dir() else None
    if label_file is None or meta_file is None:
        missing = [
            n
            for n, f in (
                (f"{PREFIX}{labeler}.csv(.gz)", label_file),
                (f"{PREFIX}metadata.csv(.gz)", meta_file),
            )
            if f is None
        ]
        raise not_this_dataset("mimic", root, f"found no {' and no '.join(missing)}")
    labels_df = _read(label_file)
    require_columns(
        labels_df,
        ["subject_id", "study_id"],
        str(label_file),
        f"Is this MIMIC-CXR-JPG's {PREFIX}{labeler}.csv?",
    )
    labels_df = _ids(labels_df, ["subject_id", "study_id"], str(label_file))
    if labels_df.duplicated(["subject_id", "study_id"]).any():
        raise CxrkitError(
            f"{label_file}: a (subject_id, study_id) pair appears twice; labels are one row per study."
        )
    meta_df = _read(meta_file)
    require_columns(
        meta_df,
        ["dicom_id", "subject_id", "study_id", "ViewPosition"],
        str(meta_file),
        f"Is this MIMIC-CXR-JPG's {PREFIX}metadata.csv?",
    )
    meta_df = _ids(meta_df, ["subject_id", "study_id"], str(meta_file))
    df = meta_df.merge(
        labels_df, on=["subject_id", "study_id"], how="inner", validate="many_to_one"
    )
    n_unlabelled = len(meta_df) - len(df)
    if n_unlabelled:
        log.warning(
            "%d of %d images belong to studies without a row in %s: not indexed",
            n_unlabelled,
            len(meta_df),
            label_file.name,
        )
    sources = [label_file, meta_file]
    split_file = find_file(root, f"{PREFIX}split.csv")
    official = None
    if split_file is not None:
        split_df = _read(split_file)
        require_columns(
            split_df, ["dicom_id", "split"], str(split_file), "Is this the MIMIC split file?"
        )
        split_map = dict(
            zip(
                split_df["dicom_id"], split_df["split"].replace({"validate": "valid"}), strict=False
            )
        )
        official = df["dicom_id"].map(split_map)
        sources.append(split_file)
    sex = age = None
    patients_file = find_file(root, "patients.csv")
    if patients_file is not None:
        pat = _ids(_read(patients_file), ["subject_id"], str(patients_file)).set_index("subject_id")
        if {"gender", "anchor_age"} <= set(pat.columns):
            sex = df["subject_id"].map(pat["gender"]).where(lambda s: s.isin(["M", "F"]))
            age = df["subject_id"].map(pat["anchor_age"])
            sources.append(patients_file)
    subject = df["subject_id"].astype(str)
    study = df["study_id"].astype(str)
    view_pos = df["ViewPosition"].str.strip().str.upper()
    view = np.where(
        view_pos.isin(_FRONTAL),
        "frontal",
        np.where(view_pos.isin(_LATERAL), "lateral", np.where(view_pos == "", None, "other")),
    )
    meta = {
        "path": "files/p"
        + subject.str[:2]
        + "/p"
        + subject
        + "/s"
        + study
        + "/"
        + df["dicom_id"]
        + ".jpg",
        "patient_id": subject,
        "study_id": study,
        "view": view,
        "projection": view_pos.replace("", pd.NA),
        "sex": sex,
        "age": age,
        "dataset": np.full(len(df), "mimic", object),
        "official_split": official,
    }
    labels = {
        f: parse_tristate(df[f], f, str(label_file)) for f in CHEXPERT_FINDINGS if f in df.columns
    }
    frame = make_frame(meta, labels, len(df))
    return finalize(
        frame,
        dataset="mimic",
        root=root,
        sources=sources,
        check=check_images,
        drop_missing=drop_missing,
        extra={"labeler": labeler, "unlabelled_images": n_unlabelled},
    )
