"""A model against human readers: every statistic checked on a case small enough to count by hand."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from cxrkit.core.errors import CxrkitError
from cxrkit.evaluate.readers import compare_with_readers, majority_reference

# 3 positives, 5 negatives. Model ROC, from the top: 0.9 P, 0.8 P, 0.7 N, 0.4 N, 0.3 P, 0.2 N, ...
Y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
SCORE = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.4, 0.05])
R1 = np.array([1, 0, 1, 1, 0, 0, 0, 0])  # tp 2 (cases 0, 2), fn 1, fp 1 (case 3), tn 4
R2 = np.array([1, 0, 0, 0, 0, 0, 0, 0])  # tp 1, fn 2, fp 0, tn 5


@pytest.fixture(scope="module")
def result():
    return compare_with_readers(
        Y, SCORE, np.stack([R1, R2]), names=["ann", "bob"], threshold=0.5, n_boot=300, seed=1
    )


def test_reader_counts_and_statistics(result):
    ann, bob = result.readers
    assert (ann.tp, ann.fp, ann.fn, ann.tn) == (2, 1, 1, 4)
    assert ann.stats["sensitivity"].value == pytest.approx(2 / 3)
    assert ann.stats["specificity"].value == pytest.approx(4 / 5)
    assert ann.stats["ppv"].value == pytest.approx(2 / 3)
    assert ann.stats["f1"].value == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert (bob.tp, bob.fp, bob.fn, bob.tn) == (1, 0, 2, 5)
    assert bob.stats["f1"].value == pytest.approx(2 / 4)


def test_readers_below_the_roc_curve(result):
    ann, bob = result.readers
    # at ann's false-positive rate 0.2 the curve reaches 2/3 = her sensitivity: not strictly below
    assert not ann.below_model_curve
    # at bob's 0.0 the curve reaches 2/3 > 1/3: below
    assert bob.below_model_curve
    assert result.readers_below_curve == 1


def test_model_at_the_readers_operating_points(result):
    ann = result.readers[0]
    at_spec = ann.model_at_reader_specificity
    # the highest sensitivity with specificity ≥ 0.8 is 2/3, first reached at threshold 0.8
    assert at_spec.threshold == pytest.approx(0.8)
    assert at_spec.model.value == pytest.approx(2 / 3) and at_spec.reader == pytest.approx(2 / 3)
    assert at_spec.difference.value == pytest.approx(0.0)
    # positives: model says (1, 1, 0), ann (1, 0, 1): one discordant pair each way
    assert at_spec.mcnemar_p == pytest.approx(binomtest(1, 2, 0.5).pvalue)
    at_sens = ann.model_at_reader_sensitivity
    # the highest specificity with sensitivity ≥ 2/3: threshold 0.8, specificity 1
    assert at_sens.threshold == pytest.approx(0.8)
    assert at_sens.model.value == pytest.approx(1.0) and at_sens.reader == pytest.approx(0.8)
    assert at_sens.difference.value == pytest.approx(0.2)


def test_f1_against_the_mean_reader(result):
    # model at 0.5: positive on cases 0, 1, 3 → tp 2, fp 1, fn 1
    assert result.model_f1.value == pytest.approx(4 / 6)
    assert result.mean_reader_f1.value == pytest.approx((4 / 6 + 1 / 2) / 2)
    assert result.f1_difference.value == pytest.approx(4 / 6 - (4 / 6 + 1 / 2) / 2)
    assert 0 <= result.f1_p <= 1


def test_intervals_contain_the_estimate_and_narrow_with_data():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.random(n) < 0.3
    score = y * 1.0 + rng.normal(0, 0.8, n)
    reads = np.stack([(y & (rng.random(n) < 0.8)) | (~y & (rng.random(n) < 0.1))]).astype(int)
    small = compare_with_readers(y.astype(int), score, reads, n_boot=400, seed=0)
    big_y, big_s, big_r = np.tile(y, 16), np.tile(score, 16), np.tile(reads, 16)
    big = compare_with_readers(big_y.astype(int), big_s, big_r, n_boot=400, seed=0)
    for res in (small, big):
        e = res.readers[0].stats["sensitivity"]
        assert e.lo <= e.value <= e.hi
    w_small = small.readers[0].stats["sensitivity"]
    w_big = big.readers[0].stats["sensitivity"]
    ratio = (w_small.hi - w_small.lo) / (w_big.hi - w_big.lo)
    assert 3.0 < ratio < 5.3  # 16 times the patients: about 4 times narrower


def test_case_order_does_not_matter():
    rng = np.random.default_rng(3)
    n = 60
    y = (rng.random(n) < 0.4).astype(int)
    y[:2] = [0, 1]
    score = y + rng.normal(0, 1, n)
    reads = (rng.random((2, n)) < 0.5).astype(int)
    groups = rng.integers(0, 25, n)
    a = compare_with_readers(y, score, reads, groups, threshold=0.5, n_boot=200, seed=4)
    p = rng.permutation(n)
    b = compare_with_readers(
        y[p], score[p], reads[:, p], groups[p], threshold=0.5, n_boot=200, seed=4
    )
    assert a == b


def test_majority_reference():
    labels, mask = majority_reference(np.array([[1, 0, 1], [1, 1, 0], [0, 0, 0]]))
    assert labels.tolist() == [1, 0, 0] and mask.all()
    labels, mask = majority_reference(np.array([[1, 0], [0, 0]]))
    assert mask.tolist() == [False, True] and labels[1] == 0  # a tie has no majority


@pytest.mark.parametrize(
    ("y", "reads", "match"),
    [
        (Y, np.stack([R1[:-1]]), "same cases"),
        (Y, np.stack([R1 * 2]), "0 or 1"),
        (np.zeros(8, int), np.stack([R1]), "no positive"),
    ],
)
def test_bad_input_is_one_line(y, reads, match):
    with pytest.raises(CxrkitError, match=match):
        compare_with_readers(y, SCORE, reads)
