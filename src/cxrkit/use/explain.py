"""Explain a model artifact's decision on an X-ray: Grad-CAM heatmaps, overlays, the original frame.

:class:`Explainer` loads an artifact with its preprocessing and gives an :class:`Explanation` of an
image (probabilities, the explained finding, its heatmap on the network input and on the original
image). :func:`overlay` / :func:`save_overlay` colour a map over the X-ray; :func:`heatmap_to_image`
takes a map from the square network input back to the original image's frame.

The maps come from :class:`cxrkit.model.cam.GradCAM`; localisation scores against boxes live in
:mod:`cxrkit.evaluate.localization`, box tables in :mod:`cxrkit.data.boxes`. See ``docs/explain.md``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cxrkit.core.errors import CxrkitError, did_you_mean
from cxrkit.core.fileio import atomic_path
from cxrkit.core.findings import canonical_name
from cxrkit.data.imaging import placement, read_image, resize_square, to_uint8
from cxrkit.model.artifact import build_pipeline, load_artifact
from cxrkit.model.cam import CAM_METHODS, ArtifactCAM
from cxrkit.model.networks import probabilities

__all__ = [
    "CAM_METHODS",
    "Explainer",
    "Explanation",
    "heatmap_to_image",
    "overlay",
    "save_overlay",
]


def __getattr__(name: str) -> Any:
    """``METHODS``, this module's name for :data:`CAM_METHODS` in cxrkit 0.1 (``cxrkit.explain``)."""
    if name == "METHODS":
        return CAM_METHODS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# ---- an artifact ready to explain ----------------------------------------------------------------


@dataclass(eq=False)
class Explanation(Mapping[str, Any]):
    """One explained image.

    Also a read-only mapping of its fields (``result["heatmap"]``), as the dict of cxrkit 0.1 was.

    Attributes:
        probabilities: (L,) float32, one per finding in the model's label order.
        finding: the explained finding's name.
        index: its position in the label order.
        heatmap: (S, S) float32 map in [0, 1] on the network input.
        heatmap_image: (H, W) float32 map on the original image.
        gray: (H, W) uint8, the original image as the model saw it before resizing.
    """

    probabilities: np.ndarray
    finding: str
    index: int
    heatmap: np.ndarray
    heatmap_image: np.ndarray
    gray: np.ndarray

    def __getitem__(self, key: str) -> Any:
        if key not in _EXPLANATION_FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_EXPLANATION_FIELDS)

    def __len__(self) -> int:
        return len(_EXPLANATION_FIELDS)


_EXPLANATION_FIELDS = tuple(f.name for f in fields(Explanation))


class Explainer:
    """A model artifact with its preprocessing and a :class:`~cxrkit.model.cam.GradCAM`: image → heatmap.

    Args:
        artifact: the model artifact folder.
        method: ``gradcam`` or ``gradcam++``.
        layer: a dotted layer name, or ``None`` for :func:`cxrkit.model.cam.target_layer`'s choice.
        device: where the network runs.
    """

    def __init__(
        self,
        artifact: str | Path,
        method: str = "gradcam",
        layer: str | None = None,
        device: str = "cpu",
    ) -> None:
        model, meta = load_artifact(artifact)
        self.model, self.meta, self.device = model.to(device), meta, torch.device(device)
        self.size = int(meta.image_size[0])
        self.pipeline = build_pipeline(meta).to(self.device)
        self.cam = ArtifactCAM(self.model, meta, layer, method)  # an ensemble: its members' mean
        self.method = method

    def finding_index(self, finding: str) -> int:
        """The output index of a finding, by any dataset's spelling; a clear error otherwise."""
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
        return self.cam(image, x, j)

    def explain_array(self, image: np.ndarray, finding: str | None = None) -> Explanation:
        """Explain a decoded 2-D image (any dtype and size); ``finding=None`` takes the finding
        with the highest probability."""
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
        heat = self.cam(small, x, j)
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
        return self.explain_array(read_image(path), finding)
