"""Input modes against OpenCV, augmentation determinism and geometry."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from cxrkit.core.errors import CxrkitError
from cxrkit.data.inputs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    InputPipeline,
    augment,
    clahe,
    equalize_hist,
)


def film_batch(b: int = 6, h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth, film-like uint8 images with uneven histograms (and one flat one)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    out = []
    for _i in range(b):
        img = 90 + 60 * np.sin(xx * rng.uniform(2, 9) + rng.uniform(0, 3)) * np.cos(
            yy * rng.uniform(1, 6)
        )
        img += rng.normal(0, rng.uniform(2, 20), (h, w))
        out.append(np.clip(img * rng.uniform(0.3, 1.2), 0, 255).astype(np.uint8))
    out[-1][:] = 77  # a flat image
    return np.stack(out)


@pytest.mark.parametrize("shape", [(64, 64), (50, 70), (224, 224)])
def test_equalize_hist_matches_opencv(shape):
    x = film_batch(5, *shape)
    got = equalize_hist(torch.from_numpy(x)).numpy()
    want = np.stack([cv2.equalizeHist(i) for i in x])
    assert np.abs(got.astype(int) - want).max() <= 1
    assert (got == want).mean() > 0.999


@pytest.mark.parametrize(
    ("shape", "clip"), [((64, 64), 2.0), ((224, 224), 2.0), ((224, 224), 4.0), ((50, 70), 2.0)]
)
def test_clahe_matches_opencv(shape, clip):
    x = film_batch(5, *shape, seed=1)
    got = clahe(torch.from_numpy(x), clip_limit=clip).numpy().astype(int)
    ref = cv2.createCLAHE(clipLimit=clip, tileGridSize=(8, 8))
    want = np.stack([ref.apply(i) for i in x]).astype(int)
    diff = np.abs(got - want)
    assert diff.max() <= 1, diff.max()
    assert diff.mean() < 0.01
    assert not np.array_equal(got, x)  # it did something


def test_enhanced_mode_channels():
    x = torch.from_numpy(film_batch(4))
    pipe = InputPipeline("enhanced", mean=(0, 0, 0), std=(1, 1, 1))
    y = pipe(x)
    assert y.shape == (4, 3, 64, 64) and y.dtype == torch.float32
    np.testing.assert_allclose(y[:, 0].numpy(), x.numpy() / 255, atol=1e-6)
    he = np.stack([cv2.equalizeHist(i) for i in x.numpy()]) / 255
    assert np.abs(y[:, 1].numpy() - he).max() <= 1 / 255 + 1e-6
    cl = np.stack([cv2.createCLAHE(2.0, (8, 8)).apply(i) for i in x.numpy()]) / 255
    assert np.abs(y[:, 2].numpy() - cl).max() <= 1 / 255 + 1e-6


def test_gray_modes_and_normalisation():
    x = torch.from_numpy(film_batch(3))
    g3 = InputPipeline("gray3")(x)
    g1 = InputPipeline("gray1")(x[:, None])  # (B, 1, H, W) input accepted too
    assert g3.shape == (3, 3, 64, 64) and g1.shape == (3, 1, 64, 64)
    raw = x.float() / 255
    np.testing.assert_allclose(g3[:, 0].numpy(), ((raw - 0.485) / 0.229).numpy(), atol=1e-5)
    m, s = sum(IMAGENET_MEAN) / 3, sum(IMAGENET_STD) / 3
    np.testing.assert_allclose(g1[:, 0].numpy(), ((raw - m) / s).numpy(), atol=1e-5)
    with pytest.raises(CxrkitError, match="must be one of"):
        InputPipeline("rgb")


def test_augment_is_seeded_and_varies_per_image():
    x = torch.from_numpy(film_batch(4)).float().div(255)[:, None]
    x = x[:1].expand(4, -1, -1, -1).contiguous()  # four copies of one image
    cfg = AugmentConfig()
    a = augment(x, cfg, torch.Generator().manual_seed(1))
    b = augment(x, cfg, torch.Generator().manual_seed(1))
    c = augment(x, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.allclose(a[0], a[1])  # each image gets its own draw
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_augment_identity_and_no_flip_by_default():
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 2:10] = 1.0  # a bright block on the image's left
    ident = AugmentConfig(
        rotate=0, translate=0, scale=(1, 1), crop=(1, 1), brightness=0, contrast=0
    )
    np.testing.assert_allclose(augment(x, ident).numpy(), x.numpy(), atol=1e-5)
    small = AugmentConfig(
        rotate=3, translate=0.02, scale=(0.98, 1.02), crop=(1, 1), brightness=0, contrast=0
    )
    g = torch.Generator().manual_seed(0)
    out = augment(x.expand(64, -1, -1, -1), small, g)
    left, right = out[..., :16].sum(dim=(1, 2, 3)), out[..., 16:].sum(dim=(1, 2, 3))
    assert (left > right).all()  # never mirrored
    flipped = augment(
        x, AugmentConfig(**{**small.__dict__, "hflip": 1.0}), torch.Generator().manual_seed(0)
    )
    assert flipped[..., 16:].sum() > flipped[..., :16].sum()


def test_pipeline_augments_only_when_configured():
    x = torch.from_numpy(film_batch(2))
    plain = InputPipeline("gray3")
    assert torch.equal(plain(x), plain(x))
    aug = InputPipeline("gray3", augment=AugmentConfig())
    assert not torch.equal(aug(x, torch.Generator().manual_seed(0)), plain(x))


@pytest.mark.parametrize("mode", ["gray1", "gray3", "enhanced"])
def test_torch_and_opencv_backends_agree(mode):
    x = torch.from_numpy(film_batch(4, 96, 96, seed=3))
    a = InputPipeline(mode, backend="torch")(x)
    b = InputPipeline(mode, backend="opencv")(x)
    assert a.shape == b.shape
    assert (a - b).abs().max() < 1.01 / 255 / 0.224  # at most one grey level apart


def test_backends_agree_under_augmentation():
    x = torch.from_numpy(film_batch(4, 96, 96, seed=4))
    cfg = AugmentConfig()
    a = InputPipeline("enhanced", augment=cfg, backend="torch")(x, torch.Generator().manual_seed(5))
    b = InputPipeline("enhanced", augment=cfg, backend="opencv")(
        x, torch.Generator().manual_seed(5)
    )
    diff = (a - b).abs()
    # same parameters, two warping libraries: equal but for interpolation at the odd pixel
    assert diff[:, 0].mean() < 0.02 and diff.mean() < 0.05
    assert torch.corrcoef(torch.stack([a[:, 0].flatten(), b[:, 0].flatten()]))[0, 1] > 0.99
