"""Each dataset adapter on small files written in the real layout, and every bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_one_line_error
from cxrkit.core.errors import CxrkitError
from cxrkit.core.findings import CHEXPERT_FINDINGS
from cxrkit.data.adapters import build_index
from cxrkit.data.index import read_index, write_index

CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_FINDINGS)
NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8 not a real image; the index only checks existence")


def chexpert_row(path: str, view="Frontal", proj="AP", labels: dict | None = None) -> str:
    labels = labels or {}
    cells = [labels.get(f, "") for f in CHEXPERT_FINDINGS]
    return f"{path},Female,68,{view},{proj}," + ",".join(cells)


@pytest.fixture
def chexpert(tmp_path: Path) -> Path:
    d = tmp_path / "CheXpert-v1.0-small"
    rows = [
        chexpert_row(
            "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
            labels={"No Finding": "1.0", "Support Devices": "1.0"},
        ),
        chexpert_row(
            "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg",
            labels={"Cardiomegaly": "-1.0", "Lung Opacity": "1.0", "Edema": "0.0"},
        ),
        chexpert_row(
            "CheXpert-v1.0-small/train/patient00002/study2/view2_lateral.jpg",
            view="Lateral",
            proj="",
            labels={"Cardiomegaly": "-1.0", "Lung Opacity": "1.0", "Edema": "0.0"},
        ),
        chexpert_row(
            "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg",
            proj="PA",
            labels={"Pleural Effusion": "1.0"},
        ),
    ]
    d.mkdir()
    (d / "train.csv").write_text("\n".join([CHEXPERT_HEADER, *rows]) + "\n")
    valid = chexpert_row(
        "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
        labels={f: "0.0" for f in CHEXPERT_FINDINGS} | {"Edema": "1.0"},
    )
    (d / "valid.csv").write_text(CHEXPERT_HEADER + "\n" + valid + "\n")
    for line in rows + [valid]:
        touch(d / line.split(",")[0].split("/", 1)[1])
    return d


def test_chexpert_index(chexpert: Path):
    for root in (chexpert, chexpert.parent):  # the dataset folder or its parent
        ix = build_index("chexpert", root)
        f = ix.frame
        assert len(f) == 5 and f["patient_id"].nunique() == 3
        assert f["official_split"].tolist() == ["train"] * 4 + ["valid"]
        assert f["path"].iloc[0] == "train/patient00001/study1/view1_frontal.jpg"
        assert f["study_id"].tolist()[:4] == [
            "patient00001/study1",
            "patient00002/study2",
            "patient00002/study2",
            "patient00002/study1",
        ]
        assert f["view"].tolist() == ["frontal", "frontal", "lateral", "frontal", "frontal"]
        assert f["projection"].tolist()[:4] == ["AP", "AP", pd.NA, "PA"]
        assert f["sex"].iloc[0] == "F" and f["age"].iloc[0] == 68
        assert f["Cardiomegaly"].iloc[1] == -1 and f["Edema"].iloc[1] == 0
        assert np.isnan(f["Cardiomegaly"].iloc[0])
        assert ix.root == chexpert.resolve()
        assert set(ix.meta["sources"]) == {"train.csv", "valid.csv"}
        assert all(len(h) == 64 for h in ix.meta["sources"].values())


def test_index_roundtrip_is_atomic_and_keeps_provenance(chexpert: Path, tmp_path: Path):
    ix = build_index("chexpert", chexpert)
    out = tmp_path / "out" / "index.parquet"
    write_index(ix, out)
    back = read_index(out)
    pd.testing.assert_frame_equal(back.frame, ix.frame)
    assert back.meta["sources"] == ix.meta["sources"]
    assert back.meta["dataset"] == "chexpert"
    assert [p.name for p in out.parent.iterdir()] == ["index.parquet"]  # no temp file left


def test_chexpert_study_level_test_format(chexpert: Path):
    study = "CheXpert-v1.0/test/patient64741/study1"
    (chexpert / "test_labels.csv").write_text(
        "Study,"
        + ",".join(CHEXPERT_FINDINGS)
        + "\n"
        + study
        + ","
        + ",".join(["0"] * 5 + ["1"] + ["0"] * 8)
        + "\n"
    )
    touch(chexpert / "test/patient64741/study1/view1_frontal.jpg")
    touch(chexpert / "test/patient64741/study1/view2_lateral.jpg")
    f = build_index("chexpert", chexpert).frame
    test = f[f["official_split"] == "test"]
    assert test["path"].tolist() == [
        "test/patient64741/study1/view1_frontal.jpg",
        "test/patient64741/study1/view2_lateral.jpg",
    ]
    assert test["view"].tolist() == ["frontal", "lateral"]
    assert test["Edema"].tolist() == [1.0, 1.0] and test["Cardiomegaly"].tolist() == [0.0, 0.0]
    assert test["study_id"].nunique() == 1


def test_missing_images(chexpert: Path):
    (chexpert / "train/patient00002/study1/view1_frontal.jpg").unlink()
    with pytest.raises(CxrkitError, match=r"1 of 5 images are missing.*--drop-missing"):
        build_index("chexpert", chexpert)
    ix = build_index("chexpert", chexpert, drop_missing=True)
    assert len(ix.frame) == 4 and ix.meta["missing_dropped"] == 1
    assert len(build_index("chexpert", chexpert, check_images=False).frame) == 5


def write_nih(root: Path, split_dirs: bool = False, revision: bool = True) -> list[str]:
    rows = [
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
        "00000001_001.png,Cardiomegaly|Effusion|Pleural_Thickening,1,1,58,M,PA,2894,2729,0.143,0.143",
        "00000002_000.png,No Finding,0,2,81,F,AP,2500,2048,0.171,0.171",
        "00000003_000.png,Hernia|Infiltration,0,3,74,F,PA,2500,2048,0.168,0.168",
    ]
    name = "Data_Entry_2017_v2020.csv" if revision else "Data_Entry_2017.csv"
    if revision:
        (root / name).write_text(NIH_HEADER + "\n" + "\n".join(rows) + "\n")
    else:  # the 2017 file: trailing comma, ages like "057Y" in some copies
        rows = [r.replace(",57,", ",057Y,") + "," for r in rows]
        (root / name).write_text(NIH_HEADER + ",\n" + "\n".join(rows) + "\n")
    names = [r.split(",")[0] for r in rows]
    for i, n in enumerate(names):
        folder = root / (f"images_{i % 2 + 1:03d}/images" if split_dirs else "images")
        touch(folder / n)
    (root / "train_val_list.txt").write_text(
        "00000001_000.png\n00000001_001.png\n00000003_000.png\n"
    )
    (root / "test_list.txt").write_text("00000002_000.png\n")
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n00000001_001.png,Infiltrate,10.5,20,30,40\n"
        "00000001_000.png,Cardiomegaly,100,200,300,400\n"
    )
    return names


@pytest.mark.parametrize(("split_dirs", "revision"), [(False, True), (True, True), (False, False)])
def test_nih_index(tmp_path: Path, split_dirs: bool, revision: bool):
    write_nih(tmp_path, split_dirs, revision)
    ix = build_index("nih", tmp_path)
    f = ix.frame
    assert len(f) == 4 and f["patient_id"].tolist() == ["1", "1", "2", "3"]
    assert f["Pleural Effusion"].tolist() == [0, 1, 0, 0]
    assert f["Pleural Thickening"].tolist() == [0, 1, 0, 0]
    assert f["No Finding"].tolist() == [0, 0, 1, 0]
    assert f["Hernia"].tolist() == [0, 0, 0, 1] and f["Infiltration"].tolist() == [0, 0, 0, 1]
    assert f["official_split"].tolist() == ["train_val", "train_val", "test", "train_val"]
    assert f["age"].tolist() == [57, 58, 81, 74]
    assert f["view"].eq("frontal").all() and f["projection"].tolist() == ["PA", "PA", "AP", "PA"]
    assert "Lung Opacity" not in f.columns  # NIH does not label it: absent, never negative
    if split_dirs:
        assert f["path"].iloc[1] == "images_002/images/00000001_001.png"
    boxes = ix.boxes
    assert boxes["finding"].tolist() == ["Infiltration", "Cardiomegaly"]
    assert boxes["x"].iloc[0] == pytest.approx(10.5)
    assert boxes["path"].iloc[0] == f["path"].iloc[1]


def write_mimic(root: Path) -> None:
    labels = [
        "subject_id,study_id," + ",".join(sorted(CHEXPERT_FINDINGS)),
        "10000032,50414267,"
        + ",".join(["1.0" if f == "Edema" else "" for f in sorted(CHEXPERT_FINDINGS)]),
        "10000032,53189527,"
        + ",".join(["-1.0" if f == "Atelectasis" else "0.0" for f in sorted(CHEXPERT_FINDINGS)]),
    ]
    meta = [
        "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns",
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544",
        "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544",
        "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,10000032,53189527,CHEST (PA AND LAT),,3056,2544",
        "ffffffff-b0ded155-c0de8eb9-c124d10e-82c5caab,10000099,59999999,CHEST,AP,3056,2544",
    ]
    split = [
        "dicom_id,study_id,subject_id,split",
        "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,train",
        "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962,50414267,10000032,train",
        "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab,53189527,10000032,validate",
    ]
    for name, lines in (("chexpert", labels), ("metadata", meta), ("split", split)):
        (root / f"mimic-cxr-2.0.0-{name}.csv.gz").write_bytes(
            gzip.compress(("\n".join(lines) + "\n").encode())
        )
    for line in meta[1:4]:
        d, s, st = line.split(",")[:3]
        touch(root / f"files/p{s[:2]}/p{s}/s{st}/{d}.jpg")


def test_mimic_index(tmp_path: Path):
    write_mimic(tmp_path)
    ix = build_index("mimic", tmp_path)
    f = ix.frame
    assert len(f) == 3  # the image of an unlabelled study is left out
    assert (
        f["path"].iloc[0]
        == "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
    )
    assert f["view"].tolist() == ["frontal", "lateral", pd.NA]
    assert f["official_split"].tolist() == ["train", "train", "valid"]
    assert f["Edema"].tolist()[:2] == [1.0, 1.0] and np.isnan(f["Cardiomegaly"].iloc[0])
    assert f["Atelectasis"].iloc[2] == -1 and f["study_id"].nunique() == 2
    assert ix.meta["unlabelled_images"] == 1
    with pytest.raises(CxrkitError, match="no mimic-cxr-2.0.0-negbio.csv"):
        build_index("mimic", tmp_path, labeler="negbio")


def test_generic_index(tmp_path: Path):
    (tmp_path / "labels.csv").write_text(
        "file,pid,Effusion,Heart,Edema,view\n"
        "a.png,p1,1,true,,PA\nb.png,p1,0,False,-1,lateral\nc.png,p2,,yes,0,AP\n"
    )
    for n in "abc":
        touch(tmp_path / f"{n}.png")
    ix = build_index(
        "generic",
        tmp_path / "labels.csv",
        path_col="file",
        patient_col="pid",
        view_col="view",
        labels="Effusion,Heart=Cardiomegaly,Edema",
    )
    f = ix.frame
    assert ix.findings == ["Cardiomegaly", "Edema", "Pleural Effusion"]
    assert f["Pleural Effusion"].tolist()[:2] == [1, 0] and np.isnan(f["Pleural Effusion"].iloc[2])
    assert f["Cardiomegaly"].tolist() == [1, 0, 1]
    assert f["view"].tolist() == ["frontal", "lateral", "frontal"]
    assert f["patient_id"].tolist() == ["p1", "p1", "p2"]
    # default label columns: those named after known findings
    auto = build_index("generic", tmp_path / "labels.csv", path_col="file", patient_col="pid")
    assert auto.findings == ["Edema", "Pleural Effusion"]


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "old", "new", "message"),
    [
        ("chexpert", "Frontal/Lateral", "View", r"missing column\(s\) 'Frontal/Lateral'; found"),
        (
            "chexpert",
            ",-1.0,",
            ",2.0,",
            r"column 'Cardiomegaly' has 1 value\(s\) outside 1/0/-1/blank.*'2.0'",
        ),
        ("chexpert", "Cardiomegaly", "Cardiomegally", r"missing column\(s\) 'Cardiomegaly'"),
        ("nih", "Hernia|", "Hernai|", "did you mean 'Hernia'"),
        ("nih", "Patient ID", "PatientID", "column 4 is 'PatientID', expected 'Patient ID'"),
    ],
)
def test_corrupted_label_file(tmp_path: Path, chexpert: Path, dataset, old, new, message):
    """A renamed column, a value outside 1/0/-1/blank, an unknown label: one clear error each."""
    if dataset == "nih":
        root, label_file = tmp_path / "nih", tmp_path / "nih" / "Data_Entry_2017_v2020.csv"
        root.mkdir()
        write_nih(root)
    else:
        root, label_file = chexpert, chexpert / "train.csv"
    label_file.write_text(label_file.read_text().replace(old, new, 1))
    with pytest.raises(CxrkitError, match=message):
        build_index(dataset, root)


def test_duplicate_paths(chexpert: Path):
    p = chexpert / "train.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(CxrkitError, match="appear more than once"):
        build_index("chexpert", chexpert)


def test_empty_dataset(chexpert: Path):
    (chexpert / "valid.csv").unlink()
    (chexpert / "train.csv").write_text(CHEXPERT_HEADER + "\n")
    with pytest.raises(CxrkitError, match="no image rows"):
        build_index("chexpert", chexpert)


def test_folder_of_another_dataset(tmp_path: Path):
    write_nih(tmp_path)
    with pytest.raises(
        CxrkitError,
        match=r"not a CheXpert folder.*looks like a NIH ChestX-ray14 folder: try `cxrkit index nih",
    ):
        build_index("chexpert", tmp_path)
    with pytest.raises(CxrkitError, match="not a MIMIC-CXR-JPG folder"):
        build_index("mimic", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CxrkitError, match="not a NIH ChestX-ray14 folder"):
        build_index("nih", tmp_path / "empty")


def test_generic_unknown_finding_name(tmp_path: Path):
    (tmp_path / "l.csv").write_text("path,Cardiomegly\na.png,1\n")
    touch(tmp_path / "a.png")
    with pytest.raises(CxrkitError, match="did you mean 'Cardiomegaly'"):
        build_index("generic", tmp_path / "l.csv", labels="Cardiomegly")
    ix = build_index("generic", tmp_path / "l.csv", labels="Cardiomegly", allow_new_findings=True)
    assert ix.findings == ["Cardiomegly"]


def test_cli_bad_inputs_are_one_line(tmp_path: Path, chexpert: Path, run_cli):
    code, _, err = run_cli("index", "chexpert", tmp_path / "nope", "--out", tmp_path / "i.parquet")
    assert_one_line_error(code, err, "does not exist")
    (chexpert / "train/patient00001/study1/view1_frontal.jpg").unlink()
    code, _, err = run_cli("index", "chexpert", chexpert, "--out", tmp_path / "i.parquet")
    assert_one_line_error(code, err, "1 of 5 images are missing", "--drop-missing")
    assert not (tmp_path / "i.parquet").exists()
    code, out, _ = run_cli(
        "index", "chexpert", chexpert, "--out", tmp_path / "i.parquet", "--drop-missing"
    )
    assert code == 0 and "4 images" in out
    code, _, err = run_cli("labels", tmp_path / "i.parquet", "--findings", "Cardiomegly")
    assert_one_line_error(code, err, "did you mean 'Cardiomegaly'")
    code, _, err = run_cli("labels", tmp_path / "i.parquet", "--uncertain", "u_one")
    assert_one_line_error(code, err, "must be one of")
    code, _, err = run_cli("index", "cheXpert", chexpert)
    assert_one_line_error(code, err, "did you mean 'chexpert'")
    code, _, err = run_cli("labels", chexpert / "train.csv")
    assert_one_line_error(code, err, "not a Parquet index")


def test_index_fingerprint_changes_with_rows(chexpert: Path):
    from cxrkit.data.index import index_fingerprint

    f = build_index("chexpert", chexpert).frame
    fp = index_fingerprint(f)
    assert fp == index_fingerprint(f.copy()) and len(fp) == 64
    assert fp != index_fingerprint(f.iloc[::-1])
    assert fp != index_fingerprint(f.iloc[1:])
    g = f.copy()
    g.loc[0, "patient_id"] = "patient99999"
    assert fp != index_fingerprint(g)


def test_nih_official_lists_must_be_disjoint(tmp_path: Path):
    write_nih(tmp_path)
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n00000001_000.png\n")
    with pytest.raises(CxrkitError, match="in both train_val_list.txt and test_list.txt"):
        build_index("nih", tmp_path)


def test_nih_header_only_is_empty(tmp_path: Path):
    write_nih(tmp_path)
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text(NIH_HEADER + "\n")
    with pytest.raises(CxrkitError, match="no image rows"):
        build_index("nih", tmp_path)


def test_generic_blank_patient_id(tmp_path: Path):
    (tmp_path / "l.csv").write_text("path,pid,Edema\na.png,p1,1\nb.png,,0\n")
    with pytest.raises(CxrkitError, match="no patient id"):
        build_index("generic", tmp_path / "l.csv", patient_col="pid", check_images=False)


def test_unfinished_synthetic_folder(tmp_path: Path):
    d = tmp_path / "CheXpert-v1.0-small"
    d.mkdir()
    (d / ".synthetic-partial").write_text("{}")
    with pytest.raises(CxrkitError, match="unfinished synthetic dataset"):
        build_index("chexpert", tmp_path)
