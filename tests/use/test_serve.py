"""The web service: endpoints, limits, privacy, concurrency, the OpenAPI contract and the page."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

import conftest
from conftest import tiny_artifact, write_dicom
from cxrkit.use.serve import create_app

LABELS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
SECRET_NAME, SECRET_ID = "Doe^Jane", "SECRET-ID-123"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return tiny_artifact(
        tmp_path_factory.mktemp("serve") / "model",
        LABELS,
        size=64,
        thresholds={"Cardiomegaly": 0.5, "Edema": 0.2},
    )


@pytest.fixture(scope="module")
def client(artifact) -> TestClient:
    return TestClient(create_app(artifact, max_upload_bytes=200_000))


def _xray(seed: int = 0, h: int = 120, w: int = 100) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w), 40, np.uint8)
    cv2.ellipse(img, (w // 3, h // 2), (w // 6, h // 3), 0, 0, 360, 180, -1)
    cv2.ellipse(img, (2 * w // 3, h // 2), (w // 6, h // 3), 0, 0, 360, 170, -1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


def _png(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", img)[1].tobytes()


def _dicom(img: np.ndarray) -> bytes:
    return write_dicom(None, img)


def test_health_and_model(client):
    assert client.get("/health").json()["status"] == "ok"
    m = client.get("/model").json()
    assert m["labels"] == list(LABELS)
    assert m["thresholds"]["Cardiomegaly"] == 0.5 and m["thresholds"]["Atelectasis"] is None
    assert m["architecture"] == "test_resnet" and "not a medical device" in m["notice"]


def test_predict_png_matches_the_python_predictor(client, artifact):
    from cxrkit.use.predict import Predictor

    img = _xray(1)
    r = client.post("/predict", files={"file": ("x.png", _png(img), "image/png")})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = Predictor.from_artifact(artifact).predict_arrays([img])[0]
    got = np.array([body["probabilities"][f] for f in LABELS])
    assert np.allclose(got, expected, atol=1e-6)
    assert body["decisions"]["Cardiomegaly"] == bool(expected[1] >= 0.5)
    assert body["decisions"]["Atelectasis"] is None
    assert body["image"] == {"format": "png", "height": 120, "width": 100}


def test_jpeg_and_dicom_without_leaking_patient_fields(client, caplog):
    img = _xray(2)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    assert client.post("/predict", files={"file": ("a.jpg", jpg, "image/jpeg")}).status_code == 200
    with caplog.at_level(logging.DEBUG):
        r = client.post(
            "/predict", files={"file": (f"{SECRET_NAME}.dcm", _dicom(img), "application/dicom")}
        )
        e = client.post("/explain", files={"file": ("x.dcm", _dicom(img), "application/dicom")})
    assert r.status_code == 200 and r.json()["image"]["format"] == "dicom"
    assert e.status_code == 200
    for text in (r.text, str(e.headers), caplog.text):
        assert SECRET_NAME not in text and SECRET_ID not in text and "19700101" not in text


def test_explain_returns_a_png_overlay(client):
    img = _xray(3)
    r = client.post(
        "/explain", files={"file": ("x.png", _png(img), "image/png")}, data={"finding": "edema"}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["X-Finding"] == "Edema"
    overlay = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape[:2] == img.shape


@pytest.mark.parametrize(
    ("endpoint", "payload", "data", "status", "fragment"),
    [
        ("/predict", b"\x00" * 300_000, None, 413, "limit"),
        ("/predict", b"GIF89a" + b"\x00" * 100, None, 415, "PNG, JPEG or DICOM"),
        ("/predict", b"%PDF-1.4 not an image", None, 415, "PNG, JPEG or DICOM"),
        ("/predict", b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, None, 422, "decode"),
        ("/predict", b"\xff\xd8\xff\xe0 truncated", None, 422, "decode"),
        ("/predict", b"\x00" * 128 + b"DICM" + b"\x00" * 40, None, 422, ""),
        ("/explain", "PNG", {"finding": "Cardiomegally"}, 422, "Cardiomegaly"),
        ("/explain", "PNG", {"method": "lime"}, 422, "gradcam"),
    ],
)
def test_bad_input_is_a_4xx_never_a_500(client, endpoint, payload, data, status, fragment):
    if payload == "PNG":
        payload = _png(_xray(4))
    r = client.post(
        endpoint, files={"file": ("x.bin", payload, "application/octet-stream")}, data=data
    )
    assert r.status_code == status, r.text
    assert fragment.lower() in r.json()["detail"].lower()


def test_missing_file_is_422(client):
    assert client.post("/predict").status_code == 422


def test_concurrent_requests_give_the_sequential_answers(client):
    images = [_png(_xray(10 + i)) for i in range(8)]

    def predict(data: bytes) -> dict:
        r = client.post("/predict", files={"file": ("x.png", data, "image/png")})
        assert r.status_code == 200
        return r.json()["probabilities"]

    def explain(data: bytes) -> bytes:
        r = client.post("/explain", files={"file": ("x.png", data, "image/png")})
        assert r.status_code == 200
        return r.content

    sequential = [predict(d) for d in images]
    maps = [explain(d) for d in images[:4]]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(predict, d) for d in images] + [
            pool.submit(explain, d) for d in images[:4]
        ]
        results = [f.result() for f in futures]
    for got, want in zip(results[:8], sequential, strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    assert results[8:] == maps


def test_openapi_contract_has_no_server_errors(artifact):
    """schemathesis generates requests from the OpenAPI spec; none may end in a 500."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import checks

    app = create_app(artifact, max_upload_bytes=50_000)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    ran = 0
    for op in schema.get_all_operations():
        operation = op.ok()
        strategy = operation.as_strategy()

        @given(case=strategy)
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case):
            response = case.call()
            assert response.status_code < 500, (case.path, response.status_code, response.text)
            # not positive_data_acceptance: random bytes are rightly refused with 415/422
            case.validate_response(
                response,
                checks=[
                    checks.not_a_server_error,
                    checks.status_code_conformance,
                    checks.response_schema_conformance,
                    checks.content_type_conformance,
                ],
            )

        check()
        ran += 1
    assert ran >= 4  # /health, /model, /predict, /explain


@pytest.fixture(scope="module")
def live_server(artifact):
    with conftest.live_server(create_app(artifact), log_level="warning") as port:
        yield f"http://127.0.0.1:{port}"


def test_page_in_headless_chromium(live_server, browser, tmp_path):
    """Upload an X-ray through the page: the bars and the heatmap appear; screenshot kept."""
    from conftest import ARTIFACTS

    path = tmp_path / "xray.png"
    cv2.imwrite(str(path), _xray(7, 300, 260))
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(live_server + "/")
        assert "not a medical device" in page.locator("#notice").inner_text()
        page.wait_for_selector("#model:has-text('test_resnet')")
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#heatmap", timeout=30_000)
        page.wait_for_function("document.getElementById('heatmap').naturalWidth > 0")
        bars = page.locator("#bars .bar")
        assert bars.count() == len(LABELS)
        widths = page.eval_on_selector_all(".fill", "els => els.map(e => e.style.width)")
        assert all(w.endswith("%") for w in widths) and len(widths) == len(LABELS)
        # a wrong file type shows the service's message, not a crash
        bad = tmp_path / "notes.txt"
        bad.write_text("not an image")
        page.set_input_files("#file", str(bad))
        page.wait_for_selector("#status.error")
        assert "415" in page.locator("#status").inner_text()
        page.set_input_files("#file", str(path))
        page.wait_for_selector("#heatmap")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
    finally:
        page.close()
    shot = cv2.imread(str(ARTIFACTS / "serve-page.png"))
    assert shot is not None and shot.std() > 5


def test_auto_runtime_serves_the_onnx_export(artifact, tmp_path):
    import shutil

    from cxrkit.model.onnx import export_onnx
    from cxrkit.use.predict import Predictor

    art = tmp_path / "model"
    shutil.copytree(artifact, art)
    export_onnx(art)
    c = TestClient(create_app(art))
    assert c.get("/model").json()["runtime"] == "onnx"
    img = _xray(9)
    body = c.post("/predict", files={"file": ("x.png", _png(img), "image/png")}).json()
    expected = Predictor.from_artifact(art).predict_arrays([img])[0]
    assert np.allclose([body["probabilities"][f] for f in LABELS], expected, atol=1e-4)
    assert TestClient(create_app(art, runtime="torch")).get("/model").json()["runtime"] == "torch"
    r = c.post("/explain", files={"file": ("x.png", _png(img), "image/png")})
    assert r.status_code == 200  # heatmaps come from the torch network either way
