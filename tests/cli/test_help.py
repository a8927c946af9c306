"""Every command's --help reads well: no typer placeholders such as ``<bool>`` after a flag,
``<list[str]>`` or ``{artifact}``, and no word cut in two where rich wraps a narrow terminal."""

from __future__ import annotations

import inspect
import re

import pytest
import typer
from typer.testing import CliRunner

from cxrkit import cli

ANSI = re.compile(r"\x1b\[[0-9;]*m")
BOX = re.compile(r"[│╭╮╰╯─┃━┏┓┗┛]")
#: Terminal widths a user is likely to have; 1000 renders every line unwrapped (the reference).
WIDTHS = (80, 100, 120)


def _commands(command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every command and group under ``command``, with the arguments that reach it."""
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(typer.main.get_command(cli.app))


def _help(path: tuple[str, ...], width: int) -> str:
    result = CliRunner().invoke(cli.app, [*path, "--help"], env={"COLUMNS": str(width)})
    assert result.exit_code == 0, result.output
    return ANSI.sub("", result.output)


def _words(text: str) -> list[str]:
    return BOX.sub(" ", text).split()


def test_every_command_is_covered():
    names = {" ".join(path) for path, _ in COMMANDS}
    for name in ("", "evaluate", "predict", "ensemble", "demo", "export onnx", "import chexnet"):
        assert name in names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "cxrkit")
def test_help_has_no_placeholders_and_no_broken_words(path: tuple[str, ...]):
    wide = _help(path, 1000)
    for placeholder in ("<bool>", "<list[", "{", "}"):
        assert placeholder not in wide, (placeholder, wide)
    vocabulary = set(_words(wide))
    for width in WIDTHS:
        text = _help(path, width)
        assert max(len(line) for line in text.splitlines()) <= width, text
        # rich wraps at spaces; a word it had to cut (fold) or shorten (…) is not a word of the
        # unwrapped help
        broken = [w for w in _words(text) if w not in vocabulary]
        assert not broken, (width, broken, text)


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=lambda p: " ".join(p) or "cxrkit")
def test_help_paragraphs_are_not_broken_by_the_docstring(path: tuple[str, ...]):
    """Rich keeps a docstring's line breaks: each paragraph of a command's help is one line, so
    that rich alone decides where lines end."""
    command = dict(COMMANDS)[path]
    for paragraph in inspect.cleandoc(command.help or "").split("\n\n"):
        assert "\n" not in paragraph, (path, paragraph)
