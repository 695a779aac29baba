"""Image headers without decoding pixels: format by content, size, and cheap truncation checks.

A file whose end marker is missing from its last KiB is decoded once to tell truncation
from data appended after the image.

Supported: PNG (IHDR, IEND at the end), JPEG (SOF marker, EOI at the end), WebP (VP8, VP8L,
VP8X; the RIFF size against the file size) and BMP (the header against the file size).
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from typing import BinaryIO

FORMATS = ("png", "jpeg", "webp", "bmp")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FORMAT_NAMES = {"png": "PNG", "jpeg": "JPEG", "webp": "WebP", "bmp": "BMP"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND\xaeB`\x82"
_HEAD = 4096
_TAIL = 1024
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_STANDALONE = {0x01, *range(0xD0, 0xD8)}


#: Pillow refuses to decode images over twice its ``Image.MAX_IMAGE_PIXELS`` (decompression-bomb
#: protection), so the trainer could never load them: the scan leaves them out.
MAX_PIXELS = 2 * (1024 * 1024 * 1024 // 4 // 3)


#: Why a device, pipe or socket named like an image is left out (it is never read).
NOT_FILE = "it is not a regular file (a device, pipe or socket)"


@dataclass(frozen=True)
class ImageHeader:
    """What the header of one file says.

    ``problem`` is None for a usable image, else ``"empty"``, ``"truncated"``, ``"corrupt"``,
    ``"too_large"``, ``"unreadable"``, ``"not_image"`` or ``"not_file"`` (a device, pipe or socket);
    ``detail`` says what exactly.
    """

    format: str | None
    width: int = 0
    height: int = 0
    problem: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the file is a usable image."""
        return self.problem is None


class _Bad(Exception):
    def __init__(self, problem: str, detail: str) -> None:
        super().__init__(detail)
        self.problem = problem
        self.detail = detail


def sniff_format(head: bytes) -> str | None:
    """The image format the first bytes of a file announce, or None."""
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack_from("<I", head, 14)[0] in (12, 40, 52, 56, 64, 108, 124):
        return "bmp"
    return None


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def read_header(path: str | os.PathLike[str]) -> ImageHeader:
    """Read the format, width and height of an image file and check its end is there.

    Never raises for a bad file: the problem is in the result.
    """
    try:
        # O_NONBLOCK: a pipe named like an image must not hang the scan; it is refused below.
        with open(path, "rb", opener=_open_nonblocking) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                return ImageHeader(None, problem="not_file", detail=NOT_FILE)
            size = info.st_size
            if size == 0:
                return ImageHeader(None, problem="empty", detail="the file is empty (0 bytes)")
            head = handle.read(_HEAD)
            fmt = sniff_format(head)
            if fmt is None:
                return ImageHeader(None, problem="not_image", detail="the content is not a PNG, JPEG, WebP or BMP image")
            try:
                width, height = _READERS[fmt](handle, head, size)
            except (_Bad, struct.error, IndexError) as exc:
                problem = exc.problem if isinstance(exc, _Bad) else "truncated" if len(head) < 64 else "corrupt"
                detail = exc.detail if isinstance(exc, _Bad) else f"the {FORMAT_NAMES[fmt]} header is cut short or damaged"
                return ImageHeader(fmt, problem=problem, detail=detail)
            if width <= 0 or height <= 0:
                return ImageHeader(fmt, width, height, "corrupt", f"the {FORMAT_NAMES[fmt]} header gives an impossible size {width}x{height}")
            if width * height > MAX_PIXELS:
                return ImageHeader(
                    fmt,
                    width,
                    height,
                    "too_large",
                    f"it is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than the {MAX_PIXELS / 1e6:.0f} the trainer's image decoder accepts",
                )
            return ImageHeader(fmt, width, height)
    except OSError as exc:
        return ImageHeader(None, problem="unreadable", detail=f"it cannot be read ({exc.strerror or exc})")


def _tail(handle: BinaryIO, size: int) -> bytes:
    handle.seek(max(0, size - _TAIL))
    return handle.read(_TAIL)


def _decodes(path: str) -> bool:
    """Whether PIL decodes the whole file (asked only when the cheap end check fails).

    Data appended after the end marker, as in motion photos, is not truncation.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception:  # noqa: BLE001 - any image Pillow cannot load is unreadable
        return False
    return True


def _png(handle: BinaryIO, head: bytes, size: int) -> tuple[int, int]:
    if len(head) < 24:
        raise _Bad("truncated", "the PNG ends inside its header (the file was cut short)")
    if head[12:16] != b"IHDR":
        raise _Bad("corrupt", "the PNG has no IHDR chunk where it must be")
    width, height = struct.unpack_from(">II", head, 16)
    if _PNG_IEND not in _tail(handle, size) and not _decodes(handle.name):
        raise _Bad("truncated", "the PNG ends before its IEND chunk (the file was cut short)")
    return width, height


def exif_orientation(segment: bytes) -> int:
    """The EXIF orientation (1-8) in a JPEG APP1 segment's payload, 1 when absent or unreadable."""
    if not segment.startswith(b"Exif\x00\x00") or len(segment) < 14:
        return 1
    tiff = segment[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):
            tag, _, _, value = struct.unpack_from(order + "HHIH", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112:
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def _jpeg(handle: BinaryIO, head: bytes, size: int) -> tuple[int, int]:
    """Width and height as shown: EXIF orientations 5-8 (rotated 90°) swap them."""
    buffer, base, pos = head, 0, 2
    orientation = 1
    while True:
        if pos + 9 > base + len(buffer):
            handle.seek(pos)
            buffer, base = handle.read(_HEAD), pos
            if len(buffer) < 4:
                raise _Bad("truncated", "the JPEG ends before its frame header (the file was cut short)")
        offset = pos - base
        if buffer[offset] != 0xFF:
            raise _Bad("corrupt", "the JPEG markers are damaged")
        marker = buffer[offset + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            raise _Bad("corrupt", "the JPEG has no frame header (SOF marker)")
        if marker in _JPEG_SOF:
            if offset + 9 > len(buffer):
                raise _Bad("truncated", "the JPEG ends inside its frame header")
            height, width = struct.unpack_from(">HH", buffer, offset + 5)
            if b"\xff\xd9" not in _tail(handle, size) and not _decodes(handle.name):
                raise _Bad("truncated", "the JPEG ends before its end marker (the file was cut short)")
            return (height, width) if orientation >= 5 else (width, height)
        (length,) = struct.unpack_from(">H", buffer, offset + 2)
        if length < 2:
            raise _Bad("corrupt", "the JPEG has a segment of impossible length")
        if marker == 0xE1:
            handle.seek(pos + 4)
            orientation = exif_orientation(handle.read(min(length - 2, 65533))) if orientation == 1 else orientation
        pos += 2 + length
        if pos >= size:
            raise _Bad("truncated", "the JPEG ends before its frame header (the file was cut short)")


def _webp(handle: BinaryIO, head: bytes, size: int) -> tuple[int, int]:
    (riff_size,) = struct.unpack_from("<I", head, 4)
    if size < riff_size + 8:
        raise _Bad("truncated", f"the WebP is {size} bytes but its header says {riff_size + 8} (the file was cut short)")
    chunk = head[12:16]
    if chunk == b"VP8 ":
        if head[23:26] != b"\x9d\x01\x2a":
            raise _Bad("corrupt", "the WebP VP8 frame has no start code")
        width, height = struct.unpack_from("<HH", head, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        if head[20] != 0x2F:
            raise _Bad("corrupt", "the WebP VP8L signature is missing")
        (bits,) = struct.unpack_from("<I", head, 21)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
        return width, height
    raise _Bad("corrupt", "the WebP has no VP8, VP8L or VP8X chunk")


def _bmp(handle: BinaryIO, head: bytes, size: int) -> tuple[int, int]:
    file_size, _, offset, dib = struct.unpack_from("<IIII", head, 2)
    if dib == 12:
        width, height, _, bpp = struct.unpack_from("<HHHH", head, 18)
        compression = 0
    else:
        width, height, _, bpp, compression = struct.unpack_from("<iiHHI", head, 18)
    height = abs(height)
    needed = file_size
    if compression in (0, 3, 6):
        needed = max(needed, offset + (width * bpp + 31) // 32 * 4 * height)
    if size < needed:
        raise _Bad("truncated", f"the BMP is {size} bytes but its header needs {needed} (the file was cut short)")
    return width, height


_READERS = {"png": _png, "jpeg": _jpeg, "webp": _webp, "bmp": _bmp}


def content_digest(handle: BinaryIO) -> str:
    """The blake2b digest of a whole file from its open handle, read in 1 MiB chunks (the scan's
    duplicate check and the caption layer's key; ``hashlib.file_digest`` needs Python 3.11)."""
    hasher = hashlib.blake2b()
    while chunk := handle.read(1 << 20):
        hasher.update(chunk)
    return hasher.hexdigest()
