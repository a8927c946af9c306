"""The flat import paths of cxrkit 0.1 (``cxrkit.labels``, ``cxrkit.models``, ...), kept for one release.

cxrkit 0.2 put each stage in a folder (docs/design.md). Code written against 0.1 keeps working: importing
an old module gives a stand-in whose attributes are looked up, in order, in the modules that now hold
them, and says once where they moved (:class:`CxrkitDeprecationWarning`). The stand-ins go in 0.3.

This module imports nothing of cxrkit at import time, so any stage may use it without an upward import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

REMOVED_IN = "0.3"


class CxrkitDeprecationWarning(DeprecationWarning):
    """An old cxrkit import path or option was used; shown by default (not only in ``__main__``)."""


# old module → the modules that now hold its public names, searched in order
MOVED: dict[str, tuple[str, ...]] = {
    "cxrkit.errors": ("cxrkit.core.errors",),
    "cxrkit.fileio": ("cxrkit.core.fileio",),
    "cxrkit.parallel": ("cxrkit.core.parallel",),
    "cxrkit.findings": ("cxrkit.core.findings",),
    "cxrkit.config": ("cxrkit.core.config",),
    "cxrkit.index": ("cxrkit.data.index",),
    "cxrkit.datasets": ("cxrkit.data.adapters",),
    "cxrkit.datasets.chexpert": ("cxrkit.data.adapters.chexpert",),
    "cxrkit.datasets.nih": ("cxrkit.data.adapters.nih", "cxrkit.data.boxes"),
    "cxrkit.datasets.mimic": ("cxrkit.data.adapters.mimic",),
    "cxrkit.datasets.generic": ("cxrkit.data.adapters.generic",),
    "cxrkit.datasets.synthetic": (
        "cxrkit.synthetic.layouts",
        "cxrkit.synthetic.plan",
        "cxrkit.synthetic.writers",
        "cxrkit.synthetic",
    ),
    "cxrkit.datasets.synth_render": (
        "cxrkit.synthetic.render",
        "cxrkit.synthetic.anatomy",
        "cxrkit.synthetic.raster",
        "cxrkit.synthetic.frontal",
        "cxrkit.synthetic.lung_findings",
        "cxrkit.synthetic.chest_findings",
        "cxrkit.synthetic.lateral",
        "cxrkit.synthetic",
    ),
    "cxrkit.labels": ("cxrkit.data.labels",),
    "cxrkit.splits": ("cxrkit.data.splits", "cxrkit.data.stratify", "cxrkit.data.split_report"),
    "cxrkit.imaging": ("cxrkit.data.imaging",),
    "cxrkit.cache": ("cxrkit.data.cache",),
    "cxrkit.inputs": ("cxrkit.data.inputs",),
    "cxrkit.data": ("cxrkit.data.loader",),
    "cxrkit.models": ("cxrkit.model.networks", "cxrkit.model.artifact"),
    "cxrkit.ensemble": ("cxrkit.model.ensemble",),
    "cxrkit.interop": ("cxrkit.model.onnx", "cxrkit.model.importers"),
    "cxrkit.losses": ("cxrkit.train.losses",),
    "cxrkit.schedules": ("cxrkit.train.schedules",),
    "cxrkit.experiment": ("cxrkit.train.grid",),
    "cxrkit.train": (
        "cxrkit.train.loop",
        "cxrkit.data.loader",
        "cxrkit.evaluate.inference",
    ),
    "cxrkit.metrics": ("cxrkit.evaluate.metrics",),
    "cxrkit.evaluation": (
        "cxrkit.evaluate.evaluate",
        "cxrkit.evaluate.files",
        "cxrkit.evaluate.options",
        "cxrkit.evaluate.results",
        "cxrkit.model.artifact",
    ),
    "cxrkit.explain": (
        "cxrkit.use.explain",
        "cxrkit.model.cam",
        "cxrkit.evaluate.localization",
        "cxrkit.data.boxes",
    ),
    "cxrkit.predict": ("cxrkit.use.predict",),
    "cxrkit.serve": ("cxrkit.use.serve",),
    "cxrkit.serve.app": ("cxrkit.use.serve.app",),
    "cxrkit.report": (
        "cxrkit.report.build",
        "cxrkit.report.sections",
        "cxrkit.report.figures",
        "cxrkit.evaluate.compare",
        "cxrkit.evaluate.tables",
    ),
}

_warned: set[str] = set()


def _targets(old: str) -> list[types.ModuleType]:
    found = []
    for name in MOVED[old]:
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists but something it needs is missing
                raise
    return found


def _warn(old: str, stacklevel: int = 3) -> None:
    if old in _warned:
        return
    _warned.add(old)
    warnings.warn(
        f"{old} moved to {MOVED[old][0]} (docs/design.md); the old path is removed in cxrkit {REMOVED_IN}.",
        CxrkitDeprecationWarning,
        stacklevel=stacklevel,
    )


def moved_attribute(old: str, name: str) -> object:
    """``getattr`` on an old module's name, looked up where it lives now (with the deprecation warning)."""
    if name.startswith("__"):
        raise AttributeError(name)
    for module in _targets(old):
        if hasattr(module, name):
            _warn(old, stacklevel=4)
            return getattr(module, name)
    raise AttributeError(f"module {old!r} has no attribute {name!r} (it moved: see docs/design.md)")


class _LegacyModule(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        return moved_attribute(self.__name__, name)

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for module in _targets(self.__name__):
            names.update(n for n in dir(module) if not n.startswith("_"))
        return sorted(names)


class _LegacyFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 - importlib's signature
        if fullname not in MOVED or fullname in _PACKAGES:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=True)

    def create_module(self, spec):  # noqa: ANN001
        return _LegacyModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        module.__path__ = []  # so that old submodules (cxrkit.serve.app) import through here too
        _warn(module.__name__, stacklevel=3)


# old names that are real packages now: their own __getattr__ calls moved_attribute
_PACKAGES = {"cxrkit.data", "cxrkit.train", "cxrkit.report"}


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (called by ``cxrkit/__init__``)."""
    if not any(isinstance(f, _LegacyFinder) for f in sys.meta_path):
        sys.meta_path.append(_LegacyFinder())
