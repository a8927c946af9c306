"""Experiment grids: several training runs in sequence and one comparison table.

A grid file names a base config, the axes to cross and fixed overrides::

    base: thesis_densenet121_enhanced.yaml     # relative to the grid file
    name: thesis-grid
    grid:
      model.arch: [densenet121, efficientnet_b4]
      data.input_mode: [enhanced, gray3]
    overrides: [train.max_epochs=34]

Each combination trains as ``runs/<grid name>/<arch>-<mode>...``; a run that fails is recorded and
the grid goes on; a run whose model artifact exists is evaluated, not retrained. The table follows
the thesis's Table 1: model, enhancement layers, multilabel (macro) AUC, per-finding AUC and
accuracy on the test part, with the training time.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from cxrkit.core.config import Config, load_config
from cxrkit.core.errors import CxrkitError
from cxrkit.core.fileio import write_text_atomic

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


def evaluate_run(folder: Path, cfg: Config, part: str = "test") -> dict[str, Any]:
    """Per-finding AUROC, macro AUC and accuracy at 0.5 of a run's model artifact on one part."""
    import torch

    from cxrkit.data.loader import make_datamodule
    from cxrkit.evaluate.inference import masked_auroc, predict_part, scoring_mask
    from cxrkit.model.artifact import load_artifact

    model, meta = load_artifact(folder / "model")
    dm = make_datamodule(cfg)
    probs, rows = predict_part(model, dm, part, meta.output)
    ds = dm.datasets[part]
    y, mask = ds.y.numpy(), scoring_mask(ds.y, ds.mask, meta.output).numpy()
    aucs = masked_auroc(torch.from_numpy(probs), torch.from_numpy(y), torch.from_numpy(mask))
    correct = ((probs >= 0.5) == (y >= 0.5)) & mask
    valid = [a for a in aucs if a == a]
    return {
        "findings": list(meta.labels),
        "auc": dict(zip(meta.labels, aucs, strict=True)),
        "macro_auc": float(np.mean(valid)) if valid else float("nan"),
        "accuracy": float(correct.sum() / max(mask.sum(), 1)),
        "n": int(len(rows)),
    }


def run_grid(path: str | Path, overrides: list[str] | None = None) -> pd.DataFrame:
    """Train and evaluate every combination; write ``comparison.md``/``.csv``/``.json``; return the table."""
    from cxrkit.train.loop import run_folder, train

    base, name, combos, fixed = read_grid(path)
    rows = []
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
            ev = evaluate_run(folder, cfg)
            row.update(
                multilabel_auc=ev["macro_auc"],
                accuracy=ev["accuracy"],
                **{f"{f} AUC": a for f, a in ev["auc"].items()},
                status="ok",
            )
        except (CxrkitError, Exception) as e:  # a failed run is recorded, the grid goes on
            log.error(
                "run %s failed: %s", label, str(e).splitlines()[0] if str(e) else type(e).__name__
            )
            log.debug("%s", traceback.format_exc())
            row["status"] = f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        rows.append(row)
    table = pd.DataFrame(rows)
    if out_dir is None:
        out_dir = Path("runs") / name
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "comparison.csv", table.to_csv(index=False))
    write_text_atomic(
        out_dir / "comparison.json",
        json.dumps(table.to_dict(orient="records"), indent=2, default=str),
    )
    write_text_atomic(out_dir / "comparison.md", _markdown(table))
    return table


def _markdown(table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if c not in ("run",)]
    lines = ["| " + " | ".join(["run", *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    for _, r in table.iterrows():
        cells = [str(r["run"])]
        for c in cols:
            v = r.get(c)
            cells.append(
                f"{v:.3f}"
                if isinstance(v, float) and v == v
                else ("" if v is None or v != v else str(v))
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
