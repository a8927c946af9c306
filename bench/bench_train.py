"""Training images/s: cxrkit's Lightning loop beside a plain PyTorch loop, same model and data.

Both loops read the same uint8 cache through the same data module, apply the same input pipeline
(``enhanced`` + augmentation) and the same loss, optimiser and schedule; the plain loop is what a
hand-written script would do. Images/s are counted over the timed steps after warm-up steps.

Usage: uv run python bench/bench_train.py [--archs densenet121 efficientnet_b4] [--size 224]
       [--batch 16] [--steps 6] [--warmup 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report  # noqa: E402
from cxrkit.core.config import load_config  # noqa: E402
from cxrkit.data.adapters import build_index  # noqa: E402
from cxrkit.data.cache import build_cache  # noqa: E402
from cxrkit.data.index import write_index  # noqa: E402
from cxrkit.data.labels import LabelPolicy  # noqa: E402
from cxrkit.data.loader import make_datamodule  # noqa: E402
from cxrkit.data.splits import make_splits, write_splits  # noqa: E402
from cxrkit.synthetic.layouts import generate  # noqa: E402
from cxrkit.train.loop import CXRModule  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.n = warmup, None, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.warmup:
            self.t0 = time.perf_counter()
        elif batch_idx + 1 > self.warmup:
            self.n += batch["y"].shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archs", nargs="+", default=["densenet121", "efficientnet_b4"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = args.batch * (args.steps + args.warmup) * 2
        folder = generate("nih", tmp / "data", n=n, size=args.size, seed=0)
        index = build_index("nih", folder)
        write_index(index, tmp / "index.parquet")
        t = LabelPolicy(findings="nih").apply(index.frame)
        write_splits(
            make_splits(index.frame, t, fractions=(0.8, 0.1, 0.1), seed=0), tmp / "splits.parquet"
        )
        build_cache(index, tmp / "cache", size=args.size)
        for arch in args.archs:
            cfg = load_config(
                None,
                [
                    f"data.index={tmp / 'index.parquet'}",
                    f"data.splits={tmp / 'splits.parquet'}",
                    f"data.cache={tmp / 'cache'}",
                    "data.policy=default",
                    f"data.batch_size={args.batch}",
                    f"model.arch={arch}",
                    "train.max_epochs=1",
                    f"train.limit_train_batches={args.steps + args.warmup}",
                    "train.limit_val_batches=0",
                    f"train.out={tmp / 'runs'}",
                    f"train.name={arch}",
                ],
            )
            # Lightning
            L.seed_everything(0, verbose=False)
            dm = make_datamodule(cfg)
            ds = dm.datasets["train"]
            module = CXRModule(
                cfg.to_dict(), dm.findings, ds.y.numpy(), ds.mask.numpy(), args.steps
            )
            timer = StepTimer(args.warmup)
            trainer = L.Trainer(
                max_epochs=1,
                limit_train_batches=args.steps + args.warmup,
                limit_val_batches=0,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[timer],
                accelerator="auto",
                devices=1,
            )
            trainer.fit(module, datamodule=dm)
            lightning_ips = timer.n / (time.perf_counter() - timer.t0)
            # plain PyTorch on the same pieces
            L.seed_everything(0, verbose=False)
            module = CXRModule(
                cfg.to_dict(), dm.findings, ds.y.numpy(), ds.mask.numpy(), args.steps
            )
            opt = module.configure_optimizers()["optimizer"]
            module.train()
            it = iter(dm.train_dataloader())
            count, t0 = 0, None
            for step in range(args.steps + args.warmup):
                batch = next(it)
                x = dm.train_pipe(batch["image"], dm.generator)
                loss = module.loss_fn(module(x), batch["y"], batch["mask"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if step + 1 == args.warmup:
                    t0 = time.perf_counter()
                elif step + 1 > args.warmup:
                    count += batch["y"].shape[0]
            plain_ips = count / (time.perf_counter() - t0)
            rows.append(
                {
                    "model": arch,
                    "px": args.size,
                    "batch": args.batch,
                    "device": "cpu",
                    "cxrkit (Lightning) img/s": f"{lightning_ips:.1f}",
                    "plain PyTorch img/s": f"{plain_ips:.1f}",
                    "Lightning overhead": f"{(plain_ips / lightning_ips - 1) * 100:+.1f} %",
                }
            )
            print(rows[-1], flush=True)
    report("train", "uv run python bench/bench_train.py " + " ".join(sys.argv[1:]), rows)


if __name__ == "__main__":
    main()
