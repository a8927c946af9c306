"""The one exception type for a user's mistake.

A :class:`CxrkitError` carries one line that says what was found, what was expected and how to fix it.
The CLI prints that line and exits non-zero; it never shows a traceback for it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CxrkitError(Exception):
    """A problem with the user's input, reported as one clear line."""


def closest(name: str, options: Iterable[str]) -> str | None:
    """The option most like ``name`` (case-insensitive, difflib ratio ≥ 0.6), or None."""
    lowered = {o.lower(): o for o in options}
    close = difflib.get_close_matches(str(name).lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def did_you_mean(name: str, options: Iterable[str], *, what: str = "name") -> str:
    """Return an error line for an unknown ``name``, suggesting the closest of ``options``.

    Example: ``unknown finding 'Cardiomegly': did you mean 'Cardiomegaly'? Available: ...``.
    """
    options = list(options)
    close = closest(name, options)
    hint = f" did you mean '{close}'?" if close else ""
    return f"unknown {what} '{name}':{hint} Available: {', '.join(options)}."


def preview(items: Iterable[object], k: int = 5) -> str:
    """Format the first ``k`` items of a collection for an error line: ``a, b, c (+12 more)``."""
    items = list(items)
    head = ", ".join(str(i) for i in items[:k])
    return head + (f" (+{len(items) - k} more)" if len(items) > k else "")
