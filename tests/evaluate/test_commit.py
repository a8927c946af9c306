"""Evaluation after a kill at any point: the thresholds in model.json, metrics.json and the report
agree, or the report refuses in one line until `evaluate` runs again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_evaluate import runs  # noqa: F401  (the module's trained runs fixture)

from cxrkit.core.errors import CxrkitError
from cxrkit.evaluate import evaluate as evaluate_module
from cxrkit.evaluate.evaluate import EvalOptions, evaluate_model
from cxrkit.model.artifact import read_artifact_meta
from cxrkit.report.build import build_report


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not an Exception, so no handler catches it)."""


def _thresholds(eval_dir: Path) -> dict:
    return json.loads((eval_dir / "metrics.json").read_text())["operating_point"]["thresholds"]


@pytest.fixture
def run(runs, tmp_path) -> Path:  # noqa: F811
    _, a, _ = runs
    copy = tmp_path / "run"
    shutil.copytree(a, copy)
    evaluate_model(copy, EvalOptions(operating_point="youden", n_boot=0))
    return copy


def test_killed_after_the_model_json_commit_is_refused_by_the_report(run, monkeypatch):
    before = _thresholds(run / "eval-test")
    import cxrkit.model.artifact as artifact_module

    real = artifact_module.set_operating_points

    def commit_then_die(*a, **k):
        real(*a, **k)
        raise Killed

    monkeypatch.setattr(artifact_module, "set_operating_points", commit_then_die)
    with pytest.raises(Killed):
        evaluate_model(run, EvalOptions(operating_point="max_f1", n_boot=0))
    monkeypatch.undo()
    # the old evaluation is still in place, next to the new operating points
    assert _thresholds(run / "eval-test") == before
    assert read_artifact_meta(run / "model").thresholds != before
    with pytest.raises(CxrkitError, match="disagrees with the model") as e:
        build_report(run)
    assert "\n" not in str(e.value)
    # evaluating again repairs it: the report agrees with model.json
    evaluate_model(run, EvalOptions(operating_point="max_f1", n_boot=0))
    assert _thresholds(run / "eval-test") == read_artifact_meta(run / "model").thresholds
    build_report(run)


def test_killed_before_the_model_json_commit_leaves_both_old(run, monkeypatch):
    before_eval = _thresholds(run / "eval-test")
    before_model = read_artifact_meta(run / "model").thresholds

    def die(*a, **k):
        raise Killed

    monkeypatch.setattr(evaluate_module, "write_outputs", die)
    with pytest.raises(Killed):
        evaluate_model(run, EvalOptions(operating_point="max_f1", n_boot=0))
    monkeypatch.undo()
    assert _thresholds(run / "eval-test") == before_eval
    assert read_artifact_meta(run / "model").thresholds == before_model
    build_report(run)  # consistent: the report is made


def test_a_completed_evaluation_swaps_in_whole(run):
    evaluate_model(run, EvalOptions(operating_point="max_f1", n_boot=0))
    assert _thresholds(run / "eval-test") == read_artifact_meta(run / "model").thresholds
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".eval-test")]
    assert leftovers == []
