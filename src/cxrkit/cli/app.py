"""The ``cxrkit`` command line: a thin layer that parses, calls library functions and prints.

A user's mistake (:class:`~cxrkit.core.errors.CxrkitError`) is printed as one line on stderr with exit
code 1; usage errors exit 2 (typer's convention). Nothing here holds logic the library lacks.

This module holds the root typer app, its --verbose/--version callback and :func:`main`, and registers
the commands of the stage modules in the order ``cxrkit --help`` lists them.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cxrkit import __version__
from cxrkit.cli import data, demo, evaluate, train, use
from cxrkit.cli.common import HelpCommand, HelpGroup, console, err_console, setup_logging
from cxrkit.core.errors import CxrkitError

app = typer.Typer(
    name="cxrkit",
    help="Thoracic disease detection on chest X-rays: index → labels → splits → train → evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=HelpGroup,
)


def _version(value: bool) -> None:
    """--version: print the version and stop."""
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
    """The options of ``cxrkit`` itself, before any command."""
    setup_logging(verbose)


def _register(root: typer.Typer) -> None:
    """Add every stage's commands to ``root``, in the order the help lists them."""
    for name, command in (
        ("index", data.index_cmd),
        ("labels", data.labels_cmd),
        ("synth", data.synth_cmd),
        ("split", data.split_cmd),
        ("cache", data.cache_cmd),
    ):
        root.command(name, cls=HelpCommand)(command)
    root.command("train", cls=HelpCommand, context_settings={"allow_extra_args": False})(
        train.train_cmd
    )
    for name, command in (
        ("experiment", train.experiment_cmd),
        ("lr-find", train.lr_find_cmd),
        ("evaluate", evaluate.evaluate_cmd),
        ("compare", evaluate.compare_cmd),
        ("report", evaluate.report_cmd),
        ("explain", use.explain_cmd),
        ("ensemble", use.ensemble_cmd),
        ("serve", use.serve_cmd),
        ("demo", demo.demo_cmd),
        ("predict", use.predict_cmd),
    ):
        root.command(name, cls=HelpCommand)(command)
    root.add_typer(use.export_app, name="export")
    root.add_typer(use.import_app, name="import")


_register(app)


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
