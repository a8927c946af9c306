"""The ``cxrkit`` command line: a thin layer that parses, calls library functions and prints.

A user's mistake (:class:`~cxrkit.core.errors.CxrkitError`) is printed as one line on stderr with exit
code 1; usage errors exit 2 (typer's convention). Nothing here holds logic the library lacks.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError

app = typer.Typer(
    name="cxrkit",
    help="Thoracic disease detection on chest X-rays: index → labels → splits → train → evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(soft_wrap=True)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 120  # tables piped to a file or a log: rich would squeeze them into 80 columns
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"cxrkit {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug logs.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    global _VERBOSE
    _VERBOSE = verbose


_VERBOSE = False


def _quiet_lightning() -> None:
    """Lightning's start-up chatter (device summary, tips) only with --verbose. Lightning sets its
    loggers' level when it is imported, so this runs after the training code is imported."""
    import lightning  # noqa: F401

    if not _VERBOSE:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


# ---- index ---------------------------------------------------------------------------------------


def _guard_inside(out: Path | None, folder: Path | None, what: str) -> None:
    """Refuse to write an output inside a folder that must stay as it is (a model artifact)."""
    if out is None or folder is None:
        return
    target, root = Path(out).resolve(), Path(folder).resolve()
    if target == root or root in target.parents:
        raise CxrkitError(
            f"'{out}' is inside the {what} '{folder}': write it somewhere else (the {what} must "
            "stay as it was made)."
        )


def _guard_output(out: Path | None, *inputs: Path | str | None) -> None:
    """Refuse to write an output over one of the command's own inputs."""
    if out is None:
        return
    target = Path(out).resolve()
    for item in inputs:
        if item is not None and Path(item).exists() and Path(item).resolve() == target:
            raise CxrkitError(
                f"'{out}' is an input of this command: writing there would destroy it. "
                "Choose another output path."
            )


def _ignored(flag: str, given: bool, applies_to: str) -> None:
    if given:
        logging.getLogger("cxrkit").warning("%s applies to %s only: ignored", flag, applies_to)


@app.command("index")
def index_cmd(
    dataset: Annotated[str, typer.Argument(help="chexpert, nih, mimic or generic.")],
    root: Annotated[Path, typer.Argument(help="The dataset folder (generic: the CSV file).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The index file to write.")] = Path(
        "index.parquet"
    ),
    check_images: Annotated[
        bool,
        typer.Option("--check-images/--no-check-images", help="Check that every image exists."),
    ] = True,
    drop_missing: Annotated[
        bool,
        typer.Option("--drop-missing", help="Drop rows whose image is missing instead of failing."),
    ] = False,
    labeler: Annotated[str, typer.Option(help="mimic: chexpert or negbio labels.")] = "chexpert",
    path_col: Annotated[str, typer.Option(help="generic: the image path column.")] = "path",
    labels: Annotated[
        str | None,
        typer.Option(help="generic: label columns, 'COL' or 'COL=Finding', comma-separated."),
    ] = None,
    patient_col: Annotated[str | None, typer.Option(help="generic: patient id column.")] = None,
    study_col: Annotated[str | None, typer.Option(help="generic: study id column.")] = None,
    view_col: Annotated[
        str | None, typer.Option(help="generic: view column (frontal/lateral/AP/PA).")
    ] = None,
    sex_col: Annotated[str | None, typer.Option(help="generic: sex column.")] = None,
    age_col: Annotated[str | None, typer.Option(help="generic: age column.")] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(help="generic: folder the paths are relative to (default: the CSV's)."),
    ] = None,
    allow_new_findings: Annotated[
        bool,
        typer.Option(
            "--allow-new-findings", help="generic: keep label names that are not known findings."
        ),
    ] = False,
) -> None:
    """Index a dataset: one row per image, raw 1/0/-1/blank labels under canonical finding names."""
    from cxrkit.data.adapters import build_index
    from cxrkit.data.index import write_index

    options: dict = {}
    _ignored("--labeler", dataset != "mimic" and labeler != "chexpert", "mimic")
    generic_given = (
        any(
            v is not None
            for v in (labels, patient_col, study_col, view_col, sex_col, age_col, image_root)
        )
        or path_col != "path"
        or allow_new_findings
    )
    _ignored(
        "--path-col/--labels/--*-col/--image-root/--allow-new-findings",
        dataset != "generic" and generic_given,
        "generic",
    )
    if dataset == "mimic":
        options["labeler"] = labeler
    if dataset == "generic":
        options.update(
            path_col=path_col,
            labels=labels,
            patient_col=patient_col,
            study_col=study_col,
            view_col=view_col,
            sex_col=sex_col,
            age_col=age_col,
            image_root=image_root,
            allow_new_findings=allow_new_findings,
        )
    index = build_index(
        dataset, root, check_images=check_images, drop_missing=drop_missing, **options
    )
    _guard_output(
        out,
        root,
        *(Path(index.meta["root"]) / n for n in index.meta["sources"]),
        index.meta.get("csv"),
    )
    write_index(index, out)
    f = index.frame
    parts = f["official_split"].value_counts(dropna=True)
    if len(parts) > 1:
        console.print("official split: " + " · ".join(f"{k} {v:,}" for k, v in parts.items()))
    console.print(
        f"[green]wrote[/green] {out}: {len(f):,} images, {f['patient_id'].nunique():,} patients, "
        f"{f['study_id'].nunique():,} studies, {int((f['view'] == 'frontal').sum()):,} frontal, "
        f"{len(index.findings)} findings"
        + (f", {len(index.boxes):,} boxes" if len(index.boxes) else "")
        + ("" if index.meta["images_checked"] else " (images not checked)")
        + (
            f"; {index.meta['missing_dropped']:,} rows with missing images dropped"
            if index.meta["missing_dropped"]
            else ""
        )
    )


# ---- labels --------------------------------------------------------------------------------------


def _policy(
    policy: str | None,
    uncertain: str | None,
    uncertain_for: str | None,
    blank: str | None,
    hierarchy: str | None,
    views: str | None,
    findings: str | None,
    no_finding: str | None,
    seed: int | None,
):
    from cxrkit.data.labels import LabelPolicy

    base = LabelPolicy.from_spec(policy).to_dict()
    given = {
        "uncertain": uncertain,
        "blank": blank,
        "hierarchy": hierarchy,
        "views": views,
        "findings": findings,
        "no_finding": no_finding,
        "seed": seed,
    }
    base.update({k: v for k, v in given.items() if v is not None})
    if uncertain_for:
        per = dict(base.get("uncertain_per_finding") or {})
        for item in uncertain_for.split(","):
            name, sep, value = item.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise CxrkitError(
                    f"--uncertain-for takes FINDING=POLICY pairs, e.g. 'Atelectasis=ones,Edema=ones'; got '{item}'."
                )
            from cxrkit.core.findings import canonical_name

            per[canonical_name(name.strip())] = value.strip()
        base["uncertain_per_finding"] = per
    return LabelPolicy.from_dict(base)


PolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--policy", "-p", help="Preset (default, thesis, u-zeros, ...) or a policy YAML file."
    ),
]
UncertainOpt = Annotated[
    str | None,
    typer.Option(help="-1 labels: ones, zeros, ignore, multiclass, smooth_ones, smooth_zeros."),
]
UncertainForOpt = Annotated[
    str | None, typer.Option(help="Per-finding overrides, e.g. 'Atelectasis=ones,Edema=ones'.")
]
BlankOpt = Annotated[str | None, typer.Option(help="Blank labels: zero or ignore.")]
HierarchyOpt = Annotated[str | None, typer.Option(help="positive (the thesis), propagate or none.")]
ViewsOpt = Annotated[str | None, typer.Option(help="all, frontal, lateral, ap or pa.")]
FindingsOpt = Annotated[
    str | None, typer.Option(help="all, competition, chexpert, nih, or comma-separated names.")
]
NoFindingOpt = Annotated[str | None, typer.Option(help="'No Finding': dataset or derive.")]
SeedOpt = Annotated[int | None, typer.Option(help="Seed of smoothed uncertain labels.")]


def _print_label_table(table, title: str) -> None:
    t = Table(title=title, title_justify="left")
    for col, justify in (
        ("finding", "left"),
        ("positive", "right"),
        ("negative", "right"),
        ("uncertain", "right"),
        ("blank", "right"),
        ("masked", "right"),
        ("neg:pos", "right"),
    ):
        t.add_column(col, justify=justify, no_wrap=(col == "finding"))
    for r in table.itertuples(index=False):
        ratio = (
            "—"
            if r.neg_pos_ratio is None or r.neg_pos_ratio != r.neg_pos_ratio
            else f"{r.neg_pos_ratio:.2f}"
        )
        unc, blank = (f"{r.uncertain:,}", f"{r.blank:,}") if r.labelled else ("n/a", "n/a")
        name = r.finding if r.labelled else f"{r.finding} [dim](not labelled)[/dim]"
        t.add_row(name, f"{r.positive:,}", f"{r.negative:,}", unc, blank, f"{r.masked:,}", ratio)
    console.print(t)


@app.command("labels")
def labels_cmd(
    index: Annotated[Path, typer.Argument(help="An index.parquet written by `cxrkit index`.")],
    policy: PolicyOpt = None,
    uncertain: UncertainOpt = None,
    uncertain_for: UncertainForOpt = None,
    blank: BlankOpt = None,
    hierarchy: HierarchyOpt = None,
    views: ViewsOpt = None,
    findings: FindingsOpt = None,
    no_finding: NoFindingOpt = None,
    seed: SeedOpt = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the table as JSON.")
    ] = None,
    save_policy: Annotated[
        Path | None, typer.Option(help="Write the resolved policy as YAML.")
    ] = None,
) -> None:
    """Apply a label policy and print per finding: positives, negatives, uncertain, blank, masked, neg:pos."""
    from cxrkit.core.fileio import write_text_atomic
    from cxrkit.data.index import read_index
    from cxrkit.data.labels import label_table

    _guard_output(json_out, index)
    _guard_output(save_policy, index)
    pol = _policy(
        policy, uncertain, uncertain_for, blank, hierarchy, views, findings, no_finding, seed
    )
    ix = read_index(index)
    targets = pol.apply(ix.frame, ix.findings)
    table = label_table(ix.frame, targets)
    _print_label_table(
        table,
        f"{ix.meta.get('dataset')}: {len(targets.rows):,} of {len(ix):,} images (views={pol.views}); "
        f"uncertain={pol.uncertain}"
        + (f" {pol.uncertain_per_finding}" if pol.uncertain_per_finding else "")
        + f", blank={pol.blank}, hierarchy={pol.hierarchy}",
    )
    if json_out:
        records = [
            {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in table.to_dict(orient="records")
        ]
        payload = {"policy": pol.to_dict(), "images": len(targets.rows), "table": records}
        write_text_atomic(json_out, json.dumps(payload, indent=2, default=str, allow_nan=False))
        console.print(f"[green]wrote[/green] {json_out}")
    if save_policy:
        write_text_atomic(save_policy, pol.to_yaml())
        console.print(f"[green]wrote[/green] {save_policy}")


def _progress():
    """One progress-bar style for every long command: bar, count, images/s, ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task):  # noqa: D102
            return Text(
                f"{task.speed:,.0f} img/s" if task.speed else "", style="progress.data.speed"
            )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


# ---- synth ---------------------------------------------------------------------------------------


@app.command("synth")
def synth_cmd(
    layout: Annotated[str, typer.Option(help="chexpert, nih or mimic.")] = "chexpert",
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 1000,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed: same settings, same bytes.")] = 0,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("synthetic"),
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
) -> None:
    """Write a synthetic chest X-ray dataset in a real dataset's on-disk layout, with planted findings."""
    from cxrkit.synthetic.layouts import generate

    with _progress() as bar:
        task = bar.add_task("synth", total=n)
        folder = generate(
            layout,
            out,
            n=n,
            size=size,
            seed=seed,
            workers=workers,
            progress=lambda k: bar.advance(task, k),
        )
    console.print(f"[green]wrote[/green] {n:,} synthetic {layout} images ({size} px) to {folder}")
    console.print(f"next: cxrkit index {layout} {folder} --out index.parquet")


# ---- split ---------------------------------------------------------------------------------------


def _fractions(text: str) -> tuple[float, ...]:
    items = [t.strip() for t in text.split(",")]
    try:
        return tuple(float(t) for t in items)
    except ValueError:
        raise CxrkitError(
            f"--fractions takes comma-separated numbers summing to 1, e.g. 0.7,0.1,0.2; got '{text}'."
        ) from None


def _print_split_report(report: dict, title: str) -> None:
    parts = report["parts"]
    t = Table(title=title, title_justify="left")
    t.add_column("finding", no_wrap=True)
    t.add_column("whole", justify="right")
    for p in parts:
        t.add_column(p, justify="right")
    t.add_column("max dev (pp)", justify="right")
    for finding, r in report["findings"].items():
        prev = r["prevalence"]
        t.add_row(
            finding,
            *("—" if prev[k] is None else f"{100 * prev[k]:.2f}%" for k in ["whole", *parts]),
            f"{r['max_dev_pp']:.2f}",
        )
    console.print(t)
    console.print(
        " · ".join(
            f"{p}: {report['patients'][p]:,} patients, {report['images'][p]:,} images"
            for p in parts
        )
    )


@app.command("split")
def split_cmd(
    index: Annotated[Path, typer.Argument(help="An index.parquet written by `cxrkit index`.")],
    policy: PolicyOpt = None,
    uncertain: UncertainOpt = None,
    uncertain_for: UncertainForOpt = None,
    blank: BlankOpt = None,
    hierarchy: HierarchyOpt = None,
    views: ViewsOpt = None,
    findings: FindingsOpt = None,
    no_finding: NoFindingOpt = None,
    method: Annotated[
        str, typer.Option(help="iterative (default), labelset, random or official.")
    ] = "iterative",
    fractions: Annotated[
        str | None,
        typer.Option(help="Shares of the images: 0.7,0.1,0.2 (default, train/val/test), 0.8,0.2…"),
    ] = None,
    folds: Annotated[
        int | None, typer.Option(help="Make K equal folds instead of fractions.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split.")] = 0,
    official_val: Annotated[
        float | None,
        typer.Option(
            help="official, NIH: carve this share of train_val into val (patient-grouped, iterative)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The splits file to write.")] = Path(
        "splits.parquet"
    ),
    report_json: Annotated[
        Path | None,
        typer.Option(
            help="Where to write the report (default: <out stem>.report.json beside --out)."
        ),
    ] = None,
) -> None:
    """Split an index into patient-disjoint parts stratified on a label policy's targets, with a report."""
    from cxrkit.core.fileio import write_text_atomic
    from cxrkit.data.index import read_index
    from cxrkit.data.splits import make_splits, write_splits

    pol = _policy(
        policy, uncertain, uncertain_for, blank, hierarchy, views, findings, no_finding, None
    )
    if fractions is not None and (folds is not None or method == "official"):
        logging.getLogger(__name__).warning(
            "--fractions %s is ignored with %s",
            fractions,
            "--folds" if folds else "--method official",
        )
    fr = _fractions(fractions) if fractions is not None else (0.7, 0.1, 0.2)
    _guard_output(out, index)
    _guard_output(report_json, index)
    ix = read_index(index)
    targets = pol.apply(ix.frame, ix.findings)
    splits = make_splits(
        ix.frame,
        targets,
        method=method,
        fractions=fr,
        folds=folds,
        seed=seed,
        official_val=official_val,
    )
    write_splits(splits, out)
    report_path = report_json or out.parent / f"{out.stem}.report.json"
    write_text_atomic(
        report_path, json.dumps({"meta": splits.meta, "report": splits.report}, indent=2)
    )
    rep = splits.report
    _print_split_report(
        rep,
        f"{ix.meta.get('dataset')}: {method} split of {len(ix):,} images"
        + ("" if method == "official" and official_val is None else f", seed {seed}")
        + "; "
        f"prevalence per part (largest deviation {rep['max_dev_pp']:.2f} pp, {rep['max_dev_finding']})",
    )
    console.print(f"[green]wrote[/green] {out} and {report_path}")


# ---- cache ---------------------------------------------------------------------------------------


@app.command("cache")
def cache_cmd(
    index: Annotated[Path, typer.Argument(help="An index.parquet written by `cxrkit index`.")],
    size: Annotated[int, typer.Option(help="Side of the square cached images, pixels.")] = 224,
    fit: Annotated[
        str, typer.Option(help="pad (letterbox), crop (centre) or stretch: how to make it square.")
    ] = "pad",
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder of caches; one sub-folder per settings.")
    ] = Path("cache"),
) -> None:
    """Decode every image once (PNG/JPEG/DICOM), resize, store uint8 in one memory-mapped file."""
    from cxrkit.core.errors import preview
    from cxrkit.data.cache import build_cache, check_settings
    from cxrkit.data.index import read_index

    check_settings(size, fit)
    ix = read_index(index)
    with _progress() as bar:
        task = bar.add_task("cache", total=len(ix))
        info = build_cache(
            ix,
            out,
            size=size,
            fit=fit,
            workers=workers,
            progress=lambda k: bar.advance(task, k),
            on_start=lambda todo: bar.update(task, total=todo),
        )
    failed = len(info.failed)
    if info.n_ok == 0:
        raise CxrkitError(
            f"none of the {info.n:,} images could be decoded (first: "
            f"{preview([f['path'] for f in info.failed], 3)}); check that the images are under "
            f"'{ix.meta.get('root')}' (an index made with --no-check-images may list absent files)."
        )
    if info.decoded == 0 and info.resumed == 0:
        console.print(f"[green]up to date[/green] {info.path}: nothing to do")
    else:
        rate = info.decoded / info.seconds if info.seconds > 0 else 0.0
        console.print(
            f"[green]wrote[/green] {info.path}: decoded {info.decoded:,} images in "
            f"{info.seconds:.1f} s ({rate:,.0f} img/s)"
            + (f"; {info.resumed:,} were done by an earlier run" if info.resumed else "")
        )
    console.print(
        f"{info.n_ok:,} of {info.n:,} images ok, {failed:,} failed; {info.shape[1]}×{info.shape[2]} "
        f"uint8, {info.bytes_per_image:,.0f} bytes per image on disk"
    )
    if failed:
        console.print(
            f"[yellow]unreadable (stored as zeros, ok=False):[/yellow] "
            f"{preview([f['path'] for f in info.failed], 5)}; all listed in {info.path / 'manifest.json'}",
            highlight=False,
        )


# ---- train ---------------------------------------------------------------------------------------


def _config_from_args(config: Path | None, overrides: list[str] | None):
    """The config file argument is optional: ``cxrkit train a.b=c`` gives overrides alone."""
    from cxrkit.core.config import load_config

    overrides = list(overrides or [])
    if config is not None and "=" in str(config) and not config.exists():
        config, overrides = None, [str(config), *overrides]
    return load_config(config, overrides)


@app.command("train", context_settings={"allow_extra_args": False})
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


@app.command("experiment")
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


@app.command("lr-find")
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


# ---- evaluate / compare / report ------------------------------------------------------------------


def _ci_text(value, ci) -> str:
    if value is None:
        return "undefined"
    if not ci or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _num(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _print_metrics(metrics: dict, title: str) -> None:
    lvl = int(round(metrics.get("level", 0.95) * 100))
    t = Table(title=title, title_justify="left")
    for col in (
        "finding",
        "pos",
        "neg",
        f"AUROC [{lvl} % CI]",
        "AUPRC",
        "threshold",
        "sens",
        "spec",
        "F1",
    ):
        t.add_column(col, justify="left" if col == "finding" else "right", no_wrap=True)
    for f, m in metrics["findings"].items():
        if m.get("auroc") is None:
            t.add_row(
                f,
                str(m.get("positives", "")),
                str(m.get("negatives", "")),
                f"undefined: {m.get('undefined') or ''}",
                "",
                "",
                "",
                "",
                "",
            )
            continue
        t.add_row(
            f,
            f"{m['positives']:,}",
            f"{m['negatives']:,}",
            _ci_text(m["auroc"], m.get("auroc_ci")),
            _num(m.get("auprc")),
            _num(m.get("threshold")),
            _num(m.get("sensitivity")),
            _num(m.get("specificity")),
            _num(m.get("f1")),
        )
    avg = metrics["average"]
    t.add_row(
        "[bold]macro[/bold]",
        "",
        "",
        f"[bold]{_ci_text(avg.get('macro_auroc'), avg.get('macro_auroc_ci'))}[/bold]",
        _num(avg.get("macro_auprc")),
        "",
        _num(avg.get("macro_sensitivity")),
        _num(avg.get("macro_specificity")),
        _num(avg.get("macro_f1")),
    )
    if avg.get("micro_auroc") is not None:
        t.add_row(
            "micro",
            "",
            "",
            _ci_text(avg["micro_auroc"], avg.get("micro_auroc_ci")),
            "",
            "",
            "",
            "",
            "",
        )
    if avg.get("competition_auroc") is not None:
        t.add_row(
            f"competition ({len(avg.get('competition_findings') or [])} of 5)",
            "",
            "",
            _ci_text(avg["competition_auroc"], avg.get("competition_auroc_ci")),
            "",
            "",
            "",
            "",
            "",
        )
    console.print(t)


@app.command("evaluate")
def evaluate_cmd(
    run: Annotated[
        Path | None, typer.Argument(help="A run folder (runs/<name>) or a model artifact folder.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="The part to score.")] = "test",
    fit_split: Annotated[
        str, typer.Option("--fit-split", help="The part operating points are fitted on.")
    ] = "val",
    operating_point: Annotated[
        str,
        typer.Option(
            "--operating-point",
            help="fixed | youden | max_f1 | sensitivity | specificity (fitted on --fit-split).",
        ),
    ] = "youden",
    target: Annotated[
        float | None,
        typer.Option(help="Threshold for 'fixed' (0.5), or the sensitivity/specificity to reach."),
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
        str | None, typer.Option(help="Comma-separated findings to score (with --predictions).")
    ] = None,
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

    Writes predictions.parquet and metrics.json. With --predictions/--labels it scores any
    model's outputs the same way.
    """
    from cxrkit.evaluate.evaluate import EvalOptions, evaluate_model, score_files
    from cxrkit.model.artifact import resolve_artifact

    if localization is not None:
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
        return
    if predictions is not None or labels is not None:
        if predictions is None or labels is None:
            raise CxrkitError("--predictions and --labels go together: pass both files.")
        if run is not None:
            raise CxrkitError("pass either a run/artifact or --predictions/--labels, not both.")
        if calibrate or operating_point.lower() not in ("youden", "fixed"):
            raise CxrkitError(
                "--predictions/--labels have no validation part to fit operating points or a "
                "temperature on: use --operating-point fixed --target T (default 0.5)."
            )
        _guard_output(out / "metrics.json" if out else None, predictions, labels)
        result, folder = score_files(
            predictions,
            labels,
            findings=[x.strip() for x in findings.split(",")] if findings else None,
            aggregate=aggregate if aggregate != "none" else "max",
            threshold=target,
            n_boot=bootstrap,
            seed=seed,
            level=level,
            out=out,
        )
        _print_metrics(result["image"], f"{result['level']}-level metrics: {predictions}")
        if folder:
            console.print(f"metrics in {folder / 'metrics.json'}")
        else:
            console.print("not saved: pass --out DIR to write predictions.parquet and metrics.json")
        return
    if run is None:
        raise CxrkitError(
            "nothing to evaluate: pass a run folder (runs/<name>) or --predictions and --labels."
        )
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
    primary = result["primary"]
    if calibrate:
        c = result["calibration"]
        after = c.get("after_temperature", c["before_temperature"])["pooled"]["ece"]
        console.print(
            f"temperature {result['temperature']:.3f} fitted on '{fit_split}': expected "
            f"calibration error {c['before_temperature']['pooled']['ece']:.3f} → {after:.3f}"
        )
    _print_metrics(
        result[primary],
        f"{primary}-level metrics on '{split}' ({result[primary]['n_images']:,} {primary}s); "
        f"operating point {operating_point} fitted on '{fit_split}'",
    )
    if save:
        console.print(
            f"operating points ({operating_point}) stored in {result['artifact']}/model.json"
        )
    console.print(f"predictions and metrics in {folder}")


@app.command("compare")
def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Evaluated run folders (or eval folders).")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default: comparison/ beside the runs)."),
    ] = None,
) -> None:
    """One table across runs (the thesis's Table 1 and 2) and DeLong tests between them."""
    from cxrkit.report.build import compare_runs

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


@app.command("report")
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


@app.command("explain")
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
) -> None:
    """Grad-CAM heatmap of one finding over the image, written as a PNG overlay."""
    from cxrkit.model.artifact import resolve_artifact
    from cxrkit.use.explain import Explainer, save_overlay

    _, folder = resolve_artifact(artifact)
    ex = Explainer(folder, method=method, layer=layer)
    if finding is not None:
        ex.finding_index(finding)  # a wrong name fails before the image is read
    result = ex.explain_file(image, finding)
    name = result.finding.replace(" ", "_")
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


@app.command("ensemble")
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


@app.command("serve")
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
) -> None:
    """Serve the model over HTTP (FastAPI): POST /predict, POST /explain, GET /model, a page at /."""
    import uvicorn

    from cxrkit.core.notice import NOTICE
    from cxrkit.use.serve import create_app

    if not 0 < port < 65536:
        raise CxrkitError(f"--port must be between 1 and 65535; got {port}.")
    if max_upload_mb <= 0:
        raise CxrkitError(f"--max-upload-mb must be positive; got {max_upload_mb}.")
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
    )
    console.print(
        f"cxrkit serving {artifact} on http://{host}:{port}/ (API docs at /docs). {NOTICE}"
    )
    uvicorn.run(service, host=host, port=port, log_level="info" if _VERBOSE else "warning")


# ---- demo ----------------------------------------------------------------------------------------


@app.command("demo")
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
    """The pipeline end to end on CPU: synthetic data (or --dataset) → index → labels → split →
    cache → train → held-out AUC against the planted truth → evaluation with CIs → HTML report."""
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

    import numpy as np
    import pandas as pd
    import torch

    from cxrkit.core.config import load_config
    from cxrkit.data.loader import make_datamodule
    from cxrkit.evaluate.inference import masked_auroc, predict_part
    from cxrkit.model.artifact import load_artifact
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
    model, meta = load_artifact(run / "model")
    dm = make_datamodule(cfg)
    probs, rows = predict_part(model, dm, "test", meta.output)
    ds = dm.datasets["test"]
    y, mask, source = ds.y.numpy(), ds.mask.numpy(), "the test part's labels"
    truth_file = folder / "synthetic_truth.csv"
    if synthetic and truth_file.is_file():
        truth = pd.read_csv(truth_file).set_index("path")
        paths = dm.index_frame["path"].to_numpy()[rows]
        y = truth.loc[paths, list(meta.labels)].to_numpy(np.float32)
        mask = np.ones_like(y, bool)
        source = "the planted truth (synthetic_truth.csv)"
    aucs = masked_auroc(torch.from_numpy(probs), torch.from_numpy(y), torch.from_numpy(mask))
    t = Table(title=f"test AUROC against {source}: {len(rows):,} images", title_justify="left")
    t.add_column("finding", no_wrap=True)
    t.add_column("AUROC", justify="right")
    for f, a in zip(meta.labels, aucs, strict=True):
        t.add_row(f, "undefined" if a != a else f"{a:.3f}")
    valid = [a for a in aucs if a == a]
    mean = float(np.mean(valid)) if valid else float("nan")
    t.add_row("[bold]mean[/bold]", f"[bold]{mean:.3f}[/bold]")
    console.print(t)
    console.rule("8. evaluation with confidence intervals, operating points and the report")
    from cxrkit.evaluate.evaluate import EvalOptions, evaluate_model
    from cxrkit.report.build import build_report

    result, folder = evaluate_model(run, EvalOptions(operating_point="youden"))
    primary = result["primary"]
    _print_metrics(
        result[primary],
        f"{primary}-level metrics against the test part's labels (uncertain = positive); "
        "thresholds: Youden's J on the validation part",
    )
    page, _ = build_report(run)
    console.print(f"predictions and metrics in {folder}")
    console.print(f"[bold]report: {page}[/bold]")


def _register_model_commands() -> None:
    from cxrkit.cli.use import register

    register(app)


_register_model_commands()


def main() -> None:
    """Console-script entry point: user mistakes become one line and exit code 1."""
    try:
        app()
    except CxrkitError as e:
        err_console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print(
            "interrupted: what was finished is kept; run the same command again to resume."
        )
        sys.exit(130)
