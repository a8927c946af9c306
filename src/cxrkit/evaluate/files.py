"""Scoring any model's prediction files against a labels file, as a trained model is scored.

``score_files(P, T)`` scores a predictions CSV/parquet against a labels CSV, including the CheXpert
ground-truth layout (``Study`` rows, one column per finding) to which image-level predictions are
aggregated.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError, did_you_mean, preview
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
        if c in skip or c.startswith(LABEL_PREFIX):
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


def score_files(
    predictions: str | Path,
    labels: str | Path,
    *,
    findings: list[str] | None = None,
    aggregate: str = "max",
    thresholds: dict[str, float] | None = None,
    threshold: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    out: str | Path | None = None,
) -> tuple[EvalResults, Path | None]:
    """Score any model's predictions against labels, as :func:`evaluate_model` scores a run.

    Predictions: a CSV or parquet with a key column (``Path``/``path``, ``Study``, ...) and one
    probability column per finding (names as any dataset spells them). Labels: the same key and
    1 / 0 per finding; -1, blank and NaN are left out of the scores. When the labels are per
    study (a ``Study`` column, the CheXpert test layout) and the predictions per image, the
    images' probabilities are aggregated per study folder (``aggregate``: max or mean).

    Returns:
        (the results, the output folder or None).
    """
    from cxrkit.evaluate.metrics import evaluate

    if aggregate not in STUDY_AGGREGATIONS:
        raise CxrkitError(
            f"The 'aggregate' parameter must be one of {{{', '.join(STUDY_AGGREGATIONS)}}}. "
            f"Got '{aggregate}' instead."
        )
    pred = _read_table(predictions, "predictions")
    lab = _read_table(labels, "labels")
    if "level" in pred.columns:  # a cxrkit predictions.parquet: its image rows
        pred = pred[pred["level"] == "image"]
    pkey, lkey = _key_column(pred, predictions, "predictions"), _key_column(lab, labels, "labels")
    meta_cols = {pkey, lkey, "level", "part", "patient_id", "study_id", "view", "images"}
    pcols, lcols = _finding_columns(pred, meta_cols), _finding_columns(lab, meta_cols)
    if not pcols:
        raise CxrkitError(
            f"predictions file '{predictions}' has no column named after a finding "
            f"(found {preview(list(pred.columns))})."
        )
    if findings:
        from cxrkit.core.findings import canonical_name

        wanted = []
        for f in findings:
            c = canonical_name(f, strict=False)
            if c is None or c not in pcols or c not in lcols:
                raise CxrkitError(
                    did_you_mean(f, sorted(set(pcols) & set(lcols)), what="finding")
                    + " (it must be in both files)"
                )
            wanted.append(c)
    else:
        if set(pcols) != set(lcols):
            odd_p = [
                c
                for c in pred.columns
                if c not in meta_cols and c not in pcols.values() and not c.startswith(LABEL_PREFIX)
            ]
            only_p = sorted(set(pcols) - set(lcols))
            only_l = sorted(set(lcols) - set(pcols))
            raise CxrkitError(
                "finding names differ between predictions and labels: "
                + (f"only in predictions {preview(only_p)}" if only_p else "")
                + ("; " if only_p and only_l else "")
                + (f"only in labels {preview(only_l)}" if only_l else "")
                + (f"; columns not recognised as findings: {preview(odd_p)}" if odd_p else "")
                + ". Rename the columns, or pass --findings with the ones to score."
            )
        wanted = [f for f in pcols]
    probs_df = pred[[pcols[f] for f in wanted]].apply(pd.to_numeric, errors="coerce")
    bad = {}
    for f in wanted:
        v = probs_df[pcols[f]].to_numpy(float)
        n_bad = int((np.isnan(v) | (v < 0) | (v > 1)).sum())
        if n_bad:
            bad[f] = n_bad
    if bad:
        f, n_bad = next(iter(bad.items()))
        raise CxrkitError(
            f"predictions for '{f}' have {n_bad} value(s) outside [0, 1] or missing: pass "
            "probabilities (apply the sigmoid to logits)."
        )
    pk = _norm_key(pred[pkey])
    lk = _norm_key(lab[lkey])
    per_study = lkey in ("Study", "study", "study_id") and pkey not in (
        "Study",
        "study",
        "study_id",
    )
    p = probs_df.to_numpy(np.float64)
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
            f"'{lk.iloc[0]}', predictions' '{pkey}' like '{pk.iloc[0]}'."
        )
    if not found.all():
        log.warning(
            "%d of %d label rows have no prediction and are left out (e.g. '%s')",
            int((~found).sum()),
            len(found),
            lk[~found].iloc[0],
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
    y = np.where(mask, raw, 0.0).astype(np.float32)
    keys = lk[found].astype(str)
    if "patient_id" in lab_sel.columns:
        groups = lab_sel["patient_id"].astype(str).to_numpy()
    else:
        pat = keys.str.extract(_PATIENT)[0]
        groups = pat.to_numpy() if pat.notna().all() else None
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise CxrkitError(f"--target (the threshold) must lie in [0, 1]; got {threshold}.")
        thresholds = dict.fromkeys(wanted, float(threshold)) | dict(thresholds or {})
    metrics = evaluate(
        y,
        mask,
        probs,
        wanted,
        groups=groups,
        thresholds=thresholds,
        n_boot=n_boot,
        seed=seed,
        level=level,
    )
    result = EvalResults(
        image=LevelMetrics.from_dict(metrics),
        cxrkit_version=__version__,
        predictions=str(predictions),
        labels=str(labels),
        level="study" if per_study else "image",
        aggregate=aggregate if per_study else None,
        bootstrap_groups="patient" if groups is not None else "image",
        primary="image",
        kind="files",
    )
    out_dir = None
    if out is not None:
        out_dir = Path(out)
        table = pd.DataFrame({"key": keys.to_numpy()})
        table.insert(0, "level", result.level)
        for j, f in enumerate(wanted):
            table[f] = probs[:, j].astype(np.float32)
        for j, f in enumerate(wanted):
            table[LABEL_PREFIX + f] = np.where(mask[:, j], y[:, j], np.nan)
        write_outputs(out_dir, table, result)
    return result, out_dir
