"""Grad-CAM, overlays and localisation scores: hand-built nets, tiny timm models, no network."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import timm
import torch
from torch import nn

from cxrkit.core.errors import CxrkitError
from cxrkit.data.imaging import resize_square
from cxrkit.use.explain import (
    GradCAM,
    box_iou,
    box_mask,
    group_boxes,
    heatmap_to_image,
    localization_scores,
    map_box,
    overlay,
    pointing_game,
    read_box_table,
    resolve_layer,
    save_overlay,
    target_layer,
)


def _seeded(build, seed: int = 0):
    """Build a module under a fixed seed without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def _x(b: int = 2, c: int = 3, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed))


def _minmax(a: np.ndarray) -> np.ndarray:
    span = a.max() - a.min()
    return (a - a.min()) / span if span > 0 else np.zeros_like(a)


# ---- hand-built networks -------------------------------------------------------------------------


class Readout(nn.Module):
    """features = conv(x); logit_o = Σ_k,ij V[o, k, i, j] · features[k, i, j].

    The gradient of logit_o with respect to the features is V[o] whatever the input, so the
    expected Grad-CAM and Grad-CAM++ maps follow by hand.
    """

    def __init__(self, conv: nn.Conv2d, v: np.ndarray) -> None:
        super().__init__()
        self.features = conv
        self.register_buffer("v", torch.tensor(v, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)  # (B, K, h, w)
        return torch.einsum("bkhw,okhw->bo", a, self.v)  # (B, O) logits


def _identity_conv(k: int = 2) -> nn.Conv2d:
    conv = nn.Conv2d(k, k, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(k).view(k, k, 1, 1))
    return conv


A = np.array(  # (K=2, 4, 4) the input, passed through unchanged as the feature map
    [
        [[1, 2, 0, 0], [3, 4, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]],
        [[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 5, 6], [0, 0, 7, 8]],
    ],
    np.float32,
)


def _hand_gradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    weights = g.mean(axis=(1, 2))
    return _minmax(np.maximum((weights[:, None, None] * a).sum(0), 0))


def _hand_gradcampp(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = np.zeros(a.shape[1:])
    for k in range(a.shape[0]):
        num = g[k] ** 2
        den = 2 * g[k] ** 2 + a[k].sum() * g[k] ** 3
        alpha = np.where(den != 0, num / np.where(den != 0, den, 1), 0)
        alpha = alpha / alpha.sum() if alpha.sum() else alpha
        out += (alpha * np.maximum(g[k], 0)).sum() * a[k]
    return _minmax(np.maximum(out, 0))


def test_gradcam_matches_hand_computation():
    v = np.zeros((1, 2, 4, 4), np.float32)
    v[0, 0] = 1.0 / 16  # logit = mean(A0) - 0.5·mean(A1): a GAP + linear head
    v[0, 1] = -0.5 / 16
    cam = GradCAM(Readout(_identity_conv(), v), layer="features")(torch.tensor(A)[None], 0)
    # by hand: weights (1/16, -1/32); map ∝ relu(A0 - A1/2)
    expected = _minmax(np.maximum(A[0] - A[1] / 2, 0))
    assert cam.shape == (1, 4, 4) and cam.dtype == np.float32
    np.testing.assert_allclose(cam[0], expected, atol=1e-6)
    np.testing.assert_allclose(cam[0], _hand_gradcam(A, v[0]), atol=1e-6)


def test_gradcam_pp_matches_hand_computation_with_spatial_gradients():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(1, 2, 4, 4)).astype(np.float32)
    model = Readout(_identity_conv(), v)
    for method, hand in (("gradcam", _hand_gradcam), ("gradcam++", _hand_gradcampp)):
        cam = GradCAM(model, layer="features", method=method)(torch.tensor(A)[None], 0)
        np.testing.assert_allclose(cam[0], hand(A, v[0]), atol=1e-5, err_msg=method)


def test_gradcam_pp_equals_gradcam_for_pooled_positive_weights_and_drops_negative_channels():
    v = np.zeros((2, 2, 4, 4), np.float32)
    v[0, 0], v[0, 1] = 0.3, 0.1  # constant, positive gradients: the pooled-linear head of a CNN
    v[1, 0], v[1, 1] = 0.3, -0.1  # channel 1 counts against finding 1
    model = Readout(_identity_conv(), v)
    x = torch.tensor(A)[None]
    plain, pp = GradCAM(model, "features"), GradCAM(model, "features", method="gradcam++")
    np.testing.assert_allclose(pp(x, 0), plain(x, 0), atol=1e-6)
    # Grad-CAM subtracts channel 1; Grad-CAM++ keeps only positive gradients: A0 alone
    np.testing.assert_allclose(plain(x, 1)[0], _minmax(np.maximum(3 * A[0] - A[1], 0)), atol=1e-6)
    np.testing.assert_allclose(pp(x, 1)[0], _minmax(A[0]), atol=1e-6)


def test_upsampling_is_bilinear_to_the_input_size():
    conv = nn.Conv2d(1, 1, 2, stride=2, bias=False)  # 2×2 mean: an 8×8 input gives a 4×4 map
    with torch.no_grad():
        conv.weight.fill_(0.25)
    x = torch.tensor(np.kron(A[:1], np.ones((2, 2), np.float32)))[None]  # (1, 1, 8, 8)
    v = np.full((1, 1, 4, 4), 1.0, np.float32)
    cam = GradCAM(Readout(conv, v), "features")(x, 0)
    expected = _minmax(cv2.resize(A[0], (8, 8), interpolation=cv2.INTER_LINEAR))
    assert cam.shape == (1, 8, 8)
    np.testing.assert_allclose(cam[0], expected, atol=1e-5)


def test_all_negative_evidence_gives_zero_map_not_nan():
    v = np.full((1, 2, 4, 4), -1.0, np.float32)
    cam = GradCAM(Readout(_identity_conv(), v), "features")(torch.tensor(A)[None], 0)
    assert np.isfinite(cam).all() and (cam == 0).all()


def test_multiclass_target_is_positive_minus_negative_logit():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6, 2, 4, 4)).astype(np.float32)  # 2 findings × (neg, pos, uncertain)
    diff = np.stack([v[3 * i + 1] - v[3 * i] for i in range(2)])  # l_pos − l_neg per finding
    x = torch.tensor(A)[None]
    for method in ("gradcam", "gradcam++"):
        multi = GradCAM(Readout(_identity_conv(), v), "features", "multiclass", method)
        single = GradCAM(Readout(_identity_conv(), diff), "features", "sigmoid", method)
        for i in range(2):
            np.testing.assert_allclose(multi(x, i), single(x, i), atol=1e-5)
    with pytest.raises(CxrkitError, match="out of range"):
        multi(x, 2)


def test_bad_arguments_are_one_line_errors():
    model = Readout(_identity_conv(), np.ones((1, 2, 4, 4), np.float32))
    with pytest.raises(CxrkitError, match="must be one of"):
        GradCAM(model, "features", method="gradcam+")
    with pytest.raises(CxrkitError, match="model output must be one of"):
        GradCAM(model, "features", output="softmax")
    with pytest.raises(CxrkitError, match="out of range"):
        GradCAM(model, "features")(torch.tensor(A)[None], 1)
    with pytest.raises(CxrkitError, match="not a multiple of 3"):
        GradCAM(model, "features", output="multiclass")(torch.tensor(A)[None], 0)


class DeadBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.unused = nn.Conv2d(1, 2, 1), nn.Conv2d(1, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.unused(x)
        return self.used(x).mean(dim=(2, 3))


def test_a_layer_the_logits_do_not_use_is_an_error():
    with pytest.raises(CxrkitError, match="do not depend on target layer 'unused'"):
        GradCAM(DeadBranch(), "unused")(_x(1, c=1, size=8), 0)


# ---- a model that learnt something ---------------------------------------------------------------


def _squares(n: int, g: torch.Generator, size: int = 32, side: int = 6):
    """Noise images; the even ones get a bright square. Returns x, y, boxes (x, y, w, h)."""
    x = torch.randn(n, 1, size, size, generator=g) * 0.3
    y = torch.zeros(n, 1)
    boxes = []
    for i in range(n):
        r, c = torch.randint(0, size - side, (2,), generator=g).tolist()
        if i % 2 == 0:
            x[i, 0, r : r + side, c : c + side] += 1.5
            y[i] = 1
        boxes.append((c, r, side, side))
    return x, y, boxes


def test_trained_detector_points_at_the_planted_square():
    net = _seeded(
        lambda: nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 1),
        )
    )
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):  # a fraction of a second on CPU
        x, y, _ = _squares(32, g)
        loss = nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y, boxes = _squares(40, torch.Generator().manual_seed(2))
    pos = [i for i in range(40) if y[i] == 1]
    for method in ("gradcam", "gradcam++"):
        cam = GradCAM(net, method=method)
        maps = cam(x[pos], 0)
        assert cam.layer_name == "6"  # the last ReLU, found by the probing pass
        records = [
            {"finding": "Square", "heatmap": m, "boxes": [boxes[i]]}
            for m, i in zip(maps, pos, strict=True)
        ]
        scores = localization_scores(records, tolerance=0)["overall"]
        assert scores["n"] == 20
        assert scores["hit_rate"] >= 0.9, (method, scores)
        assert scores["mean_iou"] >= 0.5, (method, scores)


# ---- timm networks and the target layer ----------------------------------------------------------


@pytest.mark.parametrize(
    "arch,layer",
    [
        ("test_resnet", "layer4"),
        ("test_efficientnet", "bn2"),
        ("test_convnext", "stages.3"),
        ("resnet18", "layer4"),
    ],
)
def test_target_layer_per_family(arch: str, layer: str):
    model = timm.create_model(arch, num_classes=3)
    name, module = resolve_layer(model)
    assert name == layer and target_layer(model) is module
    cam = GradCAM(model)
    assert cam.layer_name == layer
    maps = cam(_x(), 1)
    assert maps.shape == (2, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_generic_probe_agrees_with_the_family_rule_for_resnet():
    from cxrkit.use.explain import _probe_layer

    model = timm.create_model("resnet18", num_classes=2)
    assert _probe_layer(model, _x(1)) == "layer4"
    assert model.training  # probing leaves the mode as it was


def test_densenet_uses_norm5_the_map_the_classifier_pools():
    # at 64 px DenseNet-121's last map is 2×2
    model = timm.create_model("densenet121", num_classes=2).eval()
    assert resolve_layer(model)[0] == "features.norm5"
    seen = {}
    hooks = [
        model.features.norm5.register_forward_hook(lambda m, i, o: seen.update(norm5=o)),
        model.features.denseblock4.register_forward_hook(lambda m, i, o: seen.update(block=o)),
    ]
    with torch.no_grad():
        model(_x(1))
    for h in hooks:
        h.remove()
    assert seen["norm5"].shape[2:] == (2, 2) and seen["block"].shape[2:] == (2, 2)
    assert seen["norm5"].min() >= 0  # BN + ReLU: what global pooling and the classifier see
    assert seen["block"].min() < 0  # before them
    # Grad-CAM at norm5 of a pooled-linear head is exactly CAM (Zhou et al. 2016): Σ_k w_k A_k
    a = seen["norm5"][0].numpy()
    w = model.classifier.weight.detach()[1].numpy()
    small = np.maximum(np.einsum("k,khw->hw", w, a), 0)
    expected = _minmax(cv2.resize(small, (64, 64), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_allclose(GradCAM(model)(_x(1), 1)[0], expected, atol=1e-4)


def test_layer_override_and_did_you_mean():
    model = timm.create_model("test_resnet", num_classes=2)
    cam = GradCAM(model, layer="layer3")
    assert cam.layer_name == "layer3"
    assert cam(_x(1), 0).shape == (1, 64, 64)
    assert GradCAM(model, layer=model.layer2).layer_name == "layer2"
    with pytest.raises(CxrkitError, match="did you mean 'layer3'") as e:
        GradCAM(model, layer="layer_3")
    assert "\n" not in str(e.value)
    with pytest.raises(CxrkitError, match="not a sub-module"):
        GradCAM(model, layer=nn.Conv2d(1, 1, 1))


def test_networks_without_a_spatial_layer():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(CxrkitError, match="no layer with a spatial"):
        GradCAM(mlp)(_x(1, size=8), 0)
    broken = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(5, 2))
    with pytest.raises(CxrkitError, match="probing forward pass"):
        target_layer(broken)


def test_transformer_patch_embedding_is_flagged(caplog):
    model = timm.create_model("test_vit", num_classes=2, img_size=64)
    with caplog.at_level(logging.WARNING, logger="cxrkit.use.explain"):
        name, _ = resolve_layer(model, example=_x(1))
    assert name == "patch_embed.proj"  # the one spatial map a ViT has
    assert "shows little of the decision" in caplog.text


def test_hooks_removed_mode_eval_and_parameters_untouched():
    model = timm.create_model("test_resnet", num_classes=2).train()
    next(model.parameters()).requires_grad_(False)  # a frozen stem
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    cam = GradCAM(model)
    cam(_x(1), 0)
    assert not model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    with pytest.raises(RuntimeError):  # 1 channel into a 3-channel stem
        cam(_x(1, c=1), 0)
    assert all(not m._forward_hooks for m in model.modules())


def test_channels_last_and_no_grad_callers_get_the_same_map():
    model = timm.create_model("test_efficientnet", num_classes=2)
    x = _x()
    reference = GradCAM(model)(x, 0)
    cl_model = timm.create_model("test_efficientnet", num_classes=2)
    cl_model.load_state_dict(model.state_dict())
    cl_model = cl_model.to(memory_format=torch.channels_last)
    # channels_last convolutions sum in another order: maps in [0, 1] agree to float32 noise
    np.testing.assert_allclose(
        GradCAM(cl_model)(x.to(memory_format=torch.channels_last), 0), reference, atol=1e-4
    )
    with torch.no_grad():
        np.testing.assert_allclose(GradCAM(model)(x, 0), reference, atol=1e-6)
    with torch.inference_mode():
        np.testing.assert_allclose(GradCAM(model)(x, 0), reference, atol=1e-6)


def test_concurrent_calls_and_plain_predictions_do_not_mix():
    model = timm.create_model("test_resnet", num_classes=3)
    cam = GradCAM(model)
    inputs = [_x(1, seed=s) for s in range(3)]
    expected = [cam(x, s) for s, x in enumerate(inputs)]
    errors: list[BaseException] = []

    def explain(s: int) -> None:
        try:
            for _ in range(5):
                np.testing.assert_allclose(cam(inputs[s], s), expected[s], atol=1e-6)
        except BaseException as e:  # collected for the main thread
            errors.append(e)

    def predict() -> None:
        with torch.no_grad():
            for _ in range(10):
                model(_x(2, seed=9))  # a plain forward through the hooked layer

    threads = [threading.Thread(target=explain, args=(s,)) for s in range(3)]
    threads.append(threading.Thread(target=predict))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert all(not m._forward_hooks for m in model.modules())


# ---- overlays ------------------------------------------------------------------------------------


def test_overlay_blends_a_resized_colormap():
    gray = np.tile(np.arange(40, dtype=np.uint8) * 5, (30, 1))  # (30, 40)
    heat = np.zeros((8, 8), np.float32)
    heat[:, 4:] = 1.0
    out = overlay(gray, heat, alpha=0.0)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    assert (out == gray[:, :, None]).all()
    full = overlay(gray, heat, alpha=1.0, colormap="jet")
    assert tuple(full[15, 39]) == (128, 0, 0)  # jet's top is dark red, in RGB order
    assert tuple(full[15, 0]) == (0, 0, 128)  # and its bottom dark blue
    with pytest.raises(CxrkitError, match="did you mean 'turbo'"):
        overlay(gray, heat, colormap="turbp")


def test_save_overlay_writes_a_png_atomically(tmp_path: Path):
    gray = np.full((20, 30), 100, np.uint8)
    heat = np.linspace(0, 1, 20 * 30, dtype=np.float32).reshape(20, 30)
    path = save_overlay(tmp_path / "out" / "cam.png", gray, heat, alpha=0.5, colormap="inferno")
    back = cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(back, overlay(gray, heat, 0.5, "inferno"))
    assert [p.name for p in path.parent.iterdir()] == ["cam.png"]  # no temp file left
    with pytest.raises(CxrkitError, match="PNG"):
        save_overlay(tmp_path / "cam.jpg", gray, heat)


# ---- boxes: geometry ----------------------------------------------------------------------------


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
@pytest.mark.parametrize(
    "hw,box,size",
    [
        ((300, 200), (40, 90, 100, 60), 64),  # portrait, shrink
        ((180, 320), (200, 30, 70, 100), 64),  # landscape, shrink
        ((100, 100), (10, 20, 30, 40), 64),  # square
        ((40, 60), (12, 8, 20, 16), 96),  # landscape, enlarge
    ],
)
def test_map_box_follows_resize_square(hw, box, size, fit):
    img = np.zeros(hw, np.uint8)
    x, y, w, h = box
    img[y : y + h, x : x + w] = 255
    small = resize_square(img, size, fit)
    rows, cols = np.nonzero(small >= 128)
    found = np.array(
        [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]
    )
    np.testing.assert_allclose(map_box(box, hw, size, fit), found, atol=1.0)
    # and the box's pixels are where the bright pixels are
    mask = box_mask(map_box(box, hw, size, fit), (size, size))
    assert (mask == (small >= 128)).mean() > 0.98


def test_map_box_crop_outside_and_batches():
    boxes = np.array([[0, 0, 20, 10], [40, 90, 100, 60]], float)  # first one in the cropped band
    out = map_box(boxes, (300, 200), 64, "crop")
    assert out.shape == (2, 4)
    assert out[0, 3] == 0  # nothing of it is left
    with pytest.raises(CxrkitError, match="did you mean 'pad'"):
        map_box(boxes, (300, 200), 64, "padd")


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_heatmap_to_image_inverts_the_fit(fit):
    hw, box, size = (300, 200), (40, 90, 100, 60), 64
    small = map_box(box, hw, size, fit)
    heat = box_mask(small, (size, size)).astype(np.float32)
    back = heatmap_to_image(heat, hw, fit)
    assert back.shape == hw
    rows, cols = np.nonzero(back >= 0.5)
    found = (cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min())
    np.testing.assert_allclose(found, box, atol=300 / size + 1)


# ---- localisation scores -------------------------------------------------------------------------


def test_box_mask_uses_pixel_centres():
    m = box_mask([(1.4, 0.6, 2.0, 1.0)], (4, 5))  # x ∈ [1.4, 3.4): centres 1.5, 2.5; y: 0.6–1.6
    expected = np.zeros((4, 5), bool)
    expected[1, 1:3] = True
    np.testing.assert_array_equal(m, expected)
    tiny = box_mask([(2.6, 2.6, 0.2, 0.2)], (4, 5))  # covers no centre: keeps its own pixel
    assert tiny.sum() == 1 and tiny[2, 2]


def test_pointing_game_hit_miss_tolerance_and_flat_maps():
    heat = np.zeros((20, 20), np.float32)
    heat[10, 10] = 1.0  # peak at pixel centre (10.5, 10.5)
    assert pointing_game(heat, [(8, 8, 4, 4)], tolerance=0)
    assert not pointing_game(heat, [(0, 0, 5, 5), (14, 10, 3, 3)], tolerance=3.0)  # 3.5 px away
    assert pointing_game(heat, [(0, 0, 5, 5), (14, 10, 3, 3)], tolerance=3.5)
    assert pointing_game(np.pad(heat, ((0, 1004), (0, 1004))), [(14, 10, 3, 3)])  # 15 px at 1024
    assert not pointing_game(np.zeros((20, 20)), [(0, 0, 20, 20)])  # no maximum: a miss
    plateau = np.zeros((20, 20), np.float32)
    plateau[2:8, 12:18] = 1.0  # centre (15, 5)
    assert pointing_game(plateau, [(14.5, 4.5, 1, 1)], tolerance=0)
    with pytest.raises(ValueError, match="no box with a positive area"):
        pointing_game(heat, [])
    with pytest.raises(ValueError, match="no box with a positive area"):
        pointing_game(heat, [(19.5, 0, 0, 20)])  # cut away by crop: not a target at the border
    assert not box_mask([], (4, 4)).any()


def test_box_iou_by_hand():
    heat = np.zeros((10, 10), np.float32)
    heat[0:4, 0:4] = 0.8  # ≥ 0.5 × max
    heat[0:4, 4:6] = 0.3  # below
    heat[9, 9] = 1.0  # the maximum, outside the box
    # predicted 16 + 1 pixels, box 4×6 = 24 pixels at (0, 0); intersection 16
    assert box_iou(heat, [(0, 0, 6, 4)]) == pytest.approx(16 / (17 + 24 - 16))
    assert box_iou(heat, [(0, 0, 6, 4)], threshold=0.2) == pytest.approx(24 / 25)
    assert box_iou(np.zeros((10, 10)), [(0, 0, 6, 4)]) == 0.0
    with pytest.raises(CxrkitError, match="threshold"):
        box_iou(heat, [(0, 0, 6, 4)], threshold=0)


def test_localization_scores_aggregate():
    heat = np.zeros((10, 10), np.float32)
    heat[2:4, 2:4] = 1.0
    records = [
        {"finding": "Nodule", "heatmap": heat, "boxes": [(2, 2, 2, 2)]},  # hit, IoU 1
        {"finding": "Nodule", "heatmap": heat, "boxes": [(6, 6, 2, 2)]},  # miss, IoU 0
        {"finding": "Mass", "hit": True, "iou": 0.5},
    ]
    s = localization_scores(iter(records), tolerance=0)
    assert list(s["findings"]) == ["Mass", "Nodule"]
    assert s["findings"]["Nodule"] == {"n": 2, "hits": 1, "hit_rate": 0.5, "mean_iou": 0.5}
    assert s["overall"]["n"] == 3 and s["overall"]["hit_rate"] == pytest.approx(2 / 3)
    assert s["overall"]["mean_iou"] == pytest.approx(0.5)
    assert s["overall"]["macro_hit_rate"] == pytest.approx(0.75)
    assert s["tolerance_px"] == 0 and s["tolerance_fraction"] is None
    frame = pd.DataFrame([{"finding": "Mass", "hit": False, "iou": 0.0}])
    assert localization_scores(frame)["overall"]["hit_rate"] == 0.0
    empty = localization_scores([])
    assert empty["overall"]["n"] == 0 and empty["overall"]["hit_rate"] is None
    assert empty["tolerance_px"] is None and empty["tolerance_fraction"] == 15 / 1024
    with pytest.raises(ValueError, match="needs 'heatmap'"):
        localization_scores([{"finding": "Mass"}])


# ---- box tables ----------------------------------------------------------------------------------


def test_read_box_table_nih_format(tmp_path: Path):
    csv = tmp_path / "BBox_List_2017.csv"
    csv.write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00013118_008.png,Atelectasis,225.08,547.01,86.77,79.18,,,\n"
        "00014716_007.png,Infiltrate,686.10,272.94,105.86,175.77,,,\n"
        "00014716_007.png,Effusion,10,20,30,40,,,\n"
        "00014716_007.png,Effusion,50,60,30,40,,,\n"
    )
    t = read_box_table(csv)
    assert list(t.columns) == ["path", "finding", "x", "y", "w", "h"]
    assert t["path"].tolist()[:2] == ["00013118_008.png", "00014716_007.png"]
    assert t["finding"].tolist()[1:3] == ["Infiltration", "Pleural Effusion"]
    assert t["x"].iloc[0] == pytest.approx(225.08)
    grouped = group_boxes(t)
    assert grouped["00014716_007.png"]["Pleural Effusion"].shape == (2, 4)
    # with the dataset folder, names resolve to where the images are, as the NIH index stores them
    (tmp_path / "images_001" / "images").mkdir(parents=True)
    (tmp_path / "images_001" / "images" / "00013118_008.png").write_bytes(b"")
    assert (
        read_box_table(csv, root=tmp_path)["path"].iloc[0] == "images_001/images/00013118_008.png"
    )
    with pytest.raises(CxrkitError, match="does not exist"):
        read_box_table(tmp_path / "nope.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\na.png,Cardiomegly,1,2,3,4\n")
    with pytest.raises(CxrkitError, match="did you mean 'Cardiomegaly'"):
        read_box_table(bad)


def test_localization_loop_on_a_synthetic_nih_dataset(tmp_path: Path):
    """The loop docs/explain.md gives, end to end: artifact, box table, maps, scores."""
    from cxrkit.core.findings import FINDING_SETS
    from cxrkit.data.adapters.nih import index_nih
    from cxrkit.data.imaging import read_image, to_uint8
    from cxrkit.data.inputs import InputPipeline
    from cxrkit.model.artifact import load_artifact, save_artifact
    from cxrkit.model.networks import create_model
    from cxrkit.synthetic.layouts import generate

    root = generate("nih", tmp_path / "data", n=20, size=80, seed=0, workers=1)
    labels = list(FINDING_SETS["nih"])
    net = _seeded(lambda: create_model("test_resnet", num_classes=len(labels), input_mode="gray3"))
    save_artifact(
        net, tmp_path / "model", arch="test_resnet", findings=labels, input_mode="gray3",
        image_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), fit="crop",
    )  # fmt: skip
    model, meta = load_artifact(tmp_path / "model")
    size = meta.image_size[0]
    pipe = InputPipeline(meta.input_mode, clip_limit=meta.clip_limit, mean=meta.mean, std=meta.std)
    cam = GradCAM(model, output=meta.output)
    table = read_box_table(root / "BBox_List_2017.csv", root=root)
    assert len(table) and set(table["path"]) <= set(index_nih(root).frame["path"])
    boxes = group_boxes(table)
    expected = 0

    def records():
        nonlocal expected
        for path, by_finding in boxes.items():
            img = to_uint8(read_image(root / path))
            x = pipe(torch.from_numpy(resize_square(img, size, meta.fit))[None])
            for finding, b in by_finding.items():
                small = map_box(b, img.shape, size, meta.fit)
                if finding in meta.labels and (small[:, 2] * small[:, 3] > 0).any():
                    heat = cam(x, meta.labels.index(finding))[0]
                    expected += 1
                    yield {
                        "finding": finding,
                        "hit": pointing_game(heat, small),
                        "iou": box_iou(heat, small),
                    }

    scores = localization_scores(records())
    assert scores["overall"]["n"] == expected > 0
    assert set(scores["findings"]) <= set(labels)
    assert 0 <= scores["overall"]["hit_rate"] <= 1 and 0 <= scores["overall"]["mean_iou"] <= 1


@pytest.mark.realdata
def test_read_the_real_nih_box_list(shared_data: Path):
    path = shared_data / "labels" / "nih" / "BBox_List_2017.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    table = read_box_table(path)
    assert len(table) == 984 and table["path"].nunique() == 880
    assert set(table["finding"]) == {
        "Atelectasis",
        "Cardiomegaly",
        "Pleural Effusion",
        "Infiltration",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
    }
    mapped = map_box(table[["x", "y", "w", "h"]].to_numpy(), (1024, 1024), 224, "pad")
    assert (mapped[:, 2:] > 0).all() and (mapped[:, :2] + mapped[:, 2:] <= 224 + 1e-9).all()
