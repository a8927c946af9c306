"""Training end to end on a tiny synthetic set: overfitting, exact resume, artifact, DDP (2 CPU processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cxrkit.core.config import load_config
from cxrkit.data.adapters import build_index
from cxrkit.data.cache import build_cache
from cxrkit.data.index import write_index
from cxrkit.data.labels import LabelPolicy
from cxrkit.data.splits import make_splits, write_splits
from cxrkit.evaluate.inference import masked_auroc
from cxrkit.model.artifact import load_artifact
from cxrkit.synthetic.layouts import generate
from cxrkit.train.loop import CXRModule, train

FINDINGS = "Cardiomegaly,Pleural Effusion,Infiltration"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("train")
    folder = generate("nih", tmp / "data", n=160, size=48, seed=1, workers=1)
    index = build_index("nih", folder)
    write_index(index, tmp / "index.parquet")
    targets = LabelPolicy(findings=FINDINGS).apply(index.frame)
    write_splits(make_splits(index.frame, targets, seed=0), tmp / "splits.parquet")
    build_cache(index, tmp / "cache", size=48, workers=1)
    return tmp


def config(workdir: Path, *overrides: str):
    base = [
        f"data.index={workdir / 'index.parquet'}",
        f"data.splits={workdir / 'splits.parquet'}",
        f"data.cache={workdir / 'cache'}",
        f"data.policy={{findings: '{FINDINGS}'}}",
        "data.batch_size=16",
        "model.arch=test_resnet",
        "optim.lr=0.003",
        "schedule.name=triangular2",
        "schedule.base_lr=0.0003",
        "schedule.max_lr=0.003",
        "schedule.step_size=3",
        "train.accelerator=cpu",
        "train.devices=1",
        f"train.out={workdir / 'runs'}",
    ]
    return load_config(None, base + list(overrides))


def test_tiny_model_overfits_a_tiny_batch():
    torch.manual_seed(0)
    cfg = load_config(
        None, ["model.arch=test_resnet", "loss.name=bce", "data.input_mode=gray3"]
    ).to_dict()
    module = CXRModule(cfg, ["A", "B"])
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]] * 2, dtype=torch.float32)
    mask = torch.ones_like(y, dtype=torch.bool)
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = module.loss_fn(module(x), y, mask)
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        probs = torch.sigmoid(module(x))
    assert float(loss) < 0.2 * first
    assert ((probs > 0.5) == y.bool()).all()


def test_masked_auroc():
    probs = torch.tensor([[0.9, 0.2], [0.8, 0.3], [0.1, 0.4], [0.3, 0.9]])
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[True, True], [True, True], [True, True], [True, False]])
    aucs = masked_auroc(probs, y, mask)
    assert aucs[0] == pytest.approx(1.0)
    assert np.isnan(aucs[1])  # the only positive is masked: undefined, not 0.5


def test_run_folder_artifact_and_exact_resume(workdir: Path):
    whole = train(config(workdir, "train.name=whole", "train.max_epochs=2"))
    assert (whole / "config.yaml").is_file() and (whole / "checkpoints" / "last.ckpt").is_file()
    assert (whole / "logs" / "metrics.csv").is_file() and any((whole / "tb").iterdir())
    model, meta = load_artifact(whole / "model")
    assert list(meta.labels) == FINDINGS.split(",") and meta.input_mode == "enhanced"
    metrics = pd.read_csv(whole / "logs" / "metrics.csv")
    assert metrics["val/mean_auc"].notna().sum() == 2  # per-finding val AUC every epoch
    assert any(c.startswith("val/auc/") for c in metrics.columns)

    # "killed" after one epoch, then resumed to two: same weights and metrics
    train(config(workdir, "train.name=killed", "train.max_epochs=1"))
    with pytest.raises(Exception, match="already has checkpoints"):
        train(config(workdir, "train.name=killed", "train.max_epochs=2"))
    resumed = train(config(workdir, "train.name=killed", "train.max_epochs=2"), resume=True)
    a = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma = pd.read_csv(whole / "logs" / "metrics.csv")["val/mean_auc"].dropna().tolist()
    mb = pd.read_csv(resumed / "logs" / "metrics.csv")["val/mean_auc"].dropna().tolist()
    assert ma[-1] == pytest.approx(mb[-1], abs=0)
    # the resumed run's log keeps the epoch before the kill: the same rows as the whole run's
    assert mb == pytest.approx(ma, abs=0) and len(mb) == 2
    logged = pd.read_csv(resumed / "logs" / "metrics.csv")
    assert sorted(logged["epoch"].dropna().unique().tolist()) == [0, 1]
    assert not (resumed / "logs" / "metrics.before-resume.csv").exists()


def test_ddp_two_cpu_processes(workdir: Path):
    """Lightning DDP with 2 processes (gloo) for one epoch through the real command line."""
    cfg = config(workdir, "train.name=ddp")
    args = [
        f"{k}={v}"
        for k, v in (
            ("data.index", cfg.data.index),
            ("data.splits", cfg.data.splits),
            ("data.cache", cfg.data.cache),
            ("data.policy", f"{{findings: '{FINDINGS}'}}"),
            ("data.batch_size", 16),
            ("model.arch", "test_resnet"),
            ("train.accelerator", "cpu"),
            ("train.devices", 2),
            ("train.strategy", "ddp"),
            ("train.max_epochs", 1),
            ("train.name", "ddp"),
            ("train.out", cfg.train.out),
        )
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "cxrkit", "--verbose", "train", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=workdir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = workdir / "runs" / "ddp"
    assert "world_size=2" in proc.stderr or "distributed_backend=gloo" in proc.stderr
    for rel in (
        "config.yaml",
        "checkpoints/last.ckpt",
        "model/model.json",
        "model/model.safetensors",
        "logs/metrics.csv",
    ):
        assert (run / rel).is_file(), rel


def test_lr_find_writes_a_plot(workdir: Path):
    from cxrkit.train.loop import lr_find

    suggestion, path = lr_find(
        config(workdir, "train.name=lrf"), workdir / "lr.png", steps=12, min_lr=1e-5, max_lr=1.0
    )
    assert path.is_file() and path.stat().st_size > 5000
    assert suggestion is None or 1e-5 <= suggestion <= 1.0


def test_experiment_grid_goes_on_after_a_failed_run(workdir: Path):
    import yaml

    from cxrkit.train.grid import run_grid

    base = workdir / "base.yaml"
    cfg = config(workdir, "train.max_epochs=1")
    base.write_text(yaml.safe_dump(cfg.to_dict()))
    grid = workdir / "grid.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "base": "base.yaml",
                "name": "g",
                "grid": {
                    "model.arch": ["test_resnet", "no_such_net"],
                    "data.input_mode": ["gray3", "enhanced"],
                },
            }
        )
    )
    table = run_grid(grid)
    assert len(table) == 4
    ok = table[table["status"] == "ok"]
    assert set(ok["input_mode"]) == {"gray3", "enhanced"} and len(ok) == 2
    assert ok["multilabel_auc"].between(0, 1).all() and ok["accuracy"].between(0, 1).all()
    assert table.loc[table["status"] != "ok", "status"].str.contains("unknown architecture").all()
    out = workdir / "runs" / "g"
    md = (out / "comparison.md").read_text()  # the one comparison writer (cxrkit compare's)
    assert all(f"| {r} |" in md for r in ok["run"])  # one Table 1 and one Table 2 row each
    failed = table.loc[table["status"] != "ok", "run"]
    assert all(f"{r}: failed (" in md for r in failed)
    assert md.count("| test_resnet |") == 4  # 2 runs x (Table 1 + Table 2)
    again = run_grid(grid)  # finished runs are evaluated again, not retrained
    assert again.loc[again["status"] == "ok", "train_minutes"].isna().all()


def test_experiment_command_exits_non_zero_naming_the_failed_runs(workdir: Path, run_cli):
    """The grid of the test above, through the command: the table is printed, then one line names
    the failed runs, and the exit code says the experiment did not fully succeed."""
    grid = workdir / "grid.yaml"
    if not grid.is_file():
        pytest.skip("needs the grid of test_experiment_grid_goes_on_after_a_failed_run")
    code, out, err = run_cli("experiment", grid)
    assert "comparison" in out
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # (each failure was also logged as it happened)
    assert "2 of 4 runs failed" in last and "no_such_net" in last


def test_hierarchy_aware_training_two_stages(tmp_path: Path):
    folder = generate("chexpert", tmp_path / "data", n=120, size=40, seed=2, workers=1)
    index = build_index("chexpert", folder.parent)
    write_index(index, tmp_path / "index.parquet")
    targets = LabelPolicy(findings="competition").apply(index.frame)
    write_splits(make_splits(index.frame, targets, seed=0), tmp_path / "splits.parquet")
    build_cache(index, tmp_path / "cache", size=40, workers=1)
    cfg = load_config(
        None,
        [
            f"data.index={tmp_path / 'index.parquet'}",
            f"data.splits={tmp_path / 'splits.parquet'}",
            f"data.cache={tmp_path / 'cache'}",
            "data.policy=thesis",
            "data.batch_size=16",
            "model.arch=test_resnet",
            "train.accelerator=cpu",
            "train.devices=1",
            "train.max_epochs=1",
            "train.hierarchy=true",
            "train.freeze=head",
            f"train.out={tmp_path / 'runs'}",
            "train.name=h",
        ],
    )
    run = train(cfg)
    _, stage1 = load_artifact(run / "stage1-parents" / "model")
    model, meta = load_artifact(run / "model")
    assert set(stage1.labels) == {"Enlarged Cardiomediastinum", "Lung Opacity", "Consolidation"}
    assert list(meta.labels) == [
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Pleural Effusion",
    ]
    s1_model, _ = load_artifact(run / "stage1-parents" / "model")
    frozen = [
        k
        for k in s1_model.state_dict()
        if "fc" not in k and "classifier" not in k and "head" not in k
    ]
    same = [torch.equal(s1_model.state_dict()[k], model.state_dict()[k]) for k in frozen]
    assert same and all(same)  # freeze=head: stage 2 trained the classifier only


def test_multiclass_policy_needs_the_multiclass_loss(workdir: Path):
    from cxrkit.core.errors import CxrkitError

    cfg = config(
        workdir, "train.name=mc", f"data.policy={{findings: '{FINDINGS}', uncertain: multiclass}}"
    )
    with pytest.raises(CxrkitError, match="loss.name=multiclass"):
        train(cfg)
    cfg = config(workdir, "train.name=mc2", "loss.name=multiclass")
    with pytest.raises(CxrkitError, match="uncertain=multiclass"):
        train(cfg)


def test_multiclass_training_writes_a_three_way_head(tmp_path: Path):
    """U-MultiClass (Irvin et al. 2019) end to end: CheXpert layout with uncertain labels, three
    logits per finding, validation AUC on the certain labels, an artifact that says so."""
    from cxrkit.evaluate.evaluate import EvalOptions, evaluate_model
    from cxrkit.model.artifact import read_artifact_meta
    from cxrkit.model.networks import probabilities

    folder = generate("chexpert", tmp_path / "data", n=120, size=48, seed=3, workers=1)
    index = build_index("chexpert", folder)
    write_index(index, tmp_path / "index.parquet")
    findings = "Cardiomegaly,Pleural Effusion,Edema"
    policy = LabelPolicy(findings=findings, uncertain="multiclass", views="frontal")
    targets = policy.apply(index.frame)
    assert (targets.y == 2).any()  # the generator plants uncertain labels: the third class is used
    write_splits(make_splits(index.frame, targets, seed=0), tmp_path / "splits.parquet")
    build_cache(index, tmp_path / "cache", size=48, workers=1)
    cfg = load_config(
        None,
        [
            f"data.index={tmp_path / 'index.parquet'}",
            f"data.splits={tmp_path / 'splits.parquet'}",
            f"data.cache={tmp_path / 'cache'}",
            f"data.policy={{findings: '{findings}', uncertain: multiclass, views: frontal}}",
            "data.batch_size=16",
            "data.input_mode=gray1",
            "model.arch=test_resnet",
            "loss.name=multiclass",
            "train.max_epochs=2",
            "train.accelerator=cpu",
            "train.devices=1",
            f"train.out={tmp_path / 'runs'}",
            "train.name=mc",
        ],
    )
    run = train(cfg)
    meta = read_artifact_meta(run / "model")
    assert meta.output == "multiclass" and meta.outputs_per_label == 3
    model, _ = load_artifact(run / "model")
    with torch.no_grad():
        logits = model(torch.randn(4, 1, 48, 48))
    assert logits.shape == (4, 9)
    probs = probabilities(logits, meta.output)
    assert probs.shape == (4, 3) and bool(((probs >= 0) & (probs <= 1)).all())
    metrics = pd.read_csv(run / "logs" / "metrics.csv")
    assert metrics["val/mean_auc"].notna().any()
    ev, _ = evaluate_model(run, EvalOptions(n_boot=0, save=False), write=False)
    assert list(ev.image.findings) == ["Cardiomegaly", "Pleural Effusion", "Edema"]
    assert 0.0 <= ev.main.confusion_total.accuracy <= 1.0


def test_multiclass_probability_leaves_the_uncertain_class_out():
    from cxrkit.evaluate.inference import scoring_mask
    from cxrkit.model.networks import probabilities

    logits = torch.tensor([[0.0, 2.0, 50.0, 1.0, -1.0, 0.0]])  # two findings × (neg, pos, unc)
    p = probabilities(logits, "multiclass")
    expected = torch.sigmoid(torch.tensor([[2.0 - 0.0, -1.0 - 1.0]]))
    assert torch.allclose(p, expected)  # a huge uncertain logit does not move P(positive)
    y = torch.tensor([[2.0, 1.0], [0.0, 2.0]])
    m = torch.ones_like(y, dtype=torch.bool)
    assert scoring_mask(y, m, "multiclass").tolist() == [[False, True], [True, False]]
    assert scoring_mask(y, m, "sigmoid").all()


def test_auc_margin_alpha_stays_non_negative_over_real_steps(workdir: Path, monkeypatch):
    """The AUC-margin loss's alpha is maximised by plain gradient steps, which can take it below 0;
    PESG projects it back after every step. Started at alpha = -1 (as a diverged run would have
    it), it must read ≥ 0 after every optimiser step of a real run."""
    import functools

    from cxrkit.train.loop import CXRModule
    from cxrkit.train.losses import AUCMarginLoss

    init = AUCMarginLoss.__init__

    @functools.wraps(init)  # build_loss checks options against the signature
    def negative_start(self, *args, **kwargs):
        init(self, *args, **kwargs)
        with torch.no_grad():
            self.alpha.fill_(-1.0)

    monkeypatch.setattr(AUCMarginLoss, "__init__", negative_start)
    seen: list[float] = []
    real = CXRModule.on_train_batch_end

    def record(self, outputs, batch, batch_idx):
        real(self, outputs, batch, batch_idx)
        seen.append(float(self.loss_fn.alpha.detach().min()))

    monkeypatch.setattr(CXRModule, "on_train_batch_end", record)
    train(
        config(
            workdir,
            "train.name=aucm",
            "train.max_epochs=2",
            "loss.name=auc_margin",
            "optim.name=sgd",
            "optim.lr=0.5",
        )
    )
    assert len(seen) >= 4 and min(seen) >= 0.0


def test_epoch_decay_pulls_towards_the_epoch_start(workdir: Path):
    """loss.epoch_decay adds decay/2·||θ − θ_ref||²: zero at the reference, growing with distance."""
    import torch

    from cxrkit.data.loader import make_datamodule
    from cxrkit.train.loop import CXRModule

    cfg = config(workdir, "loss.epoch_decay=0.5")
    dm = make_datamodule(cfg)
    train_ds = dm.datasets["train"]
    module = CXRModule(cfg.to_dict(), dm.findings, train_ds.y.numpy(), train_ds.mask.numpy(), 1)
    module._snapshot()
    assert float(module._epoch_decay()) == 0.0
    with torch.no_grad():
        first = next(p for p in module.model.parameters() if p.requires_grad)
        first.add_(1.0)
    assert float(module._epoch_decay()) == pytest.approx(0.5 * 0.5 * first.numel())
