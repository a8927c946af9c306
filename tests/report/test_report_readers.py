"""The report of a file scoring with readers: reader points on the ROC curves and a readers table."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from cxrkit.evaluate.files import score_files
from cxrkit.report.build import build_report

FINDINGS = ["Cardiomegaly", "Edema"]


def test_report_shows_the_readers(tmp_path):
    rng = np.random.default_rng(0)
    n = 160
    y = (rng.random((n, 2)) < 0.35).astype(int)
    paths = [f"test/patient{i:05d}/study1/view1_frontal.jpg" for i in range(n)]
    lab = pd.DataFrame(y, columns=FINDINGS).assign(Path=paths)
    lab.to_csv(tmp_path / "l.csv", index=False)
    logits = y * 2.0 + rng.normal(0, 1, y.shape)  # not probabilities: ranks only
    pd.DataFrame(logits, columns=FINDINGS).assign(Path=paths).to_csv(
        tmp_path / "p.csv", index=False
    )
    files = []
    for r in range(2):
        read = np.where(rng.random(y.shape) < 0.2, 1 - y, y)
        files.append(tmp_path / f"reader{r + 1}.csv")
        pd.DataFrame(read, columns=FINDINGS).assign(Path=paths).to_csv(files[-1], index=False)
    score_files(
        tmp_path / "p.csv", tmp_path / "l.csv", readers=files, n_boot=50, out=tmp_path / "ev"
    )
    page, summary = build_report(tmp_path / "ev")
    titles = json.loads((page.parent / "report.json").read_text())["sections"]
    assert "Readers" in titles and titles.index("Readers") > titles.index("Curves")
    html = page.read_text()
    assert "reader1" in html and "reader2" in html and "ROC curve" in html and "McNemar" in html
    assert "roc" in summary["figures"]
