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


class DecodedTooLarge(Exception):
    """The decoded body passed its cap."""


class UnsupportedEncoding(Exception):
    """A Content-Encoding the decoder does not read (none other was asked for)."""


class BoundedDecoder:
    """``feed`` raw body chunks, get decoded ones; DecodedTooLarge once more than ``limit`` decoded
    bytes would come out. Reads identity, gzip and deflate (zlib-wrapped or raw, as servers send both)."""

    def __init__(self, content_encoding: str, limit: int) -> None:
        coding = content_encoding.strip().lower()
        if coding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            raise UnsupportedEncoding(content_encoding)
        self.coding = coding
        self.remaining = limit
        self._first = True
        self._inflate: zlib._Decompress | None = None
        if coding in ("gzip", "x-gzip"):
            self._inflate = zlib.decompressobj(GZIP_WBITS)
        elif coding == "deflate":
            self._inflate = zlib.decompressobj(ZLIB_WBITS)

    def feed(self, data: bytes) -> bytes:
        if self._inflate is None:
            return self._count(data)
        if self.coding == "deflate" and self._first and data:
            self._first = False
            try:
                return self._decode(data)
            except zlib.error:  # no zlib header: raw deflate, as some servers send "deflate"
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
        while not self._inflate.eof:
            # At most one byte past what is allowed (enough to tell the cap was passed), in pieces
            # so no single allocation is the whole allowance.
            asked = min(self.remaining + 1, PIECE)
            piece = self._inflate.decompress(data, asked)
            out.append(self._count(piece))
            data = self._inflate.unconsumed_tail
            if not data and len(piece) < asked:  # input used up and no output held back
                break
        return b"".join(out)

    def _count(self, data: bytes) -> bytes:
        self.remaining -= len(data)
        if self.remaining < 0:
            raise DecodedTooLarge
        return data
