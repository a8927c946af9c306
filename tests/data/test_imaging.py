"""Decoding PNG / JPEG / DICOM to grayscale (bright = dense), intensity to uint8, square resizing."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from conftest import write_dicom
from cxrkit.core.errors import CxrkitError
from cxrkit.data.imaging import (
    FIT_MODES,
    ImageReadError,
    load_for_cache,
    read_image,
    resize_square,
    to_uint8,
)

SIIM_DICOM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"  # MONOCHROME2
FAKE_MONO1 = "Fake_MONOHR1.dcm"


def _gradient16(h: int = 40, w: int = 300) -> np.ndarray:
    return np.tile(np.linspace(1000, 60000, w).astype(np.uint16), (h, 1))


# ---- PNG / JPEG ----------------------------------------------------------------------------------


def test_png_8bit_round_trip(tmp_path: Path):
    img = np.random.default_rng(0).integers(0, 256, (37, 53), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and np.array_equal(out, img)
    assert to_uint8(out) is out  # 8-bit display values pass through untouched


def test_png_16bit_keeps_values_order_and_range(tmp_path: Path):
    img = _gradient16()
    cv2.imwrite(str(tmp_path / "g.png"), img)
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.uint16 and np.array_equal(out, img)
    u8 = to_uint8(out)
    row = u8[0].astype(int)
    assert u8.dtype == np.uint8 and u8.shape == img.shape
    assert (np.diff(row) >= 0).all()  # order kept
    assert row[0] == 0 and row[-1] == 255  # the full range is used
    assert len(np.unique(row)) > 200  # not crushed to a few levels


def test_to_uint8_clips_outliers_and_handles_constants():
    img = np.full((100, 100), 1000, np.uint16)
    img[:, 50:] = 2000
    img[0, 0] = 65535  # one hot pixel must not flatten the rest
    u8 = to_uint8(img)
    assert u8[50, 10] == 0 and u8[50, 90] == 255
    assert not to_uint8(np.full((5, 5), 7.5, np.float32)).any()
    flt = to_uint8(np.array([[0.0, np.nan], [1.0, 2.0]], np.float32))
    assert flt.dtype == np.uint8 and flt[1, 1] == 255


def test_jpeg_gray_and_colour_to_gray(tmp_path: Path):
    gray = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    cv2.imwrite(str(tmp_path / "g.jpg"), gray, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == gray.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - gray).mean() < 3
    colour = np.zeros((48, 64, 3), np.uint8)
    colour[:, :32] = (0, 0, 255)  # BGR: red, gray ≈ 76
    colour[:, 32:] = (255, 0, 0)  # blue, gray ≈ 29
    cv2.imwrite(str(tmp_path / "c.jpg"), colour, [cv2.IMWRITE_JPEG_QUALITY, 95])
    out = read_image(tmp_path / "c.jpg")
    assert out.ndim == 2 and out.shape == (48, 64)
    assert abs(int(out[24, 10]) - 76) <= 6 and abs(int(out[24, 54]) - 29) <= 6


def test_rgba_png_drops_alpha(tmp_path: Path):
    img = np.zeros((10, 10, 4), np.uint8)
    img[..., :3] = 200
    img[..., 3] = 0  # fully transparent: the gray value is still the pixel's
    cv2.imwrite(str(tmp_path / "a.png"), img)
    out = read_image(tmp_path / "a.png")
    assert out.shape == (10, 10) and (out == 200).all()


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\0\0"])
def test_unreadable_files_raise_image_read_error(tmp_path: Path, content: bytes):
    (tmp_path / "x.png").write_bytes(content)
    with pytest.raises(ImageReadError, match="x.png"):
        read_image(tmp_path / "x.png")
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    assert issubclass(ImageReadError, CxrkitError)


# ---- resize --------------------------------------------------------------------------------------


def test_resize_modes_shape_and_aspect():
    tall = np.full((100, 50), 255, np.uint8)  # h=100, w=50
    for fit in FIT_MODES:
        for size in (32, 64, 160):  # shrink and enlarge
            out = resize_square(tall, size, fit)
            assert out.shape == (size, size) and out.dtype == np.uint8
    pad = resize_square(tall, 64, "pad")
    assert (pad[:, 16:48] == 255).all()  # the image: 32 px wide, centred
    assert not pad[:, :16].any() and not pad[:, 48:].any()  # black bars left and right
    wide = np.full((50, 100), 255, np.uint8)
    pad = resize_square(wide, 64, "pad")
    assert (pad[16:48] == 255).all() and not pad[:16].any() and not pad[48:].any()
    assert (resize_square(tall, 64, "stretch") == 255).all()
    marked = tall.copy()
    marked[:25] = 7  # the top quarter: cut away by the centre crop
    crop = resize_square(marked, 64, "crop")
    assert (crop == 255).all()


def test_resize_is_antialiased():
    stripes = np.zeros((512, 512), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: aliasing would give 0 or 255, averaging ~128
    out = resize_square(stripes, 64, "stretch")
    assert abs(float(out.mean()) - 127.5) < 2 and out.std() < 2


def test_bad_fit_is_one_clear_line():
    with pytest.raises(CxrkitError, match="did you mean 'crop'"):
        resize_square(np.zeros((4, 4), np.uint8), 8, "croop")


# ---- DICOM ---------------------------------------------------------------------------------------


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    """12-bit stored values: a dense 'body' on 'air', padding at the left edge; the padding mask."""
    yy, xx = np.mgrid[0:64, 0:80]
    stored = (300 + 40 * xx + 10 * yy).astype(np.uint16)  # 300 .. 4090
    pad = xx < 6
    return stored, pad


def test_synthetic_dicom_rescale_window_padding(tmp_path: Path):
    stored, pad = _phantom()
    s2 = stored.copy()
    s2[pad] = 4095
    slope, intercept, center, width = 2.0, -1000.0, 3000.0, 4001.0
    path = write_dicom(
        tmp_path / "m2.dcm",
        s2,
        "MONOCHROME2",
        BitsStored=12,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=center,
        WindowWidth=width,
        PixelPaddingValue=4095,
    )
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == stored.shape
    # DICOM PS3.3 C.11.2.1.2.1, LINEAR: the window maps to the full display range.
    v = stored.astype(float) * slope + intercept
    y = np.clip((v - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    expected = np.rint(y * 255).astype(int)
    expected[pad] = 0  # padding is black
    assert np.abs(out.astype(int) - expected).max() <= 1
    assert (out[:, 75:] == 255).all() and out[:, 6:10].max() < 40  # clipped above, dark below

    # The same film stored as MONOCHROME1 (low value = white), with the window mirrored.
    s1 = (4095 - stored).astype(np.uint16)
    s1[pad] = 0
    path1 = write_dicom(
        tmp_path / "m1.dcm",
        s1,
        "MONOCHROME1",
        BitsStored=12,
        RescaleSlope=slope,
        RescaleIntercept=intercept,
        WindowCenter=slope * 4095 + 2 * intercept - center,
        WindowWidth=width,
        PixelPaddingValue=0,
    )
    out1 = read_image(path1)
    assert np.abs(out1.astype(int) - out.astype(int)).max() <= 1


@pytest.mark.parametrize("rescale", [False, True])
def test_synthetic_dicom_without_window_monochrome1_matches_monochrome2(tmp_path: Path, rescale):
    stored, _ = _phantom()
    tags = {"BitsStored": 12}
    if rescale:
        tags.update(RescaleSlope=0.5, RescaleIntercept=-100.0)
    m2 = read_image(write_dicom(tmp_path / "m2.dcm", stored, "MONOCHROME2", **tags))
    m1 = read_image(write_dicom(tmp_path / "m1.dcm", 4095 - stored, "MONOCHROME1", **tags))
    assert m2.dtype == (np.float32 if rescale else np.uint16)
    assert np.array_equal(to_uint8(m1), to_uint8(m2))
    u8 = to_uint8(m2)
    assert u8[:, -1].mean() > u8[:, 0].mean() + 200  # dense (high value) side bright


def test_dicom_by_magic_without_suffix_and_first_frame(tmp_path: Path):
    frames = np.stack([np.full((8, 8), 10, np.uint8), np.full((8, 8), 200, np.uint8)])
    path = tmp_path / "noext"
    ds_path = write_dicom(tmp_path / "mf.dcm", frames.reshape(16, 8), "MONOCHROME2")
    ds = pydicom.dcmread(ds_path)
    ds.Rows, ds.NumberOfFrames = 8, 2
    ds.save_as(path)
    out = read_image(path)
    assert out.shape == (8, 8) and (out == 10).all()


def test_dicom_errors_and_warnings_never_show_patient_fields(tmp_path: Path, caplog):
    path = write_dicom(tmp_path / "bad.dcm", np.zeros((16, 16), np.uint16), "MONOCHROME2")
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:100]  # truncated pixel data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.PatientBirthDate = "not-a-date"  # invalid DA: reading it, pydicom warns quoting it
        ds.save_as(path)
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as seen, pytest.raises(ImageReadError) as e:
        warnings.simplefilter("always")
        read_image(path)
    text = str(e.value) + caplog.text + " ".join(str(w.message) for w in seen)
    for secret in ("Doe", "SECRET-ID-123", "not-a-date"):
        assert secret not in text
    assert "bad.dcm" in str(e.value)


@pytest.mark.realdata
def test_real_dicoms_decode_and_monochrome1_is_inverted(shared_data: Path, tmp_path: Path):
    folder = shared_data / "images"
    if not (folder / SIIM_DICOM).is_file() or not (folder / FAKE_MONO1).is_file():
        pytest.skip("the two DICOM test files are not in ../shared/data/images")
    m2 = read_image(folder / SIIM_DICOM)
    m1 = read_image(folder / FAKE_MONO1)
    for img in (m1, m2):
        assert img.ndim == 2 and img.shape == (1024, 1024) and img.dtype == np.uint8
    # MONOCHROME2: the body (mediastinum, spine) is brighter than the air around the patient.
    assert m2[400:600, 400:600].mean() > m2[:100, :100].mean() + 100
    # Fake_MONOHR1.dcm holds the very same stored pixels under a MONOCHROME1 tag, so a correct
    # reader must show it inverted; without the inversion the two would be equal.
    raw1, raw2 = pydicom.dcmread(folder / FAKE_MONO1), pydicom.dcmread(folder / SIIM_DICOM)
    assert raw1.PhotometricInterpretation == "MONOCHROME1" and raw1.PixelData == raw2.PixelData
    assert np.array_equal(m1, 255 - m2)
    # A true MONOCHROME1 film (bone stored dark) comes out like its MONOCHROME2 twin: bone bright.
    true_m1 = write_dicom(tmp_path / "true_m1.dcm", 255 - m2, "MONOCHROME1")
    assert np.array_equal(read_image(true_m1), m2)
    cached = load_for_cache(folder / SIIM_DICOM, 224, "pad")
    assert cached.shape == (224, 224) and cached[80:140, 80:140].mean() > cached[:20, :20].mean()


@pytest.mark.realdata
def test_real_png_and_jpeg_decode(shared_data: Path):
    folder = shared_data / "images"
    files = sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg"))
    if not files:
        pytest.skip("no real PNG/JPEG in ../shared/data/images")
    for f in files:
        img = read_image(f)
        assert img.ndim == 2 and img.dtype == np.uint8 and min(img.shape) >= 256
        assert load_for_cache(f, 64, "crop").shape == (64, 64)
