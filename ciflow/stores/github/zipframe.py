"""The value format of ``github://``: a stored ZIP archive with one member named ``data``.

That is what ``actions/upload-artifact`` uploads, so the GitHub UI and
``actions/download-artifact`` show the value. `zip_frame` gives the bytes around a value (ZIP64
when large); `unzip_first` streams a member out, stored or deflated, as official clients write.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Callable, Iterator

from ..base import StoreError
from .blobs import CorruptDownload

__all__ = ["unzip_first", "zip_frame"]


def _dos_time(when: float) -> tuple[int, int]:
    t = time.gmtime(when)
    year = max(1980, t.tm_year)
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), (
        ((year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    )


def zip_frame(size: int, crc: int, *, zip64: bool | None = None) -> tuple[bytes, bytes]:
    """Header and trailer of a stored ZIP archive whose one member ``data`` has ``size`` bytes."""
    name = b"data"
    big = size >= 0xFFFFFFFF - 256 if zip64 is None else zip64
    mtime, mdate = _dos_time(time.time())
    version = 45 if big else 20
    small = 0xFFFFFFFF if big else size
    extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, version, 0, 0, mtime, mdate, crc, small, small,
        len(name), len(extra),
    ) + name + extra  # fmt: skip
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, version | (3 << 8), version, 0, 0, mtime, mdate, crc,
        small, small, len(name), len(extra), 0, 0, 0, 0o100644 << 16, 0,
    ) + name + extra  # fmt: skip
    cd_offset = len(local) + size
    tail = b""
    if big:
        z64_offset = cd_offset + len(central)
        tail += struct.pack(
            "<IQHHIIQQQQ", 0x06064B50, 44, 45 | (3 << 8), 45, 0, 0, 1, 1, len(central), cd_offset
        )
        tail += struct.pack("<IIQI", 0x07064B50, 0, z64_offset, 1)
    eocd = struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central),
        0xFFFFFFFF if big else cd_offset, 0,
    )  # fmt: skip
    return local, central + tail + eocd


class _Reader:
    """Exact reads from an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buf = b""

    def _more(self) -> bool:
        for chunk in self.chunks:
            if chunk:
                self.buf += chunk
                return True
        return False

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise CorruptDownload("archive ends early")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def stream(self, n: int | None) -> Iterator[bytes]:
        """Up to ``n`` bytes (all if None) in chunks; `CorruptDownload` if fewer exist."""
        left = n
        while left is None or left > 0:
            if not self.buf and not self._more():
                if left is None:
                    return
                raise CorruptDownload("archive ends early")
            take = len(self.buf) if left is None else min(left, len(self.buf))
            out, self.buf = self.buf[:take], self.buf[take:]
            if left is not None:
                left -= take
            yield out


def unzip_first(chunks: Iterator[bytes], write: Callable[[bytes], object], what: str) -> None:
    """Stream the first member of a ZIP archive (stored or deflated) to ``write``."""
    reader = _Reader(chunks)
    head = reader.exact(30)
    sig, _, flags, method, _, _, crc, csize, usize, nlen, xlen = struct.unpack("<IHHHHHIIIHH", head)
    if sig != 0x04034B50:
        raise StoreError(f"{what} is not a ciflow archive (no ZIP header)")
    reader.exact(nlen)
    extra = reader.exact(xlen)
    if 0xFFFFFFFF in (csize, usize):
        pos = 0
        while pos + 4 <= len(extra):
            tag, length = struct.unpack_from("<HH", extra, pos)
            if tag == 1:
                fields = list(struct.unpack_from(f"<{length // 8}Q", extra, pos + 4))
                if usize == 0xFFFFFFFF and fields:
                    usize = fields.pop(0)
                if csize == 0xFFFFFFFF and fields:
                    csize = fields.pop(0)
            pos += 4 + length
    if flags & 1:
        raise StoreError(f"{what} is an encrypted archive")
    check = 0
    if method == 0 and not flags & 8:
        for part in reader.stream(csize):
            check = zlib.crc32(part, check)
            write(part)
    elif method == 8:
        inflater = zlib.decompressobj(-15)
        for part in reader.stream(None):
            out = inflater.decompress(part)
            check = zlib.crc32(out, check)
            write(out)
            if inflater.eof:
                reader.buf = inflater.unused_data + reader.buf
                break
        if not inflater.eof:
            raise CorruptDownload("archive ends early")
        if flags & 8:
            first = struct.unpack("<I", reader.exact(4))[0]
            crc = struct.unpack("<I", reader.exact(4))[0] if first == 0x08074B50 else first
    else:
        raise StoreError(f"{what}: unsupported ZIP member (method {method}, flags {flags:#x})")
    if check != crc:
        raise CorruptDownload("checksum mismatch")
