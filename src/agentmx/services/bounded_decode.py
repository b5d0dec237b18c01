"""Decoding a downloaded body's Content-Encoding with a cap on the decoded bytes.

A decoder that inflates each received chunk whole lets a few hundred kilobytes of gzip become
hundreds of megabytes in memory before any size check runs (a "gzip bomb"). This one asks zlib for
no more than the bytes still allowed, so it stops as soon as the cap is passed.
"""

from __future__ import annotations

import zlib

ACCEPT_ENCODING = "gzip, deflate"  # the only codings ``BoundedDecoder`` reads
GZIP_WBITS = 16 + zlib.MAX_WBITS
ZLIB_WBITS = zlib.MAX_WBITS
RAW_DEFLATE_WBITS = -zlib.MAX_WBITS
PIECE = 256 * 1024  # decoded bytes asked of zlib at a time
ZLIB_HEADER_BYTES = 2


class DecodedTooLarge(Exception):
    """The decoded body passed its cap."""


class UnsupportedEncoding(Exception):
    """A Content-Encoding the decoder does not read (none other was asked for)."""


class BoundedDecoder:
    """``feed`` raw body chunks, get decoded ones; DecodedTooLarge once more than ``limit`` decoded
    bytes would come out. Reads identity, gzip (every member) and deflate (zlib-wrapped or raw, as
    servers send both)."""

    def __init__(self, content_encoding: str, limit: int) -> None:
        coding = content_encoding.strip().lower()
        if coding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise UnsupportedEncoding(content_encoding)
        self.remaining = limit
        # gzip bodies may be several members one after another (gzip(1) and browsers read them all).
        self._members = coding in ("gzip", "x-gzip")
        self._header = b""  # deflate's first bytes, until there are enough to tell zlib from raw
        self._sniffing = coding == "deflate"
        self._inflate: zlib._Decompress | None = None
        if self._members:
            self._inflate = zlib.decompressobj(GZIP_WBITS)
        elif coding == "deflate":
            self._inflate = zlib.decompressobj(ZLIB_WBITS)

    def feed(self, data: bytes) -> bytes:
        if self._inflate is None:
            return self._count(data)
        if self._sniffing:
            self._header += data
            if len(self._header) < ZLIB_HEADER_BYTES:  # one byte cannot tell a zlib header from raw deflate
                return b""
            data, self._header, self._sniffing = self._header, b"", False
            if not _has_zlib_header(data):  # raw deflate, as some servers send "deflate"
                self._inflate = zlib.decompressobj(RAW_DEFLATE_WBITS)
        return self._decode(data)

    def flush(self) -> bytes:
        if self._inflate is None:
            return b""
        rest = self._count(self._inflate.flush())
        if not self._inflate.eof:  # the compressed stream was cut short: its bytes are not the file
            raise zlib.error("compressed body ends before its stream does")
        return rest

    def _decode(self, data: bytes) -> bytes:
        assert self._inflate is not None
        out: list[bytes] = []
        while True:
            if self._inflate.eof:
                # Bytes after a gzip member start the next one (not a member: zlib.error, refused),
                # but NUL padding is ignored as gzip(1) and Python's gzip do; after a deflate stream
                # anything is ignored.
                if not (data and self._members) or not data.strip(b"\0"):
                    break
                self._inflate = zlib.decompressobj(GZIP_WBITS)
            # At most one byte past what is allowed (enough to tell the cap was passed), in pieces
            # so no single allocation is the whole allowance.
            asked = min(self.remaining + 1, PIECE)
            piece = self._inflate.decompress(data, asked)
            out.append(self._count(piece))
            data = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
            if not data and len(piece) < asked:  # input used up and no output held back
                break
        return b"".join(out)

    def _count(self, data: bytes) -> bytes:
        self.remaining -= len(data)
        if self.remaining < 0:
            raise DecodedTooLarge
        return data


def _has_zlib_header(data: bytes) -> bool:
    """RFC 1950's two-byte header: deflate method, a window zlib takes, a check that is a multiple
    of 31, and no preset dictionary (which no HTTP body can name)."""
    cmf, flg = data[0], data[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0 and not flg & 0x20
