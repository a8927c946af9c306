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

See docs/metrics.md for the definitions and the decisions. The modules: :mod:`.roc` (AUROC, AP,
DeLong), :mod:`.bootstrap` (the patient bootstrap and its workers), :mod:`.thresholds` (confusion,
operating points), :mod:`.calibrate` (reliability, temperature), :mod:`.summary` (studies,
:func:`evaluate`); this package re-exports their public names.
"""

from __future__ import annotations

from cxrkit.evaluate.metrics.bootstrap import bootstrap_auroc, roc_band
from cxrkit.evaluate.metrics.calibrate import apply_temperature, calibration, fit_temperature
from cxrkit.evaluate.metrics.roc import (
    auroc,
    average_precision,
    delong,
    delong_ci,
    delong_test,
    weighted_auroc_ap,
)
from cxrkit.evaluate.metrics.summary import STUDY_AGGREGATIONS, aggregate_studies, evaluate
from cxrkit.evaluate.metrics.summary import STUDY_AGGREGATIONS as AGGREGATIONS  # the 0.1 name
from cxrkit.evaluate.metrics.thresholds import (
    DEFAULT_THRESHOLD,
    THRESHOLD_METHODS,
    OperatingPoints,
    confusion,
    fit_threshold,
)

__all__ = [
    "AGGREGATIONS",
    "STUDY_AGGREGATIONS",
    "DEFAULT_THRESHOLD",
    "OperatingPoints",
    "THRESHOLD_METHODS",
    "aggregate_studies",
    "apply_temperature",
    "auroc",
    "average_precision",
    "bootstrap_auroc",
    "roc_band",
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
