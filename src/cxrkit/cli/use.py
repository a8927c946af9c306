"""The use stage's commands, those that use a trained model artifact: predict, explain, ensemble,
serve, export onnx, import chexnet/torchxrayvision (parse, call the library, print).

Library code lives in :mod:`cxrkit.use.predict`, :mod:`cxrkit.use.explain`, :mod:`cxrkit.use.serve`,
:mod:`cxrkit.model.ensemble`, :mod:`cxrkit.model.onnx` and
:mod:`cxrkit.model.importers`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import (
    HelpCommand,
    HelpGroup,
    MaxPixelsOption,
    _guard_inside,
    _guard_output,
    _max_pixels,
    _progress,
    console,
    err_console,
    is_verbose,
)
from cxrkit.core.errors import CxrkitError
from cxrkit.core.names import slug

#: Up to this many images the predictions are shown as a table; above, as a summary.
TABLE_MAX_IMAGES = 20

export_app = typer.Typer(
    name="export",
    help="Export a model artifact to other formats.",
    no_args_is_help=True,
    cls=HelpGroup,
)
import_app = typer.Typer(
    name="import",
    cls=HelpGroup,
    help="Turn published chest X-ray weights into a cxrkit model artifact.",
    no_args_is_help=True,
)


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
    max_pixels: MaxPixelsOption = None,
) -> None:
    """Predict findings on images: a probability per finding, and positive/negative where the artifact has a threshold."""
    _max_pixels(max_pixels)
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


# ---- explain / ensemble / serve ------------------------------------------------------------------


def explain_cmd(
    artifact: Annotated[Path, typer.Argument(help="A model artifact (or run) folder.")],
    image: Annotated[Path, typer.Argument(help="A PNG, JPEG or DICOM image.")],
    finding: Annotated[
        str | None,
        typer.Option(help="The finding to explain (default: the most probable one)."),
    ] = None,
    method: Annotated[str, typer.Option(help="gradcam | gradcam++.")] = "gradcam",
    layer: Annotated[
        str | None, typer.Option(help="Dotted layer name (default: the last feature map).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Opacity of the heatmap.")] = 0.4,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Overlay PNG (default <image>.<finding>.png)."),
    ] = None,
    max_pixels: MaxPixelsOption = None,
) -> None:
    """Grad-CAM heatmap of one finding over the image, written as a PNG overlay."""
    _max_pixels(max_pixels)
    from cxrkit.model.artifact import resolve_artifact
    from cxrkit.use.explain import Explainer, save_overlay

    _, folder = resolve_artifact(artifact)
    ex = Explainer(folder, method=method, layer=layer)
    if finding is not None:
        ex.finding_index(finding)  # a wrong name fails before the image is read
    result = ex.explain_file(image, finding)
    name = slug(result.finding)  # a label name from model.json is not a file name
    # the current folder, not beside the image: an overlay in an image folder would later be
    # scored as an X-ray by `cxrkit predict FOLDER`
    out = out or Path(f"{image.stem}.{name}.png")
    _guard_output(out, image)
    _guard_inside(out, folder, "model artifact")
    save_overlay(out, result.gray, result.heatmap_image, alpha=alpha)
    p = float(result.probabilities[result.index])
    thr = ex.meta.thresholds.get(result.finding)
    decision = (
        "" if thr is None else (" (positive" if p >= thr else " (negative") + f" at {thr:.3f})"
    )
    console.print(f"{result.finding}: p = {p:.3f}{decision}; {method} overlay in {out}")


def ensemble_cmd(
    members: Annotated[
        list[Path], typer.Argument(help="Two or more model artifact (or run) folders.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The ensemble artifact folder.")],
    weights: Annotated[
        str | None, typer.Option(help="Comma-separated member weights (default: equal).")
    ] = None,
    tta: Annotated[str, typer.Option(help="Test-time augmentation: none | hflip.")] = "none",
) -> None:
    """Combine artifacts into one ensemble artifact (weighted mean of probabilities)."""
    from cxrkit.model.ensemble import make_ensemble

    w = None
    if weights:
        try:
            w = [float(x) for x in weights.split(",")]
        except ValueError:
            raise CxrkitError(
                f"--weights must be numbers separated by commas; got '{weights}'."
            ) from None
    folder = make_ensemble(members, out, weights=w, tta=tta.lower())
    console.print(
        f"ensemble of {len(members)} models in {folder}; fit its operating points with "
        f"`cxrkit evaluate {folder} --config <a member's config.yaml>`"
    )


def serve_cmd(
    artifact: Annotated[Path, typer.Argument(help="A model artifact (or run) folder.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, in MiB.")] = 32,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
    runtime: Annotated[
        str,
        typer.Option(help="auto (onnx when the model has an export, on CPU) | torch | onnx."),
    ] = "auto",
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="CXRKIT_API_KEY",
            help="Require this key (X-API-Key header) on every endpoint but / and /health; "
            "better given by the CXRKIT_API_KEY environment variable than on the command line.",
            show_default=False,
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="Allow browser calls from this origin (repeatable), e.g. https://viewer.example."
        ),
    ] = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            help="Refuse images declaring more pixels (default: CXRKIT_MAX_PIXELS or 64 MP)."
        ),
    ] = None,
    max_connections: Annotated[
        int, typer.Option(help="Connections served at once; more get 503.")
    ] = 64,
) -> None:
    """Serve the model over HTTP (FastAPI): POST /predict, POST /explain, GET /model, a page at /."""
    from cxrkit.core.notice import NOTICE
    from cxrkit.data.image_gate import max_pixels as pixel_limit
    from cxrkit.use.serve import create_app
    from cxrkit.use.serve.guard import run

    if not 0 < port < 65536:
        raise CxrkitError(f"--port must be between 1 and 65535; got {port}.")
    if max_upload_mb <= 0:
        raise CxrkitError(f"--max-upload-mb must be positive; got {max_upload_mb}.")
    if max_connections < 1:
        raise CxrkitError(f"--max-connections must be at least 1; got {max_connections}.")
    if api_key is not None and len(api_key) < 8:
        raise CxrkitError("--api-key must be at least 8 characters; choose a longer one.")
    limit = pixel_limit(max_pixels)
    import socket

    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as e:
            raise CxrkitError(
                f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port, or "
                "stop what is using it."
            ) from None
    service = create_app(
        artifact,
        max_upload_bytes=int(max_upload_mb * 2**20),
        device=device,
        runtime=runtime.lower(),
        api_key=api_key,
        cors_origins=cors_origin or (),
        max_pixels=limit,
    )
    console.print(
        f"cxrkit serving {artifact} on http://{host}:{port}/ (API docs at /docs)"
        + ("; API key required" if api_key else "")
        + f". {NOTICE}"
    )
    run(
        service,
        host=host,
        port=port,
        log_level="info" if is_verbose() else "warning",
        max_connections=max_connections,
    )


# ---- export --------------------------------------------------------------------------------------


@export_app.command("onnx", cls=HelpCommand)
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
    """Export the network to ONNX (normalised input → logits) plus model.onnx.json (preprocessing, labels, thresholds)."""
    import json

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
    from cxrkit.model.artifact import read_artifact_meta

    meta = read_artifact_meta(out)
    n_thr = sum(t is not None for t in meta.thresholds.values())
    console.print(
        f"[green]wrote[/green] {out}: {meta.architecture}, {len(meta.labels)} findings, "
        f"{meta.input_mode} {meta.image_size[0]} px (fit {meta.fit}), {n_thr} thresholds",
        highlight=False,
    )
    console.print(f"next: cxrkit predict {out} IMAGES", highlight=False)


@import_app.command("chexnet", cls=HelpCommand)
def import_chexnet_cmd(
    weights: Annotated[
        Path, typer.Argument(help="A CheXNet DenseNet-121 state dict (.pth.tar/.pth/.safetensors).")
    ],
    out: OutOpt,
    force: ForceOpt = False,
) -> None:
    """Import CheXNet weights (e.g. arnoweng/CheXNet's model.pth.tar): 14 NIH findings."""
    from cxrkit.model.importers import import_chexnet

    _guard_output(out, weights)
    _imported(import_chexnet(weights, out, overwrite=force))


@import_app.command("torchxrayvision", cls=HelpCommand)
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
    from cxrkit.model.importers import import_torchxrayvision

    _guard_output(out, weights)
    _imported(import_torchxrayvision(weights, out, name=name, overwrite=force))
