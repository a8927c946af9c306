"""The split report: images, patients and, per finding, positives and prevalence in each part."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrkit.core.errors import CxrkitError, preview
from cxrkit.data.labels import Targets
from cxrkit.data.stratify import positives

log = logging.getLogger(__name__)


def _nan_to_none(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def split_report(
    frame: pd.DataFrame,
    targets: Targets,
    parts: Sequence[str] | np.ndarray,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Per part: images and patients; per finding: positives and prevalence per part and whole.

    Args:
        frame: the index frame (N_index rows).
        targets: the policy's targets on ``frame``.
        parts: (N_index,) the part of every index row.
        names: the parts in report order (default: order of first appearance).

    Returns:
        A JSON-ready dict: ``parts``; ``images``, ``kept_images`` (rows the policy kept) and
        ``patients`` per part; ``findings``: per finding ``positives``, ``labelled`` (mask True) and
        ``prevalence`` (positives / labelled) per part and for the ``whole`` set, and ``max_dev_pp``,
        the largest absolute deviation of a part's prevalence from the whole's, in percentage
        points; ``max_dev_pp`` and ``max_dev_finding`` over all findings; ``warnings``: a part
        without a positive of a finding that has positives (also logged).
    """
    parts = np.asarray(parts, dtype=object)
    if len(parts) != len(frame):
        raise CxrkitError(
            f"the split has {len(parts)} rows but the index has {len(frame)}: they do not belong together."
        )
    names = list(names) if names is not None else list(pd.unique(parts))
    code = pd.Series(parts).map({n: i for i, n in enumerate(names)})
    if code.isna().any():
        raise CxrkitError(
            f"parts {preview(sorted(set(parts[code.isna().to_numpy()])), 5)} are not among {names}."
        )
    code = code.to_numpy(np.int64)
    k = len(names)
    images = np.bincount(code, minlength=k)
    patients = (
        pd.DataFrame({"p": frame["patient_id"].to_numpy(), "k": code})
        .groupby("k")["p"]
        .nunique()
        .reindex(range(k), fill_value=0)
        .to_numpy()
    )
    kept_code = code[np.asarray(targets.rows, np.int64)]
    kept = np.bincount(kept_code, minlength=k)
    pos = positives(targets)
    warnings: list[str] = []
    findings: dict[str, Any] = {}
    overall, overall_finding = 0.0, None
    for j, finding in enumerate(targets.findings):
        p = np.bincount(kept_code, weights=pos[:, j], minlength=k)
        n = np.bincount(kept_code, weights=targets.mask[:, j], minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            prev = p / n
        whole_p, whole_n = p.sum(), n.sum()
        whole = whole_p / whole_n if whole_n else float("nan")
        devs = np.abs(prev[n > 0] - whole) * 100 if whole_n else np.zeros(0)
        dev = float(devs.max()) if len(devs) else 0.0
        if dev > overall or overall_finding is None:
            overall, overall_finding = max(dev, overall), finding
        for i, name in enumerate(names):
            if whole_p > 0 and p[i] == 0 and images[i] > 0:
                msg = (
                    f"part '{name}' has no positive of '{finding}' ({int(whole_p):,} in the whole "
                    "set): metrics for it cannot be computed there; change the fractions or the seed, "
                    "or drop the finding"
                )
                log.warning(msg)
                warnings.append(msg)
        findings[finding] = {
            "positives": {**{nm: int(p[i]) for i, nm in enumerate(names)}, "whole": int(whole_p)},
            "labelled": {**{nm: int(n[i]) for i, nm in enumerate(names)}, "whole": int(whole_n)},
            "prevalence": {
                **{nm: _nan_to_none(prev[i]) for i, nm in enumerate(names)},
                "whole": _nan_to_none(whole),
            },
            "max_dev_pp": dev,
        }
    for i, name in enumerate(names):
        if images[i] == 0:
            msg = f"part '{name}' has no images: too few patients for these fractions"
            log.warning(msg)
            warnings.append(msg)
    return {
        "parts": names,
        "images": {nm: int(images[i]) for i, nm in enumerate(names)},
        "kept_images": {nm: int(kept[i]) for i, nm in enumerate(names)},
        "patients": {nm: int(patients[i]) for i, nm in enumerate(names)},
        "findings": findings,
        "max_dev_pp": overall,
        "max_dev_finding": overall_finding,
        "warnings": warnings,
    }
