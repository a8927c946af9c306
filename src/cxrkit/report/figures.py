"""The report's figures (matplotlib, rendered to PNG bytes) from what evaluation wrote."""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.evaluate.results import LABEL_PREFIX, Calibration, FindingMetrics, LevelMetrics
from cxrkit.evaluate.tables import ci_text, fmt


@dataclass
class Figure:
    """A rendered figure: id, caption, PNG bytes and an optional caveat shown under it."""

    id: str
    caption: str
    png: bytes
    note: str | None = None


#: where a part goes in tables and figures: train, then validation, then test; others after
_PART_RANK = {"train": 0, "train_val": 0, "val": 1, "valid": 1, "validation": 1, "test": 2}


def ordered_parts(parts: Iterable[str]) -> list[str]:
    """Parts in train/val/test order, whatever order they came in; other parts (folds, ...)
    follow in their given order."""
    return sorted(parts, key=lambda p: _PART_RANK.get(str(p).lower(), len(_PART_RANK)))


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


#: how far below its axes a legend starts, in points: clear of ≤ 10 pt tick labels and x label
_LEGEND_DROP_PT = 36


def _legend_below(ax, fontsize: float = 7, ncol: int = 1) -> None:
    """The axes' legend below them, under the tick labels and the x label (a fixed distance in
    points, whatever the axes' size): it never covers a curve or a marker."""
    from matplotlib.transforms import offset_copy

    ax.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        bbox_transform=offset_copy(ax.transAxes, ax.figure, y=-_LEGEND_DROP_PT, units="points"),
        fontsize=fontsize,
        ncol=ncol,
        frameon=False,
        borderaxespad=0,
    )


def _legend_right(ax, fontsize: float = 8) -> None:
    """The axes' legend to their right, outside them."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=fontsize, borderaxespad=0)


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return -(-n // cols), cols


def _scored(pred: pd.DataFrame, f: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lab = pred[LABEL_PREFIX + f].to_numpy(float)
    m = ~np.isnan(lab)
    groups = pred["patient_id"].astype(str).to_numpy()[m] if "patient_id" in pred else None
    return lab[m].astype(int), pred[f].to_numpy(float)[m], groups


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


def _operating_point(ax, x: Any, y: Any, m: FindingMetrics) -> None:
    if x is not None and y is not None:
        ax.plot(x, y, "o", c="C3", ms=6, label=f"t = {fmt(m.threshold)}")


def fig_roc(
    pred: pd.DataFrame,
    metrics: LevelMetrics,
    findings: list[str],
    level: float,
    readers: dict[str, Any] | None = None,
) -> bytes:
    """ROC per finding with the bootstrap band evaluation wrote, the operating point, and each
    reader's operating point with its interval cross (``readers``: finding → ReaderComparison)."""
    from sklearn.metrics import roc_curve

    bands = metrics.roc_bands or {}

    def draw(ax, f: str) -> str | None:
        m = metrics.findings[f]
        y, s, _ = _scored(pred, f)
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        if m.auroc is None or len(y) == 0 or y.min() == y.max():
            return m.undefined or "no labels"
        band = bands.get(f)
        if band is not None:
            lo = [np.nan if v is None else v for v in band.tpr_lo]
            hi = [np.nan if v is None else v for v in band.tpr_hi]
            ax.fill_between(
                band.fpr, lo, hi, alpha=0.25, color="C0", lw=0, label=f"{int(level * 100)} % band"
            )
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, c="C0", lw=1.5, label=f"AUC {ci_text(m.auroc, m.auroc_ci)}")
        spec = m.specificity
        _operating_point(ax, None if spec is None else 1 - spec, m.sensitivity, m)
        for i, r in enumerate((readers or {}).get(f).readers if (readers or {}).get(f) else []):
            se, sp = r.stats["sensitivity"], r.stats["specificity"]
            if se.value is None or sp.value is None:
                continue
            xerr = None if sp.lo is None else [[sp.hi - sp.value], [sp.value - sp.lo]]
            yerr = None if se.lo is None else [[se.value - se.lo], [se.hi - se.value]]
            ax.errorbar(
                1 - sp.value, se.value, xerr=xerr, yerr=yerr, fmt="s", ms=4, lw=0.8, capsize=1.5,
                color=f"C{(i + 4) % 10}", label=r.name,
            )  # fmt: skip
        _legend_below(ax)
        return None

    return _finding_panels(findings, "1 − specificity", "sensitivity", draw)


def fig_pr(pred: pd.DataFrame, metrics: LevelMetrics, findings: list[str]) -> bytes:
    """Precision-recall per finding with the operating point."""
    from sklearn.metrics import precision_recall_curve

    def draw(ax, f: str) -> str | None:
        m = metrics.findings[f]
        y, s, _ = _scored(pred, f)
        if not len(y) or y.min() == y.max():
            return m.undefined or "no labels"
        prec, rec, _ = precision_recall_curve(y, s)
        ax.plot(rec, prec, c="C2", lw=1.5, label=f"AP {ci_text(m.auprc, m.auprc_ci)}")
        ax.axhline(y.mean(), ls=":", c="grey", lw=0.8, label=f"prevalence {y.mean():.3f}")
        _operating_point(ax, m.sensitivity, m.ppv, m)
        _legend_below(ax)
        return None

    return _finding_panels(findings, "recall (sensitivity)", "precision (PPV)", draw)


def fig_confusion(metrics: LevelMetrics, findings: list[str]) -> bytes:
    """Confusion matrices at the operating point, per finding and summed."""
    plt = _plt()
    panels = [*findings, "all findings (summed)"]
    r, c = _grid(len(panels))
    fig, axes = plt.subplots(r, c, figsize=(2.6 * c, 2.5 * r), squeeze=False)
    for ax, f in zip(axes.flat, panels, strict=False):
        m = metrics.confusion_total if f.startswith("all findings") else metrics.findings[f]
        if m.tp is None:  # scores that are not probabilities, and no threshold in their units
            ax.set_title(f, fontsize=8)
            ax.text(0.5, 0.5, "no threshold", ha="center", va="center", fontsize=8)
            ax.axis("off")
            continue
        cm = np.array([[m.tn, m.fp], [m.fn, m.tp]], float)
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


def fig_calibration(calib: Calibration) -> bytes:
    """The pooled reliability diagram, before and (with a temperature) after scaling."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8, label="perfect")
    for key, name, color in (
        ("before_temperature", "model", "C0"),
        ("after_temperature", "after temperature scaling", "C1"),
    ):
        cset = getattr(calib, key)
        if cset is None:
            continue
        pooled = cset.pooled
        bins = [b for b in pooled.bins if b.count]
        ax.plot(
            [b.mean_predicted for b in bins],
            [b.fraction_positive for b in bins],
            "o-",
            c=color,
            label=f"{name} (ECE {pooled.ece:.3f})",
        )
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction positive")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    _legend_below(ax, 8)
    ax.set_title("reliability (all findings pooled)", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def fig_training(logs: pd.DataFrame) -> bytes | None:
    """Loss, validation AUROC and learning rate from the run's ``logs/metrics.csv``."""
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
    if axes[0].get_legend_handles_labels()[0]:
        _legend_below(axes[0], 8)
    if "val/mean_auc" in cols:
        d = ep.dropna(subset=["val/mean_auc"])
        axes[1].plot(d["epoch"], d["val/mean_auc"], "o-", ms=3, c="C2", label="mean")
        for c in [c for c in cols if c.startswith("val/auc/")]:
            dd = ep.dropna(subset=[c])
            axes[1].plot(dd["epoch"], dd[c], lw=0.8, alpha=0.6, label=c.split("/", 2)[2])
        _legend_below(axes[1], 6, ncol=3)
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
    """Prevalence per part, from the split report."""
    plt = _plt()
    findings = list(split["findings"])
    parts = ordered_parts(split["parts"])
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(findings) + 2), 3.4))
    w = 0.8 / max(len(parts), 1)
    x = np.arange(len(findings))
    for i, p in enumerate(parts):
        prev = [split["findings"][f]["prevalence"][p] for f in findings]
        prev = [np.nan if v is None else v for v in prev]
        ax.bar(x + i * w, prev, w, label=p)
    ax.set_xticks(x + w * (len(parts) - 1) / 2, findings, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("prevalence")
    _legend_right(ax)
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
