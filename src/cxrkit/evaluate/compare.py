"""Comparing evaluated runs: the thesis's Tables 1 and 2 and paired DeLong tests, written as
``comparison.{md,csv,json}``. The one writer of comparison tables (``cxrkit compare`` and the
experiment grid both use it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.core.errors import CxrkitError
from cxrkit.core.fileio import write_text_atomic
from cxrkit.evaluate.results import (
    LABEL_PREFIX,
    METRICS_FILE,
    PREDICTIONS_FILE,
    EvalResults,
    find_evaluation,
    read_results,
)
from cxrkit.evaluate.tables import ci_text, fmt, table


def _load_eval(path: Path) -> tuple[str, Path | None, EvalResults, pd.DataFrame | None]:
    run, ev = find_evaluation(path)
    if not (ev / METRICS_FILE).is_file():
        raise CxrkitError(f"no evaluation in '{ev}': run `cxrkit evaluate {run or path}` first.")
    metrics = read_results(ev)
    pred = pd.read_parquet(ev / PREDICTIONS_FILE) if (ev / PREDICTIONS_FILE).is_file() else None
    name = (run or ev).name
    return name, run, metrics, pred


def _describe(run: Path | None, metrics: EvalResults) -> dict[str, Any]:
    """Model name, enhancement layers, input mode and training minutes of a run."""
    from cxrkit.model.artifact import read_artifact_meta

    art = metrics.artifact or (str(run / "model") if run else None)
    try:
        meta = read_artifact_meta(art) if art else None
    except CxrkitError:
        meta = None
    if meta is None:
        return {"model": "—", "enhancement": None, "input_mode": "—", "train_minutes": None}
    secs = meta.extra.get("train_seconds")
    return {
        "model": meta.architecture,
        "enhancement": meta.input_mode == "enhanced",
        "input_mode": meta.input_mode,
        "train_minutes": None if secs is None else round(float(secs) / 60, 2),
    }


def compare_runs(
    paths: list[str | Path],
    out: str | Path | None = None,
    *,
    failed: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], Path]:
    """One table across evaluated runs (the thesis's Tables 1 and 2) and pairwise DeLong tests.

    DeLong tests compare two runs' AUROC per finding on the cases both scored with the same labels
    (joined by image path at the primary level); runs evaluated on different cases are reported as
    not comparable.

    ``accuracy`` is the summed confusion matrix's at each run's operating points (docs/evaluation.md).

    Args:
        paths: evaluated run folders, evaluation folders or ``metrics.json`` files.
        out: the output folder (default: ``comparison/`` beside the runs when they share a folder,
            else in the current folder).
        failed: runs that have no evaluation (name → reason, e.g. a failed grid run), listed in
            the comparison as ``failed``.

    Returns:
        (the comparison dict also written as ``comparison.json``, the output folder).
    """
    from cxrkit.evaluate.metrics import delong_test

    if len(paths) < 1 and not failed:
        raise CxrkitError("compare needs at least one evaluated run.")
    loaded = [_load_eval(Path(p)) for p in paths]
    names = [n for n, *_ in loaded]
    if len(set(names)) < len(names):  # same folder names in different places
        names = [str(Path(p)) for p in paths]
    findings: list[str] = []
    for _, _, m, _ in loaded:
        for f in m.main.findings:
            if f not in findings:
                findings.append(f)
    rows, totals = [], []
    for name, (_, run, m, _) in zip(names, loaded, strict=True):
        main = m.main
        d = _describe(run, m)
        avg, tot = main.average, main.confusion_total
        rows.append(
            {
                "run": name,
                "model": d["model"],
                "enhancement layers": d["enhancement"],
                "level": m.primary,
                "multilabel AUC": avg.macro_auroc,
                "multilabel AUC CI": avg.macro_auroc_ci,
                **{
                    f"{f} AUC": main.findings[f].auroc if f in main.findings else None
                    for f in findings
                },
                "accuracy": tot.accuracy,
                "sensitivity": avg.macro_sensitivity,
                "specificity": avg.macro_specificity,
                "train minutes": d["train_minutes"],
            }
        )
        totals.append(
            {
                "run": name,
                "model": d["model"],
                "enhancement layers": d["enhancement"],
                "TP": tot.tp,
                "FN": tot.fn,
                "TN": tot.tn,
                "FP": tot.fp,
            }
        )
    tests = []
    for i in range(len(loaded)):
        for j in range(i + 1, len(loaded)):
            tests.append(
                _delong_pair(names[i], loaded[i], names[j], loaded[j], findings, delong_test)
            )
    result = {
        "runs": names,
        "findings": findings,
        "table": rows,
        "confusion": totals,
        "delong": tests,
    }
    if failed:
        result["failed"] = [{"run": k, "reason": v} for k, v in failed.items()]
    if out:
        out_dir = Path(out)
    else:  # beside the runs, not wherever the command happens to be typed
        parents = {
            (r or Path(p)).resolve().parent for (_, r, _, _), p in zip(loaded, paths, strict=True)
        }
        out_dir = (parents.pop() if len(parents) == 1 else Path.cwd()) / "comparison"
    write_comparison(result, out_dir)
    return result, out_dir


def write_comparison(result: dict[str, Any], out_dir: Path) -> None:
    """Write ``comparison.csv``, ``.json`` and ``.md`` of :func:`compare_runs`' result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result["table"] + [
        {"run": f["run"], "status": f"failed: {f['reason']}"} for f in result.get("failed", [])
    ]
    flat = [
        {k: (f"[{fmt(v[0])}, {fmt(v[1])}]" if isinstance(v, list) else v) for k, v in r.items()}
        for r in rows
    ]
    write_text_atomic(out_dir / "comparison.csv", pd.DataFrame(flat).to_csv(index=False))
    write_text_atomic(
        out_dir / "comparison.json",
        json.dumps(result, indent=2, allow_nan=False, default=str) + "\n",
    )
    write_text_atomic(out_dir / "comparison.md", comparison_markdown(result))


def _delong_pair(na, a, nb, b, findings, delong_test) -> dict[str, Any]:
    _, _, ma, pa = a
    _, _, mb, pb = b
    ma: EvalResults
    mb: EvalResults
    base = {"a": na, "b": nb}
    if pa is None or pb is None:
        return {**base, "comparable": False, "reason": "a run has no predictions.parquet"}
    la, lb = ma.primary, mb.primary
    if la != lb:
        return {**base, "comparable": False, "reason": f"scored per {la} vs per {lb}"}
    key = "study_id" if la == "study" and "study_id" in pa else ("path" if "path" in pa else "key")
    xa = pa[pa["level"] == la].set_index(key) if "level" in pa else pa.set_index(key)
    xb = pb[pb["level"] == lb].set_index(key) if "level" in pb else pb.set_index(key)
    common = xa.index.intersection(xb.index)
    if len(common) == 0 or len(common) < 0.99 * max(len(xa), len(xb)):
        return {
            **base,
            "comparable": False,
            "reason": f"different test cases ({len(xa)} vs {len(xb)}, {len(common)} shared)",
        }
    out = {}
    for f in findings:
        if f not in xa or f not in xb:
            continue
        ya, yb = xa.loc[common, LABEL_PREFIX + f], xb.loc[common, LABEL_PREFIX + f]
        same = np.array_equal(ya.isna().to_numpy(), yb.isna().to_numpy()) and np.array_equal(
            ya.dropna().to_numpy(), yb.dropna().to_numpy()
        )
        if not same:
            out[f] = {"undefined": "the two runs' labels differ"}
            continue
        m = ya.notna().to_numpy()
        y = ya.to_numpy(float)[m].astype(int)
        if len(y) == 0 or y.min() == y.max():
            out[f] = {"undefined": "no positive or no negative case"}
            continue
        out[f] = delong_test(
            y, xa.loc[common, f].to_numpy(float)[m], xb.loc[common, f].to_numpy(float)[m]
        )
    return {**base, "comparable": True, "cases": int(len(common)), "findings": out}


def comparison_markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown: Table 1 layout, Table 2 layout, DeLong tests."""
    findings = result["findings"]
    t1 = [
        "Model Name",
        "Enhancement layers",
        "Multilabel AUC [95 % CI]",
        *[f"{f} AUC" for f in findings],
        "Accuracy",
        "Train min",
        "Run",
    ]
    rows = [
        [
            r["model"],
            fmt(r["enhancement layers"]),
            ci_text(r["multilabel AUC"], r["multilabel AUC CI"]),
            *[fmt(r[f"{f} AUC"]) for f in findings],
            fmt(r["accuracy"]),
            fmt(r["train minutes"], 1),
            r["run"],
        ]
        for r in result["table"]
    ]
    _, md1 = table(t1, rows, "Model architectures with their AUC values (the thesis's Table 1).")
    _, md2 = table(
        [
            "Model Name",
            "Enhancement layers",
            "True Positives",
            "False Negatives",
            "True Negatives",
            "False Positives",
            "Run",
        ],
        [
            [
                c["model"],
                fmt(c["enhancement layers"]),
                c["TP"],
                c["FN"],
                c["TN"],
                c["FP"],
                c["run"],
            ]
            for c in result["confusion"]
        ],
        "Summed confusion matrices (the thesis's Table 2).",
    )
    parts = ["# Comparison\n", md1, md2]
    for t in result["delong"]:
        if not t.get("comparable"):
            parts.append(f"DeLong {t['a']} vs {t['b']}: not comparable ({t['reason']}).\n")
            continue
        rows = []
        for f, d in t["findings"].items():
            if "undefined" in d:
                rows.append([f, "—", "—", "—", "—", d["undefined"]])
            else:
                rows.append([f, d["auc_a"], d["auc_b"], d["diff"], d["p_value"], ""])
        _, md = table(
            ["finding", f"AUC {t['a']}", f"AUC {t['b']}", "difference", "p (DeLong)", "note"],
            rows,
            f"DeLong test, {t['a']} vs {t['b']}, {t['cases']} cases.",
        )
        parts.append(md)
    for f in result.get("failed", []):
        parts.append(f"{f['run']}: failed ({f['reason']}).\n")
    return "\n".join(parts)
