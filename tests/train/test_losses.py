"""Losses against hand computations in numpy, masking, gradients and a toy training run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxrkit.core.errors import CxrkitError
from cxrkit.train.losses import (
    AUCMarginLoss,
    FocalLoss,
    MulticlassUncertaintyLoss,
    WeightedBCE,
    build_loss,
    class_weights,
)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def batch(seed: int = 0, b: int = 6, n: int = 3, classes: int | None = None):
    """Random logits (B, L[, 3]), hard 0/1 (or 0/1/2) targets and a mask with both values."""
    g = torch.Generator().manual_seed(seed)
    shape = (b, n) if classes is None else (b, n, classes)
    logits = torch.randn(shape, generator=g, dtype=torch.float64)
    high = 2 if classes is None else classes
    y = torch.randint(0, high, (b, n), generator=g).double()
    mask = torch.rand((b, n), generator=g) > 0.35
    mask[0, 0], mask[1, 1] = False, True
    return logits, y, mask


def all_losses(n: int = 3):
    w_pos, w_neg = torch.tensor([0.9, 0.7, 0.4]), torch.tensor([0.1, 0.3, 0.6])
    return {
        "bce": (WeightedBCE(), None),
        "weighted_bce": (WeightedBCE(w_pos, w_neg), None),
        "focal": (FocalLoss(gamma=2.0, alpha=0.25), None),
        "auc_margin": (AUCMarginLoss(margin=1.0, num_labels=n, imratio=0.3), None),
        "multiclass": (MulticlassUncertaintyLoss(), 3),
    }


# ---- class weights ---------------------------------------------------------------------------
def test_class_weights_follow_chexnet_not_the_thesis():
    # soft values count by their side of 0.5; the masked entry of finding 0 is not counted
    y = np.array([[1, 0], [0, 1], [0, 1], [0.3, 0.7], [1, 0]], np.float32)
    mask = np.array([[1, 1], [1, 1], [1, 1], [1, 1], [0, 1]], bool)
    w_pos, w_neg = class_weights(y, mask)
    # finding 0: P=1, N=3; finding 1: P=3 (0.7 counts), N=2
    np.testing.assert_allclose(w_pos.numpy(), [3 / 4, 2 / 5], rtol=1e-6)
    np.testing.assert_allclose(w_neg.numpy(), [1 / 4, 3 / 5], rtol=1e-6)
    thesis_w_pos = np.array([1 / 4, 3 / 5])  # |P| / (|P| + |N|), as printed in the thesis
    assert not np.allclose(w_pos.numpy(), thesis_w_pos)
    assert w_pos[0] > w_neg[0]  # the rare positives get the larger weight


def test_class_weights_degenerate_findings_fall_back_to_plain_bce(caplog):
    y = np.array([[0, 1, 0], [0, 1, 1]], np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 0]], bool)  # no positives, no negatives, no labels
    w_pos, w_neg = class_weights(y, mask)
    assert torch.equal(w_pos, torch.ones(3)) and torch.equal(w_neg, torch.ones(3))
    assert "columns [0, 1, 2]" in caplog.text


# ---- hand computations -----------------------------------------------------------------------
def test_weighted_bce_equals_numpy():
    x = np.array([[2.0, -1.0], [0.5, 3.0], [-2.0, 0.1]])
    y = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 1.0]])
    m = np.array([[1, 1], [1, 0], [1, 1]], bool)
    w_pos, w_neg = np.array([0.8, 0.3]), np.array([0.2, 0.7])
    p = np_sigmoid(x)
    per = -(w_pos * y * np.log(p) + w_neg * (1 - y) * np.log(1 - p))
    expected = per[m].mean()
    loss = WeightedBCE(torch.tensor(w_pos), torch.tensor(w_neg))
    got = loss(torch.tensor(x), torch.tensor(y), torch.tensor(m))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    plain = WeightedBCE()(torch.tensor(x), torch.tensor(y), torch.tensor(m))
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert plain.item() == pytest.approx(bce[m].mean(), rel=1e-6)


def test_auc_margin_equals_numpy_formula():
    x, y, m = batch(seed=3)
    loss = AUCMarginLoss(margin=0.8, num_labels=3, imratio=[0.2, 0.5, 0.3]).double()
    with torch.no_grad():
        loss.a.copy_(torch.tensor([0.1, 0.6, 0.3]))
        loss.b.copy_(torch.tensor([0.4, 0.2, 0.0]))
        loss.alpha.copy_(torch.tensor([0.5, 1.5, 0.2]))
    got = loss(x, y, m).item()

    s, yy, mm = np_sigmoid(x.numpy()), y.numpy(), m.numpy()
    p = np.array([0.2, 0.5, 0.3])
    a, b, al = (t.detach().numpy() for t in (loss.a, loss.b, loss.alpha))
    terms = (
        (1 - p) * (s - a) ** 2 * (yy == 1)
        + p * (s - b) ** 2 * (yy == 0)
        + 2 * al * (p * (1 - p) * 0.8 + p * s * (yy == 0) - (1 - p) * s * (yy == 1))
        - p * (1 - p) * al**2
    )
    assert got == pytest.approx(terms[mm].mean(), rel=1e-6)  # imratio is stored as float32


def test_auc_margin_single_label_matches_libauc_form():
    """One finding, no mask: LibAUC's AUCMLoss written with torch.mean over the batch."""
    x = torch.tensor([[1.2], [-0.3], [0.4], [-2.0], [0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [0.0], [1.0], [0.0], [0.0]], dtype=torch.float64)
    loss = AUCMarginLoss(margin=1.0, num_labels=1, imratio=0.4).double()
    with torch.no_grad():
        loss.a.fill_(0.7), loss.b.fill_(0.2), loss.alpha.fill_(0.9)
    s, p, a, b, al, mg = torch.sigmoid(x), 0.4, 0.7, 0.2, 0.9, 1.0
    libauc = (
        (1 - p) * torch.mean((s - a) ** 2 * (y == 1).double())
        + p * torch.mean((s - b) ** 2 * (y == 0).double())
        + 2 * al * (p * (1 - p) * mg + torch.mean(p * s * (y == 0) - (1 - p) * s * (y == 1)))
        - p * (1 - p) * al**2
    )
    assert loss(x, y, torch.ones_like(y, dtype=torch.bool)).item() == pytest.approx(libauc.item())


def test_multiclass_equals_cross_entropy_on_unmasked():
    x, y, m = batch(seed=5, classes=3)
    got = MulticlassUncertaintyLoss()(x, y, m)
    expected = F.cross_entropy(x[m], y[m].long())
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)


def test_focal_at_gamma_zero_is_bce():
    x, y, m = batch(seed=7)
    y = y * 0.8 + 0.1  # soft targets
    focal = FocalLoss(gamma=0.0)(x, y, m)
    bce = WeightedBCE()(x, y, m)
    assert focal.item() == pytest.approx(bce.item(), rel=1e-12)
    assert FocalLoss(gamma=2.0)(x, y, m).item() < bce.item()


def test_soft_targets_accepted():
    x, y, m = batch(seed=8)
    y_soft = torch.where(y > 0, torch.tensor(0.7, dtype=y.dtype), torch.tensor(0.15, dtype=y.dtype))
    for key, (loss, classes) in all_losses().items():
        if classes is None:
            assert torch.isfinite(loss.double()(x, y_soft, m)), key


# ---- masking ---------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["bce", "weighted_bce", "focal", "auc_margin", "multiclass"])
def test_masked_entries_get_exactly_zero_gradient(key):
    loss, classes = all_losses()[key]
    x, y, m = batch(seed=11, classes=classes)
    y = y.clone()
    y[~m] = float("nan")  # garbage where masked must not leak
    x = x.clone()
    x[~m] = 1e6
    x.requires_grad_(True)
    if isinstance(loss, AUCMarginLoss):
        with torch.no_grad():
            loss.alpha.fill_(0.5), loss.a.fill_(0.3)
    out = loss.double()(x, y, m)
    assert torch.isfinite(out)
    out.backward()
    grad = x.grad if classes is None else x.grad.abs().sum(-1)
    assert torch.all(grad[~m] == 0)
    assert torch.all(grad[m] != 0)


@pytest.mark.parametrize("key", ["bce", "weighted_bce", "focal", "auc_margin", "multiclass"])
def test_all_masked_is_zero_without_nan(key):
    loss, classes = all_losses()[key]
    x, y, _ = batch(seed=12, classes=classes)
    x.requires_grad_(True)
    m = torch.zeros(y.shape, dtype=torch.bool)
    out = loss.double()(x, y, m)
    assert out.item() == 0.0
    out.backward()
    assert torch.all(x.grad == 0)


# ---- factory ---------------------------------------------------------------------------------
def test_build_loss_names_and_errors():
    y = np.array([[1, 0], [0, 0], [0, 1], [0, 0]], np.float32)
    m = np.ones_like(y, bool)
    wb = build_loss("weighted_bce", y, m)
    assert isinstance(wb, WeightedBCE)
    np.testing.assert_allclose(wb.w_pos.numpy(), [0.75, 0.75])
    assert build_loss("bce").w_pos is None
    assert build_loss("focal", gamma=1.0).gamma == 1.0
    auc = build_loss("auc_margin", y, m, margin=0.6)
    assert auc.num_labels == 2 and auc.margin == 0.6
    np.testing.assert_allclose(auc.imratio.numpy(), [0.25, 0.25])
    assert isinstance(build_loss("multiclass"), MulticlassUncertaintyLoss)
    with pytest.raises(CxrkitError, match="did you mean 'focal'"):
        build_loss("focall")
    with pytest.raises(CxrkitError, match="did you mean 'gamma'"):
        build_loss("focal", gama=2.0)
    with pytest.raises(CxrkitError, match="y_train"):
        build_loss("weighted_bce")


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(CxrkitError, match="logits"):
        WeightedBCE()(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool))


# ---- optimisation ----------------------------------------------------------------------------
def test_weighted_bce_trains_a_linear_model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 4)).astype(np.float32)
    # two findings: rare (about 15 %) and common, both linear in x
    y = np.stack([x[:, 0] + 0.5 * x[:, 1] > 1.0, x[:, 2] - x[:, 3] > 0.0], 1).astype(np.float32)
    mask = rng.random(y.shape) > 0.1
    loss = build_loss("weighted_bce", y, mask)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    xt, yt, mt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask)
    first = loss(model(xt), yt, mt).item()
    for _ in range(300):
        opt.zero_grad()
        out = loss(model(xt), yt, mt)
        out.backward()
        opt.step()
    assert out.item() < 0.4 * first
    pred = (model(xt) > 0).numpy()
    for j in range(2):
        pos, neg = mask[:, j] & (y[:, j] == 1), mask[:, j] & (y[:, j] == 0)
        # balanced accuracy: weighting keeps the rare finding's positives recognised
        assert 0.5 * (pred[pos, j].mean() + (~pred[neg, j]).mean()) > 0.9


def test_auc_margin_ascent_group_raises_alpha():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(128, 3)).astype(np.float32))
    y = (x[:, :1] > 0.8).float()
    m = torch.ones_like(y, dtype=torch.bool)
    loss = build_loss("auc_margin", y, m)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(
        [
            {"params": model.parameters()},
            {"params": loss.descent_parameters()},
            {"params": loss.ascent_parameters(), "maximize": True},
        ],
        lr=0.1,
    )
    for _ in range(200):
        opt.zero_grad()
        loss(model(x), y, m).backward()
        opt.step()
        loss.project_()
    assert loss.alpha.item() > 0
    s = model(x).detach().flatten()
    pos, neg = s[y.flatten() == 1], s[y.flatten() == 0]
    auc = (pos[:, None] > neg[None, :]).float().mean().item()
    assert auc > 0.9
