"""The evaluation stage's commands: evaluate, compare, report (parse, call the library, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cxrkit.cli.common import (
    _ci_text,
    _guard_output,
    _num,
    _print_metrics,
    _progress,
    _quiet_lightning,
    console,
    err_console,
)
from cxrkit.core.errors import CxrkitError

# ---- evaluate ------------------------------------------------------------------------------------


def evaluate_cmd(
    run: Annotated[
        Path | None, typer.Argument(help="A run folder (runs/<name>) or a model artifact folder.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="The part to score.")] = "test",
    fit_split: Annotated[
        str, typer.Option("--fit-split", help="The part operating points are fitted on.")
    ] = "val",
    operating_point: Annotated[
        str | None,
        typer.Option(
            "--operating-point",
            help="fixed | youden | max_f1 | sensitivity | specificity (fitted on --fit-split, or "
            "on --val-predictions/--val-labels for files). Default: youden for a run, fixed for files.",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        float | None,
        typer.Option(
            help="Threshold for 'fixed' (0.5), or the sensitivity or specificity to reach."
        ),
    ] = None,
    aggregate: Annotated[
        str, typer.Option(help="Per-study aggregation of views: max | mean | none.")
    ] = "max",
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples (over patients).")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    level: Annotated[float, typer.Option(help="Confidence level of the intervals.")] = 0.95,
    calibrate: Annotated[
        bool,
        typer.Option("--calibrate", help="Fit a temperature on --fit-split and store it."),
    ] = False,
    save: Annotated[
        bool,
        typer.Option(
            "--save/--no-save", help="Store the fitted operating points in the model artifact."
        ),
    ] = True,
    config: Annotated[
        Path | None, typer.Option(help="Training config, for an artifact outside its run folder.")
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option(help="Score this predictions CSV/parquet instead of a run.")
    ] = None,
    labels: Annotated[
        Path | None, typer.Option(help="Labels CSV for --predictions (CheXpert layout accepted).")
    ] = None,
    findings: Annotated[
        str | None,
        typer.Option(
            help="Findings to score with --predictions: names, comma-separated, or a set "
            "(competition); default: those in both files."
        ),
    ] = None,
    val_predictions: Annotated[
        Path | None,
        typer.Option(
            help="Validation predictions to fit --operating-point on (with --predictions)."
        ),
    ] = None,
    val_labels: Annotated[Path | None, typer.Option(help="Labels of --val-predictions.")] = None,
    readers: Annotated[
        list[Path] | None,
        typer.Option(
            help="A reader's binary reads in the labels' layout (repeatable): compare the model "
            "with radiologists."
        ),
    ] = None,
    reference: Annotated[
        str, typer.Option(help="The truth with --readers: labels | majority (of the readers).")
    ] = "labels",
    localization: Annotated[
        Path | None,
        typer.Option(
            help="Score Grad-CAM localisation against these boxes (BBox_List_2017.csv format) "
            "instead of classification."
        ),
    ] = None,
    images_root: Annotated[
        Path | None,
        typer.Option(help="Folder the box file's image names are in (default: its folder)."),
    ] = None,
    method: Annotated[
        str, typer.Option(help="Heatmap method for --localization: gradcam | gradcam++.")
    ] = "gradcam",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default <run>/eval-<split>).")
    ] = None,
) -> None:
    """Score a model: AUROC with CIs, AUPRC, operating points, confusion matrices, calibration.

    Writes predictions.parquet and metrics.json. With --predictions/--labels it scores any model's outputs the same way.
    """
    if localization is not None:
        _evaluate_localization(run, localization, images_root, method, out)
        return
    if predictions is not None or labels is not None:
        _score_files(
            run,
            predictions,
            labels,
            findings=findings,
            operating_point=(operating_point or "fixed").lower(),
            target=target,
            aggregate=aggregate,
            bootstrap=bootstrap,
            seed=seed,
            level=level,
            calibrate=calibrate,
            out=out,
            val_predictions=val_predictions,
            val_labels=val_labels,
            readers=readers,
            reference=reference.lower(),
        )
        return
    for flag, given in (
        ("--val-predictions", val_predictions is not None),
        ("--val-labels", val_labels is not None),
        ("--readers", bool(readers)),
    ):
        if given:
            raise CxrkitError(f"{flag} goes with --predictions/--labels, not with a run.")
    if run is None:
        raise CxrkitError(
            "nothing to evaluate: pass a run folder (runs/<name>) or --predictions and --labels."
        )
    _score_run(
        run,
        split=split,
        fit_split=fit_split,
        operating_point=operating_point or "youden",
        target=target,
        aggregate=aggregate,
        bootstrap=bootstrap,
        seed=seed,
        level=level,
        calibrate=calibrate,
        save=save,
        config=config,
        out=out,
    )


def _evaluate_localization(
    run: Path | None, localization: Path, images_root: Path | None, method: str, out: Path | None
) -> None:
    """``evaluate --localization``: score Grad-CAM heatmaps against boxes and print the table."""
    from cxrkit.model.artifact import resolve_artifact

    if run is None:
        raise CxrkitError("--localization needs the model: pass a run or artifact folder.")
    from cxrkit.evaluate.localization import evaluate_localization

    run_dir, artifact = resolve_artifact(run)
    _quiet_lightning()
    with _progress() as bar:
        task = bar.add_task("localisation", total=None)
        loc = evaluate_localization(
            artifact,
            localization,
            root=images_root,
            method=method,
            out=out or ((run_dir or artifact) / "eval-localization"),
            progress=lambda k: bar.advance(task, k),
        )
    t = Table(
        title=f"Grad-CAM localisation ({method}) on {loc['images']:,} images "
        f"({loc['missing']:,} not found, {loc['skipped_boxes']:,} boxes of other findings)",
        title_justify="left",
    )
    for col in ("finding", "boxes", "pointing-game hit rate", "mean IoU"):
        t.add_column(col, justify="left" if col == "finding" else "right")
    for f, v in loc["findings"].items():
        t.add_row(f, f"{v['n']:,}", _num(v["hit_rate"]), _num(v["mean_iou"]))
    o = loc["overall"]
    t.add_row("[bold]all[/bold]", f"{o['n']:,}", _num(o["hit_rate"]), _num(o["mean_iou"]))
    console.print(t)
    console.print(f"scores in {out or ((run_dir or artifact) / 'eval-localization')}")


def _score_files(
    run: Path | None,
    predictions: Path | None,
    labels: Path | None,
    *,
    findings: str | None,
    operating_point: str,
    target: float | None,
    aggregate: str,
    bootstrap: int,
    seed: int,
    level: float,
    calibrate: bool,
    out: Path | None,
    val_predictions: Path | None,
    val_labels: Path | None,
    readers: list[Path] | None,
    reference: str,
) -> None:
    """``evaluate --predictions --labels``: score any model's outputs and print the metrics."""
    from cxrkit.evaluate.files import score_files

    if predictions is None or labels is None:
        raise CxrkitError("--predictions and --labels go together: pass both files.")
    if run is not None:
        raise CxrkitError("pass either a run/artifact or --predictions/--labels, not both.")
    if calibrate:
        raise CxrkitError(
            "--calibrate fits a temperature on a run's validation part; files have none (scores "
            "may not even be probabilities): leave --calibrate out."
        )
    fixed = operating_point == "fixed"
    _guard_output(out / "metrics.json" if out else None, predictions, labels)
    result, folder = score_files(
        predictions,
        labels,
        findings=findings,
        aggregate=aggregate if aggregate != "none" else "max",
        threshold=target if fixed else None,
        operating_point=operating_point,
        target=None if fixed else target,
        val_predictions=val_predictions,
        val_labels=val_labels,
        readers=list(readers or []) or None,
        reference=reference,
        n_boot=bootstrap,
        seed=seed,
        level=level,
        out=out,
    )
    for note in result.notes or []:
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    _print_metrics(result.image, f"{result.level}-level metrics: {predictions}")
    if result.readers:
        _print_readers(result.readers)
    if folder:
        console.print(f"metrics in {folder / 'metrics.json'}")
    else:
        console.print("not saved: pass --out DIR to write predictions.parquet and metrics.json")


def _print_readers(readers: dict) -> None:
    """One table per finding: each reader, and the model at the reader's operating point."""
    for f, c in readers.items():
        lvl = int(round(c.level * 100))
        t = Table(
            title=f"{f}: the model against {len(c.readers)} readers ({c.n:,} cases, "
            f"{c.positives:,} positive; {lvl} % CIs)",
            title_justify="left",
        )
        for col in ("reader", "sens", "spec", "PPV", "F1", "below ROC", "model sens at spec", "p"):
            # narrow terminals wrap the cells rather than cut numbers short
            t.add_column(col, justify="left" if col == "reader" else "right", overflow="fold")
        for r in c.readers:
            m = r.model_at_reader_specificity
            t.add_row(
                r.name,
                *[
                    _ci_text(r.stats[k].value, [r.stats[k].lo, r.stats[k].hi])
                    for k in ("sensitivity", "specificity")
                ],
                _num(r.stats["ppv"].value),
                _num(r.stats["f1"].value),
                "yes" if r.below_model_curve else "no",
                _ci_text(m.model.value, [m.model.lo, m.model.hi]),
                "" if m.mcnemar_p is None else f"{m.mcnemar_p:.3g}",
            )
        console.print(t)
        line = f"readers below the model's ROC curve: {c.readers_below_curve} of {len(c.readers)}"
        if c.f1_difference.value is not None:
            d = c.f1_difference
            line += (
                f"; model F1 {_num(c.model_f1.value)} vs mean reader F1 {_num(c.mean_reader_f1.value)}: "
                f"difference {_ci_text(d.value, [d.lo, d.hi])}, p = {c.f1_p:.3g}"
            )
        console.print(line)


def _score_run(
    run: Path,
    *,
    split: str,
    fit_split: str,
    operating_point: str,
    target: float | None,
    aggregate: str,
    bootstrap: int,
    seed: int,
    level: float,
    calibrate: bool,
    save: bool,
    config: Path | None,
    out: Path | None,
) -> None:
    """``evaluate RUN``: predict a part, fit operating points, score with CIs, print the metrics."""
    from cxrkit.evaluate.evaluate import EvalOptions, evaluate_model

    opts = EvalOptions(
        part=split,
        fit_part=fit_split,
        operating_point=operating_point.lower(),
        target=target,
        aggregate=aggregate.lower(),
        n_boot=bootstrap,
        seed=seed,
        level=level,
        calibrate=calibrate,
        save=save,
    )
    opts.check()
    _quiet_lightning()
    result, folder = evaluate_model(
        run, opts, config=config, out=out, progress=lambda msg: console.print(msg)
    )
    primary = result.primary
    if calibrate and result.calibration is not None:
        c = result.calibration
        after = (c.after_temperature or c.before_temperature).pooled.ece
        console.print(
            f"temperature {result.temperature:.3f} fitted on '{fit_split}': expected "
            f"calibration error {c.before_temperature.pooled.ece:.3f} → {after:.3f}"
        )
    _print_metrics(
        result.main,
        f"{primary}-level metrics on '{split}' ({result.main.n_images:,} {primary}s); "
        f"operating point {operating_point} fitted on '{fit_split}'",
    )
    if save:
        console.print(
            f"operating points ({operating_point}) stored in {result.artifact}/model.json"
        )
    console.print(f"predictions and metrics in {folder}")


# ---- compare / report ----------------------------------------------------------------------------


def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Evaluated run folders (or eval folders).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default: comparison/ beside the runs)."),
    ] = None,
) -> None:
    """One table across runs (the thesis's Table 1 and 2) and DeLong tests between them."""
    from cxrkit.evaluate.compare import compare_runs

    result, folder = compare_runs(list(runs), out)
    findings = result["findings"]
    t = Table(title="comparison (test part)", title_justify="left")
    for col in (
        "run",
        "model",
        "enhancement",
        "multilabel AUC [CI]",
        *findings,
        "accuracy",
        "train min",
    ):
        t.add_column(col, no_wrap=col == "run")
    for r in result["table"]:
        t.add_row(
            r["run"],
            str(r["model"]),
            {None: "", True: "yes", False: "no"}[r["enhancement layers"]],
            _ci_text(r["multilabel AUC"], r["multilabel AUC CI"]),
            *[_num(r[f"{f} AUC"]) for f in findings],
            _num(r["accuracy"]),
            _num(r["train minutes"], 1),
        )
    console.print(t)
    for d in result["delong"]:
        if not d.get("comparable"):
            console.print(f"DeLong {d['a']} vs {d['b']}: not comparable ({d['reason']})")
            continue
        worst = [f"{f} p={v['p_value']:.3g}" for f, v in d["findings"].items() if "p_value" in v]
        console.print(f"DeLong {d['a']} vs {d['b']} ({d['cases']:,} cases): " + ", ".join(worst))
    console.print(f"tables in {(folder / 'comparison.md').resolve()}")


def report_cmd(
    run: Annotated[Path, typer.Argument(help="An evaluated run folder, or an evaluation folder.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output folder (default <run>/report).")
    ] = None,
) -> None:
    """Write a self-contained HTML report (plus Markdown and JSON) of an evaluated run."""
    from cxrkit.report.build import build_report

    page, summary = build_report(run, out)
    console.print(
        f"report with {len(summary['figures'])} figures: {page} (also report.md, report.json)"
    )
