"""Config values have declared ranges: a value outside one is one line naming the key and the range."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_one_line_error
from cxrkit.core.config import RANGES, Config, load_config
from cxrkit.core.errors import CxrkitError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("data.batch_size=0", "'data.batch_size' must be at least 1"),
        ("data.batch_size=-4", "'data.batch_size' must be at least 1"),
        ("train.max_epochs=-1", "'train.max_epochs' must be at least 1"),
        ("train.max_epochs=0", "'train.max_epochs' must be at least 1"),
        ("optim.lr=-1", "'optim.lr' must be above 0"),
        ("optim.lr=0", "'optim.lr' must be above 0"),
        ("optim.lr=.nan", "'optim.lr'"),
        ("data.num_workers=-1", "'data.num_workers' must be at least 0"),
        ("schedule.pct_start=1.5", "'schedule.pct_start'"),
        ("model.drop_rate=2", "'model.drop_rate'"),
    ],
)
def test_out_of_range_values_are_refused(override: str, fragment: str, run_cli, tmp_path) -> None:
    with pytest.raises(CxrkitError, match=fragment.replace("'", "'").replace(".", r"\.")):
        load_config(None, [override])
    code, _, err = run_cli("train", override, f"train.out={tmp_path}")
    assert_one_line_error(code, err, fragment.split(" must")[0])


def test_limits_are_inclusive_where_declared() -> None:
    assert load_config(None, ["data.batch_size=1", "data.num_workers=0"]).data.batch_size == 1


def test_a_top_level_list_is_one_line(tmp_path, run_cli) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("- data\n- model\n")
    with pytest.raises(CxrkitError, match="must hold a mapping"):
        load_config(cfg)
    code, _, err = run_cli("train", cfg)
    assert_one_line_error(code, err, "mapping")


def test_defaults_and_shipped_configs_are_in_range() -> None:
    Config()
    for path in sorted((REPO / "configs").glob("*.yaml")):
        try:
            load_config(path)
        except CxrkitError as e:  # a grid file is not a training config
            assert "grid" in path.name or "key" in str(e), (path, e)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(sorted(RANGES)), value=st.floats() | st.integers())
def test_any_number_is_accepted_in_range_or_refused_in_one_line(key: str, value) -> None:
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except CxrkitError as e:
        assert "\n" not in str(e)
        return
    section, name = key.split(".")
    got = getattr(getattr(cfg, section), name)
    lo, hi, lo_in = RANGES[key]
    assert got == got and (lo is None or (got >= lo if lo_in else got > lo))
    assert hi is None or got <= hi
