"""Predict findings on new images with a model artifact, through torch or onnxruntime.

A new image goes the way the training images went: decoded and resized exactly as the cache did
(:func:`cxrkit.data.imaging.load_for_cache` with the artifact's ``image_size`` and ``fit``), turned into
the network input by :class:`cxrkit.data.inputs.InputPipeline` in evaluation mode (the artifact's input
mode, CLAHE clip limit, mean and std; no augmentation), then logits → probabilities with
:func:`cxrkit.model.networks.probabilities`. The artifact is the only input.

:meth:`Predictor.predict_paths` returns one row per image: ``path``; per finding, in the artifact's
label order, a probability column named after the finding and, where the artifact has a threshold
for it, a boolean ``<finding>_positive`` (probability ≥ threshold); and ``error`` (why an image
could not be decoded, else empty). An image that fails does not stop the others; if every image
fails, that is an error.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrkit.core.errors import CxrkitError, did_you_mean, preview
from cxrkit.core.names import ERROR_COLUMN, POSITIVE_SUFFIX
from cxrkit.data.imaging import (
    DICOM_SUFFIXES,
    ImageReadError,
    load_for_cache,
    resize_square,
    to_uint8,
)
from cxrkit.model.artifact import ArtifactMeta, build_pipeline, load_artifact
from cxrkit.model.networks import probabilities

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx")
#: Files a folder is searched for (case-insensitive); suffix-less DICOM files are found by magic.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", *DICOM_SUFFIXES)
PATH_COLUMN = "path"
_GLOB_CHARS = frozenset("*?[")


def decision_column(finding: str) -> str:
    """Name of a finding's boolean decision column: ``Cardiomegaly`` → ``Cardiomegaly_positive``."""
    return finding + POSITIVE_SUFFIX


# ---- inputs --------------------------------------------------------------------------------------


def _is_suffixless_dicom(path: Path) -> bool:
    if path.suffix or path.name.startswith("."):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _images_in(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            p = Path(root) / name
            if not name.startswith(".") and (
                p.suffix.lower() in IMAGE_SUFFIXES or _is_suffixless_dicom(p)
            ):
                found.append(p)
    return found


def expand_inputs(items: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Turn files, folders and glob patterns into the list of image files to predict on.

    A file is taken as it is (whatever its suffix: decoding tells). A folder is searched
    recursively for ``.png``, ``.jpg``, ``.jpeg``, ``.dcm``, ``.dicom``, ``.dic`` files (any case)
    and for suffix-less DICOM files (``DICM`` at byte 128), skipping hidden files and folders. A
    pattern (``*``, ``?``, ``[``; ``**`` recurses) is expanded, its folders searched as above.
    Order: as given, folders sorted; duplicates dropped.

    Raises:
        CxrkitError: a path that does not exist, or no image found at all.
    """
    out: dict[Path, None] = {}
    empty: list[str] = []
    items = [os.fspath(i) for i in items]
    for item in items:
        path = Path(item)
        if path.is_file():
            found = [path]
        elif path.is_dir():
            found = _images_in(path)
        elif _GLOB_CHARS & set(item):
            found = []
            for match in sorted(glob.glob(item, recursive=True)):
                m = Path(match)
                found.extend(_images_in(m) if m.is_dir() else [m] if m.is_file() else [])
        else:
            raise CxrkitError(
                f"'{item}' does not exist: pass image files, folders or glob patterns "
                "(e.g. 'scans/*.png')."
            )
        if not found:
            empty.append(item)
        out.update(dict.fromkeys(found))
    if not out:
        raise CxrkitError(
            f"no images found in {preview([repr(e) for e in empty or items], 3)}: expected "
            f"{', '.join(IMAGE_SUFFIXES)} files (or suffix-less DICOM) in the folders or patterns given."
        )
    for item in empty:
        logger.warning("no images in '%s'", item)
    return list(out)


# ---- the predictor -------------------------------------------------------------------------------


def _torch_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CxrkitError(f"unknown device '{device}': use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CxrkitError(
            f"--device {device}: no CUDA device is available here (torch.cuda.is_available() is "
            "False). Use --device cpu."
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CxrkitError(f"--device {device}: MPS is not available here. Use --device cpu.")
    return dev


class Predictor:
    """A model artifact ready to score images: preprocessing, network, probabilities.

    Build one with :meth:`from_artifact`. ``labels`` are the findings in output order,
    ``thresholds`` the artifact's operating points (finding → float or None).

    Args:
        meta: the artifact's metadata (the preprocessing comes from it).
        forward: normalised (B, C, H, W) float32 on ``device`` → (B, L·k) logits.
        runtime: ``torch`` or ``onnx`` (for display).
        device: where the input pipeline and the network run.
        batch_size: images per forward pass.
    """

    def __init__(
        self,
        meta: ArtifactMeta,
        forward: Callable[[torch.Tensor], torch.Tensor],
        *,
        runtime: str = "torch",
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise CxrkitError(f"batch size must be a positive integer. Got {batch_size!r}.")
        h, w = meta.image_size
        if h != w:
            raise CxrkitError(
                f"the artifact's image_size is {h}×{w}; cxrkit's cache and prediction use square "
                "images. Save the artifact with a square image_size."
            )
        self.meta, self.runtime, self.batch_size = meta, runtime, batch_size
        self.device = torch.device(device)
        self.size = h
        self._forward = forward
        self.pipeline = build_pipeline(meta).to(self.device)

    @classmethod
    def from_artifact(
        cls,
        path: str | Path,
        runtime: str = "torch",
        device: str = "cpu",
        batch_size: int = 16,
        *,
        onnx_path: str | Path | None = None,
    ) -> Predictor:
        """Load an artifact folder for prediction.

        Args:
            path: the model artifact (``model.safetensors`` + ``model.json``).
            runtime: ``torch`` (the safetensors weights) or ``onnx`` (the artifact's ``model.onnx``
                written by ``cxrkit export onnx``, through onnxruntime).
            device: ``cpu``, ``cuda``, ``cuda:N`` (onnx: cpu, or cuda with onnxruntime-gpu).
            batch_size: images per forward pass.
            onnx_path: the ONNX file when it is not ``ARTIFACT/model.onnx``.
        """
        if runtime not in RUNTIMES:
            raise CxrkitError(did_you_mean(runtime, RUNTIMES, what="runtime"))
        dev = _torch_device(device)
        if runtime == "torch":
            if onnx_path is not None:
                raise CxrkitError("--onnx applies to --runtime onnx only: add --runtime onnx.")
            model, meta = load_artifact(path)
            model = model.to(dev)

            def forward(x: torch.Tensor) -> torch.Tensor:
                return model(x)

            return cls(meta, forward, runtime=runtime, device=dev, batch_size=batch_size)
        from cxrkit.model.onnx import ONNX_INPUT, ONNX_OUTPUT, open_onnx_session

        session, meta, _ = open_onnx_session(path, onnx_path, str(dev))

        def forward_onnx(x: torch.Tensor) -> torch.Tensor:
            feed = {ONNX_INPUT: x.detach().cpu().numpy().astype(np.float32, copy=False)}
            return torch.from_numpy(session.run([ONNX_OUTPUT], feed)[0])

        # The pipeline runs where onnxruntime's input is made: on the CPU.
        return cls(meta, forward_onnx, runtime=runtime, device="cpu", batch_size=batch_size)

    @property
    def labels(self) -> tuple[str, ...]:
        """Finding names in output order (L)."""
        return self.meta.labels

    @property
    def thresholds(self) -> dict[str, float | None]:
        """Finding → operating point (None where the artifact has none)."""
        return dict(self.meta.thresholds)

    # ---- scoring ---------------------------------------------------------------------------------

    def predict_uint8(self, batch: np.ndarray) -> np.ndarray:
        """Score images already decoded and resized as the cache stores them.

        Args:
            batch: (B, S, S) uint8, S = the artifact's image size.

        Returns:
            (B, L) float32 probabilities.
        """
        out = []
        for start in range(0, len(batch), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(batch[start : start + self.batch_size]))
            with torch.inference_mode():
                inputs = self.pipeline(x.to(self.device))  # (B, C, S, S) normalised
                logits = self._forward(inputs)  # (B, L·k)
                out.append(
                    probabilities(logits, self.meta.output, self.meta.temperature).cpu().numpy()
                )
        return np.concatenate(out).astype(np.float32, copy=False)

    def prepare_array(self, image: np.ndarray) -> np.ndarray:
        """One 2-D image (any dtype, any size) → (S, S) uint8, as the cache makes it."""
        image = np.asarray(image)
        if image.ndim != 2:
            raise CxrkitError(
                f"expected a 2-D grayscale image, got an array of shape {image.shape}: convert "
                "colour images to gray first."
            )
        return resize_square(to_uint8(image), self.size, self.meta.fit)

    def predict_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Score in-memory grayscale images.

        Args:
            images: 2-D arrays (uint8, uint16 or float, any size); each is mapped to uint8 and
                resized as :func:`cxrkit.data.imaging.load_for_cache` does.

        Returns:
            (n, L) float32 probabilities, columns in :attr:`labels` order.
        """
        if len(images) == 0:
            return np.zeros((0, len(self.labels)), np.float32)
        return self.predict_uint8(np.stack([self.prepare_array(img) for img in images]))

    def _load(self, path: Path) -> np.ndarray | str:
        try:
            # DICOM reads are serialised inside cxrkit.data.imaging (pydicom's quieting is process-wide)
            return load_for_cache(path, self.size, self.meta.fit)
        except (ImageReadError, OSError) as e:
            return str(e)

    def predict_paths(
        self,
        paths: Sequence[str | os.PathLike[str]],
        progress: Callable[[int], None] | None = None,
    ) -> pd.DataFrame:
        """Score image files (PNG, JPEG, DICOM), batch by batch.

        Decoding runs in a few threads, one batch ahead of the network. An image that cannot be
        decoded gets NaN probabilities and its reason in ``error``; the others go on.

        Args:
            paths: image files (see :func:`expand_inputs` for folders and patterns).
            progress: called with the number of images finished, for a progress bar.

        Returns:
            One row per path: ``path``, then per finding its probability and, where the artifact
            has a threshold, ``<finding>_positive`` (nullable boolean), then ``error``.

        Raises:
            CxrkitError: no path given, or not one image could be decoded.
        """
        paths = [Path(p) for p in paths]
        if not paths:
            raise CxrkitError("no images to predict on: pass at least one image file.")
        n, bs = len(paths), self.batch_size
        probs = np.full((n, len(self.labels)), np.nan, np.float32)
        errors: list[str | None] = [None] * n
        chunks = [range(s, min(s + bs, n)) for s in range(0, n, bs)]
        workers = max(1, min(4, os.cpu_count() or 1, bs))
        with ThreadPoolExecutor(workers, thread_name_prefix="cxrkit-decode") as pool:

            def submit(rows: range) -> list[Future]:
                return [pool.submit(self._load, paths[i]) for i in rows]

            pending = submit(chunks[0])
            for k, rows in enumerate(chunks):
                loaded = [f.result() for f in pending]
                if k + 1 < len(chunks):
                    pending = submit(chunks[k + 1])  # decode the next batch meanwhile
                ok = [i for i, r in zip(rows, loaded, strict=True) if isinstance(r, np.ndarray)]
                for i, r in zip(rows, loaded, strict=True):
                    if isinstance(r, str):
                        errors[i] = r
                if ok:
                    images = np.stack([loaded[i - rows.start] for i in ok])
                    probs[ok] = self.predict_uint8(images)
                if progress is not None:
                    progress(len(rows))
        failed = [e for e in errors if e is not None]
        if len(failed) == n:
            if n == 1:
                raise CxrkitError(failed[0])
            raise CxrkitError(f"none of the {n:,} images could be decoded; the first: {failed[0]}")
        return self.to_frame(paths, probs, errors)

    def to_frame(
        self,
        paths: Sequence[str | os.PathLike[str]],
        probs: np.ndarray,
        errors: Sequence[str | None] | None = None,
    ) -> pd.DataFrame:
        """(n, L) probabilities → the predictions table (see :meth:`predict_paths`)."""
        data: dict[str, Any] = {PATH_COLUMN: [os.fspath(p) for p in paths]}
        for j, finding in enumerate(self.labels):
            p = probs[:, j]
            data[finding] = p
            t = self.meta.thresholds.get(finding)
            if t is not None:
                decided = pd.array(p >= t, dtype="boolean")
                decided[np.isnan(p)] = pd.NA
                data[decision_column(finding)] = decided
        data[ERROR_COLUMN] = pd.array(
            list(errors) if errors is not None else [None] * len(probs), dtype="string"
        )
        return pd.DataFrame(data)


def write_predictions(
    frame: pd.DataFrame, out: str | os.PathLike[str], predictor: Predictor
) -> Path:
    """Write a predictions table atomically: ``.csv``, ``.json`` or ``.parquet`` (by suffix).

    The JSON is ``{"model": {...}, "predictions": [one object per image]}`` where ``model`` holds
    the artifact's architecture, labels, thresholds, weights sha256 and the runtime used; NaN and
    missing values are ``null``.
    """
    import json

    from cxrkit.core.fileio import atomic_path, write_text_atomic

    out = Path(out)
    kind = check_predictions_path(out)
    if kind == ".csv":
        with atomic_path(out) as tmp:
            frame.to_csv(tmp, index=False)
    elif kind == ".parquet":
        with atomic_path(out) as tmp:
            frame.to_parquet(tmp, index=False)
    else:
        meta = predictor.meta
        payload = {
            "model": {
                "architecture": meta.architecture,
                "labels": list(meta.labels),
                "thresholds": dict(meta.thresholds),
                "weights_sha256": meta.weights_sha256,
                "runtime": predictor.runtime,
            },
            "predictions": json.loads(frame.to_json(orient="records", double_precision=7)),
        }
        write_text_atomic(out, json.dumps(payload, indent=1, allow_nan=False) + "\n")
    return out


def check_predictions_path(out: str | os.PathLike[str]) -> str:
    """The output kind of a predictions file by its suffix, or one clear line."""
    kind = Path(out).suffix.lower()
    if kind not in (".csv", ".json", ".parquet"):
        raise CxrkitError(
            f"cannot tell the format of '{out}': name the predictions file .csv, .json or .parquet."
        )
    return kind
