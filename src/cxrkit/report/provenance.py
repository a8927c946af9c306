"""The report's first section: what was evaluated.

A model (a run or an artifact): :func:`model_section`, from ``model.json``, the run's
``config.yaml`` and its training logs. Files (``cxrkit evaluate --predictions/--labels``):
:func:`files_section`, from what ``metrics.json`` records of them (names, SHA-256, notes).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pandas as pd

from cxrkit.core.errors import CxrkitError
from cxrkit.evaluate.results import DataSummary, EvalResults
from cxrkit.evaluate.tables import fmt, table
from cxrkit.report.figures import Figure
from cxrkit.report.sections import Section


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or seconds != seconds:
        return "—"
    s = int(round(float(seconds)))
    if s < 60:
        return f"{float(seconds):.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _policy_text(policy: Any) -> str:
    if isinstance(policy, dict):
        return ", ".join(f"{k}: {v}" for k, v in policy.items()) or "default"
    return str(policy)


def _synthetic_text(data: DataSummary | None) -> str:
    """Whether the images came from the synthetic generator: its marker files beside the CSVs."""
    if data is None or not data.image_root:
        return "unknown (the evaluation recorded no data summary)"
    root = Path(data.image_root)
    if not root.is_dir():
        return f"unknown (the image root {root} is not there)"
    marks = [m for m in ("synthetic.json", "synthetic_truth.csv") if (root / m).is_file()]
    if marks:
        return f"yes: cxrkit's generator ({', '.join(marks)} in {root})"
    return f"no ({root} holds no synthetic.json)"


def _datasets(pred: pd.DataFrame | None, data: DataSummary | None, cfg: Any) -> str:
    """The dataset(s) of the evaluated images: the predictions' ``dataset`` column, else the
    index's (a merged index holds several)."""
    if pred is not None and "dataset" in pred:
        names = sorted(str(d) for d in pred["dataset"].dropna().unique())
        return ", ".join(names) or "—"
    index = data.index if data is not None else (cfg.data.index if cfg is not None else None)
    if not index or not Path(index).is_file():
        return "unknown (the index is not there)" if index else "unknown"
    from cxrkit.data.index import read_index

    try:
        idx = read_index(index)
    except CxrkitError as e:
        return f"unknown ({e})"
    if "dataset" in idx.frame:
        names = sorted(str(d) for d in idx.frame["dataset"].dropna().unique())
    else:
        names = [str(idx.meta.get("dataset", "unknown"))]
    return ", ".join(names) or "unknown"


def _kv_section(sec: Section, rows: list[list[Any]], caption: str) -> None:
    h, md = table(["", "value"], rows, caption)
    sec.html.append(h)
    sec.md.append(md)


def model_section(
    results: EvalResults,
    run: Path | None,
    artifact: Path | None,
    pred: pd.DataFrame | None = None,
    training: Figure | None = None,
) -> Section:
    """What was evaluated: the model (``model.json``), how it was trained (the run's
    ``config.yaml``), on which data, and the training curves when the run has logs."""
    from cxrkit.core.config import load_config
    from cxrkit.model.artifact import RUN_CONFIG_FILE, read_artifact_meta

    sec = Section("Model and training")
    meta = None
    if artifact is not None:
        try:
            meta = read_artifact_meta(artifact)
        except CxrkitError as e:
            sec.html.append(
                f"<p class='warn'>The model could not be read: {html.escape(str(e))}</p>"
            )
            sec.md.append(f"> The model could not be read: {e}\n")
    cfg = None
    cfg_file = run / RUN_CONFIG_FILE if run is not None else None
    if cfg_file is not None and cfg_file.is_file():
        try:
            cfg = load_config(cfg_file)
        except CxrkitError as e:
            sec.html.append(f"<p class='warn'>{html.escape(str(e))}</p>")
            sec.md.append(f"> {e}\n")
    if cfg is None:
        line = (
            "No training config beside the model (an artifact evaluated on its own): loss, "
            "optimiser, schedule and data settings are not known."
        )
        sec.html.append(f"<p>{line}</p>")
        sec.md.append(line + "\n")
    extra = meta.extra if meta is not None else {}
    rows: list[list[Any]] = []
    if meta is not None:
        h, w = meta.image_size
        rows += [
            ["model folder", str(artifact)],
            ["architecture", meta.architecture],
            ["output head", meta.output],
            ["input mode", meta.input_mode],
            ["image size", f"{h}×{w} px"],
            ["fit", meta.fit],
        ]
    if cfg is not None:
        loss = cfg.loss.name + (
            f" (gamma {cfg.loss.gamma})"
            if cfg.loss.name == "focal"
            else (f" (margin {cfg.loss.margin})" if cfg.loss.name == "auc_margin" else "")
        )
        sch = cfg.schedule
        rows += [
            [
                "backbone weights",
                cfg.model.weights or ("ImageNet" if cfg.model.pretrained else "from scratch"),
            ],
            ["loss", loss],
            [
                "optimiser",
                f"{cfg.optim.name}, lr {cfg.optim.lr:g}, weight decay {cfg.optim.weight_decay:g}",
            ],
            ["schedule", f"{sch.name} (base lr {sch.base_lr:g}, max lr {sch.max_lr:g})"],
        ]
    epochs = extra.get("epochs")
    planned = cfg.train.max_epochs if cfg is not None else None
    rows.append(
        [
            "epochs",
            "—"
            if epochs is None and planned is None
            else f"{fmt(epochs)}" + (f" of {planned} planned" if planned is not None else ""),
        ]
    )
    rows.append(["training time", _duration(extra.get("train_seconds"))])
    datasets = _datasets(pred, results.data, cfg)
    rows.append(["dataset(s)", datasets])
    if cfg is not None:
        rows += [
            ["index", str(cfg.data.index)],
            ["label policy", _policy_text(cfg.data.policy)],
        ]
    rows.append(["synthetic data", _synthetic_text(results.data)])
    if meta is not None:
        same = ""
        if cfg is not None and meta.config_hash:
            same = (
                " (matches config.yaml)"
                if cfg.hash() == meta.config_hash
                else " (differs from the run's config.yaml)"
            )
        rows += [
            ["weights SHA-256", meta.weights_sha256 or "—"],
            ["config hash", (meta.config_hash or "—") + same],
            ["cxrkit / timm", f"{meta.cxrkit_version} / {meta.timm_version}"],
        ]
    _kv_section(sec, rows, "The evaluated model and how it was trained.")
    if training is not None:
        sec.figures.append(training)
    return sec


def files_section(results: EvalResults) -> Section:
    """What was scored when files were: their names, SHA-256 and what was left out."""
    sec = Section("Scored files")
    rows: list[list[Any]] = []
    for what, name, digest in (
        ("predictions", results.predictions, results.predictions_sha256),
        ("labels", results.labels, results.labels_sha256),
    ):
        rows.append([what, Path(name).name if name else "—"])
        rows.append([f"{what} SHA-256", digest or "not recorded (an older metrics.json)"])
    rows += [
        ["level", results.level or "image"],
        ["aggregate", results.aggregate or "—"],
        ["bootstrap groups", results.bootstrap_groups or "—"],
    ]
    _kv_section(sec, rows, "The scored files (any model's outputs, scored by cxrkit).")
    if results.notes is None:
        lines = ["What was left out was not recorded (an older metrics.json)."]
    else:
        lines = list(results.notes) or ["Nothing was left out."]
    sec.html.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in lines) + "</ul>")
    sec.md.append("".join(f"- {x}\n" for x in lines))
    return sec
