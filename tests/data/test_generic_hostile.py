"""A generic CSV is outside data: paths that leave the image root and short rows are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_one_line_error
from cxrkit.core.errors import CxrkitError
from cxrkit.data.adapters import build_index


def _csv(tmp_path: Path, rows: list[str]) -> Path:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    path = tmp_path / "labels.csv"
    path.write_text("path,pid,Effusion\n" + "".join(r + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "bad", ["../../../../etc/passwd", "/etc/hostname", "a/../../outside.png", "C:/Windows/x.png"]
)
def test_paths_outside_the_root_are_refused(tmp_path: Path, run_cli, bad: str):
    csv = _csv(tmp_path, ["imgs/a.png,p1,1", f"{bad},p2,0"])
    with pytest.raises(CxrkitError, match="outside the image root .*line 3"):
        build_index("generic", csv, patient_col="pid", check_images=False)
    code, _, err = run_cli(
        "index",
        "generic",
        csv,
        "--patient-col",
        "pid",
        "--no-check-images",
        "--out",
        tmp_path / "i.parquet",
    )
    assert_one_line_error(code, err, "outside the image root", "--allow-outside")
    assert not (tmp_path / "i.parquet").exists()


def test_allow_outside_keeps_them(tmp_path: Path):
    csv = _csv(tmp_path, ["imgs/a.png,p1,1", "../elsewhere/b.png,p2,0"])
    index = build_index("generic", csv, patient_col="pid", check_images=False, allow_outside=True)
    assert list(index.frame["path"]) == ["imgs/a.png", "../elsewhere/b.png"]


def test_inside_paths_with_dots_are_fine(tmp_path: Path):
    csv = _csv(tmp_path, ["./imgs/a.png,p1,1", "imgs/sub/../b.png,p2,0"])
    index = build_index("generic", csv, patient_col="pid", check_images=False)
    assert len(index.frame) == 2


def test_a_short_row_is_refused_with_its_line(tmp_path: Path):
    csv = _csv(tmp_path, ["imgs/a.png,p1,1", "imgs/b.png,p2"])
    with pytest.raises(CxrkitError, match="line 3 has 2 field"):
        build_index("generic", csv, patient_col="pid", check_images=False)


def test_a_long_row_is_one_line_too(tmp_path: Path):
    csv = _csv(tmp_path, ["imgs/a.png,p1,1", "imgs/b.png,p2,0,extra,more"])
    with pytest.raises(CxrkitError, match="cannot be read as CSV") as e:
        build_index("generic", csv, patient_col="pid", check_images=False)
    assert "\n" not in str(e.value)
