"""AUROC and average precision, DeLong's variance, interval and paired test, and the weighted
AUROC / AP kernel the bootstrap runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy import stats

from cxrkit.core.errors import CxrkitError
from cxrkit.evaluate.metrics._checks import _check_level, _scores_1d

# --------------------------------------------------------------------------- AUROC and DeLong


def auroc(y_true: Any, score: Any) -> float:
    """Area under the ROC curve (ties count one half).

    Args:
        y_true: (n,) targets, positive when >= 0.5.
        score: (n,) scores, higher meaning more likely positive.

    Returns:
        The AUROC, or NaN when only one class is present.
    """
    from sklearn.metrics import roc_auc_score

    pos, score = _scores_1d(y_true, score)
    if pos.all() or not pos.any():
        return float("nan")
    return float(roc_auc_score(pos, score))


def average_precision(y_true: Any, score: Any) -> float:
    """Average precision (area under the step precision-recall curve, as scikit-learn).

    Returns NaN when there is no positive case.
    """
    from sklearn.metrics import average_precision_score

    pos, score = _scores_1d(y_true, score)
    if not pos.any():
        return float("nan")
    return float(average_precision_score(pos, score))


def _placements(pos: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sun & Xu (2014) midrank placements for K score vectors on the same cases.

    Args:
        pos: (n,) bool, the positive cases.
        scores: (K, n) scores.

    Returns:
        auc (K,), v10 (K, m) the fraction of negatives below each positive (ties 1/2) and
        v01 (K, k) the fraction of positives above each negative, for m positives, k negatives.
    """
    x, y = scores[:, pos], scores[:, ~pos]
    m, k = x.shape[1], y.shape[1]
    tx = stats.rankdata(x, axis=1)
    ty = stats.rankdata(y, axis=1)
    tz = stats.rankdata(np.concatenate([x, y], axis=1), axis=1)
    v10 = (tz[:, :m] - tx) / k
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return v10.mean(axis=1), v10, v01


def _delong_cov(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """(K, K) DeLong covariance of the K AUCs; NaN when a class has fewer than 2 cases."""
    n_scores, m = v10.shape
    k = v01.shape[1]
    if m < 2 or k < 2:
        return np.full((n_scores, n_scores), np.nan)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return s10 / m + s01 / k


def delong(y_true: Any, score: Any) -> tuple[float, float]:
    """AUROC and its DeLong (1988) variance, by the O(n log n) algorithm of Sun & Xu (2014).

    Args:
        y_true: (n,) targets, positive when >= 0.5.
        score: (n,) scores.

    Returns:
        ``(auc, variance)``; both NaN when only one class is present, the variance NaN when a
        class has a single case.
    """
    pos, score = _scores_1d(y_true, score)
    if pos.all() or not pos.any():
        return float("nan"), float("nan")
    auc, v10, v01 = _placements(pos, score[None, :])
    return float(auc[0]), float(_delong_cov(v10, v01)[0, 0])


def delong_ci(y_true: Any, score: Any, level: float = 0.95) -> tuple[float, float, float]:
    """AUROC with a DeLong (normal) confidence interval clipped to [0, 1].

    Returns:
        ``(auc, lo, hi)``; NaN where :func:`delong` gives NaN.
    """
    level = _check_level(level)
    auc, var = delong(y_true, score)
    if not (math.isfinite(auc) and math.isfinite(var)):
        return auc, float("nan"), float("nan")
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(max(var, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def delong_test(y_true: Any, score_a: Any, score_b: Any) -> dict[str, float]:
    """DeLong's paired test of two models' AUROCs on the same cases (two-sided).

    Args:
        y_true: (n,) targets, positive when >= 0.5.
        score_a: (n,) scores of model A.
        score_b: (n,) scores of model B, same cases in the same order.

    Returns:
        ``{"auc_a", "auc_b", "diff" (a - b), "z", "p_value"}``. Identical AUCs with zero variance
        of the difference give ``z = 0, p = 1``.
    """
    pos, a = _scores_1d(y_true, score_a)
    _, b = _scores_1d(y_true, score_b)
    if pos.all() or not pos.any():
        raise CxrkitError(
            "DeLong's test needs both positive and negative cases; "
            f"got {int(pos.sum())} positives and {int((~pos).sum())} negatives."
        )
    auc, v10, v01 = _placements(pos, np.stack([a, b]))
    cov = _delong_cov(v10, v01)
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    if not math.isfinite(var):
        z, p = float("nan"), float("nan")
    elif var <= 0.0:
        z, p = (0.0, 1.0) if diff == 0.0 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        p = float(2.0 * stats.norm.sf(abs(z)))
    return {"auc_a": float(auc[0]), "auc_b": float(auc[1]), "diff": diff, "z": z, "p_value": p}


# --------------------------------------------------------------------------- weighted AUROC / AP


@dataclass
class _Task:
    """One AUROC/AP computed for many weight vectors (one per resample).

    Cases are sorted by score; positives with equal scores form a group. ``m_*`` map per-group
    (patient) weights to sums: rows of ``m_neg`` are runs of negatives between consecutive
    positive groups, rows of ``m_pos`` the positive groups, rows of ``m_tie`` the negatives
    tied with each positive group (None without ties).
    """

    m_neg: sp.csr_matrix  # (S, G)
    m_pos: sp.csr_matrix  # (P, G)
    m_tie: sp.csr_matrix | None  # (P, G)
    below: np.ndarray  # (P,) row of the negatives' running sum strictly below each group
    with_ap: bool = True  # False: AUROC only (the micro average needs no AP)


def _prepare(score: np.ndarray, pos: np.ndarray, gid: np.ndarray, n_groups: int) -> _Task | None:
    """Build the sums for one finding; None when a class is absent."""
    order = np.argsort(score, kind="stable")
    s, p, g = score[order], pos[order], gid[order]
    s_neg, g_neg = s[~p], g[~p]
    s_pos, g_pos = s[p], g[p]
    if len(s_neg) == 0 or len(s_pos) == 0:
        return None
    new = np.r_[True, s_pos[1:] != s_pos[:-1]]
    group = np.cumsum(new) - 1  # (n_pos,) tie group of each positive
    first = s_pos[new]  # (P,) the groups' scores, ascending
    left = np.searchsorted(s_neg, first, "left")
    right = np.searchsorted(s_neg, first, "right")
    cuts, below = np.unique(left, return_inverse=True)
    # Negative i goes to run r = #cuts <= i, so the running sum of runs 0..r counts the
    # negatives strictly below cuts[r].
    run = np.searchsorted(cuts, np.arange(len(s_neg)), "right")
    ones = np.ones(len(s_neg))
    m_neg = sp.csr_matrix((ones, (run, g_neg)), shape=(len(cuts) + 1, n_groups))
    m_pos = sp.csr_matrix((np.ones(len(s_pos)), (group, g_pos)), shape=(len(first), n_groups))
    tied = right - left
    m_tie = None
    if tied.any():
        total = int(tied.sum())
        idx = np.repeat(left, tied) + np.arange(total) - np.repeat(np.cumsum(tied) - tied, tied)
        rows = np.repeat(np.arange(len(first)), tied)
        m_tie = sp.csr_matrix((np.ones(total), (rows, g_neg[idx])), shape=m_pos.shape)
    return _Task(m_neg, m_pos, m_tie, below.astype(np.intp))


def _kernel(task: _Task, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted AUROC and AP for B weight vectors.

    Args:
        task: the prepared finding.
        w: (G, B) float64 weight of each group in each resample.

    Returns:
        auc (B,), ap (B,); NaN where a class has zero weight.
    """
    neg_runs = task.m_neg @ w  # (S, B)
    neg_cum = np.cumsum(neg_runs, axis=0)  # (S, B)
    w_neg = neg_cum[-1]  # (B,)
    pos_w = task.m_pos @ w  # (P, B)
    w_pos = pos_w.sum(axis=0)
    below = neg_cum[task.below]  # (P, B) negative weight strictly below each positive group
    if task.m_tie is None:
        num = np.einsum("pb,pb->b", pos_w, below)
    else:  # a tied negative counts one half
        half = task.m_tie @ w
        half *= 0.5
        half += below
        num = np.einsum("pb,pb->b", pos_w, half)
    ok = (w_pos > 0) & (w_neg > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = np.where(ok, num / (w_pos * w_neg), np.nan)
    if not task.with_ap:
        return auc, np.full_like(auc, np.nan)
    # Average precision: each positive group at the threshold "score >= its score". In place,
    # as these arrays are the largest in the bootstrap.
    tp = np.cumsum(pos_w, axis=0)
    np.subtract(w_pos, tp, out=tp)
    tp += pos_w  # (P, B) positive weight at or above the group
    np.subtract(w_neg, below, out=below)
    below += tp  # (P, B) all weight at or above the group, > 0 wherever pos_w > 0
    np.maximum(below, 1e-300, out=below)
    np.divide(tp, below, out=tp)  # precision
    ap_num = np.einsum("pb,pb->b", pos_w, tp)
    with np.errstate(divide="ignore", invalid="ignore"):
        ap = np.where(ok, ap_num / w_pos, np.nan)
    return auc, ap


def weighted_auroc_ap(y_true: Any, score: Any, weight: Any | None = None) -> tuple[float, float]:
    """AUROC and average precision with non-negative integer case weights.

    The same code the bootstrap runs; equal to scikit-learn's ``roc_auc_score`` and
    ``average_precision_score`` with ``sample_weight`` (ties included).

    Args:
        y_true: (n,) targets, positive when >= 0.5.
        score: (n,) scores.
        weight: (n,) weights (how many times each case counts); None for all ones.

    Returns:
        ``(auroc, ap)``, NaN when a class has zero total weight.
    """
    pos, score = _scores_1d(y_true, score)
    n = len(score)
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != (n,) or (w < 0).any() or not np.isfinite(w).all():
        raise CxrkitError(f"weight must be ({n},) non-negative numbers; got shape {w.shape}.")
    task = _prepare(score, pos, np.arange(n), n)
    if task is None:
        return float("nan"), float("nan")
    auc, ap = _kernel(task, w[:, None])
    return float(auc[0]), float(ap[0])
