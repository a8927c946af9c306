"""The declared ranges and types of ``model.json``: an artifact is outside data, checked field by field.

A model folder may come from anyone. Before any value of its ``model.json`` is used (as a tensor
shape, a divisor, a threshold, a file name, a piece of a web page or an HTTP header), every field is
checked here and a bad one is refused in one line naming the field and what is expected. Label names
are printable, at most :data:`MAX_LABEL_CHARS` characters, with no path separator and no control
character; the places that show them still escape (HTML) or slug (file names) or encode (headers)
them, since a valid name may still hold ``<`` or non-ASCII letters.

Pure Python: no torch, so the torch-free runtime can check an artifact too.
"""

from __future__ import annotations

import math
import re
from typing import Any

from cxrkit.core.errors import CxrkitError

MAX_LABEL_CHARS = 64
MAX_LABELS = 1000
MIN_IMAGE_SIDE = 8
MAX_IMAGE_SIDE = 4096
_ARCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _show(value: Any) -> str:
    """A value for an error line: repr (control characters escaped), cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _label_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not name:
        return "a non-empty text"
    if len(name) > MAX_LABEL_CHARS:
        return f"at most {MAX_LABEL_CHARS} characters"
    if not name.isprintable() or name != name.strip():
        return "printable, without control characters or surrounding spaces"
    if "/" in name or "\\" in name or name in (".", ".."):
        return "free of path separators"
    return None


def validate_meta(raw: dict[str, Any], where: str, *, input_modes: tuple, fit_modes: tuple,
                  outputs: tuple) -> None:  # fmt: skip
    """Check every field of a ``model.json`` dict against its declared range.

    Args:
        raw: the parsed JSON object (required fields already known to be present).
        where: how to name the source in the error line.
        input_modes, fit_modes, outputs: the allowed values of those fields.

    Raises:
        CxrkitError: ``<where>: model.json field '<name>' must be <expected>; got <value>.``
    """

    def bad(field: str, expected: str, value: Any) -> CxrkitError:
        return CxrkitError(
            f"{where}: model.json field '{field}' must be {expected}; got {_show(value)}. "
            "Save or export the artifact again from a trusted source."
        )

    arch = raw.get("architecture")
    if not isinstance(arch, str) or not _ARCH.match(arch):
        raise bad("architecture", "a timm model name (letters, digits, _ . -)", arch)
    labels = raw.get("labels")
    if not isinstance(labels, list) or not 1 <= len(labels) <= MAX_LABELS:
        raise bad("labels", f"a list of 1 to {MAX_LABELS} finding names", labels)
    for name in labels:
        problem = _label_problem(name)
        if problem:
            raise bad("labels", f"finding names that are {problem}", name)
    if len(set(labels)) != len(labels):
        raise bad("labels", "distinct names", [n for n in labels if labels.count(n) > 1][0])
    mode = raw.get("input_mode")
    if mode not in input_modes:
        raise bad("input_mode", f"one of {', '.join(input_modes)}", mode)
    size = raw.get("image_size")
    size = [size, size] if isinstance(size, int) and not isinstance(size, bool) else size
    ok_size = (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
        and size[0] == size[1]
        and MIN_IMAGE_SIDE <= size[0] <= MAX_IMAGE_SIDE
    )
    if not ok_size:
        raise bad(
            "image_size",
            f"[S, S], a square of {MIN_IMAGE_SIDE} to {MAX_IMAGE_SIDE} whole pixels",
            raw.get("image_size"),
        )
    channels = 1 if mode == "gray1" else 3
    for key in ("mean", "std"):
        v = raw.get(key)
        if not isinstance(v, list) or len(v) != channels or not all(_number(x) for x in v):
            raise bad(key, f"{channels} finite number(s) (one per input channel of {mode})", v)
    if not all(x > 0 for x in raw["std"]):
        raise bad("std", "positive numbers (the input is divided by them)", raw["std"])
    thresholds = raw.get("thresholds")
    if not isinstance(thresholds, dict):
        raise bad("thresholds", "an object of finding → number in [0, 1] or null", thresholds)
    for key, value in thresholds.items():
        if key not in labels:
            raise bad("thresholds", "keyed by the model's labels", key)
        if value is not None and not (_number(value) and 0.0 <= value <= 1.0):
            raise bad(f"thresholds.{key}", "a number in [0, 1] or null", value)
    for key, default, lo, hi in (("temperature", 1.0, 0.0, 1e3), ("clip_limit", 2.0, 0.0, 1e3)):
        value = raw.get(key, default)
        if not (_number(value) and lo < value <= hi):
            raise bad(key, f"a number above {lo:g} and at most {hi:g}", value)
    if raw.get("fit", "pad") not in fit_modes:
        raise bad("fit", f"one of {', '.join(fit_modes)}", raw.get("fit"))
    if raw.get("output", "sigmoid") not in outputs:
        raise bad("output", f"one of {', '.join(outputs)}", raw.get("output"))
    digest = raw.get("weights_sha256")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise bad("weights_sha256", "64 lowercase hex digits", digest)
    if not isinstance(raw.get("format_version"), int) or isinstance(
        raw.get("format_version"), bool
    ):
        raise bad("format_version", "a whole number", raw.get("format_version"))
    if raw.get("config_hash") is not None and not isinstance(raw.get("config_hash"), str):
        raise bad("config_hash", "a text or null", raw.get("config_hash"))
    if not isinstance(raw.get("extra", {}), dict):
        raise bad("extra", "an object", raw.get("extra"))
