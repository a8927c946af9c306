"""Grad-CAM heatmaps and how well they localise findings.

:class:`GradCAM` computes Grad-CAM (Selvaraju et al., 2017) or Grad-CAM++ (Chattopadhay et al., 2018)
for one finding of a cxrkit model: (B, C, H, W) input → (B, H, W) maps in [0, 1] at the input size.
:func:`target_layer` picks the layer (the last spatial feature map) for timm's DenseNet, EfficientNet,
ResNet and ConvNeXt, and finds one for any other network with a probing forward pass.

:func:`overlay` / :func:`save_overlay` colour a map over the X-ray; :func:`heatmap_to_image` takes a map
from the square network input back to the original image's frame.

Localisation against boxes (NIH ``BBox_List_2017.csv`` and the synthetic datasets' boxes, in the original
image's pixels): :func:`read_box_table`, :func:`map_box` (original pixels → network-input pixels, exactly
as :func:`cxrkit.data.imaging.resize_square` moves them), :func:`pointing_game`, :func:`box_iou` and
:func:`localization_scores`. See ``docs/explain.md`` for the definitions and the reasons.

Box coordinates are continuous: pixel (row r, column c) covers ``[c, c + 1) × [r, r + 1)``, so a box
``(x, y, w, h)`` spans ``[x, x + w) × [y, y + h)`` and a pixel belongs to it when its centre does.
"""

from __future__ import annotations

import logging
import math
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from cxrkit.core.errors import CxrkitError, closest, did_you_mean, preview
from cxrkit.core.fileio import atomic_path
from cxrkit.data.imaging import placement
from cxrkit.data.index import BOX_COLUMNS
from cxrkit.model.networks import outputs_per_label

log = logging.getLogger(__name__)

#: Grad-CAM variants :class:`GradCAM` computes.
METHODS: tuple[str, ...] = ("gradcam", "gradcam++")
#: Pointing-game tolerance when none is given: Zhang et al.'s 15 px on a 1024-px image (NIH's size),
#: as a fraction of the map's long side (3.3 px at 224, 7.5 px at 512).
DEFAULT_TOLERANCE_FRACTION = 15 / 1024
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
        if method not in METHODS:
            raise CxrkitError(
                f"The 'method' parameter must be one of {{{', '.join(METHODS)}}}. Got '{method}' instead."
            )
        self.k = outputs_per_label(output)
        self.model, self.output, self.method = model, output, method
        self._layer = layer
        self._resolved: tuple[str, nn.Module] | None = None
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


# ---- overlays ------------------------------------------------------------------------------------


def _colormap(name: str) -> int:
    options = sorted(k[len("COLORMAP_") :].lower() for k in dir(cv2) if k.startswith("COLORMAP_"))
    code = getattr(cv2, f"COLORMAP_{str(name).upper()}", None)
    if code is None:
        raise CxrkitError(did_you_mean(str(name), options, what="colormap"))
    return int(code)


def overlay(
    gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet"
) -> np.ndarray:
    """Colour a heatmap over a grayscale image.

    Args:
        gray: (H, W) uint8 image.
        heatmap: (h, w) float in [0, 1] (values outside are clipped), resized bilinearly to
            (H, W); it must cover the same field of view (see :func:`heatmap_to_image`).
        alpha: weight of the colour: out = (1 − alpha) · gray + alpha · colour.
        colormap: an OpenCV colormap name (``jet``, ``turbo``, ``inferno``, ``viridis``, ...).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    gray = np.asarray(gray)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"overlay expects a (H, W) uint8 image, got {gray.dtype} {gray.shape}")
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"overlay expects a (h, w) heatmap, got shape {heatmap.shape}")
    if not np.isfinite(heatmap).all():
        raise ValueError("the heatmap holds NaN or infinite values")
    if not 0.0 <= alpha <= 1.0:
        raise CxrkitError(f"alpha must be between 0 and 1. Got {alpha}.")
    code = _colormap(colormap)
    h, w = gray.shape
    if heatmap.shape != (h, w):
        heatmap = cv2.resize(heatmap, (w, h), interpolation=cv2.INTER_LINEAR)
    levels = np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8)
    colour = cv2.applyColorMap(levels, code)[:, :, ::-1].astype(np.float32)  # BGR → RGB
    out = (1.0 - alpha) * gray.astype(np.float32)[:, :, None] + alpha * colour
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def save_overlay(
    path: str | Path,
    gray: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.4,
    colormap: str = "jet",
) -> Path:
    """Write :func:`overlay` as a PNG, atomically. ``path`` must end in ``.png``."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise CxrkitError(f"'{path}': overlays are written as PNG; give a path ending in .png.")
    rgb = overlay(gray, heatmap, alpha, colormap)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise CxrkitError(f"cannot encode the overlay for '{path}' as PNG.")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path


# ---- geometry: original image ↔ square network input ------------------------------------------


def map_box(box_xywh: Any, orig_hw: Sequence[int], size: int, fit: str) -> np.ndarray:
    """Move boxes from original-image pixels to the pixels of ``resize_square(img, size, fit)``.

    Args:
        box_xywh: (4,) or (N, 4) boxes ``x, y, w, h`` (NIH's ``Bbox [x,y,w,h]``).
        orig_hw: (H, W) of the original image.
        size: the square side of the network input.
        fit: ``pad``, ``crop`` or ``stretch``, as the model artifact's ``fit``.

    Returns:
        float64 boxes of the same shape, clipped to the input square; a box (or its part) outside
        the square after ``crop`` keeps zero width or height.
    """
    b = np.asarray(box_xywh, dtype=np.float64)
    if b.shape[-1:] != (4,) or b.ndim > 2:
        raise ValueError(f"boxes must have shape (4,) or (N, 4), got {b.shape}")
    sx, sy, ox, oy = placement(orig_hw, size, fit).scale_offset()
    x0 = np.clip(b[..., 0] * sx + ox, 0, size)
    y0 = np.clip(b[..., 1] * sy + oy, 0, size)
    x1 = np.clip((b[..., 0] + b[..., 2]) * sx + ox, 0, size)
    y1 = np.clip((b[..., 1] + b[..., 3]) * sy + oy, 0, size)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=-1)


def heatmap_to_image(heatmap: np.ndarray, orig_hw: Sequence[int], fit: str) -> np.ndarray:
    """Take a (S, S) map on the network input back to the original image's (H, W) frame.

    ``pad``: the bars are cut off and the rest resized; ``crop``: the map is resized to the cropped
    square and placed in it, the edges the network never saw get 0; ``stretch``: resized.

    Returns:
        (H, W) float32.
    """
    m = np.asarray(heatmap, dtype=np.float32)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"expected a square (S, S) map, got shape {m.shape}")
    h, w = int(orig_hw[0]), int(orig_hw[1])
    (st, sl, sh, sw), (dt, dl, dh, dw) = placement((h, w), m.shape[0], fit)
    out = np.zeros((h, w), np.float32)
    out[st : st + sh, sl : sl + sw] = cv2.resize(
        np.ascontiguousarray(m[dt : dt + dh, dl : dl + dw]),
        (sw, sh),
        interpolation=cv2.INTER_LINEAR,
    )
    return out


# ---- localisation scores -------------------------------------------------------------------------


def _as_boxes(boxes: Any) -> np.ndarray:
    """(N, 4) float64 from a box, a list of boxes or an array; N may be 0."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.empty((0, 4))
    if b.shape[-1] != 4 or b.ndim > 2:
        raise ValueError(f"boxes must have shape (4,) or (N, 4), got {b.shape}")
    return b.reshape(-1, 4)


def _boxes(boxes: Any) -> np.ndarray:
    """The boxes with a positive area; none is an error (a score needs a target)."""
    b = _as_boxes(boxes)
    b = b[(b[:, 2] > 0) & (b[:, 3] > 0)]
    if len(b) == 0:
        raise ValueError(
            "no box with a positive area: a localisation score needs one (boxes that crop cut "
            "away have none; leave such records out)"
        )
    return b


def box_mask(boxes: Any, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels whose centre lies in any box (x, y, w, h) in the map's pixels.

    A box of positive area that covers no pixel centre still marks the pixel holding its centre.
    """
    h, w = shape
    mask = np.zeros((h, w), bool)
    for x, y, bw, bh in _as_boxes(boxes):
        if bw <= 0 or bh <= 0:
            continue
        c0, c1 = max(0, math.ceil(x - 0.5)), min(w, math.ceil(x + bw - 0.5))
        r0, r1 = max(0, math.ceil(y - 0.5)), min(h, math.ceil(y + bh - 0.5))
        if c1 <= c0 or r1 <= r0:
            cx, cy = int(x + bw / 2), int(y + bh / 2)
            if 0 <= cx < w and 0 <= cy < h:
                mask[cy, cx] = True
            continue
        mask[r0:r1, c0:c1] = True
    return mask


def _peak(heatmap: np.ndarray) -> tuple[float, float] | None:
    """(x, y) of the map's maximum (pixel centre), None for a flat map.

    Several maximal pixels (a plateau, as bilinear upsampling makes at the borders): the one
    nearest their centroid.
    """
    top, bottom = float(heatmap.max()), float(heatmap.min())
    if not top > bottom:
        return None
    rows, cols = np.nonzero(heatmap >= top - 1e-6 * max(1.0, abs(top)))
    i = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return cols[i] + 0.5, rows[i] + 0.5


def _tolerance(heatmap: np.ndarray, tolerance: float | None) -> float:
    if tolerance is None:
        return DEFAULT_TOLERANCE_FRACTION * max(heatmap.shape)
    if tolerance < 0:
        raise CxrkitError(f"the pointing-game tolerance must be ≥ 0 pixels. Got {tolerance}.")
    return float(tolerance)


def _check_map(heatmap: Any) -> np.ndarray:
    m = np.asarray(heatmap, dtype=np.float32)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"expected a (H, W) heatmap, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("the heatmap holds NaN or infinite values")
    return m


def pointing_game(heatmap: np.ndarray, boxes: Any, tolerance: float | None = None) -> bool:
    """Does the map's maximum fall within ``tolerance`` pixels of one of the boxes?

    The pointing game of Zhang et al. (2018, "Top-down neural attention by excitation backprop"),
    who count a hit within 15 px of the ground truth.

    Args:
        heatmap: (H, W) map.
        boxes: (4,) or (N, 4) boxes (x, y, w, h) in the map's pixels (see :func:`map_box`);
            boxes with no area are ignored, and at least one must have some.
        tolerance: pixels of the map; ``None`` for 15/1024 of its long side (Zhang's 15 px on a
            1024-px NIH image, whatever the input size).

    Returns:
        True for a hit. A flat map (no maximum, e.g. all zero) is a miss.
    """
    m = _check_map(heatmap)
    b = _boxes(boxes)
    tol = _tolerance(m, tolerance)
    peak = _peak(m)
    if peak is None:
        return False
    px, py = peak
    x0, y0 = b[:, 0], b[:, 1]
    x1, y1 = x0 + b[:, 2], y0 + b[:, 3]
    dx = np.maximum(np.maximum(x0 - px, 0), px - x1)
    dy = np.maximum(np.maximum(y0 - py, 0), py - y1)
    return bool(np.any(np.hypot(dx, dy) <= tol))


def box_iou(heatmap: np.ndarray, boxes: Any, threshold: float = 0.5) -> float:
    """IoU of the binarised map (values ≥ ``threshold`` × its maximum) and the union of the boxes.

    Args:
        heatmap: (H, W) map.
        boxes: (4,) or (N, 4) boxes (x, y, w, h) in the map's pixels, as for :func:`pointing_game`.
        threshold: fraction of the map's maximum, in (0, 1].

    Returns:
        IoU in [0, 1]; 0 for a map with no positive value.
    """
    if not 0.0 < threshold <= 1.0:
        raise CxrkitError(f"the IoU threshold must be in (0, 1]. Got {threshold}.")
    m = _check_map(heatmap)
    truth = box_mask(boxes, m.shape)
    top = float(m.max())
    pred = m >= threshold * top if top > 0 else np.zeros_like(truth)
    union = int(np.count_nonzero(pred | truth))
    return float(np.count_nonzero(pred & truth) / union) if union else 0.0


def localization_scores(
    records: Iterable[Mapping[str, Any]] | pd.DataFrame,
    *,
    threshold: float = 0.5,
    tolerance: float | None = None,
) -> dict[str, Any]:
    """Pointing-game hit rate and mean IoU per finding and overall.

    Args:
        records: one per (image, finding) with boxes: a mapping with ``finding`` and either
            ``heatmap`` (H, W) and ``boxes`` (N, 4) in the map's pixels (all of that finding's boxes
            in that image), or precomputed ``hit`` (bool) and ``iou`` (float). An iterator is
            consumed once, so maps need not be held in memory together.
        threshold, tolerance: as in :func:`box_iou` and :func:`pointing_game`.

    Returns:
        ``{"findings": {finding: {"n", "hits", "hit_rate", "mean_iou"}}, "overall": {"n", "hits",
        "hit_rate", "mean_iou", "macro_hit_rate", "macro_mean_iou"}, "threshold", "tolerance_px",
        "tolerance_fraction"}`` (the tolerance as given, or the default's fraction of the map side);
        findings in name order; overall pools every record, macro averages the findings; rates
        are None where n is 0.
    """
    rows = records.to_dict("records") if isinstance(records, pd.DataFrame) else records
    per: dict[str, list[tuple[bool, float]]] = {}
    for i, r in enumerate(rows):
        if "finding" not in r:
            raise ValueError(f"record {i} has no 'finding'")
        if "hit" in r and "iou" in r:
            hit, iou = bool(r["hit"]), float(r["iou"])
        elif "heatmap" in r and "boxes" in r:
            hit = pointing_game(r["heatmap"], r["boxes"], tolerance)
            iou = box_iou(r["heatmap"], r["boxes"], threshold)
        else:
            raise ValueError(f"record {i} needs 'heatmap' and 'boxes', or 'hit' and 'iou'")
        per.setdefault(str(r["finding"]), []).append((hit, iou))

    def summary(pairs: list[tuple[bool, float]]) -> dict[str, Any]:
        n, hits = len(pairs), sum(h for h, _ in pairs)
        return {
            "n": n,
            "hits": int(hits),
            "hit_rate": hits / n if n else None,
            "mean_iou": float(np.mean([u for _, u in pairs])) if n else None,
        }

    findings = {f: summary(per[f]) for f in sorted(per)}
    overall = summary([p for f in sorted(per) for p in per[f]])
    overall["macro_hit_rate"] = (
        float(np.mean([s["hit_rate"] for s in findings.values()])) if findings else None
    )
    overall["macro_mean_iou"] = (
        float(np.mean([s["mean_iou"] for s in findings.values()])) if findings else None
    )
    return {
        "findings": findings,
        "overall": overall,
        "threshold": threshold,
        "tolerance_px": tolerance,
        "tolerance_fraction": DEFAULT_TOLERANCE_FRACTION if tolerance is None else None,
    }


# ---- box tables ----------------------------------------------------------------------------------


class _SameName(dict):
    """A locations mapping that leaves every image name as written."""

    def get(self, key: Any, default: Any = None) -> Any:
        return key


def read_box_table(path: str | Path, root: str | Path | None = None) -> pd.DataFrame:
    """Read a ``BBox_List_2017.csv``-format box file (NIH's, or a synthetic dataset's).

    Columns ``Image Index, Finding Label, Bbox [x,y,w,h]`` (x, y, w, h in four columns; trailing
    empty columns allowed); finding names become canonical (``Infiltrate`` → ``Infiltration``,
    ``Effusion`` → ``Pleural Effusion``). Reuses :func:`cxrkit.data.adapters.nih.read_boxes`.

    Args:
        path: the box file.
        root: the dataset folder: image names are then resolved to paths relative to it as the
            NIH index stores them (``images_001/images/…``); ``None`` keeps the names as written.

    Returns:
        DataFrame with :data:`cxrkit.data.index.BOX_COLUMNS` (``path, finding, x, y, w, h``), boxes in the
        original image's pixels: the same layout as ``Index.boxes``.
    """
    from cxrkit.data.adapters.nih import image_locations, read_boxes

    path = Path(path)
    if not path.is_file():
        raise CxrkitError(
            f"box file '{path}' does not exist. Pass a BBox_List_2017.csv-format file "
            "(Image Index, Finding Label, x, y, w, h)."
        )
    locations = image_locations(Path(root)) if root is not None else _SameName()
    try:
        table = read_boxes(path, locations)
    except CxrkitError as e:
        raise CxrkitError(
            f"'{path}' does not read as a BBox_List_2017.csv-format box file (Image Index, Finding "
            f"Label, x, y, w, h): {str(e).removeprefix(f'{path}: ')}"
        ) from None
    return table.loc[:, list(BOX_COLUMNS)].reset_index(drop=True)


def group_boxes(table: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """``{path: {finding: (N, 4) float64 boxes}}`` from a :data:`BOX_COLUMNS` table, in table order."""
    missing = [c for c in BOX_COLUMNS if c not in table.columns]
    if missing:
        raise CxrkitError(
            f"box table lacks columns {preview(missing)}: expected {', '.join(BOX_COLUMNS)}."
        )
    out: dict[str, dict[str, np.ndarray]] = {}
    for (p, f), g in table.groupby(["path", "finding"], sort=False):
        out.setdefault(str(p), {})[str(f)] = g[["x", "y", "w", "h"]].to_numpy(np.float64)
    return out


# ---- an artifact ready to explain ----------------------------------------------------------------
class Explanation(dict):
    """One explained image: ``probabilities`` (L,) float32, ``finding``, ``index``, ``heatmap``
    (S, S) on the network input, ``heatmap_image`` (H, W) on the original image, ``gray`` (H, W)
    uint8, the original image as the model saw it before resizing."""


class Explainer:
    """A model artifact with its preprocessing and a :class:`GradCAM`: image → heatmap.

    Args:
        artifact: the model artifact folder.
        method: ``gradcam`` or ``gradcam++``.
        layer: a dotted layer name, or ``None`` for :func:`target_layer`'s choice.
        device: where the network runs.
    """

    def __init__(
        self,
        artifact: str | Path,
        method: str = "gradcam",
        layer: str | None = None,
        device: str = "cpu",
    ) -> None:
        from cxrkit.model.artifact import build_pipeline, load_artifact

        model, meta = load_artifact(artifact)
        self.model, self.meta, self.device = model.to(device), meta, torch.device(device)
        self.size = int(meta.image_size[0])
        self.pipeline = build_pipeline(meta).to(self.device)
        self.cam = None
        self.members: list[tuple[GradCAM, nn.Module, list[int], float]] = []
        if meta.architecture == "cxrkit-ensemble":
            # an ensemble's map: the weighted mean of its members' maps (each on its own input)
            for net, pipe, m, order, w in zip(
                self.model.models,
                self.model.pipes,
                self.model.metas,
                self.model._order,
                self.model.weights.tolist(),
                strict=True,
            ):
                self.members.append((GradCAM(net, layer, m.output, method), pipe, order, w))
        else:
            self.cam = GradCAM(self.model, layer, meta.output, method)
        self.method = method

    def _heat(self, small: np.ndarray, x: torch.Tensor, j: int) -> np.ndarray:
        """(S, S) map of output ``j`` for the cached-size image ``small`` (its input ``x``)."""
        if self.cam is not None:
            return self.cam(x, j)[0]
        u8 = torch.from_numpy(np.array(small, np.uint8))[None].to(self.device)
        total = None
        for cam, pipe, order, w in self.members:
            h = w * cam(pipe(u8), order[j])[0]
            total = h if total is None else total + h
        top = float(total.max())
        return (total / top if top > 0 else total).astype(np.float32)

    def finding_index(self, finding: str) -> int:
        """The output index of a finding, by any dataset's spelling; a clear error otherwise."""
        from cxrkit.core.findings import canonical_name

        labels = list(self.meta.labels)
        if finding in labels:
            return labels.index(finding)
        name = canonical_name(finding, strict=False)
        if name in labels:
            return labels.index(name)
        raise CxrkitError(
            did_you_mean(finding, labels, what="finding") + " (the findings this model predicts)"
        )

    def heatmap_uint8(self, image: np.ndarray, finding: str | int) -> np.ndarray:
        """(S, S) uint8 image as the cache stores it → (S, S) float32 map in [0, 1]."""
        j = finding if isinstance(finding, int) else self.finding_index(finding)
        image = np.array(image, np.uint8)  # a writable copy (cache arrays are read-only maps)
        x = self.pipeline(torch.from_numpy(image)[None].to(self.device))
        return self._heat(image, x, j)

    def explain_array(self, image: np.ndarray, finding: str | None = None) -> Explanation:
        """Explain a decoded 2-D image (any dtype and size); ``finding=None`` takes the finding
        with the highest probability."""
        from cxrkit.data.imaging import resize_square, to_uint8
        from cxrkit.model.networks import probabilities

        image = np.asarray(image)
        if image.ndim != 2:
            raise CxrkitError(f"expected a 2-D grayscale image, got shape {image.shape}.")
        gray = to_uint8(image)
        small = resize_square(gray, self.size, self.meta.fit)
        x = self.pipeline(torch.from_numpy(small)[None].to(self.device))
        with torch.inference_mode():
            probs = probabilities(self.model(x), self.meta.output, self.meta.temperature)
        probs = probs[0].cpu().numpy().astype(np.float32)
        j = int(np.argmax(probs)) if finding is None else self.finding_index(finding)
        heat = self._heat(small, x, j)
        return Explanation(
            probabilities=probs,
            finding=self.meta.labels[j],
            index=j,
            heatmap=heat,
            heatmap_image=heatmap_to_image(heat, gray.shape, self.meta.fit),
            gray=gray,
        )

    def explain_file(self, path: str | Path, finding: str | None = None) -> Explanation:
        """Explain an image file (PNG, JPEG, DICOM)."""
        from cxrkit.data.imaging import read_image

        return self.explain_array(read_image(path), finding)


def evaluate_localization(
    artifact: str | Path,
    boxes: str | Path,
    *,
    root: str | Path | None = None,
    method: str = "gradcam",
    threshold: float = 0.5,
    out: str | Path | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Pointing-game hit rate and IoU of the Grad-CAM maps against boxes.

    Args:
        artifact: a model artifact folder (or a run folder holding ``model/``).
        boxes: a ``BBox_List_2017.csv``-format file (NIH's or a synthetic dataset's).
        root: the dataset folder the image names resolve in (default: the box file's folder).
        method: ``gradcam`` or ``gradcam++``.
        threshold: the map is binarised at this fraction of its maximum for the IoU.
        out: a folder to write ``localization.json`` into.
        progress: an optional callable ``progress(images_done)``.

    Returns:
        :func:`localization_scores`' dict plus ``images``, ``missing`` (box images not found),
        ``skipped`` (boxes of findings the model does not predict) and ``method``.
    """
    import json

    from cxrkit.core.fileio import write_text_atomic
    from cxrkit.data.imaging import ImageReadError, read_image, resize_square, to_uint8

    artifact = Path(artifact)
    if (artifact / "model" / "model.json").is_file():
        artifact = artifact / "model"
    boxes = Path(boxes)
    root = Path(root) if root is not None else boxes.parent
    ex = Explainer(artifact, method=method)
    table = group_boxes(read_box_table(boxes, root=root))
    labels = list(ex.meta.labels)
    missing: list[str] = []
    skipped = 0
    images = 0

    def records():
        nonlocal skipped, images
        for path, by_finding in table.items():
            try:
                img = to_uint8(read_image(root / path))
            except ImageReadError:
                missing.append(path)
                continue
            images += 1
            small_img = resize_square(img, ex.size, ex.meta.fit)
            x = ex.pipeline(torch.from_numpy(small_img)[None])
            for finding, b in by_finding.items():
                small = map_box(b, img.shape, ex.size, ex.meta.fit)
                if finding not in labels or not (small[:, 2] * small[:, 3] > 0).any():
                    skipped += 1
                    continue
                heat = ex._heat(small_img, x, labels.index(finding))
                yield {
                    "finding": finding,
                    "hit": pointing_game(heat, small[small[:, 2] * small[:, 3] > 0]),
                    "iou": box_iou(heat, small[small[:, 2] * small[:, 3] > 0], threshold),
                }
            if progress:
                progress(1)

    scores = localization_scores(records(), threshold=threshold)
    if images == 0:
        raise CxrkitError(
            f"none of the {len(table)} boxed images was found under '{root}': pass --images-root "
            "with the dataset folder the box file's image names are in."
        )
    result = {
        **scores,
        "method": method,
        "boxes_file": str(boxes),
        "images": images,
        "missing": len(missing),
        "missing_examples": missing[:5],
        "skipped_boxes": skipped,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "localization.json", json.dumps(result, indent=2) + "\n")
    return result
