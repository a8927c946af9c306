"""The web service: FastAPI app over one model artifact, with a page to try it.

``create_app(ARTIFACT)`` → a FastAPI app; ``cxrkit serve ARTIFACT`` runs it with uvicorn.

Endpoints: ``POST /predict`` (multipart ``file``: PNG, JPEG or DICOM) → probabilities and decisions;
``POST /explain`` → PNG Grad-CAM overlay; ``GET /health``; ``GET /model``; ``GET /`` the page;
``/openapi.json`` and ``/docs``. Bad input never gives a 500: too large → 413, not PNG/JPEG/DICOM
(by content, not by the declared type) → 415, undecodable → 422, unknown finding → 422. DICOM header
fields (patient name, ID, dates, ...) are never read into a response or a log line: only the pixel
data is decoded.
"""

from cxrkit.use.serve.app import MAX_UPLOAD_BYTES, create_app

__all__ = ["MAX_UPLOAD_BYTES", "create_app"]
