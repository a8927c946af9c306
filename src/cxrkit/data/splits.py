"""Patient-grouped splits: image → part (train / val / test or fold k), and a prevalence report.

Every method assigns whole patients, so no patient ever has images in two parts; this is checked
when a split is made, when it is written and again when it is read. Methods:

- ``iterative`` (default): iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011) over
  patients. A patient's label vector is its number of positive and of labelled negative images per
  finding and its weight is its number of images, so the *image-level* prevalences and sizes of the
  parts match the fractions.
- ``labelset``: the thesis's algorithm made patient-aware: patients are keyed by the combination of
  findings positive in any of their images; combinations are visited from the largest to the
  smallest and each combination's patients are shuffled and shared by the fractions. Refused past
  :data:`LABELSET_MAX_FINDINGS` findings (2^L combinations, most of them too small to share).
- ``random``: patients shuffled and cut by the fractions (the baseline).
- ``official``: the dataset's own split, from the index's ``official_split`` column.

Stratification uses the label policy's targets on the rows it keeps; index rows a views policy
dropped follow their patient. See docs/splits.md for the decisions.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError, did_you_mean, preview
from cxrkit.core.fileio import read_tagged_parquet, write_tagged_parquet
from cxrkit.data.index import index_fingerprint
from cxrkit.data.labels import MULTICLASS_POSITIVE, Targets

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("iterative", "labelset", "random", "official")
#: Past this many findings ``labelset`` refuses: 2^10 = 1024 combinations already leave most of
#: them with a handful of patients, which cannot be shared by the fractions.
LABELSET_MAX_FINDINGS = 10
#: The index's ``official_split`` values → part names.
OFFICIAL_PARTS: dict[str, str] = {
    "train": "train",
    "train_val": "train",
    "valid": "val",
    "val": "val",
    "validate": "val",
    "test": "test",
}
SPLIT_COLUMNS: tuple[str, ...] = ("path", "patient_id", "part")
_META_KEY = b"cxrkit.data.splits"
_PART_ORDER = ("train", "val", "test")


@dataclass
class Splits:
    """A split of an index into patient-disjoint parts.

    Attributes:
        frame: one row per index row, in index order: ``path``, ``patient_id``, ``part``.
        meta: how it was made: ``method``, ``fractions``, ``folds``, ``seed``, ``names`` (the parts,
            in order), ``policy`` (the label policy as a dict), ``index_fingerprint``,
            ``n_rows``, ``cxrkit_version``, ``created``.
        report: see :func:`split_report`.
    """

    frame: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.meta.get("names") or pd.unique(self.frame["part"]))

    def rows(self, part: str) -> np.ndarray:
        """(n,) positions in the index of the rows in ``part``."""
        if part not in self.names:
            raise CxrkitError(did_you_mean(part, self.names, what="part"))
        return np.flatnonzero((self.frame["part"] == part).to_numpy(bool))


# ---- input checks ------------------------------------------------------------------------------


def part_names(
    n_parts: int, names: Sequence[str] | None = None, *, folds: bool = False
) -> list[str]:
    """The parts' names: given, or train/val/test (3), train/test (2), fold0.. or part0.."""
    if names is not None:
        names = [str(n) for n in names]
        if len(names) != n_parts:
            raise CxrkitError(
                f"{len(names)} part name(s) ({', '.join(names)}) for {n_parts} parts: give one name per part."
            )
        if len(set(names)) != len(names) or any(not n.strip() for n in names):
            raise CxrkitError(f"part names must be distinct and non-empty; got {names}.")
        return names
    if folds:
        return [f"fold{k}" for k in range(n_parts)]
    if n_parts == 3:
        return ["train", "val", "test"]
    if n_parts == 2:
        return ["train", "test"]
    return [f"part{k}" for k in range(n_parts)]


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """At least two positive fractions summing to 1, or one clear line."""
    try:
        fr = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise CxrkitError(
            f"fractions must be numbers, e.g. 0.7,0.1,0.2; got {list(fractions)}."
        ) from None
    if len(fr) < 2:
        raise CxrkitError(
            f"fractions need at least two parts, e.g. 0.7,0.1,0.2 or 0.8,0.2; got {list(fr)}."
        )
    if any(not math.isfinite(f) or f <= 0 for f in fr):
        raise CxrkitError(
            f"fractions must all be greater than 0; got {list(fr)}. Drop a part rather than giving it 0."
        )
    if abs(sum(fr) - 1.0) > 1e-6:
        raise CxrkitError(
            f"fractions must sum to 1; got {', '.join(f'{f:g}' for f in fr)} (sum {sum(fr):.6g})."
        )
    return fr


def positives(targets: Targets) -> np.ndarray:
    """(N, L) bool: labelled and positive (``y >= 0.5``; class 1 for multiclass findings)."""
    pos = targets.y >= 0.5
    if targets.multiclass.any():
        mc = np.asarray(targets.multiclass, bool)
        pos[:, mc] = targets.y[:, mc] == MULTICLASS_POSITIVE
    return pos & targets.mask


@dataclass
class _Patients:
    """Patient-level view of an index and its targets (P patients, L findings)."""

    codes: np.ndarray  # (N_index,) patient number of each index row
    ids: np.ndarray  # (P,) patient ids, in order of first appearance
    rows: np.ndarray  # (P,) index rows per patient (all views)
    weight: np.ndarray  # (P,) images the policy kept
    counts: np.ndarray  # (P, L) positive kept images per finding
    negatives: np.ndarray  # (P, L) labelled, not positive kept images per finding


def _patients(frame: pd.DataFrame, targets: Targets) -> _Patients:
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

    return _Patients(
        codes=codes,
        ids=np.asarray(ids, object),
        rows=np.bincount(codes, minlength=n_patients).astype(np.float64),
        weight=np.bincount(kept, minlength=n_patients).astype(np.float64),
        counts=per_patient(pos),
        negatives=per_patient(neg),
    )


# ---- the methods -------------------------------------------------------------------------------


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


def _iterative(
    counts: np.ndarray, weight: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Iterative stratification over patients; (P,) part number, -1 where ``weight`` is 0.

    Sechidis et al. 2011, Algorithm 1, with each patient an example that holds ``counts[p, l]``
    images of stratum ``l`` (:func:`_strata`) and ``weight[p]`` images in all: take the stratum with
    the fewest unassigned patients, hand those patients (in random order) each to the part that
    most needs that stratum's images (ties: the part that most needs images, then a random order
    of the parts), update every part's needs, repeat; patients in no stratum then fill the parts'
    remaining need of images.
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


#: Restarts of iterative stratification on small data, keeping the best (see _best_iterative).
ITERATIVE_RESTARTS = 16
#: Up to this many patients the restarts are cheap (well under a second each) and worth it.
RESTART_MAX_PATIENTS = 20_000


def _max_deviation(pat: _Patients, part: np.ndarray, k: int) -> float:
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


def _best_iterative(
    pat: _Patients, fractions: Sequence[float], rng: np.random.Generator
) -> np.ndarray:
    """Iterative stratification; on small data the best of several seeded restarts.

    With few patients, and patients holding several images, one greedy pass can leave a part a few
    percentage points off; restarts with other random orders (drawn from ``rng``, so the result is
    still a function of the seed) and keeping the smallest largest deviation fix most of it.
    """
    strata = _strata(pat)
    runs = ITERATIVE_RESTARTS if len(pat.weight) <= RESTART_MAX_PATIENTS else 1
    best, best_dev = None, np.inf
    for _ in range(runs):
        part = _iterative(strata, pat.weight, fractions, rng)
        dev = _max_deviation(pat, part, len(fractions)) if runs > 1 else 0.0
        if dev < best_dev:
            best, best_dev = part, dev
    return best


def _strata(pat: _Patients) -> np.ndarray:
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


def _random(weight: np.ndarray, fractions: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    part = np.full(len(weight), -1, np.int64)
    order = rng.permutation(np.flatnonzero(weight > 0))
    part[order] = _cut(weight[order], fractions)
    return part


def _labelset(
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


def _fill_unkept(
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


def _official(
    frame: pd.DataFrame,
    pat: _Patients,
    official_val: float | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[str]]:
    """The dataset's own split; (N_index,) part number and the part names."""
    if "official_split" not in frame.columns:
        raise CxrkitError(
            "the index has no 'official_split' column: method 'official' needs the dataset's own "
            "split. Use --method iterative."
        )
    raw = frame["official_split"].astype("string").str.strip()
    missing = raw.isna() | (raw == "")
    if missing.any():
        raise CxrkitError(
            f"method 'official': {int(missing.sum()):,} of {len(frame):,} index rows have no official "
            "split (e.g. an NIH image in neither train_val_list.txt nor test_list.txt); "
            "use --method iterative, or index a dataset whose official split covers every image."
        )
    mapped = raw.map(OFFICIAL_PARTS)
    unknown = mapped.isna()
    if unknown.any():
        bad = sorted(set(raw[unknown].tolist()))
        raise CxrkitError(
            f"method 'official': unknown official_split value(s) {preview(bad, 5)}; expected one of "
            f"{', '.join(OFFICIAL_PARTS)}."
        )
    names = [n for n in _PART_ORDER if (mapped == n).any()]
    code = mapped.map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
    per_patient = pd.Series(code).groupby(pat.codes).nunique()
    straddle = np.flatnonzero(per_patient.to_numpy() > 1)
    if len(straddle):
        ids = pat.ids[per_patient.index.to_numpy()[straddle]]
        raise CxrkitError(
            f"method 'official': {len(straddle):,} patient(s) have images in two official parts "
            f"(first: {preview(ids.tolist(), 3)}): the dataset's own split leaks patients. "
            "Use --method iterative for a patient-grouped split."
        )
    if official_val is None:
        return code, names
    if not 0 < official_val < 1:
        raise CxrkitError(f"--official-val must be between 0 and 1; got {official_val}.")
    if "val" in names:
        raise CxrkitError(
            "the dataset has an official validation part already; drop --official-val."
        )
    if "train" not in names:
        raise CxrkitError(
            "--official-val carves from the official training part, and there is none."
        )
    patient_part = np.empty(len(pat.ids), object)
    patient_part[pat.codes] = mapped.to_numpy(object)
    in_train = np.flatnonzero(patient_part == "train")
    shares = (1.0 - official_val, official_val)
    sub = _iterative(_strata(pat)[in_train], pat.weight[in_train], shares, rng)
    sub = _fill_unkept(sub, pat.rows[in_train], shares, rng)
    patient_part[in_train[sub == 1]] = "val"
    names = [n for n in _PART_ORDER if n in ("train", "val") or n in names]
    code = pd.Series(patient_part[pat.codes]).map({n: i for i, n in enumerate(names)})
    return code.to_numpy(np.int64), names


# ---- the entry point ---------------------------------------------------------------------------


def make_splits(
    frame: pd.DataFrame,
    targets: Targets,
    *,
    method: str = "iterative",
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    names: Sequence[str] | None = None,
    folds: int | None = None,
    seed: int = 0,
    official_val: float | None = None,
) -> Splits:
    """Split an index into patient-disjoint parts, stratified on a label policy's targets.

    Args:
        frame: the index frame (N_index rows): ``path``, ``patient_id``, ``official_split`` and
            the finding columns.
        targets: ``policy.apply(frame)``: ``y`` (N, L), ``mask`` (N, L), ``rows`` (N,) into
            ``frame``. A finding counts as positive where ``mask`` and ``y >= 0.5`` (class 1 for
            multiclass findings).
        method: ``iterative``, ``labelset``, ``random`` or ``official``.
        fractions: the parts' shares of the images; ignored with ``folds`` and ``official``.
        names: the parts' names (default train/val/test, train/test, fold0.., part0..).
        folds: make this many equal folds instead of fractions.
        seed: seed of the numpy Generator; the same inputs and seed give the same split.
        official_val: ``official`` only, for a dataset without an official validation part (NIH):
            carve this share of the official training images into ``val``, patient-grouped with
            iterative stratification.

    Returns:
        :class:`Splits` whose ``frame`` gives every index row a part.
    """
    if method not in METHODS:
        raise CxrkitError(did_you_mean(str(method), METHODS, what="split method"))
    if method != "official" and official_val is not None:
        raise CxrkitError("--official-val only applies to --method official.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CxrkitError(f"the split seed must be an integer, 0 or more; got {seed!r}.")
    rng = np.random.default_rng(seed)
    pat = _patients(frame, targets)
    n_patients = len(pat.ids)
    used: tuple[float, ...] | None
    if method == "official":
        if folds is not None:
            raise CxrkitError("method 'official' uses the dataset's own parts: drop --folds.")
        row_part, names_used = _official(frame, pat, official_val, rng)
        if names is not None:
            names_used = part_names(len(names_used), names)
        used = None
    else:
        if folds is not None:
            if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
                raise CxrkitError(f"folds must be a whole number of at least 2; got {folds}.")
            used = tuple([1.0 / folds] * folds)
        else:
            used = check_fractions(fractions)
        names_used = part_names(len(used), names, folds=folds is not None)
        if n_patients < len(used):
            raise CxrkitError(
                f"{n_patients} patient(s) cannot fill {len(used)} parts: a patient is never split. "
                "Ask for fewer parts."
            )
        if method == "iterative":
            part = _best_iterative(pat, used, rng)
        elif method == "labelset":
            part = _labelset(pat.counts, pat.weight, used, rng, targets.findings)
        else:
            part = _random(pat.weight, used, rng)
        part = _fill_unkept(part, pat.rows, used, rng)
        row_part = part[pat.codes]
    labels = np.asarray(names_used, object)[row_part]
    out = pd.DataFrame(
        {
            "path": frame["path"].astype("string").to_numpy(),
            "patient_id": frame["patient_id"].astype("string").to_numpy(),
            "part": pd.array(labels, dtype="string"),
        }
    )
    check_no_leak(out, "the split just made")
    report = split_report(frame, targets, labels, names_used)
    meta = {
        "method": method,
        "fractions": list(used) if used is not None else None,
        "folds": int(folds) if folds is not None else None,
        "seed": int(seed),
        "names": list(names_used),
        "official_val": official_val,
        "policy": targets.policy.to_dict() if targets.policy is not None else None,
        "findings": list(targets.findings),
        "index_fingerprint": index_fingerprint(frame),
        "n_rows": len(frame),
        "cxrkit_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return Splits(frame=out, meta=meta, report=report)


# ---- the report --------------------------------------------------------------------------------


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


# ---- files -------------------------------------------------------------------------------------


def check_no_leak(frame: pd.DataFrame, source: str) -> None:
    """Raise one clear line if a patient has images in more than one part."""
    per = frame.groupby(frame["patient_id"].astype(str), sort=False)["part"].nunique()
    bad = per[per > 1]
    if len(bad):
        raise CxrkitError(
            f"{source}: {len(bad):,} patient(s) have images in more than one part (first: "
            f"{preview(bad.index.tolist(), 3)}): a patient's images must all be in one part. "
            "Re-run cxrkit split."
        )


def write_splits(splits: Splits, path: str | os.PathLike[str]) -> Path:
    """Write a split to Parquet atomically, ``meta`` and ``report`` in the schema metadata.

    A patient in two parts is refused here too.
    """
    path = Path(path)
    check_no_leak(splits.frame, f"split to write to '{path}'")
    frame = splits.frame[list(SPLIT_COLUMNS)]
    return write_tagged_parquet(
        frame, path, _META_KEY, {"meta": splits.meta, "report": splits.report}
    )


def read_splits(path: str | os.PathLike[str], index_frame: pd.DataFrame | None = None) -> Splits:
    """Read a split written by :func:`write_splits` and check it.

    Refused with one clear line: a file that is not a split, a patient in two parts, and, when
    ``index_frame`` is given, a split made for another index (its fingerprint differs).
    """
    path = Path(path)
    frame, data = read_tagged_parquet(
        path, _META_KEY, "splits file", f"cxrkit split INDEX --out {path}"
    )
    missing = [c for c in SPLIT_COLUMNS if c not in frame.columns]
    if missing:
        raise CxrkitError(f"'{path}': missing column(s) {missing}; re-run cxrkit split.")
    for col in SPLIT_COLUMNS:
        frame[col] = frame[col].astype("string")
    check_no_leak(frame, f"'{path}'")
    splits = Splits(frame=frame, meta=data["meta"], report=data.get("report") or {})
    if index_frame is not None:
        want = splits.meta.get("index_fingerprint")
        got = index_fingerprint(index_frame)
        if want != got:
            raise CxrkitError(
                f"{path.name} was made for another index (fingerprint {str(want)[:12]}…, "
                f"{splits.meta.get('n_rows', '?')} rows; this index: {got[:12]}…, "
                f"{len(index_frame)} rows); re-run cxrkit split on this index."
            )
    return splits
