"""Running a network over one part of the image cache, and the per-finding AUROC used in training.

Both training (validation AUROC per epoch) and evaluation use these, so they live on the evaluation
side; training imports them, never the other way round.
"""

from __future__ import annotations

import numpy as np
import torch

from cxrkit.data.loader import CXRDataModule
from cxrkit.model.networks import probabilities


def scoring_mask(y: torch.Tensor, mask: torch.Tensor, output: str = "sigmoid") -> torch.Tensor:
    """The entries AUROC is computed on: labelled ones, and for a ``multiclass`` head not the
    uncertain class (its probability is P(positive | positive or negative))."""
    if output == "multiclass":
        return mask & (y < 1.5)
    return mask


def masked_auroc(probs: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> list[float]:
    """Per-finding AUROC over labelled entries; NaN where a finding lacks positives or negatives."""
    from torchmetrics.functional.classification import binary_auroc

    out = []
    for j in range(probs.shape[1]):
        m = mask[:, j]
        t = (y[m, j] >= 0.5).long()
        if t.numel() == 0 or t.min() == t.max():
            out.append(float("nan"))
        else:
            out.append(float(binary_auroc(probs[m, j].float(), t)))
    return out


@torch.no_grad()
def predict_part(
    model: torch.nn.Module,
    dm: CXRDataModule,
    part: str,
    output: str = "sigmoid",
    pipe: torch.nn.Module | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (n, L) and index rows (n,) of one part of a data module, in evaluation mode.

    ``output`` is the artifact's head (``sigmoid`` or ``multiclass``, see
    :func:`cxrkit.model.networks.probabilities`); ``pipe`` the artifact's input pipeline (default: the
    data module's evaluation pipeline).
    """
    model.eval()
    pipe = pipe or dm.eval_pipe
    probs, rows = [], []
    for batch in dm._loader(part, shuffle=False):
        x = pipe(batch["image"])
        probs.append(probabilities(model(x), output).numpy())
        rows.append(batch["row"].numpy())
    return np.concatenate(probs), np.concatenate(rows)
