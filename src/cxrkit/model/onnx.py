"""ONNX export of a model artifact, and the onnxruntime session that serves it.

:func:`export_onnx` writes ``model.onnx`` (input ``input``: the normalised batch (B, C, H, W)
float32 with a dynamic batch axis; output ``logits`` (B, L·k)) and beside it ``model.onnx.json``:
the artifact's ``model.json`` facts (preprocessing, labels, thresholds, the weights' sha256) plus the
ONNX file's names, shapes, opset, exporter and sha256. The export is checked with ``onnx.checker``
and compared with the torch model through onnxruntime before it is kept.
:func:`open_onnx_session` opens an export after checking that it belongs to the artifact.
See ``docs/inference.md`` for the decisions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrkit.core.errors import CxrkitError, did_you_mean
from cxrkit.core.fileio import atomic_path, sha256_file, write_text_atomic
from cxrkit.model.artifact import ONNX_FILE, ArtifactMeta, load_artifact, read_artifact_meta
from cxrkit.model.networks import input_channels

logger = logging.getLogger(__name__)


ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
#: ``auto`` = ``torchscript`` when this torch still has it, else ``dynamo`` (see export_onnx).
EXPORTERS = ("auto", "torchscript", "dynamo")
#: Oldest opset offered: every op of the timm CNNs exists in it with today's semantics.
MIN_OPSET = 13
#: onnxruntime must reproduce torch's logits within this (random normalised inputs).
EXPORT_ATOL = 1e-3


def onnx_meta_path(onnx_path: str | Path) -> Path:
    """The JSON beside an ONNX file: ``model.onnx`` → ``model.onnx.json``."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".json")


def export_onnx(
    artifact: str | Path,
    out: str | Path | None = None,
    opset: int = 17,
    *,
    exporter: str = "auto",
    verify: bool = True,
) -> Path:
    """Export a model artifact to ONNX: ``model.onnx`` + ``model.onnx.json``.

    The graph is the network alone: input ``input`` (B, C, H, W) float32, already normalised as
    ``model.onnx.json`` says (input mode, mean, std, image size, fit), dynamic batch axis ``batch``;
    output ``logits`` (B, L·k), no sigmoid. Both files are written atomically, the JSON last (an
    old JSON is removed first), so an interrupted export is never taken for a finished one.

    Exporters: ``torchscript`` (the TorchScript tracer, ``dynamo=False``) honours the requested
    opset exactly, exports DenseNet-121 in well under a second and is exact for these static CNNs;
    ``dynamo`` (``torch.export``, torch's default since 2.9) raises opset 17 to 18, takes ~20× longer
    and prints its progress. ``auto`` uses ``torchscript`` and falls back to ``dynamo`` when this
    torch no longer has the tracer or it fails.

    Args:
        artifact: the model artifact folder.
        out: the ONNX file (default ``ARTIFACT/model.onnx``); a folder (or a path without a
            suffix) means ``FOLDER/model.onnx``.
        opset: ONNX opset (the ``dynamo`` exporter may raise it; the JSON records the real one).
        exporter: ``auto``, ``torchscript`` or ``dynamo``.
        verify: run the export through onnxruntime and compare with torch on a random batch of 3;
            a difference above 1e-3 is an error and nothing is kept.

    Returns:
        The ONNX file's path.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise CxrkitError(did_you_mean(exporter, EXPORTERS, what="exporter"))
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise CxrkitError(
            f"The 'opset' parameter must be an integer from {MIN_OPSET} to {newest} "
            f"(this onnx package's newest). Got {opset!r} instead."
        )
    artifact = Path(artifact)
    model, meta = load_artifact(artifact)
    out = artifact / ONNX_FILE if out is None else Path(out)
    if out.is_dir() or not out.suffix:
        out = out / ONNX_FILE
    if out.suffix != ".onnx":
        raise CxrkitError(
            f"'{out}' does not end in .onnx: name the ONNX file to write (model.onnx)."
        )
    channels = input_channels(meta.input_mode)
    h, w = meta.image_size
    n_out = len(meta.labels) * meta.outputs_per_label
    # A batch of 2: an example batch of 1 lets the exporters specialise on it.
    example = torch.zeros(2, channels, h, w)
    sidecar = onnx_meta_path(out)
    sidecar.unlink(missing_ok=True)
    with atomic_path(out) as tmp:
        used = _export(model, example, tmp, opset, exporter)
        proto = onnx.load(str(tmp))
        try:
            onnx.checker.check_model(proto, full_check=True)
        except onnx.checker.ValidationError as e:
            first = str(e).strip().splitlines()[0]
            raise CxrkitError(
                f"the {used} exporter wrote an invalid ONNX model ({first}); nothing was "
                "kept. Try the other exporter (--exporter dynamo / torchscript)."
            ) from None
        real_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        diff = _compare_with_torch(tmp, model, (channels, h, w)) if verify else None
    facts = meta.to_dict() | {
        "onnx": {
            "file": out.name,
            "sha256": sha256_file(out),
            "input": ONNX_INPUT,
            "input_shape": ["batch", channels, h, w],
            "input_dtype": "float32",
            "output": ONNX_OUTPUT,
            "output_shape": ["batch", n_out],
            "opset": real_opset,
            "exporter": used,
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "max_abs_diff_vs_torch": diff,
        }
    }
    write_text_atomic(sidecar, json.dumps(facts, indent=2) + "\n")
    return out


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, how: str) -> str:
    """Write ``model`` to ``path`` with the chosen exporter; return the one that worked."""
    if how in ("auto", "torchscript"):
        try:
            with warnings.catch_warnings():
                # The tracer's deprecation notice and timm's shape-assert tracer warnings are noise
                # here: the export is verified against torch right after.
                warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                torch.onnx.export(
                    model,
                    (example,),
                    str(path),
                    input_names=[ONNX_INPUT],
                    output_names=[ONNX_OUTPUT],
                    opset_version=opset,
                    dynamo=False,
                    dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}},
                    do_constant_folding=True,
                )
            return "torchscript"
        except Exception as e:  # noqa: BLE001 - any tracer failure: try the other exporter
            if how == "torchscript":
                raise
            logger.info("TorchScript ONNX exporter failed (%s); using the dynamo exporter", e)
    with _quiet_loggers("onnxscript", "onnx_ir", "torch.onnx", "torch.export"):
        program = torch.onnx.export(
            model,
            (example,),
            None,
            input_names=[ONNX_INPUT],
            output_names=[ONNX_OUTPUT],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    return "dynamo"


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """The dynamo exporter's optimiser logs every pass at INFO: show that only with --verbose."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _compare_with_torch(path: Path, model: torch.nn.Module, chw: tuple[int, int, int]) -> float:
    """Max |onnxruntime − torch| on a seeded random batch of 3; raise if above EXPORT_ATOL."""
    import onnxruntime as ort

    x = torch.randn(3, *chw, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x).float().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    if not diff <= EXPORT_ATOL + EXPORT_ATOL * float(np.abs(ref).max()):
        raise CxrkitError(
            f"the exported ONNX model disagrees with torch (max |difference| {diff:.2e}); "
            "nothing was kept. Try the other exporter (--exporter dynamo / torchscript)."
        )
    return diff


def read_onnx_meta(onnx_path: str | Path) -> dict[str, Any]:
    """Read ``model.onnx.json`` beside an ONNX file; one clear line when it is missing or broken."""
    sidecar = onnx_meta_path(onnx_path)
    if not sidecar.is_file():
        raise CxrkitError(
            f"'{onnx_path}' has no {sidecar.name} beside it (not written by cxrkit, or an "
            "interrupted export): run `cxrkit export onnx ARTIFACT` again."
        )
    try:
        facts = json.loads(sidecar.read_text(encoding="utf-8"))
        facts["onnx"]["sha256"]  # noqa: B018 - the keys every reader needs
        facts["weights_sha256"]  # noqa: B018
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CxrkitError(
            f"'{sidecar}' is not a cxrkit ONNX description ({type(e).__name__}: {e}): "
            "run `cxrkit export onnx ARTIFACT` again."
        ) from None
    return facts


def open_onnx_session(
    artifact: str | Path, onnx_path: str | Path | None = None, device: str = "cpu"
) -> tuple[Any, ArtifactMeta, dict[str, Any]]:
    """Open the artifact's ONNX export in onnxruntime, after checking it belongs to the artifact.

    The ONNX file must match the sha256 in its JSON, and the JSON's ``weights_sha256`` the
    artifact's: an export made before the artifact's weights changed is refused as stale.

    Returns:
        (onnxruntime session, the artifact's metadata, the ONNX JSON).
    """
    import onnxruntime as ort

    artifact = Path(artifact)
    meta = read_artifact_meta(artifact)
    path = artifact / ONNX_FILE if onnx_path is None else Path(onnx_path)
    if path.is_dir():
        path = path / ONNX_FILE
    if not path.is_file():
        raise CxrkitError(
            f"no ONNX export at '{path}': run `cxrkit export onnx {artifact}` first "
            "(or predict with --runtime torch)."
        )
    facts = read_onnx_meta(path)
    if facts["weights_sha256"] != meta.weights_sha256:
        raise CxrkitError(
            f"'{path}' was exported from other weights than the artifact '{artifact}' now holds "
            f"(a stale export): run `cxrkit export onnx {artifact}` again."
        )
    if sha256_file(path) != facts["onnx"]["sha256"]:
        raise CxrkitError(
            f"'{path}' does not match the sha256 in {onnx_meta_path(path).name} (modified or "
            f"partly copied): run `cxrkit export onnx {artifact}` again."
        )
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise CxrkitError(
                f"--device {device} with --runtime onnx needs onnxruntime-gpu "
                "(CUDAExecutionProvider is not available): use --device cpu or --runtime torch."
            )
        providers.insert(0, "CUDAExecutionProvider")
    elif torch.device(device).type != "cpu":
        raise CxrkitError(
            f"--runtime onnx runs on cpu or cuda, not '{device}': use --runtime torch for it."
        )
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad graph
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise CxrkitError(
            f"'{path}' is not a model onnxruntime can run ({first}): run `cxrkit export onnx "
            f"{artifact}` again."
        ) from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    n_out = len(meta.labels) * meta.outputs_per_label
    last = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if (
        len(inputs) != 1
        or len(outputs) != 1
        or inputs[0].name != ONNX_INPUT
        or (isinstance(last, int) and last != n_out)
    ):
        raise CxrkitError(
            f"'{path}' does not have the shape of this artifact's network (one input "
            f"'{ONNX_INPUT}', one output of {n_out} values): run `cxrkit export onnx {artifact}` again."
        )
    return session, meta, facts
