"""Published chest X-ray weights → a cxrkit model artifact.

:func:`import_chexnet`, :func:`import_torchxrayvision` and :func:`from_torchxrayvision_model` turn
CheXNet reimplementations' and torchxrayvision's DenseNet-121 / ResNet-50 weights into a cxrkit
artifact (logits out, never a sigmoid in the model). Files are read with
``torch.load(weights_only=True)`` or safetensors: a pickled whole module is refused, never unpickled.
See ``docs/inference.md`` for the decisions (image size, fit, normalisation, thresholds).
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cxrkit.core.errors import CxrkitError, did_you_mean, preview
from cxrkit.core.fileio import sha256_file
from cxrkit.core.findings import canonical_name
from cxrkit.data.inputs import IMAGENET_MEAN, IMAGENET_STD
from cxrkit.model.artifact import META_FILE, save_artifact
from cxrkit.model.networks import create_model, read_state_dict

logger = logging.getLogger(__name__)


# ---- reading outside weights ---------------------------------------------------------------------


def _read_tensors(path: str | Path, convert_hint: str) -> dict[str, torch.Tensor]:
    """:func:`cxrkit.model.networks.read_state_dict`, with a precise line for a pickled whole model."""
    try:
        return read_state_dict(path)
    except CxrkitError:
        what = _pickled_global(Path(path))
        if what is None:
            raise
        raise CxrkitError(
            f"'{path}' is a pickled Python object ({what}), not a state dict; cxrkit never "
            f"unpickles objects (that can run code). Convert it once where its package is "
            f"installed: {convert_hint}, then import that file."
        ) from None


def _pickled_global(path: Path) -> str | None:
    """The class a refused pickle names (``torchxrayvision.models.DenseNet``), else None."""
    if path.suffix == ".safetensors" or not path.is_file():
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        return found.group(1) if found else "an object besides tensors"
    except Exception:  # noqa: BLE001 - not a pickle problem: the caller's error stands
        return None
    return None


def _load_exactly(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with one clear line naming what does not fit.

    Checkpoints from before PyTorch 0.4 have no ``num_batches_tracked``: the model's own (unused
    in eval mode) are kept.
    """
    own = model.state_dict()
    for k, v in own.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = v
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [
        f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or bad:
        parts = [
            f"{label} {len(keys)} ({preview(keys, 3)})"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("wrong shape", bad),
            )
            if keys
        ]
        arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", "the network")
        raise CxrkitError(f"{source} does not fit {arch}: {'; '.join(parts)}.")
    model.load_state_dict(state, strict=True)


def _source_facts(path: str | Path | None, **more: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    if path is not None:
        facts |= {"source_file": Path(path).name, "source_sha256": sha256_file(path)}
    return facts | more


def _refuse_existing(out: Path, overwrite: bool) -> None:
    if not overwrite and (out / META_FILE).exists():
        raise CxrkitError(
            f"'{out}' already holds a model artifact: choose another --out folder, or pass "
            "--force to replace it."
        )


# ---- CheXNet -------------------------------------------------------------------------------------

#: CheXNet's 14 outputs in order, as the reimplementations name them (NIH spelling).
CHEXNET_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
#: Network input side: CheXNet's test transform resizes to 256 then takes 224 crops (see below).
CHEXNET_IMAGE_SIZE = 256
_CHEXNET_CONVERT = (
    "`torch.save(model.state_dict(), 'chexnet-state.pt')` on the loaded model "
    "(or `{'state_dict': model.state_dict()}`)"
)


def import_chexnet(
    state_dict_path: str | Path,
    out_folder: str | Path,
    *,
    labels: Sequence[str] = CHEXNET_LABELS,
    image_size: int = CHEXNET_IMAGE_SIZE,
    fit: str = "crop",
    overwrite: bool = False,
) -> Path:
    """Make a cxrkit artifact from a CheXNet reimplementation's DenseNet-121 state dict.

    Accepts the layout arnoweng/CheXNet ships (``{'state_dict': ...}`` in a ``.pth.tar``, keys
    ``module.densenet121.features...`` with old ``norm.1``/``conv.2`` names, head
    ``classifier.0.weight/bias`` = the Linear of a Linear+Sigmoid) and plain torchvision layouts
    (``classifier.weight``), under any key prefix. The Linear is kept, the sigmoid dropped: the
    artifact outputs logits.

    Preprocessing: RGB copies of the grey image (``gray3``), ImageNet mean/std. CheXNet's test
    transform is Resize(256) then TenCrop(224) with the 10 outputs averaged; the single-pass
    equivalent used here runs the whole 256 × 256 image (``image_size=256``): the same pixel scale as
    every crop, the union of their fields of view, and global average pooling over it in place of
    averaging crops (the flipped crops are dropped). ``fit="crop"`` centre-crops non-square images,
    as a 256 resize of the short side followed by centre crops does; NIH images are square.

    Args:
        state_dict_path: ``.pth``/``.pth.tar``/``.pt`` (read with ``weights_only=True``) or
            ``.safetensors``.
        out_folder: the artifact folder to write.
        labels: the 14 output names in order (default: CheXNet's, NIH spelling); mapped to
            cxrkit's canonical names.
        image_size, fit: see above; ``224`` with ``fit="stretch"`` is the other defensible choice.
        overwrite: replace an artifact already in ``out_folder``.

    Returns:
        The artifact folder.
    """
    out = Path(out_folder)
    _refuse_existing(out, overwrite)
    findings = [canonical_name(n) for n in labels]
    state = _read_tensors(state_dict_path, _CHEXNET_CONVERT)
    anchor = [k for k in state if k.endswith("features.conv0.weight")]
    if len(anchor) != 1:
        raise CxrkitError(
            f"'{state_dict_path}' is not a DenseNet state dict (no features.conv0.weight among "
            f"{preview(list(state), 3)}): pass a CheXNet / torchvision DenseNet-121 checkpoint."
        )
    prefix = anchor[0][: -len("features.conv0.weight")]  # 'densenet121.' after 'module.' is gone
    foreign = [k for k in state if not k.startswith(prefix)]
    if foreign:
        raise CxrkitError(
            f"'{state_dict_path}' mixes a DenseNet under '{prefix}' with other keys "
            f"({preview(foreign, 3)}): pass the DenseNet-121 state dict alone."
        )
    state = {k[len(prefix) :]: v for k, v in state.items()}
    state = {re.sub(r"^classifier\.0\.", "classifier.", k): v for k, v in state.items()}
    head = state.get("classifier.weight")
    if head is None or head.ndim != 2 or head.shape[0] != len(findings):
        got = "no classifier" if head is None else f"a classifier of shape {tuple(head.shape)}"
        raise CxrkitError(
            f"'{state_dict_path}' has {got}; expected a Linear head with {len(findings)} outputs "
            f"(one per label: {preview(labels, 3)}). Pass labels= for other heads."
        )
    model = create_model("densenet121", num_classes=len(findings), input_mode="gray3")
    _load_exactly(model, state, f"'{state_dict_path}'")
    save_artifact(
        model,
        out,
        arch="densenet121",
        findings=findings,
        input_mode="gray3",
        image_size=image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        fit=fit,
        extra=_source_facts(
            state_dict_path,
            source="chexnet",
            source_labels=list(labels),
            note="imported CheXNet weights; sigmoid head dropped (logits); single pass at "
            f"{image_size} px in place of Resize(256)+TenCrop(224)",
        ),
    )
    return out


# ---- torchxrayvision -----------------------------------------------------------------------------

#: torchxrayvision's 18 output slots (``xrv.datasets.default_pathologies``), xrv spelling.
XRV_TARGETS: tuple[str, ...] = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)
_CHEX_LIKE = frozenset(
    {
        "Atelectasis",
        "Consolidation",
        "Pneumothorax",
        "Edema",
        "Effusion",
        "Pneumonia",
        "Cardiomegaly",
        "Lung Lesion",
        "Fracture",
        "Lung Opacity",
        "Enlarged Cardiomediastinum",
    }
)
#: Which of the 18 slots each published weight set was trained on (the others are "" in xrv).
XRV_WEIGHTS: dict[str, tuple[str, int, frozenset[str]]] = {
    "densenet121-res224-all": ("densenet121", 224, frozenset(XRV_TARGETS)),
    "densenet121-res224-nih": ("densenet121", 224, frozenset(XRV_TARGETS[:14])),
    "densenet121-res224-pc": ("densenet121", 224, frozenset((*XRV_TARGETS[:14], "Fracture"))),
    "densenet121-res224-chex": ("densenet121", 224, _CHEX_LIKE),
    "densenet121-res224-mimic_nb": ("densenet121", 224, _CHEX_LIKE),
    "densenet121-res224-mimic_ch": ("densenet121", 224, _CHEX_LIKE),
    "densenet121-res224-rsna": ("densenet121", 224, frozenset({"Pneumonia", "Lung Opacity"})),
    "resnet50-res512-all": ("resnet50", 512, frozenset(XRV_TARGETS)),
}
#: xrv scales 8-bit images to [-1024, 1024]: (2·v/255 − 1)·1024 = (v/255 − 0.5)/(1/2048).
XRV_MEAN: tuple[float, ...] = (0.5,)
XRV_STD: tuple[float, ...] = (1 / 2048,)
_XRV_CONVERT = (
    "`python -c \"import torch, torchxrayvision as xrv; m = xrv.models.get_model('NAME'); "
    "torch.save(m.state_dict(), 'xrv-state.pt')\"`"
)


def _xrv_name(name: str) -> str:
    short = {k.split("-")[-1]: k for k in XRV_WEIGHTS if k.startswith("densenet121-")}
    if name in short:  # xrv accepts 'all', 'nih', ... for the DenseNets too
        return short[name]
    if name not in XRV_WEIGHTS:
        raise CxrkitError(did_you_mean(name, XRV_WEIGHTS, what="torchxrayvision weights name"))
    return name


def import_torchxrayvision(
    state_dict_path: str | Path,
    out_folder: str | Path,
    *,
    name: str = "densenet121-res224-all",
    overwrite: bool = False,
) -> Path:
    """Make a cxrkit artifact from a torchxrayvision classifier's state dict.

    torchxrayvision publishes its DenseNet weights as whole pickled modules, which cxrkit does not
    unpickle: convert once with ``torch.save(model.state_dict(), PATH)`` where the package is
    installed, or call :func:`from_torchxrayvision_model` on the model object. Keys are xrv's
    (torchvision layout, 1 input channel; the ResNet's under ``model.``), plus the ``op_threshs``
    buffer when the weights carry operating points.

    Decisions: ``gray1`` at 224 px (ResNet-50: 512), mean 0.5 and std 1/2048 so that a grey level
    v maps to xrv's (2·v/255 − 1)·1024; ``fit="crop"`` (xrv's XRayCenterCrop then resize); the
    output slots the weights were not trained on (xrv's empty label names) are dropped from the
    head; ``op_threshs`` become the artifact's thresholds (xrv's ``op_norm`` maps sigmoid(logit) =
    op_thresh to 0.5, so "op_norm output ≥ 0.5" ⟺ "probability ≥ op_thresh"; cxrkit reports the
    raw sigmoid, not xrv's rescaled value); NaN thresholds become ``null``.

    Args:
        state_dict_path: ``.pt``/``.pth`` (``weights_only=True``) or ``.safetensors``.
        out_folder: the artifact folder to write.
        name: the xrv weights name (``densenet121-res224-all``, ``-nih``, ``-pc``, ``-chex``,
            ``-rsna``, ``-mimic_nb``, ``-mimic_ch``, ``resnet50-res512-all``): tells which outputs
            were trained.
        overwrite: replace an artifact already in ``out_folder``.

    Returns:
        The artifact folder.
    """
    out = Path(out_folder)
    _refuse_existing(out, overwrite)
    name = _xrv_name(name)
    state = _read_tensors(state_dict_path, _XRV_CONVERT.replace("NAME", name))
    trained = XRV_WEIGHTS[name][2]
    labels = [t if t in trained else "" for t in XRV_TARGETS]
    return _xrv_artifact(
        state, labels, name, out, source=f"'{state_dict_path}'", source_path=state_dict_path
    )


def from_torchxrayvision_model(
    model: torch.nn.Module,
    out_folder: str | Path,
    *,
    name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Make a cxrkit artifact from a torchxrayvision ``DenseNet`` / ``ResNet`` object.

    Labels come from ``model.targets``, the operating points from its ``op_threshs`` buffer, the
    weights name from ``model.weights`` (or ``name``). Decisions as in
    :func:`import_torchxrayvision`.
    """
    out = Path(out_folder)
    _refuse_existing(out, overwrite)
    kind = type(model).__name__
    if kind not in ("DenseNet", "ResNet") or not hasattr(
        model, "classifier" if kind == "DenseNet" else "model"
    ):
        raise CxrkitError(
            f"a {kind} is not a torchxrayvision DenseNet or ResNet classifier: cxrkit imports "
            "those two (e.g. xrv.models.DenseNet(weights='densenet121-res224-all'))."
        )
    name = _xrv_name(name or getattr(model, "weights", None) or "")
    labels = list(getattr(model, "targets", None) or getattr(model, "pathologies", None) or [])
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    op = getattr(model, "op_threshs", None)
    if isinstance(op, torch.Tensor):
        state["op_threshs"] = op.detach().cpu()
    return _xrv_artifact(state, labels, name, out, source=f"the {kind} object", source_path=None)


def _xrv_artifact(
    state: dict[str, torch.Tensor],
    labels: Sequence[str],
    name: str,
    out: Path,
    *,
    source: str,
    source_path: str | Path | None,
) -> Path:
    arch, size, _ = XRV_WEIGHTS[name]
    state = dict(state)
    op = state.pop("op_threshs", None)
    if state and all(k.startswith("model.") for k in state):  # xrv's ResNet wraps torchvision's
        state = {k[len("model.") :]: v for k, v in state.items()}
    found = (
        "densenet121"
        if "features.conv0.weight" in state
        else "resnet50"
        if "conv1.weight" in state and "fc.weight" in state
        else None
    )
    if found is None:
        raise CxrkitError(
            f"{source} is not a torchxrayvision DenseNet or ResNet state dict (keys "
            f"{preview(list(state), 3)}): save xrv_model.state_dict() and import that."
        )
    if found != arch:
        raise CxrkitError(
            f"{source} holds a {found} but --name {name} is a {arch}: pass the name of the "
            f"weights it was saved from (e.g. {next(k for k, v in XRV_WEIGHTS.items() if v[0] == found)})."
        )
    head = "classifier" if arch == "densenet121" else "fc"
    weight, bias = state.get(f"{head}.weight"), state.get(f"{head}.bias")
    if weight is None or bias is None or weight.shape[0] != len(labels):
        rows = None if weight is None else weight.shape[0]
        raise CxrkitError(
            f"{source}: the head {head} has {rows} outputs, expected {len(labels)} "
            f"(xrv's output slots for {name}): check --name."
        )
    keep = [i for i, label in enumerate(labels) if label]
    if not keep:
        raise CxrkitError(f"{source}: no output has a label name; nothing to import.")
    state[f"{head}.weight"], state[f"{head}.bias"] = weight[keep], bias[keep]
    findings = [canonical_name(labels[i]) for i in keep]
    thresholds: dict[str, float | None] = {}
    if op is not None:
        if op.numel() != len(labels):
            raise CxrkitError(
                f"{source}: op_threshs has {op.numel()} values for {len(labels)} outputs."
            )
        for f, i in zip(findings, keep, strict=True):
            t = float(op[i])
            thresholds[f] = None if math.isnan(t) else t
    else:
        logger.info("%s has no op_threshs: the artifact's thresholds are left empty", source)
    model = create_model(arch, num_classes=len(keep), input_mode="gray1")
    _load_exactly(model, state, source)
    save_artifact(
        model,
        out,
        arch=arch,
        findings=findings,
        input_mode="gray1",
        image_size=size,
        mean=XRV_MEAN,
        std=XRV_STD,
        thresholds=thresholds,
        fit="crop",
        extra=_source_facts(
            source_path,
            source="torchxrayvision",
            source_name=name,
            source_labels=[labels[i] for i in keep],
            dropped_outputs=[i for i in range(len(labels)) if i not in keep],
            note="thresholds are xrv's op_threshs on sigmoid(logit); probabilities are the raw "
            "sigmoid, not xrv's op_norm rescaling",
        ),
    )
    return out
