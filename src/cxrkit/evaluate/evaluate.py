"""Evaluation of a trained model or of any model's prediction files: predictions → metrics.

``evaluate_model(RUN)`` predicts the validation and test parts of a run's data through the cache
(the exact preprocessing of training), fits operating points (and optionally a temperature) on the
validation part, stores them in the model artifact, and scores the test part per image and per
study (views aggregated by max or mean, since CheXpert is scored per study). It writes
``predictions.parquet`` and ``metrics.json`` into ``RUN/eval-<part>/``.

``score_files(P, T)`` scores a predictions CSV/parquet against a labels CSV the same way, including
the CheXpert ground-truth layout (``Study`` rows, one column per finding) to which image-level
predictions are aggregated.

The numbers come from :mod:`cxrkit.evaluate.metrics`; this module only gathers data and writes files.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError, did_you_mean, preview
from cxrkit.core.fileio import atomic_path, write_text_atomic
from cxrkit.model.artifact import resolve_artifact

log = logging.getLogger(__name__)

OPERATING_POINTS = ("fixed", "youden", "max_f1", "sensitivity", "specificity")
AGGREGATIONS = ("max", "mean", "none")
PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"
#: Prefix of the label columns in ``predictions.parquet``; a finding's own name holds its probability.
LABEL_PREFIX = "label:"


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
        if self.operating_point not in OPERATING_POINTS:
            raise CxrkitError(
                f"The 'operating-point' parameter must be one of {{{', '.join(OPERATING_POINTS)}}}. "
                f"Got '{self.operating_point}' instead."
            )
        if self.aggregate not in AGGREGATIONS:
            raise CxrkitError(
                f"The 'aggregate' parameter must be one of {{{', '.join(AGGREGATIONS)}}}. "
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


def _fit_thresholds(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray, findings: list[str], opts: EvalOptions
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Per finding, the operating point fitted on (probs, y, mask); None where it cannot be."""
    from cxrkit.evaluate.metrics import fit_threshold

    out: dict[str, float | None] = {}
    why: dict[str, str] = {}
    for j, f in enumerate(findings):
        m = mask[:, j]
        t = (y[m, j] >= 0.5).astype(int)
        if opts.operating_point == "fixed":
            out[f] = float(opts.target if opts.target is not None else 0.5)
        elif t.size == 0 or t.min() == t.max():
            out[f] = None
            why[f] = (
                "no labelled case"
                if t.size == 0
                else f"only {'positive' if t[0] else 'negative'} cases"
            ) + f" in the '{opts.fit_part}' part: 0.5 used"
        else:
            out[f] = float(fit_threshold(t, probs[m, j], opts.operating_point, opts.target))
    return out, why


def _frame_for(index_frame: pd.DataFrame, rows: np.ndarray) -> pd.DataFrame:
    cols = [c for c in ("path", "patient_id", "study_id", "view") if c in index_frame.columns]
    return index_frame.iloc[rows][cols].reset_index(drop=True)


def _prediction_table(
    meta: pd.DataFrame,
    probs: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    findings: list[str],
    level: str,
    part: str,
) -> pd.DataFrame:
    out = meta.copy()
    out.insert(0, "level", level)
    out.insert(1, "part", part)
    for j, f in enumerate(findings):
        out[f] = probs[:, j].astype(np.float32)
    for j, f in enumerate(findings):
        out[LABEL_PREFIX + f] = np.where(mask[:, j], (y[:, j] >= 0.5).astype(np.float32), np.nan)
    return out


def _score(
    probs: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    findings: list[str],
    groups: np.ndarray | None,
    thresholds: dict[str, float | None],
    opts: EvalOptions,
) -> dict[str, Any]:
    from cxrkit.evaluate.metrics import evaluate

    return evaluate(
        (y >= 0.5).astype(np.float32),
        mask,
        probs,
        findings,
        groups=groups,
        thresholds={k: v for k, v in thresholds.items() if v is not None},
        n_boot=opts.n_boot,
        seed=opts.seed,
        level=opts.level,
    )


def _calibration(probs: np.ndarray, y: np.ndarray, mask: np.ndarray, findings: list[str]) -> dict:
    from cxrkit.evaluate.metrics import calibration

    pooled = calibration((y[mask] >= 0.5).astype(int), probs[mask])
    per = {}
    for j, f in enumerate(findings):
        m = mask[:, j]
        if m.any():
            per[f] = calibration((y[m, j] >= 0.5).astype(int), probs[m, j])
    return {"pooled": pooled, "findings": per}


def _studies(
    probs: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    meta: pd.DataFrame,
    how: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    from cxrkit.evaluate.metrics import aggregate_studies

    study = meta["study_id"].astype(str).to_numpy()
    patient = meta["patient_id"].astype(str).to_numpy() if "patient_id" in meta else None
    ps, ys, ms, sids, pats = aggregate_studies(probs, y, mask, study, how=how, patient_ids=patient)
    first_of = pd.Series(np.arange(len(study))).groupby(study, sort=False).first()
    first = first_of.reindex(np.asarray(sids).astype(str)).to_numpy(np.int64)
    smeta = pd.DataFrame(
        {
            "path": meta["path"].to_numpy()[first] if "path" in meta else None,
            "patient_id": pats if pats is not None else None,
            "study_id": study[first],
            "view": "study",
        }
    )
    n_images = pd.Series(study).value_counts().reindex(study[first]).to_numpy()
    smeta["images"] = n_images
    return ps, ys, ms, smeta


def _write_outputs(out: Path, predictions: pd.DataFrame, metrics: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / PREDICTIONS_FILE) as tmp:
        predictions.to_parquet(tmp, index=False)
    write_text_atomic(
        out / METRICS_FILE, json.dumps(metrics, indent=2, allow_nan=False, default=_json) + "\n"
    )


def _json(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def evaluate_model(
    path: str | Path,
    opts: EvalOptions | None = None,
    *,
    config: str | Path | None = None,
    out: str | Path | None = None,
    progress: Any = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate a run's model artifact on one part of its data.

    Args:
        path: a run folder (``config.yaml`` + ``model/``) or an artifact folder (then ``config``
            names the training config whose ``data`` section says where the data is).
        opts: see :class:`EvalOptions`.
        config: a config file, overriding the run's own.
        out: output folder (default ``<run>/eval-<part>``).
        progress: an optional callable ``progress(message)``.

    Returns:
        (metrics dict, output folder).
    """
    from cxrkit.core.config import load_config
    from cxrkit.data.loader import make_datamodule
    from cxrkit.evaluate.inference import predict_part, scoring_mask
    from cxrkit.evaluate.metrics import apply_temperature, fit_temperature
    from cxrkit.model.artifact import build_pipeline, load_artifact, set_operating_points

    opts = opts or EvalOptions()
    opts.check()
    run, artifact = resolve_artifact(path)
    if config is not None and not Path(config).is_file():
        raise CxrkitError(
            f"config '{config}' does not exist: pass the YAML the model was trained with."
        )
    cfg_path = Path(config) if config else (run / "config.yaml" if run else None)
    if cfg_path is None or not cfg_path.is_file():
        raise CxrkitError(
            f"no training config for '{path}': pass --config with the config it was trained with "
            "(its data section says where the index, splits and cache are)."
        )
    model, meta = load_artifact(artifact)
    cfg = load_config(cfg_path)
    findings = list(meta.labels)
    dm = make_datamodule(cfg)
    if list(dm.findings) != findings:
        raise CxrkitError(
            f"the model's findings {preview(findings)} differ from the config's "
            f"{preview(dm.findings)}: pass the config the model was trained with."
        )
    for part in (opts.part, opts.fit_part):
        if part not in dm.datasets:
            raise CxrkitError(
                did_you_mean(part, list(dm.datasets), what="part") + " (see the splits file)"
            )
    if len(dm.datasets[opts.part]) == 0:
        raise CxrkitError(f"the '{opts.part}' part is empty: nothing to evaluate.")

    size = int(dm.images.shape[1])
    if tuple(meta.image_size) != (size, size):
        raise CxrkitError(
            f"the model takes {meta.image_size[0]} px images but the cache holds {size} px ones: "
            "build a cache at the model's size (cxrkit cache --size) and point data.cache at it."
        )
    pipe = build_pipeline(meta)

    def predict(part: str):
        if progress:
            progress(f"predicting the '{part}' part ({len(dm.datasets[part]):,} images)")
        probs, rows = predict_part(model, dm, part, meta.output, pipe)
        ds = dm.datasets[part]
        mask = scoring_mask(ds.y, ds.mask, meta.output).numpy()
        return probs, ds.y.numpy(), mask, rows

    test = predict(opts.part)
    fit = predict(opts.fit_part) if len(dm.datasets[opts.fit_part]) else None
    if fit is None:
        log.warning("the '%s' part is empty: operating points fixed at 0.5", opts.fit_part)

    temperature = float(meta.temperature)
    if opts.calibrate:
        if fit is None:
            raise CxrkitError(f"--calibrate needs a non-empty '{opts.fit_part}' part.")
        temperature = float(fit_temperature(fit[0], fit[1] >= 0.5, fit[2]))
    raw_test = test[0]
    if temperature != 1.0:
        test = (apply_temperature(test[0], temperature), *test[1:])
        if fit is not None:
            fit = (apply_temperature(fit[0], temperature), *fit[1:])

    if fit is not None:
        thresholds, why = _fit_thresholds(fit[0], fit[1], fit[2], findings, opts)
    else:
        thresholds = dict.fromkeys(findings, 0.5)
        why = dict.fromkeys(findings, f"the '{opts.fit_part}' part is empty: 0.5 used")
    op_info = {
        "method": opts.operating_point,
        "target": opts.target,
        "fitted_on": opts.fit_part,
        "level": "image",
        "unfitted": why,
    }
    if opts.save:
        set_operating_points(
            artifact,
            thresholds,
            temperature=temperature if opts.calibrate else None,
            info=op_info,
        )

    index_frame = dm.index_frame
    tmeta = _frame_for(index_frame, test[3])
    groups = tmeta["patient_id"].astype(str).to_numpy() if "patient_id" in tmeta else None
    if progress:
        progress(f"scoring with {opts.n_boot} bootstrap resamples over patients")
    image_metrics = _score(test[0], test[1], test[2], findings, groups, thresholds, opts)
    tables = [_prediction_table(tmeta, test[0], test[1], test[2], findings, "image", opts.part)]
    result: dict[str, Any] = {
        "cxrkit_version": __version__,
        "run": str(run) if run else None,
        "artifact": str(artifact),
        "part": opts.part,
        "options": asdict(opts),
        "output": meta.output,
        "temperature": temperature,
        "operating_point": {**op_info, "thresholds": thresholds},
        "image": image_metrics,
        "calibration": {
            "before_temperature": _calibration(raw_test, test[1] >= 0.5, test[2], findings),
        },
    }
    if temperature != 1.0:
        result["calibration"]["after_temperature"] = _calibration(
            test[0], test[1] >= 0.5, test[2], findings
        )

    if opts.aggregate != "none" and "study_id" in tmeta:
        ps, ys, ms, smeta = _studies(test[0], test[1], test[2], tmeta, opts.aggregate)
        if len(ps) < len(test[0]):  # some study has several views
            if fit is not None:
                fmeta = _frame_for(index_frame, fit[3])
                fps, fys, fms, _ = _studies(fit[0], fit[1], fit[2], fmeta, opts.aggregate)
                sthr, swhy = _fit_thresholds(fps, fys, fms, findings, opts)
            else:
                sthr, swhy = dict.fromkeys(findings, 0.5), {}
            sgroups = smeta["patient_id"].astype(str).to_numpy()
            result["study"] = _score(ps, ys, ms, findings, sgroups, sthr, opts)
            result["study"]["aggregate"] = opts.aggregate
            result["study"]["thresholds"] = sthr
            result["study"]["unfitted"] = swhy
            tables.append(
                _prediction_table(
                    smeta.drop(columns=["images"]), ps, ys, ms, findings, "study", opts.part
                ).assign(images=smeta["images"].to_numpy())
            )
    result["primary"] = "study" if "study" in result else "image"
    out_dir = Path(out) if out else (run or artifact) / f"eval-{opts.part}"
    predictions = pd.concat(tables, ignore_index=True)
    _write_outputs(out_dir, predictions, result)
    return result, out_dir


# ---- scoring files ------------------------------------------------------------------------------
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
) -> tuple[dict[str, Any], Path | None]:
    """Score any model's predictions against labels, as :func:`evaluate_model` scores a run.

    Predictions: a CSV or parquet with a key column (``Path``/``path``, ``Study``, ...) and one
    probability column per finding (names as any dataset spells them). Labels: the same key and
    1 / 0 per finding; -1, blank and NaN are left out of the scores. When the labels are per
    study (a ``Study`` column, the CheXpert test layout) and the predictions per image, the
    images' probabilities are aggregated per study folder (``aggregate``: max or mean).

    Returns:
        (metrics dict, output folder or None).
    """
    from cxrkit.evaluate.metrics import evaluate

    if aggregate not in ("max", "mean"):
        raise CxrkitError(
            f"The 'aggregate' parameter must be one of {{max, mean}}. Got '{aggregate}' instead."
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
    result = {
        "cxrkit_version": __version__,
        "predictions": str(predictions),
        "labels": str(labels),
        "level": "study" if per_study else "image",
        "aggregate": aggregate if per_study else None,
        "bootstrap_groups": "patient" if groups is not None else "image",
        "primary": "image",
        "image": metrics,
    }
    out_dir = None
    if out is not None:
        out_dir = Path(out)
        table = pd.DataFrame({"key": keys.to_numpy()})
        table.insert(0, "level", result["level"])
        for j, f in enumerate(wanted):
            table[f] = probs[:, j].astype(np.float32)
        for j, f in enumerate(wanted):
            table[LABEL_PREFIX + f] = np.where(mask[:, j], y[:, j], np.nan)
        _write_outputs(out_dir, table, result)
    return result, out_dir
