"""Shared fixtures. Tests that read ../shared/data skip cleanly when it is absent."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from cxrkit import cli

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRKIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real label files and images beside the repository; skip when they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (a user's clone has none)")
    return SHARED_DATA


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the console script in-process; return (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.argv", ["cxrkit", *map(str, args)])
        code = 0
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    """A user's mistake: non-zero exit, one line on stderr, no traceback, naming what matters."""
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment.lower() in err.lower(), (fragment, err)


CHROMIUM = Path(os.environ.get("CXRKIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright. Skipped where Chromium is absent (a user's
    laptop) unless CXRKIT_REQUIRE_CHROMIUM is set, as .ci/run does: there it must run."""
    if not CHROMIUM.is_file():
        if os.environ.get("CXRKIT_REQUIRE_CHROMIUM"):
            pytest.fail(f"Chromium not found at {CHROMIUM} but CXRKIT_REQUIRE_CHROMIUM is set")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


#: Where browser tests keep their screenshots (test artifacts; ignored by git).
ARTIFACTS = REPO / "tests" / "artifacts"


def tiny_artifact(
    folder: Path,
    labels,
    *,
    arch: str = "test_resnet",
    input_mode: str = "gray1",
    size: int = 48,
    seed: int = 0,
    output: str = "sigmoid",
    thresholds: dict | None = None,
    fit: str = "pad",
    head_scale: float = 1.0,
    clip_limit: float = 2.0,
) -> Path:
    """A random-weight model artifact for tests (``head_scale`` spreads the probabilities)."""
    import torch

    from cxrkit.data.inputs import IMAGENET_MEAN, IMAGENET_STD
    from cxrkit.model.artifact import save_artifact
    from cxrkit.model.networks import create_model

    torch.manual_seed(seed)
    k = 3 if output == "multiclass" else 1
    model = create_model(arch, num_classes=k * len(labels), input_mode=input_mode)
    if head_scale != 1.0:
        with torch.no_grad():
            model.get_classifier().weight.mul_(head_scale)
    gray = input_mode == "gray1"
    return save_artifact(
        model.eval(),
        folder,
        arch=arch,
        findings=tuple(labels),
        input_mode=input_mode,
        image_size=size,
        mean=(sum(IMAGENET_MEAN) / 3,) if gray else IMAGENET_MEAN,
        std=(sum(IMAGENET_STD) / 3,) if gray else IMAGENET_STD,
        thresholds=thresholds,
        output=output,
        fit=fit,
        clip_limit=clip_limit,
    )


def write_dicom(path, stored, photometric: str = "MONOCHROME2", **tags):
    """A small DICOM file (or bytes, when ``path`` is None) with patient fields set, for tests."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-ID-123"
    ds.PatientBirthDate = "19700101"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = 8 if stored.dtype == np.uint8 else 16
    ds.BitsAllocated = bits
    ds.BitsStored = tags.pop("BitsStored", bits)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    target = io.BytesIO() if path is None else path
    try:
        ds.save_as(target, enforce_file_format=True)  # pydicom >= 3
    except TypeError:  # pydicom 2.4
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(target, write_like_original=False)
    return target.getvalue() if path is None else path


@contextlib.contextmanager
def live_server(app, **config):
    """A real uvicorn server for ``app`` on a free loopback port, in a thread; yields the port."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, **{"log_level": "error", **config})
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        assert server.started
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
