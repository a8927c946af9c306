"""Study-level aggregation and :func:`evaluate`, every test-set metric as written to
``metrics.json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrkit.core.errors import CxrkitError, did_you_mean, preview
from cxrkit.core.findings import COMPETITION_FINDINGS
from cxrkit.evaluate.metrics._checks import _check_arrays, _check_level, _group_ids, _num, _ratio
from cxrkit.evaluate.metrics.bootstrap import bootstrap_auroc
from cxrkit.evaluate.metrics.roc import auroc, average_precision, delong_ci
from cxrkit.evaluate.metrics.thresholds import DEFAULT_THRESHOLD, _confusion_dict, confusion

#: How a study's probability is made from its images' (:func:`aggregate_studies`). Evaluation's
#: ``--aggregate`` adds ``"none"`` (score images only): see
#: :data:`cxrkit.evaluate.options.AGGREGATE_CHOICES`.
STUDY_AGGREGATIONS: tuple[str, ...] = ("max", "mean")

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
    if how not in STUDY_AGGREGATIONS:
        raise CxrkitError(did_you_mean(str(how), STUDY_AGGREGATIONS, what="study aggregation"))
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
    scores: bool = False,
    unthresholded: Sequence[str] = (),
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
        scores: accept any finite real scores (AUROC, AUPRC and DeLong are rank statistics).
        unthresholded: findings whose confusion counts and ratios are left out (None), e.g. scores
            that are not probabilities with no threshold in their own units; they are left out of
            ``confusion_total`` and of the macro F1 / sensitivity / specificity too.

    Returns:
        A JSON-serialisable dict (plain floats, ints, strings, lists and None).
    """
    y, mask, probs, findings = _check_arrays(y, mask, probs, findings, scores=scores)
    skip = set(unthresholded)
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
        threshold: float | None = float(thresholds.get(name, DEFAULT_THRESHOLD))
        conf = confusion(yj, pj, threshold)
        if name in skip:
            threshold, conf = None, dict.fromkeys(conf)
        else:
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
        "macro_f1": _mean([per[f]["f1"] for f in defined if f not in skip]),
        "macro_sensitivity": _mean([per[f]["sensitivity"] for f in defined if f not in skip]),
        "macro_specificity": _mean([per[f]["specificity"] for f in defined if f not in skip]),
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
