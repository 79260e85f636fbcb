"""Generators of hostile and messy raw files, shared by the fuzz test and targeted tests.

Every generator writes real bytes (or links) under a raw folder laid out as
``paired_folders`` (``images/`` + ``masks/``) and returns the :class:`Case` it created:
which file the rejected-files report must name, with which severity and reason.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tests.conftest import chest_like_image, lung_mask

SIZE = (48, 64)  # (height, width) of the generated images


@dataclass(frozen=True)
class Case:
    """One kind of input. ``expect``: error | warning | accepted | no_crash.

    ``no_crash``: damage that no decoder can see (a flipped bit inside JPEG entropy
    data decodes to slightly wrong pixels); the run must go on, the file may be used.
    """

    kind: str
    key: str  # the file the report must name (relative to the raw folder)
    expect: str
    reason: str = ""  # a substring the reason must contain


# ----------------------------------------------------------------------------- encoders


def png(array: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".png", array)
    assert ok
    return buffer.tobytes()


def jpeg(array: np.ndarray, quality: int = 92) -> bytes:
    ok, buffer = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()


def pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, bit_depth: int = 8, colour_type: int = 0, idat_bytes: int = 900_000) -> bytes:
    """A small, valid-looking PNG whose header declares ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\x00" * idat_bytes, 9)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def jpeg_declaring(data: bytes, width: int, height: int) -> bytes:
    """Patch the frame header (SOF0) of a baseline JPEG to declare another size."""
    at = data.index(b"\xff\xc0")
    return data[: at + 5] + struct.pack(">HH", height, width) + data[at + 9 :]


def dicom(
    pixels: np.ndarray,
    bits: int = 16,
    frames: int | None = None,
    rows: int | None = None,
    columns: int | None = None,
    with_pixels: bool = True,
    pixel_bytes: bytes | None = None,
) -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.Rows, dataset.Columns = rows or pixels.shape[-2], columns or pixels.shape[-1]
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = bits, bits, bits - 1
    dataset.SamplesPerPixel, dataset.PixelRepresentation = 1, 0
    dataset.PhotometricInterpretation = "MONOCHROME2"
    if frames:
        dataset.NumberOfFrames = frames
    if with_pixels:
        dataset.PixelData = pixel_bytes if pixel_bytes is not None else pixels.tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def flip_bits(data: bytes, rng: np.random.Generator, n: int, start: int, stop: int | None = None) -> bytes:
    damaged = bytearray(data)
    for position in rng.integers(start, stop or len(data), n):
        damaged[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(damaged)


# ----------------------------------------------------------------------------- the folder


class HostileFolder:
    """Writes good pairs and hostile files into ``root`` and records the cases."""

    def __init__(self, root: Path, rng: np.random.Generator) -> None:
        self.root, self.rng = root, rng
        self.cases: list[Case] = []
        self.good_keys: list[str] = []

    def write(self, key: str, data: bytes) -> str:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return key

    def image(self, seed: int | None = None, size: tuple[int, int] = SIZE) -> np.ndarray:
        return chest_like_image(size, int(self.rng.integers(0, 1_000_000)) if seed is None else seed)

    def good_pair(self, stem: str, suffix: str = ".png") -> str:
        image = self.image()
        key = self.write(f"images/{stem}{suffix}", png(image) if suffix == ".png" else jpeg(image))
        self.write(f"masks/{stem}.png", png(lung_mask(SIZE)))
        self.good_keys.append(key)
        return key

    def bad(self, kind: str, key: str, data: bytes, expect: str = "error", reason: str = "",
            with_mask: bool = False) -> None:
        self.write(key, data)
        if with_mask:
            self.write(f"masks/{Path(key).stem}.png", png(lung_mask(SIZE)))
        self.cases.append(Case(kind, key, expect, reason))

    def case(self, kind: str, key: str, expect: str, reason: str = "") -> None:
        self.cases.append(Case(kind, key, expect, reason))


def build_good_pairs(folder: HostileFolder, n: int = 6) -> None:
    for i in range(n):
        folder.good_pair(f"good_{i:02d}", ".png" if i % 2 == 0 else ".jpg")


def build_hostile_files(folder: HostileFolder) -> None:  # noqa: PLR0915 - one line per kind
    """Add every kind of hostile file next to the good pairs (at least 40 kinds)."""
    f, rng = folder, folder.rng
    good_png = png(f.image())
    good_jpeg = jpeg(f.image(size=(96, 128)))
    ramp = (np.arange(SIZE[0] * SIZE[1]).reshape(SIZE) * 20).astype(np.uint16)

    # --- empty and not-an-image
    f.bad("empty file", "images/empty.png", b"", reason="empty file")
    f.bad("text with an image suffix", "images/notes.png", b"patient list, do not share\n", reason="not an image")
    f.bad("PNG signature only", "images/signature.png", good_png[:8], reason="corrupt or truncated PNG")
    f.bad("random bytes", "images/random.jpg", rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), reason="not an image")
    # --- PNG damage
    f.bad("truncated PNG (half)", "images/trunc_half.png", good_png[: len(good_png) // 2], reason="PNG")
    f.bad("truncated PNG (header only)", "images/trunc_header.png", good_png[:33], reason="PNG")
    f.bad("PNG with a flipped bit in IHDR", "images/flip_ihdr.png", flip_bits(good_png, rng, 1, 16, 29), reason="CRC")
    f.bad("PNG with flipped bits in IDAT", "images/flip_idat.png",
          flip_bits(good_png, rng, 3, 60, len(good_png) - 20), reason="PNG")
    f.bad("PNG with an invalid colour type", "images/bad_colour.png",
          b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 48, 8, 5, 0, 0, 0)) + good_png[33:],
          reason="invalid colour type")
    f.bad("PNG declaring 0x0 pixels", "images/zero_size.png", png_declaring(0, 0, idat_bytes=10), reason="")
    f.bad("PNG bomb 30000x30000 (0.9 MB file)", "images/bomb.png", png_declaring(30000, 30000), reason="declares 30000×30000")
    f.bad("16-bit RGBA PNG declaring 16000x16000", "images/bomb16.png",
          png_declaring(16000, 16000, bit_depth=16, colour_type=6, idat_bytes=100_000), reason="over the budget")
    f.write("images/bombmask.png", png(f.image()))
    f.bad("bomb mask 30000x30000", "masks/bombmask.png", png_declaring(30000, 30000), reason="mask: declares")
    frames = [Image.fromarray(f.image()), Image.fromarray(f.image())]
    f.bad("animated PNG (2 frames)", "images/animated.png",
          pil_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:]), reason="animated PNG")
    # --- JPEG damage
    f.bad("truncated JPEG (half)", "images/trunc_half.jpg", good_jpeg[: len(good_jpeg) // 2], reason="JPEG")
    f.bad("JPEG start marker only", "images/soi.jpg", good_jpeg[:4], reason="JPEG")
    f.bad("JPEG bomb 65000x65000", "images/bomb.jpg", jpeg_declaring(good_jpeg, 65000, 65000), reason="declares 65000×65000")
    f.bad("JPEG declaring 0 rows", "images/zero_rows.jpg", jpeg_declaring(good_jpeg, 128, 0), reason="")
    f.bad("JPEG with flipped bits in the entropy data", "images/flip_scan.jpg",
          flip_bits(good_jpeg, rng, 2, len(good_jpeg) // 2, len(good_jpeg) - 4), expect="no_crash", with_mask=True)
    f.bad("JPEG with flipped bits in the headers", "images/flip_headers.jpg",
          flip_bits(good_jpeg, rng, 6, 2, 200), expect="no_crash", with_mask=True)
    # --- DICOM
    f.bad("DICOM without pixel data", "images/nopixels.dcm", dicom(ramp, with_pixels=False), reason="without pixel data")
    f.bad("truncated DICOM", "images/trunc.dcm", dicom(ramp)[:-1000], reason="DICOM")
    f.bad("DICOM with flipped bits", "images/flip.dcm", flip_bits(dicom(ramp), rng, 8, 132), expect="no_crash", with_mask=True)
    f.bad("DICOM with garbage after the preamble", "images/garbage.dcm", dicom(ramp)[:132] + b"\xff" * 300, reason="DICOM")
    f.bad("multi-frame DICOM", "images/multiframe.dcm", dicom(np.stack([ramp, ramp]), frames=2), reason="multi-frame")
    f.bad("DICOM with 12 bits allocated", "images/bits12.dcm", dicom(ramp, bits=12), reason="Bits Allocated")
    f.bad("DICOM declaring 60000x60000", "images/bomb.dcm", dicom(ramp, rows=60000, columns=60000), reason="declares 60000×60000")
    # --- links and names
    os.symlink("does_not_exist.png", f.root / "images/dangling.png")
    f.case("dangling symbolic link", "images/dangling.png", "error", "dangling symbolic link")
    os.symlink("loop_b.png", f.root / "images/loop_a.png")
    os.symlink("loop_a.png", f.root / "images/loop_b.png")
    f.case("symbolic link loop", "images/loop_a.png", "error", "symbolic link loop")
    f.case("symbolic link loop (other end)", "images/loop_b.png", "error", "symbolic link loop")
    (f.root / "images/a_folder").mkdir()
    os.symlink("a_folder", f.root / "images/folder_link.png")
    f.case("link to a folder", "images/folder_link.png", "error", "a folder, not a file")
    non_utf8 = os.fsdecode(b"images/caf\xe9.png")
    (f.root / non_utf8).write_bytes(png(f.image()))
    f.case("non-UTF-8 file name", non_utf8, "error", "not valid UTF-8")
    # --- masks
    f.write("images/graymask.png", png(f.image()))
    f.bad("non-binary mask", "masks/graymask.png", png(cv2.GaussianBlur(lung_mask(SIZE), (9, 9), 3)),
          reason="non-binary mask")
    f.write("images/aspectmask.png", png(f.image()))
    f.bad("mask of another aspect ratio", "masks/aspectmask.png", png(lung_mask((48, 200))),
          reason="aspect ratio differs")
    f.write("images/truncmask.png", png(f.image()))
    mask_png = png(lung_mask(SIZE))
    f.bad("truncated mask", "masks/truncmask.png", mask_png[: len(mask_png) - 30], reason="mask: corrupt or truncated PNG")
    f.bad("image without a mask", "images/nomask.png", png(f.image()), reason="missing mask")
    f.write("masks/orphan.png", mask_png)
    f.case("mask without an image", "masks/orphan.png", "warning", "mask without an image")
    f.write("images/emptymask.png", png(f.image()))
    f.write("masks/emptymask.png", png(np.zeros(SIZE, np.uint8)))
    f.case("all-zero mask", "masks/emptymask.png", "warning", "empty mask")
    f.write("images/fullmask.png", png(f.image()))
    f.write("masks/fullmask.png", png(np.full(SIZE, 255, np.uint8)))
    f.case("all-255 mask", "masks/fullmask.png", "warning", "full mask")
    # --- suspicious but legal images
    f.write("images/sliver.png", png(f.image(size=(3, 4000))))
    f.write("masks/sliver.png", png(lung_mask((3, 4000))))
    f.case("4000x3 image", "images/sliver.png", "warning", "extreme aspect ratio 4000x3")
    f.write("images/zz_duplicate.png", (f.root / f.good_keys[0]).read_bytes())
    f.write("masks/zz_duplicate.png", mask_png)
    f.case("exact duplicate of a good image", "images/zz_duplicate.png", "error", f"exact duplicate (same SHA-256) of {f.good_keys[0]}")
    # --- legal oddities that must decode correctly
    odd = f.image()
    legal: list[tuple[str, str, bytes]] = [
        ("1-bit PNG", "odd_1bit.png", pil_bytes(Image.fromarray(odd > 128), "PNG")),
        ("2-bit PNG", "odd_2bit.png", pil_bytes(Image.fromarray(odd // 64), "PNG", bits=2)),
        ("4-bit PNG", "odd_4bit.png", pil_bytes(Image.fromarray(odd // 16), "PNG", bits=4)),
        ("interlaced PNG", "odd_interlaced.png", _interlaced_png(odd)),
        ("palette PNG", "odd_palette.png", pil_bytes(Image.fromarray(odd).convert("P"), "PNG")),
        ("gray + alpha PNG", "odd_gray_alpha.png", pil_bytes(Image.fromarray(np.dstack([odd, np.full_like(odd, 255)]), "LA"), "PNG")),
        ("16-bit PNG with 12-bit content", "odd_16bit.png", png(odd.astype(np.uint16) * 16)),
        ("CMYK JPEG", "odd_cmyk.jpg", pil_bytes(Image.fromarray(odd).convert("CMYK"), "JPEG", quality=95)),
        ("progressive JPEG", "odd_progressive.jpg", pil_bytes(Image.fromarray(odd), "JPEG", progressive=True)),
        ("1-bit DICOM", "odd_dicom_1bit.dcm", dicom(ramp, bits=1, pixel_bytes=np.packbits(  # stripes 7 px wide
            (ramp // 140 % 2).astype(np.uint8).ravel(), bitorder="little").tobytes())),
        ("32-bit DICOM", "odd_dicom_32bit.dcm", dicom(ramp.astype(np.uint32) * 1000, bits=32)),
        ("8-bit DICOM", "odd_dicom_8bit.dcm", dicom((ramp // 256).astype(np.uint8), bits=8)),
        ("file name with a comma, quote and newline", 'odd_"quoted", name\nline.png', png(f.image())),
        ("file name of 230 bytes", "odd_" + "é" * 111 + ".png", png(f.image())),
    ]
    for kind, name, data in legal:
        f.bad(kind, f"images/{name}", data, expect="accepted", with_mask=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    f.bad("EXIF-rotated JPEG (orientation 6)", "images/odd_exif.jpg",
          pil_bytes(Image.fromarray(odd), "JPEG", exif=exif, quality=95), expect="accepted")
    f.write("masks/odd_exif.png", png(lung_mask((SIZE[1], SIZE[0]))))  # the displayed, rotated size
    f.bad("same stem, other extension (PNG)", "images/odd_twin.png", png(f.image()), expect="accepted", with_mask=True)
    f.bad("same stem, other extension (JPEG)", "images/odd_twin.jpg", jpeg(f.image()), expect="accepted")


def _interlaced_png(array: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit gray PNG (neither OpenCV nor Pillow writes one)."""
    height, width = array.shape
    passes = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
    raw = b""
    for y0, x0, dy, dx in passes:
        sub = array[y0::dy, x0::dx]
        if sub.size:
            raw += b"".join(b"\x00" + row.tobytes() for row in sub)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw))
            + png_chunk(b"IEND", b""))


def build_folder(root: Path, seed: int, hostile: bool) -> HostileFolder:
    folder = HostileFolder(root, np.random.default_rng(seed))
    build_good_pairs(folder)
    if hostile:
        build_hostile_files(folder)
    return folder

