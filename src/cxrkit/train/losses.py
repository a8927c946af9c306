"""Masked training losses for multi-label chest X-ray classification.

Every loss takes the model's raw ``logits`` (never probabilities), the targets ``y`` and the
``mask`` of a :class:`cxrkit.data.labels.Targets` batch:

* ``logits`` (B, L) float, or (B, L, 3) for :class:`MulticlassUncertaintyLoss`;
* ``y`` (B, L) float: hard 0/1 targets, soft targets in [0, 1] (the smoothed uncertain
  policies), or a class index 0 neg / 1 pos / 2 uncertain for the ``multiclass`` policy;
* ``mask`` (B, L) bool: False means "no label".

**Masking and reduction.** Every loss first computes one value per entry (image, finding) and
returns ``sum(value over unmasked entries) / (number of unmasked entries)``. A masked entry
contributes nothing and its logits get exactly zero gradient, whatever ``y`` or the logits hold
there (NaN included: masked logits and targets are replaced before any arithmetic). A batch with
no unmasked entry gives a loss of exactly 0 that is still connected to the graph, so
``backward()`` works and yields zero gradients.

Use :func:`build_loss` to make a loss by name from the training split's targets.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cxrkit.core.errors import CxrkitError, did_you_mean

log = logging.getLogger(__name__)

#: Names accepted by :func:`build_loss`.
LOSS_NAMES = ("bce", "weighted_bce", "focal", "auc_margin", "multiclass")
#: Number of classes of the ``multiclass`` uncertainty policy (neg, pos, uncertain).
NUM_MULTICLASS = 3


# ---- helpers ---------------------------------------------------------------------------------
def _as_tensor(x: Tensor | np.ndarray | Iterable, dtype: torch.dtype) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach().to(dtype=dtype, device="cpu")
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _check_shapes(logits: Tensor, y: Tensor, mask: Tensor, *, classes: int | None = None) -> None:
    want = tuple(y.shape) if classes is None else (*y.shape, classes)
    if y.dim() != 2 or tuple(mask.shape) != tuple(y.shape) or tuple(logits.shape) != want:
        raise CxrkitError(
            f"loss inputs must be logits {'(B, L)' if classes is None else f'(B, L, {classes})'}, "
            f"y (B, L) and mask (B, L); got logits {tuple(logits.shape)}, y {tuple(y.shape)} and "
            f"mask {tuple(mask.shape)}."
        )


def _prepare(logits: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Cut masked entries out of the graph: masked logits become 0 with zero gradient."""
    mask = mask.to(device=logits.device, dtype=torch.bool)
    y = y.to(device=logits.device, dtype=logits.dtype)
    m = mask if logits.dim() == mask.dim() else mask.unsqueeze(-1)
    logits = torch.where(m, logits, torch.zeros((), dtype=logits.dtype, device=logits.device))
    y = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
    return logits, y, mask


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over the entries where ``mask`` is true; 0 when there are none.

    Args:
        values: (B, L) per-entry losses.
        mask: (B, L) bool.

    Returns:
        A scalar tensor. Masked entries get zero gradient; with no unmasked entry the result is
        ``0`` and still differentiable.
    """
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    total = torch.where(mask, values, zero).sum()
    return total / mask.sum().clamp(min=1).to(values.dtype)


def positive_ratio(y: Tensor | np.ndarray, mask: Tensor | np.ndarray) -> Tensor:
    """Per-finding share of positives among the labelled entries (positive = ``y >= 0.5``).

    Args:
        y: (N, L) targets.
        mask: (N, L) bool.

    Returns:
        (L,) float32 ``|P| / (|P| + |N|)``; 0 for a finding with no labelled entry.
    """
    y_t, m_t = _as_tensor(y, torch.float32), _as_tensor(mask, torch.bool)
    pos = ((y_t >= 0.5) & m_t).sum(0).float()
    return pos / m_t.sum(0).clamp(min=1).float()


# ---- class weights ---------------------------------------------------------------------------
def class_weights(y: Tensor | np.ndarray, mask: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """CheXNet's per-finding weights of the positive and negative BCE terms.

    Following Rajpurkar et al. 2017 (CheXNet), for each finding with ``|P|`` positive and ``|N|``
    negative labelled entries of the training split::

        w_pos = |N| / (|P| + |N|)    # weight of  -y log p          (the rare class gets more)
        w_neg = |P| / (|P| + |N|)    # weight of  -(1 - y) log(1 - p)

    An entry counts as positive when ``y >= 0.5`` (so smoothed uncertain labels count by their
    side of 0.5); masked entries are not counted.

    Note: the thesis prints the two weights the other way round (``w_+ = |P|/(|P|+|N|)``), which
    would give the already dominant negatives the larger weight and deepen the imbalance. This
    function implements CheXNet's definition, which is what the thesis says it derived from.

    A finding with no positives or no negatives (or no labelled entry at all) would get weight 0
    on the only class it has, so it would not be trained at all; such a finding falls back to
    ``w_pos = w_neg = 1`` (plain BCE) and a warning names its column. No NaN can arise.

    Args:
        y: (N, L) training targets (hard or soft).
        mask: (N, L) bool.

    Returns:
        ``(w_pos, w_neg)``, each (L,) float32.
    """
    y_t, m_t = _as_tensor(y, torch.float32), _as_tensor(mask, torch.bool)
    if y_t.dim() != 2 or y_t.shape != m_t.shape:
        raise CxrkitError(
            f"class_weights needs y (N, L) and mask (N, L) of the same shape; got "
            f"{tuple(y_t.shape)} and {tuple(m_t.shape)}."
        )
    n_pos = ((y_t >= 0.5) & m_t).sum(0).double()
    n_neg = ((y_t < 0.5) & m_t).sum(0).double()
    total = (n_pos + n_neg).clamp(min=1)
    w_pos, w_neg = n_neg / total, n_pos / total
    degenerate = (n_pos == 0) | (n_neg == 0)
    if degenerate.any():
        cols = degenerate.nonzero().flatten().tolist()
        log.warning(
            "findings at columns %s have no positive or no negative training label; "
            "they use unweighted BCE (w_pos = w_neg = 1)",
            cols,
        )
        w_pos = torch.where(degenerate, torch.ones_like(w_pos), w_pos)
        w_neg = torch.where(degenerate, torch.ones_like(w_neg), w_neg)
    return w_pos.float(), w_neg.float()


# ---- losses ----------------------------------------------------------------------------------
class WeightedBCE(nn.Module):
    """Binary cross-entropy on logits with per-finding positive/negative weights, masked.

    Per entry: ``-(w_pos * y * log sigmoid(x) + w_neg * (1 - y) * log(1 - sigmoid(x)))``,
    computed with :func:`torch.nn.functional.binary_cross_entropy_with_logits` (stable for large
    logits). Soft targets in [0, 1] are allowed. With both weights ``None`` it is plain BCE.

    Args:
        w_pos: (L,) weights of the positive term, or None for 1.
        w_neg: (L,) weights of the negative term, or None for 1.
    """

    w_pos: Tensor | None
    w_neg: Tensor | None

    def __init__(self, w_pos: Tensor | None = None, w_neg: Tensor | None = None) -> None:
        super().__init__()
        if (w_pos is None) != (w_neg is None):
            raise CxrkitError("WeightedBCE needs both w_pos and w_neg, or neither (plain BCE).")
        self.register_buffer("w_pos", None if w_pos is None else _as_tensor(w_pos, torch.float32))
        self.register_buffer("w_neg", None if w_neg is None else _as_tensor(w_neg, torch.float32))

    def forward(self, logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Return the mean loss over unmasked entries.

        Args:
            logits: (B, L) raw scores.
            y: (B, L) targets in [0, 1].
            mask: (B, L) bool.

        Returns:
            Scalar tensor.
        """
        _check_shapes(logits, y, mask)
        logits, y, mask = _prepare(logits, y, mask)
        if self.w_pos is None or self.w_neg is None:
            per_entry = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        else:
            if self.w_pos.numel() != logits.shape[1]:
                raise CxrkitError(
                    f"WeightedBCE has weights for {self.w_pos.numel()} findings but the logits "
                    f"have {logits.shape[1]}; build the loss from the same findings as the model."
                )
            # Two one-sided terms so that a zero weight never needs a division.
            pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(y), reduction="none")
            neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(y), reduction="none")
            per_entry = self.w_pos * y * pos + self.w_neg * (1 - y) * neg  # (B, L)
        return masked_mean(per_entry, mask)


class FocalLoss(nn.Module):
    """Sigmoid focal loss of Lin et al. 2017 ("Focal Loss for Dense Object Detection"), masked.

    Per entry, with ``p = sigmoid(x)``, ``p_t = p*y + (1-p)*(1-y)`` and
    ``alpha_t = alpha*y + (1-alpha)*(1-y)`` (soft targets allowed)::

        FL = alpha_t * (1 - p_t) ** gamma * BCE(x, y)

    ``gamma = 0`` and ``alpha = None`` give plain BCE.

    Args:
        gamma: focusing parameter, >= 0.
        alpha: weight of the positive class in [0, 1], or None for no class weighting.
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise CxrkitError(f"FocalLoss 'gamma' must be 0 or more. Got {gamma} instead.")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise CxrkitError(f"FocalLoss 'alpha' must be in [0, 1] or None. Got {alpha} instead.")
        self.gamma = float(gamma)
        self.alpha = None if alpha is None else float(alpha)

    def forward(self, logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Return the mean focal loss over unmasked entries.

        Args:
            logits: (B, L) raw scores.
            y: (B, L) targets in [0, 1].
            mask: (B, L) bool.

        Returns:
            Scalar tensor.
        """
        _check_shapes(logits, y, mask)
        logits, y, mask = _prepare(logits, y, mask)
        per_entry = F.binary_cross_entropy_with_logits(logits, y, reduction="none")  # (B, L)
        if self.gamma != 0:
            p = torch.sigmoid(logits)
            p_t = p * y + (1 - p) * (1 - y)
            per_entry = per_entry * (1 - p_t).clamp(min=0) ** self.gamma
        if self.alpha is not None:
            per_entry = per_entry * (self.alpha * y + (1 - self.alpha) * (1 - y))
        return masked_mean(per_entry, mask)


class AUCMarginLoss(nn.Module):
    """AUC-margin (AUC-M) min-max loss of Yuan et al. 2021, per finding, masked.

    From "Large-scale Robust Deep AUC Maximization: A New Surrogate Loss and Empirical Studies on
    Medical Image Classification" (ICCV 2021), matched term by term against LibAUC's
    ``AUCMLoss`` (1.0.6 ``libauc/loss/loss.py``; 1.1.x ``AUCMLoss_V1``) and ``AUCM_MultiLabel``.
    With scores ``s = sigmoid(logits)`` (LibAUC expects scores; we apply the sigmoid here),
    ``p`` the positive ratio of the finding, margin ``m`` and learnable ``a, b, alpha``, each
    unmasked entry contributes::

        F = (1-p) * (s-a)^2 * y + p * (s-b)^2 * (1-y)
            + 2*alpha * (p*(1-p)*m + p*s*(1-y) - (1-p)*s*y)
            - p*(1-p) * alpha^2

    and the loss is the mean of ``F`` over unmasked entries (same reduction as every other loss
    here). Matched against LibAUC: the expectations are plain means over all entries with the
    indicator ``y`` / ``1-y`` inside (``torch.mean((y_pred - a)**2 * (1 == y_true))``), *not*
    means conditioned on the class; only this form equals ``p(1-p)`` times the square AUC
    surrogate, which the paper's min-max derivation needs. For hard labels ``y`` is LibAUC's
    indicator; soft targets weight both sides. Differences from LibAUC: one ``(a, b, alpha)``
    per finding (LibAUC's ``AUCM_MultiLabel`` loops over labels and *sums* the per-label
    losses; we average over unmasked entries so the scale matches the other losses, and the
    learning rate absorbs the factor); masked entries are left out; ``imratio=None`` is
    estimated from every batch (LibAUC estimates it from the first batch and keeps it).

    **alpha must be maximised.** ``a``, ``b`` (and the model) are minimised, ``alpha`` is
    maximised. LibAUC's PESG does the ascent step and projects ``alpha >= 0``. With a standard
    torch optimiser put :meth:`ascent_parameters` in their own group with ``maximize=True``::

        opt = torch.optim.SGD(
            [{"params": model.parameters()},
             {"params": loss.descent_parameters()},
             {"params": loss.ascent_parameters(), "maximize": True}],
            lr=0.1,
        )

    and, to follow PESG, clamp after each step: ``loss.alpha.data.clamp_(min=0)``
    (:meth:`project_`). Plain descent on every parameter drives ``alpha`` to minus infinity.

    Args:
        margin: margin ``m`` (LibAUC's default 1.0).
        num_labels: number of findings ``L``.
        imratio: positive ratio ``p``: a float for every finding, an (L,) sequence, or None to
            estimate it from each batch's unmasked entries (``y >= 0.5``). :func:`build_loss`
            passes the training split's ratio. ``p`` of 0 or 1 gives no NaN, but such a finding
            then teaches little.
    """

    imratio: Tensor | None

    def __init__(
        self,
        margin: float = 1.0,
        num_labels: int = 1,
        imratio: float | Tensor | np.ndarray | Iterable[float] | None = None,
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise CxrkitError(f"AUCMarginLoss 'num_labels' must be 1 or more. Got {num_labels}.")
        self.margin = float(margin)
        self.num_labels = int(num_labels)
        ratio = None
        if imratio is not None:
            ratio = _as_tensor(imratio, torch.float32).flatten()
            if ratio.numel() == 1:
                ratio = ratio.expand(num_labels).clone()
            if ratio.numel() != num_labels or not bool(((ratio >= 0) & (ratio <= 1)).all()):
                raise CxrkitError(
                    f"AUCMarginLoss 'imratio' must be one value or {num_labels} values in [0, 1]; "
                    f"got {imratio!r}."
                )
        self.register_buffer("imratio", ratio)
        self.a = nn.Parameter(torch.zeros(num_labels))  # (L,)
        self.b = nn.Parameter(torch.zeros(num_labels))  # (L,)
        self.alpha = nn.Parameter(torch.zeros(num_labels))  # (L,), maximised

    def descent_parameters(self) -> list[nn.Parameter]:
        """Parameters to minimise together with the model: ``[a, b]``."""
        return [self.a, self.b]

    def ascent_parameters(self) -> list[nn.Parameter]:
        """Parameters to maximise (gradient ascent): ``[alpha]``."""
        return [self.alpha]

    @torch.no_grad()
    def project_(self) -> None:
        """Project ``alpha`` onto ``alpha >= 0``, as LibAUC's PESG does after each step."""
        self.alpha.clamp_(min=0)

    def forward(self, logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Return the mean AUC-M objective over unmasked entries.

        Args:
            logits: (B, L) raw scores.
            y: (B, L) targets in [0, 1].
            mask: (B, L) bool.

        Returns:
            Scalar tensor (to minimise in the model, ``a``, ``b``; to maximise in ``alpha``).
        """
        _check_shapes(logits, y, mask)
        if logits.shape[1] != self.num_labels:
            raise CxrkitError(
                f"AUCMarginLoss was built for {self.num_labels} findings but the logits have "
                f"{logits.shape[1]}; pass num_labels={logits.shape[1]}."
            )
        logits, y, mask = _prepare(logits, y, mask)
        if self.imratio is None:
            p = positive_ratio(y.detach().cpu(), mask.cpu()).to(logits)  # batch estimate
        else:
            p = self.imratio.to(logits)
        s = torch.sigmoid(logits)  # (B, L)
        per_entry = (
            (1 - p) * (s - self.a) ** 2 * y
            + p * (s - self.b) ** 2 * (1 - y)
            + 2 * self.alpha * (p * (1 - p) * self.margin + p * s * (1 - y) - (1 - p) * s * y)
            - p * (1 - p) * self.alpha**2
        )
        return masked_mean(per_entry, mask)


class MulticlassUncertaintyLoss(nn.Module):
    """Per-finding 3-way softmax cross-entropy for the ``multiclass`` uncertainty policy.

    Each finding has three logits (negative, positive, uncertain; see
    :data:`cxrkit.data.labels.MULTICLASS_NEGATIVE` and friends) and ``y`` holds the class index.
    The loss is the mean cross-entropy over unmasked (image, finding) entries.
    """

    def forward(self, logits: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        """Return the mean cross-entropy over unmasked entries.

        Args:
            logits: (B, L, 3) raw scores.
            y: (B, L) class indices 0, 1 or 2 (float or integer).
            mask: (B, L) bool.

        Returns:
            Scalar tensor.
        """
        _check_shapes(logits, y, mask, classes=NUM_MULTICLASS)
        logits, y, mask = _prepare(logits, y, mask)
        target = y.round().long()
        if bool(((target < 0) | (target >= NUM_MULTICLASS)).any()):
            raise CxrkitError(
                "the multiclass loss needs targets 0 (negative), 1 (positive) or 2 (uncertain); "
                f"got values {sorted(set(y[mask].unique().tolist()))}. Use the 'multiclass' "
                "uncertainty policy."
            )
        b, n = target.shape
        per_entry = F.cross_entropy(
            logits.reshape(b * n, NUM_MULTICLASS), target.reshape(b * n), reduction="none"
        ).reshape(b, n)
        return masked_mean(per_entry, mask)


# ---- factory ---------------------------------------------------------------------------------
def build_loss(
    name: str,
    y_train: Tensor | np.ndarray | None = None,
    mask_train: Tensor | np.ndarray | None = None,
    **kw: Any,
) -> nn.Module:
    """Make a loss by name, fitted to the training split where the loss needs it.

    Args:
        name: one of ``bce``, ``weighted_bce``, ``focal``, ``auc_margin``, ``multiclass``.
        y_train: (N, L) training targets; needed by ``weighted_bce`` (class weights) and
            ``auc_margin`` (number of findings and positive ratio ``imratio``).
        mask_train: (N, L) bool mask of ``y_train``; all true when omitted.
        **kw: options of the loss class (``gamma``, ``alpha`` for ``focal``; ``margin``,
            ``imratio`` for ``auc_margin``).

    Returns:
        The loss module, called as ``loss(logits, y, mask)``.

    Raises:
        CxrkitError: for an unknown name or option, or missing training targets.
    """
    key = str(name).strip().lower()
    if key not in LOSS_NAMES:
        raise CxrkitError(did_you_mean(str(name), LOSS_NAMES, what="loss"))
    classes: dict[str, type[nn.Module]] = {
        "bce": WeightedBCE,
        "weighted_bce": WeightedBCE,
        "focal": FocalLoss,
        "auc_margin": AUCMarginLoss,
        "multiclass": MulticlassUncertaintyLoss,
    }
    fixed = {
        "bce": {"w_pos", "w_neg"},
        "weighted_bce": {"w_pos", "w_neg"},
        "auc_margin": {"num_labels"},
    }.get(key, set())
    allowed = [
        p for p in inspect.signature(classes[key].__init__).parameters if p not in {"self", *fixed}
    ]
    for option in kw:
        if option not in allowed:
            raise CxrkitError(
                did_you_mean(option, allowed, what=f"option of loss '{key}'")
                if allowed
                else f"loss '{key}' takes no options; got '{option}'."
            )

    if key in ("weighted_bce", "auc_margin"):
        if y_train is None:
            raise CxrkitError(
                f"loss '{key}' is fitted to the training labels: pass y_train (and mask_train)."
            )
        y_t = _as_tensor(y_train, torch.float32)
        m_t = (
            torch.ones_like(y_t, dtype=torch.bool)
            if mask_train is None
            else _as_tensor(mask_train, torch.bool)
        )
        if key == "weighted_bce":
            return WeightedBCE(*class_weights(y_t, m_t))
        kw.setdefault("imratio", positive_ratio(y_t, m_t))
        return AUCMarginLoss(num_labels=y_t.shape[1], **kw)
    return classes[key](**kw)
