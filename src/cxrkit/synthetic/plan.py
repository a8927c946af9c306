"""What a synthetic dataset holds: patients, studies, views, planted findings and report labels.

:func:`_plan` samples patients and their studies until ``n`` images exist, each study with planted
findings that co-occur realistically (shared "how sick" and "heart failure" factors), then assigns
the layout's splits, patient numbers and file paths. :func:`_chexpert_label` draws one noisy report
label (1, 0, -1 or blank) from the planted truth. Everything is a function of the seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cxrkit import __version__
from cxrkit.core.findings import NO_FINDING, NON_PATHOLOGY, PARENT

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
