"""The service under hostile clients: streamed and chunked bodies past the limit, slow bodies, half-sent
headers, API keys, CORS, and label names made to break out of headers and the page."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import live_server, tiny_artifact
from cxrkit.use.serve import create_app
from cxrkit.use.serve.guard import FRAMING_BYTES, HeaderTimeoutProtocol

LABELS = ("Atelectasis", "Cardiomegaly")
LIMIT = 100_000


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("hostile") / "model", LABELS, size=48)


def _png(h: int = 80, w: int = 70, seed: int = 0) -> bytes:
    img = (np.random.default_rng(seed).random((h, w)) * 255).astype(np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def _multipart(payload: bytes, boundary: str = "XyZ") -> tuple[bytes, str]:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return (
        head + payload + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def test_upload_at_the_limit_is_read_and_one_byte_more_is_413(artifact):
    client = TestClient(create_app(artifact, max_upload_bytes=LIMIT))
    png = _png()
    at = png + b"\x00" * (LIMIT - len(png))  # a PNG padded to exactly the limit
    r = client.post("/predict", files={"file": ("x.png", at, "image/png")})
    assert r.status_code != 413, r.text
    r = client.post("/predict", files={"file": ("x.png", at + b"\x00", "image/png")})
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_declared_length_over_the_limit_is_refused_before_reading(artifact):
    client = TestClient(create_app(artifact, max_upload_bytes=LIMIT))
    body, ctype = _multipart(b"\x00" * 10)
    over = LIMIT + FRAMING_BYTES + 1
    r = client.post(
        "/predict", content=body, headers={"content-type": ctype, "content-length": str(over)}
    )
    assert r.status_code == 413


@pytest.fixture(scope="module")
def live(artifact):
    """A real uvicorn server (TestClient reads a streamed body whole before the app sees it)."""
    with live_server(create_app(artifact, max_upload_bytes=LIMIT, body_timeout_s=1.0)) as port:
        yield port


def _send_chunked(
    port: int, body: bytes, ctype: str, chunk: int, pause: float
) -> tuple[bytes, int]:
    """POST /predict with Transfer-Encoding: chunked; stop when the server answers.
    Returns (the answer's first bytes, how many body bytes were sent)."""
    import select

    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(
        b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        + f"Content-Type: {ctype}\r\n\r\n".encode()
    )
    sent = 0
    try:
        for i in range(0, len(body), chunk):
            if select.select([conn], [], [], 0)[0]:
                break
            part = body[i : i + chunk]
            conn.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            sent += len(part)
            time.sleep(pause)
        else:
            conn.sendall(b"0\r\n\r\n")
    except OSError:  # the server closed the connection while we were still sending
        pass
    answer = conn.recv(4096)
    conn.close()
    return answer, sent


def test_chunked_upload_without_length_is_stopped_while_streaming(live):
    body, ctype = _multipart(b"\x00" * (50 * LIMIT))
    answer, sent = _send_chunked(live, body, ctype, 8192, 0.001)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # the server answered soon after the limit, long before the 5 MB end
    assert sent < 3 * (LIMIT + FRAMING_BYTES)


def test_a_slow_body_gets_408(live):
    body, ctype = _multipart(_png())
    answer, sent = _send_chunked(live, body, ctype, 64, 0.05)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive" in answer and sent < len(body)


def test_api_key(artifact):
    client = TestClient(create_app(artifact, api_key="s3cret-key"))
    files = {"file": ("x.png", _png(), "image/png")}
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 200
    assert client.get("/model").status_code == 401
    assert client.post("/predict", files=files).status_code == 401
    assert (
        client.post("/predict", files=files, headers={"X-API-Key": "s3cret-kez"}).status_code == 401
    )
    assert (
        client.post("/predict", files=files, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    )
    ok = client.get("/model", headers={"Authorization": "Bearer s3cret-key"})
    assert ok.status_code == 200 and ok.json()["labels"] == list(LABELS)
    # without a key configured, nothing is asked
    assert TestClient(create_app(artifact)).get("/model").status_code == 200


def test_cors(artifact):
    client = TestClient(create_app(artifact, cors_origins=["https://viewer.example"]))
    pre = {"Origin": "https://viewer.example", "Access-Control-Request-Method": "POST"}
    r = client.options("/predict", headers=pre)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://viewer.example"
    r = client.options("/predict", headers={**pre, "Origin": "https://evil.example"})
    assert r.status_code == 400
    # no CORS configured: browsers get no allow-origin header
    r = TestClient(create_app(artifact)).get(
        "/health", headers={"Origin": "https://viewer.example"}
    )
    assert "access-control-allow-origin" not in r.headers


HOSTILE = ("<img src=x onerror=\"document.title='pwned'\">", "Ödem 肺水肿")


@pytest.fixture(scope="module")
def hostile_artifact(tmp_path_factory) -> Path:
    return tiny_artifact(tmp_path_factory.mktemp("labels") / "model", HOSTILE, size=48)


def test_label_names_travel_as_ascii_headers(hostile_artifact):
    from urllib.parse import unquote

    client = TestClient(create_app(hostile_artifact))
    for i, name in enumerate(HOSTILE):
        r = client.post(
            "/explain", files={"file": ("x.png", _png(), "image/png")}, data={"finding": name}
        )
        assert r.status_code == 200, r.text
        assert r.headers["X-Finding"].isascii() and unquote(r.headers["X-Finding"]) == name
        assert r.headers["X-Finding-Index"] == str(i)


def test_half_sent_headers_are_closed_after_the_deadline(artifact):
    protocol = type("P", (HeaderTimeoutProtocol,), {"header_timeout": 0.5})
    with live_server(create_app(artifact), http=protocol) as port:
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        t0 = time.monotonic()
        assert slow.recv(100) == b""  # closed by the server
        assert time.monotonic() - t0 < 4
        # a complete request on a fresh connection is answered
        ok = socket.create_connection(("127.0.0.1", port), timeout=5)
        ok.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ok.recv(100).startswith(b"HTTP/1.1 200")
        slow.close()
        ok.close()


def test_hostile_label_names_stay_text_in_the_page(hostile_artifact, browser, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(_png(120, 100, 3))
    page = browser.new_page()
    try:
        with live_server(create_app(hostile_artifact)) as port:
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("#file", str(path))
            page.wait_for_selector("#heatmap", timeout=30_000)
            assert page.title() != "pwned"
            assert page.locator("#bars img, #heat h2 img").count() == 0  # nothing made from a name
            names = page.eval_on_selector_all(
                "#bars .finding", "els => els.map(e => e.textContent)"
            )
            assert sorted(names) == sorted(HOSTILE)
            page.locator("#bars .finding", has_text="Ödem").click()
            page.wait_for_function("document.getElementById('status').textContent.includes('Ödem')")
            assert page.title() != "pwned"
    finally:
        page.close()
