"""A model against human readers: the comparisons the field's headline results make.

For one finding, given the reference labels ``y`` (n,), the model's scores (n,), the readers' binary
reads (R, n) of the same cases and each case's patient:

- each reader's sensitivity, specificity, PPV and F1, with patient-bootstrap percentile CIs;
- the model at each reader's operating point: its sensitivity at the reader's specificity (the
  threshold where the model's specificity is at least the reader's, with the highest sensitivity)
  and its specificity at the reader's sensitivity, each with a CI, the paired difference with a
  bootstrap CI, and McNemar's exact test on the discordant cases at that matched threshold;
- how many readers' operating points lie strictly below the model's ROC curve (Irvin et al. 2019,
  CheXpert: the ROC curve's sensitivity at the reader's false-positive rate exceeds the reader's);
- the model's F1 at its operating point against the readers' mean F1, with a paired patient-bootstrap
  CI of the difference (Rajpurkar et al. 2017, CheXNet) and a two-sided bootstrap p-value.

``majority_reference`` gives the readers' majority vote as an alternative reference (a tie is left
out). Definitions and caveats: docs/metrics.md.

Sensitivity, specificity and the rest follow the one decision rule of cxrkit: positive ⇔ score ≥
threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cxrkit.core.errors import CxrkitError

#: Statistics reported per reader (and for the model at its operating point).
READER_STATS = ("sensitivity", "specificity", "ppv", "f1")


@dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile CI (None where undefined, e.g. no positive decision)."""

    value: float | None
    lo: float | None = None
    hi: float | None = None


@dataclass(frozen=True)
class MatchedPoint:
    """The model at one reader's sensitivity or specificity (see the module docstring)."""

    threshold: float | None
    model: Estimate  # the model's sensitivity (or specificity) there
    reader: float | None  # the reader's
    difference: Estimate  # model − reader, paired bootstrap
    mcnemar_p: float | None  # exact two-sided test on the discordant cases


@dataclass(frozen=True)
class ReaderResult:
    """One reader on one finding."""

    name: str
    tp: int
    fp: int
    fn: int
    tn: int
    stats: dict[str, Estimate]
    below_model_curve: bool
    model_at_reader_specificity: MatchedPoint
    model_at_reader_sensitivity: MatchedPoint


@dataclass(frozen=True)
class ReaderComparison:
    """The model against R readers on one finding."""

    n: int
    positives: int
    readers: list[ReaderResult]
    readers_below_curve: int
    model_f1: Estimate
    mean_reader_f1: Estimate
    f1_difference: Estimate  # model F1 − mean reader F1
    f1_p: float | None
    threshold: float | None
    n_bootstrap: int
    level: float
    skipped: int = 0  # resamples without a positive or a negative case
    notes: list[str] = field(default_factory=list)


def _counts(pred: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted (tp, fp, fn, tn) per row: pred (k, n) bool, y (n,) bool, w (B, n) → (B, k, 4)."""
    pos, neg = w * y, w * ~y
    pf = pred.astype(np.float64)
    tp = pos @ pf.T
    fp = neg @ pf.T
    return np.stack([tp, fp, pos.sum(1, keepdims=True) - tp, neg.sum(1, keepdims=True) - fp], -1)


def _stats(c: np.ndarray) -> dict[str, np.ndarray]:
    """sensitivity, specificity, PPV, F1 from (..., 4) counts; NaN where undefined."""
    tp, fp, fn, tn = np.moveaxis(c, -1, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "ppv": tp / (tp + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


def _estimate(point: float, draws: np.ndarray, level: float) -> Estimate:
    draws = draws[np.isfinite(draws)]
    if not np.isfinite(point):
        return Estimate(None)
    if draws.size == 0:
        return Estimate(float(point))
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a])
    return Estimate(float(point), float(lo), float(hi))


def _bootstrap_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(B, n) case weights: how often each case's patient was drawn in each resample."""
    ids, gid = np.unique(groups, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), size=(n_boot, len(ids)))
    per_group = np.stack([np.bincount(d, minlength=len(ids)) for d in draws])
    return per_group[:, gid].astype(np.float64)


def _roc(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, threshold) for "positive ⇔ score ≥ threshold", from +inf down."""
    order = np.argsort(-score, kind="mergesort")
    s, t = score[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(t)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(t.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~t).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def _threshold_at_specificity(y: np.ndarray, score: np.ndarray, spec: float) -> float:
    """The threshold whose specificity is ≥ ``spec`` with the highest sensitivity."""
    fpr, tpr, thr = _roc(y, score)
    ok = fpr <= 1 - spec + 1e-12
    return float(thr[np.flatnonzero(ok)[np.argmax(tpr[ok])]])


def _threshold_at_sensitivity(y: np.ndarray, score: np.ndarray, sens: float) -> float:
    """The threshold whose sensitivity is ≥ ``sens`` with the highest specificity."""
    fpr, tpr, thr = _roc(y, score)
    ok = tpr >= sens - 1e-12
    return float(thr[np.flatnonzero(ok)[np.argmin(fpr[ok])]])


def _mcnemar(a: np.ndarray, b: np.ndarray) -> float | None:
    """Exact two-sided McNemar p-value of two paired binary decisions (n,)."""
    from scipy.stats import binomtest

    b01, b10 = int((~a & b).sum()), int((a & ~b).sum())
    if b01 + b10 == 0:
        return 1.0
    return float(binomtest(b01, b01 + b10, 0.5).pvalue)


def majority_reference(reads: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, mask) from the readers' majority vote: (R, n) binary → (n,) and (n,) bool.

    A case where as many readers say yes as no (even R) has no majority and is left out (mask False).
    """
    reads = np.asarray(reads, dtype=np.float64)
    yes = np.nansum(reads, 0)
    votes = np.isfinite(reads).sum(0)
    return (yes * 2 > votes).astype(np.float64), (yes * 2 != votes) & (votes > 0)


def compare_with_readers(
    y: Sequence[float] | np.ndarray,
    score: Sequence[float] | np.ndarray,
    reads: np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    *,
    names: Sequence[str] | None = None,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> ReaderComparison:
    """Compare a model with readers on one finding (see the module docstring).

    Args:
        y: (n,) reference labels, 0/1.
        score: (n,) model scores (any real values: the ROC statistics use ranks only).
        reads: (R, n) readers' binary reads of the same cases.
        groups: (n,) patient of each case (the bootstrap resamples patients); default: each case.
        names: R reader names (default R1, R2, ...).
        threshold: the model's operating point for its F1 (default: none → F1 not compared).
        n_boot, seed, level: the patient bootstrap.

    Raises:
        CxrkitError: shapes that disagree, non-binary reads, or no positive or no negative case.
    """
    y = np.asarray(y, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    reads = np.atleast_2d(np.asarray(reads, dtype=np.float64))
    n = y.shape[0]
    if score.shape != (n,) or reads.shape[1] != n:
        raise CxrkitError(
            f"readers: labels ({n}), scores {score.shape} and reads {reads.shape} must cover the "
            "same cases."
        )
    if not np.isin(y, (0, 1)).all() or not np.isin(reads, (0, 1)).all():
        raise CxrkitError("readers: labels and reads must be 0 or 1 (leave unlabelled cases out).")
    if not np.isfinite(score).all():
        raise CxrkitError("readers: model scores must be finite numbers.")
    truth = y.astype(bool)
    if truth.all() or not truth.any():
        raise CxrkitError("readers: the reference has no positive or no negative case.")
    names = list(names) if names is not None else [f"R{i + 1}" for i in range(len(reads))]
    groups = np.arange(n) if groups is None else np.asarray(groups)
    w = _bootstrap_weights(groups, n_boot, seed)  # (B, n)
    ok = ((w * truth).sum(1) > 0) & ((w * ~truth).sum(1) > 0)
    w = w[ok]
    ones = np.ones((1, n))
    rb = reads.astype(bool)
    reader_point = _stats(_counts(rb, truth, ones))  # each (1, R)
    reader_boot = _stats(_counts(rb, truth, w))  # each (B, R)
    fpr, tpr, _ = _roc(truth, score)
    results = []
    below = 0
    for r, name in enumerate(names):
        sens_r = float(reader_point["sensitivity"][0, r])
        spec_r = float(reader_point["specificity"][0, r])
        model_sens_here = float(tpr[fpr <= 1 - spec_r + 1e-12].max())
        is_below = model_sens_here > sens_r + 1e-12
        below += is_below
        at_spec = _matched(truth, score, rb[r], w, level, "sensitivity", spec_r)
        at_sens = _matched(truth, score, rb[r], w, level, "specificity", sens_r)
        c = _counts(rb[r : r + 1], truth, ones)[0, 0].astype(int)
        results.append(
            ReaderResult(
                name=name,
                tp=int(c[0]),
                fp=int(c[1]),
                fn=int(c[2]),
                tn=int(c[3]),
                stats={
                    k: _estimate(reader_point[k][0, r], reader_boot[k][:, r], level)
                    for k in READER_STATS
                },
                below_model_curve=bool(is_below),
                model_at_reader_specificity=at_spec,
                model_at_reader_sensitivity=at_sens,
            )
        )
    mean_f1_point = float(np.nanmean(reader_point["f1"][0]))
    mean_f1_boot = np.nanmean(reader_boot["f1"], axis=1)
    notes = []
    if threshold is None:
        model_f1 = diff = Estimate(None)
        p = None
        notes.append("no operating point for the model: its F1 is not compared")
    else:
        pred = (score >= threshold)[None, :]
        f1_point = float(_stats(_counts(pred, truth, ones))["f1"][0, 0])
        f1_boot = _stats(_counts(pred, truth, w))["f1"][:, 0]
        model_f1 = _estimate(f1_point, f1_boot, level)
        d = f1_boot - mean_f1_boot
        diff = _estimate(f1_point - mean_f1_point, d, level)
        d = d[np.isfinite(d)]
        p = None if d.size == 0 else float(min(1.0, 2 * min((d <= 0).mean(), (d >= 0).mean())))
    return ReaderComparison(
        n=n,
        positives=int(truth.sum()),
        readers=results,
        readers_below_curve=int(below),
        model_f1=model_f1,
        mean_reader_f1=_estimate(mean_f1_point, mean_f1_boot, level),
        f1_difference=diff,
        f1_p=p,
        threshold=threshold,
        n_bootstrap=int(ok.sum()),
        level=level,
        skipped=int((~ok).sum()),
        notes=notes,
    )


def _matched(
    truth: np.ndarray,
    score: np.ndarray,
    read: np.ndarray,
    w: np.ndarray,
    level: float,
    what: str,
    reader_other: float,
) -> MatchedPoint:
    """The model's ``what`` (sensitivity/specificity) at the threshold matching the reader's other
    statistic; the reader's own ``what``; their paired bootstrap difference and McNemar's test."""
    if what == "sensitivity":
        t = _threshold_at_specificity(truth, score, reader_other)
        cases = truth  # sensitivity compares decisions on the positive cases
    else:
        t = _threshold_at_sensitivity(truth, score, reader_other)
        cases = ~truth
    if not np.isfinite(t):
        return MatchedPoint(None, Estimate(None), None, Estimate(None), None)
    model_pred = score >= t
    both = np.stack([model_pred, read])
    point = _stats(_counts(both, truth, np.ones((1, len(truth)))))[what][0]
    boot = _stats(_counts(both, truth, w))[what]
    return MatchedPoint(
        threshold=float(t),
        model=_estimate(point[0], boot[:, 0], level),
        reader=_num(point[1]),
        difference=_estimate(point[0] - point[1], boot[:, 0] - boot[:, 1], level),
        mcnemar_p=_mcnemar(model_pred[cases], read[cases]),
    )


def comparison_from_dict(data: dict) -> ReaderComparison:
    """A :class:`ReaderComparison` from its JSON form (as ``metrics.json`` holds it)."""

    def est(d: dict | None) -> Estimate:
        return Estimate(**d) if d else Estimate(None)

    def matched(d: dict) -> MatchedPoint:
        return MatchedPoint(
            threshold=d.get("threshold"),
            model=est(d.get("model")),
            reader=d.get("reader"),
            difference=est(d.get("difference")),
            mcnemar_p=d.get("mcnemar_p"),
        )

    readers = [
        ReaderResult(
            name=r["name"],
            tp=r["tp"],
            fp=r["fp"],
            fn=r["fn"],
            tn=r["tn"],
            stats={k: est(v) for k, v in r["stats"].items()},
            below_model_curve=r["below_model_curve"],
            model_at_reader_specificity=matched(r["model_at_reader_specificity"]),
            model_at_reader_sensitivity=matched(r["model_at_reader_sensitivity"]),
        )
        for r in data["readers"]
    ]
    return ReaderComparison(
        **{
            k: v
            for k, v in data.items()
            if k not in {"readers", "model_f1", "mean_reader_f1", "f1_difference"}
        },
        readers=readers,
        model_f1=est(data.get("model_f1")),
        mean_reader_f1=est(data.get("mean_reader_f1")),
        f1_difference=est(data.get("f1_difference")),
    )
