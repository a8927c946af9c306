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
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit._legacy import REMOVED_IN, CxrkitDeprecationWarning
from cxrkit.core.errors import CxrkitError, did_you_mean, preview
from cxrkit.core.fileio import read_tagged_parquet, write_tagged_parquet
from cxrkit.data.index import index_fingerprint
from cxrkit.data.labels import Targets
from cxrkit.data.split_report import split_report
from cxrkit.data.stratify import (
    LABELSET_MAX_FINDINGS,
    PatientCounts,
    best_iterative,
    fill_unkept,
    iterative_stratify,
    labelset_parts,
    patient_counts,
    positives,
    random_parts,
    stratum_counts,
)

__all__ = [
    "LABELSET_MAX_FINDINGS",
    "OFFICIAL_PARTS",
    "SPLIT_COLUMNS",
    "SPLIT_METHODS",
    "Splits",
    "check_fractions",
    "check_no_leak",
    "make_splits",
    "part_names",
    "positives",
    "read_splits",
    "split_report",
    "write_splits",
]

#: The split methods, in the order the CLI offers them (``METHODS`` before cxrkit 0.2).
SPLIT_METHODS: tuple[str, ...] = ("iterative", "labelset", "random", "official")
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


def _official(
    frame: pd.DataFrame,
    pat: PatientCounts,
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
    sub = iterative_stratify(stratum_counts(pat)[in_train], pat.weight[in_train], shares, rng)
    sub = fill_unkept(sub, pat.rows[in_train], shares, rng)
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
    if method not in SPLIT_METHODS:
        raise CxrkitError(did_you_mean(str(method), SPLIT_METHODS, what="split method"))
    if method != "official" and official_val is not None:
        raise CxrkitError("--official-val only applies to --method official.")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CxrkitError(f"the split seed must be an integer, 0 or more; got {seed!r}.")
    rng = np.random.default_rng(seed)
    pat = patient_counts(frame, targets)
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
            part = best_iterative(pat, used, rng)
        elif method == "labelset":
            part = labelset_parts(pat.counts, pat.weight, used, rng, targets.findings)
        else:
            part = random_parts(pat.weight, used, rng)
        part = fill_unkept(part, pat.rows, used, rng)
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


def __getattr__(name: str) -> object:
    # cxrkit 0.1 called SPLIT_METHODS ``METHODS`` (a name cxrkit.use.explain uses for its own list)
    if name == "METHODS":
        warnings.warn(
            f"{__name__}.METHODS is now SPLIT_METHODS; the old name is removed in cxrkit "
            f"{REMOVED_IN}.",
            CxrkitDeprecationWarning,
            stacklevel=2,
        )
        return SPLIT_METHODS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
