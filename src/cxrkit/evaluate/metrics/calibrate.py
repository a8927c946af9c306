"""Calibration: reliability bins with the expected calibration error, and temperature scaling."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit

from cxrkit.core.errors import CxrkitError
from cxrkit.evaluate.metrics._checks import _check_arrays, _num, _scores_1d

#: Probabilities are clipped this far from 0 and 1 before taking logits (temperature scaling).
_EPS = 1e-7

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
