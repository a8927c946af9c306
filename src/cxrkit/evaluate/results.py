"""What an evaluation writes, typed: ``metrics.json`` read into and written from dataclasses.

The JSON layout is the one documented in docs/evaluation.md and docs/metrics.md, plus
``schema_version``. :func:`read_results` reads a file written by any cxrkit (a file without
``schema_version`` is version 1) and refuses, in one line, a file written by a newer schema.
Fields that a kind of evaluation does not have are left out of the file, not written as null
(``study`` without multi-view studies; ``run`` ... ``calibration`` when scoring prediction files).

Also here: the output file names and the ``label:`` prefix of ``predictions.parquet``, and
:func:`write_outputs`, the one writer of an evaluation folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cxrkit.core.errors import CxrkitError
from cxrkit.core.fileio import atomic_path, write_text_atomic
from cxrkit.evaluate.options import EvalOptions

#: The layout version of ``metrics.json`` this cxrkit writes (and the newest it reads).
SCHEMA_VERSION = 1
PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"
#: Prefix of the label columns in ``predictions.parquet``; a finding's own name holds its probability.
LABEL_PREFIX = "label:"


class _Record:
    """to_dict / from_dict for the dataclasses below.

    ``_nested`` maps a field to its record class (or ``(dict, cls)`` / ``(list, cls)`` for a
    mapping or list of records); fields in ``_optional`` are left out of the dict when None.
    """

    _nested: ClassVar[dict[str, Any]] = {}
    _optional: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (plain values, records converted)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None and f.name in self._optional:
                continue
            out[f.name] = _plain(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Build from a dict as :meth:`to_dict` makes it; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        kw = {}
        for k, v in data.items():
            if k not in names:
                continue
            kind = cls._nested.get(k)
            if v is None or kind is None:
                kw[k] = v
            elif isinstance(kind, tuple) and kind[0] is dict:
                kw[k] = {n: kind[1].from_dict(x) for n, x in v.items()}
            elif isinstance(kind, tuple) and kind[0] is list:
                kw[k] = [kind[1].from_dict(x) for x in v]
            elif kind is EvalOptions:
                kw[k] = EvalOptions(**v)
            else:
                kw[k] = kind.from_dict(v)
        return cls(**kw)

    def __getitem__(self, key: str) -> Any:
        """Read access by the JSON key (``results["image"]["findings"]``), as in cxrkit 0.1.

        Prefer attributes (``results.image.findings``).
        """
        return self.to_dict()[key]


def _plain(v: Any) -> Any:
    if isinstance(v, _Record):
        return v.to_dict()
    if isinstance(v, EvalOptions):
        return dataclasses.asdict(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v != v:
        return None
    if isinstance(v, Path):
        return str(v)
    return v


@dataclass
class Confusion(_Record):
    """Counts and ratios at the operating point; a ratio with a zero denominator is None."""

    tp: int
    fp: int
    fn: int
    tn: int
    sensitivity: float | None = None
    specificity: float | None = None
    ppv: float | None = None
    npv: float | None = None
    f1: float | None = None
    accuracy: float | None = None


@dataclass
class FindingMetrics(_Record):
    """One finding's metrics (docs/metrics.md); ``undefined`` says why ``auroc`` is None."""

    n: int
    positives: int
    negatives: int
    prevalence: float | None
    auroc: float | None
    auroc_ci: list[float] | None
    auroc_ci_delong: list[float] | None
    auprc: float | None
    auprc_ci: list[float] | None
    bootstrap_skipped: int | None
    threshold: float | None  # None: scores that are not probabilities, and no threshold given
    tp: int | None
    fp: int | None
    fn: int | None
    tn: int | None
    sensitivity: float | None
    specificity: float | None
    ppv: float | None
    npv: float | None
    f1: float | None
    accuracy: float | None
    undefined: str | None


@dataclass
class Averages(_Record):
    """Macro, micro and competition averages (the ``*_bootstrap_skipped`` only with a bootstrap)."""

    _optional: ClassVar[frozenset[str]] = frozenset(
        {"macro_bootstrap_skipped", "micro_bootstrap_skipped", "competition_bootstrap_skipped"}
    )

    macro_auroc: float | None
    macro_auroc_ci: list[float] | None
    macro_n: int
    micro_auroc: float | None
    micro_auroc_ci: list[float] | None
    competition_auroc: float | None
    competition_auroc_ci: list[float] | None
    competition_findings: list[str]
    macro_auprc: float | None
    macro_f1: float | None
    macro_sensitivity: float | None
    macro_specificity: float | None
    macro_bootstrap_skipped: int | None = None
    micro_bootstrap_skipped: int | None = None
    competition_bootstrap_skipped: int | None = None


@dataclass
class RocBand(_Record):
    """The pointwise bootstrap band of one ROC curve: TPR percentiles at fixed FPR values."""

    fpr: list[float]
    tpr_lo: list[float | None]
    tpr_hi: list[float | None]


@dataclass
class LevelMetrics(_Record):
    """Every metric at one level (images or studies), as :func:`cxrkit.evaluate.metrics.evaluate`
    computes it; study-level results add ``aggregate``, ``thresholds`` and ``unfitted``."""

    _nested: ClassVar[dict[str, Any]] = {
        "findings": (dict, FindingMetrics),
        "average": Averages,
        "confusion_total": Confusion,
        "roc_bands": (dict, RocBand),
    }
    _optional: ClassVar[frozenset[str]] = frozenset(
        {"aggregate", "thresholds", "unfitted", "roc_bands"}
    )

    n_images: int
    n_groups: int
    level: float
    n_bootstrap: int
    seed: int
    findings: dict[str, FindingMetrics]
    average: Averages
    confusion_total: Confusion
    aggregate: str | None = None
    thresholds: dict[str, float | None] | None = None
    unfitted: dict[str, str] | None = None
    #: finding → ROC band (written for the primary level, for the report)
    roc_bands: dict[str, RocBand] | None = None


@dataclass
class OperatingPointInfo(_Record):
    """How the image-level thresholds were chosen, and the thresholds (None: unfitted, 0.5 used)."""

    method: str
    target: float | None
    fitted_on: str
    level: str
    unfitted: dict[str, str]
    thresholds: dict[str, float | None]


@dataclass
class CalibrationBin(_Record):
    lo: float
    hi: float
    count: int
    mean_predicted: float | None
    fraction_positive: float | None


@dataclass
class Reliability(_Record):
    """Reliability bins and the expected calibration error of one set of probabilities."""

    _nested: ClassVar[dict[str, Any]] = {"bins": (list, CalibrationBin)}

    ece: float | None
    bins: list[CalibrationBin]


@dataclass
class CalibrationSet(_Record):
    _nested: ClassVar[dict[str, Any]] = {"pooled": Reliability, "findings": (dict, Reliability)}

    pooled: Reliability
    findings: dict[str, Reliability]


@dataclass
class Calibration(_Record):
    _nested: ClassVar[dict[str, Any]] = {
        "before_temperature": CalibrationSet,
        "after_temperature": CalibrationSet,
    }
    _optional: ClassVar[frozenset[str]] = frozenset({"after_temperature"})

    before_temperature: CalibrationSet
    after_temperature: CalibrationSet | None = None


@dataclass
class DataSummary(_Record):
    """The run's data as evaluation saw it, for the report: the label table under the run's
    policy and the split report (:func:`cxrkit.data.splits.split_report`'s dict); ``image_root``
    is the folder the index's image paths are relative to."""

    index: str
    image_root: str
    images: int
    patients: int
    kept: int
    label_table: list[dict[str, Any]]
    split_report: dict[str, Any]


_MODEL_KEYS = (
    "run",
    "artifact",
    "part",
    "options",
    "output",
    "temperature",
    "operating_point",
    "calibration",
)
_FILES_KEYS = (
    "predictions",
    "labels",
    "predictions_sha256",
    "labels_sha256",
    "level",
    "aggregate",
    "bootstrap_groups",
    "notes",
)


@dataclass
class EvalResults(_Record):
    """The content of ``metrics.json``.

    A model evaluation (:func:`cxrkit.evaluate.evaluate.evaluate_model`) fills ``run`` ...
    ``calibration`` (and ``study``, ``data`` where there are some); scoring files
    (:func:`cxrkit.evaluate.files.score_files`) fills ``predictions`` ... ``bootstrap_groups``.
    ``primary`` names the level shown first (``image`` or ``study``): :attr:`main` is it.
    """

    _nested: ClassVar[dict[str, Any]] = {
        "options": EvalOptions,
        "operating_point": OperatingPointInfo,
        "image": LevelMetrics,
        "study": LevelMetrics,
        "calibration": Calibration,
        "data": DataSummary,
    }

    image: LevelMetrics
    primary: str = "image"
    schema_version: int = SCHEMA_VERSION
    cxrkit_version: str = ""
    run: str | None = None
    artifact: str | None = None
    part: str | None = None
    options: EvalOptions | None = None
    output: str | None = None
    temperature: float | None = None
    operating_point: OperatingPointInfo | None = None
    calibration: Calibration | None = None
    study: LevelMetrics | None = None
    data: DataSummary | None = None
    predictions: str | None = None
    labels: str | None = None
    level: str | None = None
    aggregate: str | None = None
    bootstrap_groups: str | None = None
    #: the scored files' SHA-256 (file scoring), so a result names exactly what it scored
    predictions_sha256: str | None = None
    labels_sha256: str | None = None
    #: one line each on what was left out of the scores and why (file scoring)
    notes: list[str] | None = None
    #: finding → the model against human readers (file scoring with readers)
    readers: dict[str, Any] | None = None
    #: which of the two kinds this is (not written): "model" or "files"
    kind: str = field(default="model", compare=False)

    @property
    def main(self) -> LevelMetrics:
        """The primary level's metrics."""
        return self.study if self.primary == "study" and self.study is not None else self.image

    def to_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` content: the keys of this kind, ``study``/``data`` when present."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "cxrkit_version": self.cxrkit_version,
        }
        keys = _MODEL_KEYS if self.kind == "model" else _FILES_KEYS
        for k in keys:
            out[k] = _plain(getattr(self, k))
        out["image"] = self.image.to_dict()
        if self.study is not None:
            out["study"] = self.study.to_dict()
        out["primary"] = self.primary
        if self.data is not None:
            out["data"] = self.data.to_dict()
        if self.readers:
            out["readers"] = {f: _plain(dataclasses.asdict(c)) for f, c in self.readers.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResults:
        """Read a ``metrics.json`` dict; a newer ``schema_version`` is a one-line CxrkitError."""
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise CxrkitError(
                f"metrics.json has schema_version {version!r}, newer than this cxrkit reads "
                f"({SCHEMA_VERSION}): upgrade cxrkit, or evaluate again with this one."
            )
        readers = data.get("readers")
        res = super().from_dict({**data, "schema_version": version, "readers": None})
        res.kind = "files" if "predictions" in data and "run" not in data else "model"
        if readers:
            from cxrkit.evaluate.readers import comparison_from_dict

            res.readers = {f: comparison_from_dict(c) for f, c in readers.items()}
        return res


def read_results(path: str | Path) -> EvalResults:
    """Read ``metrics.json`` (a file, or the evaluation folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise CxrkitError(f"'{path}' does not exist: run `cxrkit evaluate` first.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CxrkitError(f"'{path}' is not a readable metrics.json ({e}).") from None
    return EvalResults.from_dict(data)


def write_outputs(out: Path, predictions: pd.DataFrame, results: EvalResults) -> None:
    """Write ``predictions.parquet`` and ``metrics.json`` into ``out`` (created), atomically."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / PREDICTIONS_FILE) as tmp:
        predictions.to_parquet(tmp, index=False)
    text = json.dumps(results.to_dict(), indent=2, allow_nan=False) + "\n"
    write_text_atomic(out / METRICS_FILE, text)


def check_agrees_with_artifact(
    results: EvalResults, folder: Path, artifact: Path | None = None
) -> None:
    """Refuse an evaluation whose saved operating points are no longer the artifact's.

    ``evaluate`` (without ``--no-save``) stores its thresholds and temperature in the artifact;
    if ``model.json`` now holds others (a later evaluation, or one killed between its two commits),
    this evaluation's confusion matrices and operating points describe a model that no longer
    decides that way.
    """
    options = results.options
    if results.artifact is None or options is None or not getattr(options, "save", False):
        return
    from cxrkit.model.artifact import META_FILE, read_artifact_meta

    artifact = Path(artifact if artifact is not None else results.artifact)
    if not (artifact / META_FILE).is_file():
        return  # the model is not where it was evaluated (a copied evaluation): nothing to compare
    meta = read_artifact_meta(artifact)
    ours = results.operating_point.thresholds if results.operating_point else {}
    theirs = dict(meta.thresholds)
    same = all(
        (ours.get(f) is None and theirs.get(f) is None)
        or (ours.get(f) is not None and theirs.get(f) is not None
            and abs(float(ours[f]) - float(theirs[f])) <= 1e-9)
        for f in set(ours) | set(theirs)
    )  # fmt: skip
    calibrated = bool(getattr(options, "calibrate", False))
    if calibrated and results.temperature is not None:
        same = same and abs(float(results.temperature) - float(meta.temperature)) <= 1e-9
    if not same:
        raise CxrkitError(
            f"'{folder}' disagrees with the model: its operating points are not the ones "
            f"{artifact}/model.json now holds (a later or interrupted `cxrkit evaluate`); "
            "run `cxrkit evaluate` on the run again."
        )


def find_evaluation(path: Path) -> tuple[Path | None, Path]:
    """(run folder or None, evaluation folder) for a run, an evaluation folder or a metrics file."""
    if not path.exists():
        raise CxrkitError(f"'{path}' does not exist: pass an evaluated run folder (runs/<name>).")
    if path.is_file() and path.name == METRICS_FILE:
        path = path.parent
    if (path / METRICS_FILE).is_file():
        parent = path.parent
        return (parent if (parent / "config.yaml").is_file() else None), path
    if (path / "config.yaml").is_file() or (path / "model" / "model.json").is_file():
        return path, path / "eval-test"
    raise CxrkitError(
        f"'{path}' is neither a run folder nor an evaluation folder ({METRICS_FILE}): pass "
        "runs/<name> or the folder `cxrkit evaluate` wrote."
    )
