"""The ``cxrkit demo`` command: the whole pipeline end to end on CPU, on synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxrkit.cli.common import (
    _print_label_table,
    _print_metrics,
    _print_split_report,
    _progress,
    _quiet_lightning,
    console,
)


def demo_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Working folder.")] = Path("cxrkit-demo"),
    n: Annotated[int, typer.Option("--n", help="Synthetic images.")] = 5000,
    size: Annotated[int, typer.Option(help="Synthetic image side in pixels.")] = 128,
    train_size: Annotated[int, typer.Option(help="Side of the cached training images.")] = 64,
    arch: Annotated[str, typer.Option(help="timm architecture trained from scratch.")] = "resnet18",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 14,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    dataset: Annotated[
        Path | None, typer.Option(help="Use this CheXpert folder instead of synthetic data.")
    ] = None,
) -> None:
    """The pipeline end to end on CPU: synthetic data (or --dataset) → index → labels → split → cache → train → held-out AUC against the planted truth → evaluation with CIs → HTML report."""
    from cxrkit.data.adapters import build_index
    from cxrkit.data.cache import build_cache
    from cxrkit.data.index import write_index
    from cxrkit.data.labels import PRESETS, label_table
    from cxrkit.data.splits import make_splits, write_splits
    from cxrkit.synthetic.layouts import generate

    out.mkdir(parents=True, exist_ok=True)
    if dataset is None:
        console.rule("1. synthetic CheXpert-layout data")
        data_dir = out / f"data-chexpert-n{n}-s{size}-seed{seed}"
        reuse = (data_dir / "CheXpert-v1.0-small" / "synthetic.json").is_file()
        with _progress() as bar:
            task = bar.add_task("synth", total=n)
            folder = generate(
                "chexpert",
                data_dir,
                n=n,
                size=size,
                seed=seed,
                progress=lambda k: bar.advance(task, k),
            )
        console.print(f"{n:,} images ({size} px) in {folder}" + (" (reused)" if reuse else ""))
    else:
        folder = dataset
    console.rule("2. index")
    index = build_index("chexpert", folder, drop_missing=dataset is not None)
    write_index(index, out / "index.parquet")
    f = index.frame
    console.print(
        f"{out / 'index.parquet'}: {len(f):,} images, {f['patient_id'].nunique():,} patients, "
        f"{int((f['view'] == 'frontal').sum()):,} frontal"
    )
    console.rule("3. labels")
    for name in ("default", "chexpert-competition"):
        pol = PRESETS[name]
        targets = pol.apply(f, index.findings)
        _print_label_table(
            label_table(f, targets), f"policy '{name}': {len(targets.rows):,} images"
        )
    console.rule("4. patient-grouped stratified split (policy 'thesis', 0.7/0.1/0.2)")
    targets = PRESETS["thesis"].apply(f, index.findings)
    splits = make_splits(f, targets, method="iterative", fractions=(0.7, 0.1, 0.2), seed=seed)
    write_splits(splits, out / "splits.parquet")
    rep = splits.report
    _print_split_report(rep, f"prevalence per part (largest deviation {rep['max_dev_pp']:.2f} pp)")
    console.rule("5. image cache")
    with _progress() as bar:
        task = bar.add_task("cache", total=len(f))
        info = build_cache(
            index,
            out / "cache",
            size=train_size,
            progress=lambda k: bar.advance(task, k),
            on_start=lambda todo: bar.update(task, total=todo),
        )
    console.print(f"{info.n_ok:,} of {info.n:,} images cached in {info.path}")
    _demo_train_and_score(out, folder, info.path, arch, epochs, seed, synthetic=dataset is None)


def _demo_train_and_score(
    out: Path, folder: Path, cache: Path, arch: str, epochs: int, seed: int, *, synthetic: bool
) -> None:
    """Steps 6 and 7 of the demo: train, then score the test part (against the planted truth)."""
    import time

    import pandas as pd

    from cxrkit.core.config import load_config
    from cxrkit.evaluate.evaluate import EvalOptions, evaluate_model
    from cxrkit.report.build import build_report
    from cxrkit.train.loop import train

    _quiet_lightning()

    console.rule(
        f"6. train {arch} from scratch on CPU ({epochs} epochs, frontal, 5 competition findings)"
    )
    cfg = load_config(
        None,
        [
            f"data.index={out / 'index.parquet'}",
            f"data.splits={out / 'splits.parquet'}",
            f"data.cache={cache}",
            "data.policy={findings: competition, views: frontal}",
            "data.input_mode=gray1",
            "data.batch_size=64",
            f"model.arch={arch}",
            "loss.name=bce",
            "optim.name=adamw",
            "optim.lr=0.002",
            "optim.weight_decay=0.0001",
            "schedule.name=onecycle",
            "schedule.max_lr=0.002",
            "schedule.pct_start=0.25",
            f"train.max_epochs={epochs}",
            f"train.seed={seed}",
            f"train.out={out / 'runs'}",
            f"train.name=demo-{arch}-e{epochs}-s{seed}",
            "train.accelerator=cpu",
            "train.devices=1",
        ],
    )
    run = out / "runs" / f"demo-{arch}-e{epochs}-s{seed}"
    t0 = time.perf_counter()
    if not (run / "model" / "model.json").is_file():
        train(cfg, resume=(run / "checkpoints" / "last.ckpt").is_file())
        console.print(f"trained in {time.perf_counter() - t0:.0f} s: {run}")
    else:
        console.print(f"reusing the trained run {run}")
    console.rule("7. held-out evaluation (test part, patient-disjoint)")
    truth_file = folder / "synthetic_truth.csv"
    truth, source = None, "the test part's labels"
    if synthetic and truth_file.is_file():
        truth = pd.read_csv(truth_file).set_index("path")
        source = "the planted truth (synthetic_truth.csv)"
    # the one scorer, with the planted truth as the labels; nothing written, no bootstrap
    held_out, _ = evaluate_model(
        run,
        EvalOptions(operating_point="fixed", n_boot=0, aggregate="none", save=False),
        truth=truth,
        write=False,
    )
    scores = held_out.image
    t = Table(
        title=f"test AUROC against {source}: {scores.n_images:,} images", title_justify="left"
    )
    t.add_column("finding", no_wrap=True)
    t.add_column("AUROC", justify="right")
    for f, m in scores.findings.items():
        t.add_row(f, "undefined" if m.auroc is None else f"{m.auroc:.3f}")
    mean = scores.average.macro_auroc
    t.add_row(
        "[bold]mean[/bold]",
        "[bold]undefined[/bold]" if mean is None else f"[bold]{mean:.3f}[/bold]",
    )
    console.print(t)
    console.rule("8. evaluation with confidence intervals, operating points and the report")
    result, folder = evaluate_model(run, EvalOptions(operating_point="youden"))
    primary = result.primary
    _print_metrics(
        result.main,
        f"{primary}-level metrics against the test part's labels (uncertain = positive); "
        "thresholds: Youden's J on the validation part",
    )
    page, _ = build_report(run)
    console.print(f"predictions and metrics in {folder}")
    console.print(f"[bold]report: {page}[/bold]")
