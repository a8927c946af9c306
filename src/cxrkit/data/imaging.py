"""Image decoding: PNG (8 and 16 bit), JPEG and DICOM to one grayscale array, bright = dense.

Three steps, each a plain function, so that the cache and any other caller decode alike:

0. :func:`cxrkit.data.image_gate.check_image` reads the size the file declares and refuses a file
   that is too large (decompression bombs), truncated, or not PNG/JPEG/DICOM, before any pixel
   buffer is allocated; the decoded shape is checked against the declared one.
1. :func:`read_image` decodes a file to a 2-D array at its own resolution: ``uint8`` when the file
   already holds display values (8-bit PNG/JPEG, 8-bit DICOM, or any DICOM after its VOI LUT or
   window), ``uint16`` for 16-bit PNG and unwindowed >8-bit DICOM, ``float32`` for DICOM values
   after a rescale (e.g. Hounsfield-like units) with no VOI.
2. :func:`to_uint8` maps that to ``uint8``: ``uint8`` passes through untouched; anything else is
   clipped to its 0.5th-99.5th percentiles and stretched to 0-255 (min-max when those coincide).
3. :func:`resize_square` makes it ``size × size`` with antialiasing: ``pad`` (letterbox, black bars),
   ``crop`` (centre crop of the long side) or ``stretch``.

:func:`load_for_cache` chains the three. DICOM reading never returns nor logs a patient field: only
pixels leave this module, and error lines name the file and the transfer syntax, nothing else.
See ``docs/cache.md`` for the rules and the reasons.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from typing import Any, NamedTuple

import cv2
import numpy as np

from cxrkit.core.errors import CxrkitError, did_you_mean
from cxrkit.data.image_gate import (
    Declared,
    ImageReadError,
    check_decoded,
    check_image,
    quiet_pydicom,
)

log = logging.getLogger(__name__)

#: How a non-square image is made square.
FIT_MODES: tuple[str, ...] = ("pad", "crop", "stretch")
#: Percentiles that bound the intensity window of images that are not already 8-bit.
ROBUST_PERCENTILES: tuple[float, float] = (0.5, 99.5)
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom", ".dic")

# ANYDEPTH keeps 16 bits; ANYCOLOR keeps gray as gray and drops alpha. Unlike IMREAD_UNCHANGED it
# honours EXIF orientation, as every viewer does.
_CV2_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
# Compressed transfer syntaxes OpenCV decodes when no pydicom plugin is installed: JPEG baseline
# and extended (libjpeg-turbo), JPEG 2000 (OpenJPEG).
_CV2_DICOM_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
}
_PLUGIN_HINT = "install a pydicom decoder plugin, e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg`"


# ---- reading -------------------------------------------------------------------------------------


def read_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> np.ndarray:
    """Decode a PNG, JPEG or DICOM file to a 2-D grayscale array, bright = dense.

    The kind is told by the DICOM magic (``DICM`` at byte 128) or a DICOM suffix; anything else
    goes to OpenCV (PNG, JPEG, and whatever else it reads). Colour is converted to gray, alpha
    dropped. DICOM: rescale slope/intercept (or modality LUT), then the VOI LUT or the first window,
    MONOCHROME1 inverted, pixel padding set to black, first frame of a multi-frame file.

    Args:
        path: the image file.
        max_pixels: refuse images that declare more pixels (default: ``$CXRKIT_MAX_PIXELS`` or
            64 MP; see :mod:`cxrkit.data.image_gate`), before any pixel buffer is allocated.

    Returns:
        ``(H, W)`` array: ``uint8`` (display values), ``uint16`` (16-bit PNG, unwindowed DICOM) or
        ``float32`` (rescaled DICOM with no window).

    Raises:
        ImageReadError: the file is missing, too large, truncated or cannot be decoded.
    """
    path = os.fspath(path)
    try:
        buf = np.fromfile(path, np.uint8)
    except OSError as e:
        raise ImageReadError(f"cannot read image '{path}': {e.strerror or e}.") from None
    return decode_image(buf, path, max_pixels=max_pixels)


def _imdecode(buf: np.ndarray, flags: int) -> np.ndarray | None:
    """``cv2.imdecode`` without OpenCV's own log lines about broken files: a failure is reported
    once, by our error, and OpenCV's level is put back afterwards (not silenced for the process)."""
    log = cv2.utils.logging
    previous = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(buf, flags)
    finally:
        log.setLogLevel(previous)


def decode_image(
    data: bytes | np.ndarray, name: str = "<bytes>", *, max_pixels: int | None = None
) -> np.ndarray:
    """Decode an image held in memory (an upload, say) as :func:`read_image` decodes a file.

    Args:
        data: the file's bytes.
        name: what to call it in error messages (a DICOM suffix here also marks DICOM).
        max_pixels: the pixel limit, as :func:`read_image`.

    Returns:
        ``(H, W)`` grayscale array, as :func:`read_image`.

    Raises:
        ImageReadError: the bytes are empty, too large, truncated or cannot be decoded.
    """
    path = name
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray)) else data
    declared = check_image(buf, path, max_pixels)  # before any pixel buffer is allocated
    if declared.kind == "dicom":
        return _read_dicom(buf, path, declared)
    img = _imdecode(buf, _CV2_FLAGS)
    if img is None:
        raise ImageReadError(
            f"cannot decode image '{path}': not a readable PNG, JPEG or DICOM file (truncated or corrupt?)."
        )
    if declared.kind == "jpeg" and img.shape[:2] == (declared.width, declared.height):
        declared = dataclasses.replace(declared, width=declared.height, height=declared.width)
    check_decoded(img, declared, path)  # (EXIF orientation may have turned a JPEG: allowed above)
    return _to_gray(img, path)


def _to_gray(img: np.ndarray, path: str) -> np.ndarray:
    """OpenCV's BGR / BGRA / gray to a 2-D gray array of the same dtype."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] in (3, 4):
        code = cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        img = cv2.cvtColor(img, code)
    if img.ndim != 2:
        raise ImageReadError(f"cannot decode image '{path}': unexpected shape {img.shape}.")
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        img = img.astype(np.float32)
    return img


# ---- DICOM ---------------------------------------------------------------------------------------


def _pydicom_api() -> dict[str, Any]:
    """The pixel functions under their pydicom 3 names, falling back to pydicom 2.4's module."""
    try:
        from pydicom.pixels import apply_rescale, apply_voi, apply_windowing
    except ImportError:  # pydicom < 3
        from pydicom.pixel_data_handlers.util import (
            apply_modality_lut as apply_rescale,
        )
        from pydicom.pixel_data_handlers.util import apply_voi, apply_windowing
    return {"rescale": apply_rescale, "voi": apply_voi, "window": apply_windowing}


def _dicom_error(path: str, what: str, e: BaseException | None = None) -> ImageReadError:
    # The exception's type only: pydicom's messages can quote header values (patient data).
    detail = f" ({type(e).__name__})" if e is not None else ""
    return ImageReadError(f"cannot decode DICOM '{path}': {what}{detail}.")


def _read_dicom(buf: np.ndarray, path: str, declared: Declared) -> np.ndarray:
    with quiet_pydicom():
        return _read_dicom_quietly(buf, path, declared)


def _read_dicom_quietly(buf: np.ndarray, path: str, declared: Declared) -> np.ndarray:
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(buf.tobytes()), force=True)
    except Exception as e:  # pydicom raises many types for a broken file
        raise _dicom_error(path, "not a readable DICOM file", e) from None
    if "PixelData" not in ds:
        raise _dicom_error(path, "it holds no pixel data (PixelData)")
    arr = _dicom_first_frame(ds, path, declared.frames)
    check_decoded(arr, declared, path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if arr.ndim == 3:  # colour: RGB after pydicom's YBR conversion; LUTs are for monochrome only
        if arr.shape[2] != 3:
            raise _dicom_error(path, f"unexpected pixel shape {arr.shape}")
        return _to_gray(np.ascontiguousarray(arr[:, :, ::-1]), path)
    if not photometric.startswith("MONOCHROME"):
        raise _dicom_error(path, f"photometric interpretation {photometric} is not supported")
    if arr.ndim != 2:
        raise _dicom_error(path, f"unexpected pixel shape {arr.shape}")
    return _dicom_to_display(arr, ds, photometric == "MONOCHROME1", path)


def _dicom_first_frame(ds: Any, path: str, frames: int) -> np.ndarray:
    """Stored values of the first frame, shape (R, C) or (R, C, 3)."""
    try:
        try:
            from pydicom.pixels import pixel_array
        except ImportError:  # pydicom < 3: decodes every frame
            arr = ds.pixel_array
            return arr[0] if frames > 1 else arr
        return pixel_array(ds, index=0 if frames > 1 else None)
    except (RuntimeError, NotImplementedError, ImportError):
        # No plugin for this compression: OpenCV decodes the common ones itself.
        syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
        if syntax in _CV2_DICOM_SYNTAXES:
            return _dicom_frame_cv2(ds, syntax, frames, path)
        raise _dicom_error(
            path, f"no decoder for transfer syntax {syntax or 'unknown'}: {_PLUGIN_HINT}"
        ) from None
    except Exception as e:
        raise _dicom_error(path, "the pixel data cannot be decoded", e) from None


def _dicom_frame_cv2(ds: Any, syntax: str, frames: int, path: str) -> np.ndarray:
    name = _CV2_DICOM_SYNTAXES[syntax]
    if int(ds.get("PixelRepresentation", 0)) != 0:
        raise _dicom_error(path, f"signed {name} pixel data needs a decoder plugin: {_PLUGIN_HINT}")
    try:
        try:
            from pydicom.encaps import generate_frames as _frames

            first = next(_frames(ds.PixelData, number_of_frames=frames))
        except ImportError:  # pydicom < 3
            from pydicom.encaps import generate_pixel_data_frame

            first = next(generate_pixel_data_frame(ds.PixelData, frames))
    except Exception as e:
        raise _dicom_error(path, f"the {name} pixel data is not readable", e) from None
    img = _imdecode(np.frombuffer(first, np.uint8), _CV2_FLAGS | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise _dicom_error(path, f"OpenCV cannot decode its {name} pixel data: {_PLUGIN_HINT}")
    if img.ndim == 3:
        img = img[:, :, ::-1]  # OpenCV's BGR → RGB, as pydicom returns colour
    if img.shape[:2] != (int(ds.Rows), int(ds.Columns)):
        raise _dicom_error(
            path, f"decoded {img.shape[:2]} pixels but the header says {ds.Rows}×{ds.Columns}"
        )
    return img


def _padding_mask(arr: np.ndarray, ds: Any) -> np.ndarray | None:
    """Pixels equal to Pixel Padding Value (or within it and Pixel Padding Range Limit)."""
    value = ds.get("PixelPaddingValue")
    if value is None:
        return None
    value = int(value)
    limit = ds.get("PixelPaddingRangeLimit")
    lo, hi = (value, value) if limit is None else sorted((value, int(limit)))
    mask = (arr >= lo) & (arr <= hi)
    return mask if mask.any() else None


def _dicom_to_display(arr: np.ndarray, ds: Any, monochrome1: bool, path: str) -> np.ndarray:
    """Stored values → modality (rescale/LUT) → VOI (LUT or window) → MONOCHROME1 inverted."""
    api = _pydicom_api()
    pad = _padding_mask(arr, ds)
    values: np.ndarray = arr
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    has_rescale = (
        slope is not None
        and intercept is not None
        and (float(slope), float(intercept)) != (1.0, 0.0)
    )
    if ds.get("ModalityLUTSequence") or has_rescale:
        values = api["rescale"](arr, ds)

    u8 = _apply_voi(values, ds, api, path)
    if u8 is not None:
        out: np.ndarray = u8
        if monochrome1:
            out = 255 - out
        if pad is not None:
            out[pad] = 0
        return out

    if values.dtype in (np.uint8, np.uint16):
        # Unchanged stored values: invert within the stored range (BitsStored).
        out = values.copy()
        if monochrome1:
            top = min(2 ** int(ds.get("BitsStored", 8 * out.itemsize)) - 1, np.iinfo(out.dtype).max)
            out = (top - np.minimum(out, top)).astype(out.dtype)
        if pad is not None:
            # 8 bits are final: black. 16 bits: the darkest real pixel, which to_uint8 makes black
            # without letting the padding value stretch the range.
            keep = out[~pad]
            out[pad] = 0 if out.dtype == np.uint8 or not keep.size else keep.min()
        return out

    out = values.astype(np.float32)
    keep = out if pad is None else out[~pad]
    if keep.size and monochrome1:
        out = np.float32(keep.max()) + np.float32(keep.min()) - out
        keep = out if pad is None else out[~pad]
    if pad is not None:
        out[pad] = keep.min() if keep.size else 0.0
    return out


def _apply_voi(values: np.ndarray, ds: Any, api: dict[str, Any], path: str) -> np.ndarray | None:
    """The VOI LUT (preferred) or first window, scaled to uint8 by its output range; None if none."""
    has_lut = False
    seq = ds.get("VOILUTSequence")
    if seq:
        item = seq[0]
        has_lut = item.get("LUTDescriptor") is not None and item.get("LUTData") is not None
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    if not (has_lut or has_window):
        return None
    try:
        if has_lut:
            # The LUT is indexed by integers; rescaled values are whole numbers in practice.
            ints = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
            out = api["voi"](ints, ds, 0)
            desc = seq[0].LUTDescriptor
            n, first = int(desc[0]) or 2**16, int(desc[1])
            table = api["voi"](np.arange(first, first + n, dtype=np.int64), ds, 0)
            lo, hi = float(table.min()), float(table.max())
        else:
            out = api["window"](values, ds, 0)
            with np.errstate(over="ignore"):
                ends = api["window"](np.array([-1e300, 1e300]), ds, 0)
            lo, hi = float(ends[0]), float(ends[1])
    except (ValueError, NotImplementedError, AttributeError, TypeError, IndexError) as e:
        log.debug("ignoring the VOI LUT/window of '%s': %s", path, type(e).__name__)
        return None
    if hi == lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.asarray(out, np.float64) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# ---- intensity and size --------------------------------------------------------------------------


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Map a grayscale image to ``uint8``.

    ``uint8`` input is returned as is: 8-bit files and windowed DICOM already hold display values.
    Anything else (16-bit PNG, unwindowed DICOM) is clipped to its 0.5th-99.5th percentiles and
    stretched linearly to 0-255: a few saturated or dead pixels (labels, collimator edges, padding)
    then cannot flatten the contrast of the rest. When the two percentiles coincide the image's
    min-max is used; a constant image gives zeros.

    Args:
        img: ``(H, W)`` array of any real dtype.

    Returns:
        ``(H, W)`` ``uint8`` array.
    """
    if img.ndim != 2:
        raise ValueError(f"to_uint8 expects a 2-D grayscale image, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.bool_:
        return img.astype(np.uint8) * np.uint8(255)
    lo, hi = _robust_range(img)
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    x = img.astype(np.float32)
    x = (np.clip(x, lo, hi) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.rint(np.nan_to_num(x, nan=0.0)).astype(np.uint8)


def _robust_range(img: np.ndarray) -> tuple[float, float]:
    p_lo, p_hi = ROBUST_PERCENTILES
    if img.dtype in (np.uint16, np.int16, np.int8):
        # Exact percentiles from a histogram: much faster than sorting a megapixel image.
        offset = int(np.iinfo(img.dtype).min) if img.dtype.kind == "i" else 0
        counts = np.bincount((img.astype(np.int64) - offset).ravel())
        cdf = np.cumsum(counts)
        n = cdf[-1]
        lo = int(np.searchsorted(cdf, n * p_lo / 100.0, side="left")) + offset
        hi = int(np.searchsorted(cdf, n * p_hi / 100.0, side="left")) + offset
        nz = np.flatnonzero(counts)
        vmin, vmax = int(nz[0]) + offset, int(nz[-1]) + offset
    else:
        finite = img[np.isfinite(img)] if img.dtype.kind == "f" else img
        if finite.size == 0:
            return 0.0, 0.0
        lo, hi = (float(v) for v in np.percentile(finite, [p_lo, p_hi]))
        vmin, vmax = float(finite.min()), float(finite.max())
    return (float(lo), float(hi)) if hi > lo else (float(vmin), float(vmax))


def check_fit(fit: str) -> str:
    """Return ``fit`` if it is one of :data:`FIT_MODES`, else raise one clear line."""
    if fit not in FIT_MODES:
        raise CxrkitError(did_you_mean(str(fit), FIT_MODES, what="--fit mode"))
    return fit


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    if (w, h) == (img.shape[1], img.shape[0]):
        return img
    # INTER_AREA averages the source pixels under each target pixel (antialiased shrink); when
    # enlarging it degenerates to nearest neighbour, so bilinear is used then.
    shrink = w <= img.shape[1] and h <= img.shape[0]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class Placement(NamedTuple):
    """Where :func:`resize_square` puts an image: a source rectangle of the original (the crop) is
    resized onto a destination rectangle of the square. Rectangles are (top, left, height, width)
    in pixels. The one geometry of ``pad``/``crop``/``stretch``: images, boxes and heatmaps are all
    mapped through it, so they cannot drift apart."""

    src: tuple[int, int, int, int]
    dst: tuple[int, int, int, int]

    def scale_offset(self) -> tuple[float, float, float, float]:
        """(sx, sy, ox, oy): original (x, y) → square (x·sx + ox, y·sy + oy)."""
        st, sl, sh, sw = self.src
        dt, dl, dh, dw = self.dst
        sx, sy = dw / sw, dh / sh
        return sx, sy, dl - sl * sx, dt - st * sy


def placement(orig_hw: tuple[int, int] | Any, size: int, fit: str = "pad") -> Placement:
    """The :class:`Placement` of an (H, W) image in a ``size × size`` square under ``fit``."""
    check_fit(fit)
    h, w = int(orig_hw[0]), int(orig_hw[1])
    if h < 1 or w < 1 or size < 1:
        raise ValueError(f"orig_hw and size must be positive, got {tuple(orig_hw)} and {size}")
    if fit == "stretch":
        return Placement((0, 0, h, w), (0, 0, size, size))
    if fit == "crop":
        s = min(h, w)
        return Placement(((h - s) // 2, (w - s) // 2, s, s), (0, 0, size, size))
    scale = size / max(h, w)
    nh, nw = max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))
    return Placement((0, 0, h, w), ((size - nh) // 2, (size - nw) // 2, nh, nw))


def resize_square(img: np.ndarray, size: int, fit: str = "pad") -> np.ndarray:
    """Resize a grayscale ``uint8`` image to ``size × size``, antialiased.

    Args:
        img: ``(H, W)`` ``uint8``.
        size: the side of the output.
        fit: ``pad``: scale the long side to ``size``, centre, fill the bars with black (keeps the
            aspect ratio and the whole image); ``crop``: centre-crop the long side to the short
            one, then scale (keeps the aspect ratio, loses the edges); ``stretch``: scale each side
            on its own (keeps everything, distorts the aspect ratio). See :func:`placement`.

    Returns:
        ``(size, size)`` ``uint8``.
    """
    check_fit(fit)
    if img.ndim != 2:
        raise ValueError(f"resize_square expects a 2-D grayscale image, got shape {img.shape}")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    (st, sl, sh, sw), (dt, dl, dh, dw) = placement(img.shape, size, fit)
    resized = _resize(img[st : st + sh, sl : sl + sw], dw, dh)
    if (dh, dw) == (size, size):
        return np.ascontiguousarray(resized)
    out = np.zeros((size, size), img.dtype)
    out[dt : dt + dh, dl : dl + dw] = resized
    return out


def load_for_cache(
    path: str | os.PathLike[str], size: int, fit: str = "pad", *, max_pixels: int | None = None
) -> np.ndarray:
    """Decode, map to ``uint8`` and resize one image: what the cache stores for it.

    Returns:
        ``(size, size)`` ``uint8``.

    Raises:
        ImageReadError: the file cannot be decoded.
    """
    return resize_square(to_uint8(read_image(path, max_pixels=max_pixels)), size, fit)
