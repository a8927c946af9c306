"""CLI commands that use a trained model artifact: predict, explain, export, import, serve.

They live apart from :mod:`cxrkit.cli.app` to keep that file readable; :func:`register` adds them to
the main typer app. Library code lives in :mod:`cxrkit.use.predict`, :mod:`cxrkit.model.onnx` and
:mod:`cxrkit.model.importers`; the helpers of :mod:`cxrkit.cli.app` are imported inside the commands
(that module imports this one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

#: Up to this many images the predictions are shown as a table; above, as a summary.
TABLE_MAX_IMAGES = 20

export_app = typer.Typer(
    name="export", help="Export a model artifact to other formats.", no_args_is_help=True
)
import_app = typer.Typer(
    name="import",
    help="Turn published chest X-ray weights into a cxrkit model artifact.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
    app.command("predict")(predict_cmd)
    app.add_typer(export_app, name="export")
    app.add_typer(import_app, name="import")


# ---- predict -------------------------------------------------------------------------------------


def predict_cmd(
    artifact: Annotated[
        Path, typer.Argument(help="A model artifact folder (model.json + weights).")
    ],
    paths: Annotated[
        list[str],
        typer.Argument(help="Image files (PNG, JPEG, DICOM), folders, or glob patterns."),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Write the predictions: .csv, .json or .parquet."),
    ] = None,
    runtime: Annotated[
        str, typer.Option(help="torch (the weights) or onnx (after `cxrkit export onnx`).")
    ] = "torch",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 16,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    onnx_file: Annotated[
        Path | None,
        typer.Option("--onnx", help="onnx runtime: the ONNX file if not ARTIFACT/model.onnx."),
    ] = None,
) -> None:
    """Predict findings on images: a probability per finding, and positive/negative where the
    artifact has a threshold."""
    from cxrkit.cli.app import _guard_inside, _guard_output, _progress, console
    from cxrkit.model.artifact import artifact_folder
    from cxrkit.use.predict import (
        Predictor,
        check_predictions_path,
        expand_inputs,
        write_predictions,
    )

    _guard_inside(out, artifact_folder(artifact), "model artifact")

    if out is not None:
        check_predictions_path(out)
    files = expand_inputs(paths)
    from cxrkit.model.artifact import META_FILE, WEIGHTS_FILE

    _guard_output(out, artifact, artifact / META_FILE, artifact / WEIGHTS_FILE, *files)
    predictor = Predictor.from_artifact(
        artifact, runtime=runtime, device=device, batch_size=batch_size, onnx_path=onnx_file
    )
    if len(files) > TABLE_MAX_IMAGES:
        with _progress() as bar:
            task = bar.add_task("predict", total=len(files))
            frame = predictor.predict_paths(files, progress=lambda k: bar.advance(task, k))
    else:
        frame = predictor.predict_paths(files)
    if len(frame) <= TABLE_MAX_IMAGES:
        _print_predictions(frame, predictor)
    else:
        _print_summary(frame, predictor)
    _warn_failed(frame)
    if out is not None:
        write_predictions(frame, out, predictor)
        console.print(f"[green]wrote[/green] {out}: {len(frame):,} rows", highlight=False)


def _cell(p: float, positive) -> str:
    if p != p:
        return "—"
    text = f"{p:.3f}"
    if positive is True:
        return f"[bold red]{text} +[/bold red]"
    if positive is False:
        return f"{text} [dim]−[/dim]"
    return text


def _print_predictions(frame, predictor) -> None:
    import pandas as pd
    from rich.table import Table
    from rich.text import Text

    from cxrkit.cli.app import console
    from cxrkit.use.predict import decision_column

    labels = predictor.labels
    thresholded = [f for f in labels if predictor.thresholds.get(f) is not None]
    caption = (
        f"+ / −: at or above / below the artifact's threshold ({len(thresholded)} of "
        f"{len(labels)} findings have one)"
        if thresholded
        else "the artifact has no thresholds: probabilities only"
    )
    t = Table(
        title=f"probability of each finding ({predictor.meta.architecture}, {predictor.runtime})",
        title_justify="left",
        caption=caption,
        caption_justify="left",
    )
    t.add_column("image", overflow="fold")
    for f in labels:
        t.add_column(f, justify="right")
    for _, row in frame.iterrows():
        cells = []
        for f in labels:
            col = decision_column(f)
            decided = row[col] if col in frame.columns else None
            positive = None if decided is None or pd.isna(decided) else bool(decided)
            cells.append(_cell(float(row[f]), positive))
        t.add_row(Text(str(row["path"])), *cells)
    console.print(t)


def _print_summary(frame, predictor) -> None:
    from rich.table import Table

    from cxrkit.cli.app import console
    from cxrkit.use.predict import ERROR_COLUMN, decision_column

    ok = frame[frame[ERROR_COLUMN].isna()]
    t = Table(
        title=f"{len(ok):,} images scored ({predictor.meta.architecture}, {predictor.runtime})",
        title_justify="left",
    )
    for col, justify in (
        ("finding", "left"),
        ("mean prob.", "right"),
        ("threshold", "right"),
        ("positive", "right"),
    ):
        t.add_column(col, justify=justify, no_wrap=col == "finding")
    for f in predictor.labels:
        thr = predictor.thresholds.get(f)
        col = decision_column(f)
        pos = (
            f"{int(ok[col].sum()):,} ({ok[col].mean():.1%})"
            if col in ok.columns and len(ok)
            else "—"
        )
        t.add_row(f, f"{ok[f].mean():.3f}", "—" if thr is None else f"{thr:.3f}", pos)
    console.print(t)


def _warn_failed(frame) -> None:
    from rich.markup import escape

    from cxrkit.cli.app import err_console
    from cxrkit.core.errors import preview
    from cxrkit.use.predict import ERROR_COLUMN

    failed = frame[frame[ERROR_COLUMN].notna()]
    if len(failed):
        err_console.print(
            f"[yellow]warning:[/yellow] {len(failed):,} of {len(frame):,} images could not be "
            f"decoded (their rows have empty probabilities and an error): "
            f"{escape(preview(failed[ERROR_COLUMN].tolist(), 3))}",
            highlight=False,
            soft_wrap=True,
        )


# ---- export --------------------------------------------------------------------------------------


@export_app.command("onnx")
def export_onnx_cmd(
    artifact: Annotated[Path, typer.Argument(help="A model artifact folder.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="The ONNX file (default: ARTIFACT/model.onnx)."),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    exporter: Annotated[
        str, typer.Option(help="auto, torchscript or dynamo (see docs/inference.md).")
    ] = "auto",
) -> None:
    """Export the network to ONNX (normalised input → logits) plus model.onnx.json (preprocessing,
    labels, thresholds)."""
    import json

    from cxrkit.cli.app import console
    from cxrkit.model.onnx import export_onnx, onnx_meta_path

    path = export_onnx(artifact, out, opset, exporter=exporter)
    facts = json.loads(onnx_meta_path(path).read_text(encoding="utf-8"))["onnx"]
    size = path.stat().st_size / 2**20
    console.print(
        f"[green]wrote[/green] {path} ({size:,.1f} MiB, opset {facts['opset']}, "
        f"{facts['exporter']} exporter; onnxruntime matches torch within "
        f"{facts['max_abs_diff_vs_torch']:.1e}) and {onnx_meta_path(path).name}",
        highlight=False,
    )
    console.print(f"next: cxrkit predict {artifact} IMAGES --runtime onnx", highlight=False)


# ---- import --------------------------------------------------------------------------------------

OutOpt = Annotated[Path, typer.Option("--out", "-o", help="The artifact folder to write.")]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Replace an artifact already in the --out folder.")
]


def _imported(out: Path) -> None:
    from cxrkit.cli.app import console
    from cxrkit.model.artifact import read_artifact_meta

    meta = read_artifact_meta(out)
    n_thr = sum(t is not None for t in meta.thresholds.values())
    console.print(
        f"[green]wrote[/green] {out}: {meta.architecture}, {len(meta.labels)} findings, "
        f"{meta.input_mode} {meta.image_size[0]} px (fit {meta.fit}), {n_thr} thresholds",
        highlight=False,
    )
    console.print(f"next: cxrkit predict {out} IMAGES", highlight=False)


@import_app.command("chexnet")
def import_chexnet_cmd(
    weights: Annotated[
        Path, typer.Argument(help="A CheXNet DenseNet-121 state dict (.pth.tar/.pth/.safetensors).")
    ],
    out: OutOpt,
    force: ForceOpt = False,
) -> None:
    """Import CheXNet weights (e.g. arnoweng/CheXNet's model.pth.tar): 14 NIH findings."""
    from cxrkit.cli.app import _guard_output
    from cxrkit.model.importers import import_chexnet

    _guard_output(out, weights)
    _imported(import_chexnet(weights, out, overwrite=force))


@import_app.command("torchxrayvision")
def import_xrv_cmd(
    weights: Annotated[
        Path,
        typer.Argument(help="A torchxrayvision model's state dict (.pt/.pth/.safetensors)."),
    ],
    out: OutOpt,
    name: Annotated[
        str, typer.Option(help="The xrv weights it was saved from (which outputs were trained).")
    ] = "densenet121-res224-all",
    force: ForceOpt = False,
) -> None:
    """Import torchxrayvision weights (saved with torch.save(model.state_dict(), PATH))."""
    from cxrkit.cli.app import _guard_output
    from cxrkit.model.importers import import_torchxrayvision

    _guard_output(out, weights)
    _imported(import_torchxrayvision(weights, out, name=name, overwrite=force))
