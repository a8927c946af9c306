"""Hostile images: decompression bombs, truncated files, lying headers, patient data in header fields.

Every case must end in one ImageReadError line (never another exception, never a decoded image),
before a buffer of the declared size is allocated."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_dicom
from cxrkit.core.errors import CxrkitError
from cxrkit.data.image_gate import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageReadError,
    check_image,
    max_pixels,
)
from cxrkit.data.imaging import decode_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros: tiny on disk, width × height bytes once decoded."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A 64 × 64 JPEG whose frame header is rewritten to claim another size, then cut short."""
    ok, buf = cv2.imencode(".jpg", np.full((64, 64), 128, np.uint8))
    data = bytearray(buf.tobytes())
    i = data.index(b"\xff\xc0")
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data[: len(data) // 2])


def test_png_bomb_is_refused_before_decoding() -> None:
    bomb = png_bomb(9000, 9000)  # 81 MP > 64 MP, about 80 KB on disk
    assert len(bomb) < 200_000
    with pytest.raises(ImageReadError, match=r"9000×9000 pixels, over the limit of 64,000,000"):
        decode_image(bomb, "bomb.png")


def test_the_limit_is_settable_and_a_small_image_passes(tmp_path: Path, monkeypatch) -> None:
    small = png_bomb(300, 200)
    assert decode_image(small, "ok.png").shape == (200, 300)
    with pytest.raises(ImageReadError, match="over the limit of 50,000 pixels"):
        decode_image(small, "small.png", max_pixels=50_000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "50000")
    with pytest.raises(ImageReadError, match=MAX_PIXELS_ENV):
        decode_image(small, "small.png")
    # at the limit exactly: accepted; one pixel over: refused
    assert decode_image(small, "small.png", max_pixels=60_000).shape == (200, 300)
    with pytest.raises(ImageReadError):
        decode_image(small, "small.png", max_pixels=59_999)


@pytest.mark.parametrize("bad", ["0", "-5", "lots", "1e9", " "])
def test_a_bad_limit_is_one_line(bad: str, monkeypatch) -> None:
    if bad.strip() == "":
        monkeypatch.setenv(MAX_PIXELS_ENV, bad)
        assert max_pixels() == DEFAULT_MAX_PIXELS
        return
    with pytest.raises(CxrkitError, match="positive whole number"):
        max_pixels(bad)
    monkeypatch.setenv(MAX_PIXELS_ENV, bad)
    with pytest.raises(CxrkitError, match=MAX_PIXELS_ENV):
        max_pixels()


def test_lying_truncated_jpeg_is_refused() -> None:
    # the 422-byte case of issue 11: header claims 30000 × 30000 and the data ends early
    with pytest.raises(ImageReadError, match="30000×30000"):
        decode_image(jpeg_claiming(30000, 30000), "liar.jpg")


def test_truncated_jpeg_never_gets_a_picture() -> None:
    ok, buf = cv2.imencode(
        ".jpg", (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    )
    data = buf.tobytes()
    assert decode_image(data, "whole.jpg").shape == (64, 64)
    with pytest.raises(ImageReadError, match="ends early"):
        decode_image(data[:-200], "cut.jpg")


def test_truncated_png_is_refused() -> None:
    data = png_bomb(100, 80)
    with pytest.raises(ImageReadError, match="(IEND|truncated)"):
        decode_image(data[:-20], "cut.png")


def test_dicom_declaring_too_many_pixels() -> None:
    data = write_dicom(None, np.zeros((4, 4), np.uint16), Rows=30000, Columns=30000)
    with pytest.raises(ImageReadError, match="30000×30000"):
        decode_image(data, "bomb.dcm")


def test_dicom_many_frames_over_the_byte_budget() -> None:
    data = write_dicom(
        None, np.zeros((4, 4), np.uint16), Rows=4000, Columns=4000, NumberOfFrames="300"
    )
    with pytest.raises(ImageReadError, match="300 frames"):
        decode_image(data, "frames.dcm")


def test_dicom_header_values_never_reach_the_message() -> None:
    # pydicom refuses to write a non-numeric IS value: write a placeholder of the same length
    data = write_dicom(None, np.zeros((8, 8), np.uint16), NumberOfFrames="77777777")
    data = data.replace(b"77777777", b"DOE^JOHN")
    with pytest.raises(ImageReadError) as info:
        decode_image(data, "frames.dcm")
    text = str(info.value)
    assert "NumberOfFrames" in text and "DOE" not in text and "JOHN" not in text
    assert "\n" not in text


def test_deflated_dicom_bomb_is_refused_bounded() -> None:
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    plain = write_dicom(None, np.zeros((8, 8), np.uint16))
    ds = pydicom.dcmread(__import__("io").BytesIO(plain))
    # a private element of 600 MB of zeros: deflates to about 600 KB
    ds.add_new(0x00091010, "OB", b"\x00" * (600 << 20))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = __import__("io").BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    assert len(data) < 5 << 20
    with pytest.raises(ImageReadError, match="inflates to more than"):
        check_image(data, "deflated.dcm", limit=1_000_000)


def test_other_formats_are_refused() -> None:
    ok, bmp = cv2.imencode(".bmp", np.zeros((8, 8), np.uint8))
    with pytest.raises(ImageReadError, match="not a PNG, JPEG or DICOM"):
        decode_image(bmp.tobytes(), "x.bmp")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\x00" * 128 + b"DICM", b""]),
    body=st.binary(max_size=600),
    name=st.sampled_from(["x.png", "x.jpg", "x.dcm", "x"]),
)
def test_random_bytes_get_an_image_or_one_error(prefix: bytes, body: bytes, name: str) -> None:
    try:
        img = decode_image(prefix + body, name)
    except ImageReadError as e:
        assert "\n" not in str(e)
        return
    assert img.ndim == 2 and img.size > 0


def test_peak_memory_stays_bounded_on_a_bomb(tmp_path: Path) -> None:
    # 30000 × 30000 declared (900 MB of pixels once decoded) in a file under 1 MB
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(30000, 30000))
    assert bomb.stat().st_size < 1_000_000
    code = textwrap.dedent(
        f"""
        import resource
        from cxrkit.data.imaging import read_image, ImageReadError
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            read_image({str(bomb)!r})
        except ImageReadError as e:
            print("refused", e)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("grew_kb", after - before)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("refused"), out.stdout + out.stderr
    grew_kb = int(lines[-1].split()[1])
    assert grew_kb < 50_000, f"reading the bomb grew the process by {grew_kb / 1024:.0f} MB"
