"""The per-dataset files of a synthetic dataset: CheXpert, NIH and MIMIC-CXR-JPG label tables.

Writes CheXpert's ``train.csv`` / ``valid.csv``; NIH's ``Data_Entry_2017_v2020.csv``,
``train_val_list.txt`` / ``test_list.txt``; MIMIC-CXR-JPG's ``mimic-cxr-2.0.0-*.csv.gz``; and, for
every layout, ``synthetic_truth.csv`` and ``BBox_List_2017.csv``. Labels are drawn from the planted
truth with their own seeded streams, so the same settings give the same bytes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cxrkit.core.fileio import write_bytes_atomic, write_text_atomic
from cxrkit.core.findings import CHEXPERT_FINDINGS, NIH_NAMES, NO_FINDING
from cxrkit.synthetic.plan import (
    _LOGIT_CHEXPERT,
    _LOGIT_NIH,
    SynthSettings,
    _chexpert_label,
    _full_truth,
    _Image,
    _Study,
)

CHEXPERT_DIR = "CheXpert-v1.0-small"
MIMIC_PREFIX = "mimic-cxr-2.0.0-"

_CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
_NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
_NIH_OF = {v: k for k, v in NIH_NAMES.items()}
_BOX_NAME = {**_NIH_OF, "Infiltration": "Infiltrate"}  # BBox_List_2017 says "Infiltrate"
_MIMIC_LABELS = sorted(CHEXPERT_FINDINGS)
_MIMIC_META_HEADER = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]


def _fmt(v: float) -> str:
    return "" if np.isnan(v) else f"{v:.1f}"


def _csv_text(header: Sequence[str] | str, rows: list[Sequence[object]]) -> str:
    buf = io.StringIO()
    if isinstance(header, str):
        buf.write(header + "\n")
    w = csv.writer(buf, lineterminator="\n")
    if not isinstance(header, str):
        w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _write_gz(path: Path, text: str) -> None:
    import gzip

    write_bytes_atomic(path, gzip.compress(text.encode(), mtime=0))


def _label_rng(settings: SynthSettings, study_index: int, which: int = 0) -> np.random.Generator:
    return np.random.default_rng([settings.seed, 4, which, study_index])


def _write_chexpert(folder: Path, settings: SynthSettings, studies: list[_Study]) -> None:
    rows = {"train": [], "valid": []}
    sex_of = {}
    for s_i, s in enumerate(studies):
        rng = _label_rng(settings, s_i)
        truth = _full_truth(s.truth, CHEXPERT_FINDINGS)
        if s.split == "valid":
            labels = [f"{float(truth[f]):.1f}" for f in CHEXPERT_FINDINGS]
        else:
            labels = []
            for f in CHEXPERT_FINDINGS:
                if f == NO_FINDING:
                    v = 1.0 if truth[f] and rng.random() < 0.9 else np.nan
                else:
                    v = _chexpert_label(rng, f, s.truth)
                labels.append(_fmt(v))
        sex = sex_of.setdefault(
            s.patient, "Female" if (s.patient * 7919 + settings.seed) % 2 else "Male"
        )
        for im in s.images:
            ap_pa = im.projection if im.view == "frontal" else ""
            rows[s.split].append(
                [f"{CHEXPERT_DIR}/{im.path}", sex, s.age, im.view.capitalize(), ap_pa, *labels]
            )
    for split, r in rows.items():
        write_text_atomic(folder / f"{split}.csv", _csv_text(_CHEXPERT_HEADER, r))


def _write_nih(folder: Path, settings: SynthSettings, studies: list[_Study]) -> None:
    rows, lists = [], {"train_val": [], "test": []}
    spacing = round(0.143 * 1024 / settings.size, 3)
    for s in studies:
        names = [_NIH_OF[f] for f, v in s.truth.items() if v]
        label = "|".join(sorted(names)) or "No Finding"
        sex = "F" if (s.patient * 7919 + settings.seed) % 2 else "M"
        for im in s.images:
            name = im.path.split("/")[-1]
            rows.append(
                [
                    name,
                    label,
                    s.ordinal - 1,
                    s.patient,
                    s.age,
                    sex,
                    im.projection,
                    settings.size,
                    settings.size,
                    spacing,
                    spacing,
                ]
            )
            lists[s.split].append(name)
    write_text_atomic(folder / "Data_Entry_2017_v2020.csv", _csv_text(_NIH_HEADER, rows))
    write_text_atomic(folder / "train_val_list.txt", "".join(f"{n}\n" for n in lists["train_val"]))
    write_text_atomic(folder / "test_list.txt", "".join(f"{n}\n" for n in lists["test"]))


def _write_mimic(folder: Path, settings: SynthSettings, studies: list[_Study]) -> None:
    label_rows: dict[str, list] = {"chexpert": [], "negbio": []}
    meta_rows, split_rows = [], []
    for s_i, s in enumerate(studies):
        first = s.images[0]
        parts = first.path.split("/")
        subject, study_id = parts[2][1:], parts[3][1:]
        for which, labeler in enumerate(("chexpert", "negbio")):
            rng = _label_rng(settings, s_i, which)
            values = {
                f: _chexpert_label(rng, f, s.truth) for f in CHEXPERT_FINDINGS if f != NO_FINDING
            }
            nf = _full_truth(s.truth, CHEXPERT_FINDINGS)[NO_FINDING]
            values[NO_FINDING] = 1.0 if nf and rng.random() < 0.9 else np.nan
            label_rows[labeler].append(
                [subject, study_id, *(_fmt(values[f]) for f in _MIMIC_LABELS)]
            )
        date = 21000101 + s.ordinal
        for im in s.images:
            dicom = im.path.rsplit("/", 1)[-1][:-4]
            desc = "CHEST (PA AND LAT)" if len(s.images) > 1 else "CHEST (PORTABLE AP)"
            orient = "Erect"
            view_name = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}[
                im.projection
            ]
            meta_rows.append(
                [
                    dicom,
                    subject,
                    study_id,
                    desc,
                    im.projection,
                    settings.size,
                    settings.size,
                    date,
                    "120000.000",
                    desc,
                    view_name,
                    orient,
                ]
            )
            split_rows.append([dicom, study_id, subject, s.split])
    header = ["subject_id", "study_id", *_MIMIC_LABELS]
    for labeler, rows in label_rows.items():
        _write_gz(folder / f"{MIMIC_PREFIX}{labeler}.csv.gz", _csv_text(header, rows))
    _write_gz(folder / f"{MIMIC_PREFIX}metadata.csv.gz", _csv_text(_MIMIC_META_HEADER, meta_rows))
    _write_gz(
        folder / f"{MIMIC_PREFIX}split.csv.gz",
        _csv_text(["dicom_id", "study_id", "subject_id", "split"], split_rows),
    )


def _write_truth_and_boxes(
    folder: Path,
    settings: SynthSettings,
    studies: list[_Study],
    images: list[_Image],
    boxes: dict[int, dict],
) -> None:
    findings = list(_LOGIT_NIH if settings.layout == "nih" else _LOGIT_CHEXPERT)
    truth_rows, box_rows = [], []
    for im in images:
        s = studies[im.study]
        truth = _full_truth(s.truth, findings)
        truth_rows.append(
            [im.path, im.patient, im.study, im.view, *(int(truth[f]) for f in findings)]
        )
        name = im.path.split("/")[-1] if settings.layout == "nih" else im.path
        for f, (x, y, w, h) in sorted(boxes.get(im.number, {}).items()):
            label = _BOX_NAME.get(f, f) if settings.layout == "nih" else f
            box_rows.append([name, label, f"{x:.2f}", f"{y:.2f}", f"{w:.2f}", f"{h:.2f}"])
    write_text_atomic(
        folder / "synthetic_truth.csv",
        _csv_text(["path", "patient", "study", "view", *findings], truth_rows),
    )
    write_text_atomic(
        folder / "BBox_List_2017.csv",
        _csv_text("Image Index,Finding Label,Bbox [x,y,w,h],,,", box_rows),
    )
