"""Thrift protocols with size limits, and compact protocol version 2 (fbthrift).

fbthrift's compact protocol (what Katran's own C++ client speaks) differs
from Apache's in two places only: the version bits of the message header
(``0x82 0x22``: version 2 in the low five bits) and doubles, which version 2
writes big-endian and version 1 little-endian.  ``CompactProtocol`` reads
either version and writes the version of the last message it read, so a
reply goes out in the version the request came in.

Both protocols refuse a declared string or container beyond its limit before
anything is allocated (``LimitExceeded`` names the limit's flag and value).
"""

from __future__ import annotations

from struct import pack, unpack

from thrift.protocol.TBinaryProtocol import TBinaryProtocol
from thrift.protocol.TCompactProtocol import (
    CLEAR, CONTAINER_READ, CONTAINER_WRITE, VALUE_READ, VALUE_WRITE, TCompactProtocol, readVarint, writeVarint,
)
from thrift.protocol.TProtocol import TProtocolException

COMPACT_PROTOCOL_ID = 0x82
COMPACT_VERSIONS = (1, 2)  # 1: Apache Thrift, 2: fbthrift (big-endian doubles)
_VERSION_MASK = 0x1F
_TYPE_SHIFT = 5
_TYPE_BITS = 0x07


try:  # Apache Thrift's C encoder: replies (our own data) are written with it when it is built
    from thrift.protocol import fastbinary as _fastbinary
except ImportError:  # pragma: no cover - the pure-Python writer then does it
    _fastbinary = None


class LimitExceeded(TProtocolException):
    """A request exceeds one of the server's limits; the message names the flag."""

    def __init__(self, what: str, size: int, flag: str, limit: int) -> None:
        super().__init__(TProtocolException.SIZE_LIMIT, f"{what} of {size} exceeds -{flag}={limit}")
        self.flag = flag
        self.size = size
        self.limit = limit


class _Limits:
    """Mixin: string and container limits with clear errors (None: no limit), and the ids of
    the fields being read (``field_ids``), so a refusal can name the field."""

    max_string_size = None
    max_container_size = None

    def readStructBegin(self):
        self.__dict__.setdefault("field_ids", []).append(None)
        return super().readStructBegin()

    def readStructEnd(self):
        self.field_ids.pop()
        return super().readStructEnd()

    def readFieldBegin(self):
        name, ftype, fid = super().readFieldBegin()
        self.field_ids[-1] = fid
        return name, ftype, fid

    def _check_string_length(self, length: int) -> None:
        if length < 0:
            raise TProtocolException(TProtocolException.NEGATIVE_SIZE, f"negative string length {length}")
        if self.max_string_size is not None and length > self.max_string_size:
            raise LimitExceeded("string length", length, "max_string_size", self.max_string_size)

    def _check_container_length(self, length: int) -> None:
        if length < 0:
            raise TProtocolException(TProtocolException.NEGATIVE_SIZE, f"negative container size {length}")
        if self.max_container_size is not None and length > self.max_container_size:
            raise LimitExceeded("container size", length, "max_container_size", self.max_container_size)


class BinaryProtocol(_Limits, TBinaryProtocol):
    """Apache's binary protocol: requests are read in Python (so the limits always apply,
    with their flag in the error), replies written by the C encoder when available."""

    def __init__(self, trans, max_string_size=None, max_container_size=None) -> None:
        TBinaryProtocol.__init__(self, trans, strictRead=False, strictWrite=True)
        self.max_string_size = max_string_size
        self.max_container_size = max_container_size
        if _fastbinary is not None:
            self._fast_encode = _fastbinary.encode_binary


class CompactProtocol(_Limits, TCompactProtocol):
    """Compact protocol, versions 1 (Apache) and 2 (fbthrift).

    ``version`` is what ``writeMessageBegin`` writes and how doubles are
    encoded; ``readMessageBegin`` sets it to the version of the message read.
    """

    def __init__(self, trans, max_string_size=None, max_container_size=None, version: int = 1) -> None:
        TCompactProtocol.__init__(self, trans)
        if version not in COMPACT_VERSIONS:
            raise ValueError(f"compact protocol version {version}: expected 1 or 2")
        self.max_string_size = max_string_size
        self.max_container_size = max_container_size
        self.version = version

    # the generated code writes a struct with ``_fast_encode`` when it is set: Apache's C
    # encoder writes doubles little-endian, right for version 1 only
    @property
    def _fast_encode(self):
        return _fastbinary.encode_compact if _fastbinary is not None and self.version == 1 else None

    @_fast_encode.setter
    def _fast_encode(self, _value) -> None:
        pass  # TProtocolBase.__init__ sets it to None

    def readMessageBegin(self):
        assert self.state == CLEAR, self.state
        header = self.trans.readAll(2)
        if header[0] != COMPACT_PROTOCOL_ID:
            raise TProtocolException(TProtocolException.BAD_VERSION,
                                     f"bad compact protocol id 0x{header[0]:02x} (expected 0x82)")
        version = header[1] & _VERSION_MASK
        if version not in COMPACT_VERSIONS:
            raise TProtocolException(TProtocolException.BAD_VERSION,
                                     f"compact protocol version {version} (expected 1 or 2)")
        self.version = version
        mtype = (header[1] >> _TYPE_SHIFT) & _TYPE_BITS
        seqid = readVarint(self.trans) & 0xFFFFFFFF  # written as an unsigned varint
        if seqid > 0x7FFFFFFF:
            seqid -= 1 << 32
        size = readVarint(self.trans)
        self._check_string_length(size)
        name = self.trans.readAll(size).decode("utf-8", errors="replace")
        return name, mtype, seqid

    def writeMessageBegin(self, name, type, seqid):
        assert self.state == CLEAR, self.state
        self.trans.write(bytes((COMPACT_PROTOCOL_ID, (self.version | (type << _TYPE_SHIFT)) & 0xFF)))
        writeVarint(self.trans, seqid & 0xFFFFFFFF)
        raw = name.encode("utf-8")
        writeVarint(self.trans, len(raw))
        self.trans.write(raw)
        self.state = VALUE_WRITE

    def readDouble(self):
        assert self.state in (VALUE_READ, CONTAINER_READ), self.state
        (value,) = unpack(">d" if self.version == 2 else "<d", self.trans.readAll(8))
        return value

    def writeDouble(self, dub):
        assert self.state in (VALUE_WRITE, CONTAINER_WRITE), self.state
        self.trans.write(pack(">d" if self.version == 2 else "<d", dub))
