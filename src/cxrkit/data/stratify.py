"""Patient-level stratification: the algorithms behind :func:`cxrkit.data.splits.make_splits`.

Each algorithm takes per-patient counts (:class:`PatientCounts`) and returns a part number per
patient (-1 where the label policy kept none of its images; :func:`fill_unkept` places those):

- :func:`best_iterative` / :func:`iterative_stratify`: iterative stratification (Sechidis,
  Tsoumakas & Vlahavas 2011) over patients, balancing each finding's positive and labelled negative
  images (:func:`stratum_counts`) and the parts' sizes in images.
- :func:`labelset_parts`: the thesis's algorithm made patient-aware (combinations of findings).
- :func:`random_parts`: patients shuffled and cut by the fractions.

See docs/splits.md for the decisions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrkit.core.errors import CxrkitError
from cxrkit.data.labels import MULTICLASS_POSITIVE, Targets

log = logging.getLogger(__name__)

#: Past this many findings ``labelset`` refuses: 2^10 = 1024 combinations already leave most of
#: them with a handful of patients, which cannot be shared by the fractions.
LABELSET_MAX_FINDINGS = 10


def positives(targets: Targets) -> np.ndarray:
    """(N, L) bool: labelled and positive (``y >= 0.5``; class 1 for multiclass findings)."""
    pos = targets.y >= 0.5
    if targets.multiclass.any():
        mc = np.asarray(targets.multiclass, bool)
        pos[:, mc] = targets.y[:, mc] == MULTICLASS_POSITIVE
    return pos & targets.mask


@dataclass
class PatientCounts:
    """Patient-level view of an index and its targets (P patients, L findings)."""

    codes: np.ndarray  # (N_index,) patient number of each index row
    ids: np.ndarray  # (P,) patient ids, in order of first appearance
    rows: np.ndarray  # (P,) index rows per patient (all views)
    weight: np.ndarray  # (P,) images the policy kept
    counts: np.ndarray  # (P, L) positive kept images per finding
    negatives: np.ndarray  # (P, L) labelled, not positive kept images per finding


def patient_counts(frame: pd.DataFrame, targets: Targets) -> PatientCounts:
    """Count each patient's images and, per finding, positive and labelled negative images.

    Args:
        frame: the index frame (N_index rows) with ``path`` and ``patient_id``.
        targets: ``policy.apply(frame)``; its ``rows`` point into ``frame``.

    Returns:
        :class:`PatientCounts`; a missing column or patient id is one clear error.
    """
    for col in ("path", "patient_id"):
        if col not in frame.columns:
            raise CxrkitError(
                f"the index has no '{col}' column; splits need one. Was it written by `cxrkit index`?"
            )
    pid = frame["patient_id"]
    if pid.isna().any():
        n = int(pid.isna().sum())
        raise CxrkitError(
            f"{n} of {len(frame)} index rows have no patient_id: a split cannot keep patients apart "
            "without it. Re-index with a patient column (generic: --patient-col)."
        )
    rows = np.asarray(targets.rows, np.int64)
    if len(rows) and (rows.min() < 0 or rows.max() >= len(frame)):
        raise CxrkitError(
            f"the targets point at rows outside the index ({len(frame)} rows): make them with "
            "policy.apply on this same index frame."
        )
    codes, ids = pd.factorize(pid.astype(str), sort=False)
    codes = codes.astype(np.int64)
    n_patients = len(ids)
    kept = codes[rows]
    pos = positives(targets)
    neg = targets.mask & ~pos

    def per_patient(a: np.ndarray) -> np.ndarray:  # (N, L) bool → (P, L) counts
        out = np.zeros((n_patients, a.shape[1]))
        for j in range(a.shape[1]):
            out[:, j] = np.bincount(kept, weights=a[:, j], minlength=n_patients)
        return out

    return PatientCounts(
        codes=codes,
        ids=np.asarray(ids, object),
        rows=np.bincount(codes, minlength=n_patients).astype(np.float64),
        weight=np.bincount(kept, minlength=n_patients).astype(np.float64),
        counts=per_patient(pos),
        negatives=per_patient(neg),
    )


def _greedy(
    amount: np.ndarray,
    weight: np.ndarray,
    need: np.ndarray | None,
    need_total: np.ndarray,
    prio: list[int],
) -> np.ndarray:
    """Sechidis's inner step, one patient at a time: to the part that most needs this label.

    Each patient (in the given order) goes to the part with the largest remaining need for the
    label being processed (``need``, decreased by ``amount``), ties broken by the largest remaining
    need of images (``need_total``, decreased by ``weight``), then by ``prio`` (a random order of
    the parts). With ``need=None`` only the need of images counts. Plain floats, no numpy per
    patient: this is the one loop over patients.
    """
    tot = [float(x) for x in need_total]
    k_parts = range(len(tot))
    out: list[int] = []
    append = out.append
    if need is None:
        for w in weight.tolist():
            best = max(k_parts, key=lambda j: (tot[j], prio[j]))
            tot[best] -= w
            append(best)
    else:
        lab = [float(x) for x in need]
        for a, w in zip(amount.tolist(), weight.tolist(), strict=True):
            best = max(k_parts, key=lambda j: (lab[j], tot[j], prio[j]))
            lab[best] -= a
            tot[best] -= w
            append(best)
    return np.asarray(out, np.int64)


def iterative_stratify(
    counts: np.ndarray, weight: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Iterative stratification over patients; (P,) part number, -1 where ``weight`` is 0.

    Sechidis et al. 2011, Algorithm 1, with each patient an example that holds ``counts[p, l]``
    images of stratum ``l`` (:func:`stratum_counts`) and ``weight[p]`` images in all: take the
    stratum with the fewest unassigned patients, hand those patients (in random order) each to the
    part that most needs that stratum's images (ties: the part that most needs images, then a
    random order of the parts), update every part's needs, repeat; patients in no stratum then
    fill the parts' remaining need of images.
    """
    n_patients, n_labels = counts.shape
    r = np.asarray(fractions, np.float64)
    need = r[:, None] * counts.sum(0)[None, :]  # (K, L) images of each stratum each part needs
    need_total = r * weight.sum()  # (K,) images each part still needs
    part = np.full(n_patients, -1, np.int64)
    has = counts > 0
    remaining = weight > 0
    left = has[remaining].sum(0)  # (L,) unassigned patients in each stratum
    while True:
        cand = np.flatnonzero(left > 0)
        if not len(cand):
            break
        fewest = cand[left[cand] == left[cand].min()]
        lab = int(fewest[rng.integers(len(fewest))]) if len(fewest) > 1 else int(fewest[0])
        batch = rng.permutation(np.flatnonzero(remaining & has[:, lab]))
        prio = rng.permutation(len(r)).tolist()
        chosen = _greedy(counts[batch, lab], weight[batch], need[:, lab], need_total, prio)
        part[batch] = chosen
        for j in range(len(r)):
            sel = batch[chosen == j]
            need[j] -= counts[sel].sum(0)
            need_total[j] -= weight[sel].sum()
        remaining[batch] = False
        left -= has[batch].sum(0)
    rest = rng.permutation(np.flatnonzero(remaining))
    if len(rest):
        prio = rng.permutation(len(r)).tolist()
        part[rest] = _greedy(weight[rest], weight[rest], None, need_total, prio)
    return part


#: Restarts of iterative stratification on small data, keeping the best (see best_iterative).
ITERATIVE_RESTARTS = 16
#: Up to this many patients the restarts are cheap (well under a second each) and worth it.
RESTART_MAX_PATIENTS = 20_000


def _max_deviation(pat: PatientCounts, part: np.ndarray, k: int) -> float:
    """Largest absolute difference between a part's and the whole's prevalence, over findings."""
    labelled = pat.counts + pat.negatives
    whole = pat.counts.sum(0) / np.maximum(labelled.sum(0), 1)
    worst = 0.0
    for j in range(k):
        sel = part == j
        lab = labelled[sel].sum(0)
        prev = pat.counts[sel].sum(0) / np.maximum(lab, 1)
        worst = max(worst, float(np.max(np.where(lab > 0, np.abs(prev - whole), 0.0), initial=0.0)))
    return worst


def best_iterative(
    pat: PatientCounts, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Iterative stratification; on small data the best of several seeded restarts.

    With few patients, and patients holding several images, one greedy pass can leave a part a few
    percentage points off; restarts with other random orders (drawn from ``rng``, so the result is
    still a function of the seed) and keeping the smallest largest deviation fix most of it.
    """
    strata = stratum_counts(pat)
    runs = ITERATIVE_RESTARTS if len(pat.weight) <= RESTART_MAX_PATIENTS else 1
    best, best_dev = None, np.inf
    for _ in range(runs):
        part = iterative_stratify(strata, pat.weight, fractions, rng)
        dev = _max_deviation(pat, part, len(fractions)) if runs > 1 else 0.0
        if dev < best_dev:
            best, best_dev = part, dev
    return best


def stratum_counts(pat: PatientCounts) -> np.ndarray:
    """(P, 2L) what iterative stratification balances: per finding, positive images and labelled
    negative images. A part's prevalence is their ratio, so matching both matches it even where
    the policy leaves images unlabelled (``blank: ignore``, ``uncertain: ignore``)."""
    return np.hstack([pat.counts, pat.negatives])


def _cut(weight: np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """Share patients, in the given order, by the fractions of their total weight.

    A patient goes to the part whose share holds the middle of its span of the cumulative weight,
    so with one image each, ``n`` patients and fractions ``r`` the first part gets ``round(r0·n)``.
    """
    if not len(weight):
        return np.zeros(0, np.int64)
    cum = np.cumsum(weight)
    mid = cum - weight / 2.0
    bounds = np.cumsum(np.asarray(fractions, np.float64)) * cum[-1]
    return np.minimum(np.searchsorted(bounds, mid, side="right"), len(fractions) - 1)


def random_parts(
    weight: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Patients shuffled and cut by the fractions of images; (P,) part, -1 where ``weight`` is 0."""
    part = np.full(len(weight), -1, np.int64)
    order = rng.permutation(np.flatnonzero(weight > 0))
    part[order] = _cut(weight[order], fractions)
    return part


def labelset_parts(
    counts: np.ndarray,
    weight: np.ndarray,
    fractions: Sequence[float],
    rng: np.random.Generator,
    findings: Sequence[str],
) -> np.ndarray:
    """The thesis's algorithm over patients; (P,) part number, -1 where ``weight`` is 0.

    A patient's combination is the set of findings positive in any of its images. Visiting
    combinations "from largest in size to smallest" and taking, for each, the patients that have
    it and are not yet assigned gives every patient to the group of its exact combination (no
    larger combination is inside it), so each group is shuffled and cut by the fractions. Ties in
    size are visited in increasing order of the combination's bit pattern (finding order).
    """
    n_labels = counts.shape[1]
    if n_labels > LABELSET_MAX_FINDINGS:
        raise CxrkitError(
            f"method 'labelset' keys patients by their combination of findings: with {n_labels} "
            f"findings that is up to 2^{n_labels} = {2**n_labels:,} combinations, most too small to "
            f"share by the fractions (it is kept for {LABELSET_MAX_FINDINGS} findings or fewer). "
            "Use --method iterative, which stratifies each finding instead."
        )
    part = np.full(len(weight), -1, np.int64)
    active = np.flatnonzero(weight > 0)
    has = counts[active] > 0
    key = has.astype(np.int64) @ (np.int64(1) << np.arange(n_labels, dtype=np.int64))
    size = has.sum(1)
    order = np.lexsort((active, key, -size))  # size descending, then key, then patient order
    key_sorted = key[order]
    starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        members = rng.permutation(active[order[s:e]])
        part[members] = _cut(weight[members], fractions)
    log.debug(
        "labelset: %d combinations of %s among %d patients", len(starts), findings, len(active)
    )
    return part


def fill_unkept(
    part: np.ndarray, rows: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Patients with no image kept by the policy (e.g. laterals only): by images, to the parts
    with the largest remaining need of index rows."""
    rest = np.flatnonzero(part < 0)
    if not len(rest):
        return part
    r = np.asarray(fractions, np.float64)
    assigned = np.bincount(part[part >= 0], weights=rows[part >= 0], minlength=len(r))
    need = r * rows.sum() - assigned
    order = rng.permutation(rest)
    part[order] = _greedy(rows[order], rows[order], None, need, rng.permutation(len(r)).tolist())
    return part
