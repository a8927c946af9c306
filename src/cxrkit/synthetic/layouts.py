"""A synthetic chest X-ray dataset generator that writes the real on-disk layouts.

``cxrkit synth --layout chexpert|nih|mimic`` samples patients, studies and findings with realistic
co-occurrence, renders a film per image with the findings planted (:mod:`cxrkit.synthetic.render`)
and writes exactly the files the real dataset ships: CheXpert's ``train.csv`` / ``valid.csv`` and
``train/patientNNNNN/studyN/viewN_frontal.jpg``; NIH's ``Data_Entry_2017_v2020.csv``, ``images/``,
``train_val_list.txt`` / ``test_list.txt``; MIMIC-CXR-JPG's ``files/pXX/pNNNNNNNN/sNNNNNNNN/*.jpg`` and
its ``mimic-cxr-2.0.0-*.csv.gz``. Besides, every layout gets:

- ``BBox_List_2017.csv``: the planted findings' boxes in NIH's format, in this image's pixels (the
  NIH layout names images by file name, the others by path relative to the dataset folder);
- ``synthetic_truth.csv``: what was planted in each image (0/1 per finding), the ground truth that
  CheXpert-style noisy, uncertain and blank labels are drawn from;
- ``synthetic.json``: the settings, written last: its presence marks a complete dataset.

Everything is a function of the seed: the same settings give the same bytes. A killed run resumes:
images already written are kept (each is written atomically), the rest are rendered.

This module is the driver; :mod:`cxrkit.synthetic.plan` samples what the dataset holds and
:mod:`cxrkit.synthetic.writers` writes each layout's label files.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np

from cxrkit.core.errors import CxrkitError, did_you_mean
from cxrkit.core.fileio import write_bytes_atomic, write_text_atomic
from cxrkit.core.parallel import process_pool, usable_cores
from cxrkit.synthetic.plan import SynthSettings, _plan
from cxrkit.synthetic.writers import (
    CHEXPERT_DIR,
    MIMIC_PREFIX,
    _write_chexpert,
    _write_mimic,
    _write_nih,
    _write_truth_and_boxes,
)

__all__ = ["CHEXPERT_DIR", "LAYOUTS", "MIMIC_PREFIX", "SynthSettings", "generate"]

LAYOUTS = ("chexpert", "nih", "mimic")

# ---- rendering (parallel, resumable) ----------------------------------------------------------


def _render_one(task: tuple) -> tuple[int, dict[str, tuple[float, float, float, float]]]:
    from cxrkit.synthetic.render import render, sample_anatomy

    number, folder, path, seed, patient, findings, view, size, is_png = task
    anatomy = sample_anatomy(np.random.default_rng([seed, 1, patient]))
    image, boxes = render(
        anatomy, findings, size=size, view=view, rng=np.random.default_rng([seed, 2, number])
    )
    target = Path(folder) / path
    if not target.exists():
        ok, buf = cv2.imencode(
            ".png" if is_png else ".jpg",
            image,
            [cv2.IMWRITE_PNG_COMPRESSION, 1] if is_png else [cv2.IMWRITE_JPEG_QUALITY, 92],
        )
        if not ok:
            raise RuntimeError(f"could not encode {path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, buf.tobytes())
    return number, boxes


def _render_all(
    tasks: list[tuple], workers: int, progress: Callable[[int], None] | None
) -> dict[int, dict]:
    boxes: dict[int, dict] = {}
    with contextlib.ExitStack() as stack:
        if workers <= 1 or len(tasks) < 64:
            results: Iterator = map(_render_one, tasks)
        else:
            pool = stack.enter_context(process_pool(workers))
            results = pool.imap_unordered(_render_one, tasks, chunksize=16)
        for number, b in results:
            boxes[number] = b
            if progress:
                progress(1)
    return boxes


def generate(
    layout: str,
    out: str | Path,
    *,
    n: int = 1000,
    size: int = 256,
    seed: int = 0,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write a synthetic dataset in ``layout``'s on-disk format; returns the dataset folder.

    The dataset folder is ``out`` for ``nih`` and ``mimic`` and ``out/CheXpert-v1.0-small`` for
    ``chexpert`` (as the real archive unpacks). Running again with the same settings does nothing;
    a killed run resumes.

    Args:
        layout: ``chexpert``, ``nih`` or ``mimic``.
        out: output folder.
        n: number of images.
        size: image side in pixels (32 to 1024).
        seed: the seed: same settings, same bytes.
        workers: processes (default: the machine's cores).
        progress: called with the number of images finished, for a progress bar.
    """
    if layout not in LAYOUTS:
        raise CxrkitError(did_you_mean(layout, LAYOUTS, what="layout"))
    if not 1 <= n <= 2_000_000:
        raise CxrkitError(f"--n must be between 1 and 2,000,000; got {n}.")
    if not 32 <= size <= 1024:
        raise CxrkitError(f"--size must be between 32 and 1024 pixels; got {size}.")
    if seed < 0:
        raise CxrkitError(f"--seed must be 0 or more; got {seed}.")
    settings = SynthSettings(layout, n, size, seed)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CxrkitError(f"--out '{out}' is a file: give a folder for the dataset.")
    folder = out / CHEXPERT_DIR if layout == "chexpert" else out
    marker = folder / "synthetic.json"
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except (json.JSONDecodeError, OSError):
            done = None
        if done and {k: done.get(k) for k in ("layout", "n", "size", "seed")} == {
            k: v for k, v in settings.to_dict().items() if k != "cxrkit_version"
        }:
            return folder
        raise CxrkitError(
            f"'{out}' already holds a synthetic dataset made with other settings "
            f"({done}); choose another --out folder."
        )
    partial = folder / ".synthetic-partial"
    if partial.is_file() and json.loads(partial.read_text() or "{}") != settings.to_dict():
        raise CxrkitError(
            f"'{out}' holds an unfinished synthetic dataset made with other settings "
            f"({partial.read_text()}); rerun with those settings or choose another --out."
        )
    if out.exists() and any(out.iterdir()) and not partial.is_file():
        raise CxrkitError(f"'{out}' exists and is not empty: choose a new --out folder.")
    folder.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps(settings.to_dict()))

    studies, images = _plan(settings)
    findings_of = {
        i: [f for f, v in studies[im.study].truth.items() if v] for i, im in enumerate(images)
    }
    tasks = [
        (
            im.number,
            str(folder),
            im.path,
            seed,
            im.patient,
            findings_of[im.number],
            im.view,
            size,
            layout == "nih",
        )
        for im in images
    ]
    boxes = _render_all(tasks, workers or usable_cores(), progress)
    {"chexpert": _write_chexpert, "nih": _write_nih, "mimic": _write_mimic}[layout](
        folder, settings, studies
    )
    _write_truth_and_boxes(folder, settings, studies, images, boxes)
    write_text_atomic(marker, json.dumps(settings.to_dict(), indent=2))
    partial.unlink()
    return folder
