"""The training stage's commands: train, experiment, lr-find (parse, call the library, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxrkit.cli.common import _quiet_lightning, console
from cxrkit.core.errors import CxrkitError


def _config_from_args(config: Path | None, overrides: list[str] | None):
    """The config file argument is optional: ``cxrkit train a.b=c`` gives overrides alone."""
    from cxrkit.core.config import load_config

    overrides = list(overrides or [])
    if config is not None and "=" in str(config) and not config.exists():
        config, overrides = None, [str(config), *overrides]
    return load_config(config, overrides)


def train_cmd(
    config: Annotated[Path | None, typer.Argument(help="A YAML config (see configs/).")] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="Dotted overrides: train.max_epochs=3 model.arch=resnet18 ..."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run from its last checkpoint.")
    ] = False,
) -> None:
    """Train a model (Lightning): checkpoints, logs and the model artifact in runs/<name>/."""
    from cxrkit.train.loop import train

    _quiet_lightning()
    cfg = _config_from_args(config, overrides)
    folder = train(cfg, resume=resume)
    console.print(f"[green]trained[/green] {folder}: model artifact in {folder / 'model'}")
    console.print(f"next: cxrkit evaluate {folder}")


def experiment_cmd(
    grid: Annotated[Path, typer.Argument(help="A grid YAML (see configs/thesis_grid.yaml).")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="Dotted overrides for every run.")
    ] = None,
) -> None:
    """Train a grid of runs in sequence (a failed run does not stop it) and compare them."""
    from cxrkit.train.grid import run_grid

    _quiet_lightning()

    table = run_grid(grid, list(overrides or []))
    t = Table(title="comparison (test part)", title_justify="left")
    for col in table.columns:
        t.add_column(str(col), no_wrap=col == "run")
    for _, r in table.iterrows():
        t.add_row(
            *[
                f"{v:.3f}"
                if isinstance(v, float) and v == v
                else ("" if v is None or v != v else str(v))
                for v in r.tolist()
            ]
        )
    console.print(t)
    if "status" in table.columns:
        failed = table[table["status"] != "ok"]
        if len(failed):
            names = ", ".join(
                f"{r['run']} ({r['status'].removeprefix('failed: ')})" for _, r in failed.iterrows()
            )
            raise CxrkitError(f"{len(failed)} of {len(table)} runs failed: {names}.")


def lr_find_cmd(
    config: Annotated[Path | None, typer.Argument(help="A YAML config (see configs/).")] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The plot to write.")] = Path(
        "lr_find.png"
    ),
    min_lr: Annotated[float, typer.Option(help="Start of the range.")] = 1e-7,
    max_lr: Annotated[float, typer.Option(help="End of the range.")] = 1.0,
    steps: Annotated[int, typer.Option(help="Training steps of the test.")] = 100,
) -> None:
    """Learning-rate range test: loss against an exponentially growing LR, with a suggestion."""
    from cxrkit.train.loop import lr_find

    _quiet_lightning()
    cfg = _config_from_args(config, overrides)
    suggestion, path = lr_find(cfg, out, min_lr=min_lr, max_lr=max_lr, steps=steps)
    text = f"{suggestion:.2e}" if suggestion else "none (no clear descent)"
    console.print(f"suggested learning rate: {text}; plot in {path}")
