"""Input modes and augmentation as batched tensor operations, on CPU and GPU alike.

Batches travel from the cache as uint8 (B, H, W) and are turned into network inputs on the device
that will use them: ``gray1`` (B, 1, H, W), ``gray3`` (B, 3, H, W), or ``enhanced`` (B, 3, H, W):
the image, its histogram equalisation and its CLAHE (the thesis's "enhancement layers").

Histogram equalisation and CLAHE are written here as batched torch code rather than taken from
kornia: they reproduce OpenCV's ``equalizeHist`` and ``createCLAHE(clip, (8, 8)).apply`` (the
reference the cache side and the tests use) to at most one grey level, where kornia's differ by up
to 16 (equalisation) and 3.5 (CLAHE) grey levels, and they run on any device, batch by batch. Speed
is not the reason: on this project's 2-core CPU they run at 0.5-2.2× (equalisation) and 0.9-1.6×
(CLAHE) kornia's speed over five runs, and OpenCV's per-image loop is faster than both on a CPU
(bench/bench_inputs.py, BENCHMARKS.md). Geometric warping uses kornia.

Horizontal flips are off by default: a chest is not symmetric (the heart lies on the patient's
left), so a flipped film shows an anatomy no patient has (dextrocardia aside).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

INPUT_MODES = ("gray1", "gray3", "enhanced")
#: ImageNet statistics: the backbones are ImageNet-pretrained.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_levels(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8, or float in [0, 1] → int64 grey levels 0..255."""
    if x.dtype == torch.uint8:
        return x.long()
    return (x.clamp(0, 1) * 255).round().long()


def _histograms(levels: torch.Tensor) -> torch.Tensor:
    """(N, K) int64 grey levels → (N, 256) int64 counts per row.

    ``scatter_add`` rather than ``bincount``: the same counts, and it exports to ONNX
    (ScatterElements with add), so models with the ``enhanced`` pipeline inside export whole."""
    hist = torch.zeros(levels.shape[0], 256, dtype=torch.long, device=levels.device)
    return hist.scatter_add_(1, levels, torch.ones_like(levels))


def equalize_hist(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each image, as OpenCV's ``equalizeHist``.

    Args:
        x: (B, H, W) uint8 or float in [0, 1].

    Returns:
        (B, H, W) uint8.
    """
    v = _as_levels(x)
    b, h, w = v.shape
    hist = _histograms(v.reshape(b, h * w))
    first = (hist > 0).float().argmax(dim=1)  # lowest grey level present
    h_first = hist.gather(1, first[:, None])
    scale = 255.0 / (h * w - h_first).clamp(min=1).float()
    cdf = hist.cumsum(1)
    lut = torch.round((cdf - h_first).float() * scale).clamp(0, 255)
    constant = h_first[:, 0] == h * w  # a flat image stays as it is
    lut[constant] = torch.arange(256, device=v.device, dtype=lut.dtype)
    return lut.to(torch.uint8).gather(1, v.view(b, -1)).view(b, h, w)


def clahe(x: torch.Tensor, clip_limit: float = 2.0, grid: tuple[int, int] = (8, 8)) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation, as OpenCV's CLAHE on 8-bit images.

    Args:
        x: (B, H, W) uint8 or float in [0, 1].
        clip_limit: OpenCV's ``clipLimit`` (relative to a uniform histogram).
        grid: tiles along (x, y), OpenCV's ``tileGridSize``.

    Returns:
        (B, H, W) uint8.
    """
    v = _as_levels(x)
    b, h, w = v.shape
    gx, gy = grid
    ph, pw = (-h) % gy, (-w) % gx
    vp = v
    if ph or pw:  # OpenCV pads to a whole number of tiles with BORDER_REFLECT_101
        vp = F.pad(v[:, None].float(), (0, pw, 0, ph), mode="reflect")[:, 0].long()
    th, tw = vp.shape[1] // gy, vp.shape[2] // gx
    tiles = vp.view(b, gy, th, gx, tw).permute(0, 1, 3, 2, 4).reshape(b * gy * gx, th * tw)
    hist = _histograms(tiles)
    area = th * tw
    if clip_limit > 0:
        limit = max(int(clip_limit * area / 256), 1)
        excess = (hist - limit).clamp(min=0).sum(1, keepdim=True)
        hist = hist.clamp(max=limit)
        batch, residual = excess // 256, excess % 256
        hist = hist + batch
        step = (256 // residual.clamp(min=1)).clamp(min=1)
        i = torch.arange(256, device=v.device)[None]
        hist = hist + ((i % step == 0) & (i // step < residual)).long()
    lut_scale = torch.tensor(255.0 / area, dtype=torch.float32, device=v.device)
    lut = torch.round(hist.cumsum(1).float() * lut_scale).clamp(0, 255).view(b, gy, gx, 256)

    def axis(n: int, tiles_n: int, tile: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = (
            torch.arange(n, device=v.device, dtype=torch.float32)
            * torch.tensor(1.0 / tile, dtype=torch.float32)
            - 0.5
        )
        t1 = torch.floor(f)
        a = f - t1
        t1 = t1.long()
        return t1.clamp(min=0), (t1 + 1).clamp(max=tiles_n - 1), a

    ty1, ty2, ya = axis(h, gy, th)
    tx1, tx2, xa = axis(w, gx, tw)
    flat = lut.view(-1)
    base = torch.arange(b, device=v.device).view(b, 1, 1) * (gy * gx * 256)

    def at(ty: torch.Tensor, tx: torch.Tensor) -> torch.Tensor:
        idx = base + (ty.view(1, h, 1) * gx + tx.view(1, 1, w)) * 256 + v
        return flat[idx]

    xa, ya = xa.view(1, 1, w), ya.view(1, h, 1)
    top = at(ty1, tx1) * (1 - xa) + at(ty1, tx2) * xa
    bottom = at(ty2, tx1) * (1 - xa) + at(ty2, tx2) * xa
    return torch.round(top * (1 - ya) + bottom * ya).clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation, drawn per image from an explicit ``torch.Generator``.

    Attributes:
        rotate: maximum rotation, degrees (±).
        translate: maximum shift, fraction of the side (±).
        scale: zoom range (min, max).
        crop: random-resized-crop area range (min, max) of the image kept; (1, 1) turns it off.
        brightness: maximum additive brightness change (±, on [0, 1] images).
        contrast: maximum relative contrast change (±).
        hflip: probability of a horizontal flip (0 by default: see the module docstring).
    """

    rotate: float = 7.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.95, 1.05)
    crop: tuple[float, float] = (0.8, 1.0)
    brightness: float = 0.1
    contrast: float = 0.1
    hflip: float = 0.0


def _uniform(g: torch.Generator | None, n: int, lo: float, hi: float, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device="cpu").to(device) * (hi - lo) + lo


def augment_params(
    b: int, h: int, w: int, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw per-image augmentation parameters on the CPU from ``generator``.

    One affine matrix per image combines rotation, shift, zoom and the random resized crop (a crop
    of area fraction ``a`` and aspect 3/4..4/3 resized back to H×W), so the image is resampled once.

    Returns:
        (B, 2, 3) forward affine matrices in pixel coordinates (as ``cv2.warpAffine`` takes them),
        (B,) additive brightness, (B,) contrast factors.
    """
    g = generator

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, generator=g, dtype=torch.float64) * (hi - lo) + lo

    angle = torch.deg2rad(uniform(-cfg.rotate, cfg.rotate))
    zoom = uniform(*cfg.scale)
    area = uniform(*cfg.crop)
    ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    if cfg.crop == (1.0, 1.0):
        ratio = torch.ones(b, dtype=torch.float64)
    sx = zoom / torch.sqrt(area * ratio).clamp(max=1.0)  # crop width = sqrt(area * ratio)
    sy = zoom / torch.sqrt(area / ratio).clamp(max=1.0)
    max_tx = (1 - 1 / sx).clamp(min=0) / 2 + cfg.translate  # keep the crop inside the image
    max_ty = (1 - 1 / sy).clamp(min=0) / 2 + cfg.translate
    tx = uniform(-1, 1) * max_tx * w
    ty = uniform(-1, 1) * max_ty * h
    flip = torch.where(uniform(0, 1) < cfg.hflip, -1.0, 1.0).to(torch.float64)
    bright = uniform(-cfg.brightness, cfg.brightness)
    contrast = 1 + uniform(-cfg.contrast, cfg.contrast)
    cos, sin = torch.cos(angle), torch.sin(angle)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # M = T(c + t) · R · S · F · T(-c): flip and scale about the centre, rotate, shift
    a11, a12 = cos * sx * flip, -sin * sy
    a21, a22 = sin * sx * flip, cos * sy
    m = torch.stack(
        [
            torch.stack([a11, a12, cx + tx - a11 * cx - a12 * cy], 1),
            torch.stack([a21, a22, cy + ty - a21 * cx - a22 * cy], 1),
        ],
        1,
    )
    return m.float(), bright.float(), contrast.float()


def _photometric(x: torch.Tensor, bright: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (
        (x - mean) * contrast.view(b, 1, 1, 1).to(x) + mean + bright.view(b, 1, 1, 1).to(x)
    ).clamp(0, 1)


def augment(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment a float batch (B, 1, H, W) in [0, 1] with kornia's warp; parameters from ``generator``."""
    from kornia.geometry.transform import warp_affine

    b, _, h, w = x.shape
    m, bright, contrast = augment_params(b, h, w, cfg, generator)
    out = warp_affine(
        x, m.to(x.device), (h, w), mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return _photometric(out, bright, contrast)


def _augment_cv2(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The CPU twin of :func:`augment`'s warp on one float32 (H, W) image."""
    h, w = x.shape
    return cv2.warpAffine(
        x, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


class InputPipeline(torch.nn.Module):
    """uint8 (B, H, W) batch → normalised network input (B, C, H, W), on the batch's device.

    Args:
        mode: ``gray1``, ``gray3`` or ``enhanced``.
        augment: an :class:`AugmentConfig` for training, ``None`` for evaluation.
        clip_limit: CLAHE clip limit of the ``enhanced`` mode's third channel.
        mean, std: per-channel normalisation (ImageNet's by default; ``gray1`` uses their average).
        backend: ``auto`` (OpenCV on CPU batches, torch on GPU batches), ``torch`` or ``opencv``.
    """

    def __init__(
        self,
        mode: str = "enhanced",
        augment: AugmentConfig | None = None,
        clip_limit: float = 2.0,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.backend = backend
        if mode not in INPUT_MODES:
            from cxrkit.core.errors import CxrkitError

            raise CxrkitError(
                f"The 'input_mode' parameter must be one of {{{', '.join(INPUT_MODES)}}}. Got '{mode}' instead."
            )
        self.mode, self.aug, self.clip_limit = mode, augment, clip_limit
        channels = 1 if mode == "gray1" else 3
        if channels == 1:
            mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        self.register_buffer(
            "mean", torch.tensor(mean[:channels]).view(1, channels, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std[:channels]).view(1, channels, 1, 1), persistent=False
        )

    @property
    def channels(self) -> int:
        return 1 if self.mode == "gray1" else 3

    def forward(
        self, batch: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Args: batch (B, H, W) or (B, 1, H, W) uint8. Returns (B, C, H, W) float32.

        On a CPU batch the per-image work runs through OpenCV in a thread pool (``backend="auto"``:
        OpenCV is the reference and the fastest CPU path); on a GPU batch it is batched torch code.
        ``backend="torch"`` forces the torch path everywhere (the tests compare the two).
        """
        if batch.dim() == 4:
            batch = batch[:, 0]
        if batch.device.type == "cpu" and self.backend in ("auto", "opencv"):
            return self._forward_opencv(batch, generator)
        x = batch.float().div_(255).unsqueeze(1)  # (B, 1, H, W)
        if self.aug is not None:
            x = augment(x, self.aug, generator)
        if self.mode == "enhanced":
            he = equalize_hist(x[:, 0]).float().div_(255)
            cl = clahe(x[:, 0], self.clip_limit).float().div_(255)
            x = torch.stack([x[:, 0], he, cl], 1)
        elif self.mode == "gray3":
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) / self.std

    def _forward_opencv(
        self, batch: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """CPU path: per image in a thread pool, OpenCV augments, equalises and applies CLAHE, and
        a float look-up table (``cv2.LUT``) normalises each grey level in one pass."""
        b, h, w = batch.shape
        imgs = batch.contiguous().numpy()
        c = self.channels
        if self.aug is not None:
            m, bright, contrast = (t.numpy() for t in augment_params(b, h, w, self.aug, generator))
        out = torch.empty((b, c, h, w), dtype=torch.float32)
        arr = out.numpy()
        mean = self.mean.view(-1).cpu().numpy().astype(np.float64)
        std = self.std.view(-1).cpu().numpy().astype(np.float64)
        grey = np.arange(256, dtype=np.float64) / 255
        luts = [((grey - mean[k]) / std[k]).astype(np.float32) for k in range(c)]
        local = threading.local()  # a cv2.CLAHE object keeps buffers: one per thread

        def one(i: int) -> None:
            img = imgs[i]
            if self.aug is not None:
                f = _augment_cv2(img.astype(np.float32) * (1 / 255), m[i])
                mu = f.mean()
                f = np.clip((f - mu) * contrast[i] + mu + bright[i], 0, 1)
                img = np.round(f * 255).astype(np.uint8)
                for k in range(1 if self.mode == "enhanced" else c):  # channel 0 stays float
                    np.multiply(f, 1 / std[k], out=arr[i, k])
                    arr[i, k] -= mean[k] / std[k]
            else:
                for k in range(1 if self.mode == "enhanced" else c):
                    cv2.LUT(img, luts[k], dst=arr[i, k])
            if self.mode == "enhanced":
                if not hasattr(local, "clahe"):
                    local.clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(8, 8))
                cv2.LUT(cv2.equalizeHist(img), luts[1], dst=arr[i, 1])
                cv2.LUT(local.clahe.apply(img), luts[2], dst=arr[i, 2])

        pool = self._threads(b)
        if pool is None:
            for i in range(b):
                one(i)
        else:
            list(pool.map(one, range(b)))
        return out

    def _threads(self, b: int) -> ThreadPoolExecutor | None:
        n = max(1, min(torch.get_num_threads(), b))
        if n == 1:
            return None
        if getattr(self, "_pool", None) is None or self._pool._max_workers != n:
            self._pool = ThreadPoolExecutor(n, thread_name_prefix="cxrkit-inputs")
        return self._pool

    def __getstate__(self) -> dict:  # a thread pool does not pickle (DataLoader workers, DDP)
        state = dict(self.__dict__)
        state.pop("_pool", None)
        return state
