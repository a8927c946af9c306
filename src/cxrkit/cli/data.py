"""The data stage's commands: index, labels, synth, split, cache (parse, call the library, print)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from cxrkit.cli.common import (
    MaxPixelsOption,
    _guard_output,
    _ignored,
    _max_pixels,
    _print_label_table,
    _print_split_report,
    _progress,
    console,
)
from cxrkit.core.errors import CxrkitError

# ---- index ---------------------------------------------------------------------------------------


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
        str | None, typer.Option(help="generic: view column (frontal, lateral, AP or PA).")
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
    allow_outside: Annotated[
        bool,
        typer.Option(
            "--allow-outside",
            help="generic: accept image paths outside the image root (absolute, or climbing out with ..).",
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
        or allow_outside
    )
    _ignored(
        "--path-col/--labels/--*-col/--image-root/--allow-new-findings/--allow-outside",
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
            allow_outside=allow_outside,
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


# ---- synth ---------------------------------------------------------------------------------------


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
    max_pixels: MaxPixelsOption = None,
) -> None:
    """Decode every image once (PNG/JPEG/DICOM), resize, store uint8 in one memory-mapped file."""
    _max_pixels(max_pixels)
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
