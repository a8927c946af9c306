"""The real CheXpert and NIH label files, at full scale (skipped when ../shared/data is absent).

Expected counts are computed here from the raw files with the csv module, independently of the
adapters, except the published dataset sizes the issue names.
"""

from __future__ import annotations

import csv
import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cxrkit.core.findings import CHEXPERT_FINDINGS, NIH_NAMES
from cxrkit.data.adapters import build_index
from cxrkit.data.labels import LabelPolicy

pytestmark = pytest.mark.realdata


def _link(src: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / src.name).symlink_to(src)


def _raw_rows(path: Path) -> list[dict[str, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def chexpert_train(shared_data: Path, tmp_path_factory):
    src = shared_data / "labels/chexpert/train.csv.gz"
    root = tmp_path_factory.mktemp("chexpert") / "CheXpert-v1.0-small"
    _link(src, root)
    return build_index("chexpert", root.parent, check_images=False), _raw_rows(src)


def test_chexpert_train_full_scale(chexpert_train):
    ix, raw = chexpert_train
    f = ix.frame
    assert len(f) == len(raw) == 223_414
    assert f["patient_id"].nunique() == 64_540
    assert int((f["view"] == "frontal").sum()) == 191_027
    for finding in CHEXPERT_FINDINGS:
        want = Counter(r[finding] for r in raw)
        col = f[finding].to_numpy()
        got = {
            "1.0": int((col == 1).sum()),
            "0.0": int((col == 0).sum()),
            "-1.0": int((col == -1).sum()),
            "": int(np.isnan(col).sum()),
        }
        assert got == {k: want.get(k, 0) for k in got}, finding
        assert sum(got.values()) == len(raw)


def test_chexpert_policy_at_full_scale(chexpert_train):
    ix, raw = chexpert_train
    t = LabelPolicy(uncertain="ones", blank="zero", hierarchy="none").apply(ix.frame)
    j = t.findings.index("Edema")
    raw_pos = sum(r["Edema"] in ("1.0", "-1.0") for r in raw)
    assert int(t.y[:, j].sum()) == raw_pos and t.mask.all()
    # the hierarchy fix only ever adds parent positives
    h = LabelPolicy(uncertain="ones", blank="zero").apply(ix.frame)
    k = h.findings.index("Lung Opacity")
    assert (h.y[:, k] >= t.y[:, k]).all() and h.y[:, k].sum() > t.y[:, k].sum()


def test_chexpert_valid(shared_data: Path, tmp_path: Path):
    _link(shared_data / "labels/chexpert/valid.csv", tmp_path)
    f = build_index("chexpert", tmp_path, check_images=False).frame
    assert len(f) == 234
    assert set(np.unique(f[list(CHEXPERT_FINDINGS)].to_numpy())) <= {0.0, 1.0}
    assert (f["official_split"] == "valid").all()


@pytest.fixture(scope="module")
def nih(shared_data: Path, tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    for name in (
        "Data_Entry_2017_v2020.csv.gz",
        "BBox_List_2017.csv.gz",
        "train_val_list.txt",
        "test_list.txt",
    ):
        _link(shared_data / "labels/nih" / name, root)
    return build_index("nih", root, check_images=False), _raw_rows(
        root / "Data_Entry_2017_v2020.csv.gz"
    )


def test_nih_full_scale(nih):
    ix, raw = nih
    f = ix.frame
    assert len(f) == len(raw) == 112_120
    assert f["patient_id"].nunique() == 30_805
    want = Counter(label for r in raw for label in r["Finding Labels"].split("|"))
    for nih_name, canonical in NIH_NAMES.items():
        assert int(f[canonical].sum()) == want[nih_name], nih_name
        assert set(np.unique(f[canonical])) <= {0.0, 1.0}
    assert len(ix.boxes) == 984
    assert set(ix.boxes["finding"]) <= set(NIH_NAMES.values())
    assert "Infiltration" in set(ix.boxes["finding"])  # the box file says "Infiltrate"


def test_nih_official_lists_are_patient_disjoint(nih):
    f = nih[0].frame
    counts = f["official_split"].value_counts()
    assert counts["train_val"] == 86_524 and counts["test"] == 25_596
    tv = set(f.loc[f["official_split"] == "train_val", "patient_id"])
    te = set(f.loc[f["official_split"] == "test", "patient_id"])
    assert not tv & te


def test_nih_993_real_images_with_file_check(shared_data: Path):
    root = shared_data / "nih-993-64px"
    ix = build_index("nih", root)  # images checked
    assert len(ix.frame) == 993 and ix.frame["patient_id"].nunique() == 264
    assert ix.frame["path"].str.startswith("images/").all()
