"""The command line: one module per stage, each thin (parse, call the library, print)."""

from cxrkit.cli.app import app, main

__all__ = ["app", "main"]
