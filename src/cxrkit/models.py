"""Networks and the model artifact.

:func:`create_model` builds any timm classifier for an input mode (``gray1`` → 1 input channel,
``gray3``/``enhanced`` → 3) and fills it from timm's pretrained weights or a local state dict (timm or
torchvision layout). The network returns logits (B, L); the sigmoid is never inside ``forward``.

:func:`save_artifact` / :func:`load_artifact` write and read the model artifact: one folder holding
``model.safetensors`` and ``model.json`` (architecture, labels in output order, input mode, resolution,
normalisation, thresholds, config hash, versions, the weights' sha256). It is enough to run the model
with no other file.
"""

from __future__ import annotations

import difflib
import json
import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from timm.models import adapt_input_conv

from cxrkit import __version__
from cxrkit.errors import CxrkitError, preview
from cxrkit.fileio import atomic_path, sha256_file, write_text_atomic
from cxrkit.inputs import INPUT_MODES

logger = logging.getLogger(__name__)

#: Architectures the project trains and documents; any other timm name works too.
RECOMMENDED_ARCHS = ("densenet121", "efficientnet_b4", "resnet50", "convnext_tiny")

#: Version of the artifact layout; a reader refuses a newer one.
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
#: What the network's outputs mean: ``sigmoid`` = one logit per finding; ``multiclass`` = three
#: logits per finding (negative, positive, uncertain; finding-major), the ``multiclass`` policy's head.
OUTPUTS = ("sigmoid", "multiclass")
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

# Old DenseNet checkpoints (torchvision's own URLs among them) name layers 'norm.1', 'conv.2', ...
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


def input_channels(input_mode: str) -> int:
    """Number of network input channels for an input mode (``gray1`` → 1, else 3)."""
    if input_mode not in INPUT_MODES:
        raise CxrkitError(
            f"The 'input_mode' parameter must be one of {{{', '.join(INPUT_MODES)}}}. "
            f"Got '{input_mode}' instead."
        )
    return 1 if input_mode == "gray1" else 3


def _check_arch(arch: str) -> None:
    base = arch.split(".", 1)[0]  # timm accepts 'name.pretrained_tag'
    names = timm.list_models()  # ~1,400 names, a few ms
    if base in names:
        return
    close = difflib.get_close_matches(base.lower(), names, n=1, cutoff=0.6)
    hint = f" did you mean '{close[0]}'?" if close else ""
    raise CxrkitError(
        f"unknown architecture '{arch}':{hint} Recommended: {', '.join(RECOMMENDED_ARCHS)}; "
        f"any of timm's {len(names)} models works (see timm.list_models())."
    )


def create_model(
    arch: str,
    *,
    pretrained: bool | str = False,
    num_classes: int,
    input_mode: str = "enhanced",
    weights: str | Path | None = None,
    drop_rate: float = 0.0,
) -> torch.nn.Module:
    """Build a timm classifier for chest X-rays.

    Args:
        arch: a timm architecture name (``densenet121``, ``efficientnet_b4``, ``resnet50``,
            ``convnext_tiny``, ...), optionally with a pretrained tag (``densenet121.tv_in1k``).
        pretrained: ``True`` for timm's default ImageNet weights (downloaded or from the cache), a
            string for a specific timm pretrained tag (``"tv_in1k"``), ``False`` for a random start.
        num_classes: number of outputs L (findings).
        input_mode: ``gray1`` (1 input channel), ``gray3`` or ``enhanced`` (3 channels). With
            pretrained or local weights a 1-channel model gets the first convolution's RGB filters
            summed over the input channels.
        weights: a local state dict (``.pth``/``.pt`` or ``.safetensors``) in timm or torchvision
            layout; the classifier is reinitialised when its shape differs from ``num_classes``.
        drop_rate: dropout before the classifier.

    Returns:
        The model in train mode: (B, C, H, W) float → (B, L) logits (no sigmoid).

    Raises:
        CxrkitError: unknown architecture or input mode, pretrained weights that cannot be
            downloaded, or a weights file that does not fit the architecture.
    """
    in_chans = input_channels(input_mode)
    _check_arch(arch)
    if num_classes < 1:
        raise CxrkitError(f"num_classes must be at least 1. Got {num_classes}.")
    if pretrained and weights is not None:
        raise CxrkitError(
            "both pretrained and weights are set: pass --weights PATH or pretrained, not both."
        )
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    if drop_rate:
        kwargs["drop_rate"] = drop_rate
    if pretrained:
        name = f"{arch.split('.', 1)[0]}.{pretrained}" if isinstance(pretrained, str) else arch
        return _create_pretrained(name, kwargs)
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def _create_pretrained(name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    fix = (
        "pass --weights PATH with a local timm or torchvision state dict, "
        "or set pretrained: false to train from scratch"
    )
    try:
        # timm adapts the first convolution (in_chans) and drops the ImageNet classifier itself.
        return timm.create_model(name, pretrained=True, **kwargs)
    except RuntimeError as e:
        if "No pretrained weights" in str(e) or "Invalid pretrained" in str(e):
            raise CxrkitError(f"timm has no pretrained weights for {name}: {fix}.") from None
        raise
    except (OSError, ValueError) as e:
        # OSError covers requests/urllib/huggingface_hub failures (offline, DNS, HTTP errors,
        # LocalEntryNotFoundError with HF_HUB_OFFLINE=1); ValueError an unknown pretrained tag.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CxrkitError(
            f"pretrained ImageNet weights for {name} could not be downloaded ({reason}): {fix}."
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file, never unpickling objects.

    Unwraps ``{"state_dict": ...}`` / ``{"model": ...}`` checkpoints, strips ``module.`` prefixes
    (DataParallel) and a ``model.`` prefix shared by every key (Lightning), and renames old
    DenseNet keys (``norm.1`` → ``norm1``) as torchvision's own loader does.
    """
    path = Path(path)
    if not path.is_file():
        raise CxrkitError(f"weights file '{path}' does not exist. Pass the path of a state dict.")
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0]
        raise CxrkitError(
            f"'{path}' holds Python objects besides tensors ({first}); cxrkit only loads plain "
            "state dicts: save model.state_dict() instead."
        ) from None
    except (RuntimeError, OSError, SafetensorError, EOFError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CxrkitError(f"cannot read weights file '{path}': {first}.") from None
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CxrkitError(
            f"'{path}' is not a state dict (a mapping of names to tensors): "
            "save model.state_dict() instead."
        )
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        while k.startswith("module."):
            k = k[len("module.") :]
        out[k] = v
    if out and all(k.startswith("model.") for k in out):
        out = {k[len("model.") :]: v for k, v in out.items()}
    renamed = {}
    for k, v in out.items():
        m = _OLD_DENSENET_KEY.match(k)
        renamed[m.group(1) + m.group(2) if m else k] = v
    return renamed


def _module_names(cfg_value: str | Sequence[str] | None) -> list[str]:
    if not cfg_value:
        return []
    return [cfg_value] if isinstance(cfg_value, str) else list(cfg_value)


def load_weights(model: torch.nn.Module, weights: str | Path) -> None:
    """Load a local timm- or torchvision-layout state dict into a timm ``model`` in place.

    The first convolution is adapted to the model's input channels (RGB filters summed for one
    channel); a classifier whose shape differs from the model's is left at its fresh initialisation.
    Any other missing, unexpected or mis-shaped key is an error.
    """
    state = read_state_dict(weights)
    own = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    heads = tuple(f"{n}." for n in _module_names(cfg.get("classifier")))
    for conv in _module_names(cfg.get("first_conv")):
        key = f"{conv}.weight"
        if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
            if state[key].shape[1] != 3:
                raise CxrkitError(
                    f"'{weights}': the first convolution {key} takes {state[key].shape[1]} "
                    f"channels; cxrkit adapts only 3-channel (RGB) weights to "
                    f"{own[key].shape[1]} channels."
                )
            state[key] = adapt_input_conv(own[key].shape[1], state[key])
    head_skipped = [
        k for k in state if k.startswith(heads) and k in own and state[k].shape != own[k].shape
    ]
    for k in head_skipped:
        del state[k]
    if head_skipped:
        logger.info("classifier %s reinitialised (shape differs from the weights file)", heads)
    missing = [
        k
        for k in own
        if k not in state and not k.startswith(heads) and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in own]
    bad_shape = [
        f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or bad_shape:
        arch = cfg.get("architecture", type(model).__name__)
        parts = [
            f"{label} {len(keys)} ({preview(keys, 3)})"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", bad_shape),
            )
            if keys
        ]
        raise CxrkitError(
            f"weights '{weights}' do not fit {arch}: {'; '.join(parts)}. "
            "Pass a timm or torchvision state dict of the same architecture."
        )
    missing_head = [k for k in own if k.startswith(heads) and k not in state]
    if missing_head and not head_skipped:
        logger.info("weights file has no classifier: %s initialised fresh", heads)
    model.load_state_dict(state, strict=False)


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
    timm_version: str = timm.__version__
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


def outputs_per_label(output: str) -> int:
    """1 for a ``sigmoid`` head, 3 for a ``multiclass`` one; any other name is an error."""
    if output not in OUTPUTS:
        raise CxrkitError(
            f"model output must be one of {', '.join(OUTPUTS)}. Got '{output}' instead."
        )
    return 3 if output == "multiclass" else 1


def probabilities(
    logits: torch.Tensor, output: str = "sigmoid", temperature: float = 1.0
) -> torch.Tensor:
    """(B, L·k) logits → (B, L) probabilities that each finding is present.

    ``sigmoid``: the sigmoid of each logit. ``multiclass``: the softmax over the negative and
    positive logits with the uncertain class left out, as Irvin et al. (2019) score U-MultiClass
    models: p = sigmoid(l_pos − l_neg). The score is divided by ``temperature`` first (an
    artifact's ``meta.temperature``; pass it wherever an artifact's model is run).
    """
    logits = logits.float()
    if outputs_per_label(output) == 3:
        z = logits.reshape(logits.shape[0], -1, 3)
        return torch.sigmoid((z[..., 1] - z[..., 0]) / temperature)
    return torch.sigmoid(logits / temperature)


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
    import dataclasses

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


def artifact_folder(path: str | Path) -> Path:
    """The artifact folder of ``path``: ``path`` itself, or ``path/model`` for a run folder."""
    path = Path(path)
    if not (path / META_FILE).is_file() and (path / "model" / META_FILE).is_file():
        return path / "model"
    return path


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
    if meta.architecture == "cxrkit-ensemble":
        from cxrkit.ensemble import build_from_meta

        model = build_from_meta(meta)
    else:
        model = create_model(
            meta.architecture,
            pretrained=False,
            num_classes=len(meta.labels) * meta.outputs_per_label,
            input_mode=meta.input_mode,
        )
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0]
        raise CxrkitError(
            f"artifact '{folder}': the weights do not fit {meta.architecture} ({first})."
        ) from None
    return model.eval(), meta
