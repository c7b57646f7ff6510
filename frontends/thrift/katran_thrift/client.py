"""``ThriftKatranClient``: katran-cli's ``KatranClient`` interface over thrift.

The interface and its errors are ``katran_frontend.client``'s, as for
``katran_grpc.client.GrpcKatranClient``: katran.models values in and out; a
refused update raises ``OperationFailed``, any other failed call ``RpcFailed`` (codes are gRPC
status names so katran-cli prints them the same way).  Methods of our gRPC
extension service, which Katran's thrift service does not have, raise
``RpcFailed(code="UNIMPLEMENTED")``.

``client_from_flags`` is katran-cli's "thrift" transport (``katran-cli -thrift ...``).
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import Any, NoReturn, Optional

from thrift.protocol.TBinaryProtocol import TBinaryProtocolAccelerated
from thrift.protocol.TCompactProtocol import TCompactProtocolAccelerated
from thrift.protocol.THeaderProtocol import THeaderProtocol
from thrift.Thrift import TApplicationException, TException
from thrift.transport.THeaderTransport import THeaderClientType, THeaderSubprotocolID
from thrift.transport.TSocket import TSocket
from thrift.transport.TTransport import TBufferedTransport, TFramedTransport, TTransportException

from katran.errors import ValidationError
from katran.models import Flow, HashFunction, LbStats, ModifyAction, QuicReal, Real, VipKey
from katran_frontend import THRIFT_DEFAULT_SERVER
from katran_frontend.client import KatranClient, OperationFailed, RpcFailed
from katran_frontend.security import token_from_file, unix_path

from .gen import KatranService
from .gen.ttypes import Healthcheck, Mac, QuicReal as TQuicReal, Real as TReal, RealMeta, Stats, Vip, VipMeta

DEFAULT_SERVER = THRIFT_DEFAULT_SERVER
TRANSPORTS = ("header", "framed", "buffered")
PROTOCOLS = ("compact", "binary")
_U32 = (1 << 32) - 1
_NOT_IN_THRIFT = "not part of Katran's thrift KatranService (use the gRPC server)"


def split_server(server: str) -> tuple[str, int]:
    """'host:port' / '[v6]:port' -> (host, port); ValidationError(field 'server') otherwise."""
    if unix_path(server) is not None:
        if not unix_path(server):
            raise ValidationError("server", server, "expected unix:PATH with a path")
        return unix_path(server), 0
    host, sep, port = str(server).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValidationError("server", server, "expected host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _i32(value: int, field: str) -> int:
    """Katran's IDL has i32 fields for values we hold as unsigned."""
    if not -(1 << 31) <= value < (1 << 31):
        raise ValidationError(field, value, "does not fit the i32 field of Katran's thrift IDL")
    return value


def _vip(vip: VipKey) -> Vip:
    return Vip(address=str(vip.address), port=vip.port, protocol=vip.proto)


def _real(real: Real) -> TReal:
    return TReal(address=str(real.address), weight=_i32(real.weight, "real.weight"), flags=real.flags)


def _code_of(exc: TApplicationException) -> str:
    """The gRPC status name for an error reply (our server's refusals have their own texts)."""
    text = exc.message or ""
    if exc.type == TApplicationException.UNKNOWN_METHOD:
        return "UNIMPLEMENTED"
    if text.startswith("unauthenticated:"):
        return "UNAUTHENTICATED"
    if exc.type == TApplicationException.PROTOCOL_ERROR and " exceeds -max_" in text:
        return "RESOURCE_EXHAUSTED"  # what gRPC answers to a request over its size limits
    return "UNKNOWN"


def _stats(stats: Stats) -> LbStats:
    return LbStats(stats.v1 or 0, stats.v2 or 0)


class ThriftKatranClient(KatranClient):
    """KatranClient over Katran's thrift KatranService (ours or Katran's C++ server).

    ``server``: host:port or unix:PATH; ``transport``: header (fbthrift's
    default), framed or buffered; ``protocol``: compact or binary;
    ``ssl_context``: TLS (with a client certificate for mTLS servers);
    ``token``: bearer token for servers started with -token_file (sent in the
    THeader 'authorization' header, so it needs the header transport).
    Connects lazily, reconnects after a transport error; one call at a time
    (a lock serialises threads).
    """

    def __init__(self, server: str = DEFAULT_SERVER, *, transport: str = "header", protocol: str = "compact",
                 timeout: Optional[float] = 30.0, ssl_context: Optional[ssl.SSLContext] = None,
                 server_name: str = "", token: Optional[bytes] = None) -> None:
        if transport not in TRANSPORTS:
            raise ValidationError("transport", transport, f"expected one of {', '.join(TRANSPORTS)}")
        if protocol not in PROTOCOLS:
            raise ValidationError("protocol", protocol, f"expected one of {', '.join(PROTOCOLS)}")
        if token and transport != "header":
            raise ValidationError("thrift_transport", transport, "a token travels in THeader headers: use header")
        self.host, self.port = split_server(server)
        self.unix = unix_path(server) is not None
        self.server = server
        self._ssl = ssl_context
        self._server_name = server_name
        self._token = token
        self.transport = transport
        self.protocol = protocol
        self._timeout = timeout
        self._lock = threading.Lock()
        self._trans = None
        self._client: Optional[KatranService.Client] = None

    # ------------------------------------------------------------- plumbing
    def _open_socket(self) -> socket.socket:
        if self.unix:
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            raw.settimeout(self._timeout)
            try:
                raw.connect(self.host)
            except OSError:
                raw.close()
                raise
        else:
            raw = socket.create_connection((self.host, self.port), timeout=self._timeout)
        if self._ssl is not None:
            try:
                raw = self._ssl.wrap_socket(raw, server_hostname=self._server_name or self.host)
            except (OSError, ssl.SSLError):
                raw.close()
                raise
        return raw

    def _connect(self) -> KatranService.Client:
        sock = TSocket()
        sock.setHandle(self._open_socket())
        if self.transport == "header":
            subproto = THeaderSubprotocolID.COMPACT if self.protocol == "compact" else THeaderSubprotocolID.BINARY
            proto = THeaderProtocol(sock, [THeaderClientType.HEADERS], subproto)
            trans = proto.trans
        else:
            trans = TFramedTransport(sock) if self.transport == "framed" else TBufferedTransport(sock)
            factory = TCompactProtocolAccelerated if self.protocol == "compact" else TBinaryProtocolAccelerated
            proto = factory(trans)
        self._trans = trans
        return KatranService.Client(proto)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._trans is not None:
            try:
                self._trans.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
        self._trans = None
        self._client = None

    def _call(self, rpc: str, *args: Any) -> Any:
        with self._lock:
            try:
                if self._client is None:
                    self._client = self._connect()
                if self._token:  # the THeader transport sends its headers with the next frame only
                    self._trans.set_header(b"authorization", b"Bearer " + self._token)
                return getattr(self._client, rpc)(*args)
            except TApplicationException as exc:  # the server answered with an error
                raise RpcFailed(rpc, _code_of(exc), exc.message or "") from None
            except TTransportException as exc:
                self._drop()
                code = "DEADLINE_EXCEEDED" if exc.type == TTransportException.TIMED_OUT else "UNAVAILABLE"
                raise RpcFailed(rpc, code, exc.message or str(exc)) from None
            except (TException, OSError) as exc:
                self._drop()
                raise RpcFailed(rpc, "UNAVAILABLE", str(exc)) from None

    def _ok(self, rpc: str, *args: Any) -> None:
        """A bool RPC: False, or an error reply, means the server refused."""
        try:
            ok = self._call(rpc, *args)
        except RpcFailed as exc:
            if exc.code == "UNKNOWN":
                raise OperationFailed(rpc, exc.code, exc.message) from None
            raise
        if not ok:
            raise OperationFailed(rpc, "UNKNOWN", "operation failed")

    @staticmethod
    def _unimplemented(rpc: str) -> NoReturn:
        raise RpcFailed(rpc, "UNIMPLEMENTED", _NOT_IN_THRIFT)

    # ------------------------------------------------------------- KatranService
    def change_mac(self, mac: str) -> None:
        self._ok("changeMac", Mac(mac=mac))

    def get_mac(self) -> str:
        return self._call("getMac").mac

    def add_vip(self, vip: VipKey, flags: int = 0) -> None:
        self._ok("addVip", VipMeta(vip=_vip(vip), flags=flags))

    def del_vip(self, vip: VipKey) -> None:
        self._ok("delVip", _vip(vip))

    def get_all_vips(self) -> list[VipKey]:
        return [VipKey(v.address, v.port, v.protocol) for v in self._call("getAllVips")]

    def modify_vip(self, vip: VipKey, flags: int, set_flag: bool = True) -> None:
        self._ok("modifyVip", VipMeta(vip=_vip(vip), flags=flags, setFlag=set_flag))

    def get_vip_flags(self, vip: VipKey) -> int:
        return self._call("getVipFlags", _vip(vip))

    def modify_real(self, address: str, flags: int, set_flag: bool = True) -> None:
        self._ok("modifyReal", RealMeta(address=str(address), flags=_i32(flags, "flags"), setFlag=set_flag))

    def get_real_flags(self, address: str) -> int:
        self._unimplemented("getRealFlags")

    def add_real_for_vip(self, real: Real, vip: VipKey) -> None:
        self._ok("addRealForVip", _real(real), _vip(vip))

    def del_real_for_vip(self, real: Real, vip: VipKey) -> None:
        self._ok("delRealForVip", _real(real), _vip(vip))

    def modify_reals_for_vip(self, action: ModifyAction, reals: list[Real], vip: VipKey) -> None:
        self._ok("modifyRealsForVip", int(action), [_real(r) for r in reals], _vip(vip))

    def get_reals_for_vip(self, vip: VipKey) -> list[Real]:
        return [Real(r.address, (r.weight or 0) & _U32, r.flags or 0) for r in self._call("getRealsForVip", _vip(vip))]

    def modify_quic_reals_mapping(self, action: ModifyAction, reals: list[QuicReal]) -> None:
        qreals = [TQuicReal(address=str(q.address), id=_i32(q.id, "quic_real.id")) for q in reals]
        self._ok("modifyQuicRealsMapping", int(action), qreals)

    def get_quic_reals_mapping(self) -> list[QuicReal]:
        return [QuicReal(q.address, (q.id or 0) & _U32) for q in self._call("getQuicRealsMapping")]

    def get_stats_for_vip(self, vip: VipKey) -> LbStats:
        return _stats(self._call("getStatsForVip", _vip(vip)))

    def get_lru_stats(self) -> LbStats:
        return _stats(self._call("getLruStats"))

    def get_lru_miss_stats(self) -> LbStats:
        return _stats(self._call("getLruMissStats"))

    def get_lru_fallback_stats(self) -> LbStats:
        return _stats(self._call("getLruFallbackStats"))

    def get_icmp_too_big_stats(self) -> LbStats:
        return _stats(self._call("getIcmpTooBigStats"))

    def add_healthchecker_dst(self, somark: int, address: str) -> None:
        self._ok("addHealthcheckerDst", Healthcheck(somark=_i32(somark, "somark"), address=str(address)))

    def del_healthchecker_dst(self, somark: int) -> None:
        self._ok("delHealthcheckerDst", _i32(somark, "somark"))

    def get_healthcheckers_dst(self) -> dict[int, str]:
        return {somark & _U32: addr for somark, addr in self._call("getHealthcheckersDst").items()}

    # ------------------------------------------------------------- gRPC-only extensions
    def get_index_for_real(self, address: str) -> int:
        self._unimplemented("getIndexForReal")

    def get_real_stats(self, index: int) -> LbStats:
        self._unimplemented("getRealStats")

    def get_xdp_total_stats(self) -> LbStats:
        self._unimplemented("getXdpTotalStats")

    def get_xdp_tx_stats(self) -> LbStats:
        self._unimplemented("getXdpTxStats")

    def get_xdp_drop_stats(self) -> LbStats:
        self._unimplemented("getXdpDropStats")

    def get_xdp_pass_stats(self) -> LbStats:
        self._unimplemented("getXdpPassStats")

    def get_ch_drop_stats(self) -> LbStats:
        self._unimplemented("getChDropStats")

    def get_encap_fail_stats(self) -> LbStats:
        self._unimplemented("getEncapFailStats")

    def get_malformed_stats(self) -> LbStats:
        self._unimplemented("getMalformedStats")

    def get_flow_cache_stats(self) -> LbStats:
        self._unimplemented("getFlowCacheStats")

    def get_katran_lb_stats(self) -> LbStats:
        self._unimplemented("getKatranLbStats")

    def get_per_core_packets_stats(self) -> list[int]:
        self._unimplemented("getPerCorePacketsStats")

    def change_hash_function_for_vip(self, vip: VipKey, hash_function: HashFunction) -> None:
        self._unimplemented("changeHashFunctionForVip")

    def get_hash_function_for_vip(self, vip: VipKey) -> HashFunction:
        self._unimplemented("getHashFunctionForVip")

    def get_real_for_flow(self, flow: Flow) -> Optional[str]:
        self._unimplemented("getRealForFlow")

    def get_hc_program_stats(self):
        self._unimplemented("getHealthcheckProgramStats")


def tls_client_context(ca: str = "", cert: str = "", key: str = "", server_name: str = "") -> Optional[ssl.SSLContext]:
    """A client TLS context (CA to verify the server, cert/key for mTLS), or None for plaintext."""
    if not (ca or cert or key or server_name):
        return None
    if bool(cert) != bool(key):
        raise ValidationError("tls_cert" if not cert else "tls_key", cert or key,
                              "mTLS needs both -tls_cert and -tls_key")
    try:
        ctx = ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValidationError("tls_ca", ca, f"cannot load: {getattr(exc, 'strerror', None) or exc}") from None
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ValidationError("tls_cert", cert, f"cannot load certificate/key: {reason}") from None
    return ctx


def client_from_flags(ns: Any) -> ThriftKatranClient:
    """katran-cli's ``client_factory``: -thrift_server (else an explicit -server, else
    unix:/run/katran/katran-thrift.sock), -thrift_transport, -thrift_protocol, -timeout,
    -tls_ca/-tls_cert/-tls_key/-tls_server_name, -token_file (missing flags: defaults)."""
    server = getattr(ns, "thrift_server", "")
    if not server and hasattr(ns, "is_set") and ns.is_set("server"):
        server = ns.server
    server_name = getattr(ns, "tls_server_name", "")
    return ThriftKatranClient(
        server or DEFAULT_SERVER,
        transport=getattr(ns, "thrift_transport", "") or "header",
        protocol=getattr(ns, "thrift_protocol", "") or "compact",
        timeout=getattr(ns, "timeout", 30.0) or None,
        ssl_context=tls_client_context(getattr(ns, "tls_ca", ""), getattr(ns, "tls_cert", ""),
                                       getattr(ns, "tls_key", ""), server_name),
        server_name=server_name,
        token=token_from_file(getattr(ns, "token_file", "")),
    )
