"""``GrpcKatranClient``: katran-cli's ``KatranClient`` interface over gRPC
(``lb.katran.KatranService`` plus ``lb.katran.ext.KatranExtService``).

The interface and its errors (``OperationFailed``, ``RpcFailed``) are
``katran_frontend.client``'s; ``client_from_flags`` is the CLI's "grpc" transport.
A refused Bool RPC (status CANCELLED, as Katran's C++ server answers; older
servers: Bool{success: false} with status OK) raises ``OperationFailed`` whose
``code`` is the katran reason code from the trailing metadata when the server
sends it (ours does; Katran's server does not: "CANCELLED") and ``message`` the
status details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import grpc

from katran.errors import ValidationError
from katran.models import Flow, HashFunction, LbStats, ModifyAction, QuicReal, Real, VipKey, parse_address
from katran_frontend import GRPC_DEFAULT_SERVER
from katran_frontend.client import KatranClient, OperationFailed, RealHealth, RpcFailed

from . import ERROR_CODE_KEY, ERROR_KEY
from . import EXT_SERVICE, KATRAN_SERVICE
from . import katran_ext_pb2 as ext_pb
from . import katran_pb2 as pb

if TYPE_CHECKING:
    from katran.healthcheck import HcStats

if TYPE_CHECKING:
    from katran.capture import CapturedPacket

DEFAULT_SERVER = GRPC_DEFAULT_SERVER
_U32 = (1 << 32) - 1


def _int32(value: int, field: str) -> int:
    """Katran's proto has int32 fields for values we hold as unsigned."""
    if not -(1 << 31) <= value < (1 << 31):
        raise ValidationError(field, value, "does not fit the int32 field of Katran's protocol")
    return value


def _vip_msg(vip: VipKey) -> pb.Vip:
    return pb.Vip(address=str(vip.address), port=vip.port, protocol=vip.proto)


def _vip_from_msg(msg: pb.Vip) -> VipKey:
    return VipKey(msg.address, msg.port, msg.protocol)


def _lru_filter_msg(vip: Optional[VipKey], real: Optional[str], src: Optional[str], limit: int) -> ext_pb.LruFilter:
    msg = ext_pb.LruFilter(real=str(real or ""), src=str(src or ""), limit=limit)
    if vip is not None:
        msg.vip.CopyFrom(_vip_msg(vip))
    return msg


def _lru_entry(e: ext_pb.LruEntry):
    from katran.flows import LruEntry

    return LruEntry(source=e.source, vip=_vip_from_msg(e.vip) if e.HasField("vip") else None,
                    src=parse_address(e.src, "src"), src_port=e.src_port, dst=parse_address(e.dst, "dst"),
                    dst_port=e.dst_port, proto=e.protocol, real=parse_address(e.real, "real") if e.real else None,
                    real_index=e.real_index, atime=e.atime_ns,
                    age_s=e.age_seconds if e.HasField("age_seconds") else None)


def _real_msg(real: Real) -> pb.Real:
    return pb.Real(address=str(real.address), weight=_int32(real.weight, "real.weight"), flags=real.flags)


def _stats(msg: pb.Stats) -> LbStats:
    return LbStats(msg.v1, msg.v2)


def _counters(msg) -> dict[str, int]:
    """A counters message (QuicPacketsStats, ...) as KatranLb's dict, in field order."""
    return {field.name: getattr(msg, field.name) for field in msg.DESCRIPTOR.fields}


def _prefixes(srcs: Sequence[str]) -> list[str]:
    if isinstance(srcs, str):
        raise ValidationError("srcs", srcs, "expected a list of prefixes, not one string")
    return [str(s) for s in srcs]


def channel_credentials(ca: str = "", cert: str = "", key: str = "") -> Optional[grpc.ChannelCredentials]:
    """TLS credentials from PEM files (client cert/key for mTLS), or None for plaintext."""
    if not (ca or cert or key):
        return None

    def read(path: str, field: str) -> Optional[bytes]:
        if not path:
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as exc:
            raise ValidationError(field, path, f"cannot read: {exc.strerror}") from None

    if bool(cert) != bool(key):
        raise ValidationError("tls_cert" if not cert else "tls_key", cert or key, "mTLS needs both -tls_cert and -tls_key")
    return grpc.ssl_channel_credentials(
        root_certificates=read(ca, "tls_ca"), private_key=read(key, "tls_key"), certificate_chain=read(cert, "tls_cert")
    )


_MODULES = {pb.DESCRIPTOR.name: pb, ext_pb.DESCRIPTOR.name: ext_pb}


class _Stub:
    """``stub.<rpc>``: a unary-unary (or unary-stream) callable of one service, made on first use."""

    def __init__(self, channel: grpc.Channel, service_desc, full_name: str) -> None:
        self._channel = channel
        self._desc = service_desc
        self._full_name = full_name

    def __getattr__(self, rpc: str):
        method = self._desc.methods_by_name.get(rpc)
        if method is None:
            raise AttributeError(rpc)
        out = method.output_type
        response = getattr(_MODULES[out.file.name], out.name)
        make = self._channel.unary_stream if method.server_streaming else self._channel.unary_unary
        call = make(f"/{self._full_name}/{rpc}", request_serializer=_serialize,
                    response_deserializer=response.FromString)
        setattr(self, rpc, call)
        return call


def _serialize(msg) -> bytes:
    return msg.SerializeToString()


class GrpcKatranClient(KatranClient):
    """KatranClient over gRPC: lb.katran.KatranService (+ lb.katran.ext.KatranExtService)."""

    def __init__(self, server: str = DEFAULT_SERVER, *, timeout: Optional[float] = 30.0,
                 credentials: Optional[grpc.ChannelCredentials] = None, server_name: str = "",
                 token: Optional[bytes] = None) -> None:
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        # a bearer token for TCP servers started with -token_file (docs/security.md)
        self._metadata = (("authorization", "Bearer " + token.decode("ascii")),) if token else None
        if credentials is None:
            self._channel = grpc.insecure_channel(server, options=options)
        else:
            self._channel = grpc.secure_channel(server, credentials, options=options)
        # method callables made on first use from the services' descriptors (what the generated
        # *_pb2_grpc stubs do for every method up front: not importing them keeps katran-cli's start short)
        self._katran = _Stub(self._channel, pb.DESCRIPTOR.services_by_name["KatranService"], KATRAN_SERVICE)
        self._ext = _Stub(self._channel, ext_pb.DESCRIPTOR.services_by_name["KatranExtService"], EXT_SERVICE)
        self._timeout = timeout
        self.server = server

    def close(self) -> None:
        self._channel.close()

    # ------------------------------------------------------------- plumbing
    def _call(self, stub, rpc: str, request):
        try:
            return getattr(stub, rpc).with_call(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise RpcFailed(rpc, exc.code().name, exc.details() or "") from None

    def _katran_stub_call(self, rpc: str, request):
        return getattr(self._katran, rpc).with_call(request, timeout=self._timeout, metadata=self._metadata)

    def _get(self, rpc: str, request, *, ext: bool = False):
        return self._call(self._ext if ext else self._katran, rpc, request)[0]

    def _ok(self, rpc: str, request) -> None:
        try:
            response, call = self._katran_stub_call(rpc, request)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise RpcFailed(rpc, exc.code().name, exc.details() or "") from None
            meta = {m.key: m.value for m in (exc.trailing_metadata() or ())}
            raise OperationFailed(rpc, meta.get(ERROR_CODE_KEY, "CANCELLED"),
                                  exc.details() or meta.get(ERROR_KEY, "operation failed")) from None
        if not response.success:
            meta = {m.key: m.value for m in (call.trailing_metadata() or ())}
            raise OperationFailed(rpc, meta.get(ERROR_CODE_KEY, "UNKNOWN"), meta.get(ERROR_KEY, "operation failed"))

    # ------------------------------------------------------------- KatranService
    def change_mac(self, mac: str) -> None:
        self._ok("changeMac", pb.Mac(mac=mac))

    def get_mac(self) -> str:
        return self._get("getMac", pb.Empty()).mac

    def add_vip(self, vip: VipKey, flags: int = 0) -> None:
        self._ok("addVip", pb.VipMeta(vip=_vip_msg(vip), flags=flags))

    def del_vip(self, vip: VipKey) -> None:
        self._ok("delVip", _vip_msg(vip))

    def get_all_vips(self) -> list[VipKey]:
        return [VipKey(v.address, v.port, v.protocol) for v in self._get("getAllVips", pb.Empty()).vips]

    def modify_vip(self, vip: VipKey, flags: int, set_flag: bool = True) -> None:
        self._ok("modifyVip", pb.VipMeta(vip=_vip_msg(vip), flags=flags, setFlag=set_flag))

    def get_vip_flags(self, vip: VipKey) -> int:
        return self._get("getVipFlags", _vip_msg(vip)).flags

    def modify_real(self, address: str, flags: int, set_flag: bool = True) -> None:
        self._ok("modifyReal", pb.RealMeta(address=str(address), flags=_int32(flags, "flags"), setFlag=set_flag))

    def get_real_flags(self, address: str) -> int:
        return self._get("getRealFlags", pb.Real(address=str(address))).flags

    def add_real_for_vip(self, real: Real, vip: VipKey) -> None:
        self._ok("addRealForVip", pb.realForVip(real=_real_msg(real), vip=_vip_msg(vip)))

    def del_real_for_vip(self, real: Real, vip: VipKey) -> None:
        self._ok("delRealForVip", pb.realForVip(real=_real_msg(real), vip=_vip_msg(vip)))

    def modify_reals_for_vip(self, action: ModifyAction, reals: list[Real], vip: VipKey) -> None:
        msg = pb.modifiedRealsForVip(
            action=int(action), real=pb.Reals(reals=[_real_msg(r) for r in reals]), vip=_vip_msg(vip)
        )
        self._ok("modifyRealsForVip", msg)

    def get_reals_for_vip(self, vip: VipKey) -> list[Real]:
        reals = self._get("getRealsForVip", _vip_msg(vip)).reals
        return [Real(r.address, r.weight & _U32, r.flags) for r in reals]

    def modify_quic_reals_mapping(self, action: ModifyAction, reals: list[QuicReal]) -> None:
        qreals = [pb.QuicReal(address=str(q.address), id=_int32(q.id, "quic_real.id")) for q in reals]
        self._ok("modifyQuicRealsMapping", pb.modifiedQuicReals(action=int(action), reals=pb.QuicReals(qreals=qreals)))

    def get_quic_reals_mapping(self) -> list[QuicReal]:
        return [QuicReal(q.address, q.id & _U32) for q in self._get("getQuicRealsMapping", pb.Empty()).qreals]

    def get_stats_for_vip(self, vip: VipKey) -> LbStats:
        return _stats(self._get("getStatsForVip", _vip_msg(vip)))

    def get_lru_stats(self) -> LbStats:
        return _stats(self._get("getLruStats", pb.Empty()))

    def get_lru_miss_stats(self) -> LbStats:
        return _stats(self._get("getLruMissStats", pb.Empty()))

    def get_lru_fallback_stats(self) -> LbStats:
        return _stats(self._get("getLruFallbackStats", pb.Empty()))

    def get_icmp_too_big_stats(self) -> LbStats:
        return _stats(self._get("getIcmpTooBigStats", pb.Empty()))

    def add_healthchecker_dst(self, somark: int, address: str) -> None:
        self._ok("addHealthcheckerDst", pb.Healthcheck(somark=somark, address=str(address)))

    def del_healthchecker_dst(self, somark: int) -> None:
        self._ok("delHealthcheckerDst", pb.Somark(somark=somark))

    def get_healthcheckers_dst(self) -> dict[int, str]:
        hcs = self._get("getHealthcheckersDst", pb.Empty()).healthchecks
        return {somark & _U32: addr for somark, addr in hcs.items()}

    # ------------------------------------------------------------- KatranExtService
    def get_index_for_real(self, address: str) -> int:
        return self._get("getIndexForReal", ext_pb.RealAddress(address=str(address)), ext=True).index

    def get_real_stats(self, index: int) -> LbStats:
        return _stats(self._get("getRealStats", ext_pb.RealIndex(index=index), ext=True))

    def get_xdp_total_stats(self) -> LbStats:
        return _stats(self._get("getXdpTotalStats", pb.Empty(), ext=True))

    def get_xdp_tx_stats(self) -> LbStats:
        return _stats(self._get("getXdpTxStats", pb.Empty(), ext=True))

    def get_xdp_drop_stats(self) -> LbStats:
        return _stats(self._get("getXdpDropStats", pb.Empty(), ext=True))

    def get_xdp_pass_stats(self) -> LbStats:
        return _stats(self._get("getXdpPassStats", pb.Empty(), ext=True))

    def get_ch_drop_stats(self) -> LbStats:
        return _stats(self._get("getChDropStats", pb.Empty(), ext=True))

    def get_encap_fail_stats(self) -> LbStats:
        return _stats(self._get("getEncapFailStats", pb.Empty(), ext=True))

    def get_malformed_stats(self) -> LbStats:
        return _stats(self._get("getMalformedStats", pb.Empty(), ext=True))

    def get_flow_cache_stats(self) -> LbStats:
        return _stats(self._get("getFlowCacheStats", pb.Empty(), ext=True))

    def get_katran_lb_stats(self) -> LbStats:
        return _stats(self._get("getKatranLbStats", pb.Empty(), ext=True))

    def get_per_core_packets_stats(self) -> list[int]:
        return list(self._get("getPerCorePacketsStats", pb.Empty(), ext=True).packets)

    def change_hash_function_for_vip(self, vip: VipKey, hash_function: HashFunction) -> None:
        msg = ext_pb.VipHashFunction(vip=_vip_msg(vip), hash_function=int(hash_function))
        self._get("changeHashFunctionForVip", msg, ext=True)

    def get_hash_function_for_vip(self, vip: VipKey) -> HashFunction:
        return HashFunction(self._get("getHashFunctionForVip", _vip_msg(vip), ext=True).hash_function)

    def get_real_for_flow(self, flow: Flow) -> Optional[str]:
        msg = ext_pb.Flow(src=str(flow.src), dst=str(flow.dst), src_port=flow.src_port, dst_port=flow.dst_port,
                          protocol=flow.proto)
        found = self._get("getRealForFlow", msg, ext=True)
        return found.address if found.found else None

    def lookup_flow(self, flow: Flow, cpu: Optional[int] = None):
        from katran.flows import FlowRoute

        msg = ext_pb.FlowLookup(flow=ext_pb.Flow(src=str(flow.src), dst=str(flow.dst), src_port=flow.src_port,
                                                 dst_port=flow.dst_port, protocol=flow.proto))
        if cpu is not None:
            msg.cpu = cpu
        r = self._get("lookupFlow", msg, ext=True)
        return FlowRoute(vip=_vip_from_msg(r.vip), real=parse_address(r.real, "real") if r.found else None,
                         real_index=r.real_index, source=r.source, lru_source=r.lru_source or None,
                         ring_slot=r.ring_slot if r.HasField("ring_slot") else None)

    def list_lru(self, vip: Optional[VipKey] = None, *, real: Optional[str] = None, src: Optional[str] = None,
                 limit: Optional[int] = 1000):
        from katran.flows import LruListing

        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit < 1 << 32):
            raise ValidationError("limit", limit, "expected a positive integer or None (no limit)")
        r = self._get("listLru", _lru_filter_msg(vip, real, src, limit or 0), ext=True)
        return LruListing([_lru_entry(e) for e in r.entries], dict(r.per_source), r.total)

    def search_lru(self, vip: VipKey, src: str, src_port: int) -> list:
        r = self._get("searchLru", ext_pb.LruFlow(vip=_vip_msg(vip), src=str(src), src_port=src_port), ext=True)
        return [_lru_entry(e) for e in r.entries]

    def delete_lru(self, vip: VipKey, src: str, src_port: int) -> list[str]:
        r = self._get("deleteLru", ext_pb.LruFlow(vip=_vip_msg(vip), src=str(src), src_port=src_port), ext=True)
        return list(r.sources)

    def purge_vip_lru(self, vip: Optional[VipKey] = None, *, real: Optional[str] = None,
                      src: Optional[str] = None) -> dict[str, int]:
        return dict(self._get("purgeLru", _lru_filter_msg(vip, real, src, 0), ext=True).per_source)

    def get_hc_program_stats(self) -> HcStats:
        from katran.healthcheck import HcStats  # not at start-up: it loads the kernel facade

        s = self._get("getHealthcheckProgramStats", pb.Empty(), ext=True)
        return HcStats(processed=s.packets_processed, dropped=s.packets_dropped, skipped=s.packets_skipped,
                       too_big=s.packets_too_big, dst_matched=s.packets_dst_matched, src_matched=s.packets_src_matched)

    # source routing
    def add_src_routing_rule(self, srcs: Sequence[str], dst: str) -> None:
        self._get("addSrcRoutingRule", ext_pb.SrcRoutingRule(srcs=_prefixes(srcs), dst=str(dst)), ext=True)

    def del_src_routing_rule(self, srcs: Sequence[str]) -> None:
        self._get("delSrcRoutingRule", ext_pb.SrcPrefixes(srcs=_prefixes(srcs)), ext=True)

    def clear_all_src_routing_rules(self) -> None:
        self._get("clearAllSrcRoutingRules", pb.Empty(), ext=True)

    def get_src_routing_rule(self) -> dict[str, str]:
        return dict(self._get("getSrcRoutingRule", pb.Empty(), ext=True).rules)

    def get_src_routing_rule_size(self) -> int:
        return self._get("getSrcRoutingRuleSize", pb.Empty(), ext=True).count

    def get_src_routing_stats(self) -> LbStats:
        return _stats(self._get("getSrcRoutingStats", pb.Empty(), ext=True))

    # inline decap
    def add_inline_decap_dst(self, dst: str) -> None:
        self._get("addInlineDecapDst", ext_pb.DecapDst(address=str(dst)), ext=True)

    def del_inline_decap_dst(self, dst: str) -> None:
        self._get("delInlineDecapDst", ext_pb.DecapDst(address=str(dst)), ext=True)

    def get_inline_decap_dst(self) -> list[str]:
        return list(self._get("getInlineDecapDst", pb.Empty(), ext=True).addresses)

    def get_inline_decap_stats(self) -> LbStats:
        return _stats(self._get("getInlineDecapStats", pb.Empty(), ext=True))

    def get_decap_stats(self) -> LbStats:
        return _stats(self._get("getDecapStats", pb.Empty(), ext=True))

    def get_xpop_decap_successful_stats(self) -> LbStats:
        return _stats(self._get("getXpopDecapSuccessfulStats", pb.Empty(), ext=True))

    def get_decap_stats_for_vip(self, vip: VipKey) -> LbStats:
        return _stats(self._get("getDecapStatsForVip", _vip_msg(vip), ext=True))

    # down reals
    def add_down_real(self, vip: VipKey, address: str) -> None:
        self._get("addDownReal", ext_pb.VipReal(vip=_vip_msg(vip), address=str(address)), ext=True)

    def remove_down_real(self, vip: VipKey, address: str) -> None:
        self._get("removeDownReal", ext_pb.VipReal(vip=_vip_msg(vip), address=str(address)), ext=True)

    def clear_down_reals(self, vip: VipKey) -> None:
        self._get("clearDownReals", _vip_msg(vip), ext=True)

    def get_down_reals(self, vip: VipKey) -> list[str]:
        return list(self._get("getDownReals", _vip_msg(vip), ext=True).addresses)

    # feature counters
    def get_lb_quic_packets_stats(self) -> dict[str, int]:
        return _counters(self._get("getLbQuicPacketsStats", pb.Empty(), ext=True))

    def get_tcp_server_id_routing_stats(self) -> dict[str, int]:
        return _counters(self._get("getTcpServerIdRoutingStats", pb.Empty(), ext=True))

    def get_udp_stable_routing_stats(self) -> dict[str, int]:
        return _counters(self._get("getUdpStableRoutingStats", pb.Empty(), ext=True))

    def get_udp_flow_migration_stats(self) -> LbStats:
        return _stats(self._get("getUdpFlowMigrationStats", pb.Empty(), ext=True))

    def get_global_lru_stats(self) -> LbStats:
        return _stats(self._get("getGlobalLruStats", pb.Empty(), ext=True))

    def get_quic_icmp_stats(self) -> LbStats:
        return _stats(self._get("getQuicIcmpStats", pb.Empty(), ext=True))

    def get_sid_routing_stats_for_vip(self, vip: VipKey) -> LbStats:
        return _stats(self._get("getSidRoutingStatsForVip", _vip_msg(vip), ext=True))

    # the declarative file
    def dump_config(self) -> str:
        return self._get("dumpConfig", pb.Empty(), ext=True).text

    def apply_config(self, text: str, dry_run: bool = False, source: str = "") -> tuple[list, list]:
        msg = self._call(self._ext, "applyConfig", ext_pb.ApplyRequest(text=text, dry_run=dry_run, source=source))[0]
        return list(msg.changes), list(msg.needs_restart)

    # health checks
    def get_health_check_states(self) -> Optional[list[RealHealth]]:
        msg = self._get("getHealthCheckStates", pb.Empty(), ext=True)
        if not msg.enabled:
            return None
        return [RealHealth(VipKey(s.vip.address, s.vip.port, s.vip.protocol), s.real, s.healthy, s.reason, s.mode,
                           s.somark, s.checks, s.successes, s.failures, s.transitions, s.since, s.applied,
                           s.last_latency) for s in msg.states]

    def drain(self, timeout_ms: int = 0) -> tuple:
        # the call returns once the traffic left (or timeout_ms): within the client's deadline (-timeout)
        msg = self._call(self._ext, "drain", ext_pb.DrainRequest(timeout_ms=timeout_ms))[0]
        return msg.draining, msg.waited, list(msg.announced)

    def undrain(self) -> tuple:
        msg = self._get("undrain", pb.Empty(), ext=True)
        return msg.draining, msg.waited, list(msg.announced)


    # ------------------------------------------------------------- packet capture
    def capture(self, vip: Optional[VipKey] = None, real: Optional[str] = None, src: Optional[str] = None,
                count: int = 0, snaplen: int = 0) -> Iterator["CapturedPacket"]:
        """The balanced packets matching the filter (in, then out encapsulated), as the server
        streams them; ends after ``count`` records (0: when the caller stops iterating).
        ``self.capture_lost`` holds the records the server's ring lost so far."""
        from katran.capture import CapturedPacket  # only the capture command needs it

        request = ext_pb.CaptureFilter(real=real or "", src=src or "", count=count, snaplen=snaplen)
        if vip is not None:
            request.vip.CopyFrom(_vip_msg(vip))
        self.capture_lost = 0
        stream = self._ext.capture(request, metadata=self._metadata)  # no deadline: runs until count/cancel
        try:
            for msg in stream:
                self.capture_lost = msg.lost
                yield CapturedPacket("out" if msg.direction == ext_pb.CapturedPacket.OUT else "in", msg.ifindex,
                                     msg.timestamp_ns, msg.orig_len, bytes(msg.data))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise RpcFailed("capture", exc.code().name, exc.details() or "") from None
        finally:
            stream.cancel()


def client_from_flags(ns: Any) -> GrpcKatranClient:
    """katran-cli's "grpc" transport: -server, -timeout, -tls_ca/-tls_cert/-tls_key, -tls_server_name,
    -token_file."""
    creds = channel_credentials(ns.tls_ca, ns.tls_cert, ns.tls_key)
    if creds is None and ns.tls_server_name:
        creds = grpc.ssl_channel_credentials()  # TLS with the system's CAs
    return GrpcKatranClient(ns.server, timeout=ns.timeout or None, credentials=creds, server_name=ns.tls_server_name,
                            token=_token(getattr(ns, "token_file", "")))


def _token(path: str) -> Optional[bytes]:
    if not path:
        return None
    from katran_frontend.security import token_from_file  # only then: katran-cli's start-up

    return token_from_file(path)
