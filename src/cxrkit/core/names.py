"""Turning names from outside (label names of a model.json, finding names) into safe file-name parts.

A label name is not a file name: ``x/../../bad/victim`` must not become a path, ``..`` not a parent
folder, and control characters not part of a name a shell prints.
"""

from __future__ import annotations

import re
import unicodedata

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

#: Columns of a prediction table (``cxrkit predict``'s output, read back by ``cxrkit evaluate
#: --predictions``): ``<finding>_positive`` holds the decision, ``error`` why an image has no scores.
POSITIVE_SUFFIX = "_positive"
ERROR_COLUMN = "error"


def slug(name: str, *, max_len: int = 64) -> str:
    """``name`` as one safe file-name component: ASCII letters, digits, ``.``, ``_``, ``-`` only.

    Accents are dropped (``Ödem`` → ``Odem``), every other run of characters becomes ``_``, leading
    dots and dashes are removed (no hidden files, no option-like names), and the result is cut to
    ``max_len`` characters. Never empty: an unusable name gives ``finding``.

    Example: ``slug("Pleural Effusion")`` → ``Pleural_Effusion``; ``slug("x/../../bad")`` →
    ``x_.._.._bad`` (one component: no separator is left to climb with).
    """
    ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    out = _UNSAFE.sub("_", ascii_name).lstrip(".-_")[:max_len].rstrip(".")
    return out or "finding"
