"""Ensembles: a model artifact made of several artifacts, usable wherever one artifact is.

``make_ensemble([A, B, ...], OUT, weights=..., tta="hflip")`` writes an ordinary artifact folder
whose ``model.json`` says ``architecture: cxrkit-ensemble`` and lists its members' metadata, and
whose ``model.safetensors`` holds all members' weights (``models.<i>.…``). :func:`load_artifact`
returns an :class:`EnsembleModel`, so ``predict``, ``evaluate``, ``explain``, ``serve`` and
``export onnx`` take an ensemble as they take one model.

How it runs: the ensemble's own input is the cached uint8 image scaled to [0, 1] (input mode
``gray1``, mean 0, std 1); each member applies its own input mode and normalisation to it (the
batched torch pipeline, which matches OpenCV's), runs, and turns its logits into probabilities its
own way (sigmoid or multiclass head, its temperature); the ensemble's probability is the weighted
mean over members (and over the test-time flips), returned as a logit so that the usual sigmoid
gives it back. Members must predict the same findings (any order: they are aligned by name) at the
same image size and fit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError, preview
from cxrkit.core.fileio import atomic_path, sha256_file, write_text_atomic
from cxrkit.model.artifact import (
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    ArtifactMeta,
    build_pipeline,
    load_artifact,
    read_meta_dict,
    resolve_artifact,
)
from cxrkit.model.networks import build_network, probabilities, register_builder

ENSEMBLE_ARCH = "cxrkit-ensemble"
TTA_MODES = ("none", "hflip")
_EPS = 1e-6


class EnsembleModel(nn.Module):
    """Weighted mean of member probabilities: (B, 1, S, S) in [0, 1] → (B, L) logits.

    Args:
        members: the member networks.
        metas: their :class:`~cxrkit.model.artifact.ArtifactMeta`.
        labels: the ensemble's findings, in output order.
        weights: one non-negative weight per member (normalised here).
        tta: ``none`` or ``hflip`` (each member also sees the mirrored image; the two
            probabilities are averaged).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        metas: Sequence[Any],
        labels: Sequence[str],
        weights: Sequence[float] | None = None,
        tta: str = "none",
    ) -> None:
        super().__init__()
        if tta not in TTA_MODES:
            raise CxrkitError(
                f"The 'tta' parameter must be one of {{{', '.join(TTA_MODES)}}}. Got '{tta}' instead."
            )
        self.models = nn.ModuleList(members)
        self.metas = list(metas)
        self.labels = list(labels)
        self.num_classes = len(self.labels)
        self.tta = tta
        w = torch.tensor(list(weights) if weights is not None else [1.0] * len(members))
        self.register_buffer("weights", w / w.sum(), persistent=False)
        self.pipes = nn.ModuleList(build_pipeline(m, backend="torch") for m in self.metas)
        # output column of each ensemble label in each member
        self._order = [[list(m.labels).index(f) for f in self.labels] for m in self.metas]

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, S, S) in [0, 1] → (M, B, L) probabilities of each member (TTA averaged)."""
        u8 = (x[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)  # (B, S, S) as cached
        views = [u8] if self.tta == "none" else [u8, u8.flip(-1)]
        out = []
        for model, pipe, meta, order in zip(
            self.models, self.pipes, self.metas, self._order, strict=True
        ):
            p = torch.stack(
                [probabilities(model(pipe(v)), meta.output, meta.temperature) for v in views]
            ).mean(0)
            out.append(p[:, order])
        return torch.stack(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = (self.member_probabilities(x) * self.weights.view(-1, 1, 1)).sum(0)
        p = p.clamp(_EPS, 1 - _EPS)
        return torch.log(p) - torch.log1p(-p)  # (B, L) logits: sigmoid gives p back


def _check_members(metas: Sequence[Any], folders: Sequence[Path]) -> None:
    first = metas[0]
    for m, f in zip(metas[1:], folders[1:], strict=True):
        if set(m.labels) != set(first.labels):
            raise CxrkitError(
                f"ensemble members must predict the same findings: '{folders[0]}' has "
                f"{preview(first.labels)}, '{f}' has {preview(m.labels)}."
            )
        if tuple(m.image_size) != tuple(first.image_size) or m.fit != first.fit:
            raise CxrkitError(
                f"ensemble members must take the same image size and fit: '{folders[0]}' is "
                f"{first.image_size[0]} px/{first.fit}, '{f}' is {m.image_size[0]} px/{m.fit}."
            )
        if m.architecture == ENSEMBLE_ARCH:
            raise CxrkitError(f"'{f}' is an ensemble itself: list its members instead.")
    if first.architecture == ENSEMBLE_ARCH:
        raise CxrkitError(f"'{folders[0]}' is an ensemble itself: list its members instead.")


def make_ensemble(
    members: Sequence[str | Path],
    out: str | Path,
    *,
    weights: Sequence[float] | None = None,
    tta: str = "none",
) -> Path:
    """Write an ensemble artifact of the given member artifacts.

    Args:
        members: two or more model artifact folders (or run folders holding ``model/``).
        out: the new artifact folder.
        weights: one non-negative weight per member (default equal); normalised to sum 1.
        tta: ``none`` or ``hflip``.

    Returns:
        The ensemble artifact folder. Its thresholds are empty: fit them with ``cxrkit evaluate``.
    """
    if len(members) < 2:
        raise CxrkitError("an ensemble needs at least two member artifacts.")
    folders = [resolve_artifact(m).folder for m in members]
    if weights is not None:
        weights = [float(w) for w in weights]
        if len(weights) != len(folders):
            raise CxrkitError(
                f"{len(weights)} weights for {len(folders)} members: give one weight per member."
            )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise CxrkitError(f"weights must be non-negative with a positive sum; got {weights}.")
    if tta not in TTA_MODES:
        raise CxrkitError(
            f"The 'tta' parameter must be one of {{{', '.join(TTA_MODES)}}}. Got '{tta}' instead."
        )
    loaded = [load_artifact(f) for f in folders]
    metas = [m for _, m in loaded]
    _check_members(metas, folders)
    labels = list(metas[0].labels)
    model = EnsembleModel([n for n, _ in loaded], metas, labels, weights, tta)
    out = Path(out)
    if out.resolve() in {f.resolve() for f in folders}:
        raise CxrkitError(f"--out '{out}' is one of the members: choose a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    (out / META_FILE).unlink(missing_ok=True)
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    w = model.weights.tolist()
    meta = ArtifactMeta(
        architecture=ENSEMBLE_ARCH,
        labels=tuple(labels),
        input_mode="gray1",
        image_size=tuple(metas[0].image_size),
        mean=(0.0,),
        std=(1.0,),
        thresholds=dict.fromkeys(labels),
        config_hash=None,
        output="sigmoid",
        fit=metas[0].fit,
        cxrkit_version=__version__,
        format_version=FORMAT_VERSION,
        weights_sha256=sha256_file(out / WEIGHTS_FILE),
        extra={
            "ensemble": {
                "members": [m.to_dict() for m in metas],
                "sources": [str(f) for f in folders],
                "weights": w,
                "tta": tta,
            }
        },
    )
    write_text_atomic(out / META_FILE, json.dumps(meta.to_dict(), indent=2) + "\n")
    return out


@register_builder(ENSEMBLE_ARCH)
def build_from_meta(meta: Any) -> EnsembleModel:
    """The (untrained) :class:`EnsembleModel` an ensemble artifact's metadata describes."""
    spec = meta.extra.get("ensemble") if isinstance(meta.extra, dict) else None
    if not spec or not spec.get("members"):
        raise CxrkitError("ensemble artifact: model.json lacks extra.ensemble.members.")
    metas = [read_meta_dict(d, "ensemble member") for d in spec["members"]]
    models = [build_network(m) for m in metas]
    return EnsembleModel(
        models, metas, list(meta.labels), spec.get("weights"), spec.get("tta", "none")
    )
