"""Dataset adapters: each turns a dataset's own files into an :class:`~cxrkit.data.index.Index`.

No label policy is applied here: the index keeps the raw 1 / 0 / -1 / NaN labels.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cxrkit.core.errors import CxrkitError, did_you_mean
from cxrkit.data.index import Index

DATASET_NAMES = ("chexpert", "nih", "mimic", "generic")
_TITLES = {"chexpert": "CheXpert", "nih": "NIH ChestX-ray14", "mimic": "MIMIC-CXR-JPG"}


def _adapter(name: str) -> Callable[..., Index]:
    if name == "chexpert":
        from cxrkit.data.adapters.chexpert import index_chexpert

        return index_chexpert
    if name == "nih":
        from cxrkit.data.adapters.nih import index_nih

        return index_nih
    if name == "mimic":
        from cxrkit.data.adapters.mimic import index_mimic

        return index_mimic
    if name == "generic":
        from cxrkit.data.adapters.generic import index_generic

        return index_generic
    raise CxrkitError(did_you_mean(name, DATASET_NAMES, what="dataset"))


def build_index(
    dataset: str,
    root: str | Path,
    *,
    check_images: bool = True,
    drop_missing: bool = False,
    **options: Any,
) -> Index:
    """Index a dataset.

    Args:
        dataset: ``chexpert``, ``nih``, ``mimic`` or ``generic``.
        root: the dataset folder (for ``generic``: the CSV file).
        check_images: check that every listed image exists.
        drop_missing: drop rows whose image is missing instead of failing.
        **options: adapter options (see each adapter).
    """
    adapter = _adapter(dataset)
    root = Path(root)
    if not root.exists():
        raise CxrkitError(f"'{root}' does not exist: give the {dataset} dataset's folder.")
    return adapter(root, check_images=check_images, drop_missing=drop_missing, **options)


def detect_dataset(root: Path) -> str | None:
    """Guess which dataset a folder holds, from its marker files; ``None`` when unsure."""
    if not root.is_dir():
        return None
    names = {p.name for p in root.iterdir()}
    sub = [p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("chexpert")]
    if any(n.startswith("Data_Entry_2017") for n in names):
        return "nih"
    if any(n.startswith("mimic-cxr-2.0.0-") for n in names):
        return "mimic"
    if names & {"train.csv", "valid.csv", "train.csv.gz", "valid.csv.gz"} or sub:
        return "chexpert"
    return None


def not_this_dataset(dataset: str, root: Path, what: str) -> CxrkitError:
    """The error for a folder that is not the named dataset, pointing at what it looks like."""
    guess = detect_dataset(root)
    hint = (
        f" It looks like a {_TITLES[guess]} folder: try `cxrkit index {guess} {root}`."
        if guess and guess != dataset
        else f" Give the folder that holds the {_TITLES.get(dataset, dataset)} label files."
    )
    return CxrkitError(f"'{root}' is not a {_TITLES.get(dataset, dataset)} folder: {what}.{hint}")


def find_file(folder: Path, *names: str) -> Path | None:
    """The first of ``names`` (each also tried with ``.gz``) that exists in ``folder``."""
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None
