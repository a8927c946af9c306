"""Grad-CAM and Grad-CAM++ on a torch network: the maps, the target layer, the per-network lock.

:class:`GradCAM` computes Grad-CAM (Selvaraju et al., 2017) or Grad-CAM++ (Chattopadhay et al., 2018)
for one finding of a cxrkit model: (B, C, H, W) input → (B, H, W) maps in [0, 1] at the input size.
:func:`target_layer` picks the layer (the last spatial feature map) for timm's DenseNet, EfficientNet,
ResNet and ConvNeXt, and finds one for any other network with a probing forward pass.
:class:`ArtifactCAM` gives the map of a loaded artifact's network, an ensemble's included (the weighted
mean of its members' maps). See ``docs/explain.md`` for the definitions and the reasons.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.core.errors import CxrkitError, closest, preview
from cxrkit.model.ensemble import ENSEMBLE_ARCH
from cxrkit.model.networks import outputs_per_label

log = logging.getLogger(__name__)

#: Grad-CAM variants :class:`GradCAM` computes.
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++")
#: Side of the probing input when :func:`target_layer` searches a network of unknown family.
PROBE_SIZE = 224

# One lock per network, shared by every GradCAM on it: hooks and eval() are per-module state.
_MODEL_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_MODEL_LOCKS_GUARD = threading.Lock()


# ---- the target layer ----------------------------------------------------------------------------


def _family_layer(model: nn.Module) -> str | None:
    """Dotted name of the last feature map for the timm families cxrkit documents, else None."""
    from timm.models.convnext import ConvNeXt
    from timm.models.densenet import DenseNet
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet

    if isinstance(model, DenseNet):
        # norm5 is timm's BatchNormAct2d (BN + ReLU): exactly the map the classifier pools.
        # denseblock4 is the same size but before that BN and ReLU, so half its values are negative.
        return "features.norm5"
    if isinstance(model, EfficientNet):
        return "bn2"  # conv_head → bn2 (BN + SiLU): the activated head features
    if isinstance(model, ResNet):
        return "layer4"
    if isinstance(model, ConvNeXt):
        return f"stages.{len(model.stages) - 1}"
    return None


def _probe_input(model: nn.Module) -> torch.Tensor:
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size", (channels, PROBE_SIZE, PROBE_SIZE))[-2:]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.zeros((1, channels, *size), device=device, dtype=dtype)


def _probe_layer(model: nn.Module, example: torch.Tensor | None) -> str:
    """The last module (by completion order) whose output is a spatial map (B, C, h, w), h·w > 1.

    Spatial: both sides shrunk by the same whole stride from the input's, which keeps out 4-D
    tensors of other kinds (a transformer's (B, heads, tokens, dim) attention, say).
    """
    x = _probe_input(model) if example is None else example[:1].detach()
    in_h, in_w = x.shape[2:]
    last: list[str] = []
    order: list[str] = []  # every module, as it finishes
    handles = []

    def spatial(out: Any) -> bool:
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            return False
        h, w = out.shape[2:]
        if h * w <= 1 or h > in_h or w > in_w:
            return False
        return round(in_h / h) == round(in_w / w)

    def make_hook(name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            order.append(name)
            if spatial(output):
                last.append(name)

        return hook

    for name, module in model.named_modules():
        if name:  # the network itself is no candidate
            handles.append(module.register_forward_hook(make_hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except Exception as e:  # any failure of an unknown network: say what to do instead
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CxrkitError(
            f"cannot find a target layer for {type(model).__name__}: a probing forward pass on "
            f"{tuple(x.shape)} failed ({type(e).__name__}: {first}). "
            "Pass layer='<dotted module name>'."
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not last:
        raise CxrkitError(
            f"{type(model).__name__} has no layer with a spatial (B, C, h, w) output larger than "
            "1×1 (a vision transformer, or an input too small?): Grad-CAM needs one. Pass "
            "layer='<dotted module name>' of a convolutional feature map."
        )
    # Layers with weights that run after the chosen one: most of the network means the map comes
    # from an early layer (a transformer's patch embedding) and says little about the decision.
    weighted = {n for n, m in model.named_modules() if n and any(True for _ in m.parameters(False))}
    after = [n for n in order[order.index(last[-1]) + 1 :] if n in weighted]
    if len(after) > len([n for n in order if n in weighted]) / 2:
        log.warning(
            "target layer '%s' of %s is followed by %d of its weighted layers: Grad-CAM there "
            "shows little of the decision. Pass layer= to choose another.",
            last[-1],
            type(model).__name__,
            len(after),
        )
    return last[-1]


def _lookup(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name in modules and name:
        return modules[name]
    options = [n for n in modules if n]
    close = closest(name, options)
    hint = f" did you mean '{close}'?" if close else ""
    top = [n for n in options if "." not in n]
    raise CxrkitError(
        f"unknown layer '{name}' in {type(model).__name__}:{hint} Give a dotted module name as "
        f"model.named_modules() lists them, e.g. {preview(top, 8)}."
    )


def resolve_layer(
    model: nn.Module, layer: str | nn.Module | None = None, example: torch.Tensor | None = None
) -> tuple[str, nn.Module]:
    """Like :func:`target_layer`, returning ``(dotted name, module)``."""
    if isinstance(layer, nn.Module):
        for name, module in model.named_modules():
            if module is layer and name:
                return name, module
        raise CxrkitError(
            f"the given layer ({type(layer).__name__}) is not a sub-module of "
            f"{type(model).__name__}: pass one of its modules or its dotted name."
        )
    if layer is not None:
        return layer, _lookup(model, layer)
    name = _family_layer(model) or _probe_layer(model, example)
    return name, _lookup(model, name)


def target_layer(
    model: nn.Module, layer: str | None = None, example: torch.Tensor | None = None
) -> nn.Module:
    """The layer whose feature map Grad-CAM weighs: the network's last spatial feature map.

    timm DenseNet → ``features.norm5`` (BN + ReLU after the last dense block); EfficientNet → ``bn2``
    (BN + activation after ``conv_head``); ResNet → ``layer4``; ConvNeXt → ``stages[-1]``. Any other
    network: the last module to finish whose output is (B, C, h, w) with h·w > 1, found with one
    forward pass on ``example`` (or zeros at the model's configured input size, 224 px by default).

    Args:
        model: the network.
        layer: a dotted module name (``"features.denseblock4"``) to use instead.
        example: (B, C, H, W) input for the probing pass of an unknown network.

    Raises:
        CxrkitError: an unknown layer name (with the closest name), or no spatial layer found.
    """
    return resolve_layer(model, layer, example)[1]


def _model_lock(model: nn.Module) -> threading.Lock:
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.Lock()
        return lock


# ---- Grad-CAM ------------------------------------------------------------------------------------


def cam_weights(activations: torch.Tensor, gradients: torch.Tensor, method: str) -> torch.Tensor:
    """Channel weights α (B, K) from the target layer's activations A and gradients ∂y/∂A (B, K, h, w).

    ``gradcam``: α_k = mean over (i, j) of ∂y/∂A_k,ij. ``gradcam++``: α_k = Σ_ij a_k,ij · ReLU(∂y/∂A_k,ij)
    with a_k,ij = g² / (2g² + Σ_ab A_k,ab · g³), g = ∂y/∂A_k,ij (0 where the denominator is 0), then
    normalised so that Σ_ij a_k,ij = 1, as the authors' reference code does. Their code takes the
    derivatives of exp(y); the factor exp(y) cancels in a and only scales α by a positive constant per
    image, which the map's normalisation removes, so it is left out (it overflows for y > 88).
    """
    a, g = activations.float(), gradients.float()
    if method == "gradcam":
        return g.mean(dim=(2, 3))
    g2 = g * g
    denom = 2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    norm = alpha.sum(dim=(2, 3), keepdim=True)
    alpha = alpha / torch.where(norm != 0, norm, torch.ones_like(norm))
    return (alpha * g.clamp(min=0)).sum(dim=(2, 3))


def normalize_maps(cam: torch.Tensor) -> torch.Tensor:
    """(B, H, W) → per-image min-max to [0, 1]; a flat map (all zero, say) becomes all zero."""
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    out = (cam - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, out, torch.zeros_like(out))


class GradCAM:
    """Grad-CAM / Grad-CAM++ heatmaps for one finding of a cxrkit network.

    The target is the finding's logit (``sigmoid`` heads) or ``l_pos − l_neg`` of that finding
    (``multiclass`` heads: 3 logits per finding, negative/positive/uncertain, finding-major), whose
    sigmoid is the probability :func:`cxrkit.model.networks.probabilities` reports.

    Each call registers one forward hook on the target layer and removes it before returning (also on
    error); gradients come from ``torch.autograd.grad``, so no parameter's ``.grad`` is written and no
    ``requires_grad`` flag is changed (the input is made to require a gradient instead). The network is
    put in eval mode (batch-norm running statistics, no dropout) and left there.

    Thread safety: calls on one network are serialised by a lock shared by every :class:`GradCAM` on
    it, and the hook ignores forward passes from other threads, so a web service may share one
    instance between request threads and run plain predictions on the same network meanwhile.

    Args:
        model: the network, (B, C, H, W) → (B, L·k) logits.
        layer: dotted module name or module to weigh; ``None`` for :func:`target_layer`'s choice
            (resolved at the first call, on its input, for a network of unknown family).
        output: ``sigmoid`` or ``multiclass`` (the artifact's ``output`` field).
        method: ``gradcam`` or ``gradcam++``.
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        output: str = "sigmoid",
        method: str = "gradcam",
    ) -> None:
        if method not in CAM_METHODS:
            raise CxrkitError(
                f"The 'method' parameter must be one of {{{', '.join(CAM_METHODS)}}}. Got '{method}' instead."
            )
        self.k = outputs_per_label(output)
        self.model, self.output, self.method = model, output, method
        self._layer = layer
        self._resolved: tuple[str, nn.Module] | None = None
        #: (h, w) of the target layer's feature map at the last call (None before the first):
        #: the map's real resolution, before it is upsampled to the input size
        self.map_size: tuple[int, int] | None = None
        if layer is not None or _family_layer(model) is not None:
            self._resolved = resolve_layer(model, layer)
        self._lock = _model_lock(model)

    @property
    def layer_name(self) -> str | None:
        """Dotted name of the target layer (None until the first call for an unknown family)."""
        return self._resolved[0] if self._resolved else None

    def __call__(self, x: torch.Tensor, finding_index: int) -> np.ndarray:
        """Heatmaps of one finding.

        Args:
            x: (B, C, H, W) float network input (normalised as the model expects; any memory
                format, channels_last included), on the model's device.
            finding_index: position of the finding in the model's label order.

        Returns:
            (B, H, W) float32 in [0, 1]: ReLU of the weighted feature map, bilinearly upsampled
            to the input size, min-max normalised per image (an all-zero map stays zero).
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(
                f"GradCAM expects a (B, C, H, W) tensor, got {getattr(x, 'shape', x)!r}"
            )
        with self._lock, torch.inference_mode(False), torch.enable_grad():
            if self._resolved is None:
                self._resolved = resolve_layer(self.model, self._layer, x)
            cam = self._cam(x, int(finding_index))
        return cam.cpu().numpy()

    def _cam(self, x: torch.Tensor, finding: int) -> torch.Tensor:
        assert self._resolved is not None
        _, module = self._resolved
        owner = threading.get_ident()
        seen: list[torch.Tensor] = []

        def hook(_m: nn.Module, _inputs: Any, out: Any) -> None:
            if threading.get_ident() == owner:  # another thread's plain forward: not ours
                seen.append(out)

        self.model.eval()
        # clone(): a normal tensor even from an inference-mode one, so autograd can record it
        x = x.detach().clone().requires_grad_(True)
        handle = module.register_forward_hook(hook)
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        if len(seen) != 1 or not isinstance(seen[0], torch.Tensor) or seen[0].dim() != 4:
            name = self._resolved[0]
            what = (
                f"ran {len(seen)} times in one forward pass"
                if len(seen) != 1
                else f"returned {type(seen[0]).__name__} of shape {getattr(seen[0], 'shape', '?')}"
            )
            raise CxrkitError(
                f"target layer '{name}' {what}; Grad-CAM needs a layer that runs once and returns "
                "(B, C, h, w). Pass another layer."
            )
        acts = seen[0]
        target = self._target(logits, finding)  # (B,)
        # Images do not interact in eval mode, so the batch sum gives each image its own gradient.
        (grads,) = (
            torch.autograd.grad(target.sum(), acts, allow_unused=True)
            if acts.requires_grad
            else (None,)
        )
        if grads is None:
            raise CxrkitError(
                f"the logits do not depend on target layer '{self._resolved[0]}' (a branch the "
                "output does not use?). Pass another layer."
            )
        acts = acts.detach()
        self.map_size = (int(acts.shape[2]), int(acts.shape[3]))
        weights = cam_weights(acts, grads, self.method)  # (B, K)
        cam = torch.einsum("bk,bkhw->bhw", weights, acts.float()).clamp(min=0)  # (B, h, w)
        cam = F.interpolate(cam[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)
        return normalize_maps(cam[:, 0].clamp(min=0)).contiguous()

    def _target(self, logits: torch.Tensor, finding: int) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise CxrkitError(
                f"the network returned {getattr(logits, 'shape', type(logits).__name__)}; "
                "GradCAM needs (B, L) logits."
            )
        n = logits.shape[1] // self.k
        if logits.shape[1] % self.k:
            raise CxrkitError(
                f"the network has {logits.shape[1]} outputs, not a multiple of 3: it is not a "
                "multiclass head. Pass output='sigmoid'."
            )
        if not 0 <= finding < n:
            raise CxrkitError(
                f"finding index {finding} is out of range: the model predicts {n} findings (0–{n - 1})."
            )
        if self.k == 1:
            return logits[:, finding].float()
        z = logits.float().reshape(logits.shape[0], n, 3)
        return z[:, finding, 1] - z[:, finding, 0]


class ArtifactCAM:
    """Grad-CAM maps of a loaded artifact's network: one :class:`GradCAM` on it, or for an ensemble
    (``cxrkit-ensemble``) the weighted mean of its members' maps, each member on its own input.

    Args:
        model: the network :func:`cxrkit.model.artifact.load_artifact` returned.
        meta: its :class:`~cxrkit.model.artifact.ArtifactMeta`.
        layer: a dotted layer name, or ``None`` for :func:`target_layer`'s choice (per member).
        method: ``gradcam`` or ``gradcam++``.
    """

    def __init__(
        self, model: nn.Module, meta: Any, layer: str | None = None, method: str = "gradcam"
    ) -> None:
        self.cam: GradCAM | None = None
        self.members: list[tuple[GradCAM, nn.Module, list[int], float]] = []
        if meta.architecture == ENSEMBLE_ARCH:
            for net, pipe, m, order, w in zip(
                model.models,
                model.pipes,
                model.metas,
                model._order,
                model.weights.tolist(),
                strict=True,
            ):
                self.members.append((GradCAM(net, layer, m.output, method), pipe, order, w))
        else:
            self.cam = GradCAM(model, layer, meta.output, method)
        self.method = method
        #: (h, w) of the feature map behind the last map (an ensemble: its coarsest member's),
        #: None before the first call
        self.map_size: tuple[int, int] | None = None

    def __call__(self, small: np.ndarray, x: torch.Tensor, index: int) -> np.ndarray:
        """(S, S) float32 map in [0, 1] of output ``index`` for one image.

        Args:
            small: (S, S) uint8 image at the network's input size, as the cache stores it (an
                ensemble's members each build their own input from it).
            x: (1, C, S, S) the artifact's pipeline applied to ``small``, on the network's device.
            index: the output's position in the model's label order.
        """
        if self.cam is not None:
            heat = self.cam(x, index)[0]
            self.map_size = self.cam.map_size
            return heat
        u8 = torch.from_numpy(np.array(small, np.uint8))[None].to(x.device)
        total = None
        sizes = []
        for cam, pipe, order, w in self.members:
            h = w * cam(pipe(u8), order[index])[0]
            total = h if total is None else total + h
            sizes.append(cam.map_size)
        self.map_size = min(sizes, key=lambda hw: hw[0] * hw[1])
        top = float(total.max())
        return (total / top if top > 0 else total).astype(np.float32)
