"""The synthetic generator: real layouts that the adapters read, determinism, resume, label rates."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_one_line_error
from cxrkit.core.errors import CxrkitError
from cxrkit.core.findings import CHEXPERT_FINDINGS, PARENT
from cxrkit.data.adapters import build_index
from cxrkit.data.adapters.nih import read_boxes
from cxrkit.data.labels import LabelPolicy
from cxrkit.synthetic.layouts import generate


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def chexpert_synth(tmp_path_factory) -> Path:
    return generate("chexpert", tmp_path_factory.mktemp("cx"), n=300, size=64, seed=1, workers=2)


def test_chexpert_layout_indexes(chexpert_synth: Path):
    assert chexpert_synth.name == "CheXpert-v1.0-small"
    ix = build_index("chexpert", chexpert_synth.parent)  # every image must exist
    f = ix.frame
    assert len(f) == 300
    assert set(f["official_split"]) == {"train", "valid"}
    assert (
        f["path"]
        .str.match(r"^(train|valid)/patient\d{5}/study\d+/view\d_(frontal|lateral)\.jpg$")
        .all()
    )
    per_patient = f.groupby("patient_id")["study_id"].nunique()
    assert per_patient.max() >= 2  # several studies per patient
    assert 0.05 < (f["view"] == "lateral").mean() < 0.35
    valid = f[f["official_split"] == "valid"]
    assert set(np.unique(valid[list(CHEXPERT_FINDINGS)].to_numpy())) <= {0.0, 1.0}
    train = f[f["official_split"] == "train"][list(CHEXPERT_FINDINGS)].to_numpy()
    assert 0.02 < (train == -1).mean() < 0.2  # uncertain labels, at realistic rates
    assert 0.4 < np.isnan(train).mean() < 0.9  # most labels blank, as in CheXpert
    assert not set(valid["patient_id"]) & set(f.loc[f["official_split"] == "train", "patient_id"])


def test_chexpert_parents_left_blank_sometimes(chexpert_synth: Path):
    f = build_index("chexpert", chexpert_synth.parent).frame
    inconsistent = sum(int(((f[c] == 1) & f[p].isna()).sum()) for c, p in PARENT.items())
    assert inconsistent > 0  # so the hierarchy fix has work to do, as on the real data
    fixed = LabelPolicy(hierarchy="positive").apply(f)
    for c, p in PARENT.items():
        jc, jp = fixed.findings.index(c), fixed.findings.index(p)
        assert (fixed.y[:, jp] >= fixed.y[:, jc]).all()


def test_truth_and_boxes(chexpert_synth: Path):
    truth = pd.read_csv(chexpert_synth / "synthetic_truth.csv")
    assert len(truth) == 300 and set(truth.columns[:4]) == {"path", "patient", "study", "view"}
    ix = build_index("chexpert", chexpert_synth.parent)
    assert set(truth["path"]) == set(ix.frame["path"])
    valid = ix.frame[ix.frame["official_split"] == "valid"].merge(
        truth, on="path", suffixes=("", "_t")
    )
    for f in ("Cardiomegaly", "Edema", "Pleural Effusion"):
        assert (valid[f] == valid[f"{f}_t"]).all()  # radiologist-grade labels equal the truth
    boxes = read_boxes(chexpert_synth / "BBox_List_2017.csv", {})
    assert len(boxes) > 0
    assert set(boxes["path"]) <= set(truth["path"])
    assert (
        (boxes["x"] >= 0)
        & (boxes["y"] >= 0)
        & (boxes["x"] + boxes["w"] <= 64.5)
        & (boxes["y"] + boxes["h"] <= 64.5)
        & (boxes["w"] > 0)
    ).all()
    merged = boxes.merge(truth, on="path")
    for f, rows in merged.groupby("finding"):
        if f in truth.columns:
            assert (rows[f] == 1).all(), f  # a box only where the finding was planted


def test_nih_layout(tmp_path: Path):
    folder = generate("nih", tmp_path, n=150, size=64, seed=2, workers=1)
    ix = build_index("nih", folder)
    f = ix.frame
    assert len(f) == 150 and (f["view"] == "frontal").all()
    assert f["path"].str.match(r"^images/\d{8}_\d{3}\.png$").all()
    tv = set(f.loc[f["official_split"] == "train_val", "patient_id"])
    te = set(f.loc[f["official_split"] == "test", "patient_id"])
    assert tv and te and not tv & te and len(tv) + len(te) == f["patient_id"].nunique()
    truth = pd.read_csv(folder / "synthetic_truth.csv").set_index("path").loc[f["path"]]
    for finding in ("Cardiomegaly", "Pleural Effusion", "Infiltration", "Nodule"):
        assert (f[finding].to_numpy() == truth[finding].to_numpy()).all()
    assert len(ix.boxes) > 0 and set(ix.boxes["path"]) <= set(f["path"])
    header = (folder / "Data_Entry_2017_v2020.csv").read_text().splitlines()[0]
    assert header.startswith("Image Index,Finding Labels,Follow-up #,Patient ID")


def test_mimic_layout(tmp_path: Path):
    folder = generate("mimic", tmp_path, n=120, size=64, seed=3, workers=1)
    for labeler in ("chexpert", "negbio"):
        f = build_index("mimic", folder, labeler=labeler).frame
        assert len(f) == 120
        assert f["path"].str.match(r"^files/p1\d/p1\d{7}/s\d{8}/[0-9a-f-]+\.jpg$").all()
        assert set(f["official_split"]) <= {"train", "valid", "test"}
        assert (f.groupby("study_id")["path"].count() > 1).any()  # frontal + lateral studies


def test_deterministic_per_seed(tmp_path: Path):
    a = generate("nih", tmp_path / "a", n=40, size=48, seed=7, workers=1)
    b = generate("nih", tmp_path / "b", n=40, size=48, seed=7, workers=2)
    c = generate("nih", tmp_path / "c", n=40, size=48, seed=8, workers=1)
    assert tree_digest(a) == tree_digest(b)
    assert tree_digest(a) != tree_digest(c)


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path):
    done = []

    def killer(k: int) -> None:
        done.append(k)
        if len(done) == 25:
            raise KeyboardInterrupt  # the user pressed Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        generate("chexpert", tmp_path / "killed", n=60, size=48, seed=5, workers=1, progress=killer)
    folder = tmp_path / "killed" / "CheXpert-v1.0-small"
    assert not (folder / "synthetic.json").exists()  # not marked complete
    assert 20 <= len(list(folder.rglob("*.jpg"))) < 60
    generate("chexpert", tmp_path / "killed", n=60, size=48, seed=5, workers=1)
    whole = generate("chexpert", tmp_path / "whole", n=60, size=48, seed=5, workers=1)
    assert tree_digest(folder) == tree_digest(whole)


def test_rerun_and_conflicts(tmp_path: Path, run_cli):
    generate("nih", tmp_path / "d", n=20, size=32, seed=0, workers=1)
    before = tree_digest(tmp_path / "d")
    generate("nih", tmp_path / "d", n=20, size=32, seed=0, workers=1)  # nothing to do
    assert tree_digest(tmp_path / "d") == before
    with pytest.raises(CxrkitError, match="other settings"):
        generate("nih", tmp_path / "d", n=21, size=32, seed=0, workers=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("mine")
    code, _, err = run_cli("synth", "--layout", "nih", "--n", "5", "--out", tmp_path / "full")
    assert_one_line_error(code, err, "not empty")
    assert (tmp_path / "full" / "x.txt").read_text() == "mine"
    code, _, err = run_cli("synth", "--layout", "chexpret", "--out", tmp_path / "new")
    assert_one_line_error(code, err, "did you mean 'chexpert'")
    code, _, err = run_cli("synth", "--size", "8", "--out", tmp_path / "new")
    assert_one_line_error(code, err, "--size")
