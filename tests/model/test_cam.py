"""Grad-CAM and Grad-CAM++ on torch networks: hand-built nets, tiny timm models, no network."""

from __future__ import annotations

import logging
import threading

import cv2
import numpy as np
import pytest
import timm
import torch
from torch import nn

from cxrkit.core.errors import CxrkitError
from cxrkit.evaluate.localization import localization_scores
from cxrkit.model.cam import (
    GradCAM,
    _probe_layer,
    resolve_layer,
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


# ---- a loaded artifact, an ensemble's included ----------------------------------------------------


def test_artifact_cam_of_an_ensemble_is_the_weighted_mean_of_its_members(tmp_path):
    from conftest import tiny_artifact
    from cxrkit.model.artifact import build_pipeline, load_artifact
    from cxrkit.model.cam import ArtifactCAM
    from cxrkit.model.ensemble import make_ensemble

    labels = ("Cardiomegaly", "Edema")
    a = tiny_artifact(tmp_path / "a", labels, seed=0)
    b = tiny_artifact(tmp_path / "b", labels[::-1], input_mode="gray3", seed=1, head_scale=4.0)
    small = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)

    def member_map(folder, finding):
        model, meta = load_artifact(folder)
        cam = ArtifactCAM(model, meta)
        assert cam.cam is not None and not cam.members  # a plain network: one GradCAM
        x = build_pipeline(meta, backend="torch")(torch.from_numpy(small)[None])  # as members'
        j = list(meta.labels).index(finding)
        heat = cam(small, x, j)
        np.testing.assert_array_equal(heat, GradCAM(model, output=meta.output)(x, j)[0])
        return heat

    model, meta = load_artifact(make_ensemble([a, b], tmp_path / "ens", weights=[1, 3]))
    cam = ArtifactCAM(model, meta, method="gradcam++")
    assert cam.cam is None and len(cam.members) == 2 and cam.method == "gradcam++"
    cam = ArtifactCAM(model, meta)
    x = build_pipeline(meta)(torch.from_numpy(small)[None])
    for j, finding in enumerate(labels):
        total = 0.25 * member_map(a, finding) + 0.75 * member_map(b, finding)
        expected = total / total.max() if total.max() > 0 else total
        got = cam(small, x, j)
        assert got.dtype == np.float32 and got.shape == (48, 48)
        np.testing.assert_allclose(got, expected, atol=1e-5)
