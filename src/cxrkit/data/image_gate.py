"""The image-safety gate: every decoder asks it before a pixel buffer is allocated.

A 1 KB file can declare 30000 × 30000 pixels, and an 875 KB PNG of one colour inflates to gigabytes. So
before decoding, :func:`check_image` reads the size the file declares — PNG's ``IHDR``, JPEG's frame
header (``SOF``), DICOM's Rows × Columns (× frames × samples × bits) — and refuses it above a pixel
limit. Data that ends early is refused too (a JPEG with no end-of-image marker after its scan, a PNG
with no ``IEND``): a truncated file must never get a confident prediction from the grey fill a
decoder invents for the missing part.

The limit: :data:`DEFAULT_MAX_PIXELS` (64 MP, about 8000 × 8000: the largest chest films are
4,300 × 4,300), or the environment variable :data:`MAX_PIXELS_ENV`, or the value a caller passes
(``--max-pixels``, ``cxrkit serve --max-pixels``).

Only PNG, JPEG and DICOM are decoded (told by their magic bytes, or a DICOM file suffix); other kinds
OpenCV could read (BMP, TIFF, WebP...) are refused, since their headers are not checked here.
Error texts name header fields, never their values: a DICOM header holds patient data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cxrkit.core.errors import CxrkitError

#: Largest number of pixels (width × height of one frame) decoded by default.
DEFAULT_MAX_PIXELS = 64_000_000
#: Environment variable that sets the limit for every command and the service.
MAX_PIXELS_ENV = "CXRKIT_MAX_PIXELS"
#: A decoded image may take at most this many bytes per allowed pixel (all frames, samples and
#: bytes per sample together): 8 → 512 MB at the default limit.
_BYTES_PER_PIXEL_BUDGET = 8
_DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"
# JPEG start-of-frame markers (C4 = DHT, C8 = JPG, CC = DAC are not frame headers)
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")


class ImageReadError(CxrkitError):
    """An image file that cannot be decoded (missing, truncated, too large, or of an unsupported kind)."""


@dataclass(frozen=True)
class Declared:
    """What an image file says about itself before it is decoded."""

    kind: str  # png | jpeg | dicom
    width: int
    height: int
    frames: int = 1
    samples: int = 1
    bits: int = 8
    #: what is wrong with the data besides its size (truncation), reported after the size check
    defect: str | None = None

    @property
    def pixels(self) -> int:
        """Pixels of one frame (what is decoded)."""
        return self.width * self.height

    @property
    def nbytes(self) -> int:
        """Bytes of the whole decoded pixel data, all frames and samples."""
        return self.pixels * self.frames * self.samples * max(1, (self.bits + 7) // 8)


def max_pixels(value: int | str | None = None) -> int:
    """The pixel limit in force: ``value`` if given, else ``$CXRKIT_MAX_PIXELS``, else 64 MP.

    Raises:
        CxrkitError: the value is not a positive whole number.
    """
    source = "--max-pixels"
    if value is None:
        value = os.environ.get(MAX_PIXELS_ENV)
        source = MAX_PIXELS_ENV
        if value is None or str(value).strip() == "":
            return DEFAULT_MAX_PIXELS
    try:
        limit = int(str(value).strip().replace("_", ""))
    except ValueError:
        limit = 0
    if limit < 1:
        raise CxrkitError(
            f"{source} must be a positive whole number of pixels (e.g. {DEFAULT_MAX_PIXELS}); "
            f"got '{str(value)[:40]}'."
        )
    return limit


def image_kind(data: bytes | np.ndarray) -> str | None:
    """``png``, ``jpeg`` or ``dicom`` from the first bytes (magic numbers), else None."""
    head = bytes(np.asarray(data, np.uint8)[:132]) if isinstance(data, np.ndarray) else data[:132]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def _bad(path: str, what: str) -> ImageReadError:
    return ImageReadError(f"cannot decode image '{path}': {what}.")


# ---- PNG -----------------------------------------------------------------------------------------


def _png(buf: bytes, path: str) -> Declared:
    if len(buf) < 33 or buf[12:16] != b"IHDR":
        raise _bad(path, "PNG without a complete IHDR header (truncated or corrupt?)")
    width, height, bits, colour = struct.unpack(">IIBB", buf[16:26])
    if colour not in _PNG_SAMPLES or bits not in (1, 2, 4, 8, 16):
        raise _bad(path, "PNG header with an invalid colour type or bit depth (corrupt?)")
    defect = (
        None if b"IEND" in buf[-4096:] else "PNG data ends early: no IEND chunk (truncated file?)"
    )
    return Declared("png", width, height, samples=_PNG_SAMPLES[colour], bits=bits, defect=defect)


# ---- JPEG ----------------------------------------------------------------------------------------


def _jpeg(buf: bytes, path: str) -> Declared:
    n, i = len(buf), 2
    frame: Declared | None = None
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise _bad(path, "JPEG marker structure is broken (corrupt file?)")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", buf[i + 2 : i + 4])
        if length < 2:
            raise _bad(path, "JPEG segment with an invalid length (corrupt file?)")
        if marker in _SOF_MARKERS and i + 10 <= n:
            bits, height, width, comps = struct.unpack(">BHHB", buf[i + 4 : i + 10])
            if height == 0:
                raise _bad(
                    path, "JPEG whose height is defined after the scan (DNL) is not supported"
                )
            frame = Declared("jpeg", width, height, samples=max(1, comps), bits=bits)
        if marker == 0xDA:  # start of scan: entropy-coded data follows
            if frame is None:
                raise _bad(path, "JPEG scan before any frame header (corrupt file?)")
            if b"\xff\xd9" in buf[i + 2 + length :]:
                return frame
            return dataclasses.replace(
                frame, defect="JPEG data ends early: no end-of-image marker (truncated file?)"
            )
        i += 2 + length
    if frame is None:
        raise _bad(path, "JPEG data ends before its frame header (truncated or corrupt file?)")
    return dataclasses.replace(
        frame, defect="JPEG data ends before its first scan (truncated file?)"
    )


# ---- DICOM ---------------------------------------------------------------------------------------

_PYDICOM_QUIET = threading.RLock()


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings while reading: they can quote header values (names, dates).

    The warning filters and the logger switch are process-wide, so DICOM reads are serialised by a
    lock (threads of the web service or of ``predict`` decode DICOM concurrently)."""
    logger = logging.getLogger("pydicom")
    with _PYDICOM_QUIET, warnings.catch_warnings():
        disabled = logger.disabled
        warnings.simplefilter("ignore")
        logger.disabled = True
        try:
            yield
        finally:
            logger.disabled = disabled


def _dicom_transfer_syntax(buf: bytes) -> str | None:
    """(0002,0010) from the file meta group (explicit VR little endian after ``DICM``), or None."""
    i, n = 132, len(buf)
    while i + 8 <= n:
        group, element = struct.unpack("<HH", buf[i : i + 4])
        if group != 0x0002:
            return None
        vr = buf[i + 4 : i + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            if i + 12 > n:
                return None
            (length,) = struct.unpack("<I", buf[i + 8 : i + 12])
            start = i + 12
        else:
            (length,) = struct.unpack("<H", buf[i + 6 : i + 8])
            start = i + 8
        if element == 0x0010:
            return buf[start : start + length].decode("ascii", "replace").strip("\x00 ")
        i = start + length
    return None


def _check_inflated_size(buf: bytes, path: str, budget: int) -> None:
    """A deflated DICOM data set is inflated whole by pydicom: inflate it here first, bounded."""
    # the deflated stream starts after the file meta group; find its end by walking the group
    i, n = 132, len(buf)
    while i + 8 <= n and struct.unpack("<H", buf[i : i + 2])[0] == 0x0002:
        vr = buf[i + 4 : i + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            i += 12 + struct.unpack("<I", buf[i + 8 : i + 12])[0]
        else:
            i += 8 + struct.unpack("<H", buf[i + 6 : i + 8])[0]
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, pos, chunk = 0, i, 1 << 16
    try:
        while pos < n or inflater.unconsumed_tail:
            data = inflater.unconsumed_tail or buf[pos : pos + chunk]
            if not inflater.unconsumed_tail:
                pos += chunk
            total += len(inflater.decompress(data, 1 << 20))
            if total > budget:
                raise _bad(
                    path,
                    f"deflated DICOM data set inflates to more than {budget / 1e6:.0f} MB "
                    f"(raise --max-pixels or {MAX_PIXELS_ENV} if the image is real)",
                )
            if inflater.eof:
                break
    except zlib.error:
        raise _bad(path, "deflated DICOM data set is corrupt") from None


def _int_field(ds: Any, name: str, default: int | None, path: str) -> int:
    try:
        raw = ds.get(name)
        if raw is None or str(raw).strip() == "":
            if default is None:
                raise _bad(path, f"DICOM header lacks {name}")
            return default
        value = int(str(raw).strip())
    except ImageReadError:
        raise
    except Exception:
        # the value itself is never quoted: header fields can hold patient data
        raise _bad(path, f"DICOM header field {name} is not a whole number") from None
    if value < 0:
        raise _bad(path, f"DICOM header field {name} is negative")
    return value


def _dicom(buf: bytes, path: str, limit: int) -> Declared:
    import pydicom

    if _dicom_transfer_syntax(buf) == _DEFLATED_SYNTAX:
        _check_inflated_size(buf, path, limit * _BYTES_PER_PIXEL_BUDGET + (16 << 20))
    with quiet_pydicom():
        try:
            ds = pydicom.dcmread(io.BytesIO(buf), force=True, stop_before_pixels=True)
        except Exception as e:  # pydicom raises many types for a broken file
            raise _bad(path, f"not a readable DICOM file ({type(e).__name__})") from None
        return Declared(
            "dicom",
            width=_int_field(ds, "Columns", None, path),
            height=_int_field(ds, "Rows", None, path),
            frames=max(1, _int_field(ds, "NumberOfFrames", 1, path)),
            samples=max(1, _int_field(ds, "SamplesPerPixel", 1, path)),
            bits=_int_field(ds, "BitsAllocated", 16, path),
        )


# ---- the gate ------------------------------------------------------------------------------------


def check_image(
    data: bytes | np.ndarray, name: str = "<bytes>", limit: int | None = None
) -> Declared:
    """Read the size an image declares and refuse it if it is too large, truncated or unsupported.

    Args:
        data: the file's bytes.
        name: what to call it in error messages (a DICOM suffix also marks DICOM).
        limit: the pixel limit (default :func:`max_pixels`).

    Returns:
        What the file declares; the decoder checks the decoded shape against it.

    Raises:
        ImageReadError: one line naming the file and what is wrong.
    """
    limit = max_pixels(limit)
    buf = bytes(np.asarray(data, np.uint8)) if isinstance(data, np.ndarray) else bytes(data)
    if not buf:
        raise ImageReadError(f"cannot read image '{name}': the file is empty.")
    kind = image_kind(buf)
    if kind is None and name.lower().endswith(_DICOM_SUFFIXES):
        kind = "dicom"
    if kind == "png":
        declared = _png(buf, name)
    elif kind == "jpeg":
        declared = _jpeg(buf, name)
    elif kind == "dicom":
        declared = _dicom(buf, name, limit)
    else:
        raise _bad(name, "not a PNG, JPEG or DICOM file (other formats are not read)")
    if declared.width < 1 or declared.height < 1:
        raise _bad(name, f"its header declares {declared.width}×{declared.height} pixels")
    if declared.pixels > limit or declared.nbytes > limit * _BYTES_PER_PIXEL_BUDGET:
        raise _bad(
            name,
            f"it declares {declared.width}×{declared.height} pixels"
            + (f" × {declared.frames} frames" if declared.frames > 1 else "")
            + f", over the limit of {limit:,} pixels (raise it with --max-pixels or "
            f"{MAX_PIXELS_ENV} if the image is real)",
        )
    if declared.defect:
        raise _bad(name, declared.defect)
    return declared


def check_decoded(img: np.ndarray, declared: Declared, name: str) -> None:
    """The decoded (H, W[, C]) array must have the declared height and width."""
    if tuple(img.shape[:2]) != (declared.height, declared.width):
        raise _bad(
            name,
            f"decoded {img.shape[1]}×{img.shape[0]} pixels but its header declares "
            f"{declared.width}×{declared.height} (corrupt file?)",
        )
