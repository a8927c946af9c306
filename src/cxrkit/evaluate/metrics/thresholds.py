"""Operating points: confusion counts at a threshold and the threshold-fitting methods."""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrkit.core.errors import CxrkitError
from cxrkit.evaluate.metrics._checks import _check_target, _ratio, _scores_1d

#: The operating-point methods: accepted by :func:`fit_threshold`, :class:`OperatingPoints` and
#: ``cxrkit evaluate --operating-point``.
THRESHOLD_METHODS: tuple[str, ...] = ("fixed", "youden", "max_f1", "sensitivity", "specificity")
#: Threshold used for a finding the caller fitted none for.
DEFAULT_THRESHOLD = 0.5

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


class OperatingPoints:
    """Per-finding operating points fitted on labelled data, in the scikit-learn style.

    ``OperatingPoints("youden").fit(probs, y, mask, findings, part="val")`` sets
    ``thresholds_`` (finding → threshold, None where a finding's fitting data has no positive or
    no negative case) and ``unfitted_`` (finding → why it has none; the caller decides with
    :data:`DEFAULT_THRESHOLD` there). ``fixed`` needs no data: every finding gets ``target``
    (default 0.5).

    Args:
        method: one of :data:`THRESHOLD_METHODS`.
        target: the threshold of ``fixed``, the sensitivity or specificity to reach.
    """

    def __init__(self, method: str = "youden", target: float | None = None) -> None:
        self.method = method
        self.target = target

    def fit(
        self, probs: Any, y: Any, mask: Any, findings: list[str], *, part: str = "val"
    ) -> OperatingPoints:
        """Fit one threshold per column.

        Args:
            probs: (N, L) probabilities (None for ``fixed``, which needs no data; as y, mask).
            y: (N, L) targets, positive when >= 0.5.
            mask: (N, L) bool, False = not labelled.
            findings: the L finding names.
            part: the name of the fitting data, used in the ``unfitted_`` reasons.

        Returns:
            self.
        """
        out: dict[str, float | None] = {}
        why: dict[str, str] = {}
        for j, f in enumerate(findings):
            if self.method == "fixed":
                out[f] = float(self.target if self.target is not None else DEFAULT_THRESHOLD)
                continue
            m = np.asarray(mask)[:, j]
            t = (np.asarray(y)[m, j] >= 0.5).astype(int)
            if t.size == 0 or t.min() == t.max():
                out[f] = None
                why[f] = (
                    "no labelled case"
                    if t.size == 0
                    else f"only {'positive' if t[0] else 'negative'} cases"
                ) + f" in the '{part}' part: 0.5 used"
            else:
                out[f] = float(fit_threshold(t, np.asarray(probs)[m, j], self.method, self.target))
        self.thresholds_ = out
        self.unfitted_ = why
        return self

    def fitted(self) -> dict[str, float]:
        """The fitted thresholds without the unfitted findings (they use the default)."""
        return {k: v for k, v in self.thresholds_.items() if v is not None}
