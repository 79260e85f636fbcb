"""Decode medical image files (PNG 8/16-bit, JPEG, DICOM) into one gray representation.

The defined gray representation used everywhere downstream is a 2-D ``uint8`` array.
Colour images are converted with OpenCV's luminance weights; an alpha channel is
dropped (the curated data sets store opaque images as RGBA). 16-bit images are scaled
by the smallest bit depth that holds their maximum (12-bit detectors store 0..4095 in
16-bit containers; scaling by 65535 would leave them nearly black). DICOM pixel data
gets its rescale slope/intercept, and MONOCHROME1 is inverted so bone is bright.

Hostile input: the size a file declares in its header is checked against a pixel
budget *before* anything is decoded (a 1 MB PNG can declare 30,000 x 30,000 pixels),
and every decoder failure, including OpenCV's own assertions, becomes an
:class:`ImageDecodeError` whose message says what is wrong.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

DICOM_MAGIC_OFFSET = 128
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# 50 million pixels: several times the largest chest radiograph (about 4,300 x 3,500),
# and at most about 0.8 GB of working memory for the worst case (16-bit RGBA).
DEFAULT_MAX_PIXELS = 50_000_000

# PNG colour type -> channels OpenCV returns with IMREAD_UNCHANGED (palette expands to BGR).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_PNG_BIT_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
# Start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT/JPG/DAC.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


class ImageDecodeError(ValueError):
    """Raised when a file is not a decodable image; the message says why."""


class PixelBudgetError(ImageDecodeError):
    """The header declares more pixels than the budget allows (nothing was decoded)."""


@dataclass(frozen=True)
class ImageHeader:
    """What a file declares about itself, read without decoding any pixel."""

    file_format: str
    width: int
    height: int
    channels: int
    bit_depth: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image in its stored form plus the facts the manifest records."""

    pixels: np.ndarray  # as stored: (H, W) or (H, W, C), uint8 or uint16 (BGR order for colour)
    file_format: str
    bit_depth: int

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return 1 if self.pixels.ndim == 2 else int(self.pixels.shape[2])


def sniff_format(data: bytes) -> str:
    """Name the container format from the file's magic bytes ('unknown' if none match)."""
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) > DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    return "unknown"


# ----------------------------------------------------------------------------- headers


def _png_header(data: bytes) -> ImageHeader:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageDecodeError("corrupt or truncated PNG: no IHDR header chunk after the signature")
    if int.from_bytes(data[8:12], "big") != 13 or zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        # Checked first: a flipped bit in the size fields would otherwise read as a huge size.
        raise ImageDecodeError("corrupt PNG: the IHDR header chunk fails its CRC check")
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour_type not in _PNG_CHANNELS or bit_depth not in _PNG_BIT_DEPTHS[colour_type]:
        raise ImageDecodeError(f"corrupt or truncated PNG: invalid colour type {colour_type} / bit depth {bit_depth}")
    if interlace > 1:
        raise ImageDecodeError(f"corrupt or truncated PNG: invalid interlace method {interlace}")
    # Walk the chunk headers only (no pixel data): an animation control chunk before the
    # image data means an animated PNG, whose frames OpenCV would silently drop.
    offset, frames = 8, 1
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        chunk_type = data[offset + 4 : offset + 8]
        if chunk_type == b"acTL" and length >= 4 and offset + 12 <= len(data):
            frames = max(1, int.from_bytes(data[offset + 8 : offset + 12], "big"))
        if chunk_type in (b"IDAT", b"IEND"):
            break
        offset += 12 + length
    return ImageHeader("png", width, height, _PNG_CHANNELS[colour_type], 16 if bit_depth == 16 else 8, frames)


def _jpeg_header(data: bytes) -> ImageHeader:
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            raise ImageDecodeError(f"corrupt JPEG: expected a marker at byte {offset}")
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            offset += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        length = int.from_bytes(data[offset + 2 : offset + 4], "big")
        if marker in _JPEG_SOF_MARKERS:
            if offset + 10 > len(data):
                break
            precision = data[offset + 4]
            height, width = struct.unpack(">HH", data[offset + 5 : offset + 9])
            components = data[offset + 9]
            return ImageHeader("jpeg", width, height, components, 16 if precision > 8 else 8)
        if length < 2:
            raise ImageDecodeError(f"corrupt JPEG: segment length {length} at byte {offset}")
        offset += 2 + length
    raise ImageDecodeError("corrupt or truncated JPEG: no frame header (SOF) before the image data")


def _dicom_dataset(data: bytes) -> Any:
    import pydicom  # imported lazily: only DICOM inputs need it

    try:
        return pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # pydicom raises many types for broken files
        raise ImageDecodeError(f"unreadable DICOM header ({_first_line(error)})") from error


def _dicom_header(dataset: Any) -> ImageHeader:
    if not any(name in dataset for name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageDecodeError("DICOM without pixel data (no PixelData element)")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        samples = int(getattr(dataset, "SamplesPerPixel", 1) or 1)
        bits = int(getattr(dataset, "BitsAllocated", 16) or 16)
    except (AttributeError, TypeError, ValueError) as error:
        raise ImageDecodeError(f"DICOM with missing or invalid Rows/Columns ({_first_line(error)})") from error
    return ImageHeader("dicom", columns, rows, samples, bits, frames)


def read_header(data: bytes) -> ImageHeader:
    """Read the declared format, size, channels and frames without decoding pixels."""
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    file_format = sniff_format(data)
    if file_format == "png":
        return _png_header(data)
    if file_format == "jpeg":
        return _jpeg_header(data)
    if file_format == "dicom":
        return _dicom_header(_dicom_dataset(data))
    raise ImageDecodeError("not an image: no PNG, JPEG or DICOM signature")


def check_pixel_budget(header: ImageHeader, max_pixels: int) -> None:
    """Raise :class:`PixelBudgetError` when the header declares too many pixels."""
    if header.width < 1 or header.height < 1:
        raise ImageDecodeError(f"degenerate image: the header declares {header.width}×{header.height} pixels")
    if header.pixels > max_pixels:
        frames = f" × {header.frames} frames" if header.frames > 1 else ""
        raise PixelBudgetError(
            f"declares {header.width}×{header.height}{frames} pixels ({header.pixels:,}), over the budget "
            f"of {int(max_pixels):,} pixels; nothing was decoded"
        )


def pixel_budget(width: Any, height: Any) -> int:
    """The decode budget of a listed image: the default, or the image's own size where
    ingestion accepted a larger one (a missing or invalid size: the default)."""
    try:
        accepted = int(width) * int(height)
    except (TypeError, ValueError):
        accepted = 0
    return max(DEFAULT_MAX_PIXELS, accepted)


# ----------------------------------------------------------------------------- decoding


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _decode_dicom(dataset: Any) -> np.ndarray:
    try:
        pixels = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for broken pixel data
        raise ImageDecodeError(f"unreadable DICOM pixel data ({_first_line(error)})") from error
    if pixels.ndim == 3 and int(getattr(dataset, "SamplesPerPixel", 1) or 1) == 3:
        # pydicom returns colour as RGB (it converts YBR); luminance like any colour image.
        pixels = cv2.cvtColor(np.ascontiguousarray(pixels.astype(np.float32)), cv2.COLOR_RGB2GRAY)
    if pixels.ndim != 2:
        raise ImageDecodeError(f"DICOM pixel data with {pixels.ndim} dimensions; only single 2-D frames are supported")
    # float32 is exact for 16-bit values; in-place steps keep one working copy only.
    pixels = pixels.astype(np.float32)
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    pixels *= np.float32(slope)
    pixels += np.float32(intercept)
    if not np.isfinite(pixels).all():
        raise ImageDecodeError("DICOM pixel data contains NaN or infinite values")
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        np.subtract(pixels.max(), pixels, out=pixels)
    low, high = float(pixels.min()), float(pixels.max())
    if high > low:
        pixels -= np.float32(low)
        pixels *= np.float32(65535.0 / (high - low))
        np.round(pixels, out=pixels)
    else:
        pixels[...] = 0
    return pixels.astype(np.uint16)


def _decode_raster(data: bytes, file_format: str) -> np.ndarray:
    # JPEG: ANYCOLOR|ANYDEPTH applies the EXIF orientation and converts CMYK/YCCK to BGR
    # (IMREAD_UNCHANGED would do neither). PNG: UNCHANGED keeps 16 bits and alpha.
    flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH if file_format == "jpeg" else cv2.IMREAD_UNCHANGED
    try:
        pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    except cv2.error as error:  # OpenCV asserts on some broken files instead of returning None
        raise ImageDecodeError(f"corrupt or truncated {file_format.upper()} data ({_first_line(error)})") from error
    if pixels is None:
        raise ImageDecodeError(f"corrupt or truncated {file_format.upper()} data")
    if file_format == "png" and not data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"):
        # libpng decodes some truncated files silently, filling the rest with zeros.
        raise ImageDecodeError("truncated PNG: no IEND chunk at the end of the file")
    if file_format == "jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        # libjpeg also fills a truncated scan with gray and only prints a warning.
        raise ImageDecodeError("truncated JPEG: no end-of-image marker at the end of the file")
    return pixels


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode image bytes; raise :class:`ImageDecodeError` with the reason on failure.

    The header is read first and the declared size checked against ``max_pixels``
    (width × height × frames), so a decompression bomb costs no memory.
    """
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    file_format = sniff_format(data)
    if file_format == "unknown":
        raise ImageDecodeError("not an image: no PNG, JPEG or DICOM signature")
    if file_format == "dicom":
        dataset = _dicom_dataset(data)
        header = _dicom_header(dataset)
        check_pixel_budget(header, max_pixels)
        if header.frames > 1:
            raise ImageDecodeError(f"multi-frame DICOM ({header.frames} frames); only single 2-D frames are supported")
        pixels = _decode_dicom(dataset)
    else:
        header = _png_header(data) if file_format == "png" else _jpeg_header(data)
        check_pixel_budget(header, max_pixels)
        if header.frames > 1:
            raise ImageDecodeError(f"animated PNG with {header.frames} frames; only single images are supported")
        pixels = _decode_raster(data, file_format)
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageDecodeError(f"unsupported pixel type {pixels.dtype}")
    if pixels.size == 0 or min(pixels.shape[:2]) < 2:
        raise ImageDecodeError(f"degenerate image of shape {pixels.shape}")
    bit_depth = 8 if pixels.dtype == np.uint8 else 16
    return DecodedImage(pixels=pixels, file_format=file_format, bit_depth=bit_depth)


def to_gray_uint8(image: DecodedImage | np.ndarray) -> np.ndarray:
    """Convert a decoded image to the project's gray representation (2-D ``uint8``)."""
    pixels = image.pixels if isinstance(image, DecodedImage) else image
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        if channels == 4:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2GRAY)
        elif channels == 3:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
        elif channels == 2:  # gray + alpha
            pixels = pixels[..., 0]
        elif channels == 1:
            pixels = pixels[..., 0]
        else:
            raise ImageDecodeError(f"unsupported channel count {channels}")
    if pixels.dtype == np.uint16:
        used_bits = max(8, int(np.ceil(np.log2(int(pixels.max()) + 1)))) if pixels.max() > 0 else 8
        full_scale = float(2**used_bits - 1)
        pixels = np.round(pixels.astype(np.float32) * (255.0 / full_scale)).astype(np.uint8)
    return np.ascontiguousarray(pixels)


def decode_gray(data: bytes) -> np.ndarray:
    """Decode bytes straight to the gray ``uint8`` representation."""
    return to_gray_uint8(decode_image(data))


def binary_mask(gray: np.ndarray) -> np.ndarray:
    """A mask image (0/255, or anti-aliased gray levels) as booleans: above mid-gray is inside."""
    return gray > 127


def encode_png(gray: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as PNG bytes (lossless)."""
    ok, buffer = cv2.imencode(".png", gray)
    if not ok:
        raise ValueError("OpenCV could not encode the array as PNG")
    return buffer.tobytes()
