"""FastAPI application of ``cxrkit serve`` (see :mod:`cxrkit.use.serve`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import cv2
import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from cxrkit import __version__
from cxrkit.core.errors import CxrkitError
from cxrkit.core.notice import NOTICE
from cxrkit.data.image_gate import ImageReadError, image_kind
from cxrkit.data.imaging import decode_image
from cxrkit.use.serve.guard import BODY_TIMEOUT_S, BodyGuard, key_matches

log = logging.getLogger(__name__)

#: Default upload limit; ``cxrkit serve --max-upload-mb`` changes it.
MAX_UPLOAD_BYTES = 32 * 2**20
#: Longest side of the overlay PNG that /explain returns.
MAX_OVERLAY_SIDE = 1024


class Health(BaseModel):
    status: str = Field(description="'ok' when the model is loaded.")
    uptime_s: float


class ModelInfo(BaseModel):
    labels: list[str] = Field(description="Findings in output order.")
    thresholds: dict[str, float | None] = Field(
        description="Operating point per finding (fitted on validation data; null: none)."
    )
    operating_point: dict[str, Any] | None = None
    architecture: str
    input_mode: str
    image_size: list[int]
    output: str
    temperature: float
    cxrkit_version: str
    model_cxrkit_version: str
    runtime: str = Field(description="torch or onnx (predictions); heatmaps always use torch.")
    notice: str = NOTICE


class Prediction(BaseModel):
    probabilities: dict[str, float] = Field(description="P(finding present), in [0, 1].")
    decisions: dict[str, bool | None] = Field(
        description="probability ≥ threshold; null where the model has no threshold."
    )
    thresholds: dict[str, float | None]
    image: dict[str, Any] = Field(description="format, height and width of the decoded image.")
    notice: str = NOTICE


class Problem(BaseModel):
    detail: str


_ERRORS = {
    401: {"model": Problem, "description": "The service needs an API key (X-API-Key)."},
    408: {"model": Problem, "description": "The upload did not arrive in time."},
    413: {"model": Problem, "description": "The upload is larger than the limit."},
    415: {"model": Problem, "description": "Not a PNG, JPEG or DICOM file."},
    422: {"model": Problem, "description": "The image cannot be decoded, or a bad parameter."},
}


def create_app(
    artifact: str | Path,
    *,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    device: str = "cpu",
    runtime: str = "auto",
    api_key: str | None = None,
    cors_origins: Sequence[str] = (),
    body_timeout_s: float = BODY_TIMEOUT_S,
    max_pixels: int | None = None,
) -> FastAPI:
    """The service for one model artifact (loaded once, shared by all requests).

    Args:
        artifact: a model artifact folder (or a run folder holding ``model/``).
        max_upload_bytes: larger uploads get 413.
        device: where the network runs.
        runtime: ``torch``, ``onnx`` (the artifact's ``model.onnx``, via onnxruntime) or ``auto``:
            onnx on the CPU when the artifact has an export, else torch. /explain always uses
            torch (Grad-CAM needs gradients).
        api_key: when set, every endpoint but ``/`` and ``/health`` needs it in the ``X-API-Key``
            header (or ``Authorization: Bearer KEY``); compared in constant time; 401 otherwise.
        cors_origins: origins allowed to call the API from a browser (CORS); none by default.
        body_timeout_s: seconds a client has to send a whole upload (408 after).
        max_pixels: images declaring more pixels are refused with 422 before decoding (default:
            ``$CXRKIT_MAX_PIXELS`` or 64 MP).
    """
    from cxrkit.model.artifact import ONNX_FILE, resolve_artifact
    from cxrkit.use.predict import Predictor

    _, folder = resolve_artifact(artifact)
    if runtime not in ("auto", "torch", "onnx"):
        raise CxrkitError(
            f"The 'runtime' parameter must be one of {{auto, torch, onnx}}. Got '{runtime}' instead."
        )
    if runtime == "auto":
        runtime = "onnx" if device == "cpu" and (Path(folder) / ONNX_FILE).is_file() else "torch"
    predictor = Predictor.from_artifact(folder, runtime=runtime, device=device, batch_size=1)
    meta = predictor.meta
    started = time.time()
    explainers: dict[str, Any] = {}  # one per Grad-CAM method, made on first use
    explainers_lock = threading.Lock()

    app = FastAPI(
        title="cxrkit",
        version=__version__,
        description=f"Chest X-ray finding classifier ({meta.architecture}). {NOTICE}",
    )

    # innermost first: the body guard, then the key, then CORS (so that 401s carry CORS headers)
    app.add_middleware(BodyGuard, max_bytes=max_upload_bytes, timeout_s=body_timeout_s)
    if api_key:

        @app.middleware("http")
        async def require_key(request: Request, call_next):
            if request.url.path in ("/", "/health") or request.method == "OPTIONS":
                return await call_next(request)
            given = request.headers.get("x-api-key")
            auth = request.headers.get("authorization", "")
            if given is None and auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not key_matches(given, api_key):
                return JSONResponse(
                    {"detail": "this service needs an API key: send it in the X-API-Key header"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            return await call_next(request)

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
            expose_headers=["X-Finding", "X-Finding-Index", "X-Probability"],
        )

    async def read_image(file: UploadFile) -> tuple[np.ndarray, str]:
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"upload over the limit of {max_upload_bytes:,} bytes")
        kind = image_kind(data)
        if kind is None:
            raise HTTPException(
                415, "unsupported image type: send a PNG, JPEG or DICOM file (told by its content)"
            )
        try:
            # the upload's own name is not used: it may carry patient details
            image = await run_in_threadpool(
                lambda: decode_image(
                    data,
                    "upload.dcm" if kind == "dicom" else f"upload.{kind}",
                    max_pixels=max_pixels,
                )
            )
        except (ImageReadError, CxrkitError) as e:
            raise HTTPException(422, _scrub(str(e))) from None
        except Exception:  # a decoder's internal failure on hostile bytes is still bad input
            raise HTTPException(422, f"the {kind.upper()} image cannot be decoded") from None
        if image.ndim != 2 or min(image.shape) < 2:
            raise HTTPException(422, f"the {kind.upper()} image is empty or not 2-D")
        return image, kind

    def explainer(method: str):
        from cxrkit.use.explain import Explainer

        with explainers_lock:
            if method not in explainers:
                explainers[method] = Explainer(folder, method=method, device=device)
        return explainers[method]

    @app.get("/health", response_model=Health)
    def health() -> Health:
        return Health(status="ok", uptime_s=round(time.time() - started, 1))

    @app.get("/model", response_model=ModelInfo)
    def model_info() -> ModelInfo:
        return ModelInfo(
            labels=list(meta.labels),
            thresholds=dict(meta.thresholds),
            operating_point=meta.extra.get("operating_point"),
            architecture=meta.architecture,
            input_mode=meta.input_mode,
            image_size=list(meta.image_size),
            output=meta.output,
            temperature=float(meta.temperature),
            cxrkit_version=__version__,
            model_cxrkit_version=meta.cxrkit_version,
            runtime=runtime,
        )

    @app.post("/predict", response_model=Prediction, responses=_ERRORS)
    async def predict(
        file: Annotated[UploadFile, File(description="A PNG, JPEG or DICOM chest X-ray.")],
    ) -> Prediction:
        image, kind = await read_image(file)
        # off the event loop: /health and new uploads are served while the network runs
        probs = (await run_in_threadpool(predictor.predict_arrays, [image]))[0]
        thresholds = dict(meta.thresholds)
        return Prediction(
            probabilities={f: float(p) for f, p in zip(meta.labels, probs, strict=True)},
            decisions={
                f: (None if thresholds.get(f) is None else bool(p >= thresholds[f]))
                for f, p in zip(meta.labels, probs, strict=True)
            },
            thresholds=thresholds,
            image={"format": kind, "height": int(image.shape[0]), "width": int(image.shape[1])},
        )

    @app.post(
        "/explain",
        responses={200: {"content": {"image/png": {}}, "description": "The overlay."}, **_ERRORS},
        response_class=Response,
    )
    async def explain(
        file: Annotated[UploadFile, File(description="A PNG, JPEG or DICOM chest X-ray.")],
        finding: Annotated[
            str | None, Form(description="Finding to explain; default: the most probable.")
        ] = None,
        method: Annotated[str, Form(description="gradcam or gradcam++")] = "gradcam",
    ) -> Response:
        from cxrkit.use.explain import CAM_METHODS, overlay

        if method not in CAM_METHODS:
            raise HTTPException(
                422, f"method must be one of {', '.join(CAM_METHODS)}; got '{method}'"
            )
        image, _ = await read_image(file)
        ex = await run_in_threadpool(explainer, method)
        if finding is not None:
            try:
                ex.finding_index(finding)
            except CxrkitError as e:
                raise HTTPException(422, str(e)) from None
        result = await run_in_threadpool(ex.explain_array, image, finding)
        rgb = overlay(result.gray, result.heatmap_image)
        h, w = rgb.shape[:2]
        scale = MAX_OVERLAY_SIDE / max(h, w)
        if scale < 1:
            rgb = cv2.resize(
                rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
            )
        ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:  # pragma: no cover - OpenCV encodes any uint8 RGB image
            raise HTTPException(500, "could not encode the overlay")
        p = float(result.probabilities[result.index])
        return Response(
            png.tobytes(),
            media_type="image/png",
            # headers carry ASCII only: the name is percent-encoded UTF-8 (decodeURIComponent)
            headers={
                "X-Finding": quote(result.finding, safe=""),
                "X-Finding-Index": str(int(result.index)),
                "X-Probability": f"{p:.6f}",
            },
        )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_page())

    return app


def _scrub(message: str) -> str:
    """Error text without the server-side stand-in names of the upload."""
    for kind in ("dcm", "png", "jpeg"):
        message = message.replace(f"image 'upload.{kind}'", "the upload")
        message = message.replace(f"'upload.{kind}'", "the upload")
    return message


def _page() -> str:
    return resources.files("cxrkit.use.serve").joinpath("page.html").read_text(encoding="utf-8")
