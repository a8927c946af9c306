"""metrics.json is written from and read into typed results, with a schema version."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cxrkit.core.errors import CxrkitError
from cxrkit.evaluate.files import score_files
from cxrkit.evaluate.results import SCHEMA_VERSION, EvalResults, read_results, write_outputs


def _scored(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (60, 2))
    keys = [f"valid/patient{i // 2:05d}/study1/view{i % 2 + 1}_frontal.jpg" for i in range(60)]
    pd.DataFrame({"Path": keys, "Edema": y[:, 0], "Cardiomegaly": y[:, 1]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    p = np.clip(0.4 * y + 0.6 * rng.random((60, 2)), 0, 1)
    pd.DataFrame({"Path": keys, "Edema": p[:, 0], "Cardiomegaly": p[:, 1]}).to_csv(
        tmp_path / "pred.csv", index=False
    )
    return score_files(tmp_path / "pred.csv", tmp_path / "labels.csv", n_boot=20, out=tmp_path)


def test_results_round_trip(tmp_path):
    result, folder = _scored(tmp_path)
    assert isinstance(result, EvalResults)
    again = read_results(folder)
    assert again == result
    assert again.to_dict() == result.to_dict()
    on_disk = json.loads((folder / "metrics.json").read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk == result.to_dict()
    assert again.main.findings["Edema"].auroc == on_disk["image"]["findings"]["Edema"]["auroc"]
    assert result["image"]["findings"]["Edema"]["auroc"] == again.image.findings["Edema"].auroc
    write_outputs(tmp_path / "copy", pd.DataFrame({"a": [1]}), again)
    assert read_results(tmp_path / "copy" / "metrics.json") == result


def test_results_without_version_are_version_1_and_newer_is_refused(tmp_path):
    result, folder = _scored(tmp_path)
    data = json.loads((folder / "metrics.json").read_text())
    del data["schema_version"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert read_results(tmp_path / "old.json").schema_version == 1
    data["schema_version"] = SCHEMA_VERSION + 1
    (tmp_path / "new.json").write_text(json.dumps(data))
    with pytest.raises(CxrkitError, match="newer than this cxrkit reads") as e:
        read_results(tmp_path / "new.json")
    assert "\n" not in str(e.value)
