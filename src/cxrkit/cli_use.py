"""CLI commands that use a trained model artifact: predict, explain, export, import, serve.

They live apart from :mod:`cxrkit.cli` to keep that file readable; :func:`register` adds them to
the main typer app.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""
