"""Reports: one self-contained HTML file (figures inline), Markdown and JSON, from an evaluation.

``build_report(RUN)`` reads what ``cxrkit evaluate`` wrote in ``RUN/eval-test/`` (``metrics.json``
with the data summary and the ROC bands, ``predictions.parquet``) and, when the run folder is
there, its logs (training curves); the gallery reads the original images through
:class:`cxrkit.use.explain.Explainer`. Nothing in the HTML is fetched from the network: figures
are PNG data URIs, the style sheet is inline. Figures are in :mod:`cxrkit.report.figures`,
sections in :mod:`cxrkit.report.sections` (what was evaluated: :mod:`cxrkit.report.provenance`);
comparing runs is :mod:`cxrkit.evaluate.compare`. The sections always come in the order of
:data:`cxrkit.report.sections.SECTION_ORDER` (those a report has), stated at the top of the page.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from cxrkit.core.errors import CxrkitError
from cxrkit.core.fileio import atomic_path, write_text_atomic
from cxrkit.evaluate.compare import compare_runs, comparison_markdown
from cxrkit.evaluate.results import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    check_agrees_with_artifact,
    find_evaluation,
    read_results,
)
from cxrkit.evaluate.tables import table
from cxrkit.model.artifact import RUN_MODEL_DIR
from cxrkit.report.figures import (
    Figure,
    fig_calibration,
    fig_confusion,
    fig_pr,
    fig_roc,
    fig_training,
)
from cxrkit.report.provenance import files_section, model_section
from cxrkit.report.sections import (
    Section,
    data_sections,
    gallery_section,
    metrics_section,
    readers_section,
    render_page,
    section_rank,
)

log = logging.getLogger(__name__)


def build_report(path: str | Path, out: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Write ``report.html``, ``report.md`` (+ ``figures/``) and ``report.json``.

    Args:
        path: a run folder (its ``eval-test/`` must exist: run ``cxrkit evaluate`` first), an
            evaluation folder, or its ``metrics.json``.
        out: output folder (default: ``<run>/report`` or ``<eval folder>/report``).

    Returns:
        (the HTML file, the report's JSON summary).
    """
    run, ev = find_evaluation(Path(path))
    if not (ev / METRICS_FILE).is_file():
        raise CxrkitError(f"no evaluation in '{ev}': run `cxrkit evaluate {run or path}` first.")
    metrics = read_results(ev)
    check_agrees_with_artifact(metrics, ev, run / RUN_MODEL_DIR if run is not None else None)
    pred = pd.read_parquet(ev / PREDICTIONS_FILE) if (ev / PREDICTIONS_FILE).is_file() else None
    level = metrics.primary
    main = metrics.main
    findings = list(main.findings)
    sections: list[Section] = []
    if metrics.kind == "files":
        sections.append(files_section(metrics))
    else:
        training = None
        logs = run / "logs" / "metrics.csv" if run is not None else None
        if logs is not None and logs.is_file():
            png = fig_training(pd.read_csv(logs))
            if png:
                training = Figure("training", "Loss, validation AUROC and learning rate.", png)
        artifact = Path(metrics.artifact) if metrics.artifact else None
        if artifact is None or not artifact.is_dir():
            artifact = run / RUN_MODEL_DIR if run is not None else artifact
        sections.append(model_section(metrics, run, artifact, pred, training))
    if run is not None and metrics.data is not None:
        sections.extend(data_sections(metrics.data))
    sections.append(metrics_section(main, level, findings))
    if metrics.study is not None and level == "study":
        sections.append(metrics_section(metrics.image, "image", findings))
    curves = Section("Curves")
    if pred is not None:
        lv = pred[pred["level"] == level] if "level" in pred else pred
        curves.figures.append(
            Figure(
                "roc",
                f"ROC per finding with the bootstrap {int(main.level * 100)} % "
                "band and the operating point.",
                fig_roc(lv, main, findings, float(main.level), metrics.readers),
            )
        )
        curves.figures.append(
            Figure(
                "pr",
                "Precision–recall per finding with the operating point.",
                fig_pr(lv, main, findings),
            )
        )
    curves.figures.append(
        Figure(
            "confusion", "Confusion matrices at the operating point.", fig_confusion(main, findings)
        )
    )
    sections.append(curves)
    if metrics.readers:
        sections.append(readers_section(metrics.readers))
    if metrics.calibration is not None:
        cal = Section("Calibration")
        c = metrics.calibration
        rows = [[f, v.ece] for f, v in c.before_temperature.findings.items()]
        h, md = table(["finding", "ECE"], rows, "Expected calibration error (10 equal-width bins).")
        cal.html.append(h)
        cal.md.append(md)
        if (metrics.temperature or 1.0) != 1.0:
            cal.html.append(f"<p>Temperature {metrics.temperature:.3f} fitted on validation.</p>")
        cal.figures.append(Figure("calibration", "Reliability diagram.", fig_calibration(c)))
        sections.append(cal)
    if metrics.data is not None and pred is not None and run is not None:
        op = metrics.operating_point
        sections.append(
            gallery_section(
                pred,
                findings,
                Path(metrics.artifact or run / RUN_MODEL_DIR),
                op.thresholds if op is not None else {},
                Path(metrics.data.image_root),
            )
        )
    sections.sort(key=lambda sec: section_rank(sec.title))  # stable: study before image metrics
    op = metrics.operating_point
    intro = [
        f"<p>Run <code>{html.escape(str(run or ev))}</code>; part "
        f"<b>{html.escape(str(metrics.part or '?'))}</b>, scored per {level}; operating "
        f"point <b>{html.escape(op.method if op else 'fixed')}</b>"
        + (f" (target {op.target})" if op and op.target else "")
        + f" fitted on <b>{html.escape(op.fitted_on if op else '—')}</b>.</p>"
    ]
    out = Path(out) if out else (run / "report" if run else ev / "report")
    title = f"cxrkit report: {(run or ev).name}"
    page, md = render_page(title, intro, sections)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    figures = [f for s in sections for f in s.figures]
    for f in figures:
        with atomic_path(out / "figures" / f"{f.id}.png") as tmp:
            tmp.write_bytes(f.png)
    write_text_atomic(out / "report.md", md)
    summary = {
        "title": title,
        "run": str(run) if run else None,
        "evaluation": str(ev),
        "level": level,
        "figures": [f.id for f in figures],
        "sections": [s.title for s in sections],
        "average": main.average.to_dict(),
        "findings": {
            f: {
                k: getattr(main.findings[f], k)
                for k in (
                    "auroc",
                    "auroc_ci",
                    "auprc",
                    "threshold",
                    "sensitivity",
                    "specificity",
                    "f1",
                    "undefined",
                )
            }
            for f in findings
        },
    }
    write_text_atomic(out / "report.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    write_text_atomic(out / "report.html", page)
    return out / "report.html", summary


__all__ = ["build_report", "compare_runs", "comparison_markdown"]
