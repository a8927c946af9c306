"""Reports: one self-contained HTML file (figures inline), Markdown and JSON, from an evaluation.

``build_report(RUN)`` reads ``RUN/eval-test/`` (``metrics.json`` + ``predictions.parquet``), and,
when the run folder is there, its config (data summary, split report, gallery images from the
cache) and its logs (training curves). Nothing in the HTML is fetched from the network: figures
are PNG data URIs, the style sheet is inline.

``compare_tables(results)`` lays several evaluations out as the thesis's Tables 1 and 2.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError
from cxrkit.core.fileio import atomic_path, write_text_atomic
from cxrkit.core.notice import NOTICE
from cxrkit.evaluate.evaluate import LABEL_PREFIX, METRICS_FILE, PREDICTIONS_FILE

log = logging.getLogger(__name__)


@dataclass
class Figure:
    """A rendered figure: id, caption and PNG bytes."""

    id: str
    caption: str
    png: bytes


@dataclass
class Section:
    """A report section: a title, HTML/Markdown blocks and figures, in order."""

    title: str
    html: list[str] = field(default_factory=list)
    md: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return "—" if v != v else f"{float(v):.{digits}f}"
    return str(v)


def _ci(value: Any, ci: Any) -> str:
    if value is None:
        return "undefined"
    if not ci or ci[0] is None:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def table(header: list[str], rows: list[list[Any]], caption: str = "") -> tuple[str, str]:
    """(HTML, Markdown) of a table; cells formatted with :func:`_fmt` unless already strings."""
    cells = [[c if isinstance(c, str) else _fmt(c) for c in r] for r in rows]
    h = ["<table>"]
    if caption:
        h.append(f"<caption>{html.escape(caption)}</caption>")
    h.append(
        "<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr></thead>"
    )
    h.append("<tbody>")
    for r in cells:
        h.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    h.append("</tbody></table>")
    md = []
    if caption:
        md.append(f"*{caption}*\n")
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "---|" * len(header))
    md.extend("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells)
    return "\n".join(h), "\n".join(md) + "\n"


# ---- figures -------------------------------------------------------------------------------------
def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return -(-n // cols), cols


def _scored(pred: pd.DataFrame, f: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lab = pred[LABEL_PREFIX + f].to_numpy(float)
    m = ~np.isnan(lab)
    groups = pred["patient_id"].astype(str).to_numpy()[m] if "patient_id" in pred else None
    return lab[m].astype(int), pred[f].to_numpy(float)[m], groups


def _roc_band(
    y: np.ndarray, s: np.ndarray, groups: np.ndarray | None, n: int, seed: int, level: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise percentile band of the ROC curve (TPR at a fixed FPR grid) over a patient bootstrap."""
    from sklearn.metrics import roc_curve

    grid = np.linspace(0, 1, 101)
    rng = np.random.default_rng(seed)
    if groups is None:
        groups = np.arange(len(y)).astype(str)
    codes, uniq = pd.factorize(groups)
    members = pd.Series(np.arange(len(y))).groupby(codes).apply(np.asarray).to_list()
    curves = []
    for _ in range(n):
        draw = rng.integers(0, len(uniq), len(uniq))
        idx = np.concatenate([members[i] for i in draw])
        yy = y[idx]
        if yy.min() == yy.max():
            continue
        fpr, tpr, _ = roc_curve(yy, s[idx])
        curves.append(np.interp(grid, fpr, tpr))
    if not curves:
        return grid, np.full_like(grid, np.nan), np.full_like(grid, np.nan)
    c = np.array(curves)
    a = (1 - level) / 2
    return grid, np.quantile(c, a, axis=0), np.quantile(c, 1 - a, axis=0)


def _finding_panels(findings: list[str], xlabel: str, ylabel: str, draw) -> bytes:
    """One panel per finding: ``draw(ax, finding)`` plots and returns False when the finding's
    curve is undefined (the panel then says why)."""
    plt = _plt()
    r, c = _grid(len(findings))
    fig, axes = plt.subplots(r, c, figsize=(3.2 * c, 3.2 * r), squeeze=False)
    for ax, f in zip(axes.flat, findings, strict=False):
        reason = draw(ax, f)
        if reason:
            ax.text(0.5, 0.5, f"undefined:\n{reason}", ha="center", va="center", fontsize=8)
        ax.set_title(f, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(findings) :]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _operating_point(ax, x: Any, y: Any, m: dict) -> None:
    if x is not None and y is not None:
        ax.plot(x, y, "o", c="C3", ms=6, label=f"t = {_fmt(m.get('threshold'))}")


def fig_roc(
    pred: pd.DataFrame, metrics: dict, findings: list[str], seed: int, level: float
) -> bytes:
    from sklearn.metrics import roc_curve

    n_band = 100 if len(pred) <= 50_000 else 30

    def draw(ax, f: str) -> str | None:
        m = metrics["findings"][f]
        y, s, g = _scored(pred, f)
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        if m.get("auroc") is None or len(y) == 0 or y.min() == y.max():
            return m.get("undefined") or "no labels"
        grid, lo, hi = _roc_band(y, s, g, n_band, seed, level)
        ax.fill_between(
            grid, lo, hi, alpha=0.25, color="C0", lw=0, label=f"{int(level * 100)} % band"
        )
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, c="C0", lw=1.5, label=f"AUC {_ci(m['auroc'], m.get('auroc_ci'))}")
        spec = m.get("specificity")
        _operating_point(ax, None if spec is None else 1 - spec, m.get("sensitivity"), m)
        ax.legend(loc="lower right", fontsize=7)
        return None

    return _finding_panels(findings, "1 − specificity", "sensitivity", draw)


def fig_pr(pred: pd.DataFrame, metrics: dict, findings: list[str]) -> bytes:
    from sklearn.metrics import precision_recall_curve

    def draw(ax, f: str) -> str | None:
        m = metrics["findings"][f]
        y, s, _ = _scored(pred, f)
        if not len(y) or y.min() == y.max():
            return m.get("undefined") or "no labels"
        prec, rec, _ = precision_recall_curve(y, s)
        ax.plot(rec, prec, c="C2", lw=1.5, label=f"AP {_ci(m.get('auprc'), m.get('auprc_ci'))}")
        ax.axhline(y.mean(), ls=":", c="grey", lw=0.8, label=f"prevalence {y.mean():.3f}")
        _operating_point(ax, m.get("sensitivity"), m.get("ppv"), m)
        ax.legend(loc="upper right", fontsize=7)
        return None

    return _finding_panels(findings, "recall (sensitivity)", "precision (PPV)", draw)


def fig_confusion(metrics: dict, findings: list[str]) -> bytes:
    plt = _plt()
    panels = [*findings, "all findings (summed)"]
    r, c = _grid(len(panels))
    fig, axes = plt.subplots(r, c, figsize=(2.6 * c, 2.5 * r), squeeze=False)
    for ax, f in zip(axes.flat, panels, strict=False):
        m = metrics["confusion_total"] if f.startswith("all findings") else metrics["findings"][f]
        cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]], float)
        ax.imshow(cm / max(cm.sum(), 1), cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(cm):
            ax.text(
                j,
                i,
                f"{int(v):,}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if v / max(cm.sum(), 1) > 0.5 else "black",
            )
        ax.set_xticks([0, 1], ["pred −", "pred +"], fontsize=7)
        ax.set_yticks([0, 1], ["true −", "true +"], fontsize=7)
        ax.set_title(f, fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def fig_calibration(calib: dict) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8, label="perfect")
    for key, name, color in (
        ("before_temperature", "model", "C0"),
        ("after_temperature", "after temperature scaling", "C1"),
    ):
        if key not in calib:
            continue
        pooled = calib[key]["pooled"]
        bins = [b for b in pooled["bins"] if b["count"]]
        ax.plot(
            [b["mean_predicted"] for b in bins],
            [b["fraction_positive"] for b in bins],
            "o-",
            c=color,
            label=f"{name} (ECE {pooled['ece']:.3f})",
        )
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction positive")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("reliability (all findings pooled)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def fig_training(logs: pd.DataFrame) -> bytes | None:
    plt = _plt()
    cols = logs.columns
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    drew = False
    ep = logs.dropna(subset=["epoch"]) if "epoch" in cols else logs
    for name, label in (("train/loss_epoch", "train loss"), ("val/loss", "val loss")):
        if name in cols:
            d = ep.dropna(subset=[name])
            axes[0].plot(d["epoch"], d[name], "o-", ms=3, label=label)
            drew = True
    axes[0].set_xlabel("epoch")
    axes[0].set_title("loss", fontsize=9)
    axes[0].legend(fontsize=8)
    if "val/mean_auc" in cols:
        d = ep.dropna(subset=["val/mean_auc"])
        axes[1].plot(d["epoch"], d["val/mean_auc"], "o-", ms=3, c="C2", label="mean")
        for c in [c for c in cols if c.startswith("val/auc/")]:
            dd = ep.dropna(subset=[c])
            axes[1].plot(dd["epoch"], dd[c], lw=0.8, alpha=0.6, label=c.split("/", 2)[2])
        axes[1].legend(fontsize=6, ncol=2)
        drew = True
    axes[1].set_xlabel("epoch")
    axes[1].set_title("validation AUROC", fontsize=9)
    lr_cols = [c for c in cols if c == "lr"] + [c for c in cols if c.startswith("lr-")]
    if lr_cols and "step" in cols:
        d = logs.dropna(subset=[lr_cols[0]])
        axes[2].plot(d["step"], d[lr_cols[0]], c="C4", lw=1, marker="." if len(d) < 30 else None)
        drew = True
    axes[2].set_xlabel("optimiser step")
    axes[2].set_title("learning rate", fontsize=9)
    fig.tight_layout()
    if not drew:
        _plt().close(fig)
        return None
    return _png(fig)


def fig_prevalence(split: dict) -> bytes:
    plt = _plt()
    findings = list(split["findings"])
    parts = list(split["parts"])
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(findings) + 2), 3.4))
    w = 0.8 / max(len(parts), 1)
    x = np.arange(len(findings))
    for i, p in enumerate(parts):
        prev = [split["findings"][f]["prevalence"][p] for f in findings]
        prev = [np.nan if v is None else v for v in prev]
        ax.bar(x + i * w, prev, w, label=p)
    ax.set_xticks(x + w * (len(parts) - 1) / 2, findings, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("prevalence")
    ax.legend(fontsize=8)
    ax.set_title("prevalence per part (after the label policy)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def fig_gallery(images: list[tuple[str, np.ndarray, np.ndarray | None]], title: str) -> bytes:
    """A row of thumbnails with captions; a heatmap overlay where one is given."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.0 * n, 2.3), squeeze=False)
    for ax, (cap, img, heat) in zip(axes.flat, images, strict=True):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        if heat is not None:
            ax.imshow(
                heat,
                cmap="jet",
                alpha=0.35,
                vmin=0,
                vmax=1,
                extent=(0, img.shape[1], img.shape[0], 0),
            )
        ax.set_title(cap, fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _png(fig)


# ---- sections -----------------------------------------------------------------------------------
def _metrics_section(metrics: dict, level: str, findings: list[str]) -> Section:
    sec = Section(f"Metrics ({level} level)")
    avg = metrics["average"]
    lvl = int(round(metrics.get("level", 0.95) * 100))
    rows = []
    for f in findings:
        m = metrics["findings"][f]
        rows.append(
            [
                f,
                m.get("positives"),
                m.get("negatives"),
                _ci(m.get("auroc"), m.get("auroc_ci")),
                _ci(m.get("auroc"), m.get("auroc_ci_delong")),
                _ci(m.get("auprc"), m.get("auprc_ci")),
                m.get("threshold"),
                m.get("sensitivity"),
                m.get("specificity"),
                m.get("ppv"),
                m.get("npv"),
                m.get("f1"),
                m.get("accuracy"),
                m.get("undefined") or "",
            ]
        )
    h, md = table(
        [
            "finding",
            "pos",
            "neg",
            f"AUROC [{lvl} % CI, bootstrap]",
            "AUROC [DeLong CI]",
            "AUPRC [CI]",
            "threshold",
            "sensitivity",
            "specificity",
            "PPV",
            "NPV",
            "F1",
            "accuracy",
            "note",
        ],
        rows,
        f"Per finding, {metrics.get('n_images', '?')} {'studies' if level == 'study' else 'images'}, "
        f"{metrics.get('n_bootstrap', '?')} bootstrap resamples over "
        f"{metrics.get('n_groups', '?')} patients.",
    )
    sec.html.append(h)
    sec.md.append(md)
    h, md = table(
        ["average", "value"],
        [
            ["multilabel (macro) AUROC", _ci(avg.get("macro_auroc"), avg.get("macro_auroc_ci"))],
            ["micro AUROC", _ci(avg.get("micro_auroc"), avg.get("micro_auroc_ci"))],
            [
                f"competition mean AUROC ({len(avg.get('competition_findings') or [])} of 5)",
                _ci(avg.get("competition_auroc"), avg.get("competition_auroc_ci")),
            ],
            ["macro AUPRC", avg.get("macro_auprc")],
            ["macro sensitivity", avg.get("macro_sensitivity")],
            ["macro specificity", avg.get("macro_specificity")],
            ["macro F1", avg.get("macro_f1")],
        ],
        "Averages over the findings whose AUROC is defined.",
    )
    sec.html.append(h)
    sec.md.append(md)
    tot = metrics["confusion_total"]
    h, md = table(
        ["TP", "FN", "TN", "FP", "sensitivity", "specificity", "F1", "accuracy"],
        [
            [
                tot["tp"],
                tot["fn"],
                tot["tn"],
                tot["fp"],
                tot.get("sensitivity"),
                tot.get("specificity"),
                tot.get("f1"),
                tot.get("accuracy"),
            ]
        ],
        "Confusion matrix summed over findings (the thesis's Table 2).",
    )
    sec.html.append(h)
    sec.md.append(md)
    head = ["", *findings]
    rows = [
        [name, *[metrics["findings"][f].get(key) for f in findings]]
        for name, key in (
            ("TP", "tp"),
            ("FP", "fp"),
            ("FN", "fn"),
            ("TN", "tn"),
            ("true positive rate", "sensitivity"),
            ("true negative rate", "specificity"),
            ("F-score", "f1"),
        )
    ]
    h, md = table(head, rows, "Per finding at the operating point (the thesis's Tables 3–10).")
    sec.html.append(h)
    sec.md.append(md)
    return sec


def _data_sections(cfg, run: Path) -> list[Section]:
    """Class frequencies after the policy and the split report, recomputed from the run's data."""
    from cxrkit.data.index import read_index
    from cxrkit.data.labels import LabelPolicy, label_table
    from cxrkit.data.splits import read_splits, split_report

    index = read_index(cfg.data.index)
    pol = cfg.data.policy
    policy = LabelPolicy.from_dict(pol) if isinstance(pol, dict) else LabelPolicy.from_spec(pol)
    targets = policy.apply(index.frame, index.findings)
    lt = label_table(index.frame, targets)
    sec = Section("Data")
    sec.html.append(
        f"<p>Index <code>{html.escape(str(cfg.data.index))}</code>: "
        f"{len(index.frame):,} images, {index.frame['patient_id'].nunique():,} patients; "
        f"{len(targets.rows):,} kept by the label policy.</p>"
    )
    rows = [
        [
            r["finding"],
            r["positive"],
            r["negative"],
            r["uncertain"],
            r["blank"],
            r["masked"],
            r["neg_pos_ratio"],
        ]
        for _, r in lt.iterrows()
    ]
    h, md = table(
        ["finding", "positive", "negative", "uncertain (raw)", "blank (raw)", "masked", "neg:pos"],
        rows,
        "Class frequencies after the label policy (whole set).",
    )
    sec.html.append(h)
    sec.md.append(md)
    splits = read_splits(cfg.data.splits, index.frame)
    rep = split_report(index.frame, targets, splits.frame["part"].to_numpy())
    sp = Section("Split")
    rows = [[p, rep["images"][p], rep["kept_images"][p], rep["patients"][p]] for p in rep["parts"]]
    h, md = table(
        ["part", "images", "kept by policy", "patients"],
        rows,
        "Patient-grouped parts (no patient in two parts).",
    )
    sp.html.append(h)
    sp.md.append(md)
    rows = [
        [
            f,
            *[rep["findings"][f]["positives"][p] for p in rep["parts"]],
            *[rep["findings"][f]["prevalence"][p] for p in rep["parts"]],
            rep["findings"][f]["max_dev_pp"],
        ]
        for f in rep["findings"]
    ]
    h, md = table(
        [
            "finding",
            *[f"pos {p}" for p in rep["parts"]],
            *[f"prev {p}" for p in rep["parts"]],
            "max dev (pp)",
        ],
        rows,
        "Positives and prevalence per part.",
    )
    sp.html.append(h)
    sp.md.append(md)
    sp.figures.append(Figure("prevalence", "Prevalence per part.", fig_prevalence(rep)))
    for w in rep.get("warnings", []):
        sp.html.append(f"<p class='warn'>{html.escape(w)}</p>")
        sp.md.append(f"> {w}\n")
    return [sec, sp]


def _gallery_section(
    cfg, pred: pd.DataFrame, findings: list[str], artifact: Path, thresholds: dict[str, Any]
) -> Section | None:
    """Highest-scoring true and false positives per finding, from the cache, with Grad-CAM maps
    when :mod:`cxrkit.use.explain` can make them."""
    from cxrkit.data.cache import open_cache
    from cxrkit.data.index import read_index

    index = read_index(cfg.data.index)
    cache = open_cache(cfg.data.cache, index)
    pos_of = {}
    ok = cache.rows["ok"].to_numpy(bool)
    for p, r in zip(np.flatnonzero(ok), cache.rows["row"].to_numpy(np.int64)[ok], strict=True):
        pos_of[index.frame["path"].iat[int(r)]] = int(p)
    img_rows = pred[pred["level"] == "image"]
    heat = _heatmapper(artifact)
    sec = Section("Gallery")
    sec.html.append(
        "<p>The highest-scoring true positives and false positives of each finding on "
        "the evaluated part" + (", with Grad-CAM heatmaps" if heat else "") + ".</p>"
    )
    ranked = sorted(findings, key=lambda f: -np.nansum(img_rows[LABEL_PREFIX + f]))[:4]
    for f in ranked:
        lab = img_rows[LABEL_PREFIX + f].to_numpy(float)
        s = img_rows[f].to_numpy(float)
        thr = thresholds.get(f)
        thr = 0.5 if thr is None else float(thr)
        for kind, want in (("true positives", 1.0), ("false positives", 0.0)):
            sel = np.flatnonzero((lab == want) & (s >= thr))
            sel = sel[np.argsort(-s[sel])][:4]
            items = []
            for i in sel:
                path = img_rows["path"].iat[int(i)]
                if path not in pos_of:
                    continue
                img = np.asarray(cache.images[pos_of[path]])
                items.append((f"p={s[i]:.2f}", img, heat(img, f) if heat else None))
            if items:
                sec.figures.append(
                    Figure(
                        f"gallery-{len(sec.figures)}",
                        f"{f}: {kind}, highest scores at threshold {thr:.3f}.",
                        fig_gallery(items, f"{f}: {kind}"),
                    )
                )
    return sec if sec.figures else None


def _heatmapper(artifact: Path):
    """A function (uint8 cached image, finding) → Grad-CAM map, or None without a model."""
    from cxrkit.use.explain import Explainer

    try:
        ex = Explainer(artifact)
    except CxrkitError as e:
        log.warning("gallery without heatmaps: %s", e)
        return None

    def run(img: np.ndarray, finding: str) -> np.ndarray | None:
        if img.shape[0] != ex.size:
            return None
        return ex.heatmap_uint8(img, finding)

    return run


# ---- the report ---------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em} caption{text-align:left;font-style:italic;
padding:.3em 0} th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left} figure{margin:1em 0} figure img{max-width:100%}
figcaption{font-size:.85em;color:#555} .notice{background:#fff4e5;border:1px solid #f0b070;
padding:.5em 1em;border-radius:4px} .warn{color:#a33} code{background:#f6f6f6;padding:0 .2em}
"""


def _render(title: str, intro: list[str], sections: list[Section]) -> tuple[str, str]:
    h = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='notice'>{html.escape(NOTICE)}</p>",
        *intro,
    ]
    md = [f"# {title}\n", f"> {NOTICE}\n"]
    for sec in sections:
        sid = sec.title.lower().replace(" ", "-").replace("(", "").replace(")", "")
        h.append(f"<h2 id='{html.escape(sid)}'>{html.escape(sec.title)}</h2>")
        md.append(f"## {sec.title}\n")
        h.extend(sec.html)
        md.extend(sec.md)
        for fig in sec.figures:
            data = base64.b64encode(fig.png).decode()
            h.append(
                f"<figure id='fig-{html.escape(fig.id)}'><img alt='{html.escape(fig.caption)}' "
                f"src='data:image/png;base64,{data}'><figcaption>{html.escape(fig.caption)}"
                "</figcaption></figure>"
            )
            md.append(f"![{fig.caption}](figures/{fig.id}.png)\n")
    h.append(f"<p><small>cxrkit {__version__}</small></p></body></html>")
    return "\n".join(h), "\n".join(md)


def _find_eval(path: Path) -> tuple[Path | None, Path]:
    """(run folder or None, evaluation folder) for a run, an evaluation folder or a metrics file."""
    if not path.exists():
        raise CxrkitError(f"'{path}' does not exist: pass an evaluated run folder (runs/<name>).")
    if path.is_file() and path.name == METRICS_FILE:
        path = path.parent
    if (path / METRICS_FILE).is_file():
        parent = path.parent
        return (parent if (parent / "config.yaml").is_file() else None), path
    if (path / "config.yaml").is_file() or (path / "model" / "model.json").is_file():
        return path, path / "eval-test"
    raise CxrkitError(
        f"'{path}' is neither a run folder nor an evaluation folder ({METRICS_FILE}): pass "
        "runs/<name> or the folder `cxrkit evaluate` wrote."
    )


def build_report(path: str | Path, out: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Write ``report.html``, ``report.md`` (+ ``figures/``) and ``report.json``.

    Args:
        path: a run folder (its ``eval-test/`` must exist: run ``cxrkit evaluate`` first), an
            evaluation folder, or its ``metrics.json``.
        out: output folder (default: ``<run>/report`` or ``<eval folder>/report``).

    Returns:
        (the HTML file, the report's JSON summary).
    """
    run, ev = _find_eval(Path(path))
    if not (ev / METRICS_FILE).is_file():
        raise CxrkitError(f"no evaluation in '{ev}': run `cxrkit evaluate {run or path}` first.")
    metrics = json.loads((ev / METRICS_FILE).read_text())
    pred = pd.read_parquet(ev / PREDICTIONS_FILE) if (ev / PREDICTIONS_FILE).is_file() else None
    level = metrics.get("primary", "image")
    main = metrics[level]
    findings = list(main["findings"])
    seed = int(metrics.get("options", {}).get("seed", 0))
    sections: list[Section] = []
    cfg = None
    if run is not None and (run / "config.yaml").is_file():
        from cxrkit.core.config import load_config

        try:
            cfg = load_config(run / "config.yaml")
            sections.extend(_data_sections(cfg, run))
        except CxrkitError as e:
            log.warning("data summary left out: %s", e)
            cfg = None
        logs = run / "logs" / "metrics.csv"
        if logs.is_file():
            png = fig_training(pd.read_csv(logs))
            if png:
                tr = Section("Training")
                tr.figures.append(
                    Figure("training", "Loss, validation AUROC and learning rate.", png)
                )
                sections.append(tr)
    sections.append(_metrics_section(main, level, findings))
    if "study" in metrics and level == "study":
        sections.append(_metrics_section(metrics["image"], "image", findings))
    curves = Section("Curves")
    if pred is not None:
        lv = pred[pred["level"] == level] if "level" in pred else pred
        curves.figures.append(
            Figure(
                "roc",
                f"ROC per finding with the bootstrap {int(main.get('level', 0.95) * 100)} % "
                "band and the operating point.",
                fig_roc(lv, main, findings, seed, float(main.get("level", 0.95))),
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
    if "calibration" in metrics:
        cal = Section("Calibration")
        c = metrics["calibration"]
        rows = [[f, v["ece"]] for f, v in c["before_temperature"]["findings"].items()]
        h, md = table(["finding", "ECE"], rows, "Expected calibration error (10 equal-width bins).")
        cal.html.append(h)
        cal.md.append(md)
        if metrics.get("temperature", 1.0) != 1.0:
            cal.html.append(
                f"<p>Temperature {metrics['temperature']:.3f} fitted on validation.</p>"
            )
        cal.figures.append(Figure("calibration", "Reliability diagram.", fig_calibration(c)))
        sections.append(cal)
    if cfg is not None and pred is not None and run is not None:
        try:
            g = _gallery_section(
                cfg,
                pred,
                findings,
                Path(metrics.get("artifact") or run / "model"),
                metrics.get("operating_point", {}).get("thresholds", {}),
            )
            if g:
                sections.append(g)
        except CxrkitError as e:
            log.warning("gallery left out: %s", e)
    op = metrics.get("operating_point", {})
    intro = [
        f"<p>Run <code>{html.escape(str(run or ev))}</code>; part "
        f"<b>{html.escape(str(metrics.get('part', '?')))}</b>, scored per {level}; operating "
        f"point <b>{html.escape(str(op.get('method', 'fixed')))}</b>"
        + (f" (target {op['target']})" if op.get("target") else "")
        + f" fitted on <b>{html.escape(str(op.get('fitted_on', '—')))}</b>.</p>"
    ]
    out = Path(out) if out else (run / "report" if run else ev / "report")
    title = f"cxrkit report: {(run or ev).name}"
    page, md = _render(title, intro, sections)
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
        "average": main["average"],
        "findings": {
            f: {
                k: main["findings"][f].get(k)
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


# ---- comparison ---------------------------------------------------------------------------------
def _load_eval(path: Path) -> tuple[str, Path | None, dict, pd.DataFrame | None]:
    run, ev = _find_eval(path)
    if not (ev / METRICS_FILE).is_file():
        raise CxrkitError(f"no evaluation in '{ev}': run `cxrkit evaluate {run or path}` first.")
    metrics = json.loads((ev / METRICS_FILE).read_text())
    pred = pd.read_parquet(ev / PREDICTIONS_FILE) if (ev / PREDICTIONS_FILE).is_file() else None
    name = (run or ev).name
    return name, run, metrics, pred


def _describe(run: Path | None, metrics: dict) -> dict[str, Any]:
    """Model name, enhancement layers, input mode and training minutes of a run."""
    from cxrkit.model.artifact import read_artifact_meta

    art = metrics.get("artifact") or (str(run / "model") if run else None)
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
    paths: list[str | Path], out: str | Path | None = None
) -> tuple[dict[str, Any], Path]:
    """One table across evaluated runs (the thesis's Tables 1 and 2) and pairwise DeLong tests.

    DeLong tests compare two runs' AUROC per finding on the cases both scored with the same labels
    (joined by image path at the primary level); runs evaluated on different cases are reported as
    not comparable.

    Returns:
        (the comparison dict also written as ``comparison.json``, the output folder).
    """
    from cxrkit.evaluate.metrics import delong_test

    if len(paths) < 1:
        raise CxrkitError("compare needs at least one evaluated run.")
    loaded = [_load_eval(Path(p)) for p in paths]
    names = [n for n, *_ in loaded]
    if len(set(names)) < len(names):  # same folder names in different places
        names = [str(Path(p)) for p in paths]
    findings: list[str] = []
    for _, _, m, _ in loaded:
        for f in m[m.get("primary", "image")]["findings"]:
            if f not in findings:
                findings.append(f)
    rows, totals = [], []
    for name, (_, run, m, _) in zip(names, loaded, strict=True):
        main = m[m.get("primary", "image")]
        d = _describe(run, m)
        avg, tot = main["average"], main["confusion_total"]
        rows.append(
            {
                "run": name,
                "model": d["model"],
                "enhancement layers": d["enhancement"],
                "level": m.get("primary", "image"),
                "multilabel AUC": avg.get("macro_auroc"),
                "multilabel AUC CI": avg.get("macro_auroc_ci"),
                **{f"{f} AUC": main["findings"].get(f, {}).get("auroc") for f in findings},
                "accuracy": tot.get("accuracy"),
                "sensitivity": avg.get("macro_sensitivity"),
                "specificity": avg.get("macro_specificity"),
                "train minutes": d["train_minutes"],
            }
        )
        totals.append(
            {
                "run": name,
                "model": d["model"],
                "enhancement layers": d["enhancement"],
                "TP": tot["tp"],
                "FN": tot["fn"],
                "TN": tot["tn"],
                "FP": tot["fp"],
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
    if out:
        out_dir = Path(out)
    else:  # beside the runs, not wherever the command happens to be typed
        parents = {
            (r or Path(p)).resolve().parent for (_, r, _, _), p in zip(loaded, paths, strict=True)
        }
        out_dir = (parents.pop() if len(parents) == 1 else Path.cwd()) / "comparison"
    out_dir.mkdir(parents=True, exist_ok=True)
    flat = [
        {k: (f"[{_fmt(v[0])}, {_fmt(v[1])}]" if isinstance(v, list) else v) for k, v in r.items()}
        for r in rows
    ]
    write_text_atomic(out_dir / "comparison.csv", pd.DataFrame(flat).to_csv(index=False))
    write_text_atomic(
        out_dir / "comparison.json",
        json.dumps(result, indent=2, allow_nan=False, default=str) + "\n",
    )
    write_text_atomic(out_dir / "comparison.md", comparison_markdown(result))
    return result, out_dir


def _delong_pair(na, a, nb, b, findings, delong_test) -> dict[str, Any]:
    _, _, ma, pa = a
    _, _, mb, pb = b
    base = {"a": na, "b": nb}
    if pa is None or pb is None:
        return {**base, "comparable": False, "reason": "a run has no predictions.parquet"}
    la, lb = ma.get("primary", "image"), mb.get("primary", "image")
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
            _fmt(r["enhancement layers"]),
            _ci(r["multilabel AUC"], r["multilabel AUC CI"]),
            *[_fmt(r[f"{f} AUC"]) for f in findings],
            _fmt(r["accuracy"]),
            _fmt(r["train minutes"], 1),
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
                _fmt(c["enhancement layers"]),
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
    return "\n".join(parts)
