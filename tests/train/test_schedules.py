"""Learning-rate traces against their definitions; optimiser and schedule factories."""

from __future__ import annotations

import math

import pytest
import torch

from cxrkit.core.errors import CxrkitError
from cxrkit.train.schedules import build_optimizer, build_scheduler, triangular_lr


def trace(opt, sched, n):
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("mode", ["triangular", "triangular2"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_cyclical_trace_equals_definition(mode, optimizer):
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(p, optimizer, lr=1e-3)
    sched = build_scheduler(opt, mode, base_lr=1e-4, max_lr=1e-2, step_size=5)
    got = trace(opt, sched, 40)
    want = [triangular_lr(t, 1e-4, 1e-2, 5, mode) for t in range(40)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    if mode == "triangular2":  # amplitude halves each cycle: peaks at t = 5, 15, 25, 35
        peaks = [got[t] - 1e-4 for t in (5, 15, 25, 35)]
        assert peaks[1] == pytest.approx(peaks[0] / 2) and peaks[3] == pytest.approx(peaks[0] / 8)


def test_cosine_with_warmup_and_onecycle():
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer(p, "adamw", lr=1.0)
    got = trace(opt, build_scheduler(opt, "cosine", max_lr=0.1, total_steps=20, warmup_steps=4), 20)
    assert got[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert got[4 + 8] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 8 / 16)))
    assert got[-1] < got[4]
    opt = build_optimizer(p, "adam")
    oc = trace(
        opt, build_scheduler(opt, "onecycle", max_lr=0.1, total_steps=20, pct_start=0.25), 20
    )
    assert max(oc) == pytest.approx(0.1, rel=1e-3) and oc.index(max(oc)) == 4


def test_bad_names_and_settings():
    p = [torch.nn.Parameter(torch.zeros(1))]
    with pytest.raises(CxrkitError, match="did you mean 'adam"):
        build_optimizer(p, "adamx")
    opt = build_optimizer(p, "adam")
    with pytest.raises(CxrkitError, match="did you mean 'triangular2'"):
        build_scheduler(opt, "triangle2")
    with pytest.raises(CxrkitError, match="base_lr <= max_lr"):
        build_scheduler(opt, "triangular", base_lr=1e-2, max_lr=1e-3)
    with pytest.raises(CxrkitError, match="total number of steps"):
        build_scheduler(opt, "onecycle")
