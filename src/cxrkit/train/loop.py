"""Training on Lightning: the LightningModule, the Trainer set-up, run folders, exact resume.

``train(cfg)`` reads the index, policy, splits and cache named by the config, trains, keeps the
best (validation mean AUC) and the last checkpoint, logs to CSV and TensorBoard, and writes the
model artifact of the best epoch to ``runs/<name>/model/``.

Exact resume: every source of randomness is a function of (seed, epoch): the global torch RNG is
re-seeded at each training epoch's start, the training sampler draws its order from (seed, epoch)
and the augmentation generator is re-seeded per epoch. Checkpoints are taken at epoch ends, so a run
killed anywhere and resumed from ``last.ckpt`` replays the interrupted epoch exactly and ends with
the same weights and metrics as an uninterrupted run (tested).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from cxrkit.core.config import Config, save_config
from cxrkit.core.errors import CxrkitError
from cxrkit.data.loader import make_datamodule
from cxrkit.evaluate.inference import masked_auroc, scoring_mask
from cxrkit.model.artifact import save_artifact
from cxrkit.model.networks import create_model, outputs_per_label, probabilities
from cxrkit.train.losses import build_loss
from cxrkit.train.schedules import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


class CXRModule(L.LightningModule):
    """A timm backbone trained with a masked multi-label loss and a per-step LR schedule.

    Args:
        cfg: the resolved config as a dict (saved in every checkpoint).
        findings: the target findings, in output order.
        y_train, mask_train: the training split's targets, for the class weights of the loss.
        steps_per_epoch: optimiser steps per epoch, for the schedules.
    """

    def __init__(
        self,
        cfg: dict[str, Any],
        findings: list[str],
        y_train: np.ndarray | None = None,
        mask_train: np.ndarray | None = None,
        steps_per_epoch: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["y_train", "mask_train"])
        self.cfg, self.findings, self.steps_per_epoch = cfg, list(findings), max(1, steps_per_epoch)
        m, d = cfg["model"], cfg["data"]
        # the multiclass loss needs three logits per finding (negative, positive, uncertain)
        self.output = "multiclass" if cfg["loss"]["name"] == "multiclass" else "sigmoid"
        self.model = create_model(
            m["arch"],
            pretrained=m["pretrained"],
            num_classes=len(findings) * outputs_per_label(self.output),
            input_mode=d["input_mode"],
            weights=m["weights"],
            drop_rate=m["drop_rate"],
        )
        freeze = cfg["train"].get("freeze", "none")
        if freeze not in ("none", "head"):
            raise CxrkitError(f"train.freeze must be 'none' or 'head'. Got '{freeze}' instead.")
        if freeze == "head":
            for p in self.model.parameters():
                p.requires_grad_(False)
            for p in self.model.get_classifier().parameters():
                p.requires_grad_(True)
        lc = cfg["loss"]
        kw = (
            {"gamma": lc["gamma"]}
            if lc["name"] == "focal"
            else ({"margin": lc["margin"]} if lc["name"] == "auc_margin" else {})
        )
        self.loss_fn = build_loss(lc["name"], y_train, mask_train, **kw)
        self._val: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._t0: float | None = None
        self._ref: list[torch.Tensor] | None = None  # the epoch decay's reference weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, L) logits, or (B, 3L) for a multiclass head."""
        return self.model(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.output == "multiclass":
            logits = logits.reshape(logits.shape[0], -1, 3)  # (B, L, 3)
        return self.loss_fn(logits, y, mask)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """With ``train.freeze=head`` the frozen backbone's batch-norm statistics stay fixed too
        (Lightning restores module modes between loops, so this is set before every batch)."""
        if self.cfg["train"].get("freeze") == "head":
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _input(self, batch: dict) -> torch.Tensor:
        x = batch["input"]
        if self.cfg["train"].get("channels_last") or (
            self.cfg["train"].get("channels_last") is None and x.is_cuda
        ):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def on_fit_start(self) -> None:
        cl = self.cfg["train"].get("channels_last")
        if cl or (cl is None and self.device.type == "cuda"):
            self.model.to(memory_format=torch.channels_last)

    def on_train_epoch_start(self) -> None:
        seed = int(self.cfg["train"]["seed"])
        torch.manual_seed(
            seed * 100_003 + self.current_epoch
        )  # dropout etc.: a function of the epoch
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)
        if float(self.cfg["loss"].get("epoch_decay") or 0.0) > 0:
            self._snapshot()  # the epoch decay pulls towards this epoch's starting weights

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(self._input(batch))
        loss = self._loss(logits, batch["y"], batch["mask"])
        decay = self._epoch_decay()
        if decay is not None:
            loss = loss + decay
        now = time.perf_counter()
        if self._t0 is not None:
            self.log(
                "img_s",
                batch["y"].shape[0] / max(now - self._t0, 1e-9),
                prog_bar=True,
                on_step=True,
                on_epoch=False,
            )
        self._t0 = now
        self.log(
            "train/loss",
            loss,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=batch["y"].shape[0],
        )
        self.log(
            "lr",
            self.optimizers().param_groups[0]["lr"],
            prog_bar=True,
            on_step=True,
            on_epoch=False,
        )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(self._input(batch))
        loss = self._loss(logits, batch["y"], batch["mask"])
        self.log("val/loss", loss, on_epoch=True, batch_size=batch["y"].shape[0], sync_dist=True)
        probs = probabilities(logits.detach(), self.output)
        self._val.append((probs, batch["y"], scoring_mask(batch["y"], batch["mask"], self.output)))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        probs, y, mask = (torch.cat(t) for t in zip(*self._val, strict=True))
        self._val.clear()
        if self.trainer.world_size > 1:
            probs, y, mask = (self.all_gather(t).flatten(0, 1) for t in (probs, y, mask))
        aucs = masked_auroc(probs.cpu(), y.cpu(), mask.cpu())
        valid = [a for a in aucs if a == a]
        mean = float(np.mean(valid)) if valid else float("nan")
        for f, a in zip(self.findings, aucs, strict=True):
            if a == a:
                self.log(f"val/auc/{f}", a, sync_dist=False)
        self.log("val/mean_auc", mean, prog_bar=True, sync_dist=False)

    def on_train_epoch_end(self) -> None:
        self._t0 = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After each optimiser step: project the AUC-margin loss's alpha onto alpha ≥ 0, as
        LibAUC's PESG does every step (plain ascent steps can make it negative)."""
        project = getattr(self.loss_fn, "project_", None)
        if project is not None:
            project()

    def _epoch_decay(self) -> torch.Tensor | None:
        """LibAUC's epoch decay: ``decay/2 · ||θ − θ_ref||²``, θ_ref the weights at the epoch's start
        (its gradient ``decay · (θ − θ_ref)`` is PESG's); None when ``loss.epoch_decay`` is 0."""
        decay = float(self.cfg["loss"].get("epoch_decay") or 0.0)
        if decay <= 0:
            return None
        if self._ref is None:
            self._snapshot()
        total = sum(
            ((p - r) ** 2).sum()
            for p, r in zip(self._ref_params(), self._ref, strict=True)
        )  # fmt: skip
        return 0.5 * decay * total

    def _ref_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _snapshot(self) -> None:
        self._ref = [p.detach().clone() for p in self._ref_params()]

    def configure_optimizers(self) -> Any:
        o, s = self.cfg["optim"], self.cfg["schedule"]
        params: Any = [p for p in self.model.parameters() if p.requires_grad]
        ascent = getattr(self.loss_fn, "ascent_parameters", None)
        descent = getattr(self.loss_fn, "descent_parameters", None)
        opt = build_optimizer(
            params, o["name"], lr=o["lr"], weight_decay=o["weight_decay"], momentum=o["momentum"]
        )
        if descent is not None:
            opt.add_param_group({"params": list(descent()), "lr": o["lr"], "weight_decay": 0.0})
        if ascent is not None:  # AUC-margin's alpha is maximised (LibAUC's min-max)
            opt.add_param_group(
                {"params": list(ascent()), "lr": o["lr"], "weight_decay": 0.0, "maximize": True}
            )
        total = self.steps_per_epoch * int(self.cfg["train"]["max_epochs"])
        step_size = s["step_size"] or 2 * self.steps_per_epoch
        sched = build_scheduler(
            opt,
            s["name"],
            base_lr=s["base_lr"],
            max_lr=s["max_lr"],
            step_size=step_size,
            total_steps=total,
            warmup_steps=s["warmup_steps"],
            pct_start=s["pct_start"],
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _precision(cfg: Config) -> str:
    p = cfg.train.precision
    if p != "auto":
        return p
    if torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu", "cuda"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def run_folder(cfg: Config) -> Path:
    name = cfg.train.name or f"{cfg.model.arch}-{cfg.data.input_mode}"
    return Path(cfg.train.out) / name


def train(cfg: Config, *, resume: bool = False) -> Path:
    """Train as the config says; returns the run folder (config.yaml, checkpoints/, logs, model/).

    With ``train.hierarchy`` the run has two stages (see :func:`train_hierarchical`).
    """
    if cfg.train.hierarchy:
        return train_hierarchical(cfg, resume=resume)
    return _train_one(cfg, resume=resume)


def _policy_dict(spec: Any) -> dict[str, Any]:
    from cxrkit.data.labels import LabelPolicy

    pol = LabelPolicy.from_dict(spec) if isinstance(spec, dict) else LabelPolicy.from_spec(spec)
    return pol.to_dict()


def train_hierarchical(cfg: Config, *, resume: bool = False) -> Path:
    """Hierarchy-aware training (Pham et al. 2019): parents first, then the target findings.

    Stage 1 trains the backbone on the parent findings of the CheXpert tree that the index labels
    (Enlarged Cardiomediastinum, Lung Opacity, Consolidation) for ``train.stage1_epochs`` epochs
    into ``<run>/stage1-parents``; stage 2 starts from its best weights (the classifier is
    re-initialised for the targets) and trains on the configured findings for ``max_epochs``, the
    whole network or, with ``train.freeze=head``, the classifier only. Both stages resume.
    """
    import dataclasses

    from cxrkit.core.findings import PARENT
    from cxrkit.data.index import read_index

    folder = run_folder(cfg)
    index = read_index(cfg.data.index)
    parents = [f for f in dict.fromkeys(PARENT.values()) if f in index.findings]
    if not parents:
        raise CxrkitError(
            "train.hierarchy needs parent findings (Enlarged Cardiomediastinum, Lung Opacity, "
            "Consolidation) in the index; this dataset labels none of them."
        )
    pol = _policy_dict(cfg.data.policy)
    stage1 = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, policy={**pol, "findings": parents}),
        train=dataclasses.replace(
            cfg.train,
            hierarchy=False,
            freeze="none",
            out=str(folder),
            name="stage1-parents",
            max_epochs=cfg.train.stage1_epochs or max(1, cfg.train.max_epochs // 2),
        ),
    )
    s1 = run_folder(stage1)
    if not (s1 / "model" / "model.json").is_file():
        _train_one(stage1, resume=resume and (s1 / "checkpoints" / "last.ckpt").is_file())
    stage2 = dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model, pretrained=False, weights=str(s1 / "model" / "model.safetensors")
        ),
        train=dataclasses.replace(cfg.train, hierarchy=False),
    )
    return _train_one(stage2, resume=resume and (folder / "checkpoints" / "last.ckpt").is_file())


def _train_one(cfg: Config, *, resume: bool = False) -> Path:
    folder = run_folder(cfg)
    ckpt_dir = folder / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise CxrkitError(
            f"nothing to resume: '{last}' does not exist. Start the run without --resume."
        )
    if not resume and last.is_file():
        raise CxrkitError(
            f"run '{folder}' already has checkpoints: pass --resume to continue it, or set "
            "train.name=... for a new run."
        )
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    dm = make_datamodule(cfg)
    train_ds = dm.datasets[dm.train_part]
    multiclass_targets = dm.targets is not None and bool(dm.targets.multiclass.any())
    if multiclass_targets and cfg.loss.name != "multiclass":
        raise CxrkitError(
            "the label policy keeps uncertain labels as a third class ('multiclass'), which needs "
            f"loss.name=multiclass; got loss.name={cfg.loss.name}."
        )
    if cfg.loss.name == "multiclass" and not multiclass_targets:
        raise CxrkitError(
            "loss.name=multiclass needs the 'multiclass' uncertainty policy (uncertain labels as a "
            "third class): set data.policy.uncertain=multiclass or use the 'u-multiclass' preset."
        )
    if len(dm.datasets[dm.val_part]) == 0:
        raise CxrkitError(
            "the validation part is empty: make splits with a val fraction (cxrkit split)."
        )
    steps = -(-len(train_ds) // cfg.data.batch_size)
    if cfg.train.limit_train_batches is not None:
        lim = cfg.train.limit_train_batches
        steps = min(steps, int(lim)) if isinstance(lim, int) else max(1, int(steps * lim))
    steps = max(1, steps // cfg.train.accumulate_grad_batches)
    module = CXRModule(cfg.to_dict(), dm.findings, train_ds.y.numpy(), train_ds.mask.numpy(), steps)
    folder.mkdir(parents=True, exist_ok=True)
    save_config(cfg, folder / "config.yaml")
    callbacks: list = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="best-{epoch:03d}",
            monitor="val/mean_auc",
            mode="max",
            save_last=True,
            save_top_k=1,
        ),
        LearningRateMonitor(logging_interval="step"),
    ]
    if cfg.train.early_stopping_patience:
        callbacks.append(
            EarlyStopping(
                monitor="val/mean_auc", mode="max", patience=cfg.train.early_stopping_patience
            )
        )
    trainer = L.Trainer(
        default_root_dir=folder,
        max_epochs=cfg.train.max_epochs,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=cfg.train.strategy,
        precision=_precision(cfg),
        accumulate_grad_batches=cfg.train.accumulate_grad_batches,
        gradient_clip_val=cfg.train.gradient_clip_val,
        deterministic=cfg.train.deterministic,
        limit_train_batches=cfg.train.limit_train_batches,
        limit_val_batches=cfg.train.limit_val_batches,
        log_every_n_steps=cfg.train.log_every_n_steps,
        callbacks=callbacks,
        logger=[
            CSVLogger(folder, name="logs", version=""),
            TensorBoardLogger(folder, name="tb", version=""),
        ],
        enable_model_summary=False,
    )
    t0 = time.perf_counter()
    if resume and trainer.is_global_zero:
        _keep_log_history(folder / "logs", last)
    # weights_only: a checkpoint is data, never code (torch < 2.6 unpickled by default)
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None, weights_only=True)
    if trainer.is_global_zero:
        _merge_log_history(folder / "logs")
    elapsed = time.perf_counter() - t0
    if trainer.is_global_zero:
        seconds = _add_train_seconds(folder, elapsed)
        best = callbacks[0].best_model_path or str(last)
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        pipe = dm.eval_pipe
        save_artifact(
            module.model,
            folder / "model",
            arch=cfg.model.arch,
            findings=dm.findings,
            input_mode=cfg.data.input_mode,
            image_size=int(dm.images.shape[1]),
            mean=pipe.mean.view(-1).tolist(),
            std=pipe.std.view(-1).tolist(),
            config_hash=cfg.hash(),
            output=module.output,
            fit=dm.cache_fit,
            clip_limit=float(pipe.clip_limit),
            extra={
                "best_checkpoint": Path(best).name,
                "best_val_mean_auc": float(callbacks[0].best_model_score or float("nan")),
                "train_seconds": round(seconds, 1),
                "epochs": int(trainer.current_epoch),
            },
        )
    return folder


_LOG = "metrics.csv"
_LOG_BEFORE = "metrics.before-resume.csv"


def _keep_log_history(logs: Path, last: Path) -> None:
    """Before a resumed session: Lightning's CSV logger starts ``metrics.csv`` afresh, so the rows
    of the finished epochs (≤ the checkpoint's) are kept aside, with any kept by an earlier resume
    that was itself killed."""
    import pandas as pd

    from cxrkit.core.fileio import atomic_path

    epoch = int(torch.load(last, map_location="cpu", weights_only=True)["epoch"])
    parts = [pd.read_csv(f) for f in (logs / _LOG_BEFORE, logs / _LOG) if f.is_file()]
    parts = [p for p in parts if len(p)]
    if not parts:
        return
    history = pd.concat(parts, ignore_index=True)
    if "epoch" in history:
        history = history[history["epoch"].isna() | (history["epoch"] <= epoch)]
    with atomic_path(logs / _LOG_BEFORE) as tmp:
        history.to_csv(tmp, index=False)


def _merge_log_history(logs: Path) -> None:
    """After a resumed session: ``metrics.csv`` = the kept rows, then this session's."""
    import pandas as pd

    from cxrkit.core.fileio import atomic_path

    before = logs / _LOG_BEFORE
    if not before.is_file():
        return
    now = [pd.read_csv(f) for f in (before, logs / _LOG) if f.is_file()]
    with atomic_path(logs / _LOG) as tmp:
        pd.concat(now, ignore_index=True).to_csv(tmp, index=False)
    before.unlink()


def _add_train_seconds(folder: Path, seconds: float) -> float:
    """Training time summed over a run's sessions (a resumed run adds to the killed one's)."""
    import json

    from cxrkit.core.fileio import write_text_atomic

    f = folder / "train_time.json"
    try:
        before = float(json.loads(f.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        before = 0.0
    total = before + seconds
    write_text_atomic(f, json.dumps({"seconds": round(total, 2)}) + "\n")
    return total


def lr_find(
    cfg: Config, out: str | Path, *, min_lr: float = 1e-7, max_lr: float = 1.0, steps: int = 100
) -> tuple[float | None, Path]:
    """The learning-rate range test (Smith 2017) with Lightning's tuner; writes the loss-vs-LR plot.

    Returns:
        The suggested learning rate (steepest loss descent; None if the curve has no descent) and
        the plot's path.
    """
    import matplotlib

    matplotlib.use("Agg")
    from lightning.pytorch.tuner import Tuner

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    dm = make_datamodule(cfg)
    train_ds = dm.datasets[dm.train_part]
    module = CXRModule(cfg.to_dict(), dm.findings, train_ds.y.numpy(), train_ds.mask.numpy(), steps)
    trainer = L.Trainer(
        default_root_dir=Path(out).parent,
        accelerator=cfg.train.accelerator,
        devices=1,
        precision=_precision(cfg),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        max_epochs=1,
    )
    result = Tuner(trainer).lr_find(
        module,
        datamodule=dm,
        min_lr=min_lr,
        max_lr=max_lr,
        num_training=steps,
        update_attr=False,
        early_stop_threshold=None,
    )
    if result is None:
        raise CxrkitError("the learning-rate range test produced no result.")
    fig = result.plot(suggest=True)
    fig.axes[0].set_title(f"LR range test: {cfg.model.arch}, {cfg.data.input_mode}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from cxrkit.core.fileio import atomic_path

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=120)
    return result.suggestion(), out
