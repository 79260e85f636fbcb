"""Decode medical image files (PNG 8/16-bit, JPEG, DICOM) into one gray representation.

The defined gray representation used everywhere downstream is a 2-D ``uint8`` array.
Colour images are converted with OpenCV's luminance weights; an alpha channel is
dropped (the curated data sets store opaque images as RGBA). 16-bit images are scaled
by the smallest bit depth that holds their maximum (12-bit detectors store 0..4095 in
16-bit containers; scaling by 65535 would leave them nearly black). DICOM pixel data
gets its rescale slope/intercept, and MONOCHROME1 is inverted so bone is bright.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np

DICOM_MAGIC_OFFSET = 128


class ImageDecodeError(ValueError):
    """Raised when a file is not a decodable image; the message says why."""


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
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) > DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    return "unknown"


def _decode_dicom(data: bytes) -> np.ndarray:
    import pydicom  # imported lazily: only DICOM inputs need it

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        pixels = dataset.pixel_array.astype(np.float64)
    except Exception as error:  # pydicom raises many types for broken files
        raise ImageDecodeError(f"unreadable DICOM pixel data ({error})") from error
    if pixels.ndim != 2:
        raise ImageDecodeError(f"DICOM with {pixels.ndim} dimensions; only single 2-D frames are supported")
    slope = float(getattr(dataset, "RescaleSlope", 1.0))
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0))
    pixels = pixels * slope + intercept
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) if high > low else np.zeros_like(pixels)
    return np.round(scaled * 65535).astype(np.uint16)


def decode_image(data: bytes) -> DecodedImage:
    """Decode image bytes; raise :class:`ImageDecodeError` with the reason on failure."""
    if len(data) == 0:
        raise ImageDecodeError("empty file (0 bytes)")
    file_format = sniff_format(data)
    if file_format == "unknown":
        raise ImageDecodeError("not an image: no PNG, JPEG or DICOM signature")
    if file_format == "dicom":
        pixels = _decode_dicom(data)
    else:
        buffer = np.frombuffer(data, dtype=np.uint8)
        pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
        if pixels is None:
            raise ImageDecodeError(f"corrupt or truncated {file_format.upper()} data")
        if file_format == "png" and not data.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82"):
            # libpng decodes some truncated files silently, filling the rest with zeros.
            raise ImageDecodeError("truncated PNG: no IEND chunk at the end of the file")
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


def encode_png(gray: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as PNG bytes (lossless)."""
    ok, buffer = cv2.imencode(".png", gray)
    if not ok:
        raise ValueError("OpenCV could not encode the array as PNG")
    return buffer.tobytes()
