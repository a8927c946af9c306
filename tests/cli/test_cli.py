"""The command line as a user meets it: real process, exit codes, one-line errors, outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import assert_one_line_error
from cxrkit.data.labels import LabelPolicy


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


def index_csv(run_cli, csv: Path, out: Path):
    """Index a generic CSV (patients in column pid) without an image check."""
    return run_cli(
        "index", "generic", csv, "--patient-col", "pid", "--no-check-images", "--out", out
    )


def test_outputs_never_overwrite_inputs_or_folders(tmp_path: Path, run_cli):
    csv = tmp_path / "l.csv"
    csv.write_text("path,pid,Edema\na.png,1,1\nb.png,2,0\n")
    code, _, err = index_csv(run_cli, csv, csv)
    assert_one_line_error(code, err, "is an input of this command")
    assert csv.read_text().startswith("path,pid")
    (tmp_path / "adir").mkdir()
    code, _, err = index_csv(run_cli, csv, tmp_path / "adir")
    assert_one_line_error(code, err, "is a folder")
    ix = tmp_path / "i.parquet"
    assert index_csv(run_cli, csv, ix)[0] == 0
    before = ix.read_bytes()
    for args in (
        ("split", ix, "--fractions", "0.5,0.5", "--out", ix),
        ("labels", ix, "--json", ix),
    ):
        code, _, err = run_cli(*args)
        assert_one_line_error(code, err, "is an input of this command")
    assert ix.read_bytes() == before
    code, _, err = run_cli("labels", ix, "--seed", "-1")
    assert_one_line_error(code, err, "seed")


def test_written_files_follow_the_umask(tmp_path: Path, run_cli):
    import os

    csv = tmp_path / "l.csv"
    csv.write_text("path,pid,Edema\na.png,1,1\n")
    index_csv(run_cli, csv, tmp_path / "i.parquet")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "i.parquet").stat().st_mode & 0o777 == 0o666 & ~mask


def test_labels_json_is_strict_json_with_unlabelled_findings(tmp_path: Path, run_cli):
    csv = tmp_path / "l.csv"
    csv.write_text("path,pid,Edema\na.png,1,0\nb.png,2,0\n")
    ix = tmp_path / "i.parquet"
    index_csv(run_cli, csv, ix)
    code, out, _ = run_cli(
        "labels", ix, "--findings", "Edema,Hernia", "--json", tmp_path / "t.json"
    )
    assert code == 0 and "not labelled" in out
    rows = json.loads((tmp_path / "t.json").read_text(), parse_constant=lambda c: 1 / 0)["table"]
    assert rows[0]["neg_pos_ratio"] is None and rows[1]["labelled"] is False
