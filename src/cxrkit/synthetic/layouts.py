"""A synthetic chest X-ray dataset generator that writes the real on-disk layouts.

``cxrkit synth --layout chexpert|nih|mimic`` samples patients, studies and findings with realistic
co-occurrence, renders a film per image with the findings planted (:mod:`cxrkit.synthetic.render`)
and writes exactly the files the real dataset ships: CheXpert's ``train.csv`` / ``valid.csv`` and
``train/patientNNNNN/studyN/viewN_frontal.jpg``; NIH's ``Data_Entry_2017_v2020.csv``, ``images/``,
``train_val_list.txt`` / ``test_list.txt``; MIMIC-CXR-JPG's ``files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg`` and
its ``mimic-cxr-2.0.0-*.csv.gz``. Besides, every layout gets:

- ``BBox_List_2017.csv``: the planted findings' boxes in NIH's format, in this image's pixels (the
  NIH layout names images by file name, the others by path relative to the dataset folder);
- ``synthetic_truth.csv``: what was planted in each image (0/1 per finding), the ground truth that
  CheXpert-style noisy, uncertain and blank labels are drawn from;
- ``synthetic.json``: the settings, written last: its presence marks a complete dataset.

Everything is a function of the seed: the same settings give the same bytes. A killed run resumes:
images already written are kept (each is written atomically), the rest are rendered.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError, did_you_mean
from cxrkit.core.fileio import write_bytes_atomic, write_text_atomic
from cxrkit.core.findings import CHEXPERT_FINDINGS, NIH_NAMES, NO_FINDING, NON_PATHOLOGY, PARENT
from cxrkit.core.parallel import process_pool, usable_cores

LAYOUTS = ("chexpert", "nih", "mimic")
CHEXPERT_DIR = "CheXpert-v1.0-small"
MIMIC_PREFIX = "mimic-cxr-2.0.0-"

#: Base log-odds of each planted finding (frontal film, average patient): CheXpert-like rates,
#: a little richer for the rarest so that small synthetic sets still have positives.
_LOGIT_CHEXPERT = {
    "Enlarged Cardiomediastinum": -2.4,
    "Cardiomegaly": -1.9,
    "Lung Opacity": -1.9,
    "Lung Lesion": -2.8,
    "Edema": -1.6,
    "Consolidation": -2.3,
    "Pneumonia": -2.9,
    "Atelectasis": -1.5,
    "Pneumothorax": -2.3,
    "Pleural Effusion": -1.0,
    "Pleural Other": -3.5,
    "Fracture": -3.0,
    "Support Devices": -0.3,
}
_LOGIT_NIH = {
    "Atelectasis": -2.2,
    "Cardiomegaly": -2.9,
    "Pleural Effusion": -2.0,
    "Infiltration": -1.6,
    "Mass": -2.9,
    "Nodule": -2.8,
    "Pneumonia": -3.6,
    "Pneumothorax": -2.9,
    "Consolidation": -3.1,
    "Edema": -3.4,
    "Emphysema": -3.4,
    "Fibrosis": -3.6,
    "Pleural Thickening": -3.3,
    "Hernia": -4.2,
}
#: How strongly each finding follows the shared "how sick" and "heart failure" factors.
_SICK = {
    "Support Devices": 1.0,
    "Pleural Effusion": 0.8,
    "Edema": 0.7,
    "Atelectasis": 0.6,
    "Consolidation": 0.6,
    "Pneumonia": 0.5,
    "Lung Opacity": 0.6,
    "Infiltration": 0.5,
}
_CARDIAC = {
    "Cardiomegaly": 1.2,
    "Enlarged Cardiomediastinum": 1.0,
    "Edema": 1.2,
    "Pleural Effusion": 0.8,
}
#: Per-finding rate at which a not-planted finding is still mentioned as negative in the report.
_NEG_MENTION = {
    "Pneumothorax": 0.3,
    "Pleural Effusion": 0.25,
    "Edema": 0.15,
    "Consolidation": 0.2,
    "Cardiomegaly": 0.1,
    "Enlarged Cardiomediastinum": 0.15,
    "Support Devices": 0.05,
}

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


@dataclass
class _Image:
    path: str  # relative to the dataset folder
    patient: int
    study: int  # index into the layout's study list
    view: str  # frontal / lateral
    projection: str  # AP / PA / LATERAL / LL
    number: int  # global image number: the image's own random stream


@dataclass
class _Study:
    patient: int
    ordinal: int  # the patient's n-th study
    truth: dict[str, bool]
    split: str = "train"
    age: int = 60
    images: list[_Image] = field(default_factory=list)


@dataclass(frozen=True)
class SynthSettings:
    layout: str
    n: int
    size: int
    seed: int

    def to_dict(self) -> dict:
        return {
            "layout": self.layout,
            "n": self.n,
            "size": self.size,
            "seed": self.seed,
            "cxrkit_version": __version__,
        }


def _sample_truth(rng: np.random.Generator, logits: dict[str, float]) -> dict[str, bool]:
    sick, cardiac = rng.normal(), rng.normal()
    truth = {}
    for f, a in logits.items():
        z = a + _SICK.get(f, 0.3) * sick + _CARDIAC.get(f, 0.0) * cardiac
        truth[f] = bool(rng.random() < 1 / (1 + np.exp(-z)))
    # Planted truth follows the hierarchy: a pneumonia is drawn as a consolidation, and so on.
    for child, parent in (("Pneumonia", "Consolidation"),):
        if truth.get(child) and parent in truth:
            truth[parent] = True
    return truth


def _chexpert_label(rng: np.random.Generator, finding: str, truth: dict[str, bool]) -> float:
    """One noisy report label: 1, 0, -1 or NaN (not mentioned), drawn from the planted truth."""
    planted = truth.get(finding, False)
    implied = finding in set(PARENT.values()) and any(
        truth.get(c) for c, p in PARENT.items() if p == finding
    )
    u = rng.random()
    if planted or implied:
        if implied and not planted and u < 0.6:
            return np.nan  # CheXpert often leaves a parent blank when a child is positive
        return 1.0 if u < 0.82 else (-1.0 if u < 0.96 else np.nan)
    q = _NEG_MENTION.get(finding, 0.08)
    return 0.0 if u < q else (-1.0 if u < q + 0.04 else np.nan)


def _full_truth(truth: dict[str, bool], findings: Sequence[str]) -> dict[str, bool]:
    """Truth over ``findings``, parents positive when a child is, No Finding derived."""
    out = {f: bool(truth.get(f, False)) for f in findings}
    for child, parent in PARENT.items():
        if out.get(child) and parent in out:
            out[parent] = True
    for child, parent in PARENT.items():  # twice: Pneumonia → Consolidation → Lung Opacity
        if out.get(child) and parent in out:
            out[parent] = True
    if NO_FINDING in out:
        out[NO_FINDING] = not any(v for f, v in out.items() if f not in NON_PATHOLOGY)
    return out


def _plan(settings: SynthSettings) -> tuple[list[_Study], list[_Image]]:
    """Sample patients, studies, views and planted findings until ``n`` images exist."""
    rng = np.random.default_rng([settings.seed, 0])
    layout = settings.layout
    logits = _LOGIT_NIH if layout == "nih" else _LOGIT_CHEXPERT
    studies_per_patient = {"chexpert": 2.6, "nih": 3.6, "mimic": 3.3}[layout]
    lateral_rate = {"chexpert": 0.17, "nih": 0.0, "mimic": 0.45}[layout]
    studies: list[_Study] = []
    images: list[_Image] = []
    patient = 0
    while len(images) < settings.n:
        patient += 1
        n_studies = 1 + rng.poisson(studies_per_patient - 1)
        age = int(rng.integers(18, 90))
        for k in range(n_studies):
            if len(images) >= settings.n:
                break
            study = _Study(
                patient=patient,
                ordinal=k + 1,
                truth=_sample_truth(rng, logits),
                age=min(age + k, 90),
            )
            views = ["frontal"] + (["lateral"] if rng.random() < lateral_rate else [])
            for v_i, view in enumerate(views):
                if len(images) >= settings.n:
                    break
                proj = ("AP" if rng.random() < 0.75 else "PA") if view == "frontal" else "LATERAL"
                images.append(
                    _Image(
                        path="",
                        patient=patient,
                        study=len(studies),
                        view=view,
                        projection=proj,
                        number=len(images),
                    )
                )
                study.images.append(images[-1])
                del v_i
            studies.append(study)
    _assign_splits(settings, studies, rng)
    _assign_paths(settings, studies)
    return studies, images


def _assign_splits(
    settings: SynthSettings, studies: list[_Study], rng: np.random.Generator
) -> None:
    patients = sorted({s.patient for s in studies})
    perm = rng.permutation(len(patients))
    if settings.layout == "chexpert":
        # CheXpert's valid set: a few patients with one study each, labelled by radiologists.
        n_valid = max(1, round(0.03 * len(patients))) if len(patients) > 3 else 0
        valid = {patients[i] for i in perm[:n_valid]}
        for s in studies:
            if s.patient in valid:
                s.split = "valid" if s.ordinal == 1 else "drop"
    elif settings.layout == "nih":
        n_test = round(0.23 * len(patients))
        test = {patients[i] for i in perm[:n_test]}
        for s in studies:
            s.split = "test" if s.patient in test else "train_val"
    else:
        n_test, n_val = round(0.05 * len(patients)), round(0.01 * len(patients))
        order = {patients[i]: j for j, i in enumerate(perm)}
        for s in studies:
            j = order[s.patient]
            s.split = "test" if j < n_test else ("validate" if j < n_test + n_val else "train")
    if settings.layout == "chexpert":
        # The valid patients' later studies are not part of the dataset; give them to new patients
        # in train so that the image count stays n.
        for s in studies:
            if s.split == "drop":
                s.split = "train"
                s.patient = -s.patient  # renumbered below
        _renumber_patients(studies)


def _renumber_patients(studies: list[_Study]) -> None:
    train = [s for s in studies if s.split == "train"]
    valid = [s for s in studies if s.split == "valid"]
    mapping: dict[int, int] = {}
    for s in train:
        mapping.setdefault(s.patient, len(mapping) + 1)
    n_train = len(mapping)
    for s in valid:
        mapping.setdefault(s.patient, len(mapping) + 1)
    ordinals: dict[int, int] = {}
    for s in train + valid:
        s.patient = mapping[s.patient]
        ordinals[s.patient] = ordinals.get(s.patient, 0) + 1
        s.ordinal = ordinals[s.patient]
        for im in s.images:
            im.patient = s.patient
    del n_train


def _assign_paths(settings: SynthSettings, studies: list[_Study]) -> None:
    for s_i, s in enumerate(studies):
        for v, im in enumerate(s.images, start=1):
            if settings.layout == "chexpert":
                im.path = f"{s.split}/patient{s.patient:05d}/study{s.ordinal}/view{v}_{im.view}.jpg"
            elif settings.layout == "nih":
                im.path = f"images/{s.patient:08d}_{s.ordinal - 1:03d}.png"
            else:
                subject = 10_000_000 + s.patient
                study_id = 50_000_000 + s_i
                im.path = f"files/p{str(subject)[:2]}/p{subject}/s{study_id}/{_dicom_id(settings.seed, im.number)}.jpg"


def _dicom_id(seed: int, number: int) -> str:
    h = np.random.default_rng([seed, 3, number]).integers(0, 2**32, 5, dtype=np.uint64)
    return "-".join(f"{int(x):08x}" for x in h)


# ---- rendering (parallel, resumable) ----------------------------------------------------------


def _render_one(task: tuple) -> tuple[int, dict[str, tuple[float, float, float, float]]]:
    from cxrkit.synthetic.render import render, sample_anatomy

    number, folder, path, seed, patient, findings, view, size, is_png = task
    anatomy = sample_anatomy(np.random.default_rng([seed, 1, patient]))
    image, boxes = render(
        anatomy, findings, size=size, view=view, rng=np.random.default_rng([seed, 2, number])
    )
    target = Path(folder) / path
    if not target.exists():
        ok, buf = cv2.imencode(
            ".png" if is_png else ".jpg",
            image,
            [cv2.IMWRITE_PNG_COMPRESSION, 1] if is_png else [cv2.IMWRITE_JPEG_QUALITY, 92],
        )
        if not ok:
            raise RuntimeError(f"could not encode {path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, buf.tobytes())
    return number, boxes


def _render_all(
    tasks: list[tuple], workers: int, progress: Callable[[int], None] | None
) -> dict[int, dict]:
    boxes: dict[int, dict] = {}
    with contextlib.ExitStack() as stack:
        if workers <= 1 or len(tasks) < 64:
            results: Iterator = map(_render_one, tasks)
        else:
            pool = stack.enter_context(process_pool(workers))
            results = pool.imap_unordered(_render_one, tasks, chunksize=16)
        for number, b in results:
            boxes[number] = b
            if progress:
                progress(1)
    return boxes


# ---- writers ---------------------------------------------------------------------------------


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


def generate(
    layout: str,
    out: str | Path,
    *,
    n: int = 1000,
    size: int = 256,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a synthetic dataset in ``layout``'s on-disk format; returns the dataset folder.

    The dataset folder is ``out`` for ``nih`` and ``mimic`` and ``out/CheXpert-v1.0-small`` for
    ``chexpert`` (as the real archive unpacks). Running again with the same settings does nothing;
    a killed run resumes.

    Args:
        layout: ``chexpert``, ``nih`` or ``mimic``.
        out: output folder.
        n: number of images.
        size: image side in pixels (32 to 1024).
        seed: the seed: same settings, same bytes.
        workers: processes (default: the machine's cores).
        progress: called with the number of images finished, for a progress bar.
    """
    if layout not in LAYOUTS:
        raise CxrkitError(did_you_mean(layout, LAYOUTS, what="layout"))
    if not 1 <= n <= 2_000_000:
        raise CxrkitError(f"--n must be between 1 and 2,000,000; got {n}.")
    if not 32 <= size <= 1024:
        raise CxrkitError(f"--size must be between 32 and 1024 pixels; got {size}.")
    if seed < 0:
        raise CxrkitError(f"--seed must be 0 or more; got {seed}.")
    settings = SynthSettings(layout, n, size, seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CxrkitError(f"--out '{out}' is a file: give a folder for the dataset.")
    folder = out / CHEXPERT_DIR if layout == "chexpert" else out
    marker = folder / "synthetic.json"
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except (json.JSONDecodeError, OSError):
            done = None
        if done and {k: done.get(k) for k in ("layout", "n", "size", "seed")} == {
            k: v for k, v in settings.to_dict().items() if k != "cxrkit_version"
        }:
            return folder
        raise CxrkitError(
            f"'{out}' already holds a synthetic dataset made with other settings "
            f"({done}); choose another --out folder."
        )
    partial = folder / ".synthetic-partial"
    if partial.is_file() and json.loads(partial.read_text() or "{}") != settings.to_dict():
        raise CxrkitError(
            f"'{out}' holds an unfinished synthetic dataset made with other settings "
            f"({partial.read_text()}); rerun with those settings or choose another --out."
        )
    if out.exists() and any(out.iterdir()) and not partial.is_file():
        raise CxrkitError(f"'{out}' exists and is not empty: choose a new --out folder.")
    folder.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps(settings.to_dict()))

    studies, images = _plan(settings)
    findings_of = {
        i: [f for f, v in studies[im.study].truth.items() if v] for i, im in enumerate(images)
    }
    tasks = [
        (
            im.number,
            str(folder),
            im.path,
            seed,
            im.patient,
            findings_of[im.number],
            im.view,
            size,
            layout == "nih",
        )
        for im in images
    ]
    boxes = _render_all(tasks, workers or usable_cores(), progress)
    {"chexpert": _write_chexpert, "nih": _write_nih, "mimic": _write_mimic}[layout](
        folder, settings, studies
    )
    _write_truth_and_boxes(folder, settings, studies, images, boxes)
    write_text_atomic(marker, json.dumps(settings.to_dict(), indent=2))
    partial.unlink()
    return folder
