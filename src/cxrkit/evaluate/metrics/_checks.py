"""Input checks and small conversions shared by the metrics modules (see the package docstring
for the array conventions).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.core.errors import CxrkitError, preview


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
    y: Any, mask: Any, probs: Any, findings: Sequence[str] | None, *, scores: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Validate the (N, L) inputs; return float64 y, bool mask, float64 probs and L names.

    ``scores=True`` accepts any finite real values (rank metrics need no probabilities)."""
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
    if scores:
        bad = ~np.isfinite(probs)
        if bad.any():
            j = int(np.flatnonzero(bad.any(axis=0))[0])
            raise CxrkitError(
                f"scores for '{findings[j]}' have {int(bad[:, j].sum())} value(s) that are not "
                "finite numbers (NaN or infinite): leave those rows out."
            )
        bad = np.zeros_like(bad)
    else:
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
