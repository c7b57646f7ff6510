"""Packet capture from the data plane: the filter, the records, a pcap writer.

The balancer records the packets it balances that match the global ``capture_filter``
(the object's ``.bss``) into the ring buffer ``capture_ring``: each packet as it came in
(direction ``in``) and as it goes out, encapsulated towards the real (``out``).  With no
capture running the fast path pays one load and one compare (``lb_capture.h``).  A
record the ring has no room for is counted as lost (``capture_stats``), never waited for.

``KatranLb.capture(...)`` returns a :class:`Capture`: a context manager and an iterator
of :class:`CapturedPacket`.  :class:`PcapWriter` writes them as a classic pcap file
(Ethernet link type, microsecond timestamps) that tcpdump and Wireshark read.
One capture at a time per balancer (there is one filter).
"""

from __future__ import annotations

import ipaddress
import struct
import threading
import time
from typing import BinaryIO, Callable, Iterator, Optional

import attrs

from . import contract, structs
from .errors import AlreadyExistsError, KatranError, KernelError, ValidationError
from .models import check_int, parse_prefix

MAX_SNAPLEN = contract.CAPTURE_MAX_SNAPLEN  # bytes a record keeps at most (the BPF side's buffer)
DEFAULT_SNAPLEN = MAX_SNAPLEN
F_VIP, F_REAL, F_SRC_V4, F_SRC_V6 = (contract.CAPTURE_FLAGS.value(n) for n in (
    "CAPTURE_F_VIP", "CAPTURE_F_REAL", "CAPTURE_F_SRC_V4", "CAPTURE_F_SRC_V6"))
DIRECTIONS = {contract.CAPTURE_DIRECTIONS.value("CAPTURE_DIR_IN"): "in",
              contract.CAPTURE_DIRECTIONS.value("CAPTURE_DIR_OUT"): "out"}
_HDR = contract.CAPTURE_HDR


@attrs.frozen
class CaptureFilter:
    """What to record, in data-plane terms (the VIP's number, the real's index)."""

    vip_num: Optional[int] = None
    real_index: Optional[int] = None
    src: Optional[object] = None  # ipaddress network
    snaplen: int = DEFAULT_SNAPLEN

    def pack(self, enabled: bool = True) -> bytes:
        flags = 0
        src = mask = bytes(16)
        if self.vip_num is not None:
            flags |= F_VIP
        if self.real_index is not None:
            flags |= F_REAL
        if self.src is not None:
            net = self.src
            flags |= F_SRC_V4 if net.version == 4 else F_SRC_V6
            src = net.network_address.packed.ljust(16, b"\0")
            mask = net.netmask.packed.ljust(16, b"\0")
        return contract.CAPTURE_FILTER.pack(int(enabled), flags, self.vip_num or 0, self.real_index or 0,
                                            min(self.snaplen, MAX_SNAPLEN), src, mask)


def check_snaplen(value: object) -> int:
    """snaplen: 1..65535 bytes (frames longer than MAX_SNAPLEN keep MAX_SNAPLEN)."""
    return check_int(value, "snaplen", 1, 65535)


def check_count(value: object) -> Optional[int]:
    """count: None or 0 (no limit), else a positive number of records."""
    if value is None or value == 0:
        return None
    return check_int(value, "count", 1, 2**32 - 1)


def check_src(value: object):  # type: ignore[no-untyped-def]
    if value is None or value == "":
        return None
    if isinstance(value, str) and "/" not in value:
        try:
            addr = ipaddress.ip_address(value)
            value = f"{value}/{addr.max_prefixlen}"
        except ValueError:
            pass
    return parse_prefix(value, "src")


@attrs.frozen
class CapturedPacket:
    """One frame the balancer saw (``in``) or sent (``out``)."""

    direction: str
    ifindex: int
    timestamp_ns: int  # wall clock (UTC, ns since the epoch)
    orig_len: int  # length of the frame
    data: bytes  # its first snaplen bytes


def parse_record(raw: bytes, wall_offset_ns: int = 0) -> CapturedPacket:
    """A capture_ring record (capture_hdr + bytes) -> CapturedPacket."""
    if len(raw) < _HDR.size:
        raise ValidationError("capture record", raw[:16].hex(), f"shorter than its {_HDR.size}-byte header")
    h = _HDR.unpack_dict(raw[:_HDR.size])
    data = raw[_HDR.size:_HDR.size + h["cap_len"]]
    return CapturedPacket(DIRECTIONS.get(h["direction"], str(h["direction"])), h["ifindex"],
                          h["tstamp_ns"] + wall_offset_ns, h["orig_len"], data)


def monotonic_to_wall_ns() -> int:
    """Add to a bpf_ktime_get_ns() value (CLOCK_MONOTONIC) to get wall-clock ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class PcapWriter:
    """A classic pcap file (magic a1b2c3d4, v2.4, LINKTYPE_ETHERNET, microseconds)."""

    LINKTYPE_ETHERNET = 1

    def __init__(self, out: BinaryIO, snaplen: int = 65535) -> None:
        self.out = out
        self.count = 0
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, self.LINKTYPE_ETHERNET))

    def write(self, pkt: CapturedPacket) -> None:
        sec, usec = divmod(pkt.timestamp_ns // 1000, 1_000_000)
        self.out.write(struct.pack("<IIII", sec, usec, len(pkt.data), pkt.orig_len) + pkt.data)
        self.count += 1

    def flush(self) -> None:
        self.out.flush()


class CaptureBusyError(AlreadyExistsError):
    """A capture is already running on this balancer (there is one capture filter)."""

    def __init__(self, message: str) -> None:
        self.what, self.key = "capture", "running"
        KatranError.__init__(self, message)


class Capture:
    """A running capture: iterate for packets, ``close()`` (or leave the ``with``) to stop.

    Built by ``KatranLb.capture``; ``ring``/``stats``/``bss`` are the loaded object's
    maps, ``bss_offset`` where ``capture_filter`` sits in ``.bss``, ``reader`` a ring
    reader (``Kernel.ring_reader``).
    """

    def __init__(self, filt: CaptureFilter, *, count: Optional[int], reader, bss, bss_offset: int,  # type: ignore[no-untyped-def]
                 stats, on_close: Callable[["Capture"], None]) -> None:
        self.filter = filt
        self.count = count
        self._reader = reader
        self._bss = bss
        self._bss_offset = bss_offset
        self._stats = stats
        self._on_close = on_close
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self.received = 0  # records handed out
        self._wall = monotonic_to_wall_ns()
        self._reader.drain()  # what an earlier capture left in the ring
        self._stats.update(structs.u32(0), contract.LB_STATS.pack(0, 0))
        self._write_filter(filt.pack(True))

    def _write_filter(self, packed: bytes) -> None:
        image = bytearray(self._bss.value_size)
        image[self._bss_offset:self._bss_offset + len(packed)] = packed
        self._bss.update(structs.u32(0), bytes(image))

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def done(self) -> bool:
        return self.closed or (self.count is not None and self.received >= self.count)

    def stats(self) -> tuple[int, int]:
        """(records written to the ring, records lost because it was full), summed over CPUs."""
        values = self._stats.lookup(structs.u32(0))
        if values is None:
            raise KernelError("lookup capture_stats[0]", 2)
        if isinstance(values, (bytes, bytearray)):
            values = [values]
        pairs = [contract.LB_STATS.unpack(v) for v in values]
        return sum(p[0] for p in pairs), sum(p[1] for p in pairs)

    @property
    def lost(self) -> int:
        return self.stats()[1]

    def poll(self, timeout: float = 0.1) -> list[CapturedPacket]:
        """Packets that arrive within ``timeout`` seconds (at most what ``count`` still allows)."""
        with self._lock:
            if self.done:
                return []
            raw = self._pending or self._reader.poll(max(0, int(timeout * 1000)))
            self._pending = []
            if self.count is not None:
                room = self.count - self.received
                raw, self._pending = raw[:room], raw[room:]
            self.received += len(raw)
            out = [parse_record(r, self._wall) for r in raw]
            if self.count is not None and self.received >= self.count:
                self._stop()
            return out

    def packets(self, timeout: Optional[float] = None) -> Iterator[CapturedPacket]:
        """Packets until ``count`` is reached, the capture is closed, or ``timeout`` seconds pass."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if wait <= 0:
                return
            yield from self.poll(wait)

    def __iter__(self) -> Iterator[CapturedPacket]:
        return self.packets()

    def _stop(self) -> None:
        """Turn the filter off (the fast path is back to one branch)."""
        if self._bss is not None:
            try:
                self._write_filter(CaptureFilter().pack(False))
            finally:
                self._bss = None

    def close(self) -> None:
        """Stop capturing and release the reader.  Safe to call twice, from any thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            try:
                self._stop()
            finally:
                self._reader.close()
                self._on_close(self)

    def __enter__(self) -> "Capture":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
