"""Evaluation numerics: AUROC with DeLong and patient-bootstrap intervals, operating points,
confusion counts, calibration and study-level aggregation.

Pure numpy in, plain Python out: :func:`evaluate` returns the content of ``metrics.json`` with
plain ``float`` / ``int`` / ``None`` only (an undefined value is ``None``, never NaN).

Conventions used everywhere here:

- ``y`` (N, L) float targets: an entry is positive when ``y >= 0.5``.
- ``mask`` (N, L) bool: False means "not labelled" and the entry is left out of every metric.
- ``probs`` (N, L) float probabilities in [0, 1].
- ``groups`` (N,) patient ids (any hashable): the bootstrap resamples patients, not images.
- A case is called positive at threshold ``t`` when ``score >= t``.

See docs/metrics.md for the definitions and the decisions.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

from cxrkit.core.errors import CxrkitError, did_you_mean, preview
from cxrkit.core.findings import COMPETITION_FINDINGS

#: Operating-point methods accepted by :func:`fit_threshold`.
THRESHOLD_METHODS: tuple[str, ...] = ("fixed", "youden", "max_f1", "sensitivity", "specificity")
#: Study-level aggregations accepted by :func:`aggregate_studies`.
AGGREGATIONS: tuple[str, ...] = ("max", "mean")
#: Threshold used for a finding the caller fitted none for.
DEFAULT_THRESHOLD = 0.5

#: Resamples drawn from one random stream. Fixed, so that a seed gives the same intervals whatever
#: the number of workers.
_CHUNK = 32
#: Largest (rows x resamples) working array in the bootstrap kernel (32 MiB of float64): big
#: tasks (micro-averaging pools every labelled entry) run on fewer resamples at a time.
_CELLS = 1 << 22
#: Probabilities are clipped this far from 0 and 1 before taking logits (temperature scaling).
_EPS = 1e-7


# --------------------------------------------------------------------------- input checks


def _scores_1d(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """(n,) bool positives and (n,) float64 scores, or a CxrkitError."""
    y_true = np.asarray(y_true, dtype=np.float64)
    score = np.asarray(score, dtype=np.float64)
    if y_true.ndim != 1 or score.shape != y_true.shape:
        raise CxrkitError(
            f"y_true has shape {y_true.shape} and score has shape {score.shape}: give two 1-D "
            "arrays of the same length (one entry per labelled case)."
        )
    if np.isnan(y_true).any():
        raise CxrkitError(
            f"y_true has {int(np.isnan(y_true).sum())} NaN values: drop unlabelled cases first."
        )
    if not np.isfinite(score).all():
        raise CxrkitError(
            f"score has {int((~np.isfinite(score)).sum())} NaN or infinite values: give finite "
            "scores."
        )
    return y_true >= 0.5, score


def _check_level(level: float) -> float:
    if not (isinstance(level, (int, float, np.floating)) and 0.0 < float(level) < 1.0):
        raise CxrkitError(
            f"the confidence level must be between 0 and 1 (e.g. 0.95); got {level!r}."
        )
    return float(level)


def _check_target(target: Any, method: str) -> float:
    ok = isinstance(target, (int, float, np.floating, np.integer)) and 0.0 < float(target) < 1.0
    if not ok:
        raise CxrkitError(
            f"the target for method '{method}' must be a number strictly between 0 and 1 "
            f"(e.g. 0.9); got {target!r}."
        )
    return float(target)


def _group_ids(groups: Any, n: int, what: str = "groups") -> tuple[np.ndarray, np.ndarray]:
    """(n,) int codes in order of first appearance and the (G,) unique values."""
    values = np.asarray(groups, dtype=object) if not isinstance(groups, np.ndarray) else groups
    if values.ndim != 1 or len(values) != n:
        raise CxrkitError(
            f"{what} has shape {np.shape(values)}; expected ({n},): one id per image."
        )
    codes, uniques = pd.factorize(pd.Series(values), sort=False)
    if (codes < 0).any():
        raise CxrkitError(
            f"{what} has {int((codes < 0).sum())} missing ids: give every image an id."
        )
    return codes.astype(np.int64), np.asarray(uniques)


def _check_arrays(
    y: Any, mask: Any, probs: Any, findings: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Validate the (N, L) inputs; return float64 y, bool mask, float64 probs and L names."""
    y = np.asarray(y, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    mask = np.asarray(mask)
    if probs.ndim != 2:
        raise CxrkitError(
            f"probs has shape {probs.shape}; expected (images, findings), a 2-D array."
        )
    if y.shape != probs.shape or mask.shape != probs.shape:
        raise CxrkitError(
            f"y has shape {y.shape}, mask {mask.shape} and probs {probs.shape}: all three must "
            "be (images, findings) with the same shape."
        )
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise CxrkitError("mask must be boolean (True = labelled); got other values.")
        mask = mask.astype(bool)
    n_labels = probs.shape[1]
    if findings is None:
        findings = [f"finding_{j}" for j in range(n_labels)]
    findings = [str(f) for f in findings]
    if len(findings) != n_labels:
        raise CxrkitError(
            f"{len(findings)} finding names for {n_labels} columns of probs: give one name per "
            "column, in column order."
        )
    if len(set(findings)) != len(findings):
        dup = sorted({f for f in findings if findings.count(f) > 1})
        raise CxrkitError(f"finding names must be distinct; repeated: {preview(dup)}.")
    bad = ~((probs >= 0.0) & (probs <= 1.0))  # NaN fails both comparisons
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        j = int(cols[0])
        k = int(bad[:, j].sum())
        example = probs[bad[:, j], j][0]
        more = f" ({len(cols) - 1} more findings too)" if len(cols) > 1 else ""
        raise CxrkitError(
            f"probabilities for '{findings[j]}' have {k} values outside [0, 1] or NaN "
            f"(e.g. {example}){more}: pass sigmoid probabilities, not logits."
        )
    nan_y = np.isnan(y) & mask
    if nan_y.any():
        j = int(np.flatnonzero(nan_y.any(axis=0))[0])
        raise CxrkitError(
            f"y is NaN in {int(nan_y[:, j].sum())} labelled entries of '{findings[j]}': set "
            "mask to False where there is no label."
        )
    return y, mask, probs, findings


def _num(x: Any) -> float | None:
    """A plain float, or None for NaN / infinity / None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _ratio(a: float, b: float) -> float | None:
    return float(a) / float(b) if b else None


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


# --------------------------------------------------------------------------- bootstrap


def _resample_chunk(
    seq: np.random.SeedSequence, size: int, n_groups: int, tasks: list[_Task | None]
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC and AP of every task on ``size`` patient resamples: two (T, size) arrays."""
    rng = np.random.default_rng(seq)
    draws = rng.integers(0, n_groups, size=(size, n_groups))
    draws += (np.arange(size) * n_groups)[:, None]
    counts = np.bincount(draws.ravel(), minlength=size * n_groups).reshape(size, n_groups)
    w = np.ascontiguousarray(counts.T, dtype=np.float64)  # (G, size): times each patient drawn
    aucs = np.full((len(tasks), size), np.nan)
    aps = np.full((len(tasks), size), np.nan)
    for t, task in enumerate(tasks):
        if task is None:
            continue
        rows = max(task.m_neg.shape[0], task.m_pos.shape[0])
        step = max(1, min(size, _CELLS // max(rows, 1)))
        for c in range(0, size, step):
            sub = w if step == size else np.ascontiguousarray(w[:, c : c + step])
            aucs[t, c : c + step], aps[t, c : c + step] = _kernel(task, sub)
    return aucs, aps


def _percentile_ci(values: np.ndarray, level: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return None
    lo, hi = np.quantile(values, [0.5 - level / 2, 0.5 + level / 2])
    return [float(lo), float(hi)]


def _row_mean(a: np.ndarray) -> np.ndarray:
    """Mean over columns of the finite entries of each row; NaN for a row with none."""
    if a.shape[1] == 0:
        return np.full(a.shape[0], np.nan)
    ok = np.isfinite(a)
    count = ok.sum(axis=1)
    total = np.where(ok, a, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


#: What the forked bootstrap workers read (inherited at the fork, never pickled): (seeds, sizes,
#: number of groups, tasks). Set only while a pool runs, under the lock.
_POOL_STATE: tuple[list[np.random.SeedSequence], list[int], int, list[_Task | None]] | None = None
_POOL_LOCK = threading.Lock()


def _pool_chunk(k: int) -> tuple[np.ndarray, np.ndarray]:
    assert _POOL_STATE is not None
    seqs, sizes, n_groups, tasks = _POOL_STATE
    return _resample_chunk(seqs[k], sizes[k], n_groups, tasks)


def _run_chunks(
    seqs: list[np.random.SeedSequence],
    sizes: list[int],
    n_groups: int,
    tasks: list[_Task | None],
    workers: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every chunk's (AUROC, AP) arrays, in chunk order.

    Several workers are forked processes (cxrkit.core.parallel's pool), not threads: the kernel's
    large temporaries made threads spend much of their time in page faults.
    """
    global _POOL_STATE
    if workers <= 1 or os.name != "posix":
        return [_resample_chunk(q, b, n_groups, tasks) for q, b in zip(seqs, sizes, strict=True)]
    from cxrkit.core.parallel import process_pool

    with _POOL_LOCK:
        _POOL_STATE = (seqs, sizes, n_groups, tasks)
        try:
            with process_pool(workers) as pool:
                return pool.map(_pool_chunk, range(len(sizes)), chunksize=1)
        finally:
            _POOL_STATE = None


def _usable_cores() -> int:
    from cxrkit.core.parallel import usable_cores

    return usable_cores()


def bootstrap_auroc(
    y: Any,
    mask: Any,
    probs: Any,
    groups: Any | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    findings: Sequence[str] | None = None,
    competition: Sequence[str] | None = None,
    *,
    workers: int | None = None,
) -> dict[str, Any]:
    """Percentile confidence intervals from a seeded bootstrap over patients.

    Each resample draws the patients (``groups``) with replacement; an image counts as many
    times as its patient was drawn. Without ``groups`` images are resampled. A resample in which
    a finding has no positive or no negative weight is skipped for that finding and counted.

    Args:
        y: (N, L) targets, positive when >= 0.5.
        mask: (N, L) bool, False = not labelled (left out).
        probs: (N, L) probabilities.
        groups: (N,) patient ids; None resamples images.
        n_boot: number of resamples.
        seed: seed of the resampling (same seed, same intervals, whatever ``workers``).
        level: confidence level of the intervals.
        findings: the L finding names (default ``finding_0``...).
        competition: findings averaged as the competition mean (default the five CheXpert
            competition findings); those not among ``findings`` are ignored.
        workers: worker processes (default: the usable cores; 1 runs in this process).

    Returns:
        ``{"n_bootstrap", "seed", "level", "n_groups", "findings": {name: {"auroc_ci",
        "auprc_ci", "skipped"}}, "macro_auroc_ci", "macro_skipped", "micro_auroc_ci",
        "micro_skipped", "competition_auroc_ci", "competition_findings",
        "competition_skipped"}``; an interval is ``[lo, hi]`` or None when no resample defined it.
    """
    y, mask, probs, findings = _check_arrays(y, mask, probs, findings)
    level = _check_level(level)
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise CxrkitError(f"n_boot must be a whole number, 1 or more; got {n_boot!r}.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CxrkitError(f"the bootstrap seed must be an integer, 0 or more; got {seed!r}.")
    n, n_labels = probs.shape
    if groups is None:
        gid, n_groups = np.arange(n), n
    else:
        gid, uniques = _group_ids(groups, n)
        n_groups = len(uniques)
    competition = list(COMPETITION_FINDINGS if competition is None else competition)
    comp_cols = [findings.index(f) for f in competition if f in findings]

    positive = y >= 0.5
    tasks: list[_Task | None] = []
    for j in range(n_labels):
        m = mask[:, j]
        tasks.append(_prepare(probs[m, j], positive[m, j], gid[m], n_groups))
    rows, cols = np.nonzero(mask)
    micro = _prepare(probs[rows, cols], positive[rows, cols], gid[rows], n_groups)
    if micro is not None:
        micro.with_ap = False
    tasks.append(micro)

    sizes = [min(_CHUNK, n_boot - s) for s in range(0, n_boot, _CHUNK)]
    seqs = np.random.SeedSequence(int(seed)).spawn(len(sizes))
    n_workers = max(1, min(workers or _usable_cores(), len(sizes)))
    parts = _run_chunks(seqs, sizes, n_groups, tasks, n_workers)
    aucs = np.concatenate([p[0] for p in parts], axis=1)  # (L + 1, n_boot)
    aps = np.concatenate([p[1] for p in parts], axis=1)

    per = aucs[:n_labels].T  # (n_boot, L)
    macro = _row_mean(per)
    comp = _row_mean(per[:, comp_cols])
    defined_comp = [findings[j] for j in comp_cols if tasks[j] is not None]
    return {
        "n_bootstrap": int(n_boot),
        "seed": int(seed),
        "level": level,
        "n_groups": int(n_groups),
        "findings": {
            name: {
                "auroc_ci": _percentile_ci(aucs[j], level),
                "auprc_ci": _percentile_ci(aps[j], level),
                "skipped": int((~np.isfinite(aucs[j])).sum()),
            }
            for j, name in enumerate(findings)
        },
        "macro_auroc_ci": _percentile_ci(macro, level),
        "macro_skipped": int((~np.isfinite(macro)).sum()),
        "micro_auroc_ci": _percentile_ci(aucs[n_labels], level),
        "micro_skipped": int((~np.isfinite(aucs[n_labels])).sum()),
        "competition_auroc_ci": _percentile_ci(comp, level) if defined_comp else None,
        "competition_findings": defined_comp,
        "competition_skipped": int((~np.isfinite(comp)).sum()) if defined_comp else int(n_boot),
    }


# --------------------------------------------------------------------------- operating points


def confusion(y_true: Any, score: Any, threshold: float) -> dict[str, int | float | None]:
    """Confusion counts and ratios at ``score >= threshold``.

    Returns:
        ``{"tp", "fp", "fn", "tn", "sensitivity", "specificity", "ppv", "npv", "f1",
        "accuracy"}``; a ratio whose denominator is 0 is None.
    """
    pos, score = _scores_1d(y_true, score)
    called = score >= float(threshold)
    tp = int((called & pos).sum())
    fp = int((called & ~pos).sum())
    fn = int((~called & pos).sum())
    tn = int((~called & ~pos).sum())
    return _confusion_dict(tp, fp, fn, tn)


def _confusion_dict(tp: int, fp: int, fn: int, tn: int) -> dict[str, int | float | None]:
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
    }


def fit_threshold(y_true: Any, score: Any, method: str, target: float | None = None) -> float:
    """Choose an operating point on validation data; the rule is positive ⇔ score >= threshold.

    Methods:
        ``fixed``: ``target``, or 0.5 without one.
        ``youden``: the threshold maximising sensitivity + specificity - 1.
        ``max_f1``: the threshold maximising F1.
        ``sensitivity``: the highest threshold whose sensitivity is >= ``target``.
        ``specificity``: the lowest threshold whose specificity is >= ``target``.

    The candidates are the observed scores plus one just above the highest (nothing positive);
    a tie in ``youden`` or ``max_f1`` goes to the highest threshold. ``target`` must be strictly
    between 0 and 1; ``youden`` and ``max_f1`` do not use it.

    Args:
        y_true: (n,) targets, positive when >= 0.5.
        score: (n,) scores.
        method: one of :data:`THRESHOLD_METHODS`.
        target: see the methods.

    Returns:
        The threshold.
    """
    if method not in THRESHOLD_METHODS:
        allowed = "{" + ", ".join(f"'{m}'" for m in THRESHOLD_METHODS) + "}"
        raise CxrkitError(
            f"The 'method' parameter must be one of {allowed}. Got '{method}' instead."
        )
    if target is not None:
        target = _check_target(target, method)
    if method == "fixed":
        return DEFAULT_THRESHOLD if target is None else target
    if method in ("sensitivity", "specificity") and target is None:
        raise CxrkitError(
            f"method '{method}' needs a target strictly between 0 and 1, e.g. 0.9 for "
            f"{method} >= 90 %."
        )
    pos, score = _scores_1d(y_true, score)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        missing = "positive" if n_pos == 0 else "negative"
        raise CxrkitError(
            f"cannot fit a '{method}' threshold: no {missing} cases among {len(score)}. Use "
            "method 'fixed', or fit on data with both classes."
        )
    cand = np.unique(score)
    cand = np.append(cand, np.nextafter(cand[-1], np.inf))  # (C,) ascending
    tp = n_pos - np.searchsorted(np.sort(score[pos]), cand, "left")
    fp = n_neg - np.searchsorted(np.sort(score[~pos]), cand, "left")
    sens = tp / n_pos
    spec = (n_neg - fp) / n_neg  # a quotient of integers: compares exactly with the target
    if method == "sensitivity":
        return float(cand[np.flatnonzero(sens >= target)[-1]])
    if method == "specificity":
        return float(cand[np.flatnonzero(spec >= target)[0]])
    # Youden's sens + spec - 1 times P N is an integer, so ties are exact; equal F1 fractions
    # give equal correctly rounded quotients.
    youden = method == "youden"
    value = tp * n_neg - fp * n_pos if youden else 2.0 * tp / (tp + fp + n_pos)
    best = len(cand) - 1 - int(np.argmax(value[::-1]))  # the highest of equal maxima
    return float(cand[best])


# --------------------------------------------------------------------------- calibration


def calibration(y_true: Any, score: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability bins and the expected calibration error.

    Equal-width bins on [0, 1] (a score of exactly 1 falls in the last bin). ECE is the
    count-weighted mean of ``|fraction_positive - mean_predicted|`` over non-empty bins.

    Args:
        y_true: (n,) targets, positive when >= 0.5.
        score: (n,) probabilities in [0, 1].
        n_bins: number of bins.

    Returns:
        ``{"ece", "bins": [{"lo", "hi", "count", "mean_predicted", "fraction_positive"}]}``;
        an empty bin has None means, and ``ece`` is None without cases.
    """
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise CxrkitError(f"n_bins must be a whole number, 1 or more; got {n_bins!r}.")
    pos, score = _scores_1d(y_true, score)
    if ((score < 0) | (score > 1)).any():
        raise CxrkitError(
            f"calibration needs probabilities in [0, 1]; {int(((score < 0) | (score > 1)).sum())} "
            "scores are outside."
        )
    idx = np.minimum((score * n_bins).astype(np.int64), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_p = np.bincount(idx, weights=score, minlength=n_bins)
    sum_y = np.bincount(idx, weights=pos.astype(np.float64), minlength=n_bins)
    bins, ece = [], 0.0
    for b in range(n_bins):
        c = int(count[b])
        mp = sum_p[b] / c if c else None
        fp = sum_y[b] / c if c else None
        if c:
            ece += c * abs(fp - mp)
        bins.append(
            {
                "lo": b / n_bins,
                "hi": (b + 1) / n_bins,
                "count": c,
                "mean_predicted": _num(mp),
                "fraction_positive": _num(fp),
            }
        )
    return {"ece": ece / len(score) if len(score) else None, "bins": bins}


def _bce(z: np.ndarray, t: np.ndarray) -> float:
    """Mean binary cross-entropy of logits ``z`` against 0/1 targets ``t``, computed stably."""
    return float(np.mean(np.logaddexp(0.0, z) - t * z))


def fit_temperature(probs: Any, y: Any, mask: Any) -> float:
    """One temperature T > 0 minimising the masked BCE of ``sigmoid(logit(p) / T)``.

    Fit on validation data, apply to test data with :func:`apply_temperature`. Targets are
    made 0/1 (``y >= 0.5``); probabilities are clipped to [1e-7, 1 - 1e-7] first.

    Args:
        probs: (N, L) probabilities.
        y: (N, L) targets.
        mask: (N, L) bool, False = not labelled (left out).

    Returns:
        T (> 1 softens over-confident probabilities, < 1 sharpens).
    """
    y, mask, probs, _ = _check_arrays(y, mask, probs, None)
    if not mask.any():
        raise CxrkitError("fit_temperature needs labelled entries; the mask is all False.")
    z = logit(np.clip(probs[mask], _EPS, 1.0 - _EPS))
    t = (y[mask] >= 0.5).astype(np.float64)
    res = minimize_scalar(
        lambda log_t: _bce(z / math.exp(log_t), t),
        bounds=(-6.0, 6.0),
        method="bounded",
        options={"xatol": 1e-7},
    )
    return float(math.exp(res.x))


def apply_temperature(probs: Any, temperature: float) -> np.ndarray:
    """``sigmoid(logit(p) / T)``; T = 1 returns the probabilities unchanged.

    Args:
        probs: (...) probabilities.
        temperature: T > 0 from :func:`fit_temperature`.

    Returns:
        (...) float64 probabilities.
    """
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise CxrkitError(f"the temperature must be a positive number; got {temperature!r}.")
    p = np.asarray(probs, dtype=np.float64)
    if t == 1.0:
        return p.copy()
    return expit(logit(np.clip(p, _EPS, 1.0 - _EPS)) / t)


# --------------------------------------------------------------------------- studies


def aggregate_studies(
    probs: Any,
    y: Any,
    mask: Any,
    study_ids: Any,
    how: str = "max",
    patient_ids: Any | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One row per study (CheXpert is scored per study, not per image).

    The probability is the max (or mean) over all the study's images; the target is the max over
    its labelled images and the study is labelled when any image is (an unlabelled study has
    target 0 and mask False).

    Args:
        probs: (N, L) image probabilities.
        y: (N, L) image targets.
        mask: (N, L) bool.
        study_ids: (N,) study id of each image.
        how: ``"max"`` or ``"mean"``.
        patient_ids: (N,) patient id of each image, carried to the studies (optional).

    Returns:
        ``(probs_s, y_s, mask_s, study_index, patient_ids_s)``: (S, L) float64, (S, L) float64,
        (S, L) bool, the (S,) study ids in order of first appearance, and the (S,) patient of
        each study (None without ``patient_ids``).
    """
    if how not in AGGREGATIONS:
        raise CxrkitError(did_you_mean(str(how), AGGREGATIONS, what="study aggregation"))
    y, mask, probs, _ = _check_arrays(y, mask, probs, None)
    n, n_labels = probs.shape
    code, studies = _group_ids(study_ids, n, what="study_ids")
    n_studies = len(studies)
    if how == "max":
        probs_s = np.full((n_studies, n_labels), -np.inf)
        np.maximum.at(probs_s, code, probs)
    else:
        probs_s = np.zeros((n_studies, n_labels))
        np.add.at(probs_s, code, probs)
        probs_s /= np.bincount(code, minlength=n_studies)[:, None]
    y_s = np.full((n_studies, n_labels), -np.inf)
    np.maximum.at(y_s, code, np.where(mask, y, -np.inf))
    mask_s = np.zeros((n_studies, n_labels), bool)
    np.logical_or.at(mask_s, code, mask)
    y_s[~mask_s] = 0.0
    patients_s = None
    if patient_ids is not None:
        pcode, puniq = _group_ids(patient_ids, n, what="patient_ids")
        first = np.full(n_studies, -1)
        first[code[::-1]] = np.arange(n)[::-1]  # first image of each study
        if (pcode != pcode[first][code]).any():
            bad = studies[np.unique(code[pcode != pcode[first][code]])]
            raise CxrkitError(
                f"{len(bad)} studies have images of more than one patient (e.g. "
                f"{preview(bad, 3)}): check the study and patient columns."
            )
        patients_s = puniq[pcode[first]]
    return probs_s, y_s, mask_s, studies, patients_s


# --------------------------------------------------------------------------- evaluate


def _undefined_reason(n_pos: int, n_neg: int) -> str | None:
    if n_pos and n_neg:
        return None
    if not n_pos and not n_neg:
        return "no labelled cases in the test set"
    if not n_pos:
        return f"no positive cases in the test set ({n_neg} negatives)"
    return f"no negative cases in the test set ({n_pos} positives)"


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def evaluate(
    y: Any,
    mask: Any,
    probs: Any,
    findings: Sequence[str],
    *,
    groups: Any | None = None,
    thresholds: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    competition: Sequence[str] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Every test-set metric, as written to ``metrics.json``.

    Per finding: counts, AUROC with a patient-bootstrap percentile CI and a DeLong CI, average
    precision with its bootstrap CI, and the confusion counts and ratios at the finding's
    threshold. Averages: macro AUROC (over findings with both classes, ``macro_n`` of them),
    micro AUROC (all labelled entries pooled), the mean AUROC over the competition findings
    present, and macro AUPRC / F1 / sensitivity / specificity over the same findings as the macro
    AUROC. ``confusion_total`` sums the counts over all findings.

    A finding without positive (or negative) labelled cases gets ``auroc: None`` and an
    ``undefined`` reason; it never stops the evaluation.

    Args:
        y: (N, L) targets, positive when >= 0.5.
        mask: (N, L) bool, False = not labelled.
        probs: (N, L) probabilities in [0, 1].
        findings: the L finding names.
        groups: (N,) patient ids for the bootstrap; None resamples images.
        thresholds: finding → threshold fitted on validation data; missing findings use 0.5.
        n_boot: bootstrap resamples; 0 skips the bootstrap (its intervals are None).
        seed: bootstrap seed.
        level: confidence level of every interval.
        competition: findings of the competition mean (default the five CheXpert ones).
        workers: bootstrap processes (default: the usable cores).

    Returns:
        A JSON-serialisable dict (plain floats, ints, strings, lists and None).
    """
    y, mask, probs, findings = _check_arrays(y, mask, probs, findings)
    level = _check_level(level)
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise CxrkitError(f"n_boot must be a whole number, 0 or more; got {n_boot!r}.")
    n, n_labels = probs.shape
    thresholds = dict(thresholds or {})
    for name, value in thresholds.items():
        if name not in findings:
            raise CxrkitError(did_you_mean(str(name), findings, what="finding in thresholds"))
        if not isinstance(value, (int, float, np.floating, np.integer)) or not math.isfinite(
            float(value)
        ):
            raise CxrkitError(f"the threshold for '{name}' must be a finite number; got {value!r}.")
    n_groups = n if groups is None else len(_group_ids(groups, n)[1])
    competition = list(COMPETITION_FINDINGS if competition is None else competition)
    boot = None
    if n_boot > 0:
        boot = bootstrap_auroc(
            y, mask, probs, groups, n_boot, seed, level, findings, competition, workers=workers
        )

    per: dict[str, dict[str, Any]] = {}
    total = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    for j, name in enumerate(findings):
        m = mask[:, j]
        yj, pj = y[m, j], probs[m, j]
        n_pos = int((yj >= 0.5).sum())
        n_neg = int(len(yj) - n_pos)
        reason = _undefined_reason(n_pos, n_neg)
        auc = ap = None
        ci_delong = None
        if reason is None:
            auc_v, lo, hi = delong_ci(yj, pj, level)
            auc = _num(auc_v)
            ci_delong = [float(lo), float(hi)] if math.isfinite(lo) else None
            ap = _num(average_precision(yj, pj))
        threshold = float(thresholds.get(name, DEFAULT_THRESHOLD))
        conf = confusion(yj, pj, threshold)
        for k in total:
            total[k] += conf[k]
        b = boot["findings"][name] if boot else None
        per[name] = {
            "n": int(len(yj)),
            "positives": n_pos,
            "negatives": n_neg,
            "prevalence": _ratio(n_pos, len(yj)),
            "auroc": auc,
            "auroc_ci": b["auroc_ci"] if b and reason is None else None,
            "auroc_ci_delong": ci_delong,
            "auprc": ap,
            "auprc_ci": b["auprc_ci"] if b and reason is None else None,
            "bootstrap_skipped": b["skipped"] if b else None,
            "threshold": threshold,
            **conf,
            "undefined": reason,
        }

    defined = [name for name in findings if per[name]["undefined"] is None]
    rows, cols = np.nonzero(mask)
    micro = auroc(y[rows, cols], probs[rows, cols]) if len(rows) else float("nan")
    comp_used = [f for f in competition if f in defined]
    average = {
        "macro_auroc": _mean([per[f]["auroc"] for f in defined]),
        "macro_auroc_ci": boot["macro_auroc_ci"] if boot and defined else None,
        "macro_n": len(defined),
        "micro_auroc": _num(micro),
        "micro_auroc_ci": boot["micro_auroc_ci"] if boot and _num(micro) is not None else None,
        "competition_auroc": _mean([per[f]["auroc"] for f in comp_used]),
        "competition_auroc_ci": boot["competition_auroc_ci"] if boot and comp_used else None,
        "competition_findings": comp_used,
        "macro_auprc": _mean([per[f]["auprc"] for f in defined]),
        "macro_f1": _mean([per[f]["f1"] for f in defined]),
        "macro_sensitivity": _mean([per[f]["sensitivity"] for f in defined]),
        "macro_specificity": _mean([per[f]["specificity"] for f in defined]),
    }
    if boot:
        average["macro_bootstrap_skipped"] = boot["macro_skipped"]
        average["micro_bootstrap_skipped"] = boot["micro_skipped"]
        average["competition_bootstrap_skipped"] = boot["competition_skipped"]
    return {
        "n_images": int(n),
        "n_groups": int(n_groups),
        "level": level,
        "n_bootstrap": int(n_boot),
        "seed": int(seed),
        "findings": per,
        "average": average,
        "confusion_total": _confusion_dict(**total),
    }


__all__ = [
    "AGGREGATIONS",
    "DEFAULT_THRESHOLD",
    "THRESHOLD_METHODS",
    "aggregate_studies",
    "apply_temperature",
    "auroc",
    "average_precision",
    "bootstrap_auroc",
    "calibration",
    "confusion",
    "delong",
    "delong_ci",
    "delong_test",
    "evaluate",
    "fit_temperature",
    "fit_threshold",
    "weighted_auroc_ap",
]
