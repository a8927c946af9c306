"""Evaluation of a trained model: predictions → metrics. The one way a trained model is scored.

``evaluate_model(RUN)`` predicts the validation and test parts of a run's data through the cache
(the exact preprocessing of training), fits operating points (and optionally a temperature) on the
validation part, stores them in the model artifact, and scores the test part per image and per
study (views aggregated by max or mean, since CheXpert is scored per study). It writes
``predictions.parquet`` and ``metrics.json`` (:class:`cxrkit.evaluate.results.EvalResults`) into
``RUN/eval-<part>/``. Scoring prediction files is :func:`cxrkit.evaluate.files.score_files`.

The numbers come from :mod:`cxrkit.evaluate.metrics`; this module only gathers data and writes files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError, did_you_mean, preview
from cxrkit.evaluate.files import score_files
from cxrkit.evaluate.metrics import THRESHOLD_METHODS as OPERATING_POINTS  # the 0.1 name
from cxrkit.evaluate.metrics import OperatingPoints
from cxrkit.evaluate.options import AGGREGATE_CHOICES as AGGREGATIONS  # the 0.1 name
from cxrkit.evaluate.options import EvalOptions
from cxrkit.evaluate.results import (
    LABEL_PREFIX,
    METRICS_FILE,
    PREDICTIONS_FILE,
    Calibration,
    CalibrationSet,
    DataSummary,
    EvalResults,
    LevelMetrics,
    OperatingPointInfo,
    RocBand,
    write_outputs,
)
from cxrkit.model.artifact import resolve_artifact

log = logging.getLogger(__name__)

#: Bootstrap resamples of the ROC bands written for the report (fewer above 50,000 cases).
_BAND_RESAMPLES = (100, 30)


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
) -> LevelMetrics:
    from cxrkit.evaluate.metrics import evaluate

    metrics = evaluate(
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
    return LevelMetrics.from_dict(metrics)


def _calibration(
    probs: np.ndarray, y: np.ndarray, mask: np.ndarray, findings: list[str]
) -> CalibrationSet:
    from cxrkit.evaluate.metrics import calibration

    pooled = calibration((y[mask] >= 0.5).astype(int), probs[mask])
    per = {}
    for j, f in enumerate(findings):
        m = mask[:, j]
        if m.any():
            per[f] = calibration((y[m, j] >= 0.5).astype(int), probs[m, j])
    return CalibrationSet.from_dict({"pooled": pooled, "findings": per})


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


def _roc_bands(
    table: pd.DataFrame, metrics: LevelMetrics, findings: list[str], opts: EvalOptions
) -> dict[str, RocBand]:
    """The ROC band of each defined finding, from the written prediction table's values."""
    from cxrkit.evaluate.metrics import roc_band

    n = _BAND_RESAMPLES[0] if len(table) <= 50_000 else _BAND_RESAMPLES[1]
    out = {}
    for f in findings:
        lab = table[LABEL_PREFIX + f].to_numpy(float)
        m = ~np.isnan(lab)
        y, s = lab[m].astype(int), table[f].to_numpy(float)[m]
        if metrics.findings[f].auroc is None or len(y) == 0 or y.min() == y.max():
            continue
        groups = table["patient_id"].astype(str).to_numpy()[m] if "patient_id" in table else None
        grid, lo, hi = roc_band(y, s, groups, n, opts.seed, float(metrics.level))
        out[f] = RocBand(grid.tolist(), lo.tolist(), hi.tolist())
    return out


def _data_summary(cfg: Any, dm: Any) -> DataSummary:
    """The label table under the run's policy and the split report, for the report."""
    from cxrkit.data.index import read_index
    from cxrkit.data.labels import label_table
    from cxrkit.data.splits import read_splits, split_report

    frame, targets = dm.index_frame, dm.targets
    lt = label_table(frame, targets)
    splits = read_splits(cfg.data.splits, frame)
    rep = split_report(frame, targets, splits.frame["part"].to_numpy())
    return DataSummary(
        index=str(cfg.data.index),
        image_root=str(read_index(cfg.data.index).root),
        images=int(len(frame)),
        patients=int(frame["patient_id"].nunique()),
        kept=int(len(targets.rows)),
        label_table=[
            {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in lt.to_dict(orient="records")
        ],
        split_report=rep,
    )


def evaluate_model(
    path: str | Path,
    opts: EvalOptions | None = None,
    *,
    config: str | Path | None = None,
    out: str | Path | None = None,
    progress: Any = None,
    truth: pd.DataFrame | None = None,
    write: bool = True,
) -> tuple[EvalResults, Path]:
    """Evaluate a run's model artifact on one part of its data.

    Args:
        path: a run folder (``config.yaml`` + ``model/``) or an artifact folder (then ``config``
            names the training config whose ``data`` section says where the data is).
        opts: see :class:`EvalOptions`.
        config: a config file, overriding the run's own.
        out: output folder (default ``<run>/eval-<part>``).
        progress: an optional callable ``progress(message)``.
        truth: score the part against this table instead of the run's labels: one row per image
            ``path`` (the index), one 0/1 column per finding, every entry labelled (the synthetic
            datasets' ``synthetic_truth.csv``).
        write: write ``predictions.parquet`` and ``metrics.json`` (with the data summary and the
            ROC bands the report draws); False only returns the results.

    Returns:
        (the results, the output folder).
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
    if truth is not None:
        test = (test[0], *_truth_labels(truth, dm.index_frame, test[3], findings), test[3])
    # "fixed" thresholds need no fitting data: the fitting part is predicted only when used
    fit_needed = opts.calibrate or opts.operating_point != "fixed"
    has_fit = len(dm.datasets[opts.fit_part]) > 0
    fit = predict(opts.fit_part) if has_fit and fit_needed else None
    if not has_fit:
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

    points = OperatingPoints(opts.operating_point, opts.target)
    if has_fit:  # fit is None for "fixed", which needs no data
        points.fit(*(fit[:3] if fit is not None else (None,) * 3), findings, part=opts.fit_part)
        thresholds, why = points.thresholds_, points.unfitted_
    else:
        thresholds = dict.fromkeys(findings, 0.5)
        why = dict.fromkeys(findings, f"the '{opts.fit_part}' part is empty: 0.5 used")
    op_info = OperatingPointInfo(
        method=opts.operating_point,
        target=opts.target,
        fitted_on=opts.fit_part,
        level="image",
        unfitted=why,
        thresholds=thresholds,
    )

    index_frame = dm.index_frame
    tmeta = _frame_for(index_frame, test[3])
    groups = tmeta["patient_id"].astype(str).to_numpy() if "patient_id" in tmeta else None
    if progress:
        progress(f"scoring with {opts.n_boot} bootstrap resamples over patients")
    image_metrics = _score(test[0], test[1], test[2], findings, groups, thresholds, opts)
    tables = [_prediction_table(tmeta, test[0], test[1], test[2], findings, "image", opts.part)]
    calibration = Calibration(_calibration(raw_test, test[1] >= 0.5, test[2], findings))
    if temperature != 1.0:
        calibration.after_temperature = _calibration(test[0], test[1] >= 0.5, test[2], findings)
    result = EvalResults(
        image=image_metrics,
        cxrkit_version=__version__,
        run=str(run) if run else None,
        artifact=str(artifact),
        part=opts.part,
        options=opts,
        output=meta.output,
        temperature=temperature,
        operating_point=op_info,
        calibration=calibration,
    )

    if opts.aggregate != "none" and "study_id" in tmeta:
        ps, ys, ms, smeta = _studies(test[0], test[1], test[2], tmeta, opts.aggregate)
        if len(ps) < len(test[0]):  # some study has several views
            if fit is not None:
                fmeta = _frame_for(index_frame, fit[3])
                fps, fys, fms, _ = _studies(fit[0], fit[1], fit[2], fmeta, opts.aggregate)
                spoints = OperatingPoints(opts.operating_point, opts.target)
                spoints.fit(fps, fys, fms, findings, part=opts.fit_part)
                sthr, swhy = spoints.thresholds_, spoints.unfitted_
            elif has_fit:  # "fixed": no fitting data needed
                sthr, swhy = points.thresholds_, {}
            else:
                sthr, swhy = dict.fromkeys(findings, 0.5), {}
            sgroups = smeta["patient_id"].astype(str).to_numpy()
            result.study = _score(ps, ys, ms, findings, sgroups, sthr, opts)
            result.study.aggregate = opts.aggregate
            result.study.thresholds = sthr
            result.study.unfitted = swhy
            tables.append(
                _prediction_table(
                    smeta.drop(columns=["images"]), ps, ys, ms, findings, "study", opts.part
                ).assign(images=smeta["images"].to_numpy())
            )
    result.primary = "study" if result.study is not None else "image"
    out_dir = Path(out) if out else (run or artifact) / f"eval-{opts.part}"
    if write:
        predictions = pd.concat(tables, ignore_index=True)
        main_table = tables[-1] if result.primary == "study" else tables[0]
        result.main.roc_bands = _roc_bands(main_table, result.main, findings, opts)
        result.data = _data_summary(cfg, dm)

    def save_points() -> None:
        set_operating_points(
            artifact,
            thresholds,
            temperature=temperature if opts.calibrate else None,
            info={k: v for k, v in op_info.to_dict().items() if k != "thresholds"},
        )

    if write:
        _commit(out_dir, predictions, result, save_points if opts.save else None)
    elif opts.save:
        save_points()
    return result, out_dir


def _commit(out_dir: Path, predictions: pd.DataFrame, result: EvalResults, save_points) -> None:
    """Commit an evaluation so that a kill at any point leaves nothing that disagrees unnoticed.

    1. every output is written into a fresh sibling folder; 2. the operating points (and
    temperature) go into ``model.json``, atomically; 3. the folder is swapped in by renames. A kill
    before 2 leaves the old evaluation and the old ``model.json`` (consistent); between 2 and 3,
    the old evaluation beside the new operating points, which ``report`` refuses in one line
    (:func:`cxrkit.evaluate.results.check_agrees_with_artifact`) until ``evaluate`` runs again.
    """
    import shutil

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.new"
    retired = out_dir.parent / f".{out_dir.name}.old"
    for leftover in (staging, retired):  # from an interrupted run
        shutil.rmtree(leftover, ignore_errors=True)
    write_outputs(staging, predictions, result)
    if save_points is not None:
        save_points()
    if out_dir.exists():
        out_dir.rename(retired)
    staging.rename(out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def _truth_labels(
    truth: pd.DataFrame, index_frame: pd.DataFrame, rows: np.ndarray, findings: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(y, mask) of the predicted rows from a truth table indexed by path."""
    paths = index_frame["path"].to_numpy()[rows]
    missing = [f for f in findings if f not in truth.columns]
    if missing:
        raise CxrkitError(f"the truth table has no column for {preview(missing)}.")
    absent = ~pd.Index(paths).isin(truth.index)
    if absent.any():
        raise CxrkitError(
            f"{int(absent.sum())} images have no row in the truth table (e.g. "
            f"'{paths[absent][0]}'): it must hold every image of the part, indexed by path."
        )
    y = truth.loc[paths, findings].to_numpy(np.float32)
    return y, np.ones_like(y, bool)


__all__ = [
    "AGGREGATIONS",
    "LABEL_PREFIX",
    "METRICS_FILE",
    "OPERATING_POINTS",
    "PREDICTIONS_FILE",
    "EvalOptions",
    "evaluate_model",
    "score_files",
]
