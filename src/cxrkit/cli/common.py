"""What every command of the command line shares: the consoles, the --verbose state, the guards that
refuse to overwrite inputs, the progress bar, the tables several commands print, and the help
rendering (no ``<bool>`` after a flag, ``NAME`` rather than ``{name}`` in the usage line).

The stage modules (:mod:`~cxrkit.cli.data`, :mod:`~cxrkit.cli.train`, :mod:`~cxrkit.cli.evaluate`,
:mod:`~cxrkit.cli.use`, :mod:`~cxrkit.cli.demo`) import this module; it imports none of them.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from cxrkit.core.errors import CxrkitError

if TYPE_CHECKING:
    from cxrkit.evaluate.results import LevelMetrics

console = Console(soft_wrap=True)
if not console.is_terminal and "COLUMNS" not in os.environ:
    console.width = 120  # tables piped to a file or a log: rich would squeeze them into 80 columns
err_console = Console(stderr=True)

_verbose = False


def setup_logging(verbose: bool) -> None:
    """Log to stderr through rich; debug messages only with --verbose (remembered for the commands).

    Args:
        verbose: Whether --verbose was given.
    """
    global _verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
        force=True,
    )
    _verbose = verbose


def is_verbose() -> bool:
    """Whether the running command was given --verbose."""
    return _verbose


def _quiet_lightning() -> None:
    """Lightning's start-up chatter (device summary, tips) only with --verbose. Lightning sets its
    loggers' level when it is imported, so this runs after the training code is imported."""
    import lightning  # noqa: F401

    if not _verbose:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


# ---- guards --------------------------------------------------------------------------------------


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


#: the ``--max-pixels`` option of every command that decodes images
MaxPixelsOption = Annotated[
    int | None,
    typer.Option(
        help="Refuse images declaring more pixels, before decoding (default: CXRKIT_MAX_PIXELS or 64 MP).",
        show_default=False,
    ),
]


def _max_pixels(value: int | None) -> None:
    """Check ``--max-pixels`` and put it in the environment, where every decoder (and the cache's
    worker processes) read the limit."""
    if value is None:
        return
    from cxrkit.data.image_gate import MAX_PIXELS_ENV, max_pixels

    os.environ[MAX_PIXELS_ENV] = str(max_pixels(value))


def _ignored(flag: str, given: bool, applies_to: str) -> None:
    """Warn that an option given for another dataset or mode has no effect here."""
    if given:
        logging.getLogger("cxrkit").warning("%s applies to %s only: ignored", flag, applies_to)


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


# ---- tables printed by several commands ----------------------------------------------------------


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


def _ci_text(value, ci) -> str:
    if value is None:
        return "undefined"
    if not ci or ci[0] is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _num(v, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _print_metrics(metrics: LevelMetrics, title: str) -> None:
    """One level's metrics (:class:`~cxrkit.evaluate.results.LevelMetrics`) as a table."""
    lvl = int(round((metrics.level or 0.95) * 100))
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
    for f, m in metrics.findings.items():
        if m.auroc is None:
            t.add_row(
                f, str(m.positives), str(m.negatives), f"undefined: {m.undefined or ''}",
                "", "", "", "", "",
            )  # fmt: skip
            continue
        t.add_row(
            f,
            f"{m.positives:,}",
            f"{m.negatives:,}",
            _ci_text(m.auroc, m.auroc_ci),
            _num(m.auprc),
            _num(m.threshold),
            _num(m.sensitivity),
            _num(m.specificity),
            _num(m.f1),
        )
    avg = metrics.average
    t.add_row(
        "[bold]macro[/bold]",
        "",
        "",
        f"[bold]{_ci_text(avg.macro_auroc, avg.macro_auroc_ci)}[/bold]",
        _num(avg.macro_auprc),
        "",
        _num(avg.macro_sensitivity),
        _num(avg.macro_specificity),
        _num(avg.macro_f1),
    )
    if avg.micro_auroc is not None:
        t.add_row("micro", "", "", _ci_text(avg.micro_auroc, avg.micro_auroc_ci), *[""] * 5)
    if avg.competition_auroc is not None:
        t.add_row(
            f"competition ({len(avg.competition_findings or [])} of 5)",
            "",
            "",
            _ci_text(avg.competition_auroc, avg.competition_auroc_ci),
            *[""] * 5,
        )
    console.print(t)


# ---- help rendering ------------------------------------------------------------------------------

_LIST_TYPE = re.compile(r"^<list\[(?P<item>.+)\]>$")


class _Argument(TyperArgument):
    """A positional argument as the help shows it: ``NAME``, ``[NAME]`` or ``NAME...`` in the usage
    line (as click writes them) and the type of one item, not ``<list[str]>``, in the panel."""

    def get_usage_pieces(self, ctx: typer.Context) -> list[str]:  # noqa: D102
        name = (self.metavar or self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]

    def display_type_rich(self, ctx: typer.Context) -> str | None:  # noqa: D102
        shown = super().display_type_rich(ctx)
        match = _LIST_TYPE.match(shown or "")
        return f"<{match['item'].lower()}>" if match else shown


class _Option(TyperOption):
    """An option as the help shows it: a flag takes no value, so no ``<bool>`` after it; a
    repeatable option shows the type of one value."""

    def display_type_rich(self, ctx: typer.Context) -> str | None:  # noqa: D102
        if self.is_flag and self.metavar is None:
            return None
        shown = super().display_type_rich(ctx)
        match = _LIST_TYPE.match(shown or "")
        return f"<{match['item'].lower()}>" if match else shown


def _help_params(params: list[Any]) -> list[Any]:
    """Give typer's parameters (the help option included) the help rendering above, in place.

    Typer builds the parameters itself and takes no class for them, so the class is swapped here;
    the subclasses change only how the help shows a parameter, never how it is parsed.
    """
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _Argument
        elif type(param) is TyperOption:
            param.__class__ = _Option
    return params


class HelpCommand(TyperCommand):
    """A typer command whose help has readable placeholders (see :class:`_Argument`, :class:`_Option`)."""

    def get_params(self, ctx: typer.Context) -> list[Any]:  # noqa: D102
        return _help_params(super().get_params(ctx))


class HelpGroup(TyperGroup):
    """A typer group whose help has readable placeholders, like :class:`HelpCommand`."""

    def get_params(self, ctx: typer.Context) -> list[Any]:  # noqa: D102
        return _help_params(super().get_params(ctx))
