"""`cxrkit demo`: the whole pipeline on synthetic data, small in the default run, full under `slow`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest


def mean_auc(out: str) -> float:
    m = re.search(r"mean\s*│\s*([0-9.]+)", out)
    assert m, out[-2000:]
    return float(m.group(1))


SMALL = (
    "--n",
    "150",
    "--size",
    "48",
    "--train-size",
    "32",
    "--arch",
    "test_resnet",
    "--epochs",
    "1",
)


def test_demo_small(tmp_path: Path, run_cli):
    code, out, err = run_cli("demo", "--out", tmp_path / "demo", *SMALL)
    assert code == 0, err[-2000:]
    assert (tmp_path / "demo" / "index.parquet").is_file()
    assert "neg:pos" in out and "max dev (pp)" in out
    assert "against the planted truth" in out
    assert 0.0 <= mean_auc(out) <= 1.0
    assert list((tmp_path / "demo" / "runs").glob("*/model/model.json"))
    reports = list((tmp_path / "demo" / "runs").glob("*/report/report.html"))
    assert reports and f"report: {reports[0]}" in out.replace("\n", "")
    assert list((tmp_path / "demo" / "runs").glob("*/eval-test/metrics.json"))
    code, out2, _ = run_cli("demo", "--out", tmp_path / "demo", *SMALL)
    assert code == 0 and "reusing the trained run" in out2 and "(reused)" in out2


@pytest.mark.slow
def test_demo_learns_the_planted_findings(tmp_path: Path, run_cli):
    """The issue's bar: held-out mean AUC >= 0.90 on the planted findings, with the defaults."""
    code, out, err = run_cli("demo", "--out", tmp_path / "demo")
    assert code == 0, err[-2000:]
    assert mean_auc(out) >= 0.90
