"""Evaluation numerics: DeLong against published results and a slow reference, the weighted
AUROC/AP kernel against scikit-learn, the patient bootstrap, operating points, calibration,
study aggregation and the metrics.json layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from cxrkit.core.errors import CxrkitError
from cxrkit.core.findings import CHEXPERT_FINDINGS, COMPETITION_FINDINGS
from cxrkit.evaluate import metrics
from cxrkit.evaluate.metrics import (
    aggregate_studies,
    apply_temperature,
    auroc,
    bootstrap_auroc,
    calibration,
    confusion,
    delong,
    delong_ci,
    delong_test,
    evaluate,
    fit_temperature,
    fit_threshold,
    weighted_auroc_ap,
)

# --------------------------------------------------------------------------- published data

# pROC's aSAH data set (Turck et al. 2010; shipped with pROC, Robin et al. 2011, BMC
# Bioinformatics 12:77): 113 patients after aneurysmal subarachnoid haemorrhage, 41 with a poor
# and 72 with a good outcome, in the data's row order. WFNS grade (1-5) of each patient:
WFNS_POOR = [3, 2, 4, 5, 5, 5, 5, 2, 5, 2, 1, 2, 5, 4, 4, 2, 5, 5, 5, 2, 5, 2, 5, 2, 4, 5, 4]
WFNS_POOR += [4, 1, 4, 4, 2, 2, 5, 5, 2, 2, 5, 5, 5, 5]
WFNS_GOOD = [1, 1, 1, 1, 5, 1, 2, 2, 1, 2, 2, 1, 1, 1, 2, 1, 2, 1, 1, 3, 4, 1, 4, 1, 5, 5, 1]
WFNS_GOOD += [1, 2, 4, 1, 1, 2, 2, 1, 2, 1, 2, 2, 1, 1, 1, 1, 2, 1, 2, 1, 1, 3, 2, 4, 2, 1]
WFNS_GOOD += [4, 1, 1, 5, 4, 2, 2, 1, 1, 1, 3, 1, 2, 2, 4, 4, 1, 1, 1]
# For the two continuous markers, the DeLong placements pROC stores in its test suite
# (tests/testthat/helper-deLongPlacementsCpp-expected.R), as counts: for each poor-outcome case,
# good-outcome cases scoring below it (ties 1/2); for each good-outcome case, poor-outcome cases
# scoring above it. AUROC and DeLong's variance and test depend on the scores only through these.
# (The WFNS grades above are the ones that give pROC's WFNS placements.)
S100B_POOR = [40.5, 31.5, 51.5, 39, 65, 72, 70, 13, 61.5, 25, 13, 64, 63, 69.5, 72, 59, 72, 72]
S100B_POOR += [72, 13, 72, 60, 0, 25, 58, 72, 59, 72, 19, 59, 40.5, 31.5, 37, 58, 72, 44, 72]
S100B_POOR += [60.5, 72, 72, 65]
S100B_GOOD = [29, 27.5, 33, 40, 14, 26, 33, 33, 40, 36.5, 40, 35, 31.5, 38.5, 26, 38.5, 31.5]
S100B_GOOD += [29, 26, 40, 26.5, 27.5, 18, 35, 12, 14, 26.5, 38.5, 16, 14, 31.5, 36.5, 35, 36.5]
S100B_GOOD += [40, 29, 33, 27.5, 27, 40, 40, 35, 40, 35, 36.5, 26.5, 35, 36.5, 18.5, 31.5, 21]
S100B_GOOD += [38.5, 33, 19.5, 38.5, 40, 24, 17, 33, 27, 36.5, 27.5, 33, 38.5, 40, 26, 27, 14]
S100B_GOOD += [26, 27, 12, 13.5]
NDKA_POOR = [58, 45, 49, 55, 3, 20, 37, 67, 70, 67, 67, 29, 52, 62, 12, 18, 51, 1, 72, 62, 31]
NDKA_POOR += [37, 40, 51, 64, 46.5, 62, 18, 71, 54.5, 3, 24.5, 62, 3, 24, 67, 38, 52, 69, 37, 55]
NDKA_GOOD = [41, 34, 36, 29, 37, 16.5, 37, 13, 21, 13, 14, 3, 33, 37, 24, 37, 37, 1, 23, 31, 31]
NDKA_GOOD += [13, 40, 36, 37, 31.5, 22, 36, 17, 4, 36, 37, 24, 33, 36, 22, 8, 9, 30, 25, 2, 37]
NDKA_GOOD += [14, 31, 29, 29, 17, 40, 14, 24, 33, 29, 13, 29, 25, 36, 31, 29, 8, 34, 24, 22.5, 4]
NDKA_GOOD += [26, 24, 33, 8, 30, 19, 9, 37, 21]


def scores_from_placements(poor: list[float], good: list[float]) -> np.ndarray:
    """Scores (poor cases first) whose case-versus-control order gives these placements.

    A poor case scores its own count; a good case scores the number of good cases below it plus
    half its ties (more poor cases above = lower score), which is the scale the poor cases'
    counts are on. Checked against the placements in the test.
    """
    above = np.asarray(good, float)
    lower = (above[None, :] > above[:, None]).sum(axis=1)
    ties = (above[None, :] == above[:, None]).sum(axis=1)
    return np.r_[np.asarray(poor, float), lower + ties / 2]


OUTCOME = np.r_[np.ones(41), np.zeros(72)]  # 1 = poor outcome, the positive class in pROC
WFNS = np.r_[WFNS_POOR, WFNS_GOOD].astype(float)
S100B = scores_from_placements(S100B_POOR, S100B_GOOD)
NDKA = scores_from_placements(NDKA_POOR, NDKA_GOOD)


def slow_placements(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's V10 (per positive) and V01 (per negative) from the full comparison matrix."""
    x, z = s[y >= 0.5], s[y < 0.5]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])  # (m, n)
    return psi.mean(axis=1), psi.mean(axis=0)


def slow_delong(y: np.ndarray, scores: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance, O(m n), straight from DeLong et al. (1988)."""
    v10, v01 = zip(*(slow_placements(y, s) for s in scores), strict=True)
    v10, v01 = np.array(v10), np.array(v01)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return v10.mean(axis=1), cov


def test_asah_placements_reconstruct_exactly():
    """The reconstructed scores reproduce pROC's placements (so the tests below are exact)."""
    for scores, poor, good in ((S100B, S100B_POOR, S100B_GOOD), (NDKA, NDKA_POOR, NDKA_GOOD)):
        v10, v01 = slow_placements(OUTCOME, scores)
        np.testing.assert_allclose(v10 * 72, poor, atol=1e-9)
        np.testing.assert_allclose(v01 * 41, good, atol=1e-9)


def test_delong_variance_matches_proc():
    """pROC 1.18 on aSAH (tests/testthat/test-var.R and the placements' theta):
    var(roc(outcome, wfns)) = 0.00146991470882363, AUC 0.823678861788618;
    ndka 0.0031908105493913, AUC 0.611957994579946; s100b 0.00266868245717244, AUC
    0.731368563685637."""
    for scores, auc_ref, var_ref in (
        (WFNS, 0.823678861788618, 0.00146991470882363),
        (NDKA, 0.611957994579946, 0.0031908105493913),
        (S100B, 0.731368563685637, 0.00266868245717244),
    ):
        auc, var = delong(OUTCOME, scores)
        assert auc == pytest.approx(auc_ref, abs=1e-12)
        assert var == pytest.approx(var_ref, rel=1e-9)
        assert auroc(OUTCOME, scores) == pytest.approx(auc_ref, abs=1e-12)


def test_delong_test_matches_proc():
    """pROC's roc.test (DeLong, paired, two-sided) on aSAH, tests/testthat/test-roc.test.R:
    wfns vs s100b Z = 2.20898359144091, p = 0.0271757822291882, 95 % CI of the difference
    [0.0104061769564846, 0.174214419249478]; wfns vs ndka Z = 2.79777591868904,
    p = 0.00514557970691098; ndka vs s100b Z = -1.39077002573558, p = 0.164295175223054."""
    cases = (
        (WFNS, S100B, 2.20898359144091, 0.0271757822291882),
        (WFNS, NDKA, 2.79777591868904, 0.00514557970691098),
        (NDKA, S100B, -1.39077002573558, 0.164295175223054),
    )
    for a, b, z, p in cases:
        out = delong_test(OUTCOME, a, b)
        assert out["z"] == pytest.approx(z, rel=1e-9)
        assert out["p_value"] == pytest.approx(p, rel=1e-8)
        assert out["diff"] == pytest.approx(out["auc_a"] - out["auc_b"])
    out = delong_test(OUTCOME, WFNS, S100B)
    half = 1.959963984540054 * out["diff"] / out["z"]
    assert out["diff"] - half == pytest.approx(0.0104061769564846, rel=1e-8)
    assert out["diff"] + half == pytest.approx(0.174214419249478, rel=1e-8)


def test_hanley_mcneil_rating_data():
    """Hanley & McNeil (1982, Radiology 143:29-36), Table I: CT ratings 1-5 of 58 normal
    (33, 6, 6, 11, 2) and 51 abnormal (3, 2, 2, 11, 33) patients; published area 0.893. Their
    published SE, 0.032, comes from their exponential approximation, not DeLong's estimator, so
    it is only a bound on the order of magnitude here (DeLong gives 0.0307)."""
    y = np.r_[np.zeros(58), np.ones(51)]
    s = np.r_[
        np.repeat(np.arange(1, 6), [33, 6, 6, 11, 2]), np.repeat(np.arange(1, 6), [3, 2, 2, 11, 33])
    ]
    auc, var = delong(y, s)
    assert round(auc, 3) == 0.893
    assert abs(math.sqrt(var) - 0.032) < 0.003
    auc2, lo, hi = delong_ci(y, s)
    assert auc2 == auc and lo == pytest.approx(auc - 1.959964 * math.sqrt(var), abs=1e-6)
    assert hi == pytest.approx(auc + 1.959964 * math.sqrt(var), abs=1e-6)


# --------------------------------------------------------------------------- DeLong vs slow


@pytest.mark.parametrize("seed", range(5))
def test_delong_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 300))
    y = (rng.random(n) < rng.uniform(0.1, 0.6)).astype(float)
    y[:2] = [0, 1]
    a = np.round(rng.normal(size=n) + y, int(rng.integers(0, 3)))  # rounding makes ties
    b = np.round(0.5 * a + rng.normal(size=n), 1)
    auc_ref, cov_ref = slow_delong(y, [a, b])
    auc, var = delong(y, a)
    assert auc == pytest.approx(auc_ref[0], abs=1e-12)
    assert var == pytest.approx(cov_ref[0, 0], rel=1e-9)
    out = delong_test(y, a, b)
    diff_var = cov_ref[0, 0] + cov_ref[1, 1] - 2 * cov_ref[0, 1]
    assert out["auc_b"] == pytest.approx(auc_ref[1], abs=1e-12)
    assert out["z"] == pytest.approx((auc_ref[0] - auc_ref[1]) / math.sqrt(diff_var), rel=1e-9)
    assert auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)


def test_delong_edge_cases():
    y = np.array([0, 0, 1, 1, 1.0])
    s = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    out = delong_test(y, s, s)
    assert (out["z"], out["p_value"], out["diff"]) == (0.0, 1.0, 0.0)
    auc, lo, hi = delong_ci(y, s)  # perfect separation: variance 0, interval [1, 1]
    assert (auc, lo, hi) == (1.0, 1.0, 1.0)
    assert all(math.isnan(v) for v in delong(np.zeros(4), s[:4]))
    assert math.isnan(auroc(np.ones(3), [0.1, 0.2, 0.3]))
    assert math.isnan(delong([0, 1, 1], [0.1, 0.5, 0.7])[1])  # one negative: no variance
    with pytest.raises(CxrkitError, match="positive and negative"):
        delong_test(np.ones(3), [1, 2, 3], [3, 2, 1])
    with pytest.raises(CxrkitError, match="same length"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(CxrkitError, match="level"):
        delong_ci(y, s, level=95)


# --------------------------------------------------------------------------- weighted kernel


@pytest.mark.parametrize("seed", range(20))
def test_weighted_auroc_ap_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 80))
    y = rng.random(n) < rng.uniform(0.05, 0.95)
    y[:2] = [False, True]
    s = np.round(rng.random(n), int(rng.integers(0, 3)))  # 0-2 decimals: many ties
    auc, ap = weighted_auroc_ap(y, s)
    assert auc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert ap == pytest.approx(average_precision_score(y, s), abs=1e-12)
    w = rng.integers(0, 4, n).astype(float)
    w[:2] = [1, 1]
    auc, ap = weighted_auroc_ap(y, s, w)
    assert auc == pytest.approx(roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    assert ap == pytest.approx(average_precision_score(y, s, sample_weight=w), abs=1e-12)


def test_kernel_many_resamples_with_groups_matches_sklearn():
    """The bootstrap's batched path: group weights (G, B) spread to each group's images."""
    rng = np.random.default_rng(7)
    n, n_groups, n_resamples = 300, 90, 12
    gid = rng.integers(0, n_groups, n)
    y = rng.random(n) < 0.3
    s = np.round(rng.random(n) + 0.3 * y, 2)
    task = metrics.roc._prepare(s, y, gid, n_groups)
    w = rng.integers(0, 3, (n_groups, n_resamples)).astype(float)
    auc, ap = metrics.roc._kernel(task, w)
    for b in range(n_resamples):
        sw = w[gid, b]
        if sw[y].sum() == 0 or sw[~y].sum() == 0:
            assert math.isnan(auc[b]) and math.isnan(ap[b])
            continue
        assert auc[b] == pytest.approx(roc_auc_score(y, s, sample_weight=sw), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(y, s, sample_weight=sw), abs=1e-12)


# --------------------------------------------------------------------------- bootstrap


def random_set(n: int, n_labels: int = 3, seed: int = 0, per_patient: int = 1):
    """(y, mask, probs, groups) with ``per_patient`` images per patient."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n // per_patient), per_patient)
    y = (rng.random((len(groups), n_labels)) < np.linspace(0.2, 0.5, n_labels)).astype(float)
    mask = rng.random(y.shape) > 0.1
    probs = 1 / (1 + np.exp(-(1.5 * y - 0.7 + rng.normal(size=y.shape))))
    return y, mask, probs, groups


def width(ci: list[float]) -> float:
    return ci[1] - ci[0]


def test_bootstrap_contains_estimate_and_narrows():
    small = random_set(300)
    big = random_set(3000, seed=1)
    out_s = bootstrap_auroc(*small[:3], n_boot=200, seed=3)
    out_b = bootstrap_auroc(*big[:3], n_boot=200, seed=3)
    y, mask, probs, _ = small
    for j, name in enumerate(out_s["findings"]):
        m = mask[:, j]
        est = auroc(y[m, j], probs[m, j])
        ap = average_precision_score(y[m, j] >= 0.5, probs[m, j])
        lo, hi = out_s["findings"][name]["auroc_ci"]
        assert lo < est < hi
        lo, hi = out_s["findings"][name]["auprc_ci"]
        assert lo < ap < hi
        assert out_s["findings"][name]["skipped"] == 0
        assert width(out_b["findings"][name]["auroc_ci"]) < 0.6 * width(
            out_s["findings"][name]["auroc_ci"]
        )
    rows, cols = np.nonzero(mask)
    micro = auroc(y[rows, cols], probs[rows, cols])
    assert out_s["micro_auroc_ci"][0] < micro < out_s["micro_auroc_ci"][1]
    assert width(out_b["macro_auroc_ci"]) < width(out_s["macro_auroc_ci"])


def test_bootstrap_is_seeded_and_independent_of_threads():
    y, mask, probs, groups = random_set(400, per_patient=2)
    a = bootstrap_auroc(y, mask, probs, groups, n_boot=70, seed=5, workers=1)
    b = bootstrap_auroc(y, mask, probs, groups, n_boot=70, seed=5, workers=2)
    c = bootstrap_auroc(y, mask, probs, groups, n_boot=70, seed=6, workers=2)
    assert a == b
    assert a["findings"] != c["findings"]
    assert a["n_groups"] == 200 and a["n_bootstrap"] == 70


def test_patient_bootstrap_wider_than_image_bootstrap_for_duplicates():
    """Each patient's image repeated 5 times: resampling images treats the copies as
    independent evidence; resampling patients does not."""
    y, mask, probs, groups = random_set(300, n_labels=1, seed=2)
    y, mask, probs, groups = (np.repeat(a, 5, axis=0) for a in (y, mask, probs, groups))
    by_patient = bootstrap_auroc(y, mask, probs, groups, n_boot=300, seed=0)
    by_image = bootstrap_auroc(y, mask, probs, None, n_boot=300, seed=0)
    name = "finding_0"
    wide = width(by_patient["findings"][name]["auroc_ci"])
    narrow = width(by_image["findings"][name]["auroc_ci"])
    assert wide > 1.6 * narrow  # about sqrt(5) = 2.2 in theory


def test_bootstrap_skips_resamples_without_a_class_and_averages():
    rng = np.random.default_rng(4)
    n = 400
    y = np.zeros((n, 2))
    y[:, 0] = rng.random(n) < 0.3
    y[[10, 20], 1] = 1  # two positives: absent from about 13 % of resamples
    mask = np.ones_like(y, bool)
    probs = np.clip(0.3 * y + rng.random(y.shape) * 0.7, 0, 1)
    out = bootstrap_auroc(y, mask, probs, n_boot=200, seed=1, findings=["a", "b"])
    assert 5 < out["findings"]["b"]["skipped"] < 60
    assert out["findings"]["b"]["auroc_ci"] is not None
    assert out["findings"]["a"]["skipped"] == 0 and out["macro_skipped"] == 0
    assert out["competition_auroc_ci"] is None and out["competition_findings"] == []
    # one finding: macro, competition and micro are that finding
    one = bootstrap_auroc(
        y[:, :1], mask[:, :1], probs[:, :1], n_boot=50, findings=["Edema"], competition=["Edema"]
    )
    ci = one["findings"]["Edema"]["auroc_ci"]
    assert one["macro_auroc_ci"] == ci == one["micro_auroc_ci"] == one["competition_auroc_ci"]


def test_bootstrap_bad_arguments():
    y, mask, probs, groups = random_set(50)
    with pytest.raises(CxrkitError, match="n_boot"):
        bootstrap_auroc(y, mask, probs, n_boot=0)
    with pytest.raises(CxrkitError, match="one id per image"):
        bootstrap_auroc(y, mask, probs, groups[:-1], n_boot=10)
    with pytest.raises(CxrkitError, match="missing ids"):
        bootstrap_auroc(y, mask, probs, [None] + list(groups[1:]), n_boot=10)


# --------------------------------------------------------------------------- operating points


def test_fit_threshold_hand_cases():
    # sorted scores 0.1 .. 0.4 with y = 0 1 0 1 (P = N = 2); positive <=> score >= t
    # t     TP FP  sens spec  Youden  F1 = 2TP / (TP + FP + P)
    # 0.1   2  2   1    0     0       4/6
    # 0.2   2  1   1    1/2   1/2     4/5   <- max F1
    # 0.3   1  1   1/2  1/2   0       2/4
    # 0.4   1  0   1/2  1     1/2     2/3   <- Youden tie with 0.2: the highest wins
    y, s = [0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]
    assert fit_threshold(y, s, "youden") == 0.4
    assert fit_threshold(y, s, "max_f1") == 0.2
    # sorted 0.1 N, 0.35 P, 0.4 N, 0.7 P, 0.8 N, 0.9 P: Youden 1/3 at 0.35 (1 + 1/3 - 1),
    # 0.7 (2/3 + 2/3 - 1) and 0.9 (1/3 + 1 - 1), equal only in exact arithmetic: 0.9 wins
    assert fit_threshold([0, 0, 1, 0, 1, 1], [0.1, 0.4, 0.35, 0.8, 0.7, 0.9], "youden") == 0.9
    # positives 0.15 0.25 ... 0.95 (10), negatives 0.1 0.2 0.3 0.5 0.6 (5)
    pos = [0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.9, 0.95]
    neg = [0.1, 0.2, 0.3, 0.5, 0.6]
    y, s = [1] * 10 + [0] * 5, pos + neg
    # sensitivity >= 0.9: TP >= 9, the highest such threshold is the 2nd lowest positive
    assert fit_threshold(y, s, "sensitivity", 0.9) == 0.25
    assert fit_threshold(y, s, "sensitivity", 0.95) == 0.15  # TP = 10
    assert fit_threshold(y, s, "sensitivity", 0.5) == 0.65  # TP >= 5: 5th highest positive
    # specificity >= 0.8: 4 of 5 negatives below t, so t > 0.5: the next score is 0.55
    assert fit_threshold(y, s, "specificity", 0.8) == 0.55
    assert fit_threshold(y, s, "specificity", 0.9) == 0.65  # all 5 below: t > 0.6
    assert fit_threshold(y, s, "specificity", 0.5) == 0.35  # 3 below: t > 0.3
    # the highest score is a negative: only "above everything" reaches specificity 1
    t = fit_threshold([1, 0], [0.2, 0.8], "specificity", 0.9)
    assert t > 0.8 and confusion([1, 0], [0.2, 0.8], t)["fp"] == 0
    assert fit_threshold(y, s, "fixed") == 0.5
    assert fit_threshold(y, s, "fixed", 0.3) == 0.3


def test_fit_threshold_errors():
    y, s = [0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4]
    with pytest.raises(CxrkitError) as e:
        fit_threshold(y, s, "yoden")
    assert str(e.value) == (
        "The 'method' parameter must be one of {'fixed', 'youden', 'max_f1', 'sensitivity', "
        "'specificity'}. Got 'yoden' instead."
    )
    for bad in (0, 1, 1.5, -0.1, float("nan"), "0.9"):
        with pytest.raises(CxrkitError, match="strictly between 0 and 1"):
            fit_threshold(y, s, "sensitivity", bad)
    with pytest.raises(CxrkitError, match="needs a target"):
        fit_threshold(y, s, "specificity")
    with pytest.raises(CxrkitError, match="no positive cases"):
        fit_threshold([0, 0], [0.1, 0.2], "youden")


def test_confusion_hand_case_and_empty_denominators():
    # threshold 0.5: called positive = 0.9, 0.6, 0.5 (>= rule)
    out = confusion([1, 1, 0, 0, 1], [0.9, 0.4, 0.6, 0.1, 0.5], 0.5)
    assert (out["tp"], out["fp"], out["fn"], out["tn"]) == (2, 1, 1, 1)
    assert out["sensitivity"] == pytest.approx(2 / 3) and out["specificity"] == 0.5
    assert out["ppv"] == pytest.approx(2 / 3) and out["npv"] == 0.5
    assert out["f1"] == pytest.approx(2 / 3) and out["accuracy"] == 0.6
    out = confusion([0, 0], [0.1, 0.2], 0.5)
    assert out["sensitivity"] is None and out["ppv"] is None and out["f1"] is None
    assert out["specificity"] == 1.0 and out["npv"] == 1.0 and out["accuracy"] == 1.0


# --------------------------------------------------------------------------- calibration


def test_calibration_hand_case():
    # 4 bins: [0, .25) 0.1 0.2 (y 0 0) | [.25, .5) 0.3 (1) | [.5, .75) 0.6 (1) | [.75, 1] 0.9 1.0 (1 0)
    # ECE = (2 |0 - .15| + 1 |1 - .3| + 1 |1 - .6| + 2 |.5 - .95|) / 6 = 2.3 / 6
    out = calibration([0, 0, 1, 1, 1, 0], [0.1, 0.2, 0.3, 0.6, 0.9, 1.0], n_bins=4)
    assert out["ece"] == pytest.approx(2.3 / 6)
    assert [b["count"] for b in out["bins"]] == [2, 1, 1, 2]
    assert out["bins"][3] == {
        "lo": 0.75,
        "hi": 1.0,
        "count": 2,
        "mean_predicted": pytest.approx(0.95),
        "fraction_positive": 0.5,
    }
    out = calibration([0, 1], [0.05, 0.95], n_bins=10)
    assert out["bins"][4]["count"] == 0 and out["bins"][4]["mean_predicted"] is None
    assert out["ece"] == pytest.approx(0.05)
    with pytest.raises(CxrkitError, match="n_bins"):
        calibration([0, 1], [0.1, 0.9], n_bins=0)


def test_temperature_scaling_fixes_overconfidence():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (20000, 2))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    mask = rng.random(z.shape) > 0.2
    over = 1 / (1 + np.exp(-2.5 * z))  # 2.5 times too confident
    t = fit_temperature(over, y, mask)
    assert 2.2 < t < 2.8
    fixed = apply_temperature(over, t)

    def nll(p):
        p = np.clip(p[mask], 1e-12, 1 - 1e-12)
        return -np.mean(y[mask] * np.log(p) + (1 - y[mask]) * np.log(1 - p))

    assert nll(fixed) < nll(over)
    assert calibration(y[mask], fixed[mask])["ece"] < 0.5 * calibration(y[mask], over[mask])["ece"]
    np.testing.assert_array_equal(apply_temperature(over, 1.0), over)
    with pytest.raises(CxrkitError, match="positive number"):
        apply_temperature(over, 0.0)
    with pytest.raises(CxrkitError, match="mask is all False"):
        fit_temperature(over, y, np.zeros_like(mask))


# --------------------------------------------------------------------------- studies


def test_aggregate_studies_hand_case():
    studies = ["s1", "s1", "s2", "s3", "s3", "s3"]
    patients = ["p1", "p1", "p1", "p2", "p2", "p2"]
    probs = np.array([[0.2, 0.9], [0.6, 0.1], [0.5, 0.5], [0.1, 0.3], [0.4, 0.2], [0.7, 0.8]])
    y = np.array([[0, 1], [1, 0], [0, 0], [0, 0], [1, 0], [0, 0]], float)
    mask = np.array([[1, 1], [1, 0], [0, 0], [1, 0], [0, 0], [1, 0]], bool)
    p, ys, ms, index, pat = aggregate_studies(probs, y, mask, studies, "max", patients)
    np.testing.assert_allclose(p, [[0.6, 0.9], [0.5, 0.5], [0.7, 0.8]])
    # s3, Atelectasis-like column 0: the positive image is unlabelled, so the study is negative
    np.testing.assert_array_equal(ys, [[1, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(ms, [[True, True], [False, False], [True, False]])
    assert list(index) == ["s1", "s2", "s3"] and list(pat) == ["p1", "p1", "p2"]
    p, *_, pat = aggregate_studies(probs, y, mask, studies, "mean")
    np.testing.assert_allclose(p, [[0.4, 0.5], [0.5, 0.5], [0.4, 1.3 / 3]])
    assert pat is None
    with pytest.raises(CxrkitError, match="more than one patient"):
        aggregate_studies(probs, y, mask, studies, "max", ["p1", "p9", "p1", "p2", "p2", "p2"])
    with pytest.raises(CxrkitError, match="did you mean 'mean'"):
        aggregate_studies(probs, y, mask, studies, "meen")


# --------------------------------------------------------------------------- evaluate


def test_evaluate_layout_and_bad_findings_are_null_not_nan():
    findings = list(CHEXPERT_FINDINGS[:8])  # includes Cardiomegaly, Edema, Consolidation, ...
    y, mask, probs, groups = random_set(600, n_labels=len(findings), seed=3, per_patient=3)
    j_nopos, j_noneg, j_none = findings.index("Edema"), 0, findings.index("Lung Lesion")
    y[:, j_nopos] = 0
    y[:, j_noneg] = 1
    mask[:, j_none] = False
    out = evaluate(
        y, mask, probs, findings, groups=groups, thresholds={"Cardiomegaly": 0.3}, n_boot=60
    )
    json.dumps(out, allow_nan=False)
    assert set(out) == {"n_images", "n_groups", "level", "n_bootstrap", "seed", "findings",
                        "average", "confusion_total"}  # fmt: skip
    assert (out["n_images"], out["n_groups"], out["n_bootstrap"]) == (600, 200, 60)
    nopos = out["findings"]["Edema"]
    n_neg = int(mask[:, j_nopos].sum())
    assert nopos["auroc"] is None and nopos["auroc_ci"] is None and nopos["auprc"] is None
    assert nopos["undefined"] == f"no positive cases in the test set ({n_neg} negatives)"
    assert nopos["sensitivity"] is None and nopos["tn"] + nopos["fp"] == n_neg
    noneg = out["findings"][findings[j_noneg]]
    assert noneg["undefined"].startswith("no negative cases in the test set (")
    assert out["findings"]["Lung Lesion"]["undefined"] == "no labelled cases in the test set"
    assert out["findings"]["Lung Lesion"]["prevalence"] is None
    card = out["findings"]["Cardiomegaly"]
    j = findings.index("Cardiomegaly")
    m = mask[:, j]
    assert card["threshold"] == 0.3 and out["findings"]["Pneumonia"]["threshold"] == 0.5
    assert card["tp"] == confusion(y[m, j], probs[m, j], 0.3)["tp"]
    assert card["auroc"] == pytest.approx(roc_auc_score(y[m, j], probs[m, j]))
    assert card["auroc_ci"][0] < card["auroc"] < card["auroc_ci"][1]
    assert card["auroc_ci_delong"][0] < card["auroc"] < card["auroc_ci_delong"][1]
    assert card["undefined"] is None and card["n"] == int(m.sum())
    avg = out["average"]
    defined = [f for f in findings if out["findings"][f]["undefined"] is None]
    assert avg["macro_n"] == len(findings) - 3 == len(defined)
    assert avg["macro_auroc"] == pytest.approx(
        np.mean([out["findings"][f]["auroc"] for f in defined])
    )
    assert avg["competition_findings"] == [f for f in COMPETITION_FINDINGS if f in defined]
    assert "Edema" not in avg["competition_findings"]
    rows, cols = np.nonzero(mask)
    assert avg["micro_auroc"] == pytest.approx(roc_auc_score(y[rows, cols], probs[rows, cols]))
    for key in ("macro_auroc_ci", "micro_auroc_ci", "competition_auroc_ci"):
        assert len(avg[key]) == 2 and avg[key][0] < avg[key][1]
    total = out["confusion_total"]
    for key in ("tp", "fp", "fn", "tn"):
        assert total[key] == sum(out["findings"][f][key] for f in findings)
    assert total["sensitivity"] == pytest.approx(total["tp"] / (total["tp"] + total["fn"]))


def test_evaluate_without_bootstrap_and_all_undefined():
    y = np.zeros((5, 2))
    mask = np.ones((5, 2), bool)
    probs = np.full((5, 2), 0.2)
    out = evaluate(y, mask, probs, ["Edema", "Atelectasis"], n_boot=0)
    json.dumps(out, allow_nan=False)
    avg = out["average"]
    assert avg["macro_auroc"] is None and avg["macro_n"] == 0 and avg["micro_auroc"] is None
    assert avg["competition_auroc"] is None and avg["macro_auroc_ci"] is None
    assert out["findings"]["Edema"]["auroc_ci"] is None and out["confusion_total"]["tn"] == 10


def test_evaluate_rejects_bad_input():
    findings = ["Edema", "Atelectasis"]
    y, mask, probs, _ = random_set(40, n_labels=2)
    bad = probs.copy()
    bad[[1, 5], 0] = 1.5
    with pytest.raises(CxrkitError, match="'Edema' have 2 values outside"):
        evaluate(y, mask, bad, findings, n_boot=0)
    bad = probs.copy()
    bad[3, 1] = np.nan
    with pytest.raises(CxrkitError, match="'Atelectasis' have 1 values outside \\[0, 1\\] or NaN"):
        evaluate(y, mask, bad, findings, n_boot=0)
    with pytest.raises(CxrkitError, match="same shape"):
        evaluate(y[:-1], mask, probs, findings, n_boot=0)
    with pytest.raises(CxrkitError, match="one name per column"):
        evaluate(y, mask, probs, ["Edema"], n_boot=0)
    with pytest.raises(CxrkitError, match="did you mean 'Edema'"):
        evaluate(y, mask, probs, findings, thresholds={"Edma": 0.4}, n_boot=0)
    nan_y = y.copy()
    nan_y[0, 0] = np.nan
    mask[0, 0] = True
    with pytest.raises(CxrkitError, match="y is NaN in 1 labelled entries of 'Edema'"):
        evaluate(nan_y, mask, probs, findings, n_boot=0)
