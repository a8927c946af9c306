"""The command line as a user meets it: real process, exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import assert_one_line_error
from cxrkit.labels import LabelPolicy


def test_python_m_cxrkit_error_is_one_line_without_traceback(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "cxrkit", "index", "nih", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "not a NIH ChestX-ray14 folder")
    assert proc.returncode == 1


def test_version_and_help(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("cxrkit ")
    code, out, _ = run_cli("--help")
    assert code == 0
    for command in ("index", "labels", "synth", "demo"):
        assert command in out


def test_index_then_labels_with_json_and_policy_file(tmp_path: Path, run_cli):
    csv = tmp_path / "l.csv"
    csv.write_text("path,pid,Edema,Atelectasis\na.png,1,1,-1\nb.png,2,0,\nc.png,3,-1,1\n")
    for n in "abc":
        (tmp_path / f"{n}.png").write_bytes(b"x")
    code, out, err = run_cli(
        "index", "generic", csv, "--patient-col", "pid", "--out", tmp_path / "i.parquet"
    )
    assert code == 0, err
    assert "3 images, 3 patients" in out
    code, out, err = run_cli(
        "labels",
        tmp_path / "i.parquet",
        "--uncertain",
        "zeros",
        "--uncertain-for",
        "Atelectasis=ones",
        "--json",
        tmp_path / "t.json",
        "--save-policy",
        tmp_path / "p.yaml",
    )
    assert code == 0, err
    table = {r["finding"]: r for r in json.loads((tmp_path / "t.json").read_text())["table"]}
    assert table["Edema"]["positive"] == 1 and table["Edema"]["negative"] == 2
    assert table["Atelectasis"]["positive"] == 2 and table["Atelectasis"]["negative"] == 1
    saved = LabelPolicy.from_dict(yaml.safe_load((tmp_path / "p.yaml").read_text()))
    assert saved.uncertain == "zeros" and saved.uncertain_per_finding == {"Atelectasis": "ones"}
    code, out2, _ = run_cli("labels", tmp_path / "i.parquet", "--policy", tmp_path / "p.yaml")
    assert code == 0 and "Atelectasis" in out2
    code, _, err = run_cli("labels", tmp_path / "i.parquet", "--uncertain-for", "Atelectasis")
    assert_one_line_error(code, err, "FINDING=POLICY")
