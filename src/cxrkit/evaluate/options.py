"""How a trained model is evaluated: :class:`EvalOptions` and its accepted values."""

from __future__ import annotations

from dataclasses import dataclass

from cxrkit.core.errors import CxrkitError
from cxrkit.evaluate.metrics.summary import STUDY_AGGREGATIONS
from cxrkit.evaluate.metrics.thresholds import THRESHOLD_METHODS

#: ``--aggregate``: a study aggregation, or ``none`` to score images only (no study level).
AGGREGATE_CHOICES: tuple[str, ...] = (*STUDY_AGGREGATIONS, "none")


@dataclass
class EvalOptions:
    """How to evaluate.

    Attributes:
        part: the part scored (``test``). fit_part: where thresholds and the temperature are fitted.
        operating_point: ``fixed``, ``youden``, ``max_f1``, ``sensitivity``, ``specificity``.
        target: the threshold for ``fixed`` (default 0.5), the sensitivity or specificity to reach.
        aggregate: per-study aggregation of views: ``max``, ``mean`` or ``none``.
        n_boot, seed, level: the patient bootstrap.
        calibrate: fit a temperature on ``fit_part`` and store it in the artifact.
        save: store the fitted operating points (and temperature) in the artifact.
    """

    part: str = "test"
    fit_part: str = "val"
    operating_point: str = "youden"
    target: float | None = None
    aggregate: str = "max"
    n_boot: int = 1000
    seed: int = 0
    level: float = 0.95
    calibrate: bool = False
    save: bool = True

    def check(self) -> None:
        """Refuse unknown names and out-of-range values with one clear line."""
        if self.operating_point not in THRESHOLD_METHODS:
            raise CxrkitError(
                f"The 'operating-point' parameter must be one of {{{', '.join(THRESHOLD_METHODS)}}}. "
                f"Got '{self.operating_point}' instead."
            )
        if self.aggregate not in AGGREGATE_CHOICES:
            raise CxrkitError(
                f"The 'aggregate' parameter must be one of {{{', '.join(AGGREGATE_CHOICES)}}}. "
                f"Got '{self.aggregate}' instead."
            )
        if self.operating_point in ("sensitivity", "specificity") and self.target is None:
            raise CxrkitError(
                f"operating point '{self.operating_point}' needs --target, e.g. --target 0.9."
            )
        if self.target is not None and self.operating_point in ("youden", "max_f1"):
            raise CxrkitError(
                f"--target applies to the fixed, sensitivity and specificity operating points, "
                f"not '{self.operating_point}': drop it, or choose one of those."
            )
        if self.target is not None and not 0.0 < self.target < 1.0:
            raise CxrkitError(f"--target must lie strictly between 0 and 1; got {self.target}.")
        if self.n_boot < 0:
            raise CxrkitError(f"--bootstrap must be 0 or more resamples; got {self.n_boot}.")
        if not 0.5 <= self.level < 1.0:
            raise CxrkitError(f"--level must lie in [0.5, 1); got {self.level}.")
