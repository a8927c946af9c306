"""Optimisers and learning-rate schedules, stepped once per optimiser step.

The thesis trains with a triangular cyclical learning rate (Smith 2017): the rate climbs linearly
from ``base_lr`` to ``max_lr`` over ``step_size`` iterations and back down; ``triangular2`` halves
the amplitude each cycle. torch's ``CyclicLR`` implements exactly that definition and is used here;
one-cycle is torch's ``OneCycleLR``; cosine with linear warm-up is a ``LambdaLR``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from cxrkit.core.errors import CxrkitError, did_you_mean

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("triangular", "triangular2", "onecycle", "cosine", "constant")


def build_optimizer(
    params: Iterable,
    name: str = "adam",
    *,
    lr: float = 1e-4,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with Nesterov momentum)."""
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=momentum, nesterov=momentum > 0, weight_decay=weight_decay
        )
    raise CxrkitError(did_you_mean(name, OPTIMIZERS, what="optimizer"))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str = "triangular",
    *,
    base_lr: float = 1e-5,
    max_lr: float = 1e-3,
    step_size: int = 2000,
    total_steps: int | None = None,
    warmup_steps: int = 0,
    pct_start: float = 0.3,
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step schedule.

    Args:
        name: ``triangular``, ``triangular2`` (cyclical, the thesis), ``onecycle``, ``cosine``
            (linear warm-up, then cosine decay to 0) or ``constant``.
        base_lr, max_lr: the cyclical schedules' bounds; ``max_lr`` is also one-cycle's peak and
            cosine's start.
        step_size: iterations of half a cycle (triangular, triangular2).
        total_steps: optimiser steps of the whole run (onecycle, cosine).
        warmup_steps: cosine's linear warm-up.
        pct_start: one-cycle's share of rising steps.
    """
    name = name.lower()
    if name in ("triangular", "triangular2"):
        if not 0 < base_lr <= max_lr or step_size < 1:
            raise CxrkitError(
                f"a {name} schedule needs 0 < base_lr <= max_lr and step_size >= 1; got base_lr="
                f"{base_lr}, max_lr={max_lr}, step_size={step_size}."
            )
        cycle_momentum = "momentum" in optimizer.defaults and optimizer.defaults["momentum"] > 0
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer,
            base_lr=base_lr,
            max_lr=max_lr,
            step_size_up=step_size,
            mode=name,
            cycle_momentum=cycle_momentum,
        )
    if name in ("onecycle", "cosine") and not total_steps:
        raise CxrkitError(f"a {name} schedule needs the run's total number of steps.")
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=int(total_steps), pct_start=pct_start
        )
    if name == "cosine":
        for group in optimizer.param_groups:
            group["lr"] = max_lr
            group["initial_lr"] = max_lr

        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = (step - warmup_steps) / max(1, int(total_steps) - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    raise CxrkitError(did_you_mean(name, SCHEDULES, what="schedule"))


def triangular_lr(step: int, base_lr: float, max_lr: float, step_size: int, mode: str) -> float:
    """The cyclical learning rate's definition (Smith 2017), for checking and plotting."""
    cycle = math.floor(1 + step / (2 * step_size))
    x = abs(step / step_size - 2 * cycle + 1)
    scale = 1.0 if mode == "triangular" else 1 / (2 ** (cycle - 1))
    return base_lr + (max_lr - base_lr) * max(0.0, 1 - x) * scale
