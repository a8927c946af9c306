"""Scoring any model's prediction files against a labels file, as published results are scored.

``score_files(P, T)`` scores a predictions CSV/parquet against a labels CSV, including the CheXpert
ground-truth layout (``Study`` rows, one column per finding) to which image-level predictions are
aggregated. Scores may be any finite real numbers (AUROC, AUPRC and DeLong use ranks only):
probabilities, logits, ensemble averages above 1, ranks. Metrics that need probabilities (a 0.5
threshold) are left out for scores that are not, with a note saying why; a threshold in the scores'
own units (``threshold``, or one fitted on validation files) works for any scores. Rows without a
score (an image ``cxrkit predict`` could not decode) are left out and counted. With ``readers``,
human readers' binary reads are compared with the model (:mod:`cxrkit.evaluate.readers`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError, did_you_mean, preview
from cxrkit.core.fileio import sha256_file
from cxrkit.core.names import ERROR_COLUMN, POSITIVE_SUFFIX
from cxrkit.evaluate.metrics.summary import STUDY_AGGREGATIONS
from cxrkit.evaluate.results import LABEL_PREFIX, EvalResults, LevelMetrics, write_outputs

log = logging.getLogger(__name__)

_KEYS = ("path", "Path", "Study", "study", "study_id", "image", "Image Index")
_PATIENT = re.compile(r"(patient\d+)")


def _read_table(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise CxrkitError(f"{what} file '{path}' does not exist.")
    try:
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except Exception as e:  # pandas raises many types for a malformed file
        raise CxrkitError(f"{what} file '{path}' cannot be read as a table ({e}).") from None


def _key_column(frame: pd.DataFrame, path: str | Path, what: str) -> str:
    for k in _KEYS:
        if k in frame.columns:
            return k
    raise CxrkitError(
        f"{what} file '{path}' has no key column: expected one of {', '.join(_KEYS)} "
        f"(found {preview(list(frame.columns))})."
    )


def _finding_columns(frame: pd.DataFrame, skip: set[str]) -> dict[str, str]:
    """canonical finding name → column, for the columns that name a finding."""
    from cxrkit.core.findings import canonical_name

    out = {}
    for c in frame.columns:
        if c in skip or str(c).startswith(LABEL_PREFIX) or str(c).endswith(POSITIVE_SUFFIX):
            continue
        name = canonical_name(str(c), strict=False)
        if name is not None:
            out[name] = c
    return out


def _study_of(path: str) -> str:
    """CheXpert/MIMIC: the study folder of an image path (``.../patient1/study2/view1.jpg``)."""
    p = str(path).replace("\\", "/")
    return p.rsplit("/", 1)[0] if "/" in p else p


def _norm_key(values: pd.Series) -> pd.Series:
    """Paths compared from the patient folder on, so 'CheXpert-v1.0/valid/…' matches 'valid/…'."""
    s = values.astype(str).str.replace("\\", "/", regex=False).str.strip().str.rstrip("/")
    m = s.str.extract(r"((?:train|valid|test)/patient\d+/.*)$")[0]
    return m.fillna(s)


#: ``reference`` values: the labels file, or the readers' majority vote
REFERENCES = ("labels", "majority")


@dataclass
class _Table:
    """Predictions matched to labels: n cases × L findings."""

    keys: pd.Series
    y: np.ndarray  # (n, L) float32 targets
    mask: np.ndarray  # (n, L) bool: labelled and scored
    scores: np.ndarray  # (n, L) float64, 0 where not scored
    findings: list[str]
    groups: np.ndarray | None
    per_study: bool
    lkey: str
    notes: list[str] = field(default_factory=list)


def _load(
    predictions: str | Path,
    labels: str | Path,
    findings: str | list[str] | None,
    aggregate: str,
    what: str = "",
) -> _Table:
    """Read, harmonise and match a predictions file and a labels file (see :func:`score_files`)."""
    from cxrkit.core.findings import resolve_findings

    notes: list[str] = []
    pred = _read_table(predictions, f"{what}predictions")
    lab = _read_table(labels, f"{what}labels")
    if "level" in pred.columns:  # a cxrkit predictions.parquet: its image rows
        pred = pred[pred["level"] == "image"]
    pkey = _key_column(pred, predictions, f"{what}predictions")
    lkey = _key_column(lab, labels, f"{what}labels")
    meta_cols = {pkey, lkey, "level", "part", "patient_id", "study_id", "view", "images"}
    meta_cols.add(ERROR_COLUMN)
    pcols, lcols = _finding_columns(pred, meta_cols), _finding_columns(lab, meta_cols)
    if not pcols:
        raise CxrkitError(
            f"predictions file '{predictions}' has no column named after a finding "
            f"(found {preview(list(pred.columns))})."
        )
    both = [f for f in pcols if f in lcols]
    if findings:
        try:
            wanted = resolve_findings(findings, both)
        except CxrkitError:
            wanted = [findings] if isinstance(findings, str) else list(findings)
        missing = [f for f in wanted if f not in both]
        if missing:
            raise CxrkitError(
                did_you_mean(str(missing[0]), both, what="finding")
                + " (a scored finding must be in both files)"
            )
    else:
        if not both:
            raise CxrkitError(
                f"no finding is in both files: predictions have {preview(sorted(pcols))}, labels "
                f"{preview(sorted(lcols))}. Rename the columns to the same findings."
            )
        wanted = both
        only_p, only_l = sorted(set(pcols) - set(both)), sorted(set(lcols) - set(both))
        odd = [
            str(c)
            for c in pred.columns
            if c not in meta_cols
            and c not in pcols.values()
            and not str(c).startswith(LABEL_PREFIX)
            and not str(c).endswith(POSITIVE_SUFFIX)
        ]
        if odd:
            notes.append(f"prediction columns not recognised as findings: {preview(odd)}")
        if only_p or only_l:
            notes.append(
                f"scored the {len(both)} finding(s) in both files; left out "
                + "; ".join(
                    x
                    for x in (
                        f"only in the predictions: {preview(only_p)}" if only_p else "",
                        f"only in the labels: {preview(only_l)}" if only_l else "",
                    )
                    if x
                )
            )
    scores = pred[[pcols[f] for f in wanted]].apply(pd.to_numeric, errors="coerce")
    failed = scores.isna().all(axis=1).to_numpy().copy()
    if ERROR_COLUMN in pred.columns:
        failed = failed | pred[ERROR_COLUMN].notna().to_numpy()
    if failed.any():
        notes.append(
            f"{int(failed.sum()):,} prediction row(s) have no scores (images that could not be "
            "decoded) and are left out"
        )
    pred, scores = pred[~failed], scores[~failed]
    p = scores.to_numpy(np.float64)
    if np.isinf(p).any():
        j = int(np.flatnonzero(np.isinf(p).any(axis=0))[0])
        raise CxrkitError(
            f"predictions for '{wanted[j]}' hold infinite values: pass finite scores."
        )
    pk = _norm_key(pred[pkey])
    lk = _norm_key(lab[lkey])
    per_study = lkey in ("Study", "study", "study_id") and pkey not in (
        "Study",
        "study",
        "study_id",
    )
    if pk.duplicated().any():
        raise CxrkitError(
            f"predictions file '{predictions}' has {int(pk.duplicated().sum())} duplicate "
            f"'{pkey}' value(s) (e.g. '{pk[pk.duplicated()].iloc[0]}'): one row per image expected."
        )
    if per_study:
        pk = pk.map(_study_of)
        grouped = pd.DataFrame(p, columns=wanted).groupby(pk.to_numpy(), sort=False)
        agg = grouped.max() if aggregate == "max" else grouped.mean()
        pk, p = pd.Series(agg.index), agg.to_numpy(np.float64)
    if lk.duplicated().any():
        raise CxrkitError(
            f"labels file '{labels}' has {int(lk.duplicated().sum())} duplicate '{lkey}' value(s)."
        )
    pos = pd.Series(np.arange(len(pk)), index=pk.to_numpy())
    found = lk.isin(pos.index).to_numpy()
    if not found.any():
        raise CxrkitError(
            f"no label row matches a prediction: labels' '{lkey}' looks like "
            f"'{lk.iloc[0]}', predictions' '{pkey}' like '{pk.iloc[0] if len(pk) else ''}'."
        )
    if not found.all():
        notes.append(
            f"{int((~found).sum()):,} of {len(found):,} label rows have no prediction and are left "
            f"out (e.g. '{lk[~found].iloc[0]}')"
        )
    lab_sel = lab[found]
    probs = p[pos[lk[found]].to_numpy()]
    raw = lab_sel[[lcols[f] for f in wanted]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    mask = np.isin(raw, (0.0, 1.0))
    odd = ~np.isnan(raw) & ~mask & (raw != -1)
    if odd.any():
        j = int(np.flatnonzero(odd.any(axis=0))[0])
        raise CxrkitError(
            f"labels for '{wanted[j]}' hold values other than 1, 0, -1 or blank "
            f"(e.g. {raw[odd[:, j], j][0]}): pass the raw labels."
        )
    unscored = np.isnan(probs) & mask
    if unscored.any():
        notes.append(f"{int(unscored.sum()):,} labelled (case, finding) pair(s) have no score")
    mask &= ~np.isnan(probs)
    y = np.where(mask, raw, 0.0).astype(np.float32)
    keys = lk[found].astype(str).reset_index(drop=True)
    if "patient_id" in lab_sel.columns:
        groups = lab_sel["patient_id"].astype(str).to_numpy()
    else:
        pat = keys.str.extract(_PATIENT)[0]
        groups = pat.to_numpy() if pat.notna().all() else None
    return _Table(
        keys=keys,
        y=y,
        mask=mask,
        scores=np.where(mask, probs, 0.0),
        findings=wanted,
        groups=groups,
        per_study=per_study,
        lkey=lkey,
        notes=notes,
    )


def _reads(paths: list[str | Path], table: _Table) -> tuple[list[str], np.ndarray]:
    """The readers' binary reads aligned to the table's cases: names and (R, n, L), NaN = no read."""
    out = []
    names = []
    for path in paths:
        frame = _read_table(path, "readers")
        key = _key_column(frame, path, "readers")
        cols = _finding_columns(frame, {key, "patient_id", "study_id", "view"})
        missing = [f for f in table.findings if f not in cols]
        if missing:
            raise CxrkitError(
                f"readers file '{path}' has no column for {preview(missing)}: a reader's file "
                "has the labels' layout, one 0/1 column per scored finding."
            )
        k = _norm_key(frame[key])
        if k.duplicated().any():
            raise CxrkitError(f"readers file '{path}' has duplicate '{key}' value(s).")
        vals = frame[[cols[f] for f in table.findings]].apply(pd.to_numeric, errors="coerce")
        vals.index = k.to_numpy()
        aligned = vals.reindex(table.keys.to_numpy()).to_numpy(np.float64)
        if not np.isin(aligned[~np.isnan(aligned)], (0.0, 1.0)).all():
            raise CxrkitError(f"readers file '{path}' holds values other than 0, 1 or blank.")
        if np.isnan(aligned).all():
            raise CxrkitError(
                f"readers file '{path}': no row matches the labels' cases (its '{key}' looks like "
                f"'{k.iloc[0]}', the labels' like '{table.keys.iloc[0]}')."
            )
        out.append(aligned)
        names.append(Path(path).stem)
    if len(set(names)) != len(names):
        names = [f"R{i + 1}:{n}" for i, n in enumerate(names)]
    return names, np.stack(out)


def score_files(
    predictions: str | Path,
    labels: str | Path,
    *,
    findings: str | list[str] | None = None,
    aggregate: str = "max",
    thresholds: dict[str, float] | None = None,
    threshold: float | None = None,
    operating_point: str = "fixed",
    target: float | None = None,
    val_predictions: str | Path | None = None,
    val_labels: str | Path | None = None,
    readers: list[str | Path] | None = None,
    reference: str = "labels",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    out: str | Path | None = None,
) -> tuple[EvalResults, Path | None]:
    """Score any model's predictions against labels, as :func:`evaluate_model` scores a run.

    Args:
        predictions: a CSV/parquet with a key column (``Path``/``path``, ``Study``, ...) and one
            score column per finding (names as any dataset spells them; ``cxrkit predict``'s own
            output is understood: its ``<finding>_positive`` and ``error`` columns are skipped).
        labels: the same key and 1 / 0 per finding; -1, blank and NaN are left out. When the labels
            are per study (a ``Study`` column, the CheXpert test layout) and the predictions per
            image, the images' scores are aggregated per study folder (``aggregate``).
        findings: what to score: names, a comma list or a set name (``competition``); default the
            findings in both files (a note names the others).
        threshold, thresholds: operating point(s) in the scores' own units (``fixed``).
        operating_point, target: ``fixed`` (``threshold``, default 0.5 for probabilities), or a
            method fitted on ``val_predictions``/``val_labels`` (``youden``, ``max_f1``,
            ``sensitivity``/``specificity`` with ``target``).
        readers: readers' files in the labels' layout (binary reads) to compare the model with.
        reference: ``labels`` or ``majority`` (the readers' majority vote is the truth).
        n_boot, seed, level: the patient bootstrap.
        out: write ``predictions.parquet`` and ``metrics.json`` there (default: nothing written).

    Returns:
        (the results, the output folder or None).
    """
    from cxrkit.evaluate.metrics import evaluate
    from cxrkit.evaluate.metrics.thresholds import THRESHOLD_METHODS, OperatingPoints

    if aggregate not in STUDY_AGGREGATIONS:
        raise CxrkitError(
            f"The 'aggregate' parameter must be one of {{{', '.join(STUDY_AGGREGATIONS)}}}. "
            f"Got '{aggregate}' instead."
        )
    if operating_point not in THRESHOLD_METHODS:
        raise CxrkitError(did_you_mean(operating_point, THRESHOLD_METHODS, what="operating point"))
    if reference not in REFERENCES:
        raise CxrkitError(did_you_mean(reference, REFERENCES, what="reference"))
    fitted = operating_point != "fixed"
    if fitted and (val_predictions is None or val_labels is None):
        raise CxrkitError(
            f"--operating-point {operating_point} is fitted on validation data: pass "
            "--val-predictions and --val-labels, or use --operating-point fixed --target T."
        )
    if not fitted and (val_predictions is not None or val_labels is not None):
        raise CxrkitError(
            "--val-predictions/--val-labels are for fitting an operating point: pass "
            "--operating-point youden, max_f1, sensitivity or specificity with them."
        )
    if reference == "majority" and not readers:
        raise CxrkitError("--reference majority is the readers' majority vote: pass --readers.")
    table = _load(predictions, labels, findings, aggregate)
    wanted, notes = table.findings, table.notes
    reads = None
    if readers:
        names, reads = _reads(list(readers), table)
        if reference == "majority":
            from cxrkit.evaluate.readers import majority_reference

            if len(names) < 3:
                raise CxrkitError(
                    f"--reference majority needs at least 3 readers (got {len(names)}): with two, "
                    "every disagreement is a tie and is left out, so the readers agree with the "
                    "reference by construction."
                )

            for j in range(len(wanted)):
                maj, keep = majority_reference(reads[:, :, j])
                table.y[:, j] = np.where(keep, maj, 0.0)
                table.mask[:, j] &= keep  # cases the labels and the readers both cover
            notes.append(f"reference: the majority vote of {len(names)} readers (ties left out)")
    s = table.scores
    is_prob = [
        bool(np.all((s[table.mask[:, j], j] >= 0) & (s[table.mask[:, j], j] <= 1)))
        for j in range(len(wanted))
    ]
    thr: dict[str, float] = dict(thresholds or {})
    if threshold is not None:
        thr = dict.fromkeys(wanted, float(threshold)) | thr
    if fitted:
        val = _load(val_predictions, val_labels, wanted, aggregate, what="validation ")
        points = OperatingPoints(operating_point, target).fit(
            val.scores, val.y, val.mask, val.findings, part="validation files"
        )
        thr = {f: t for f, t in points.thresholds_.items() if t is not None} | thr
        notes += [
            f"'{f}': no operating point fitted ({why})" for f, why in points.unfitted_.items()
        ]
    unthresholded = [f for f, ok in zip(wanted, is_prob, strict=True) if not ok and f not in thr]
    for j, f in enumerate(wanted):
        if is_prob[j]:
            continue
        v = s[table.mask[:, j], j]
        kind = "negative values: logits?" if v.min() < 0 else "values above 1"
        notes.append(
            f"'{f}': scores are not probabilities (from {v.min():.3g} to {v.max():.3g}; {kind}): "
            "AUROC, AUPRC and DeLong use their ranks"
            + (
                "; thresholded metrics left out (pass --target in the scores' units, or fit one "
                "with --val-predictions)"
                if f in unthresholded
                else ""
            )
        )
    metrics = evaluate(
        table.y,
        table.mask,
        s,
        wanted,
        groups=table.groups,
        thresholds={f: v for f, v in thr.items() if f in wanted},
        n_boot=n_boot,
        seed=seed,
        level=level,
        scores=True,
        unthresholded=unthresholded,
    )
    result = EvalResults(
        image=LevelMetrics.from_dict(metrics),
        cxrkit_version=__version__,
        predictions=str(predictions),
        labels=str(labels),
        predictions_sha256=sha256_file(predictions),
        labels_sha256=sha256_file(labels),
        level="study" if table.per_study else "image",
        aggregate=aggregate if table.per_study else None,
        bootstrap_groups="patient" if table.groups is not None else "image",
        notes=notes or None,
        primary="image",
        kind="files",
    )
    if reads is not None:
        result.readers = _compare_readers(table, reads, names, thr, n_boot, seed, level)
    out_dir = None
    if out is not None:
        out_dir = Path(out)
        frame = pd.DataFrame({"key": table.keys.to_numpy()})
        frame.insert(0, "level", result.level)
        for j, f in enumerate(wanted):
            frame[f] = np.where(table.mask[:, j], s[:, j], np.nan).astype(np.float32)
        for j, f in enumerate(wanted):
            frame[LABEL_PREFIX + f] = np.where(table.mask[:, j], table.y[:, j], np.nan)
        write_outputs(out_dir, frame, result)
    return result, out_dir


def _compare_readers(table, reads, names, thr, n_boot, seed, level) -> dict:
    """Per finding, the model against the readers on the cases every reader read."""
    from cxrkit.evaluate.readers import compare_with_readers

    out = {}
    for j, f in enumerate(table.findings):
        keep = table.mask[:, j] & ~np.isnan(reads[:, :, j]).any(axis=0)
        yj = table.y[keep, j]
        if not keep.any() or yj.min() == yj.max():
            continue  # no case, or only one class: nothing to compare on
        out[f] = compare_with_readers(
            yj,
            table.scores[keep, j],
            reads[:, keep, j],
            None if table.groups is None else table.groups[keep],
            names=names,
            threshold=thr.get(f),
            n_boot=max(n_boot, 1),
            seed=seed,
            level=level,
        )
    return out
