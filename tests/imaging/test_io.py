"""Decoding real image files of every supported kind into the gray representation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from covid_imaging.imaging.io import (
    ImageDecodeError,
    decode_gray,
    decode_image,
    encode_png,
    to_gray_uint8,
)
from tests.conftest import chest_like_image


def _encode(ext: str, array: np.ndarray, params=()) -> bytes:
    ok, buffer = cv2.imencode(ext, array, list(params))
    assert ok
    return buffer.tobytes()


def test_8bit_png_round_trips_exactly():
    gray = chest_like_image()
    decoded = decode_image(_encode(".png", gray))
    assert (decoded.width, decoded.height, decoded.channels, decoded.bit_depth) == (80, 64, 1, 8)
    assert decoded.file_format == "png"
    np.testing.assert_array_equal(to_gray_uint8(decoded), gray)


def test_16bit_png_with_12bit_content_is_scaled_by_its_bit_depth():
    gray12 = (chest_like_image().astype(np.uint16) * 16)  # values up to 4080: 12-bit detector range
    decoded = decode_image(_encode(".png", gray12))
    assert decoded.bit_depth == 16
    gray = to_gray_uint8(decoded)
    assert gray.dtype == np.uint8
    # scaled by 255/4095, not 255/65535 (which would leave the image nearly black)
    np.testing.assert_allclose(gray, np.round(gray12 * (255 / 4095)), atol=1)
    assert gray.max() > 150


def test_jpeg_is_decoded_to_gray():
    gray = chest_like_image()
    decoded = decode_image(_encode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 95]))
    assert decoded.file_format == "jpeg"
    assert np.abs(to_gray_uint8(decoded).astype(int) - gray).mean() < 4


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_and_rgba_pngs_become_luminance_gray(channels):
    gray = chest_like_image()
    colour = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR if channels == 3 else cv2.COLOR_GRAY2BGRA)
    decoded = decode_image(_encode(".png", colour))
    assert decoded.channels == channels
    np.testing.assert_array_equal(decode_gray(_encode(".png", colour)), gray)


def test_dicom_monochrome1_is_inverted_and_rescaled(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(tmp_path / "x.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    pixels = np.tile(np.arange(0, 4000, 50, dtype=np.uint16), (40, 1))  # 40 x 80 ramp
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.SamplesPerPixel, dataset.PixelRepresentation = 1, 0
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.PixelData = pixels.tobytes()
    dataset.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    decoded = decode_image((tmp_path / "x.dcm").read_bytes())
    assert decoded.file_format == "dicom"
    gray = to_gray_uint8(decoded)
    assert gray.shape == (40, 80)
    # MONOCHROME1: low stored values are bright
    assert gray[0, 0] == 255 and gray[0, -1] == 0
    assert pydicom is not None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"hello, this is a text file", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt or truncated PNG"),
    ],
)
def test_bad_bytes_raise_with_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_truncated_png_is_detected():
    data = encode_png(chest_like_image())
    with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
        decode_image(data[: len(data) // 2])


def test_truncated_jpeg_is_detected_or_decodes_partially_flagged():
    data = _encode(".jpg", chest_like_image((256, 256)))
    with pytest.raises(ImageDecodeError):
        decode_image(data[:200])


def test_a_decompression_bomb_is_rejected_from_its_header_without_decoding(monkeypatch):
    from covid_imaging.imaging.io import PixelBudgetError, read_header
    from tests.fuzz.bad_inputs import png_declaring

    bomb = png_declaring(30000, 30000)  # under 1 MB, 900 M pixels declared
    header = read_header(bomb)
    assert (header.width, header.height, header.file_format) == (30000, 30000, "png")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the header is over the budget")

    monkeypatch.setattr(cv2, "imdecode", no_decoding)
    with pytest.raises(PixelBudgetError, match=r"declares 30000×30000 pixels \(900,000,000\), over the budget of 50,000,000"):
        decode_image(bomb)
    with pytest.raises(PixelBudgetError, match="over the budget of 1,000"):
        decode_image(encode_png(chest_like_image((40, 40))), max_pixels=1000)


def test_opencv_assertions_become_decode_errors():
    from tests.fuzz.bad_inputs import png_declaring

    # 60000² passes a budget of 4e9 but makes OpenCV's own pixel-limit assertion fire.
    with pytest.raises(ImageDecodeError, match="corrupt or truncated PNG"):
        decode_image(png_declaring(60000, 60000, idat_bytes=1000), max_pixels=4_000_000_000)


def test_exif_orientation_and_cmyk_jpegs_are_decoded_as_displayed():
    from PIL import Image

    from tests.fuzz.bad_inputs import pil_bytes

    gray = chest_like_image((40, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise
    rotated = decode_image(pil_bytes(Image.fromarray(gray), "JPEG", exif=exif, quality=95))
    assert (rotated.width, rotated.height) == (40, 60)
    assert np.abs(to_gray_uint8(rotated).astype(int) - np.rot90(gray, -1)).mean() < 4
    cmyk = decode_image(pil_bytes(Image.fromarray(gray).convert("CMYK"), "JPEG", quality=95))
    assert cmyk.channels == 3 and np.abs(to_gray_uint8(cmyk).astype(int) - gray).mean() < 6


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_low_bit_depth_pngs_are_scaled_to_8_bits(bits):
    from PIL import Image

    from tests.fuzz.bad_inputs import pil_bytes

    levels = 2**bits
    values = (np.arange(48 * 64).reshape(48, 64) % levels).astype(np.uint8)
    image = Image.fromarray(values.astype(bool)) if bits == 1 else Image.fromarray(values)
    data = pil_bytes(image, "PNG", **({} if bits == 1 else {"bits": bits}))
    assert data[24] == bits  # the IHDR bit depth really is low
    gray = decode_gray(data)
    np.testing.assert_array_equal(gray, values.astype(np.uint16) * 255 // (levels - 1))
