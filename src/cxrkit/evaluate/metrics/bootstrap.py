"""The seeded patient-cluster bootstrap of AUROC / AP intervals, and its pool of forked workers."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrkit.core.errors import CxrkitError
from cxrkit.core.findings import COMPETITION_FINDINGS
from cxrkit.evaluate.metrics._checks import _check_arrays, _check_level, _group_ids
from cxrkit.evaluate.metrics.roc import _kernel, _prepare, _Task

#: Resamples drawn from one random stream. Fixed, so that a seed gives the same intervals whatever
#: the number of workers.
_CHUNK = 32
#: Largest (rows x resamples) working array in the bootstrap kernel (32 MiB of float64): big
#: tasks (micro-averaging pools every labelled entry) run on fewer resamples at a time.
_CELLS = 1 << 22

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
    # AUROC and AP are rank statistics: any finite scores will do
    y, mask, probs, findings = _check_arrays(y, mask, probs, findings, scores=True)
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


def roc_band(
    y: np.ndarray,
    s: np.ndarray,
    groups: np.ndarray | None,
    n: int,
    seed: int,
    level: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pointwise percentile band of the ROC curve (TPR at 101 fixed FPR values) over a patient
    bootstrap of ``n`` resamples; a resample without both classes is skipped.

    Args:
        y: (n,) 0/1 targets.
        s: (n,) scores.
        groups: (n,) patient ids; None resamples cases.
        n: resamples.
        seed: seed of the resampling.
        level: confidence level of the band.

    Returns:
        (grid, lo, hi): the FPR grid and the band's TPR bounds (NaN without any usable resample).
    """
    import pandas as pd
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
