"""The model artifact: one folder that is enough to run the model anywhere.

``model.safetensors`` and ``model.json`` (architecture, labels in output order, input mode, resolution,
normalisation, thresholds, temperature, config hash, versions, the weights' sha256).

One home for each job on an artifact:

- :func:`resolve_artifact`: a path (a model folder or a run folder holding ``model/``) → the run
  folder (or None) and the artifact folder. Every stage that takes "a model" calls it.
- :func:`build_pipeline`: an artifact's metadata → the :class:`~cxrkit.data.inputs.InputPipeline`
  that turns cached uint8 images into the network's input, exactly as in training.
- :func:`save_artifact` / :func:`read_artifact_meta` / :func:`load_artifact` /
  :func:`set_operating_points`: write, check and read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError, preview
from cxrkit.core.fileio import atomic_path, sha256_file, write_text_atomic
from cxrkit.data.imaging import FIT_MODES
from cxrkit.data.inputs import INPUT_MODES, InputPipeline
from cxrkit.model.networks import OUTPUTS, build_network, input_channels, outputs_per_label
from cxrkit.model.schema import validate_meta

#: Version of the artifact layout; a reader refuses a newer one.
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
#: the ONNX export, written inside the artifact folder by ``cxrkit export onnx``
ONNX_FILE = "model.onnx"
#: the folder inside a run folder that holds the run's artifact
RUN_MODEL_DIR = "model"
#: the file that marks a run folder
RUN_CONFIG_FILE = "config.yaml"
_REQUIRED_META = (
    "format_version",
    "cxrkit_version",
    "architecture",
    "labels",
    "input_mode",
    "image_size",
    "mean",
    "std",
    "thresholds",
    "config_hash",
    "weights_sha256",
)


def _timm_version() -> str:
    """The installed timm's version (read when a metadata lacks one, as a default)."""
    import timm

    return timm.__version__


@dataclass(frozen=True)
class ArtifactMeta:
    """What ``model.json`` holds: everything needed to run the model besides the weights.

    Attributes:
        architecture: timm name. labels: finding names in output order (L of them).
        input_mode: ``gray1``/``gray3``/``enhanced``. image_size: (H, W) network input.
        mean, std: per-channel normalisation. thresholds: finding → operating point or None.
        config_hash: hash of the training config, or None. extra: free-form JSON data.
        output: ``sigmoid`` (L logits) or ``multiclass`` (3 logits per finding); see
            :func:`probabilities`. fit: how images were brought to the square size (``pad``,
            ``crop``, ``stretch``). clip_limit: CLAHE clip limit of the ``enhanced`` mode.
        temperature: logits are divided by it before the sigmoid (temperature scaling fitted on
            validation data by ``cxrkit evaluate --calibrate``; 1 = none).
    """

    architecture: str
    labels: tuple[str, ...]
    input_mode: str
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    thresholds: dict[str, float | None]
    config_hash: str | None = None
    output: str = "sigmoid"
    fit: str = "pad"
    clip_limit: float = 2.0
    temperature: float = 1.0
    cxrkit_version: str = __version__
    format_version: int = FORMAT_VERSION
    weights_sha256: str = ""
    timm_version: str = field(default_factory=_timm_version)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def outputs_per_label(self) -> int:
        """Network outputs per finding: 1 (sigmoid) or 3 (multiclass)."""
        return outputs_per_label(self.output)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        d = asdict(self)
        for k in ("labels", "image_size", "mean", "std"):
            d[k] = list(d[k])
        return d


def _image_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def save_artifact(
    model: torch.nn.Module,
    folder: str | Path,
    *,
    arch: str,
    findings: Sequence[str],
    input_mode: str,
    image_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    thresholds: Mapping[str, float | None] | None = None,
    config_hash: str | None = None,
    extra: Mapping[str, Any] | None = None,
    output: str = "sigmoid",
    fit: str = "pad",
    clip_limit: float = 2.0,
) -> Path:
    """Write the model artifact: ``folder/model.safetensors`` then ``folder/model.json``.

    The old ``model.json`` is removed first and the new one written last, each file atomically, so an
    interrupted save leaves a folder :func:`load_artifact` refuses as incomplete, never a stale mix.

    Args:
        model: a network from :func:`create_model` with L = ``len(findings)`` outputs.
        folder: the artifact folder (created if needed).
        arch: the timm name it was built with.
        findings: label names in output order.
        input_mode, image_size, mean, std: the preprocessing the model expects; ``image_size`` is
            an int or (H, W).
        thresholds: finding → operating point; findings left out are stored as null.
        config_hash: hash of the training config.
        extra: further JSON-serialisable facts (epochs, metrics, ...).
        output: ``sigmoid`` or ``multiclass`` (3 outputs per finding).
        fit, clip_limit: the cache's fit and the ``enhanced`` mode's CLAHE clip limit.

    Returns:
        The folder.
    """
    findings = tuple(findings)
    input_channels(input_mode)
    k = outputs_per_label(output)
    n_out = getattr(model, "num_classes", None)
    if n_out is not None and n_out != k * len(findings):
        raise CxrkitError(
            f"the model has {n_out} outputs but {len(findings)} findings × {k} output(s) "
            f"({output}) were given: pass the findings in the model's output order."
        )
    thresholds = dict(thresholds or {})
    unknown = [k for k in thresholds if k not in findings]
    if unknown:
        raise CxrkitError(
            f"thresholds for unknown findings {preview(unknown)}: expected some of {preview(findings)}."
        )
    try:
        json.dumps(dict(extra or {}))
    except (TypeError, ValueError) as e:
        raise CxrkitError(f"extra must be JSON-serialisable ({e}).") from None
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / META_FILE).unlink(missing_ok=True)
    # clone: safetensors refuses tensors that share storage, and must not see views
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    meta = ArtifactMeta(
        architecture=arch,
        labels=findings,
        input_mode=input_mode,
        image_size=_image_size(image_size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        thresholds={
            f: (None if thresholds.get(f) is None else float(thresholds[f])) for f in findings
        },
        config_hash=config_hash,
        output=output,
        fit=fit,
        clip_limit=float(clip_limit),
        weights_sha256=sha256_file(folder / WEIGHTS_FILE),
        extra=dict(extra or {}),
    )
    # an artifact that would be refused when read is never written (model.json comes last)
    validate_meta(
        meta.to_dict(), f"artifact '{folder}'", input_modes=INPUT_MODES, fit_modes=FIT_MODES,
        outputs=OUTPUTS,
    )  # fmt: skip
    write_text_atomic(folder / META_FILE, json.dumps(meta.to_dict(), indent=2) + "\n")
    return folder


def set_operating_points(
    folder: str | Path,
    thresholds: Mapping[str, float | None],
    *,
    temperature: float | None = None,
    info: Mapping[str, Any] | None = None,
) -> ArtifactMeta:
    """Store thresholds fitted on validation data (and optionally a temperature) in an artifact.

    Only ``model.json`` is rewritten (atomically); the weights are untouched. ``info`` (method,
    target, the data they were fitted on) goes to ``extra["operating_point"]``.

    Returns:
        The updated metadata.
    """
    folder = Path(folder)
    meta = read_artifact_meta(folder)
    unknown = [k for k in thresholds if k not in meta.labels]
    if unknown:
        raise CxrkitError(
            f"thresholds for findings the model does not have: {preview(unknown)}; its labels are "
            f"{preview(meta.labels)}."
        )
    for k, v in thresholds.items():
        if v is not None and not (0.0 <= float(v) <= 1.0):
            raise CxrkitError(f"threshold for '{k}' must lie in [0, 1]; got {v}.")
    changes: dict[str, Any] = {}
    changes["thresholds"] = {
        f: (
            None
            if thresholds.get(f, meta.thresholds.get(f)) is None
            else float(thresholds.get(f, meta.thresholds.get(f)))
        )
        for f in meta.labels
    }
    if temperature is not None:
        if not temperature > 0:
            raise CxrkitError(f"temperature must be positive; got {temperature}.")
        changes["temperature"] = float(temperature)
    if info is not None:
        changes["extra"] = {**meta.extra, "operating_point": dict(info)}
    meta = dataclasses.replace(meta, **changes)
    write_text_atomic(folder / META_FILE, json.dumps(meta.to_dict(), indent=2) + "\n")
    return meta


class ResolvedArtifact(NamedTuple):
    """Where a model lives: its run folder (None for a bare artifact) and its artifact folder."""

    run: Path | None
    folder: Path


def resolve_artifact(path: str | Path, *, strict: bool = True) -> ResolvedArtifact:
    """A run folder (``config.yaml`` and/or ``model/``) or a model artifact folder → where it lives.

    Only locates: the artifact is checked when it is read (:func:`read_artifact_meta`). With
    ``strict=False`` a path that is neither is returned as the artifact folder (the reader then
    names what is missing) instead of being refused here.
    """
    path = Path(path)
    if (path / RUN_MODEL_DIR / META_FILE).is_file() or (path / RUN_CONFIG_FILE).is_file():
        return ResolvedArtifact(path, path / RUN_MODEL_DIR)
    if not strict or (path / META_FILE).is_file() or (path / WEIGHTS_FILE).is_file():
        parent = path.parent  # (an artifact without model.json is refused when it is read)
        return ResolvedArtifact(parent if (parent / RUN_CONFIG_FILE).is_file() else None, path)
    if not path.exists():
        raise CxrkitError(
            f"'{path}' does not exist: pass a run folder (runs/<name>) or a model artifact folder."
        )
    if path.is_file():
        raise CxrkitError(
            f"'{path}' is a file: pass a model artifact folder (holding {META_FILE} and "
            f"{WEIGHTS_FILE}) or a run folder."
        )
    raise CxrkitError(
        f"'{path}' is neither a run folder ({RUN_CONFIG_FILE}, {RUN_MODEL_DIR}/) nor a model "
        f"artifact ({META_FILE}): pass the folder that `cxrkit train` wrote."
    )


def artifact_folder(path: str | Path) -> Path:
    """The artifact folder of ``path``: ``path`` itself, or ``path/model`` for a run folder."""
    return resolve_artifact(path, strict=False).folder


def build_pipeline(meta: ArtifactMeta, *, backend: str | None = None) -> InputPipeline:
    """The input pipeline an artifact was trained with: (B, H, W) uint8 → (B, C, H, W) float.

    Input mode, CLAHE clip limit and normalisation come from ``meta``; no augmentation.
    """
    kwargs: dict[str, Any] = {} if backend is None else {"backend": backend}
    return InputPipeline(
        meta.input_mode, clip_limit=meta.clip_limit, mean=meta.mean, std=meta.std, **kwargs
    )


def read_artifact_meta(folder: str | Path) -> ArtifactMeta:
    """Read and check ``model.json`` (completeness, format version); does not touch the weights.

    A run folder (holding ``model/``) stands for its model."""
    folder = artifact_folder(folder)
    if folder.is_file():
        raise CxrkitError(
            f"'{folder}' is a file: pass a model artifact folder (holding {META_FILE} and "
            f"{WEIGHTS_FILE}) or a run folder."
        )
    if not folder.is_dir():
        raise CxrkitError(
            f"model artifact '{folder}' does not exist: pass a folder written by training "
            f"(holding {META_FILE} and {WEIGHTS_FILE})."
        )
    for name in (META_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise CxrkitError(
                f"incomplete artifact '{folder}': missing {name} (an interrupted save?). "
                "Save or copy the artifact again."
            )
    try:
        raw = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CxrkitError(
            f"incomplete artifact '{folder}': {META_FILE} is not JSON ({e})."
        ) from None
    return read_meta_dict(raw, f"artifact '{folder}'")


def read_meta_dict(raw: Any, where: str = "artifact") -> ArtifactMeta:
    """Check a ``model.json`` dict (format version, required fields) and build its metadata.

    ``where`` names the source in error messages.
    """
    folder = where
    if not isinstance(raw, dict):
        raise CxrkitError(f"incomplete {where}: {META_FILE} is not a JSON object.")
    version = raw.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise CxrkitError(
            f"model {folder} was made by cxrkit {raw.get('cxrkit_version', '?')} "
            f"(format {version}); this is cxrkit {__version__} (format {FORMAT_VERSION}): "
            "upgrade cxrkit to load it."
        )
    missing = [k for k in _REQUIRED_META if k not in raw]
    if missing:
        raise CxrkitError(
            f"incomplete {folder}: {META_FILE} lacks {preview(missing)}. Save the artifact again."
        )
    validate_meta(raw, where, input_modes=INPUT_MODES, fit_modes=FIT_MODES, outputs=OUTPUTS)
    known = {f for f in ArtifactMeta.__dataclass_fields__}
    try:
        meta = ArtifactMeta(
            **{k: v for k, v in raw.items() if k in known}
            | {
                "labels": tuple(raw["labels"]),
                "image_size": _image_size(raw["image_size"]),
                "mean": tuple(raw["mean"]),
                "std": tuple(raw["std"]),
            }
        )
    except (TypeError, ValueError) as e:
        raise CxrkitError(f"{folder}: {META_FILE} has a malformed field ({e}).") from None
    if meta.output not in OUTPUTS:
        raise CxrkitError(
            f"{folder}: {META_FILE} has output '{meta.output}'; expected one of "
            f"{', '.join(OUTPUTS)}. Save the artifact again."
        )
    return meta


def load_artifact(folder: str | Path) -> tuple[torch.nn.Module, ArtifactMeta]:
    """Load a model artifact written by :func:`save_artifact`.

    Checks the JSON is complete, the format is not newer than this cxrkit's, and the weights' sha256;
    builds the network with ``create_model(pretrained=False)`` (no download) and loads the weights.

    Returns:
        (model in eval mode, (B, C, H, W) → (B, L·k) logits, L = ``len(meta.labels)``, k =
        ``meta.outputs_per_label``; turn them into probabilities with :func:`probabilities`; its
        metadata).
    """
    folder = artifact_folder(folder)
    meta = read_artifact_meta(folder)
    weights = folder / WEIGHTS_FILE
    if sha256_file(weights) != meta.weights_sha256:
        raise CxrkitError(
            f"artifact '{folder}': {WEIGHTS_FILE} does not match the sha256 in {META_FILE} "
            "(modified or partly copied). Copy the artifact again."
        )
    model = build_network(meta)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0]
        raise CxrkitError(
            f"artifact '{folder}': the weights do not fit {meta.architecture} ({first})."
        ) from None
    return model.eval(), meta
