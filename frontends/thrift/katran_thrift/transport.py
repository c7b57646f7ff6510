"""The thrift server's transport: one listener, every dialect, bounded everything.

Dialects, detected per request from its first bytes and answered in kind:

* THeader (``len 0x0FFF ...``; binary or compact payload; fbthrift's default),
* framed (``len 0x8001`` / ``len 0x82``) and unframed (``0x8001`` / ``0x82``)
  binary or compact; compact in version 1 (Apache) or 2 (fbthrift).

Resources are bounded: one event-loop thread holds every idle connection
(none holds a thread), a connection with a request to read is handed to a
fixed pool of ``workers`` threads, which reads one request within
``read_timeout`` seconds, answers it (and, while no other connection waits,
the ones the client sends right after) and gives the connection back.  A frame
(or an unframed message) above ``max_message_size`` bytes, a string above
``max_string_size`` or a container above ``max_container_size`` elements is
refused before it is read or allocated; connections idle for ``idle_timeout``
seconds are closed; at ``max_connections`` a new connection replaces the one
idle the longest, or is closed at once when every connection is busy.  Every
refusal is a log line naming the limit (and, when the request's method is
known, a TApplicationException to the client).

Who may call: a unix socket is protected by its file mode; on TCP the
server can require a TLS client certificate (``ssl_context`` with
``CERT_REQUIRED``) or a bearer token in the THeader ``authorization``
header (``token``); see docs/security.md.
"""

from __future__ import annotations

import hmac
import logging
import select
import selectors
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, Tuple

import attrs
from thrift.protocol.TProtocol import TProtocolException
from thrift.Thrift import TApplicationException, TException, TMessageType, TType
from thrift.transport.TTransport import TTransportBase, TTransportException

from .protocol import BinaryProtocol, CompactProtocol, LimitExceeded

log = logging.getLogger("katran_thrift.server")

HEADER_MAGIC = b"\x0f\xff"
PROTO_BINARY, PROTO_COMPACT = 0, 2  # THeader protocol ids
TRANSFORM_ZLIB = 1
INFO_KEYVALUE, INFO_PKEYVALUE = 1, 2
AUTH_HEADER = b"authorization"
_CALLER = threading.local()  # peer / credential of the request this worker thread serves


def current_caller() -> tuple:
    """(peer, credential) of the request being served on this thread ((None, None) outside one)."""
    return getattr(_CALLER, "peer", None), getattr(_CALLER, "credential", None)

_LINGER_MS = 5  # a worker waits this long for a connection's next request before handing it back
_MAX_IN_A_ROW = 256  # then it goes back to the event loop anyway (fairness)
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


@attrs.frozen
class ServerLimits:
    """Limits of one server (sizes in bytes, times in seconds)."""

    max_message_size: int = 4 << 20  # one frame / unframed message
    max_string_size: int = 1 << 16
    max_container_size: int = 1 << 16  # elements of one list/set/map
    idle_timeout: float = 300.0  # between requests
    read_timeout: float = 10.0  # to receive one request once it started (and TLS handshakes)
    max_connections: int = 256
    workers: int = 8

    def __attrs_post_init__(self) -> None:
        for name in ("max_message_size", "max_string_size", "max_container_size", "max_connections", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be at least 1")
        for name in ("idle_timeout", "read_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be positive")


def field_name(processor, method: str, ids: list) -> str:
    """The dotted name of the argument field being read (``newMac.mac``) from the ids the
    protocol saw and the generated ``<method>_args`` spec; '' when it cannot be told."""
    module = sys.modules.get(type(processor).__module__)
    cls = getattr(module, f"{method}_args", None)
    names = []
    for fid in ids:
        spec = getattr(cls, "thrift_spec", None)
        if fid is None or spec is None or not 0 <= fid < len(spec) or spec[fid] is None:
            break
        _, ftype, name, args = spec[fid][:4]
        names.append(name)
        if ftype in (TType.LIST, TType.SET) and args and args[0] == TType.STRUCT:
            args = args[1]  # (element type, [element class, spec], ...)
        cls = args[0] if isinstance(args, (list, tuple)) and args else None
        if not isinstance(cls, type):
            break
    return ".".join(names)


class _Refused(Exception):
    """A request we answer with an error (when we can) and then close."""


class _Closed(Exception):
    """The peer closed the connection, or went silent."""


# ---------------------------------------------------------------- connection
class _Conn:
    """One client connection: its socket and the bytes read ahead."""

    def __init__(self, sock: socket.socket, peer: str, local: bool) -> None:
        self.sock = sock
        self.peer = peer
        self.buf = bytearray()
        self.last_active = time.monotonic()
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.handshaken = not self.tls
        # a unix socket is authorised by its file mode, a TLS client by its
        # certificate (checked in the handshake); others must show the token
        self.authenticated = local
        self.closed = False

    def has_pending(self) -> bool:
        return bool(self.buf) or (self.tls and self.handshaken and self.sock.pending() > 0)

    def fill(self, n: int, deadline: float) -> None:
        """Have at least n bytes in buf (raises _Closed on EOF / timeout)."""
        while len(self.buf) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Closed("timed out reading a request")
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(max(65536, min(n - len(self.buf), 1 << 20)))
            except (socket.timeout, TimeoutError):
                raise _Closed("timed out reading a request") from None
            if not chunk:
                raise _Closed("peer closed the connection mid-request" if self.buf else "")
            self.buf += chunk

    def take(self, n: int, deadline: float) -> bytes:
        self.fill(n, deadline)
        with memoryview(self.buf) as view:
            out = bytes(view[:n])  # one copy, even for a large frame
        del self.buf[:n]
        return out

    def send(self, data: bytes, timeout: float) -> None:
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class _Exchange(TTransportBase):
    """The transport one request is read from and its reply written to."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.out = bytearray()

    def isOpen(self) -> bool:
        return True

    def read(self, sz: int) -> bytes:
        return self._read(sz)

    def readAll(self, sz: int) -> bytes:
        return self._read(sz)

    def write(self, buf: bytes) -> None:
        self.out += buf

    def flush(self) -> None:
        pass


def _frame_reader(payload: bytes) -> Callable[[int], bytes]:
    view = memoryview(payload)
    pos = 0

    def read(sz: int) -> bytes:
        nonlocal pos
        if sz < 0 or pos + sz > len(view):
            raise TTransportException(TTransportException.END_OF_FILE, "request ends inside its frame")
        out = bytes(view[pos:pos + sz])
        pos += sz
        return out

    return read


def _varint(data: bytes, pos: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    for _ in range(10):
        if pos >= end:
            raise _Refused("malformed THeader: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise _Refused("malformed THeader: varint over 10 bytes")


def _write_varint(out: bytearray, n: int) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


@attrs.define
class _Header:
    flags: int
    seqid: int
    protocol_id: int
    headers: dict
    payload: bytes


def parse_theader(frame: bytes, max_size: int) -> _Header:
    """A THeader frame (without its length word) -> its fields (raises _Refused)."""
    if len(frame) < 10:
        raise _Refused("malformed THeader: frame shorter than its fixed header")
    flags = _U16.unpack_from(frame, 2)[0]
    seqid = _U32.unpack_from(frame, 4)[0]
    end = 10 + _U16.unpack_from(frame, 8)[0] * 4
    if end > len(frame):
        raise _Refused("malformed THeader: header size beyond the frame")
    protocol_id, pos = _varint(frame, 10, end)
    count, pos = _varint(frame, pos, end)
    transforms = []
    for _ in range(count):
        transform, pos = _varint(frame, pos, end)
        if transform != TRANSFORM_ZLIB:
            raise _Refused(f"THeader transform {transform} not supported (only zlib)")
        transforms.append(transform)
    headers = {}
    while pos < end:
        info, pos = _varint(frame, pos, end)
        if info not in (INFO_KEYVALUE, INFO_PKEYVALUE):
            break  # padding (0) or a kind we do not know: the rest is skipped
        pairs, pos = _varint(frame, pos, end)
        for _ in range(pairs):
            item = []
            for _ in range(2):
                size, pos = _varint(frame, pos, end)
                if pos + size > end:
                    raise _Refused("malformed THeader: header string beyond the headers")
                item.append(bytes(frame[pos:pos + size]))
                pos += size
            headers[item[0]] = item[1]
    payload = bytes(frame[end:])
    for _ in transforms:
        inflater = zlib.decompressobj()
        try:
            payload = inflater.decompress(payload, max_size)
        except zlib.error as exc:
            raise _Refused(f"THeader zlib payload: {exc}") from None
        if inflater.unconsumed_tail:
            raise LimitExceeded("inflated THeader payload", max_size + 1, "max_message_size", max_size)
    return _Header(flags, seqid, protocol_id, headers, payload)


def build_theader(head: _Header, payload: bytes) -> bytes:
    info = bytearray()
    _write_varint(info, head.protocol_id)
    _write_varint(info, 0)  # no transforms on replies
    info += b"\0" * (-len(info) % 4)
    body = HEADER_MAGIC + _U16.pack(head.flags) + _U32.pack(head.seqid) + _U16.pack(len(info) // 4) + bytes(info)
    return _U32.pack(len(body) + len(payload)) + body + payload


# ---------------------------------------------------------------- server
class ThriftTransportServer:
    """Serves ``processor`` (a generated thrift Processor) on a listening socket."""

    def __init__(self, processor, listener: socket.socket, *, limits: ServerLimits = ServerLimits(),
                 ssl_context: Optional[ssl.SSLContext] = None, token: Optional[bytes] = None) -> None:
        self.processor = processor
        self.limits = limits
        self._listener = listener
        self._unix = listener.family == socket.AF_UNIX
        self._ssl = None if self._unix else ssl_context
        self._token = None if self._unix else token
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)  # a full pipe already means "wake up"
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set = set()
        self._returned: deque = deque()
        self._pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="katran-thrift-worker")
        self._last_full_log = 0.0
        self._queued = 0  # connections handed to the pool, not yet picked up by a worker

    # ------------------------------------------------------------ loop
    def serve_forever(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        idle: dict = {}  # conn -> registered in the selector
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                timeout = None
                if idle:
                    oldest = min(c.last_active for c in idle)
                    timeout = max(0.05, oldest + self.limits.idle_timeout - now)
                for key, _ in sel.select(timeout):
                    obj = key.fileobj
                    if obj is self._listener:
                        if not self._stopping.is_set():
                            conn = self._accept(sel, idle)
                            if conn is not None:
                                sel.register(conn.sock, selectors.EVENT_READ, conn)
                                idle[conn] = True
                    elif obj is self._wake_r:
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                    else:
                        conn = key.data
                        sel.unregister(conn.sock)
                        del idle[conn]
                        self._dispatch(conn)
                while self._returned:
                    conn = self._returned.popleft()
                    if conn.closed or self._stopping.is_set():
                        continue
                    if conn.has_pending():
                        self._dispatch(conn)
                    else:
                        sel.register(conn.sock, selectors.EVENT_READ, conn)
                        idle[conn] = True
                now = time.monotonic()
                for conn in [c for c in idle if now - c.last_active >= self.limits.idle_timeout]:
                    log.info("closing connection from %s: idle for %.0f s (-idle_timeout)", conn.peer,
                             now - conn.last_active)
                    sel.unregister(conn.sock)
                    del idle[conn]
                    self._forget(conn)
        finally:
            sel.close()
            self._close_all()

    def _accept(self, sel, idle: dict) -> Optional[_Conn]:
        try:
            sock, addr = self._listener.accept()
        except OSError:
            return None
        peer = "unix socket" if self._unix else f"{addr[0]}:{addr[1]}"
        with self._lock:
            full = len(self._conns) >= self.limits.max_connections
        if full and idle:
            # make room: the connection idle the longest goes (idle connections must not lock
            # new clients out), as if its -idle_timeout had passed
            oldest = min(idle, key=lambda c: c.last_active)
            log.info("closing connection from %s, idle for %.1f s: -max_connections=%d reached", oldest.peer,
                     time.monotonic() - oldest.last_active, self.limits.max_connections)
            sel.unregister(oldest.sock)
            del idle[oldest]
            self._forget(oldest)
        elif full:
            now = time.monotonic()
            if now - self._last_full_log > 1.0:  # at most one line a second under a flood
                self._last_full_log = now
                log.warning("refusing connection from %s: %d connections open, all busy (-max_connections)", peer,
                            self.limits.max_connections)
            sock.close()
            return None
        if self._ssl is not None:
            try:
                sock = self._ssl.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ssl.SSLError) as exc:
                log.info("TLS setup for %s failed: %s", peer, exc)
                sock.close()
                return None
        conn = _Conn(sock, peer, local=self._unix)
        with self._lock:
            self._conns.add(conn)
        return conn

    def _dispatch(self, conn: _Conn) -> None:
        with self._lock:
            self._queued += 1
        try:
            self._pool.submit(self._work, conn)
        except RuntimeError:  # pool shut down
            with self._lock:
                self._queued -= 1
            self._forget(conn)

    def _give_back(self, conn: _Conn) -> None:
        self._returned.append(conn)
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _forget(self, conn: _Conn) -> None:
        with self._lock:
            self._conns.discard(conn)
        conn.close()

    # ------------------------------------------------------------ workers
    def _work(self, conn: _Conn) -> None:
        with self._lock:
            self._queued -= 1
        keep = False
        try:
            if not conn.handshaken:
                self._handshake(conn)
                keep = True
            else:
                keep = self._serve_one(conn)
                # a client calling in sequence sends its next request within microseconds:
                # serve it here instead of a round trip through the event loop, unless
                # other connections wait for a worker
                served = 1
                while keep and served < _MAX_IN_A_ROW and not self._stopping.is_set() and self._next_soon(conn):
                    keep = self._serve_one(conn)
                    served += 1
        except _Closed as exc:
            if str(exc):
                log.info("connection from %s closed: %s", conn.peer, exc)
        except LimitExceeded as exc:
            log.warning("refusing a request from %s: %s", conn.peer, exc)
        except _Refused as exc:
            log.warning("refusing a request from %s: %s", conn.peer, exc)
        except (OSError, TTransportException, ssl.SSLError) as exc:
            log.info("connection from %s dropped: %s", conn.peer, exc)
        except TException as exc:
            log.warning("bad request from %s: %s", conn.peer, exc)
        except Exception:  # noqa: BLE001 - one connection must not stop the others
            log.exception("connection from %s: unexpected error", conn.peer)
        if keep and not self._stopping.is_set():
            conn.last_active = time.monotonic()
            self._give_back(conn)
        else:
            self._forget(conn)

    def _next_soon(self, conn: _Conn) -> bool:
        with self._lock:
            if self._queued:
                return False
        if conn.has_pending():
            return True
        poller = select.poll()
        poller.register(conn.sock.fileno(), select.POLLIN)
        return bool(poller.poll(_LINGER_MS))

    def _handshake(self, conn: _Conn) -> None:
        conn.sock.settimeout(self.limits.read_timeout)
        try:
            conn.sock.do_handshake()
        except (socket.timeout, TimeoutError):
            raise _Closed("TLS handshake timed out") from None
        except ssl.SSLError as exc:
            log.info("TLS handshake with %s failed: %s", conn.peer, exc.reason or exc)
            raise _Closed() from None
        conn.handshaken = True
        if self._ssl.verify_mode == ssl.CERT_REQUIRED:
            conn.authenticated = True  # the handshake verified its certificate

    def _serve_one(self, conn: _Conn) -> bool:
        """Read one request, answer it; True to keep the connection."""
        limits = self.limits
        deadline = time.monotonic() + limits.read_timeout
        conn.fill(2, deadline)
        head: Optional[_Header] = None
        if conn.buf[0] == 0x80 and conn.buf[1] == 0x01:
            kind, proto_id = "unframed", PROTO_BINARY
        elif conn.buf[0] == 0x82:
            kind, proto_id = "unframed", PROTO_COMPACT
        else:
            conn.fill(4, deadline)
            size = _U32.unpack_from(conn.buf, 0)[0]
            if size > limits.max_message_size:
                raise LimitExceeded(f"frame size (first bytes {bytes(conn.buf[:4]).hex()})", size,
                                    "max_message_size", limits.max_message_size)
            del conn.buf[:4]
            frame = conn.take(size, deadline)
            if frame[:2] == HEADER_MAGIC:
                kind = "header"
                head = parse_theader(frame, limits.max_message_size)
                proto_id, payload = head.protocol_id, head.payload
                if proto_id not in (PROTO_BINARY, PROTO_COMPACT):
                    raise _Refused(f"THeader protocol id {proto_id} not supported (0 binary, 2 compact)")
            elif frame[:2] == b"\x80\x01":
                kind, proto_id, payload = "framed", PROTO_BINARY, frame
            elif frame[:1] == b"\x82":
                kind, proto_id, payload = "framed", PROTO_COMPACT, frame
            else:
                raise _Refused(f"not a thrift request (frame starts with {frame[:4].hex() or 'nothing'})")

        if kind == "unframed":
            budget = limits.max_message_size
            used = 0

            def read(sz: int) -> bytes:
                nonlocal used
                if used + sz > budget:
                    raise LimitExceeded("unframed message size", used + sz, "max_message_size", budget)
                used += sz
                return conn.take(sz, deadline)

            exchange = _Exchange(read)
        else:
            exchange = _Exchange(_frame_reader(payload))
        proto = self._protocol(proto_id, exchange)

        called: dict = {}
        read_begin = proto.readMessageBegin

        def recording_read_begin():
            name, mtype, seqid = read_begin()
            called.update(name=name, seqid=seqid)
            return name, mtype, seqid

        proto.readMessageBegin = recording_read_begin
        try:
            if not conn.authenticated:
                refusal = self._authorize(conn, kind, head)
                if refusal:
                    proto.readMessageBegin()  # to answer the call by name
                    raise _Refused(refusal)
            _CALLER.peer = conn.peer
            _CALLER.credential = self._credential(conn, head)
            try:
                self.processor.process(proto, proto)
            except UnicodeDecodeError:  # a string argument that is not UTF-8 (Apache's readString)
                raise TProtocolException(TProtocolException.INVALID_DATA, "not valid UTF-8 text") from None
        except (LimitExceeded, _Refused, TProtocolException) as exc:
            if called:
                code = (TApplicationException.UNKNOWN if isinstance(exc, _Refused)
                        else TApplicationException.PROTOCOL_ERROR)
                text = str(exc)
                field = field_name(self.processor, called.get("name", ""), getattr(proto, "field_ids", []))
                if field and not isinstance(exc, _Refused):
                    text = f"{field}: {text}"
                self._reply_error(conn, kind, head, proto_id, getattr(proto, "version", 1), called, code, text)
                if kind != "unframed" and not isinstance(exc, _Refused):
                    # the whole frame was read and answered: the connection goes on
                    log.warning("refused a request from %s: %s", conn.peer, exc)
                    return True
            raise
        if exchange.out:
            self._send(conn, kind, head, bytes(exchange.out))
        return True

    def _credential(self, conn: _Conn, head: Optional[_Header]) -> str:
        """How the caller of this request was authenticated (never the secret itself)."""
        if self._unix:
            return "unix socket"
        if self._ssl is not None and self._ssl.verify_mode == ssl.CERT_REQUIRED:
            return "client certificate"
        if self._token is not None:
            return "bearer token"
        return "none (-insecure)"

    def _protocol(self, proto_id: int, trans):
        limits = self.limits
        if proto_id == PROTO_COMPACT:
            return CompactProtocol(trans, limits.max_string_size, limits.max_container_size)
        return BinaryProtocol(trans, limits.max_string_size, limits.max_container_size)

    def _authorize(self, conn: _Conn, kind: str, head: Optional[_Header]) -> str:
        """'' if the connection may call (and is remembered as such), else why not."""
        if self._token is None:
            if self._ssl is not None and self._ssl.verify_mode == ssl.CERT_REQUIRED:
                return "unauthenticated: no verified client certificate"
            conn.authenticated = True
            return ""
        if kind != "header":
            return ("unauthenticated: this listener needs a token in the THeader 'authorization' header "
                    f"(or a client certificate); the {kind} transport carries no headers")
        value = head.headers.get(AUTH_HEADER, b"")
        if not hmac.compare_digest(value, b"Bearer " + self._token):
            return "unauthenticated: missing or wrong token in the THeader 'authorization' header"
        conn.authenticated = True
        return ""

    def _reply_error(self, conn, kind, head, proto_id, version, called, code, text) -> None:
        out = _Exchange(_frame_reader(b""))
        proto = self._protocol(proto_id, out)
        if isinstance(proto, CompactProtocol):
            proto.version = version
        proto.writeMessageBegin(called["name"], TMessageType.EXCEPTION, called["seqid"])
        TApplicationException(code, text[:512]).write(proto)
        proto.writeMessageEnd()
        try:
            self._send(conn, kind, head, bytes(out.out))
        except OSError:
            pass

    def _send(self, conn: _Conn, kind: str, head: Optional[_Header], payload: bytes) -> None:
        if kind == "header":
            data = build_theader(head, payload)
        elif kind == "framed":
            data = _U32.pack(len(payload)) + payload
        else:
            data = payload
        conn.send(data, self.limits.read_timeout)

    # ------------------------------------------------------------ control
    def shutdown(self) -> None:
        """Stop accepting, close every connection; safe from any thread, idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def _close_all(self) -> None:
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._pool.shutdown(wait=True, cancel_futures=True)
        for conn in conns:
            conn.close()
        self._wake_r.close()
        self._wake_w.close()
