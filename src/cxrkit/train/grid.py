"""Experiment grids: several training runs in sequence and one comparison table.

A grid file names a base config, the axes to cross and fixed overrides::

    base: thesis_densenet121_enhanced.yaml     # relative to the grid file
    name: thesis-grid
    grid:
      model.arch: [densenet121, efficientnet_b4]
      data.input_mode: [enhanced, gray3]
    overrides: [train.max_epochs=34]

Each combination trains as ``runs/<grid name>/<arch>-<mode>...``; a run that fails is recorded and
the grid goes on; a run whose model artifact exists is evaluated, not retrained. Each run is
scored by :func:`cxrkit.evaluate.evaluate.evaluate_model` and the comparison written by
:func:`cxrkit.evaluate.compare.compare_runs`: the thesis's Table 1 (model, enhancement layers,
multilabel (macro) AUC, per-finding AUC and accuracy on the test part) and Table 2.
"""

from __future__ import annotations

import itertools
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from cxrkit.core.config import load_config
from cxrkit.core.errors import CxrkitError

log = logging.getLogger(__name__)


def read_grid(path: str | Path) -> tuple[Path | None, str, list[dict[str, Any]], list[str]]:
    """(base config path, grid name, list of override dicts, fixed overrides)."""
    path = Path(path)
    if not path.is_file():
        raise CxrkitError(f"grid file '{path}' does not exist; see configs/thesis_grid.yaml.")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"base", "name", "grid", "overrides"}
    if unknown:
        raise CxrkitError(
            f"grid file '{path}': unknown key(s) {sorted(unknown)}; allowed: base, name, grid, overrides."
        )
    base = (path.parent / data["base"]) if data.get("base") else None
    axes = data.get("grid") or {}
    if not isinstance(axes, dict) or not all(isinstance(v, list) and v for v in axes.values()):
        raise CxrkitError(f"grid file '{path}': 'grid' must map keys to non-empty lists of values.")
    combos = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    fixed = [str(o) for o in data.get("overrides") or []]
    return base, str(data.get("name") or path.stem), combos or [{}], fixed


def _run_name(combo: dict[str, Any]) -> str:
    return "-".join(str(v).replace("/", "_") for v in combo.values()) or "run"


def run_grid(path: str | Path, overrides: list[str] | None = None) -> pd.DataFrame:
    """Train and evaluate every combination; write the comparison; return the table.

    Each finished run is evaluated as ``cxrkit evaluate RUN`` does (:func:`evaluate_model` with the
    default options: Youden thresholds fitted on val, stored in the artifact, ``eval-test/``
    written), and the runs are compared by :func:`cxrkit.evaluate.compare.compare_runs` into
    ``<train.out>/<grid name>/comparison.{md,csv,json}`` (failed runs listed as failed). The
    returned table has one row per combination: ``run``, ``model``, ``enhancement``,
    ``input_mode``, ``train_minutes``, ``multilabel_auc``, ``accuracy`` (at the fitted operating
    points), ``<finding> AUC`` and ``status``.
    """
    from cxrkit.evaluate.compare import compare_runs
    from cxrkit.evaluate.evaluate import EvalOptions, evaluate_model
    from cxrkit.train.loop import run_folder, train

    base, name, combos, fixed = read_grid(path)
    rows = []
    evaluated: dict[str, Path] = {}
    out_dir: Path | None = None
    for combo in combos:
        run_over = fixed + [f"{k}={v}" for k, v in combo.items()] + list(overrides or [])
        label = _run_name(combo)
        row: dict[str, Any] = {"run": label}
        try:
            cfg = load_config(base, run_over)
            cfg = load_config(
                base, run_over + [f"train.out={Path(cfg.train.out) / name}", f"train.name={label}"]
            )
            folder = run_folder(cfg)
            out_dir = folder.parent
            row.update(
                model=cfg.model.arch,
                enhancement=cfg.data.input_mode == "enhanced",
                input_mode=cfg.data.input_mode,
            )
            t0 = time.perf_counter()
            if not (folder / "model" / "model.json").is_file():
                resume = (folder / "checkpoints" / "last.ckpt").is_file()
                train(cfg, resume=resume)
                row["train_minutes"] = round((time.perf_counter() - t0) / 60, 2)
            else:
                row["train_minutes"] = None
            evaluate_model(folder, EvalOptions())
            evaluated[label] = folder
            row["status"] = "ok"
        except (CxrkitError, Exception) as e:  # a failed run is recorded, the grid goes on
            log.error(
                "run %s failed: %s", label, str(e).splitlines()[0] if str(e) else type(e).__name__
            )
            log.debug("%s", traceback.format_exc())
            row["status"] = f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        rows.append(row)
    if out_dir is None:
        out_dir = Path("runs") / name
    failed = {r["run"]: r["status"].removeprefix("failed: ") for r in rows if r["status"] != "ok"}
    result, _ = compare_runs(list(evaluated.values()), out_dir, failed=failed)
    scores = {r["run"]: r for r in result["table"]}
    for row in rows:
        s = scores.get(row["run"])
        if s is not None:
            row.update(
                multilabel_auc=s["multilabel AUC"],
                accuracy=s["accuracy"],
                **{f"{f} AUC": s[f"{f} AUC"] for f in result["findings"]},
            )
            row["status"] = row.pop("status")  # last column, as before
    return pd.DataFrame(rows)
